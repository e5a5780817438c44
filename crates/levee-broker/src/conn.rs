//! One client connection: the handshake, the frame read loop, and the writer task.
//!
//! The reader decodes frames (never buffering more than one frame of at most `max_frame` bytes)
//! and routes them to queue actors without ever waiting on a queue, so a full or slow queue
//! cannot stall this connection's traffic to other queues, nor other connections. Request /
//! reply operations that may take time (inspect, purge, list) run in their own tasks; declare and
//! delete run inline so that a client's next frame sees their effect.
//!
//! # Invariants
//! - Unconfirmed publishes per connection stay within `max_in_flight_{messages,bytes}`; beyond
//!   that, publishes are refused with `no-publish-credit`, never buffered.
//! - A bad frame gets an `Error` frame; a frame that breaks the stream (undecodable, too large)
//!   also closes the connection after the error is sent. Other connections are unaffected.
//! - When the connection ends, its subscriptions end (their unacked messages are requeued) and
//!   its publish credit is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use levee_proto::{
    ClientFrame, ErrorCode, FrameHeader, HANDSHAKE_MAX_FRAME, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, ProtoError, PublishOutcome, ServerFrame, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::actor::{Cmd, ConnRx, ConnTx, InFlight, conn_channel};
use crate::broker::Broker;
use crate::error::BrokerError;

/// Writes frames from the channel, coalescing whatever is queued into one write.
async fn writer(mut rx: ConnRx, mut sock: OwnedWriteHalf) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next.take() {
            let close = matches!(f, ServerFrame::Close { .. });
            if let Err(e) = f.encode(&mut buf) {
                tracing::error!(error = %e, "could not encode a frame");
            }
            if close {
                let _ = sock.write_all(&buf).await;
                let _ = sock.shutdown().await;
                return;
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv();
            }
        }
        if sock.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 8 << 20 {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

struct Conn {
    broker: Broker,
    id: u64,
    tx: ConnTx,
    in_flight: Arc<InFlight>,
    /// Subscription id -> queue name.
    subs: HashMap<u64, String>,
    /// Queues this connection publishes to as a registered producer.
    producing: HashMap<String, mpsc::UnboundedSender<Cmd>>,
}

impl Conn {
    fn error(&self, req: u64, e: &BrokerError) {
        let _ = self.tx.send(ServerFrame::Error {
            req,
            code: e.code(),
            message: e.to_string(),
        });
    }

    fn send_to(&self, queue: &str, cmd: Cmd) -> Result<(), BrokerError> {
        self.broker
            .sender(queue)?
            .send(cmd)
            .map_err(|_| BrokerError::UnknownQueue(queue.to_string()))
    }

    fn sub_queue(&self, subscription: u64) -> Option<&String> {
        let q = self.subs.get(&subscription);
        if q.is_none() {
            let _ = self.tx.send(ServerFrame::Error {
                req: 0,
                code: ErrorCode::UnknownSubscription,
                message: format!("subscription {subscription} is not open on this connection"),
            });
        }
        q
    }

    /// Handles one frame; `false` ends the connection.
    async fn handle(&mut self, frame: ClientFrame) -> bool {
        match frame {
            ClientFrame::Hello(_) => {
                let _ = self.tx.send(ServerFrame::Error {
                    req: 0,
                    code: ErrorCode::ProtocolViolation,
                    message: "Hello is allowed only once".into(),
                });
            }
            ClientFrame::Heartbeat => {}
            ClientFrame::Close { .. } => return false,
            ClientFrame::Declare { req, queue, config } => {
                match self.broker.declare(&queue, config).await {
                    Ok((created, messages)) => {
                        if created {
                            tracing::info!(conn = self.id, %queue, "queue declared");
                        } else {
                            tracing::debug!(conn = self.id, %queue, messages, "queue redeclared");
                        }
                        let _ = self.tx.send(ServerFrame::QueueOk {
                            req,
                            queue,
                            created,
                            messages,
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Delete { req, queue } => match self.broker.delete(&queue).await {
                Ok(messages) => {
                    tracing::info!(conn = self.id, %queue, messages, "queue deleted");
                    self.producing.remove(&queue);
                    let _ = self.tx.send(ServerFrame::QueueOk {
                        req,
                        queue,
                        created: false,
                        messages,
                    });
                }
                Err(e) => self.error(req, &e),
            },
            ClientFrame::Purge { req, queue } => {
                let (broker, tx) = (self.broker.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let frame = match broker.purge(&queue).await {
                        Ok(messages) => ServerFrame::QueueOk {
                            req,
                            queue,
                            created: false,
                            messages,
                        },
                        Err(e) => error_frame(req, &e),
                    };
                    let _ = tx.send(frame);
                });
            }
            ClientFrame::Inspect { req, queue } => {
                let (broker, tx) = (self.broker.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let frame = match broker.inspect(&queue).await {
                        Ok(info) => ServerFrame::QueueStats {
                            req,
                            info: Box::new(info),
                        },
                        Err(e) => error_frame(req, &e),
                    };
                    let _ = tx.send(frame);
                });
            }
            ClientFrame::ListQueues { req } => {
                let _ = self.tx.send(ServerFrame::QueueList {
                    req,
                    queues: self.broker.list(),
                });
            }
            ClientFrame::Produce { req, queue } => {
                let result = self.broker.sender(&queue).and_then(|tx| {
                    tx.send(Cmd::AddProducer {
                        producer: self.id,
                        conn: self.tx.clone(),
                    })
                    .map_err(|_| BrokerError::UnknownQueue(queue.clone()))?;
                    Ok(tx)
                });
                match result {
                    Ok(qtx) => {
                        self.producing.insert(queue.clone(), qtx);
                        let _ = self.tx.send(ServerFrame::QueueOk {
                            req,
                            queue,
                            created: false,
                            messages: 0,
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Publish {
                req,
                queue,
                messages,
            } => self.publish(req, queue, messages),
            ClientFrame::Subscribe {
                req,
                queue,
                credit,
                auto_ack,
            } => {
                let subscription = self.broker.next_id();
                match self.broker.sender(&queue) {
                    Ok(qtx) => {
                        // The reply goes out before any delivery can.
                        let _ = self.tx.send(ServerFrame::Subscribed { req, subscription });
                        let _ = qtx.send(Cmd::Subscribe {
                            consumer: subscription,
                            auto_ack,
                            credit,
                            conn: self.tx.clone(),
                        });
                        self.subs.insert(subscription, queue);
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Unsubscribe { req, subscription } => {
                match self.subs.remove(&subscription) {
                    Some(queue) => {
                        let _ = self.send_to(&queue, Cmd::Unsubscribe(subscription));
                        let _ = self
                            .tx
                            .send(ServerFrame::Unsubscribed { req, subscription });
                    }
                    None => {
                        let _ = self.tx.send(ServerFrame::Error {
                            req,
                            code: ErrorCode::UnknownSubscription,
                            message: format!("subscription {subscription} is not open"),
                        });
                    }
                }
            }
            ClientFrame::Credit { subscription, n } => {
                if let Some(q) = self.sub_queue(subscription) {
                    let _ = self.send_to(q, Cmd::Credit(subscription, n));
                }
            }
            ClientFrame::Ack { subscription, tags } => {
                if let Some(q) = self.sub_queue(subscription) {
                    let _ = self.send_to(q, Cmd::Ack(subscription, tags));
                }
            }
            ClientFrame::Nack {
                subscription,
                tags,
                delay_ms,
            } => {
                if let Some(q) = self.sub_queue(subscription) {
                    let _ = self.send_to(q, Cmd::Nack(subscription, tags, delay_ms));
                }
            }
            ClientFrame::Reject { subscription, tags } => {
                if let Some(q) = self.sub_queue(subscription) {
                    let _ = self.send_to(q, Cmd::Reject(subscription, tags));
                }
            }
            _ => {
                let _ = self.tx.send(ServerFrame::Error {
                    req: 0,
                    code: ErrorCode::ProtocolViolation,
                    message: "frame not supported by this server".into(),
                });
            }
        }
        true
    }

    fn publish(&mut self, req: u64, queue: String, messages: Vec<levee_proto::Message>) {
        // Decoded fields are slices of the read buffer; a queued message must not pin it.
        let messages: Vec<levee_proto::Message> = messages.into_iter().map(detach).collect();
        let n = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        let cfg = self.broker.config();
        let held_msgs = self.in_flight.messages.load(Ordering::Acquire);
        let held_bytes = self.in_flight.bytes.load(Ordering::Acquire);
        if held_msgs + n > cfg.max_in_flight_messages
            || (held_bytes + bytes > cfg.max_in_flight_bytes && held_msgs > 0)
        {
            let reason = format!(
                "too many unconfirmed publishes on this connection ({held_msgs} messages, \
                 {held_bytes} bytes; limits {} and {}): wait for confirms",
                cfg.max_in_flight_messages, cfg.max_in_flight_bytes
            );
            let outcomes = (0..n)
                .map(|_| PublishOutcome::Rejected {
                    code: ErrorCode::NoPublishCredit,
                    reason: reason.clone(),
                })
                .collect();
            let _ = self.tx.send(ServerFrame::PublishConfirm { req, outcomes });
            return;
        }
        let qtx = match self.producing.get(&queue) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => match self.broker.sender(&queue) {
                Ok(tx) => tx,
                Err(e) => return self.error(req, &e),
            },
        };
        self.in_flight.messages.fetch_add(n, Ordering::AcqRel);
        self.in_flight.bytes.fetch_add(bytes, Ordering::AcqRel);
        let cmd = Cmd::Publish {
            producer: self.id,
            req,
            messages,
            conn: self.tx.clone(),
            in_flight: self.in_flight.clone(),
        };
        if qtx.send(cmd).is_err() {
            self.in_flight.messages.fetch_sub(n, Ordering::AcqRel);
            self.in_flight.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.error(req, &BrokerError::UnknownQueue(queue));
        }
    }

    /// Ends every subscription and producer registration of this connection.
    fn cleanup(&mut self) {
        for (sub, queue) in self.subs.drain() {
            if let Ok(tx) = self.broker.sender(&queue) {
                let _ = tx.send(Cmd::Unsubscribe(sub));
            }
        }
        for (_, tx) in self.producing.drain() {
            let _ = tx.send(Cmd::RemoveProducer(self.id));
        }
    }
}

/// Copies a message's byte fields into their own allocations, so a message kept in a queue holds
/// only its own bytes, not the connection's read buffer it was decoded from.
fn detach(mut m: levee_proto::Message) -> levee_proto::Message {
    m.payload = Bytes::copy_from_slice(&m.payload);
    if let Some(k) = &mut m.key {
        *k = Bytes::copy_from_slice(k);
    }
    for (_, v) in &mut m.headers {
        *v = Bytes::copy_from_slice(v);
    }
    m
}

fn error_frame(req: u64, e: &BrokerError) -> ServerFrame {
    ServerFrame::Error {
        req,
        code: e.code(),
        message: e.to_string(),
    }
}

fn fatal(tx: &ConnTx, e: &ProtoError) {
    let _ = tx.send(ServerFrame::error(0, e));
    let _ = tx.send(ServerFrame::Close {
        code: Some(e.code()),
        reason: e.to_string(),
    });
}

/// Reads until one whole frame is buffered (or EOF / timeout), checking its declared size first.
/// `Ok(None)` = the peer closed cleanly.
async fn read_frame(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    max_frame: usize,
    idle: Duration,
) -> Result<Option<ClientFrame>, ReadError> {
    loop {
        if let Some(h) = FrameHeader::peek(buf) {
            h.check(max_frame).map_err(ReadError::Proto)?;
            if buf.len() < h.total_len() {
                buf.reserve(h.total_len() - buf.len());
            }
        }
        match ClientFrame::decode(buf, max_frame) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Proto(e)),
        }
        let n = match tokio::time::timeout(idle, stream.read_buf(buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Ok(None),
            Err(_) => return Err(ReadError::Idle),
        };
        if n == 0 {
            return Ok(None);
        }
    }
}

enum ReadError {
    Proto(ProtoError),
    Idle,
}

/// Serves one connection to the end.
pub(crate) async fn serve(broker: Broker, stream: TcpStream) -> Result<(), BrokerError> {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = conn_channel();
    let mut writer = tokio::spawn(writer(rx, wr));
    let cfg = broker.config().clone();
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms.max(100).into());
    let mut buf = BytesMut::with_capacity(64 * 1024);

    // Handshake: the first frame must be Hello, within one heartbeat interval (at most 10 s).
    let hello = match read_frame(
        &mut rd,
        &mut buf,
        HANDSHAKE_MAX_FRAME,
        heartbeat.min(Duration::from_secs(10)),
    )
    .await
    {
        Ok(Some(ClientFrame::Hello(h))) => h,
        Ok(Some(_)) => {
            let _ = tx.send(ServerFrame::Close {
                code: Some(ErrorCode::ProtocolViolation),
                reason: "the first frame must be Hello".into(),
            });
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
        Ok(None) | Err(ReadError::Idle) => return Ok(()),
        Err(ReadError::Proto(e)) => {
            fatal(&tx, &e);
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    };
    match hello.negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION) {
        Ok(version) => {
            let _ = tx.send(ServerFrame::Welcome(Welcome {
                version,
                server_name: cfg.server_name.clone(),
                max_frame: cfg.max_frame as u32,
                heartbeat_ms: cfg.heartbeat_ms,
            }));
        }
        Err(e) => {
            fatal(&tx, &e);
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    }

    let mut conn = Conn {
        id: broker.next_id(),
        broker,
        tx: tx.clone(),
        in_flight: Arc::new(InFlight::default()),
        subs: HashMap::new(),
        producing: HashMap::new(),
    };
    let id = conn.id;
    tracing::debug!(conn = id, %peer, client = %hello.client_name, "client connected");
    let hb_tx = tx.clone();
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            if hb_tx.send(ServerFrame::Heartbeat).is_err() {
                break;
            }
        }
    });
    let outbox = tx.outbox().clone();
    let mut stalled = false;
    loop {
        let next = tokio::select! {
            next = read_frame(&mut rd, &mut buf, cfg.max_frame, heartbeat * 3) => next,
            () = outbox.stalled.notified() => {
                tracing::warn!(conn = conn.id, "client does not read its replies: disconnecting");
                stalled = true;
                break;
            }
        };
        match next {
            Ok(Some(frame)) => {
                if !conn.handle(frame).await {
                    break;
                }
            }
            Ok(None) => break,
            Err(ReadError::Idle) => {
                let _ = tx.send(ServerFrame::Close {
                    code: Some(ErrorCode::ProtocolViolation),
                    reason: "no frame for 3 heartbeat intervals".into(),
                });
                break;
            }
            Err(ReadError::Proto(e)) => {
                if e.is_fatal() {
                    fatal(&tx, &e);
                    break;
                }
                let _ = tx.send(ServerFrame::error(0, &e));
            }
        }
    }
    heartbeats.abort();
    conn.cleanup();
    drop(conn);
    drop(tx);
    // A peer that does not read could keep the writer blocked forever: give it a moment to
    // flush what is queued (a Close, say), then cut it off.
    if !stalled {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
    }
    writer.abort();
    tracing::debug!(conn = id, %peer, "client disconnected");
    Ok(())
}
