//! The tokio shell around one AMQP [`Connection`]: it reads the socket into the state machine,
//! writes what the machine produces, takes the frames queue actors push into the connection's
//! outbox, runs the machine's timers, and carries out its [`Op`]s on the broker (every one
//! through [`auth::authorize`]). Generic over the stream, so TLS can wrap the socket.
//!
//! # Invariants
//! - The read buffer holds at most one frame of `frame_max` plus one read; the socket is not read
//!   while the machine says so ([`Connection::wants_read`]: blocked, too many unconfirmed
//!   publishes) or while more than `MAX_PENDING_OUTPUT` bytes wait to be written; the outbox is
//!   not taken from while that output waits either (its own bound then holds deliveries back).
//! - A peer that takes nothing written to it for 30 s, or overflows the outbox's control bound,
//!   is disconnected; its subscriptions end and its held publishes are discarded.
//! - When the connection ends, its exclusive queues are deleted, and auto-delete queues left
//!   without consumers are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use levee_proto::QueueConfig;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::auth;
use super::connection::{
    Connection, Env, Exception, MAX_PENDING_OUTPUT, Op, OpResult, Settings, code,
};
use crate::actor::{Cmd, ConfirmTo, InFlight, now_ms};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::outbox::{ConnRx, ConnTx, conn_channel};

/// A peer that takes none of what is written to it for this long is disconnected.
const WRITE_STALL_MS: u64 = 30_000;

/// State shared by every AMQP connection of one listener.
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) settings: Settings,
    /// Exclusive queue -> owning connection.
    exclusive: Mutex<HashMap<String, u64>>,
    /// Queues declared auto-delete.
    auto_delete: Mutex<HashSet<String>>,
    /// AMQP consumers per queue.
    consumers: Mutex<HashMap<String, usize>>,
    /// Queue -> its exclusive consumer's subscription.
    exclusive_consumers: Mutex<HashMap<String, u64>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(broker: Broker, settings: Settings, shutdown: watch::Receiver<bool>) -> Self {
        Shared {
            broker,
            settings,
            exclusive: Mutex::new(HashMap::new()),
            auto_delete: Mutex::new(HashSet::new()),
            consumers: Mutex::new(HashMap::new()),
            exclusive_consumers: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    fn forget(&self, queue: &str) {
        self.exclusive.lock().remove(queue);
        self.auto_delete.lock().remove(queue);
        self.consumers.lock().remove(queue);
        self.exclusive_consumers.lock().remove(queue);
    }
}

impl Env for Shared {
    fn queue_config(&self, name: &str) -> Option<QueueConfig> {
        self.broker.queue_config(name)
    }

    fn exclusive_owner(&self, name: &str) -> Option<u64> {
        self.exclusive.lock().get(name).copied()
    }

    fn next_id(&self) -> u64 {
        self.broker.next_id()
    }

    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, Exception> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        Err(Exception::new(
            code::NOT_FOUND,
            format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
        ))
    }

    fn exchange_exists(&self, name: &str) -> bool {
        name.is_empty() || self.broker.exchange(name).is_some()
    }

    fn consumers(&self, queue: &str) -> (usize, bool) {
        (
            self.consumers.lock().get(queue).copied().unwrap_or(0),
            self.exclusive_consumers.lock().contains_key(queue),
        )
    }

    fn served_elsewhere(&self, queue: &str) -> Option<Option<String>> {
        self.broker.inner.served_elsewhere(queue)
    }

    fn forwards(&self, queue: &str) -> bool {
        self.broker.inner.forwards(queue)
    }
}

/// The connection's side of the broker: its outbox and what it registered with queues.
struct Link {
    /// Publishes through named exchanges (created at the first one).
    routed: Option<crate::routing::RoutedPublisher>,
    /// Where the routed publisher's confirms come from (its callback runs in queue tasks).
    routed_tx: mpsc::UnboundedSender<crate::routing::RoutedConfirm>,
    shared: Arc<Shared>,
    id: u64,
    tx: ConnTx,
    in_flight: Arc<InFlight>,
    /// Queues this connection is a registered producer of.
    producing: HashMap<String, mpsc::UnboundedSender<Cmd>>,
    /// Queues this connection declared exclusive.
    owned: Vec<String>,
    /// The logged-in user's session (from the login on; holds one of its connection slots).
    session: Option<crate::security::Session>,
}

fn failed(channel: u16, code: u16, text: String) -> OpResult {
    OpResult::Failed {
        channel,
        exception: Exception::new(code, text),
    }
}

fn broker_failure(channel: u16, queue: &str, e: &BrokerError) -> OpResult {
    match e {
        BrokerError::UnknownQueue(q) => failed(
            channel,
            code::NOT_FOUND,
            format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
        ),
        BrokerError::ConfigMismatch { differences, .. } => failed(
            channel,
            code::PRECONDITION_FAILED,
            format!(
                "PRECONDITION_FAILED - inequivalent arguments for queue '{queue}': {differences}"
            ),
        ),
        BrokerError::UnknownExchange(x) => failed(
            channel,
            code::NOT_FOUND,
            format!("NOT_FOUND - no exchange '{x}' in vhost '/'"),
        ),
        BrokerError::ExchangeMismatch {
            exchange,
            differences,
        } => failed(
            channel,
            code::PRECONDITION_FAILED,
            format!(
                "PRECONDITION_FAILED - inequivalent arguments for exchange '{exchange}': \
                 {differences}"
            ),
        ),
        BrokerError::ExchangeInUse { exchange, .. } => failed(
            channel,
            code::PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use"),
        ),
        BrokerError::ExchangeAccess { exchange, reason } => failed(
            channel,
            code::ACCESS_REFUSED,
            format!("ACCESS_REFUSED - exchange '{exchange}': {reason}"),
        ),
        BrokerError::NotLeader { queue, serving } => OpResult::Failed {
            channel,
            exception: super::connection::served_elsewhere(queue, serving.as_deref()),
        },
        BrokerError::Proto(p) => failed(
            channel,
            code::PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - {p}"),
        ),
        BrokerError::Forbidden(f) => failed(
            channel,
            code::ACCESS_REFUSED,
            format!("ACCESS_REFUSED - {f}"),
        ),
        // The server's own failures: a connection exception (541), with what went wrong.
        BrokerError::Store(_)
        | BrokerError::Catalog { .. }
        | BrokerError::Io { .. }
        | BrokerError::DataDirLocked { .. }
        | BrokerError::InvalidSetting { .. }
        | BrokerError::Security(_)
        | BrokerError::Internal(_) => failed(channel, code::INTERNAL_ERROR, e.to_string()),
    }
}

impl Link {
    fn env(&self) -> &Shared {
        &self.shared
    }

    fn send(&self, queue: &str, cmd: Cmd) -> bool {
        match self.shared.broker.sender(queue) {
            Ok(tx) => tx.send(cmd).is_ok(),
            Err(_) => false,
        }
    }

    /// Carries out one op; the answer of a (reply) op.
    async fn run(&mut self, conn: &mut Connection, op: Op) -> Option<OpResult> {
        let verdict = match &self.session {
            Some(s) => auth::authorize(self.shared.broker.security(), s.principal(), &op),
            None => Err("not logged in".to_string()),
        };
        if let Err(why) = verdict {
            let text = format!("ACCESS_REFUSED - {why}");
            return match op {
                Op::Declare { channel, .. }
                | Op::DeleteQueue { channel, .. }
                | Op::Purge { channel, .. }
                | Op::ExchangeDeclare { channel, .. }
                | Op::ExchangeDelete { channel, .. }
                | Op::Bind { channel, .. }
                | Op::PublishRouted { channel, .. } => {
                    Some(failed(channel, code::ACCESS_REFUSED, text))
                }
                Op::Inspect { sub, .. } => Some(OpResult::Inspected { sub, ready: None }),
                Op::Publish { reqs, .. } => {
                    for r in conn.take_batch(reqs[0]) {
                        conn.confirmed(r, false);
                    }
                    None
                }
                Op::Subscribe { sub, .. }
                | Op::Credit { sub, .. }
                | Op::Ack { sub, .. }
                | Op::Requeue { sub, .. }
                | Op::Reject { sub, .. } => {
                    // The channel of the subscription is closed with 403; the connection lives.
                    if let Some(channel) = conn.subs.get(&sub).map(|s| s.channel) {
                        conn.channel_exception(channel, Exception::new(code::ACCESS_REFUSED, text));
                    }
                    None
                }
                Op::AddProducer { .. } | Op::RemoveProducer { .. } | Op::Unsubscribe { .. } => None,
            };
        }
        let broker = self.shared.broker.clone();
        match op {
            Op::Declare {
                channel,
                queue,
                declared,
                passive,
                exclusive,
                auto_delete,
                nowait,
            } => {
                if passive {
                    return Some(match broker.inspect(&queue).await {
                        Ok(info) => OpResult::Declared {
                            channel,
                            queue,
                            messages: info.stats.ready,
                            consumers: info.stats.consumers.len() as u32,
                            nowait,
                        },
                        Err(e) => broker_failure(channel, &queue, &e),
                    });
                }
                let mut config = declared.config.clone();
                if declared.quorum
                    && let Some(replication) = broker.replication()
                {
                    config.replicas = replication.replicas();
                    config.durability = levee_proto::Durability::Disk(levee_proto::Fsync::Always);
                }
                match broker.declare(&queue, config).await {
                    Ok((created, messages)) => {
                        if created {
                            if exclusive {
                                self.shared.exclusive.lock().insert(queue.clone(), self.id);
                                self.owned.push(queue.clone());
                            }
                            if auto_delete {
                                self.shared.auto_delete.lock().insert(queue.clone());
                            }
                            tracing::info!(conn = self.id, %queue, "queue declared over AMQP");
                            return Some(OpResult::Declared {
                                channel,
                                queue,
                                messages,
                                consumers: 0,
                                nowait,
                            });
                        }
                        let (messages, consumers) = match broker.inspect(&queue).await {
                            Ok(i) => (i.stats.ready, i.stats.consumers.len() as u32),
                            Err(_) => (0, 0),
                        };
                        Some(OpResult::Declared {
                            channel,
                            queue,
                            messages,
                            consumers,
                            nowait,
                        })
                    }
                    Err(e) => Some(broker_failure(channel, &queue, &e)),
                }
            }
            Op::DeleteQueue {
                channel,
                queue,
                if_unused,
                if_empty,
                nowait,
            } => {
                if if_unused || if_empty {
                    match broker.inspect(&queue).await {
                        Ok(i) if if_unused && !i.stats.consumers.is_empty() => {
                            return Some(failed(
                                channel,
                                code::PRECONDITION_FAILED,
                                format!(
                                    "PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use"
                                ),
                            ));
                        }
                        Ok(i) if if_empty && i.stats.ready + i.stats.unacked > 0 => {
                            return Some(failed(
                                channel,
                                code::PRECONDITION_FAILED,
                                format!(
                                    "PRECONDITION_FAILED - queue '{queue}' in vhost '/' is not empty"
                                ),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => return Some(broker_failure(channel, &queue, &e)),
                    }
                }
                self.producing.remove(&queue);
                Some(match broker.delete(&queue).await {
                    Ok(messages) => {
                        self.shared.forget(&queue);
                        self.owned.retain(|q| *q != queue);
                        OpResult::Deleted {
                            channel,
                            messages,
                            nowait,
                        }
                    }
                    Err(e) => broker_failure(channel, &queue, &e),
                })
            }
            Op::Purge {
                channel,
                queue,
                nowait,
            } => Some(match broker.purge(&queue).await {
                Ok(messages) => OpResult::Purged {
                    channel,
                    messages,
                    nowait,
                },
                Err(e) => broker_failure(channel, &queue, &e),
            }),
            Op::ExchangeDeclare {
                channel,
                name,
                config,
                ok,
            } => Some(match broker.declare_exchange(&name, config).await {
                Ok(_) => OpResult::Done { channel, ok },
                Err(e) => broker_failure(channel, &name, &e),
            }),
            Op::ExchangeDelete {
                channel,
                name,
                if_unused,
                ok,
            } => Some(match broker.delete_exchange(&name, if_unused).await {
                Ok(()) => OpResult::Done { channel, ok },
                Err(e) => broker_failure(channel, &name, &e),
            }),
            Op::Bind {
                channel,
                binding,
                unbind,
                ok,
            } => {
                let r = if unbind {
                    broker.remove_binding(&binding).await.map(|_| ())
                } else {
                    broker.add_binding(&binding).await.map(|_| ())
                };
                Some(match r {
                    Ok(()) => OpResult::Done { channel, ok },
                    Err(e) => broker_failure(channel, &binding.queue, &e),
                })
            }
            Op::PublishRouted {
                channel,
                exchange,
                routing_key,
                req,
                message,
            } => {
                let publisher = self.routed.get_or_insert_with(|| {
                    let tx = self.routed_tx.clone();
                    broker.routed_publisher_sharing(
                        self.in_flight.clone(),
                        Box::new(move |c| {
                            let _ = tx.send(c);
                        }),
                    )
                });
                match publisher.publish(req, &exchange, &routing_key, vec![message]) {
                    Ok(()) => None,
                    Err(e) => {
                        conn.routed_confirmed(req, None);
                        Some(broker_failure(channel, &exchange, &e))
                    }
                }
            }
            Op::Inspect { sub, queue } => Some(OpResult::Inspected {
                sub,
                ready: broker.inspect(&queue).await.ok().map(|i| i.stats.ready),
            }),
            Op::AddProducer { queue } => {
                if let Ok(qtx) = broker.sender(&queue) {
                    let _ = qtx.send(Cmd::AddProducer {
                        producer: self.id,
                        conn: self.tx.clone(),
                    });
                    self.producing.insert(queue, qtx);
                }
                None
            }
            Op::RemoveProducer { queue } => {
                if let Some(qtx) = self.producing.remove(&queue) {
                    let _ = qtx.send(Cmd::RemoveProducer(self.id));
                }
                None
            }
            Op::Publish {
                queue,
                reqs,
                messages,
            } => {
                let (reqs, messages) = self.throttle(conn, reqs, messages)?;
                let count = messages.len() as u64;
                let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
                self.in_flight
                    .messages
                    .fetch_add(count, std::sync::atomic::Ordering::AcqRel);
                self.in_flight
                    .bytes
                    .fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
                let sent = self.send(
                    &queue,
                    Cmd::Publish {
                        producer: self.id,
                        req: reqs[0],
                        messages,
                        confirm_to: ConfirmTo::Conn {
                            conn: self.tx.clone(),
                            in_flight: self.in_flight.clone(),
                        },
                        // Sent within the publish credit the queue granted (or to a queue that
                        // needs none).
                        credited: true,
                    },
                );
                if !sent {
                    self.in_flight
                        .messages
                        .fetch_sub(count, std::sync::atomic::Ordering::AcqRel);
                    self.in_flight
                        .bytes
                        .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
                    for r in conn.take_batch(reqs[0]) {
                        conn.confirmed(r, false);
                    }
                }
                None
            }
            Op::Subscribe {
                queue,
                sub,
                credit,
                auto_ack,
                consumer,
                exclusive,
                priority,
            } => {
                match broker.sender(&queue) {
                    Ok(qtx) => {
                        self.tx.outbox().add_subscription(sub, qtx.downgrade());
                        self.shared.broker.inner.ops.register_sub(sub, self.id);
                        let _ = qtx.send(Cmd::Subscribe {
                            consumer: sub,
                            auto_ack,
                            credit,
                            priority,
                            conn: self.tx.clone(),
                        });
                        if exclusive {
                            self.shared
                                .exclusive_consumers
                                .lock()
                                .insert(queue.clone(), sub);
                        }
                        if consumer {
                            *self.shared.consumers.lock().entry(queue).or_default() += 1;
                        }
                    }
                    Err(_) => conn.cancel_consumers_of(&queue, true),
                }
                None
            }
            Op::Unsubscribe {
                queue,
                sub,
                consumer,
            } => {
                self.tx.outbox().remove_subscription(sub);
                self.shared.broker.inner.ops.unregister_sub(sub);
                let _ = self.send(&queue, Cmd::Unsubscribe(sub));
                {
                    let mut x = self.shared.exclusive_consumers.lock();
                    if x.get(&queue) == Some(&sub) {
                        x.remove(&queue);
                    }
                }
                if consumer {
                    let left = {
                        let mut c = self.shared.consumers.lock();
                        let n = c.entry(queue.clone()).or_default();
                        *n = n.saturating_sub(1);
                        *n
                    };
                    if left == 0 && self.shared.auto_delete.lock().contains(&queue) {
                        tracing::info!(%queue, "auto-delete queue lost its last consumer: deleted");
                        self.shared.forget(&queue);
                        if let Ok(deletion) = broker.begin_delete(&queue) {
                            tokio::spawn(deletion);
                        }
                    }
                }
                None
            }
            Op::Credit { queue, sub, n } => {
                let _ = self.send(&queue, Cmd::Credit(sub, n));
                None
            }
            Op::Ack { queue, sub, tags } => {
                let _ = self.send(&queue, Cmd::Ack(sub, tags));
                None
            }
            Op::Requeue { queue, sub, tags } => {
                let _ = self.send(&queue, Cmd::Nack(sub, tags, 0));
                None
            }
            Op::Reject { queue, sub, tags } => {
                let _ = self.send(&queue, Cmd::Reject(sub, tags));
                None
            }
        }
    }

    /// Takes a publish batch's messages from the user's publish rate: the whole batch at once
    /// when the rate allows it, else message by message, as if they had come one by one. The
    /// refused ones are nacked; what is left to publish (`None`: nothing), its batch re-recorded.
    fn throttle(
        &self,
        conn: &mut Connection,
        reqs: Vec<u64>,
        messages: Vec<levee_proto::Message>,
    ) -> Option<(Vec<u64>, Vec<levee_proto::Message>)> {
        let session = self.session.as_ref()?;
        let principal = session.principal();
        if principal.check_publish(messages.len() as u32).is_ok() {
            return Some((reqs, messages));
        }
        let batch = conn.take_batch(reqs[0]);
        let mut kept = (Vec::new(), Vec::new());
        for (r, m) in batch.into_iter().zip(messages) {
            if principal.check_publish(1).is_ok() {
                kept.0.push(r);
                kept.1.push(m);
            } else {
                tracing::debug!(conn = self.id, user = principal.name(), "publish throttled");
                conn.confirmed(r, false);
            }
        }
        if kept.0.is_empty() {
            return None;
        }
        if kept.0.len() > 1 {
            conn.batches.insert(kept.0[0], kept.0.clone());
        }
        Some(kept)
    }

    /// Runs every pending op, feeding answers back, and lets the machine go on with the bytes
    /// it left in `rbuf` while it waited for them.
    async fn drain(&mut self, conn: &mut Connection, rbuf: &mut BytesMut) {
        loop {
            let mut progressed = false;
            while let Some(op) = conn.poll_op() {
                progressed = true;
                if let Some(r) = self.run(conn, op).await {
                    conn.op_result(r, now_ms());
                }
            }
            if !rbuf.is_empty() && conn.wants_read() && !conn.is_closed() {
                let before = rbuf.len();
                conn.handle_input(self.env(), rbuf, now_ms());
                progressed |= rbuf.len() != before || !conn.ops.is_empty();
            }
            if !progressed {
                return;
            }
        }
    }

    /// The end of the connection: its remaining cleanup, exclusive queues deleted.
    async fn finish(&mut self, conn: &mut Connection) {
        conn.finish();
        while let Some(op) = conn.poll_op() {
            let _ = self.run(conn, op).await;
        }
        for (_, qtx) in self.producing.drain() {
            let _ = qtx.send(Cmd::RemoveProducer(self.id));
        }
        for queue in std::mem::take(&mut self.owned) {
            tracing::info!(conn = self.id, %queue, "exclusive queue's connection closed: deleted");
            self.shared.forget(&queue);
            if let Ok(deletion) = self.shared.broker.begin_delete(&queue) {
                tokio::spawn(deletion);
            }
        }
    }
}

/// Hands the connection up to 256 server frames already queued for it, while it takes frames
/// (its output is not full); true if none is left queued.
fn take_queued(conn: &mut Connection, rx: &mut ConnRx, env: &Shared, now: u64) -> bool {
    for _ in 0..256 {
        if !conn.wants_server_frames() {
            return false;
        }
        let Some(f) = rx.try_recv() else {
            return true;
        };
        conn.handle_server_frame(env, f, now);
    }
    false
}

/// Serves one AMQP connection on `stream` to its end.
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: std::net::SocketAddr,
    cert_user: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let loopback = peer.ip().is_loopback();
    let broker = shared.broker.clone();
    let id = broker.next_id();
    let (tx, mut rx) = conn_channel(broker.config().max_outbox_bytes);
    let outbox = tx.outbox().clone();
    let mut conn = Connection::new(id, shared.settings.clone(), loopback, now_ms());
    let (routed_tx, mut routed_rx) = mpsc::unbounded_channel();
    let mut link = Link {
        routed: None,
        routed_tx,
        shared: shared.clone(),
        id,
        tx,
        in_flight: Arc::new(InFlight::default()),
        producing: HashMap::new(),
        owned: Vec::new(),
        session: None,
    };
    let mut shutdown = shared.shutdown.clone();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut last_write = now_ms();
    tracing::debug!(conn = id, %peer, "AMQP client connected");
    // Listed by the dashboard (consumers and producers by connection) once logged in.
    let mut _listed = None;
    loop {
        if let Some(c) = conn.take_login() {
            let security = shared.broker.security();
            let result = match security
                .login(Some((&c.user, &c.password)), cert_user.as_deref(), peer)
                .await
                .and_then(|p| security.open_session(p))
            {
                Ok(session) => {
                    let name = session.principal().name().to_string();
                    _listed = Some(shared.broker.inner.ops.register_conn(
                        id,
                        crate::ops::ConnEntry {
                            peer,
                            user: name.clone(),
                            client: "amqp".into(),
                            since: now_ms(),
                        },
                    ));
                    link.session = Some(session);
                    Ok(name)
                }
                Err(e) => Err(e.to_string()),
            };
            conn.login_done(result, now_ms());
        }
        link.drain(&mut conn, &mut rbuf).await;
        if !conn.empty_gets.is_empty() {
            // Frames the queues sent before they answered a get "nothing" (its delivery among
            // them) go first; then the gets still without one are empty.
            // (Held while frames are left: the next turn takes them first.)
            if take_queued(&mut conn, &mut rx, link.env(), now_ms()) {
                conn.settle_empty_gets();
                link.drain(&mut conn, &mut rbuf).await;
            }
        }
        // Routed confirms that came meanwhile (an unroutable one comes from inside publish).
        while let Ok(c) = routed_rx.try_recv() {
            for o in &c.outcomes {
                conn.routed_confirmed(c.req, Some(o));
            }
        }
        let out = conn.take_output();
        if !out.is_empty() {
            if wbuf.is_empty() {
                last_write = now_ms();
            }
            wbuf.extend_from_slice(&out);
            conn.sent(now_ms());
        }
        let written = conn.take_written();
        outbox.report_written(&written);
        if conn.is_closed() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&wbuf)).await;
            let _ = wr.shutdown().await;
            break;
        }
        let room = wbuf.len() < MAX_PENDING_OUTPUT;
        let read_cap = conn.read_frame_max() as usize + 64 * 1024;
        let can_read = conn.wants_read() && room && rbuf.len() < read_cap;
        let can_take = conn.wants_server_frames() && room;
        let now = now_ms();
        let mut at = conn.poll_timeout();
        if !wbuf.is_empty() {
            at = at.min(last_write + WRITE_STALL_MS);
        }
        let sleep = tokio::time::sleep(Duration::from_millis(at.saturating_sub(now)));
        tokio::select! {
            r = rd.read_buf(&mut rbuf), if can_read => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => conn.handle_input(link.env(), &mut rbuf, now_ms()),
            },
            f = rx.recv(), if can_take => {
                let Some(f) = f else { break };
                let now = now_ms();
                conn.handle_server_frame(link.env(), f, now);
                take_queued(&mut conn, &mut rx, link.env(), now);
            },
            w = wr.write(&wbuf), if !wbuf.is_empty() => match w {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    wbuf.advance(n);
                    last_write = now_ms();
                    if wbuf.capacity() > 8 << 20 && wbuf.is_empty() {
                        wbuf = BytesMut::new();
                    }
                }
            },
            () = sleep => {
                let now = now_ms();
                if !wbuf.is_empty() && now >= last_write + WRITE_STALL_MS {
                    tracing::warn!(conn = id, "AMQP client does not read what is sent to it: disconnecting");
                    break;
                }
                // Server frames already queued go first: a `basic.get` whose delivery is
                // waiting on `rx` must not time out because the timer won the select.
                if can_take {
                    take_queued(&mut conn, &mut rx, link.env(), now);
                }
                conn.handle_timeout(link.env(), now);
            },
            c = routed_rx.recv(), if can_take => {
                if let Some(c) = c {
                    for o in &c.outcomes {
                        conn.routed_confirmed(c.req, Some(o));
                    }
                }
            },
            () = outbox.stalled.notified() => {
                tracing::warn!(conn = id, "AMQP client does not read its replies: disconnecting");
                break;
            },
            _ = shutdown.changed() => conn.shutdown(now_ms()),
            () = revoked(&mut link.session) => conn.revoke(now_ms()),
        }
    }
    link.finish(&mut conn).await;
    tracing::debug!(conn = id, %peer, "AMQP client disconnected");
}

/// Resolves when the logged-in user of `session` is removed (never before a login).
async fn revoked(session: &mut Option<crate::security::Session>) {
    match session {
        Some(s) => s.revoked().await,
        None => std::future::pending().await,
    }
}
