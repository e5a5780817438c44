//! The queue actor: one tokio task per queue, a thin shell around its [`QueueCore`]: it takes
//! commands from the queue's channel, claims room in consumers' connection outboxes, waits for
//! the log's durability handles and the core's next deadline, runs the blocking reopen of a
//! failed log off the runtime, and carries out the core's [`Output`]s (frames to connections,
//! dead letters to other queues). Every decision is the core's.
//!
//! Connections talk to it through an unbounded command channel whose content is bounded by the
//! protocol: publishes by each connection's in-flight limit and publish credit, deliveries by
//! consumer credit and each connection's outbox room, settlements by the deliveries outstanding.
//! The actor never blocks on a connection: frames for clients go to each connection's
//! [`crate::outbox`], deliveries only within the room it has.

use std::collections::HashMap;

use levee_flow::RateWindow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use levee_proto::{ErrorCode, Message, QueueConfig, QueueInfo, QueueStats, ServerFrame};
use levee_store::{QueueLog, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::{ConnTx, QueueAddr};
use crate::queue::confirms::SessionId;
use crate::queue::core::{Output, QueueCore};
use crate::queue::{ConsumerId, DeadLetterTarget, ProducerId};
use crate::routing::Aggregator;

/// A disk queue's log, shared with the broker (stats, closing at delete and shutdown). The actor
/// replaces it when the core reopens the log after a failure.
pub(crate) type LogSlot = Arc<parking_lot::RwLock<Option<Arc<QueueLog>>>>;

static NEXT_ACTOR_ID: AtomicU64 = AtomicU64::new(1);

/// Milliseconds since the Unix epoch: the clock the core is driven by.
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
    /// Why a request of `n` messages and `bytes` payload bytes cannot be taken now (over the
    /// connection's `max_in_flight_*` limits), or `None`. A request over the byte limit is
    /// still taken when nothing is in flight, so that any message that fits a frame can pass.
    pub(crate) fn refusal(&self, cfg: &crate::BrokerConfig, n: u64, bytes: u64) -> Option<String> {
        let held_msgs = self.messages.load(Ordering::Acquire);
        let held_bytes = self.bytes.load(Ordering::Acquire);
        if held_msgs + n > cfg.max_in_flight_messages
            || (held_bytes + bytes > cfg.max_in_flight_bytes && held_msgs > 0)
        {
            return Some(format!(
                "too many unconfirmed publishes on this connection ({held_msgs} messages, \
                 {held_bytes} bytes; limits {} and {}): wait for confirms",
                cfg.max_in_flight_messages, cfg.max_in_flight_bytes
            ));
        }
        None
    }

    /// Charges a request taken.
    pub(crate) fn charge(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, messages: u64, bytes: u64) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Waits on an in-process connection's `rx` for the answer to its publish request `req`: the
/// outcomes, `Err` with the queue's message if the request was voided (the queue stopped with
/// it in flight), `None` if the queue dropped the connection. Other frames are skipped.
///
/// # Cancel safety
/// Cancel-safe (as `ConnRx::recv`): every frame taken was the answer or skipped.
pub(crate) async fn confirm_of(
    rx: &mut crate::outbox::ConnRx,
    req: u64,
) -> Option<Result<Vec<levee_proto::PublishOutcome>, String>> {
    loop {
        match rx.recv().await? {
            ServerFrame::PublishConfirm { req: r, outcomes } if r == req => {
                return Some(Ok(outcomes));
            }
            ServerFrame::Error {
                req: r, message, ..
            } if r == req => return Some(Err(message)),
            _ => {}
        }
    }
}

/// How an outbox reaches a queue actor: its weak command sender (a gone actor is ignored).
impl QueueAddr for mpsc::WeakUnboundedSender<Cmd> {
    fn outbox_room(&self) {
        if let Some(tx) = self.upgrade() {
            let _ = tx.send(Cmd::OutboxRoom);
        }
    }

    fn written(&self, subscription: u64, tag: u64) {
        if let Some(tx) = self.upgrade() {
            let _ = tx.send(Cmd::Written(subscription, tag));
        }
    }
}

/// Where a publisher session's confirms go.
#[derive(Clone)]
pub(crate) enum ConfirmTo {
    /// A native connection publishing to this queue directly: `PublishConfirm` frames, and the
    /// connection's in-flight charge released per request.
    Conn {
        conn: ConnTx,
        in_flight: Arc<InFlight>,
    },
    /// A publish routed through an exchange: this queue's part of each request goes to the
    /// publisher's aggregator, which releases the charge once every target answered.
    Routed(Arc<Aggregator>),
}

/// A command for a queue actor.
pub(crate) enum Cmd {
    /// `credited`: the publisher works within publish credit (see `QueueCore::publish`).
    Publish {
        producer: ProducerId,
        req: u64,
        messages: Vec<Message>,
        confirm_to: ConfirmTo,
        credited: bool,
    },
    /// A message moved here from another queue's dead-lettering (boxed, as `Reconfigure`'s
    /// config: a command's size is every queue's channel block size times 32, even idle).
    DeadLetter(Box<Message>),
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
        /// Consumer priority (`x-priority`; 0 by default).
        priority: i32,
        conn: ConnTx,
    },
    /// A use that is not a consumer (a redeclare): restarts the queue's `expires_ms` clock.
    Touch,
    Unsubscribe(ConsumerId),
    Credit(ConsumerId, u32),
    Ack(ConsumerId, Vec<u64>),
    Nack(ConsumerId, Vec<u64>, u64),
    Reject(ConsumerId, Vec<u64>),
    /// Renew leases (`Extend` frame): tags, new lease in ms.
    Extend(ConsumerId, Vec<u64>, u64),
    /// Set a consumer's credit (the HTTP receive session ending a long poll).
    SetCredit(ConsumerId, u64),
    /// Deliveries that never reached their receiver: back unchanged.
    Unsent(ConsumerId, Vec<u64>),
    /// Settle or extend and answer the tags that were not outstanding (the HTTP API).
    SettleChecked {
        consumer: ConsumerId,
        how: crate::queue::core::SettleKind,
        tags: Vec<u64>,
        reply: oneshot::Sender<Vec<u64>>,
    },
    /// Answers once every command sent before it was handled (and its flush done).
    Barrier(oneshot::Sender<()>),
    /// The next ready messages, not consumed.
    Peek(usize, oneshot::Sender<Vec<levee_proto::Delivery>>),
    /// Change the queue's configuration.
    Reconfigure(
        Box<QueueConfig>,
        oneshot::Sender<Result<(), crate::queue::reconfigure::ReconfigureError>>,
    ),
    /// The consumer's connection wrote every delivery up to this tag to its socket.
    Written(ConsumerId, u64),
    /// A connection whose outbox was full has room again.
    OutboxRoom,
    Inspect(oneshot::Sender<QueueInfo>),
    /// What the monitor samples beyond `Inspect` (see `crate::ops::monitor`): with `latest`,
    /// up to that many ready messages (a conflated queue's latest per key, for value rules).
    Observe {
        latest: usize,
        reply: oneshot::Sender<crate::ops::Observation>,
    },
    Purge(oneshot::Sender<u64>),
    /// Stop: drop everything; replies with the number of messages that were held.
    Delete(oneshot::Sender<u64>),
    /// Stop because the broker shuts down (the log keeps everything).
    Stop,
    /// Stop because another node serves the queue now (a replicated queue whose leadership
    /// moved; the log keeps everything): clients are told `not-leader`.
    Unload,
}

/// Resolves dead-letter targets: the broker's queue registry and exchange table.
pub(crate) trait Router: Send + Sync + 'static {
    /// The command channel of `queue`, if it exists.
    fn route(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>>;
    /// Routes a dead letter of queue `from` through `exchange` with `routing_key` to every
    /// matching queue (each gets a `DeadLetter`). Unroutable dead letters are counted by the
    /// exchange and dropped.
    fn dead_letter_via(&self, from: &str, exchange: &str, routing_key: &str, message: Message);
    /// Queue `queue` has gone unused for its `expires_ms`: delete it (in a task of its own).
    fn expire(self: Arc<Self>, queue: &str);
}

/// Rates of (published, delivered, acked) over 5 s, sampled at most every second by the actor's
/// own clock while the counters move (levee-flow's [`RateWindow`], the one rate window of Levee),
/// so a rate is never computed over the few ms between two inspects, and an idle queue is not
/// woken.
type Rates = RateWindow<3>;

/// Width of the stats rate window and the sampling period.
const RATE_WINDOW_MS: u64 = 5_000;
const RATE_EVERY_MS: u64 = 1_000;

pub(crate) struct QueueActor {
    /// Unique among actors (outbox wake-up registrations are keyed by it).
    id: u64,
    core: QueueCore,
    slot: Option<LogSlot>,
    /// This actor's own channel, weakly (for outbox wake-ups; it must not keep the actor alive).
    self_tx: mpsc::WeakUnboundedSender<Cmd>,
    sessions: HashMap<SessionId, ConfirmTo>,
    consumers: HashMap<ConsumerId, ConnTx>,
    producers: HashMap<ProducerId, ConnTx>,
    router: Arc<dyn Router>,
    rates: Rates,
    rx: mpsc::UnboundedReceiver<Cmd>,
    stop_reason: Option<(ErrorCode, &'static str)>,
    /// When each unconfirmed publish (session, req) arrived, for the publish-confirm latency
    /// histogram; at most [`MAX_TIMED_CONFIRMS`] (later ones are not timed).
    confirm_started: HashMap<(SessionId, u64), std::time::Instant>,
    /// The append the log is syncing and since when this actor waits for it (fsync latency).
    durable_front: Option<(u64, std::time::Instant)>,
}

/// Most publishes timed at once per queue (memory bound of `confirm_started`).
const MAX_TIMED_CONFIRMS: usize = 65_536;

impl QueueActor {
    pub(crate) fn new(
        core: QueueCore,
        slot: Option<LogSlot>,
        router: Arc<dyn Router>,
        self_tx: mpsc::WeakUnboundedSender<Cmd>,
        rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Self {
        let mut core = core;
        // The queue's start counts as a use: its `expires_ms` clock starts now.
        core.touch(now_ms());
        QueueActor {
            id: NEXT_ACTOR_ID.fetch_add(1, Ordering::Relaxed),
            core,
            slot,
            self_tx,
            sessions: HashMap::new(),
            consumers: HashMap::new(),
            producers: HashMap::new(),
            router,
            rates: Rates::new(RATE_WINDOW_MS, RATE_EVERY_MS),
            rx,
            stop_reason: None,
            confirm_started: HashMap::new(),
            durable_front: None,
        }
    }

    /// Runs until the queue is deleted or every handle to it is gone.
    pub(crate) async fn run(mut self) {
        loop {
            let counters = self.rate_counters();
            self.rates.record(now_ms(), counters);
            let deadline = match (self.core.poll_timeout(), self.rates.next_due(counters)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let front = self.core.syncing_front().map(|(seq, _)| seq);
            if front != self.durable_front.map(|(s, _)| s) {
                self.durable_front = front.map(|s| (s, std::time::Instant::now()));
            }
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
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
                    // Take everything already queued before doing the I/O, so one group commit
                    // and one dispatch serve many commands.
                    let mut stop = false;
                    while let Ok(cmd) = self.rx.try_recv() {
                        if self.handle(cmd) {
                            stop = true;
                            break;
                        }
                    }
                    if stop {
                        break;
                    }
                }
                (seq, res) = Self::front_durable(&mut self.core) => {
                    if let Some((s, since)) = self.durable_front.take()
                        && s == seq
                    {
                        crate::ops::FSYNC.observe_us(since.elapsed().as_micros() as u64);
                    }
                    self.core.on_durable(now_ms(), seq, res);
                }
                () = sleep => {
                    if let Some(job) = self.core.handle_timeout(now_ms()) {
                        if let Some(slot) = &self.slot {
                            *slot.write() = None;
                        }
                        let opened = tokio::task::spawn_blocking(move || job.run())
                            .await
                            .unwrap_or_else(|e| Err(StoreError::InvalidInput {
                                reason: format!("reopen task failed: {e}"),
                            }));
                        self.core.reopened(now_ms(), opened);
                        if let Some(slot) = &self.slot {
                            *slot.write() = self.core.log().cloned();
                        }
                    }
                }
            }
            self.flush();
        }
        self.core.stop();
        self.carry_out(&mut HashMap::new());
        self.announce_closed();
    }

    /// Tells every connection with a producer registration or a subscription here that the
    /// queue stopped (`QueueClosed`, after the voided confirms just sent): a producer waiting
    /// for publish credit and a consumer waiting for deliveries learn it now, instead of
    /// waiting for frames that will never come. One frame per connection.
    fn announce_closed(&mut self) {
        let (code, why) = self
            .stop_reason
            .unwrap_or((ErrorCode::ShuttingDown, "stopped"));
        let queue = self.core.name().to_string();
        let message = format!("queue {queue} {why}");
        let mut told: std::collections::HashSet<*const crate::outbox::Outbox> = Default::default();
        for conn in self.producers.values().chain(self.consumers.values()) {
            if !told.insert(Arc::as_ptr(conn.outbox())) {
                continue;
            }
            let _ = conn.send(ServerFrame::QueueClosed {
                queue: queue.clone(),
                code,
                message: message.clone(),
            });
        }
    }

    /// Waits for the oldest outstanding append to become durable (cancel-safe: the handle stays
    /// in the core if this future is dropped).
    async fn front_durable(core: &mut QueueCore) -> (u64, Result<(), StoreError>) {
        match core.syncing_front() {
            Some((seq, d)) => {
                let res = d.await.map(|_| ());
                (seq, res)
            }
            None => std::future::pending().await,
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
                confirm_to,
                credited,
            } => {
                self.sessions.entry(producer).or_insert(confirm_to);
                if self.confirm_started.len() < MAX_TIMED_CONFIRMS {
                    self.confirm_started
                        .insert((producer, req), std::time::Instant::now());
                }
                self.core.publish(now, producer, req, messages, credited);
            }
            Cmd::DeadLetter(message) => self.core.dead_letter_in(now, *message),
            Cmd::AddProducer { producer, conn } => {
                self.producers.insert(producer, conn);
                self.core.add_producer(now, producer);
            }
            Cmd::RemoveProducer(producer) => {
                self.producers.remove(&producer);
                self.core.remove_producer(now, producer);
                // Confirms still due to it are dropped when they come (the connection is gone).
                self.sessions.remove(&producer);
                self.confirm_started
                    .retain(|(session, _), _| *session != producer);
            }
            Cmd::Subscribe {
                consumer,
                auto_ack,
                credit,
                priority,
                conn,
            } => {
                self.consumers.insert(consumer, conn);
                self.core.subscribe(consumer, auto_ack, credit);
                if priority != 0 {
                    self.core.set_priority(consumer, priority);
                }
            }
            Cmd::Touch => self.core.touch(now),
            Cmd::Unsubscribe(consumer) => {
                self.consumers.remove(&consumer);
                self.core.unsubscribe(now, consumer);
            }
            Cmd::Credit(consumer, n) => self.core.credit(consumer, n),
            Cmd::Written(consumer, tag) => self.core.written(now, consumer, tag),
            // The flush after every command dispatches to it.
            Cmd::OutboxRoom => {}
            Cmd::Ack(consumer, tags) => self.core.ack(now, consumer, &tags),
            Cmd::Nack(consumer, tags, delay) => self.core.nack(now, consumer, &tags, delay),
            Cmd::Reject(consumer, tags) => self.core.reject(now, consumer, &tags),
            Cmd::Extend(consumer, tags, ms) => self.core.extend(now, consumer, &tags, ms),
            Cmd::SetCredit(consumer, n) => self.core.set_credit(consumer, n),
            Cmd::Unsent(consumer, tags) => self.core.unsent(now, consumer, &tags),
            Cmd::SettleChecked {
                consumer,
                how,
                tags,
                reply,
            } => {
                let _ = reply.send(self.core.settle_checked(now, consumer, how, &tags));
            }
            Cmd::Peek(n, reply) => {
                let _ = reply.send(self.core.peek(n));
            }
            Cmd::Reconfigure(config, reply) => {
                let _ = reply.send(self.core.reconfigure(now, *config));
            }
            Cmd::Barrier(reply) => {
                // Flushed before the reply: whatever the commands before it dispatched is
                // already queued on its connections.
                self.flush();
                let _ = reply.send(());
            }
            Cmd::Inspect(reply) => {
                let _ = reply.send(self.info(now));
            }
            Cmd::Observe { latest, reply } => {
                let _ = reply.send(self.observe(latest));
            }
            Cmd::Purge(reply) => {
                let _ = reply.send(self.core.purge(now));
            }
            Cmd::Delete(reply) => {
                let s = self.core.stats();
                let _ = reply.send(s.ready + s.unacked);
                self.stop_reason = Some((ErrorCode::UnknownQueue, "was deleted"));
                return true;
            }
            Cmd::Stop => {
                self.stop_reason = Some((ErrorCode::ShuttingDown, "is shutting down"));
                return true;
            }
            Cmd::Unload => {
                self.stop_reason = Some((ErrorCode::NotLeader, "is served by another node now"));
                return true;
            }
        }
        false
    }

    /// Claims connection room for consumers that want deliveries, lets the core dispatch and
    /// release confirms, and carries out its outputs: run after every wake-up.
    ///
    /// Consumers sharing one connection share one claim of its room, split evenly: claiming per
    /// consumer would leave the second one with nothing while the first holds all the room, and
    /// its wake-up would then come from this actor's own settling of an unused claim, a loop
    /// that starves the log's durability events when nothing can be dispatched yet.
    fn flush(&mut self) {
        let mut claims: HashMap<ConsumerId, u64> = HashMap::new();
        let mut by_outbox: Vec<(&ConnTx, Vec<ConsumerId>)> = Vec::new();
        for consumer in self.core.consumers_wanting() {
            let Some(conn) = self.consumers.get(&consumer) else {
                continue;
            };
            match by_outbox
                .iter_mut()
                .find(|(c, _)| Arc::ptr_eq(c.outbox(), conn.outbox()))
            {
                Some((_, group)) => group.push(consumer),
                None => by_outbox.push((conn, vec![consumer])),
            }
        }
        let mut budgets: Vec<(ConsumerId, u64)> = Vec::new();
        for (conn, group) in by_outbox {
            let room = conn.outbox().claim();
            let k = group.len() as u64;
            let share = room / k;
            if share == 0 {
                conn.outbox().wait_for_room(self.id, self.self_tx.clone());
            }
            for (i, consumer) in group.into_iter().enumerate() {
                // The first takes the remainder, so the shares add up to the claim.
                let mine = if i == 0 {
                    room - share * (k - 1)
                } else {
                    share
                };
                budgets.push((consumer, mine));
            }
        }
        for (consumer, room) in budgets {
            self.core.set_budget(consumer, room);
            claims.insert(consumer, room);
        }
        self.core.flush(now_ms());
        self.carry_out(&mut claims);
    }

    /// Carries out the core's outputs; deliveries are charged to `claims`, and what is left of
    /// each claim is given back.
    fn carry_out(&mut self, claims: &mut HashMap<ConsumerId, u64>) {
        let mut used: HashMap<ConsumerId, u64> = HashMap::new();
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Confirm(c) => {
                    if let Some(t) = self.confirm_started.remove(&(c.session, c.req)) {
                        crate::ops::PUBLISH_CONFIRM.observe_us(t.elapsed().as_micros() as u64);
                    }
                    match self.sessions.get(&c.session) {
                        Some(ConfirmTo::Conn { conn, in_flight }) => {
                            in_flight.release(c.messages, c.bytes);
                            let _ = conn.send(ServerFrame::PublishConfirm {
                                req: c.req,
                                outcomes: c.outcomes,
                            });
                        }
                        Some(ConfirmTo::Routed(agg)) => {
                            agg.target_confirmed(c.req, self.core.name(), c.outcomes);
                        }
                        None => {}
                    }
                }
                Output::Void {
                    session,
                    req,
                    messages,
                    bytes,
                } => {
                    self.confirm_started.remove(&(session, req));
                    let (code, why) = self
                        .stop_reason
                        .unwrap_or((ErrorCode::ShuttingDown, "stopped"));
                    let message = format!("queue {} {why}", self.core.name());
                    match self.sessions.get(&session) {
                        Some(ConfirmTo::Conn { conn, in_flight }) => {
                            in_flight.release(messages, bytes);
                            let _ = conn.send(ServerFrame::Error { req, code, message });
                        }
                        Some(ConfirmTo::Routed(agg)) => {
                            agg.target_failed(req, self.core.name(), code, &message);
                        }
                        None => {}
                    }
                }
                Output::Deliver {
                    consumer,
                    deliveries,
                    bytes,
                } => {
                    if let Some(conn) = self.consumers.get(&consumer) {
                        *used.entry(consumer).or_default() += bytes;
                        // Dispatched outside a claim (cannot happen: budgets are set by every
                        // flush): charge it all the same, so the bound still holds.
                        claims.entry(consumer).or_insert(0);
                        let _ = conn.send_deliveries(ServerFrame::Deliver { deliveries }, bytes);
                    }
                }
                Output::Credit { producer, n } => {
                    if let Some(conn) = self.producers.get(&producer) {
                        let _ = conn.send(ServerFrame::PublishCredit {
                            queue: self.core.name().to_string(),
                            n,
                        });
                    }
                }
                Output::DeadLetter {
                    target: DeadLetterTarget::Queue(target),
                    message,
                } => match self.router.route(&target) {
                    Some(tx) => {
                        let _ = tx.send(Cmd::DeadLetter(Box::new(message)));
                    }
                    None => tracing::warn!(queue = %self.core.name(), %target,
                        "dead-letter queue missing: message dropped"),
                },
                Output::DeadLetter {
                    target:
                        DeadLetterTarget::Exchange {
                            exchange,
                            routing_key,
                        },
                    message,
                } => {
                    let key = routing_key
                        .or_else(|| crate::routing::original_routing_key(&message))
                        .unwrap_or_else(|| self.core.name().to_string());
                    self.router
                        .dead_letter_via(self.core.name(), &exchange, &key, message);
                }
                Output::Expired => {
                    tracing::info!(queue = %self.core.name(), "queue unused for its expires_ms: deleting it");
                    self.router.clone().expire(self.core.name());
                }
                Output::UnknownTags { consumer, tags } => {
                    if let Some(conn) = self.consumers.get(&consumer) {
                        let tags: Vec<String> = tags.iter().map(u64::to_string).collect();
                        let _ = conn.send(ServerFrame::Error {
                            req: 0,
                            code: ErrorCode::UnknownDeliveryTag,
                            message: format!(
                                "queue {}: subscription {consumer}: delivery tags not outstanding: {}",
                                self.core.name(),
                                tags.join(",")
                            ),
                        });
                    }
                }
            }
        }
        for (consumer, claimed) in claims.drain() {
            if let Some(conn) = self.consumers.get(&consumer) {
                conn.outbox()
                    .settle_claim(claimed, used.get(&consumer).copied().unwrap_or(0));
            }
        }
    }

    /// The counters that [`Rates`] follows: published, delivered, acked.
    fn rate_counters(&self) -> [u64; 3] {
        let c = self.core.state().counters();
        [c.published, c.delivered, c.acked]
    }

    fn observe(&self, latest: usize) -> crate::ops::Observation {
        let state = self.core.state();
        crate::ops::Observation {
            delivered: state.counters().delivered,
            // The publish time is kept in memory: no log read for it.
            oldest_ready_ms: state.peek(1).first().map(|(_, _, ts, _)| *ts),
            producers: state.producer_credits(),
            latest: if latest == 0 {
                Vec::new()
            } else {
                self.core
                    .peek(latest)
                    .into_iter()
                    .map(|d| d.message)
                    .collect()
            },
        }
    }

    fn info(&mut self, now: u64) -> QueueInfo {
        let mut stats: QueueStats = self.core.stats();
        let counters = self.rate_counters();
        let [p, d, a] = self.rates.rates(now, counters);
        stats.publish_rate = p;
        stats.deliver_rate = d;
        stats.ack_rate = a;
        QueueInfo {
            queue: self.core.name().to_string(),
            config: self.core.config().clone(),
            stats,
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every queue's command channel allocates blocks of 32 commands, even idle (issue 13: an
    /// idle queue's memory): keep the command small, boxing large payloads.
    #[test]
    fn a_command_is_small() {
        assert!(
            std::mem::size_of::<super::Cmd>() <= 80,
            "{}",
            std::mem::size_of::<super::Cmd>()
        );
    }
}
