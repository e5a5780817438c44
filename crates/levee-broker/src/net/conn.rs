//! One client connection: the handshake (with its login), the frame read loop, and the writer
//! task. Generic over the stream (plain TCP or TLS, from `security::Acceptor`).
//!
//! The reader decodes frames (never buffering more than one frame of at most `max_frame` bytes)
//! and routes them to queue actors without ever waiting on a queue, so a full or slow queue
//! cannot stall this connection's traffic to other queues, nor other connections. Request /
//! reply operations that may take time (inspect, purge, delete) run in their own tasks; declare
//! runs inline (it waits on the catalog, never on a queue) and a delete takes the queue out of
//! the registry inline, so that a client's next frame sees their effect.
//!
//! # Invariants
//! - Nothing but the handshake is served before the login succeeded (`Security::login` with
//!   `Hello.credentials` and the client certificate's user); a refused login is answered with a
//!   `Close` (`auth-failed`) after the failed-login delay. Every operation on a queue is
//!   authorized first (`Security::authorize`); a refusal is an `Error` (`forbidden`) and the
//!   connection goes on. A connection whose user a reload removed is closed.
//! - Unconfirmed publishes per connection stay within `max_in_flight_{messages,bytes}`; beyond
//!   that, publishes are refused with `no-publish-credit`, never buffered.
//! - A bad frame gets an `Error` frame; a frame that breaks the stream (undecodable, too large)
//!   also closes the connection after the error is sent. Other connections are unaffected.
//! - When the connection ends, its subscriptions end (their unacked messages are requeued:
//!   those never written to the socket with their delivery count unchanged), its publish credit
//!   is released and its publishes still held by queues are discarded.
//! - What the broker buffers for a connection is bounded: deliveries by its outbox's byte bound
//!   (`max_outbox_bytes`), other frames by a count; a peer that does not read within 3 heartbeat
//!   intervals is disconnected.
//! - The handshake has one deadline (a heartbeat interval, at most 10 s) from accept, however the
//!   bytes trickle in. After it, a frame larger than the standing 64 KiB read buffer is read
//!   only under a reservation of the broker-wide frame budget (`limits`), held until it is
//!   decoded; handshake frames are at most `HANDSHAKE_MAX_FRAME` (64 KiB) and reserve nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use levee_proto::{
    ClientFrame, ErrorCode, FrameHeader, HANDSHAKE_MAX_FRAME, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, ProtoError, PublishOutcome, ServerFrame, Welcome,
};
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::actor::{Cmd, ConfirmTo, InFlight};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::net::limits::{FrameReservation, Limits, UNRESERVED_FRAME};
use crate::outbox::{ConnRx, ConnTx, conn_channel};
use crate::routing::RoutedPublisher;

mod routing;
use crate::security::{Action, AuthError, Principal, Resource};

/// Writes frames from the channel, coalescing whatever is queued into one write, and reports
/// to each subscription's queue which deliveries were written. A peer that does not take the
/// bytes within `drain` (it does not read its socket) has its connection closed: the reader is
/// told through the outbox's `stalled`, and the queues take back what was not written.
async fn writer<W: AsyncWrite + Unpin>(mut rx: ConnRx, mut sock: W, drain: Duration) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // (subscription, highest tag) of the deliveries in `buf`.
    let mut written: Vec<(u64, u64)> = Vec::new();
    let outbox = rx.outbox().clone();
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next.take() {
            if !outbox.peer_knows(&f) {
                // Control frames are counted when sent; this one goes no further.
                if buf.len() < 1 << 20 {
                    next = rx.try_recv();
                }
                continue;
            }
            let close = matches!(f, ServerFrame::Close { .. });
            if let ServerFrame::Deliver { deliveries } = &f
                && let Some(last) = deliveries.last()
            {
                match written.iter_mut().find(|(s, _)| *s == last.subscription) {
                    Some(w) => w.1 = w.1.max(last.tag),
                    None => written.push((last.subscription, last.tag)),
                }
            }
            if let Err(e) = f.encode(&mut buf) {
                // Deliveries are valid by construction (checked at publish); should one still
                // not encode, close the connection so its queues take the deliveries back at
                // once instead of leaving them unacked until a deadline.
                tracing::error!(error = %e, "could not encode a frame: closing the connection");
                outbox.stalled.notify_one();
                return;
            }
            if close {
                let _ = tokio::time::timeout(drain, sock.write_all(&buf)).await;
                let _ = sock.shutdown().await;
                return;
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv();
            }
        }
        match tokio::time::timeout(drain, sock.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("client does not read what is sent to it: closing the connection");
                outbox.stalled.notify_one();
                return;
            }
        }
        outbox.report_written(&written);
        written.clear();
        buf.clear();
        if buf.capacity() > 8 << 20 {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

struct Conn {
    broker: Broker,
    /// Who logged in on this connection.
    principal: Principal,
    id: u64,
    tx: ConnTx,
    in_flight: Arc<InFlight>,
    /// Subscription id -> queue name.
    subs: HashMap<u64, String>,
    /// Queues this connection publishes to (registered producer or not): at the end, each is
    /// told the producer is gone, so its held publishes are discarded. Bounded by the number of
    /// queues.
    producing: HashMap<String, mpsc::UnboundedSender<Cmd>>,
    /// Publishes to exchanges (created at the first one; see `conn::routing`).
    routed: Option<RoutedPublisher>,
}

impl Conn {
    fn error(&self, req: u64, e: &BrokerError) {
        let _ = self.tx.send(ServerFrame::Error {
            req,
            code: e.code(),
            message: e.to_string(),
        });
    }

    /// Authorizes one operation; a refusal is answered (`forbidden`) and the connection goes on.
    fn allowed(&self, req: u64, action: Action, queue: &str) -> bool {
        self.allowed_on(req, action, Resource::Queue(queue))
    }

    /// Like `allowed`, on any resource (exchanges for the exchange frames).
    fn allowed_on(&self, req: u64, action: Action, resource: Resource<'_>) -> bool {
        match self
            .broker
            .security()
            .authorize(&self.principal, action, resource)
        {
            Ok(()) => true,
            Err(e) => {
                self.error(req, &BrokerError::Forbidden(e));
                false
            }
        }
    }

    fn send_to(&self, queue: &str, cmd: Cmd) -> Result<(), BrokerError> {
        self.broker
            .sender(queue)?
            .send(cmd)
            .map_err(|_| BrokerError::UnknownQueue(queue.to_string()))
    }

    /// Answers a request that may take time (it waits on a queue or the disk) from a task of its
    /// own, so this reader never waits on a queue.
    fn reply_later(&self, reply: impl std::future::Future<Output = ServerFrame> + Send + 'static) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(reply.await);
        });
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
                if !self.allowed(req, Action::Manage, &queue) {
                    return true;
                }
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
            ClientFrame::Update { req, queue, config } => {
                if !self.allowed(req, Action::Manage, &queue) {
                    return true;
                }
                match self.broker.update(&queue, config).await {
                    Ok(_) => {
                        let messages = match self.broker.inspect(&queue).await {
                            Ok(i) => i.stats.ready + i.stats.unacked,
                            Err(_) => 0,
                        };
                        let _ = self.tx.send(ServerFrame::QueueOk {
                            req,
                            queue,
                            created: false,
                            messages,
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Peek { req, queue, count } => {
                if !self.allowed(req, Action::Consume, &queue) {
                    return true;
                }
                match self.broker.peek(&queue, count as usize).await {
                    Ok(messages) => {
                        let _ = self.tx.send(ServerFrame::Peeked { req, messages });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Move {
                req,
                queue,
                to,
                max,
                header,
            } => {
                // Moving takes messages out of `queue` and publishes them into `to`.
                if !self.allowed(req, Action::Manage, &queue)
                    || !self.allowed(req, Action::Publish, &to)
                {
                    return true;
                }
                // Runs in a task of its own: a long move does not stall this connection.
                let broker = self.broker.clone();
                self.reply_later(async move {
                    let header = header.as_ref().map(|(n, v)| (n.as_str(), v.as_ref()));
                    match crate::redrive::move_matching(&broker, &queue, &to, max, header).await {
                        Ok(m) => queue_ok(req, queue, m.moved),
                        Err(e) => ServerFrame::Error {
                            req,
                            code: e.code(),
                            message: e.to_string(),
                        },
                    }
                });
            }
            ClientFrame::Delete { req, queue } => {
                // The queue leaves the registry now (the next frame already sees it gone); its
                // actor is stopped and its files removed in a task of their own, so this reader
                // never waits on a queue.
                if !self.allowed(req, Action::Manage, &queue) {
                    return true;
                }
                self.producing.remove(&queue);
                match self.broker.begin_delete(&queue) {
                    Ok(deletion) => {
                        let conn = self.id;
                        self.reply_later(async move {
                            match deletion.await {
                                Ok(messages) => {
                                    tracing::info!(conn, %queue, messages, "queue deleted");
                                    queue_ok(req, queue, messages)
                                }
                                Err(e) => error_frame(req, &e),
                            }
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Purge { req, queue } => {
                if !self.allowed(req, Action::Manage, &queue) {
                    return true;
                }
                let broker = self.broker.clone();
                self.reply_later(async move {
                    match broker.purge(&queue).await {
                        Ok(messages) => queue_ok(req, queue, messages),
                        Err(e) => error_frame(req, &e),
                    }
                });
            }
            ClientFrame::Inspect { req, queue } => {
                // `monitor`, or any other right on the queue (a producer needs to know its
                // overflow policy; what `ListQueues` shows, `Inspect` answers).
                let security = self.broker.security();
                let user = [Action::Publish, Action::Consume, Action::Manage]
                    .into_iter()
                    .any(|a| security.permits(&self.principal, a, Resource::Queue(&queue)));
                if !user && !self.allowed(req, Action::Monitor, &queue) {
                    return true;
                }
                let broker = self.broker.clone();
                self.reply_later(async move {
                    match broker.inspect(&queue).await {
                        Ok(info) => ServerFrame::QueueStats {
                            req,
                            info: Box::new(info),
                        },
                        Err(e) => error_frame(req, &e),
                    }
                });
            }
            ClientFrame::ListQueues { req } => {
                // Only the queues this user has some right on.
                let security = self.broker.security();
                let queues = self
                    .broker
                    .list()
                    .into_iter()
                    .filter(|q| {
                        [
                            Action::Monitor,
                            Action::Publish,
                            Action::Consume,
                            Action::Manage,
                        ]
                        .into_iter()
                        .any(|a| security.permits(&self.principal, a, Resource::Queue(q)))
                    })
                    .collect();
                let _ = self.tx.send(ServerFrame::QueueList { req, queues });
            }
            ClientFrame::Produce { req, queue } => {
                if !self.allowed(req, Action::Publish, &queue) {
                    return true;
                }
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
                if !self.allowed(req, Action::Consume, &queue) {
                    return true;
                }
                let subscription = self.broker.next_id();
                match self.broker.sender(&queue) {
                    Ok(qtx) => {
                        // The reply goes out before any delivery can.
                        let _ = self.tx.send(ServerFrame::Subscribed { req, subscription });
                        self.tx
                            .outbox()
                            .add_subscription(subscription, qtx.downgrade());
                        let _ = qtx.send(Cmd::Subscribe {
                            consumer: subscription,
                            auto_ack,
                            credit,
                            priority: 0,
                            conn: self.tx.clone(),
                        });
                        self.broker.inner.ops.register_sub(subscription, self.id);
                        self.subs.insert(subscription, queue);
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::Unsubscribe { req, subscription } => {
                match self.subs.remove(&subscription) {
                    Some(queue) => {
                        self.tx.outbox().remove_subscription(subscription);
                        self.broker.inner.ops.unregister_sub(subscription);
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
            frame @ (ClientFrame::DeclareExchange { .. }
            | ClientFrame::DeleteExchange { .. }
            | ClientFrame::Bind { .. }
            | ClientFrame::Unbind { .. }
            | ClientFrame::ListExchanges { .. }
            | ClientFrame::ListBindings { .. }
            | ClientFrame::PublishRouted { .. }) => self.handle_exchange(frame).await,
            ClientFrame::Extend {
                subscription,
                tags,
                extend_ms,
            } => {
                if let Some(q) = self.sub_queue(subscription) {
                    let _ = self.send_to(q, Cmd::Extend(subscription, tags, extend_ms));
                }
            }
            // levee-proto's `ClientFrame` is non_exhaustive: a frame this server does not know is
            // answered with an explicit error, never ignored.
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
        if !self.allowed(req, Action::Publish, &queue) {
            return;
        }
        if let Err(e) = self.principal.check_publish(messages.len() as u32) {
            let reason = e.to_string();
            let outcomes = messages
                .iter()
                .map(|_| PublishOutcome::Rejected {
                    code: ErrorCode::Throttled,
                    reason: reason.clone(),
                })
                .collect();
            let _ = self.tx.send(ServerFrame::PublishConfirm { req, outcomes });
            return;
        }
        // Decoded fields are slices of the read buffer; a queued message must not pin it.
        let messages: Vec<levee_proto::Message> = messages.into_iter().map(detach).collect();
        let n = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        if let Some(reason) = self.in_flight.refusal(self.broker.config(), n, bytes) {
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
                Ok(tx) => {
                    self.producing.insert(queue.clone(), tx.clone());
                    tx
                }
                Err(e) => return self.error(req, &e),
            },
        };
        self.in_flight.charge(n, bytes);
        let cmd = Cmd::Publish {
            producer: self.id,
            req,
            messages,
            confirm_to: ConfirmTo::Conn {
                conn: self.tx.clone(),
                in_flight: self.in_flight.clone(),
            },
            credited: true,
        };
        if qtx.send(cmd).is_err() {
            self.in_flight.release(n, bytes);
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
        // Its queues discard what they still hold of its routed publishes.
        self.routed = None;
    }
}

/// Copies a message's byte fields into their own allocations, so a message kept in a queue holds
/// only its own bytes, not the connection's read buffer it was decoded from.
fn detach(mut m: levee_proto::Message) -> levee_proto::Message {
    m.payload = Bytes::copy_from_slice(&m.payload);
    if let Some(k) = &mut m.key {
        *k = Bytes::copy_from_slice(k);
    }
    if let Some(id) = &mut m.message_id {
        *id = Bytes::copy_from_slice(id);
    }
    if let Some(p) = &mut m.properties {
        *p = Bytes::copy_from_slice(p);
    }
    for (_, v) in &mut m.headers {
        *v = Bytes::copy_from_slice(v);
    }
    m
}

/// `QueueOk` for a request that did not create a queue.
fn queue_ok(req: u64, queue: String, messages: u64) -> ServerFrame {
    ServerFrame::QueueOk {
        req,
        queue,
        created: false,
        messages,
    }
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
/// `Ok(None)` = the peer closed cleanly. `idle` bounds each wait for bytes (not the whole call).
///
/// With `limits`, a frame of more than [`UNRESERVED_FRAME`] bytes is read only once
/// `reservation` holds its share of the broker's frame budget (waiting for it without reading:
/// backpressure); the reservation is released, and the grown buffer given back, when the frame
/// is decoded. The handshake passes `None`: its frames are at most `HANDSHAKE_MAX_FRAME`, the
/// standing buffer's size, so peers that have not said Hello cannot take any of the budget.
///
/// # Cancel safety
/// Cancel-safe: bytes read stay in `buf` and a reservation taken stays in `reservation`, so the
/// next call goes on where this one stopped.
async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    max_frame: usize,
    idle: Duration,
    limits: Option<&Limits>,
    reservation: &mut Option<FrameReservation>,
) -> Result<Option<ClientFrame>, ReadError> {
    loop {
        if let Some(h) = FrameHeader::peek(buf) {
            h.check(max_frame).map_err(ReadError::Proto)?;
            if let Some(limits) = limits
                && h.total_len() > UNRESERVED_FRAME
                && reservation.is_none()
            {
                *reservation = Some(limits.reserve_frame(h.total_len()).await);
            }
            if buf.len() < h.total_len() {
                buf.reserve(h.total_len() - buf.len());
            }
        }
        let decoded = match ClientFrame::decode(buf, max_frame) {
            Ok(Some(frame)) => Ok(Some(frame)),
            Ok(None) => Ok(None),
            Err(e) => Err(ReadError::Proto(e)),
        };
        if !matches!(decoded, Ok(None)) {
            // The frame is consumed (decoded or refused): release its reservation.
            if reservation.take().is_some() {
                // Hand the large allocation back with the frame (its fields are slices of it
                // until detached): what is left of `buf` still points into it and would keep
                // it alive. Keep reading into a standing-size buffer.
                let mut fresh = BytesMut::with_capacity(UNRESERVED_FRAME.max(buf.len()));
                fresh.extend_from_slice(buf);
                *buf = fresh;
            }
            return decoded;
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

/// Serves one connection to the end: `stream` is past its TLS handshake (if any), `cert_user`
/// the user its client certificate names.
pub(crate) async fn serve<S>(
    broker: Broker,
    stream: S,
    peer: SocketAddr,
    cert_user: Option<String>,
) -> Result<(), BrokerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let cfg = broker.config().clone();
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms.max(100).into());
    let (tx, rx) = conn_channel(cfg.max_outbox_bytes);
    // A peer must take what is written to it within 3 heartbeat intervals, as it must send.
    let mut writer = tokio::spawn(writer(rx, wr, heartbeat * 3));
    let mut buf = BytesMut::with_capacity(UNRESERVED_FRAME);
    let mut reservation = None;

    // Handshake: the first frame must be Hello, within one heartbeat interval (at most 10 s) in
    // all: the deadline does not move when a byte arrives.
    let handshake = heartbeat.min(Duration::from_secs(10));
    let hello = tokio::time::timeout(
        handshake,
        read_frame(
            &mut rd,
            &mut buf,
            HANDSHAKE_MAX_FRAME,
            handshake,
            None,
            &mut reservation,
        ),
    )
    .await
    .unwrap_or(Err(ReadError::Idle));
    let hello = match hello {
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
        Ok(None) => return Ok(()),
        Err(ReadError::Idle) => {
            let _ = tx.send(ServerFrame::Close {
                code: Some(ErrorCode::ProtocolViolation),
                reason: format!("no Hello within {} ms", handshake.as_millis()),
            });
            return Ok(());
        }
        Err(ReadError::Proto(e)) => {
            fatal(&tx, &e);
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    };
    let version = match hello.negotiate(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION) {
        Ok(version) => version,
        Err(e) => {
            fatal(&tx, &e);
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    };
    let security = broker.security().clone();
    let credentials = hello
        .credentials
        .as_ref()
        .map(|c| (c.user.as_str(), c.password.as_str()));
    let login = security
        .login(credentials, cert_user.as_deref(), peer)
        .await
        .and_then(|p| security.open_session(p));
    let mut session = match login {
        Ok(session) => session,
        Err(e) => {
            let code = match &e {
                AuthError::BadCredentials | AuthError::Required => ErrorCode::AuthFailed,
                AuthError::TooManyConnections { .. } => ErrorCode::AccessDenied,
            };
            let _ = tx.send(ServerFrame::Close {
                code: Some(code),
                reason: e.to_string(),
            });
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    };
    tx.outbox().set_protocol(version);
    let _ = tx.send(ServerFrame::Welcome(Welcome {
        version,
        server_name: cfg.server_name.clone(),
        max_frame: cfg.max_frame as u32,
        heartbeat_ms: cfg.heartbeat_ms,
    }));

    let mut conn = Conn {
        id: broker.next_id(),
        principal: session.principal().clone(),
        broker,
        tx: tx.clone(),
        in_flight: Arc::new(InFlight::default()),
        subs: HashMap::new(),
        producing: HashMap::new(),
        routed: None,
    };
    let id = conn.id;
    tracing::debug!(conn = id, %peer, client = %hello.client_name, user = conn.principal.name(), "client connected");
    // Listed by the dashboard (consumers and producers by connection) until it closes.
    let _listed = conn.broker.inner.ops.register_conn(
        id,
        crate::ops::ConnEntry {
            peer,
            user: conn.principal.name().to_string(),
            client: hello.client_name.clone(),
            since: crate::actor::now_ms(),
        },
    );
    drop(hello);
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
            next = read_frame(
                &mut rd,
                &mut buf,
                cfg.max_frame,
                heartbeat * 3,
                Some(&conn.broker.inner.limits),
                &mut reservation,
            ) => next,
            () = session.revoked() => {
                tracing::warn!(conn = conn.id, user = conn.principal.name(), "user removed by a reload: disconnecting");
                let _ = tx.send(ServerFrame::Close {
                    code: Some(ErrorCode::AuthFailed),
                    reason: "the user was removed from the configuration".into(),
                });
                break;
            }
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
