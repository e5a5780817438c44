//! The queue actor: one tokio task per queue that owns its [`QueueState`] and, for a disk queue,
//! its [`QueueLog`], and carries out the state machine's effects.
//!
//! Connections talk to it through an unbounded command channel whose content is bounded by the
//! protocol: publishes by each connection's in-flight limit and publish credit, deliveries by
//! consumer credit and each connection's outbox room, settlements by the deliveries outstanding.
//! The actor never blocks on a connection: frames for clients go to each connection's
//! [`crate::outbox`], deliveries only within the room it has.
//!
//! # Invariants
//! - A publish is confirmed (`Stored`) only after the log reports it durable under the queue's
//!   fsync policy (after an fsync under `always`), and a message is delivered only once durable.
//! - Messages accepted by the state machine are appended in sequence order, so the log's sequence
//!   numbers and the state machine's agree (the actor is the log's only appender).
//! - Settlement records are appended after the messages they settle. A settlement the log could
//!   not take (a full disk, a failed log) is kept and retried until it is written, so an acked
//!   message does not come back at the next restart.
//! - After a failed fsync the watermark does not move: the messages it covered are written again
//!   into a reopened log (never trusting a retried fsync) and delivered only once that rewrite is
//!   durable; their producers got failed confirms.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use levee_proto::{
    Delivery, ErrorCode, MAX_BATCH, Message, Overflow, PublishOutcome, QueueConfig, QueueInfo,
    QueueStats, ServerFrame,
};
use levee_store::{Backend, Durability, LogConfig, NewMessage, QueueLog, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::ConnTx;
use crate::queue::{
    ConsumerId, DEATH_HEADERS, DELIVERY_OVERHEAD, Effect, Outgoing, ProducerId, QueueState,
    Settlement,
};

/// A disk queue's log, shared with the broker (stats, closing at delete and shutdown). The actor
/// replaces it when it reopens the log after a failure.
pub(crate) type LogSlot = Arc<parking_lot::RwLock<Option<Arc<QueueLog>>>>;

static NEXT_ACTOR_ID: AtomicU64 = AtomicU64::new(1);

/// Milliseconds since the Unix epoch: the clock the state machine is driven by.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unconfirmed publishes of one connection, released as confirms are sent.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl InFlight {
    fn release(&self, messages: u64, bytes: u64) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A command for a queue actor.
pub(crate) enum Cmd {
    Publish {
        producer: ProducerId,
        req: u64,
        messages: Vec<Message>,
        conn: ConnTx,
        in_flight: Arc<InFlight>,
    },
    /// A message moved here from another queue's dead-lettering.
    DeadLetter(Message),
    AddProducer {
        producer: ProducerId,
        conn: ConnTx,
    },
    /// The connection closed (or stopped publishing here): release its credit and discard its
    /// held publishes.
    RemoveProducer(ProducerId),
    Subscribe {
        consumer: ConsumerId,
        auto_ack: bool,
        credit: u32,
        conn: ConnTx,
    },
    Unsubscribe(ConsumerId),
    Credit(ConsumerId, u32),
    Ack(ConsumerId, Vec<u64>),
    Nack(ConsumerId, Vec<u64>, u64),
    Reject(ConsumerId, Vec<u64>),
    /// The consumer's connection wrote every delivery up to this tag to its socket.
    Written(ConsumerId, u64),
    /// A connection whose outbox was full has room again.
    OutboxRoom,
    Inspect(oneshot::Sender<QueueInfo>),
    Purge(oneshot::Sender<u64>),
    /// Stop: drop everything; replies with the number of messages that were held.
    Delete(oneshot::Sender<u64>),
    /// Stop because the broker shuts down (the log keeps everything).
    Stop,
}

/// Resolves dead-letter targets: the broker's queue registry.
pub(crate) trait Router: Send + Sync + 'static {
    /// The command channel of `queue`, if it exists.
    fn route(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>>;
}

struct PendingConfirm {
    conn: ConnTx,
    req: u64,
    outcomes: Vec<Option<PublishOutcome>>,
    missing: usize,
    /// One past the highest sequence number stored by this request: the durability watermark
    /// must reach it before confirming (0: nothing to wait for).
    needs_seq: u64,
    in_flight: Arc<InFlight>,
    messages: u64,
    bytes: u64,
}

/// A token for a held publish: request slot and index within it.
fn token(slot: u64, index: usize) -> u64 {
    slot * MAX_BATCH as u64 + index as u64
}

/// Counter samples for rates over a sliding window.
struct Rates {
    samples: VecDeque<(u64, [u64; 3])>,
}

impl Rates {
    const WINDOW_MS: u64 = 5_000;

    fn sample(&mut self, now: u64, c: [u64; 3]) -> [u64; 3] {
        if self.samples.back().is_none_or(|(t, _)| now >= t + 1_000) {
            self.samples.push_back((now, c));
        }
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) > Self::WINDOW_MS)
        {
            self.samples.pop_front();
        }
        let (t0, c0) = self.samples.front().copied().unwrap_or((now, c));
        let dt = now.saturating_sub(t0);
        if dt == 0 {
            return [0; 3];
        }
        std::array::from_fn(|i| (c[i] - c0[i]) * 1_000 / dt)
    }
}

pub(crate) struct QueueActor {
    name: String,
    /// Unique among actors (outbox wake-up registrations are keyed by it).
    id: u64,
    state: QueueState,
    log: Option<Arc<QueueLog>>,
    slot: Option<LogSlot>,
    /// Where the log lives and how it is configured (to reopen it).
    log_location: Option<(std::path::PathBuf, LogConfig)>,
    backend: Arc<dyn Backend>,
    fsync_waits: bool,
    /// The log failed (an fsync or a write-path error): it refuses all work until reopened.
    log_failed: bool,
    /// When to try reopening a failed log, and the back-off after a failed attempt.
    reopen_at: Option<u64>,
    reopen_backoff_ms: u64,
    /// Settlements the log could not take (full disk, failed log), retried until written.
    /// Bounded by the messages in the log: each is for a distinct unsettled message.
    retry_settles: Vec<(u64, levee_store::Settlement)>,
    retry_at: Option<u64>,
    /// This actor's own channel, weakly (for outbox wake-ups; it must not keep the actor alive).
    self_tx: mpsc::WeakUnboundedSender<Cmd>,
    /// Appends not yet durable: (last seq + 1, handle), in append order.
    syncing: VecDeque<(u64, Durability)>,
    /// Messages with a sequence number below this are durable.
    durable: u64,
    pending: HashMap<u64, PendingConfirm>,
    next_slot: u64,
    consumers: HashMap<ConsumerId, ConnTx>,
    producers: HashMap<ProducerId, ConnTx>,
    router: Arc<dyn Router>,
    rates: Rates,
    rx: mpsc::UnboundedReceiver<Cmd>,
    stop_reason: Option<(ErrorCode, &'static str)>,
}

impl QueueActor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        state: QueueState,
        slot: Option<LogSlot>,
        backend: Arc<dyn Backend>,
        router: Arc<dyn Router>,
        self_tx: mpsc::WeakUnboundedSender<Cmd>,
        rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Self {
        let log = slot.as_ref().and_then(|s| s.read().clone());
        let fsync_waits = log
            .as_ref()
            .is_some_and(|l| l.config().fsync == levee_store::FsyncPolicy::Always);
        let durable = state.next_seq();
        let mut state = state;
        if log.is_some() {
            state.set_durable(durable);
        }
        QueueActor {
            name,
            id: NEXT_ACTOR_ID.fetch_add(1, Ordering::Relaxed),
            state,
            log_location: log
                .as_ref()
                .map(|l| (l.dir().to_path_buf(), l.config().clone())),
            log,
            slot,
            backend,
            fsync_waits,
            log_failed: false,
            reopen_at: None,
            reopen_backoff_ms: 100,
            retry_settles: Vec::new(),
            retry_at: None,
            self_tx,
            syncing: VecDeque::new(),
            durable,
            pending: HashMap::new(),
            next_slot: 1,
            consumers: HashMap::new(),
            producers: HashMap::new(),
            router,
            rates: Rates {
                samples: VecDeque::new(),
            },
            rx,
            stop_reason: None,
        }
    }

    /// Runs until the queue is deleted or every handle to it is gone.
    pub(crate) async fn run(mut self) {
        loop {
            let deadline = [self.state.next_deadline(), self.reopen_at, self.retry_at]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle(cmd) {
                        break;
                    }
                    self.apply_effects(now_ms());
                    // Take everything already queued before doing the I/O, so one group commit
                    // and one dispatch serve many commands.
                    let mut stop = false;
                    while let Ok(cmd) = self.rx.try_recv() {
                        if self.handle(cmd) {
                            stop = true;
                            break;
                        }
                        self.apply_effects(now_ms());
                    }
                    if stop {
                        break;
                    }
                }
                res = Self::front_durable(&mut self.syncing) => {
                    self.on_durable(res);
                }
                () = sleep => {
                    let now = now_ms();
                    if self.reopen_at.is_some_and(|at| at <= now) {
                        self.reopen().await;
                    }
                    if self.retry_at.is_some_and(|at| at <= now) {
                        self.retry_settlements();
                    }
                    let now = now_ms();
                    self.state.tick(now);
                    self.apply_effects(now);
                }
            }
            self.flush();
        }
        self.shutdown();
    }

    /// Waits for the oldest outstanding append to become durable (cancel-safe: the handle stays
    /// in the queue if this future is dropped).
    async fn front_durable(
        syncing: &mut VecDeque<(u64, Durability)>,
    ) -> (u64, Result<(), StoreError>) {
        match syncing.front_mut() {
            Some((seq, d)) => {
                let res = d.await.map(|_| ());
                (*seq, res)
            }
            None => std::future::pending().await,
        }
    }

    fn on_durable(&mut self, (seq, res): (u64, Result<(), StoreError>)) {
        self.syncing.pop_front();
        match res {
            Ok(()) => {
                self.durable = self.durable.max(seq);
                self.state.set_durable(self.durable);
            }
            Err(e) => {
                // The log could not make these messages durable: fail their confirms, and keep
                // them from consumers (the watermark stays) until they are written again into a
                // reopened log and that is durable. A retried fsync is never trusted: after a
                // failed one the kernel may have dropped the dirty pages.
                self.fail_pending_up_to(seq, &e);
                self.log_failure(&e);
            }
        }
        self.complete_confirms();
    }

    /// The log failed: schedule reopening it (once per failure).
    fn log_failure(&mut self, e: &StoreError) {
        if self.log_failed {
            return;
        }
        tracing::error!(queue = %self.name, error = %e,
            "queue log failed: messages not yet durable are held back and will be written again");
        self.log_failed = true;
        self.reopen_at = Some(now_ms());
    }

    /// Reopens a failed log from what is really on disk: records past the durability watermark
    /// are settled as untrusted and their messages, still in memory, are written again; they are
    /// delivered once that is durable. On failure, retried with back-off.
    async fn reopen(&mut self) {
        self.reopen_at = None;
        let (Some((dir, config)), Some(slot)) = (self.log_location.clone(), self.slot.clone())
        else {
            return;
        };
        // Appends still waiting for durability belong to the failed log: they fail.
        let err = StoreError::Closed;
        while let Some((seq, _)) = self.syncing.pop_front() {
            self.fail_pending_up_to(seq, &err);
        }
        *slot.write() = None;
        drop(self.log.take());
        let backend = self.backend.clone();
        let opened = tokio::task::spawn_blocking(move || QueueLog::open(backend, &dir, config))
            .await
            .map_err(|e| StoreError::InvalidInput {
                reason: format!("reopen task failed: {e}"),
            })
            .and_then(|r| r);
        let (log, rec) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "reopening the queue log failed; retrying");
                self.reopen_backoff_ms = (self.reopen_backoff_ms * 2).min(5_000);
                self.reopen_at = Some(now_ms() + self.reopen_backoff_ms);
                // Keep appends refused meanwhile: the slot stays empty, the actor has no log.
                return;
            }
        };
        let watermark = self.durable;
        let stale: Vec<(u64, levee_store::Settlement)> = rec
            .unsettled
            .iter()
            .filter(|m| m.seq >= watermark)
            .map(|m| {
                (
                    m.seq,
                    levee_store::Settlement::Dropped("rewritten-after-failure".into()),
                )
            })
            .collect();
        let undurable = self.state.take_undurable();
        let config = self.state.config().clone();
        let records: Vec<NewMessage> = undurable
            .iter()
            .filter_map(|(_, q, _)| {
                q.message
                    .as_ref()
                    .map(|m| to_record(q.timestamp_ms, m, &config))
            })
            .collect();
        let rewrite = (|| -> Result<Option<levee_store::Appended>, StoreError> {
            if !stale.is_empty() {
                // Made durable by the rewrite's own group commit (written before it), or by
                // the sync below when nothing is rewritten.
                let _settled = log.settle_batch(&stale)?;
            }
            if records.is_empty() {
                return Ok(None);
            }
            log.append_batch(&records).map(Some)
        })();
        match rewrite {
            Ok(appended) => {
                let n = undurable.len();
                let mut next = appended.as_ref().map_or(0, |a| a.first_seq);
                for (_, queued, meta) in undurable {
                    if queued.message.is_none() {
                        // Past the watermark every message is a fresh publish with its body.
                        continue;
                    }
                    self.state.restore_rewritten(next, queued, meta);
                    next += 1;
                }
                self.state.set_next_seq(log.stats().next_seq);
                if appended.is_none() && !stale.is_empty() && self.fsync_waits {
                    self.syncing.push_back((self.durable, log.sync()));
                }
                if let Some(a) = appended {
                    if self.fsync_waits {
                        self.syncing.push_back((a.last_seq + 1, a.durability));
                    } else {
                        self.durable = a.last_seq + 1;
                        self.state.set_durable(self.durable);
                    }
                }
                let log = Arc::new(log);
                *slot.write() = Some(log.clone());
                self.log = Some(log);
                self.log_failed = false;
                self.reopen_backoff_ms = 100;
                tracing::warn!(queue = %self.name, rewritten = n, untrusted = stale.len(),
                    "queue log reopened after a failure");
                self.retry_settlements();
            }
            Err(e) => {
                // Put the messages back as they were (still past the watermark) and retry.
                for (seq, queued, meta) in undurable {
                    self.state.restore_rewritten(seq, queued, meta);
                }
                tracing::error!(queue = %self.name, error = %e, "rewriting after a log failure failed; retrying");
                self.reopen_backoff_ms = (self.reopen_backoff_ms * 2).min(5_000);
                self.reopen_at = Some(now_ms() + self.reopen_backoff_ms);
            }
        }
    }

    /// Handles one command; `true` means stop.
    fn handle(&mut self, cmd: Cmd) -> bool {
        let now = now_ms();
        match cmd {
            Cmd::Publish {
                producer,
                req,
                messages,
                conn,
                in_flight,
            } => self.publish(now, producer, req, messages, conn, in_flight),
            Cmd::DeadLetter(message) => self.dead_letter_in(now, message),
            Cmd::AddProducer { producer, conn } => {
                self.producers.insert(producer, conn);
                self.state.add_producer(producer);
            }
            Cmd::RemoveProducer(producer) => {
                self.producers.remove(&producer);
                self.state.remove_producer(now, producer);
            }
            Cmd::Subscribe {
                consumer,
                auto_ack,
                credit,
                conn,
            } => {
                self.consumers.insert(consumer, conn);
                self.state.subscribe(consumer, auto_ack);
                self.state.track_writes(consumer);
                self.state.add_credit(consumer, credit);
            }
            Cmd::Unsubscribe(consumer) => {
                self.consumers.remove(&consumer);
                self.state.unsubscribe(now, consumer);
            }
            Cmd::Credit(consumer, n) => self.state.add_credit(consumer, n),
            Cmd::Written(consumer, tag) => self.state.written(now, consumer, tag),
            // The flush after every command dispatches to it.
            Cmd::OutboxRoom => {}
            Cmd::Ack(consumer, tags) => {
                let errors = self.state.ack(now, consumer, &tags);
                self.report(consumer, errors)
            }
            Cmd::Nack(consumer, tags, delay) => {
                let errors = self.state.nack(now, consumer, &tags, delay);
                self.report(consumer, errors)
            }
            Cmd::Reject(consumer, tags) => {
                let errors = self.state.reject(now, consumer, &tags);
                self.report(consumer, errors)
            }
            Cmd::Inspect(reply) => {
                let _ = reply.send(self.info(now));
            }
            Cmd::Purge(reply) => {
                let _ = reply.send(self.state.purge(now));
            }
            Cmd::Delete(reply) => {
                let s = self.state.stats();
                let _ = reply.send(s.ready + s.unacked);
                self.stop_reason = Some((ErrorCode::UnknownQueue, "was deleted"));
                return true;
            }
            Cmd::Stop => {
                self.stop_reason = Some((ErrorCode::ShuttingDown, "is shutting down"));
                return true;
            }
        }
        false
    }

    fn report(&self, consumer: ConsumerId, errors: Vec<crate::queue::SettleError>) {
        if errors.is_empty() {
            return;
        }
        if let Some(conn) = self.consumers.get(&consumer) {
            let tags: Vec<String> = errors
                .iter()
                .map(|crate::queue::SettleError::UnknownTag(t)| t.to_string())
                .collect();
            let _ = conn.send(ServerFrame::Error {
                req: 0,
                code: ErrorCode::UnknownDeliveryTag,
                message: format!(
                    "queue {}: subscription {consumer}: delivery tags not outstanding: {}",
                    self.name,
                    tags.join(",")
                ),
            });
        }
    }

    fn publish(
        &mut self,
        now: u64,
        producer: ProducerId,
        req: u64,
        messages: Vec<Message>,
        conn: ConnTx,
        in_flight: Arc<InFlight>,
    ) {
        let slot = self.next_slot;
        self.next_slot += 1;
        let n = messages.len();
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        let mut outcomes = Vec::with_capacity(n);
        let mut missing = 0;
        let mut stored: Vec<(u64, Message)> = Vec::new();
        let credit_ok = self.state.has_credit(producer, n as u32);
        for (i, m) in messages.into_iter().enumerate() {
            if !credit_ok {
                outcomes.push(Some(self.state.refuse_publish(
                    ErrorCode::NoPublishCredit,
                    format!(
                        "queue {}: publish without publish credit on a block queue",
                        self.name
                    ),
                )));
                continue;
            }
            let copy = self.log.is_some().then(|| m.clone());
            match self.state.publish(now, producer, token(slot, i), m) {
                Some(outcome) => {
                    if let (PublishOutcome::Stored { seq }, Some(m)) = (&outcome, copy) {
                        stored.push((*seq, m));
                    }
                    outcomes.push(Some(outcome));
                }
                None => {
                    missing += 1;
                    outcomes.push(None);
                }
            }
        }
        let needs_seq = self.append(now, stored, &mut outcomes);
        self.pending.insert(
            slot,
            PendingConfirm {
                conn,
                req,
                outcomes,
                missing,
                needs_seq,
                in_flight,
                messages: n as u64,
                bytes,
            },
        );
    }

    /// A message dead-lettered into this queue. It needs no credit; on a full `block` queue it is
    /// refused (counted as rejected here) rather than held, so dead-lettering cannot pile up.
    fn dead_letter_in(&mut self, now: u64, message: Message) {
        if self.state.config().overflow == Overflow::Block && !self.state.would_fit(&message) {
            let _ = self
                .state
                .refuse_publish(ErrorCode::QueueFull, "dead-letter queue is full".into());
            return;
        }
        let copy = self.log.is_some().then(|| message.clone());
        let outcome = self.state.publish(now, 0, 0, message);
        if let (Some(PublishOutcome::Stored { seq }), Some(m)) = (outcome, copy) {
            let mut none: Vec<Option<PublishOutcome>> = Vec::new();
            self.append(now, vec![(seq, m)], &mut none);
        }
    }

    /// Appends stored messages to the log (disk queues); returns the highest sequence number the
    /// confirm must wait for. On an append error, the messages are taken back out of the queue
    /// and their outcomes become `Rejected` with the storage error.
    fn append(
        &mut self,
        now: u64,
        stored: Vec<(u64, Message)>,
        outcomes: &mut [Option<PublishOutcome>],
    ) -> u64 {
        if self.slot.is_none() {
            return 0; // a memory queue
        }
        let Some(&(last, _)) = stored.last() else {
            return 0;
        };
        let result = match &self.log {
            Some(log) => {
                let records: Vec<NewMessage> = stored
                    .iter()
                    .map(|(_, m)| to_record(now, m, self.state.config()))
                    .collect();
                log.append_batch(&records)
            }
            // Being reopened after a failure.
            None => Err(StoreError::Closed),
        };
        match result {
            Ok(appended) => {
                if appended.first_seq != stored[0].0 {
                    // A bug: the confirms would name the wrong sequence numbers.
                    tracing::error!(queue = %self.name, log = appended.first_seq,
                        state = stored[0].0, "log and state machine disagree on sequence numbers");
                    debug_assert!(false, "log and state agree");
                }
                if self.fsync_waits {
                    self.syncing
                        .push_back((appended.last_seq + 1, appended.durability));
                    last + 1
                } else {
                    self.durable = appended.last_seq + 1;
                    self.state.set_durable(self.durable);
                    0
                }
            }
            Err(e) => {
                if matches!(e, StoreError::Failed { .. }) {
                    self.log_failure(&e);
                } else {
                    tracing::error!(queue = %self.name, error = %e, "append failed");
                }
                let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
                self.state.abort_publish(&seqs);
                let code = storage_code(&e);
                for o in outcomes.iter_mut() {
                    if let Some(PublishOutcome::Stored { seq }) = o
                        && seqs.contains(seq)
                    {
                        *o = Some(PublishOutcome::Rejected {
                            code,
                            reason: format!("queue {}: storage error: {e}", self.name),
                        });
                    }
                }
                0
            }
        }
    }

    fn fail_pending_up_to(&mut self, seq: u64, e: &StoreError) {
        for p in self.pending.values_mut() {
            if p.needs_seq != 0 && p.needs_seq <= seq {
                // both exclusive bounds
                for o in p.outcomes.iter_mut() {
                    if matches!(o, Some(PublishOutcome::Stored { .. })) {
                        *o = Some(PublishOutcome::Rejected {
                            code: storage_code(e),
                            reason: format!("storage error: {e}"),
                        });
                    }
                }
                p.needs_seq = 0;
            }
        }
    }

    /// Sends every confirm whose outcomes are all known and durable.
    fn complete_confirms(&mut self) {
        let durable = self.durable;
        let mut ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.missing == 0 && p.needs_seq <= durable)
            .map(|(slot, _)| *slot)
            .collect();
        // Confirms go out in request order.
        ready.sort_unstable();
        for slot in ready {
            let p = self.pending.remove(&slot).expect("listed");
            p.in_flight.release(p.messages, p.bytes);
            let outcomes = p
                .outcomes
                .into_iter()
                .map(|o| o.expect("complete"))
                .collect();
            let _ = p.conn.send(ServerFrame::PublishConfirm {
                req: p.req,
                outcomes,
            });
        }
    }

    /// Carries out effects, dispatches, and sends confirms: run after every wake-up.
    fn flush(&mut self) {
        let now = now_ms();
        // Deliveries go to a connection only within the room its outbox has: claim it first.
        let mut claims: Vec<(ConsumerId, u64)> = Vec::new();
        for consumer in self.state.consumers_wanting() {
            let Some(conn) = self.consumers.get(&consumer) else {
                continue;
            };
            let room = conn.outbox().claim();
            if room == 0 {
                conn.outbox().wait_for_room(self.id, self.self_tx.clone());
            }
            self.state.set_budget(consumer, Some(room));
            claims.push((consumer, room));
        }
        let mut out = Vec::new();
        self.state.dispatch(now, &mut out);
        self.apply_effects(now);
        self.deliver(now, out, &claims);
        self.complete_confirms();
    }

    fn apply_effects(&mut self, now: u64) {
        let effects = self.state.take_effects();
        if effects.is_empty() {
            return;
        }
        let mut settles: Vec<(u64, levee_store::Settlement)> = Vec::new();
        let mut counts: Vec<(u64, u32)> = Vec::new();
        for effect in effects {
            match effect {
                Effect::Settle { seq, how } => {
                    settles.push((seq, to_settlement(how, self.state.config())))
                }
                Effect::DeliveryCount { seq, count } => counts.push((seq, count)),
                Effect::DeadLetter {
                    seq,
                    target,
                    message,
                    reason,
                    deliveries,
                } => {
                    let Some(mut m) = message.or_else(|| self.read(seq).map(|(m, _)| m)) else {
                        continue;
                    };
                    // Replaced, not repeated: a message dead-lettered again keeps fitting
                    // MAX_HEADERS (published messages carry at most MAX_USER_HEADERS others).
                    m.headers
                        .retain(|(n, _)| !DEATH_HEADERS.contains(&n.as_str()));
                    m.headers
                        .push(("x-death-reason".into(), reason.as_str().into()));
                    m.headers
                        .push(("x-death-queue".into(), Bytes::from(self.name.clone())));
                    m.headers.push((
                        "x-delivery-count".into(),
                        Bytes::from(deliveries.to_string()),
                    ));
                    match self.router.route(&target) {
                        Some(tx) if target != self.name => {
                            let _ = tx.send(Cmd::DeadLetter(m));
                        }
                        _ => tracing::warn!(queue = %self.name, %target,
                            "dead-letter queue missing: message dropped"),
                    }
                }
                Effect::Credit { producer, n } => {
                    if let Some(conn) = self.producers.get(&producer) {
                        let _ = conn.send(ServerFrame::PublishCredit {
                            queue: self.name.clone(),
                            n,
                        });
                    }
                }
                Effect::Confirm {
                    token,
                    outcome,
                    stored,
                } => {
                    let slot = token / MAX_BATCH as u64;
                    let index = (token % MAX_BATCH as u64) as usize;
                    let mut outcome = Some(outcome);
                    if let (Some(PublishOutcome::Stored { seq }), Some(m)) =
                        (outcome.clone(), stored)
                    {
                        // Appended now: nothing published later may reach the log first.
                        let mut one = [outcome.take()];
                        let needs = self.append(now, vec![(seq, m)], &mut one);
                        outcome = one[0].take();
                        if let Some(p) = self.pending.get_mut(&slot) {
                            p.needs_seq = p.needs_seq.max(needs);
                        }
                    }
                    if let Some(p) = self.pending.get_mut(&slot) {
                        p.outcomes[index] = outcome;
                        p.missing -= 1;
                    }
                }
            }
        }
        if self.slot.is_none() {
            return;
        }
        if !counts.is_empty()
            && let Some(log) = &self.log
            && let Err(e) = log.record_deliveries(&counts)
        {
            // A lost delivery count only lowers max-deliveries accounting after a restart.
            tracing::warn!(queue = %self.name, error = %e, "recording delivery counts failed");
        }
        if !settles.is_empty() {
            self.settle(settles);
        }
    }

    /// Writes settlement records; those the log cannot take now (a full disk, a failed log)
    /// are kept and retried, so an acked message does not come back at the next restart. One
    /// log line when retrying starts and one when it is done, not one per message.
    fn settle(&mut self, settles: Vec<(u64, levee_store::Settlement)>) {
        if !self.retry_settles.is_empty() {
            // Keep order: older failed settlements first.
            self.retry_settles.extend(settles);
            self.retry_settlements();
            return;
        }
        let Some(log) = &self.log else {
            self.keep_for_retry(settles, None);
            return;
        };
        let e = match log.settle_batch(&settles) {
            Ok(_) => return,
            Err(e) => e,
        };
        if !retriable(&e) {
            // A batch is all-or-nothing: settle one by one so one bad entry (a message whose
            // append failed) does not keep the others unsettled.
            let mut failed = Vec::new();
            for item in settles {
                match log.settle(item.0, item.1.clone()) {
                    Ok(_) => {}
                    Err(e) if retriable(&e) => failed.push(item),
                    Err(e) => {
                        tracing::warn!(queue = %self.name, seq = item.0, error = %e, "settlement failed")
                    }
                }
            }
            if !failed.is_empty() {
                self.keep_for_retry(failed, None);
            }
            return;
        }
        self.keep_for_retry(settles, Some(&e));
    }

    fn keep_for_retry(
        &mut self,
        settles: Vec<(u64, levee_store::Settlement)>,
        error: Option<&StoreError>,
    ) {
        if self.retry_settles.is_empty() {
            match error {
                Some(e) => tracing::warn!(queue = %self.name, error = %e,
                    "settlements cannot be written now; keeping them and retrying"),
                None => tracing::warn!(queue = %self.name,
                    "settlements cannot be written now (log unavailable); keeping them and retrying"),
            }
        }
        if let Some(e) = error
            && matches!(e, StoreError::Failed { .. })
        {
            self.log_failure(e);
        }
        self.retry_settles.extend(settles);
        self.retry_at = Some(now_ms() + RETRY_MS);
    }

    /// Retries kept settlements (all at once, else one by one).
    fn retry_settlements(&mut self) {
        self.retry_at = None;
        if self.retry_settles.is_empty() {
            return;
        }
        let Some(log) = self.log.clone() else {
            self.retry_at = Some(now_ms() + RETRY_MS);
            return;
        };
        let items = std::mem::take(&mut self.retry_settles);
        let n = items.len();
        if log.settle_batch(&items).is_ok() {
            tracing::info!(queue = %self.name, settlements = n, "kept settlements written");
            return;
        }
        let mut still = Vec::new();
        for item in items {
            match log.settle(item.0, item.1.clone()) {
                Ok(_) => {}
                Err(e) if retriable(&e) => still.push(item),
                // Already settled or gone (its message's append failed): nothing to write.
                Err(_) => {}
            }
        }
        if still.is_empty() {
            tracing::info!(queue = %self.name, settlements = n, "kept settlements written");
        } else {
            self.retry_settles = still;
            self.retry_at = Some(now_ms() + RETRY_MS);
        }
    }

    /// Reads a message back from the log, with its publish time.
    fn read(&self, seq: u64) -> Option<(Message, u64)> {
        let log = self.log.as_ref()?;
        match log.read(seq) {
            Ok(stored) => {
                let ts = stored.message.timestamp_ms;
                Some((from_record(stored.message), ts))
            }
            Err(e) => {
                tracing::error!(queue = %self.name, seq, error = %e, "reading a message failed");
                None
            }
        }
    }

    /// Sends dispatched deliveries, charged to the claims made for them, and settles the claims.
    fn deliver(&mut self, now: u64, out: Vec<Outgoing>, claims: &[(ConsumerId, u64)]) {
        let mut by_consumer: HashMap<ConsumerId, Vec<Delivery>> = HashMap::new();
        let mut unreadable: Vec<(ConsumerId, u64)> = Vec::new();
        for o in out {
            let (message, timestamp_ms) = match o.message {
                Some(m) => (m, o.timestamp_ms),
                // Recovered after a restart: the body and its publish time are in the log.
                None => match self.read(o.seq) {
                    Some(x) => x,
                    None => {
                        unreadable.push((o.consumer, o.tag));
                        continue;
                    }
                },
            };
            by_consumer.entry(o.consumer).or_default().push(Delivery {
                subscription: o.consumer,
                tag: o.tag,
                seq: o.seq,
                delivery_count: o.deliveries,
                timestamp_ms,
                message,
            });
        }
        let mut used: HashMap<ConsumerId, u64> = HashMap::new();
        for (consumer, deliveries) in by_consumer {
            if let Some(conn) = self.consumers.get(&consumer) {
                for (chunk, bytes) in chunk_deliveries(deliveries) {
                    *used.entry(consumer).or_default() += bytes;
                    let _ = conn.send_deliveries(ServerFrame::Deliver { deliveries: chunk }, bytes);
                }
            }
        }
        for &(consumer, claimed) in claims {
            if let Some(conn) = self.consumers.get(&consumer) {
                conn.outbox()
                    .settle_claim(claimed, used.get(&consumer).copied().unwrap_or(0));
            }
        }
        // A message that could not be read never left: it goes back, its count unchanged.
        for (consumer, tag) in unreadable {
            self.state.unsent(now, consumer, &[tag]);
        }
        self.apply_effects(now);
    }

    fn info(&mut self, now: u64) -> QueueInfo {
        let mut stats: QueueStats = self.state.stats();
        let c = self.state.counters();
        let [p, d, a] = self.rates.sample(now, [c.published, c.delivered, c.acked]);
        stats.publish_rate = p;
        stats.deliver_rate = d;
        stats.ack_rate = a;
        QueueInfo {
            queue: self.name.clone(),
            config: self.state.config().clone(),
            stats,
        }
    }

    fn shutdown(&mut self) {
        // Pending confirms of a deleted or stopping queue fail; their connections learn why.
        let (code, why) = self
            .stop_reason
            .unwrap_or((ErrorCode::ShuttingDown, "stopped"));
        for (_, p) in self.pending.drain() {
            p.in_flight.release(p.messages, p.bytes);
            let _ = p.conn.send(ServerFrame::Error {
                req: p.req,
                code,
                message: format!("queue {} {why}", self.name),
            });
        }
    }
}

/// Splits deliveries into `Deliver` frames of at most [`MAX_BATCH`] messages and about 4 MiB,
/// each with the bytes it is charged to its connection's outbox.
fn chunk_deliveries(deliveries: Vec<Delivery>) -> Vec<(Vec<Delivery>, u64)> {
    const FRAME_BUDGET: u64 = 4 * 1024 * 1024;
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for d in deliveries {
        let len = d.message.wire_len() as u64 + DELIVERY_OVERHEAD;
        if !cur.is_empty() && (cur.len() == MAX_BATCH || size + len > FRAME_BUDGET) {
            chunks.push((std::mem::take(&mut cur), size));
            size = 0;
        }
        size += len;
        cur.push(d);
    }
    if !cur.is_empty() {
        chunks.push((cur, size));
    }
    chunks
}

/// How long kept settlements wait before the next retry.
const RETRY_MS: u64 = 500;

/// Errors after which a settlement is worth retrying: space may come back, a failed log is
/// reopened. (Settled / unknown sequence numbers are final.)
fn retriable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::DiskFull { .. }
            | StoreError::Failed { .. }
            | StoreError::Io { .. }
            | StoreError::Closed
    )
}

fn storage_code(e: &StoreError) -> ErrorCode {
    if matches!(e, StoreError::DiskFull { .. }) {
        ErrorCode::StorageFull
    } else {
        ErrorCode::Internal
    }
}

fn to_settlement(how: Settlement, config: &QueueConfig) -> levee_store::Settlement {
    match how {
        Settlement::Acked => levee_store::Settlement::Acked,
        Settlement::Dropped(r) => levee_store::Settlement::Dropped(r.as_str().into()),
        Settlement::Expired => levee_store::Settlement::Expired,
        Settlement::DeadLettered => {
            levee_store::Settlement::DeadLettered(config.dead_letter.clone().unwrap_or_default())
        }
    }
}

/// The log record for a message stored at `now` (TTL made absolute from `now`, as the state
/// machine did).
fn to_record(now: u64, m: &Message, config: &QueueConfig) -> NewMessage {
    let ttl = match (m.ttl_ms, config.message_ttl_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut headers = m.headers.clone();
    if let Some(id) = m.producer_id {
        headers.push((
            PRODUCER_ID_HEADER.into(),
            Bytes::copy_from_slice(&id.to_le_bytes()),
        ));
    }
    NewMessage {
        timestamp_ms: now,
        key: m.key.clone(),
        priority: m.priority,
        ttl_ms: ttl,
        headers,
        payload: m.payload.clone(),
    }
}

/// The producer message id is kept in the log as a reserved header.
const PRODUCER_ID_HEADER: &str = "\0levee-producer-id";

pub(crate) fn from_record(r: NewMessage) -> Message {
    let mut producer_id = None;
    let headers = r
        .headers
        .into_iter()
        .filter(|(name, value)| {
            if name == PRODUCER_ID_HEADER {
                producer_id = value[..].try_into().ok().map(u64::from_le_bytes);
                false
            } else {
                true
            }
        })
        .collect();
    Message {
        key: r.key,
        priority: r.priority,
        ttl_ms: r.ttl_ms,
        headers,
        producer_id,
        payload: r.payload,
    }
}
