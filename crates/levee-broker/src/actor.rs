//! The queue actor: one tokio task per queue that owns its [`QueueState`] and, for a disk queue,
//! its [`QueueLog`], and carries out the state machine's effects.
//!
//! Connections talk to it through an unbounded command channel whose content is bounded by the
//! protocol: publishes by each connection's in-flight limit and publish credit, deliveries by
//! consumer credit, settlements by the deliveries outstanding. The actor never blocks on a
//! connection: frames for clients go to each connection's writer channel.
//!
//! # Invariants
//! - A publish is confirmed (`Stored`) only after the log reports it durable under the queue's
//!   fsync policy (after an fsync under `always`), and a message is delivered only once durable.
//! - Messages accepted by the state machine are appended in sequence order, so the log's sequence
//!   numbers and the state machine's agree (the actor is the log's only appender).
//! - Settlement records are appended after the messages they settle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use levee_proto::{
    Delivery, ErrorCode, MAX_BATCH, Message, Overflow, PublishOutcome, QueueConfig, QueueInfo,
    QueueStats, ServerFrame,
};
use levee_store::{Durability, NewMessage, QueueLog, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::queue::{ConsumerId, Effect, Outgoing, ProducerId, QueueState, Settlement};

/// Most frames other than deliveries that may wait for one connection's writer. Deliveries are
/// bounded by the consumers' credit; replies, confirms and errors are bounded by this: a client
/// that keeps sending requests but never reads its socket is disconnected once its outgoing queue
/// holds this many, instead of growing the broker's memory. Memory bound: this many small frames
/// (a `QueueList` or `QueueStats` reply is at most `MAX_LIST` entries).
pub(crate) const MAX_QUEUED_CONTROL: usize = 65_536;

/// Shared between a connection's senders and its writer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queued: std::sync::atomic::AtomicUsize,
    /// Woken once the queue overflowed: the connection's reader then closes it.
    pub(crate) stalled: tokio::sync::Notify,
}

/// Where frames for one connection go (its writer task). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConnTx {
    tx: mpsc::UnboundedSender<ServerFrame>,
    outbox: Arc<Outbox>,
}

/// The writer's end of a [`ConnTx`].
pub(crate) struct ConnRx {
    rx: mpsc::UnboundedReceiver<ServerFrame>,
    outbox: Arc<Outbox>,
}

/// A connection's outgoing frame queue.
pub(crate) fn conn_channel() -> (ConnTx, ConnRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox::default());
    (
        ConnTx {
            tx,
            outbox: outbox.clone(),
        },
        ConnRx { rx, outbox },
    )
}

impl ConnTx {
    /// Queues a frame for the connection. Fails if the connection is gone, or (for anything but
    /// a delivery) if [`MAX_QUEUED_CONTROL`] frames are already waiting: the client is not
    /// reading, and the connection is marked stalled so its reader closes it.
    pub(crate) fn send(&self, frame: ServerFrame) -> Result<(), ()> {
        if !matches!(frame, ServerFrame::Deliver { .. }) {
            let before = self.outbox.queued.fetch_add(1, Ordering::AcqRel);
            if before >= MAX_QUEUED_CONTROL {
                self.outbox.queued.fetch_sub(1, Ordering::AcqRel);
                self.outbox.stalled.notify_one();
                return Err(());
            }
        }
        self.tx.send(frame).map_err(|_| ())
    }

    /// The shared outbox (for the reader to watch for a stall).
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl ConnRx {
    fn taken(&self, frame: &ServerFrame) {
        if !matches!(frame, ServerFrame::Deliver { .. }) {
            self.outbox.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The next frame. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<ServerFrame> {
        let f = self.rx.recv().await?;
        self.taken(&f);
        Some(f)
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<ServerFrame> {
        let f = self.rx.try_recv().ok()?;
        self.taken(&f);
        Some(f)
    }
}

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

/// Counter samples (published, delivered, acked) for rates over a sliding window.
///
/// The actor records a sample at most every [`Rates::EVERY_MS`] while the counters move,
/// whether or not anyone inspects the queue, so a rate is always an average over about
/// [`Rates::WINDOW_MS`] of history (never over the few milliseconds between two inspects).
/// Invariant: when no sample is due (`next_due` is `None`), the counters equal the last sample,
/// so their value at any time since that sample is known exactly; an idle queue is not woken.
struct Rates {
    samples: VecDeque<(u64, [u64; 3])>,
}

impl Rates {
    const WINDOW_MS: u64 = 5_000;
    const EVERY_MS: u64 = 1_000;

    /// When the next sample must be taken: `None` while the counters have not moved since the
    /// last one.
    fn next_due(&self, c: [u64; 3]) -> Option<u64> {
        match self.samples.back() {
            None => Some(0),
            Some((_, last)) if *last == c => None,
            Some((t, _)) => Some(t + Self::EVERY_MS),
        }
    }

    /// Takes a sample if one is due; keeps one sample at or before the window's start.
    fn record(&mut self, now: u64, c: [u64; 3]) {
        if self.next_due(c).is_some_and(|due| now >= due) {
            self.samples.push_back((now, c));
        }
        let start = now.saturating_sub(Self::WINDOW_MS);
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(t, _)| *t <= start) {
            self.samples.pop_front();
        }
    }

    /// Per-second rates over the last [`Rates::WINDOW_MS`] (from the latest sample at or
    /// before its start); 0 until a queue has a second of history.
    fn rates(&mut self, now: u64, c: [u64; 3]) -> [u64; 3] {
        self.record(now, c);
        let Some(&(t0, c0)) = self.samples.front() else {
            return [0; 3];
        };
        let dt = now.saturating_sub(t0);
        if dt < Self::EVERY_MS {
            return [0; 3];
        }
        std::array::from_fn(|i| c[i].saturating_sub(c0[i]) * 1_000 / dt)
    }
}

pub(crate) struct QueueActor {
    name: String,
    state: QueueState,
    log: Option<Arc<QueueLog>>,
    fsync_waits: bool,
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
    pub(crate) fn new(
        name: String,
        state: QueueState,
        log: Option<Arc<QueueLog>>,
        router: Arc<dyn Router>,
        rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Self {
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
            state,
            log,
            fsync_waits,
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
            let counters = self.rate_counters();
            self.rates.record(now_ms(), counters);
            let deadline = match (self.state.next_deadline(), self.rates.next_due(counters)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
                // The log could not make these messages durable: fail their confirms. They stay
                // in the queue (they are written) but the producers know they were not confirmed.
                tracing::error!(queue = %self.name, error = %e, "fsync failed");
                self.fail_pending_up_to(seq, &e);
                self.durable = self.durable.max(seq);
                self.state.set_durable(self.durable);
            }
        }
        self.complete_confirms();
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
                self.state.remove_producer(producer);
            }
            Cmd::Subscribe {
                consumer,
                auto_ack,
                credit,
                conn,
            } => {
                self.consumers.insert(consumer, conn);
                self.state.subscribe(consumer, auto_ack);
                self.state.add_credit(consumer, credit);
            }
            Cmd::Unsubscribe(consumer) => {
                self.consumers.remove(&consumer);
                self.state.unsubscribe(now, consumer);
            }
            Cmd::Credit(consumer, n) => self.state.add_credit(consumer, n),
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
        let Some(log) = &self.log else {
            return 0;
        };
        let Some(&(last, _)) = stored.last() else {
            return 0;
        };
        let records: Vec<NewMessage> = stored
            .iter()
            .map(|(_, m)| to_record(now, m, self.state.config()))
            .collect();
        match log.append_batch(&records) {
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
                tracing::error!(queue = %self.name, error = %e, "append failed");
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
        let mut out = Vec::new();
        self.state.dispatch(now, &mut out);
        self.apply_effects(now);
        self.deliver(out);
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
                    let Some(mut m) = message.or_else(|| self.read(seq)) else {
                        continue;
                    };
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
        if let Some(log) = &self.log {
            if !counts.is_empty()
                && let Err(e) = log.record_deliveries(&counts)
            {
                tracing::error!(queue = %self.name, error = %e, "recording delivery counts failed");
            }
            if !settles.is_empty() && log.settle_batch(&settles).is_err() {
                // A batch is all-or-nothing: settle one by one so one bad entry (a message whose
                // append failed) does not keep the others unsettled.
                for item in settles {
                    if let Err(e) = log.settle(item.0, item.1) {
                        tracing::warn!(queue = %self.name, seq = item.0, error = %e, "settlement failed");
                    }
                }
            }
        }
    }

    fn read(&self, seq: u64) -> Option<Message> {
        let log = self.log.as_ref()?;
        match log.read(seq) {
            Ok(stored) => Some(from_record(stored.message)),
            Err(e) => {
                tracing::error!(queue = %self.name, seq, error = %e, "reading a message failed");
                None
            }
        }
    }

    fn deliver(&mut self, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        let mut by_consumer: HashMap<ConsumerId, Vec<Delivery>> = HashMap::new();
        for o in out {
            let Some(message) = o.message.or_else(|| self.read(o.seq)) else {
                continue;
            };
            by_consumer.entry(o.consumer).or_default().push(Delivery {
                subscription: o.consumer,
                tag: o.tag,
                seq: o.seq,
                delivery_count: o.deliveries,
                timestamp_ms: o.timestamp_ms,
                message,
            });
        }
        for (consumer, deliveries) in by_consumer {
            if let Some(conn) = self.consumers.get(&consumer) {
                for chunk in chunk_deliveries(deliveries) {
                    let _ = conn.send(ServerFrame::Deliver { deliveries: chunk });
                }
            }
        }
    }

    /// The counters that [`Rates`] follows: published, delivered, acked.
    fn rate_counters(&self) -> [u64; 3] {
        let c = self.state.counters();
        [c.published, c.delivered, c.acked]
    }

    fn info(&mut self, now: u64) -> QueueInfo {
        let mut stats: QueueStats = self.state.stats();
        let counters = self.rate_counters();
        let [p, d, a] = self.rates.rates(now, counters);
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

/// Splits deliveries into `Deliver` frames of at most [`MAX_BATCH`] messages and about 4 MiB.
fn chunk_deliveries(deliveries: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    const FRAME_BUDGET: usize = 4 * 1024 * 1024;
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for d in deliveries {
        let len = d.message.wire_len() + 64;
        if !cur.is_empty() && (cur.len() == MAX_BATCH || size + len > FRAME_BUDGET) {
            chunks.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += len;
        cur.push(d);
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
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

#[cfg(test)]
mod rate_tests {
    use super::Rates;

    fn rates() -> Rates {
        Rates {
            samples: Default::default(),
        }
    }

    #[test]
    fn two_messages_a_few_ms_apart_are_not_a_rate_of_hundreds() {
        let mut r = rates();
        r.record(10_000, [0, 0, 0]);
        r.record(10_003, [1, 0, 0]);
        assert_eq!(r.rates(10_006, [2, 0, 0]), [0, 0, 0]);
        // Sampled by the actor's own clock, not by the inspects: a second later it is 2/s.
        r.record(11_000, [2, 0, 0]);
        assert_eq!(r.rates(11_000, [2, 0, 0]), [2, 0, 0]);
    }

    #[test]
    fn a_steady_flow_is_averaged_over_the_window_and_an_idle_queue_goes_to_zero() {
        let mut r = rates();
        let mut c = 0;
        for s in 0..=20u64 {
            r.record(s * 1_000, [c, c, c]);
            c += 100;
        }
        let c = c - 100;
        assert_eq!(r.rates(20_000, [c, c, c]), [100, 100, 100]);
        assert!(r.samples.len() <= 7, "bounded: {}", r.samples.len());
        // Traffic stops: no sample is due (nothing to wake for), the rate decays to 0.
        assert_eq!(r.next_due([c, c, c]), None);
        assert_eq!(r.rates(40_000, [c, c, c]), [0, 0, 0]);
    }
}
