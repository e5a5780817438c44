//! The queue state machine: every decision the broker makes about one queue, with no I/O, no
//! clock and no async.
//!
//! [`QueueState`] owns a queue's ready set (a [`levee_flow::policy::PolicyQueue`], so overflow
//! decisions are exactly levee-flow's), its unacknowledged deliveries, its consumers with their
//! credit, its producers with their publish credit, and its counters. Time is always an argument
//! (`now`, milliseconds since the Unix epoch), so ack deadlines, TTL and delayed requeues are
//! tested deterministically without sleeping. What must happen outside (append a settlement to the
//! log, move a message to the dead-letter queue, grant credit, send a delivery) is returned as
//! [`Effect`]s and [`Outgoing`] deliveries for the caller (the queue actor) to carry out.
//!
//! # Invariants
//! - Accounting is exact at every step: `published = stored + rejected` and
//!   `stored = acked + Σ dropped + expired + dead_lettered + ready + unacked`, where `ready`
//!   includes messages waiting for a requeue delay and `unacked` counts deliveries not yet
//!   settled ([`QueueState::stats`] reports them; [`levee_proto::QueueStats::is_balanced`] checks).
//! - A consumer is never sent more messages than the credit it requested: every delivery consumes
//!   one unit, and credit only grows through [`QueueState::add_credit`].
//! - A message is delivered to at most one consumer at a time: it is either in the ready set, in
//!   the delay set, or in exactly one unacked slot.
//! - The limits (`max_messages`, `max_bytes`) bound ready + delayed + unacked together, plus, on a
//!   `block` queue, the publish credit granted and not yet used (a reservation), so a producer
//!   holding credit always finds room.
//! - Only messages at or below the durability watermark ([`QueueState::set_durable`]) are
//!   delivered: a consumer never sees a message that a crash could still take back.
//!
//! # Memory bound
//! Per queued message: the policy entry with its [`Queued`] record (80 bytes; the key and the
//! message are boxed) and, when the body is kept in memory, the message itself; the body bytes are
//! bounded by `max_bytes`, and a disk queue deeper than [`MEMORY_BODIES`] lets go of the bodies of
//! durable messages ([`QueueState::set_durable`]).
//! Per unacked delivery: about 120 bytes plus its body. Per consumer and producer: a few words.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use bytes::Bytes;
use levee_flow::policy::{self, Evicted, Item, Limits, Meta, Offer, PolicyQueue};
use levee_proto::{
    ConsumerStats, DropReason, ErrorCode, Message, Order, Overflow, PublishOutcome, QueueConfig,
    QueueStats,
};

/// A conflation key in the ready set, boxed: a queued message without one (every message of a
/// queue that does not conflate) costs 8 bytes for it, not a `Bytes`' 32.
pub type Key = Box<Bytes>;

/// A subscription id (broker-unique).
pub type ConsumerId = u64;
/// A producer: one connection's publishing to this queue (the connection id).
pub type ProducerId = u64;

/// A disk queue keeps the bodies of at most about this many ready messages in memory; the
/// messages behind them are read back from the log when delivered ([`QueueState::set_durable`]).
pub const MEMORY_BODIES: usize = 4096;

/// How many messages of publish credit a producer is given at most (its window).
pub const PUBLISH_WINDOW: u32 = 1024;

/// A message held by the queue (ready, delayed or unacked).
#[derive(Debug, Clone)]
pub struct Queued {
    /// The message, when its body is held in memory; `None` when it must be read back from the
    /// queue's log by sequence number (a disk queue after a restart, or a durable message behind
    /// [`MEMORY_BODIES`] others). Boxed so that a message without its body costs 8 bytes here.
    pub message: Option<Box<Message>>,
    /// When it was published (ms since the epoch).
    pub timestamp_ms: u64,
    /// When it expires (ms since the epoch), if it has a TTL.
    pub expires_at: Option<u64>,
    /// How many times it has been delivered so far.
    pub deliveries: u32,
}

// The per-message figure in the module docs and docs/design.md (80 bytes with the policy
// entry's seq, position, weight, priority and boxed key) depends on it.
const _: () = assert!(std::mem::size_of::<Queued>() == 40);

/// A message recovered from durable storage, to rebuild a queue after a restart.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Its sequence number in the log.
    pub seq: u64,
    /// Weight counted against `max_bytes` (payload length).
    pub weight: u64,
    /// Priority.
    pub priority: u8,
    /// Conflation key.
    pub key: Option<Bytes>,
    /// The queued record (usually without a body).
    pub queued: Queued,
}

/// How a message left the queue, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// A consumer acknowledged it (or it was sent to an auto-ack consumer).
    Acked,
    /// It was dropped for this reason.
    Dropped(DropReason),
    /// Its TTL ran out.
    Expired,
    /// It was moved to the dead-letter queue.
    DeadLettered,
}

/// Why a message goes to the dead-letter queue (sent in the `x-death-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// A consumer rejected it.
    Rejected,
    /// It was delivered `max_deliveries` times without being acked.
    MaxDeliveries,
    /// Its TTL ran out.
    Expired,
}

impl DeadLetterReason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::MaxDeliveries => "max-deliveries",
            DeadLetterReason::Expired => "expired",
        }
    }
}

/// Where a queue's dead letters go: its `dead_letter_exchange` when set (routed with its
/// `dead_letter_routing_key`, or the message's own routing key), else its `dead_letter` queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// A queue, by name.
    Queue(String),
    /// An exchange, by name, with the routing key to use (`None`: the message's own).
    Exchange {
        /// The exchange.
        exchange: String,
        /// The routing key (`None`: the message's original one).
        routing_key: Option<String>,
    },
}

impl DeadLetterTarget {
    /// The target a queue's config names, if any.
    pub fn of(config: &QueueConfig) -> Option<DeadLetterTarget> {
        match (&config.dead_letter_exchange, &config.dead_letter) {
            (Some(x), _) => Some(DeadLetterTarget::Exchange {
                exchange: x.clone(),
                routing_key: config.dead_letter_routing_key.clone(),
            }),
            (None, Some(q)) => Some(DeadLetterTarget::Queue(q.clone())),
            (None, None) => None,
        }
    }
}

/// Something the queue actor must do on the state machine's behalf.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Record in the log that `seq` left the queue.
    Settle {
        /// The message.
        seq: u64,
        /// How.
        how: Settlement,
    },
    /// Record in the log that `seq` has now been delivered `count` times (it came back unacked).
    DeliveryCount {
        /// The message.
        seq: u64,
        /// Deliveries so far.
        count: u32,
    },
    /// Publish this message to the dead-letter queue (then it is settled here as dead-lettered;
    /// a `Settle` effect follows).
    DeadLetter {
        /// The message's sequence number here.
        seq: u64,
        /// The target queue or exchange.
        target: DeadLetterTarget,
        /// The message (or `None`: read it from the log by `seq` first).
        message: Option<Message>,
        /// Why.
        reason: DeadLetterReason,
        /// How many times it was delivered.
        deliveries: u32,
    },
    /// A publish that was held for room (a `block` queue full by bytes) has its outcome now.
    Confirm {
        /// The token the caller passed to [`QueueState::publish`].
        token: u64,
        /// The outcome.
        outcome: PublishOutcome,
        /// When stored: the message, to append to the log before anything published later.
        stored: Option<Message>,
    },
    /// Grant a producer more publish credit.
    Credit {
        /// The producer.
        producer: ProducerId,
        /// Additional messages.
        n: u32,
    },
}

/// A delivery to send to a consumer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The consumer.
    pub consumer: ConsumerId,
    /// Delivery tag, unique within the queue.
    pub tag: u64,
    /// The message's sequence number.
    pub seq: u64,
    /// Deliveries including this one.
    pub deliveries: u32,
    /// Publish time.
    pub timestamp_ms: u64,
    /// The message (or `None`: read it from the log by `seq`).
    pub message: Option<Message>,
}

/// Why a settlement request (ack, nack, reject) for a tag was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The tag is not an unacked delivery of this consumer (never sent, already settled, or
    /// returned to the queue after its ack deadline).
    #[error("delivery tag {0} is not outstanding for this consumer")]
    UnknownTag(u64),
}

#[derive(Debug)]
struct Unacked {
    seq: u64,
    consumer: ConsumerId,
    deadline: Option<u64>,
    queued: Queued,
    meta: Meta<Key>,
}

#[derive(Debug, Default)]
struct Consumer {
    credit: u64,
    unacked: u64,
    auto_ack: bool,
    /// Bytes the consumer's connection can take now ([`QueueState::set_budget`]); `None`: no
    /// bound. Credit is what the consumer asked for; the budget is what the broker may buffer for
    /// it, so a consumer that does not read cannot make the broker hold more than this.
    budget: Option<u64>,
    /// Deliveries count as sent only once the connection reports them written
    /// ([`QueueState::track_writes`]).
    tracked: bool,
    /// Tags delivered to a tracked consumer and not yet reported written, in tag order. Their ack
    /// deadline starts when they are written; if the consumer goes away first, they return to the
    /// queue without a raised delivery count (they never left the broker).
    unwritten: std::collections::VecDeque<u64>,
    /// Its priority ([`QueueState::set_priority`]).
    priority: i32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Producer {
    /// Publish credit granted and not used yet (block queues).
    outstanding: u32,
}

/// Counters behind [`QueueStats`].
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Messages offered.
    pub published: u64,
    /// Messages accepted into the accounting.
    pub stored: u64,
    /// Messages refused.
    pub rejected: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dropped, indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Messages expired (and discarded).
    pub expired: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Deliveries sent (including redeliveries).
    pub delivered: u64,
    /// Deliveries of messages delivered before.
    pub redelivered: u64,
    /// Publishes answered `Duplicate` (not counted in `published`).
    pub duplicates: u64,
}

fn reason_index(r: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|x| *x == r)
        .expect("every reason is in ALL")
}

fn flow_reason(r: policy::DropReason) -> DropReason {
    match r {
        policy::DropReason::Newest => DropReason::OverflowNewest,
        policy::DropReason::Conflated => DropReason::Conflated,
        policy::DropReason::Shed | policy::DropReason::Outranked => DropReason::ShedPriority,
        policy::DropReason::Oldest => DropReason::EvictedOldest,
        // Only levee-flow's channel reports it (every receiver gone); a broker queue has no
        // receivers in that sense. Should it happen, a queued message was evicted.
        policy::DropReason::Disconnected => DropReason::EvictedOldest,
        // levee-flow's enum is non_exhaustive. The message is already gone and counted (the
        // accounting stays exact); only the reason label is unknown, so it is reported as the
        // eviction it is rather than hidden. No behaviour depends on the label.
        _ => DropReason::EvictedOldest,
    }
}

fn flow_overflow(o: Overflow) -> policy::Overflow {
    match o {
        Overflow::Block => policy::Overflow::Block,
        Overflow::Reject => policy::Overflow::Reject,
        Overflow::DropNewest => policy::Overflow::DropNewest,
        Overflow::DropOldest => policy::Overflow::DropOldest,
        Overflow::ConflateByKey => policy::Overflow::Conflate,
        Overflow::ShedPriority => policy::Overflow::ShedPriority,
        // levee-proto's enum is non_exhaustive; a policy this broker does not know (a newer
        // levee-proto than this code) gets the strictest one that loses nothing: refuse publishes
        // when full (the publisher is told), never drop a stored message. Every policy levee-proto has
        // today is listed above, so this arm is reached only if it gains one before this mapping.
        _ => policy::Overflow::Reject,
    }
}

/// Header names the broker sets when it dead-letters a message. A published message may carry at
/// most [`MAX_USER_HEADERS`] other headers, so a dead-lettered one always fits
/// [`levee_proto::MAX_HEADERS`] (existing headers of these names are replaced, not repeated), and
/// encoding a delivery cannot fail on its header count.
pub const DEATH_HEADERS: [&str; 3] = ["x-death-reason", "x-death-queue", "x-delivery-count"];

/// Headers the broker sets on a message routed through an exchange: the exchange it was
/// published to and its routing key (kept so that dead-lettering through an exchange can reuse
/// the original routing key). Existing headers of these names are replaced, so they count
/// against the header limit like [`DEATH_HEADERS`] do.
pub const ROUTING_HEADERS: [&str; 2] = ["x-levee-exchange", "x-levee-routing-key"];

/// Most headers a published message may carry besides [`DEATH_HEADERS`].
pub const MAX_USER_HEADERS: usize =
    levee_proto::MAX_HEADERS - DEATH_HEADERS.len() - ROUTING_HEADERS.len();

/// Headers of `m` that count against [`MAX_USER_HEADERS`].
pub fn user_headers(m: &Message) -> usize {
    m.headers
        .iter()
        .filter(|(n, _)| {
            !DEATH_HEADERS.contains(&n.as_str()) && !ROUTING_HEADERS.contains(&n.as_str())
        })
        .count()
}

/// A message's time to live on this queue: the shorter of its own and the queue's (the one place
/// the two are merged; the log records the result).
pub fn effective_ttl(msg: &Message, config: &QueueConfig) -> Option<u64> {
    match (msg.ttl_ms, config.message_ttl_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Estimated encoded size of a delivery (what it will cost its connection's outbound buffer).
pub fn delivery_cost(queued: &Queued, meta: &Meta<Key>) -> u64 {
    DELIVERY_OVERHEAD
        + queued
            .message
            .as_ref()
            .map_or(meta.weight, |m| m.wire_len() as u64)
}

/// Bytes a delivery adds to its message's encoding in a `Deliver` frame (tag, seq, counts,
/// timestamp, subscription), rounded up.
pub const DELIVERY_OVERHEAD: u64 = 64;

/// The state of one queue. See the module documentation.
pub struct QueueState {
    config: QueueConfig,
    ready: PolicyQueue<Queued, Key>,
    /// Messages nacked with a delay: due time -> seq, and seq -> entry.
    delayed_due: BTreeSet<(u64, u64)>,
    delayed: HashMap<u64, (Queued, Meta<Key>)>,
    delayed_bytes: u64,
    unacked: HashMap<u64, Unacked>,
    unacked_bytes: u64,
    /// Ack deadlines: (deadline, tag). Entries of settled tags are removed eagerly.
    deadlines: BTreeSet<(u64, u64)>,
    /// TTL expiries of ready messages: (expires_at, seq); lazily pruned.
    expiries: BinaryHeap<Reverse<(u64, u64)>>,
    consumers: BTreeMap<ConsumerId, Consumer>,
    /// Round-robin cursor: the consumer served last.
    cursor: Option<ConsumerId>,
    producers: BTreeMap<ProducerId, Producer>,
    credit_outstanding: u64,
    /// The producer served first by the last credit grant (round-robin start).
    grant_cursor: ProducerId,
    /// Publishes on a `block` queue that had credit but did not fit by bytes, or held by the rate
    /// limit: (producer, token, message), admitted in order as room frees. Bounded by the
    /// producers' credit windows (and, per connection, its in-flight limits).
    held: std::collections::VecDeque<(ProducerId, u64, Message)>,
    next_seq: u64,
    next_tag: u64,
    /// Messages with a sequence number below this are durable (exclusive bound).
    durable_below: u64,
    /// The publish rate limit, if the config sets one.
    rate: Option<crate::rate::RateGate>,
    /// When a publish held by the rate limit may be retried.
    rate_retry_at: Option<u64>,
    counters: Counters,
    effects: Vec<Effect>,
    /// The message ids stored within the dedup window (`None`: dedup off).
    dedup: Option<dedup::DedupWindow>,
    /// Since when the queue has been unused (no consumer, no get, no redeclare): the start of
    /// its `expires_ms` clock. `None` while it has consumers, or before the first
    /// [`QueueState::touch`].
    idle_since: Option<u64>,
    /// [`QueueState::take_expired`] has reported the expiry (once).
    expired: bool,
    /// Consumers with a priority other than 0 (dispatch only compares priorities when some).
    prioritized: usize,
    /// A disk queue deeper than this lets go of durable bodies ([`QueueState::set_durable`]).
    memory_bodies: usize,
}

impl QueueState {
    /// A new, empty queue. `next_seq` is the first sequence number to assign (the log's next
    /// sequence number for a disk queue).
    pub fn new(config: QueueConfig, next_seq: u64) -> Self {
        let limits = Limits {
            max_messages: usize::try_from(config.max_messages).ok(),
            max_bytes: Some(config.max_bytes),
        };
        let order = match config.order {
            Order::Priority => policy::Order::Priority,
            Order::Fifo => policy::Order::Fifo,
            // levee-proto's enum is non_exhaustive: an order this broker does not know is served
            // in publish order, the one that never reorders.
            _ => policy::Order::Fifo,
        };
        let rate = config
            .rate_limit
            .as_ref()
            .and_then(crate::rate::RateGate::new);
        let config_copy = config.clone();
        QueueState {
            ready: PolicyQueue::new(limits, flow_overflow(config.overflow), order),
            config,
            delayed_due: BTreeSet::new(),
            delayed: HashMap::new(),
            delayed_bytes: 0,
            unacked: HashMap::new(),
            unacked_bytes: 0,
            deadlines: BTreeSet::new(),
            expiries: BinaryHeap::new(),
            consumers: BTreeMap::new(),
            cursor: None,
            producers: BTreeMap::new(),
            credit_outstanding: 0,
            grant_cursor: 0,
            held: std::collections::VecDeque::new(),
            next_seq,
            next_tag: 1,
            durable_below: u64::MAX,
            memory_bodies: MEMORY_BODIES,
            rate,
            rate_retry_at: None,
            counters: Counters::default(),
            effects: Vec::new(),
            dedup: config_dedup(&config_copy),
            idle_since: None,
            expired: false,
            prioritized: 0,
        }
    }

    /// A use of the queue that is not a consumer (a redeclare, or the queue's start): restarts
    /// its `expires_ms` clock when it has no consumer.
    pub fn touch(&mut self, now: u64) {
        if self.consumers.is_empty() {
            self.idle_since = Some(now);
        }
    }

    /// When the queue expires if nothing uses it (`None`: it has consumers, no `expires_ms`, or
    /// the expiry was reported).
    fn expires_at(&self) -> Option<u64> {
        let ms = self.config.expires_ms?;
        if self.expired || !self.consumers.is_empty() {
            return None;
        }
        Some(self.idle_since?.saturating_add(ms))
    }

    /// Whether the queue has gone unused for its `expires_ms` by `now`; true once (the caller
    /// deletes the queue).
    pub fn take_expired(&mut self, now: u64) -> bool {
        if self.expires_at().is_some_and(|at| at <= now) {
            self.expired = true;
            return true;
        }
        false
    }

    /// A consumer's priority (`x-priority`): messages go to the consumers of the highest
    /// priority that have credit; lower ones get messages only while none of those can take
    /// one. Default 0.
    pub fn set_priority(&mut self, consumer: ConsumerId, priority: i32) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            match (c.priority != 0, priority != 0) {
                (false, true) => self.prioritized += 1,
                (true, false) => self.prioritized -= 1,
                _ => {}
            }
            c.priority = priority;
        }
    }

    /// The queue's configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The sequence number the next stored message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Puts back a message recovered from the log (in sequence order), counting it as stored.
    /// Recovered messages bypass the overflow policy: they were admitted before the restart.
    pub fn restore(&mut self, r: Recovered) {
        let meta = Meta {
            weight: r.weight,
            priority: r.priority,
            key: r.key.map(Box::new),
        };
        if let Some(at) = r.queued.expires_at {
            self.expiries.push(Reverse((at, r.seq)));
        }
        self.next_seq = self.next_seq.max(r.seq + 1);
        self.counters.published += 1;
        self.counters.stored += 1;
        if let Some(superseded) = self.ready.reinsert(r.seq, r.queued, meta) {
            self.account_evicted(superseded);
        }
    }

    /// Puts back a message id found in the log (settled or not), in sequence order, with its
    /// publish time: rebuilds the dedup window after a restart.
    pub fn restore_id(&mut self, seq: u64, at: u64, id: &[u8]) {
        if let Some(w) = &mut self.dedup {
            w.insert(at, id, seq);
        }
    }

    /// Message ids in the dedup window now (after pruning at the last publish).
    pub fn dedup_len(&self) -> usize {
        self.dedup.as_ref().map_or(0, dedup::DedupWindow::len)
    }

    /// Sets how deep the ready set may be before durable bodies are let go (default
    /// [`MEMORY_BODIES`]; the simulation uses a few, so that most deliveries read the log).
    pub fn set_memory_bodies(&mut self, n: usize) {
        self.memory_bodies = n;
    }

    /// Sets the durability watermark: messages with `seq < below` are safely stored and may be
    /// delivered. Memory queues leave it at `u64::MAX`.
    ///
    /// On a disk queue (one whose watermark has been set before) holding more than
    /// [`MEMORY_BODIES`] ready messages (see [`QueueState::set_memory_bodies`]), the messages that
    /// just became durable let go of their bodies: they are read back from the log when
    /// delivered, so a deep backlog costs its index, not its payloads. (Until durable a body stays: a failed fsync writes it again.) They are
    /// the newest entries of the ready set, so this visits only them. Conflated queues keep their
    /// bodies (a replacement takes an old position, out of sequence order; such a queue holds one
    /// message per key).
    pub fn set_durable(&mut self, below: u64) {
        let from = self.durable_below;
        self.durable_below = below;
        if from == u64::MAX
            || below <= from
            || self.ready.len() <= self.memory_bodies
            || self.config.overflow == Overflow::ConflateByKey
        {
            return;
        }
        self.ready.visit_newest(|seq, q| {
            if seq < from {
                return false;
            }
            if seq < below {
                q.message = None;
            }
            true
        });
    }

    /// Takes every ready message at or past the durability watermark out of the queue, in
    /// sequence order: an fsync failed, so their log records are not trusted and they must be
    /// written again ([`QueueState::restore_rewritten`]) before anyone may see them. (Messages
    /// past the watermark were never delivered, so they are all in the ready set.)
    pub fn take_undurable(&mut self) -> Vec<(u64, Queued, Meta<Key>)> {
        let mut out = Vec::new();
        if self.durable_below == u64::MAX {
            return out;
        }
        for seq in self.durable_below..self.next_seq {
            if let Some(item) = self.ready.remove(seq) {
                out.push((item.seq, item.item, item.meta));
            }
        }
        out
    }

    /// Puts back a message taken by [`QueueState::take_undurable`] under the sequence number its
    /// rewritten log record got (higher than every other, so its position among the others is
    /// kept). The caller then sets the next sequence number to the log's.
    pub fn restore_rewritten(&mut self, seq: u64, queued: Queued, meta: Meta<Key>) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.put_back(seq, queued, meta);
    }

    /// Sets the sequence number the next stored message gets (the log's, after a rewrite).
    pub fn set_next_seq(&mut self, next: u64) {
        self.next_seq = next;
    }

    fn sync_external(&mut self) {
        let reserved = if self.config.overflow == Overflow::Block {
            self.credit_outstanding
        } else {
            0
        };
        let count = self.unacked.len() + self.delayed.len() + reserved as usize;
        self.ready
            .set_external(count, self.unacked_bytes + self.delayed_bytes);
    }

    fn expiry_for(&self, now: u64, msg: &Message) -> Option<u64> {
        effective_ttl(msg, &self.config).map(|t| now.saturating_add(t))
    }

    /// Whether `producer` may publish `n` messages now: on a `block` queue it must hold that much
    /// publish credit; other policies take any publish (their window only bounds what is in flight).
    pub fn has_credit(&self, producer: ProducerId, n: u32) -> bool {
        if self.config.overflow != Overflow::Block {
            return true;
        }
        self.producers
            .get(&producer)
            .is_some_and(|p| p.outstanding >= n)
    }

    /// Publishes one message. On a `block` queue the caller first checked [`has_credit`] (the
    /// message uses one unit of the producer's credit). Returns the outcome, or `None` when the
    /// message is held until there is room by bytes: its outcome then comes later as
    /// [`Effect::Confirm`] with this `token`.
    ///
    /// [`has_credit`]: QueueState::has_credit
    pub fn publish(
        &mut self,
        now: u64,
        producer: ProducerId,
        token: u64,
        msg: Message,
    ) -> Option<PublishOutcome> {
        if self.config.overflow == Overflow::Block
            && let Some(p) = self.producers.get_mut(&producer)
            && p.outstanding > 0
        {
            p.outstanding -= 1;
            self.credit_outstanding -= 1;
        }
        let headers = user_headers(&msg);
        if headers > MAX_USER_HEADERS {
            return Some(self.refuse_publish(
                ErrorCode::MessageTooLarge,
                format!(
                    "message has {headers} headers; at most {MAX_USER_HEADERS} are allowed \
                     ({} are reserved for dead-lettering and routing)",
                    DEATH_HEADERS.len() + ROUTING_HEADERS.len()
                ),
            ));
        }
        if !self.held.is_empty() {
            // Keep publish order: nothing overtakes a held message.
            self.held.push_back((producer, token, msg));
            return None;
        }
        match self.admit(now, msg) {
            Ok(outcome) => Some(outcome),
            Err(msg) => {
                self.held.push_back((producer, token, *msg));
                None
            }
        }
    }

    /// Offers a message to the ready set; `Err` hands it back when it must be held (a `block`
    /// queue without room by bytes, or over the rate limit).
    fn admit(&mut self, now: u64, msg: Message) -> Result<PublishOutcome, Box<Message>> {
        if let (Some(w), Some(id)) = (&mut self.dedup, &msg.message_id)
            && let Some(seq) = w.check(now, id)
        {
            // Not a new publish: nothing is counted but the duplicate itself.
            self.counters.duplicates += 1;
            return Ok(PublishOutcome::Duplicate { seq });
        }
        let weight = msg.payload.len() as u64;
        if let Some(gate) = &mut self.rate {
            match gate.check(now, weight) {
                crate::rate::Gate::Pass => self.rate_retry_at = None,
                crate::rate::Gate::Wait(ms) if self.config.overflow == Overflow::Reject => {
                    self.counters.published += 1;
                    self.counters.rejected += 1;
                    return Ok(PublishOutcome::Throttled {
                        retry_after_ms: ms.min(u64::from(u32::MAX)) as u32,
                    });
                }
                crate::rate::Gate::Wait(ms) => {
                    // Slowed, not failed: held until the rate allows it.
                    self.rate_retry_at = Some(now + ms);
                    return Err(Box::new(msg));
                }
                crate::rate::Gate::Never => {
                    self.counters.published += 1;
                    return Ok(self.refuse(
                        ErrorCode::MessageTooLarge,
                        format!("message of {weight} bytes exceeds the queue's rate-limit burst"),
                    ));
                }
            }
        }
        self.counters.published += 1;
        self.sync_external();
        let meta = Meta {
            weight,
            priority: msg.priority,
            key: if self.config.overflow == Overflow::ConflateByKey {
                msg.key.clone().map(Box::new)
            } else {
                None
            },
        };
        let expires_at = self.expiry_for(now, &msg);
        let seq = self.next_seq;
        let id = msg.message_id.clone();
        let queued = Queued {
            message: Some(Box::new(msg)),
            timestamp_ms: now,
            expires_at,
            deliveries: 0,
        };
        Ok(match self.ready.offer(seq, queued, meta) {
            Offer::Accepted { evicted } => {
                self.next_seq += 1;
                self.counters.stored += 1;
                if let (Some(w), Some(id)) = (&mut self.dedup, &id) {
                    w.insert(now, id, seq);
                }
                if let Some(at) = expires_at {
                    self.expiries.push(Reverse((at, seq)));
                }
                for e in evicted {
                    self.account_evicted(e);
                }
                PublishOutcome::Stored { seq }
            }
            Offer::Dropped { reason, .. } => {
                // Accepted into the accounting and discarded at once: no log record is needed.
                self.counters.stored += 1;
                let reason = flow_reason(reason);
                self.counters.dropped[reason_index(reason)] += 1;
                PublishOutcome::Dropped { reason }
            }
            Offer::TooLarge(_) => self.refuse(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {weight} bytes exceeds the queue's max_bytes {}",
                    self.config.max_bytes
                ),
            ),
            Offer::Full(item) => {
                // Not counted: it is published when it is finally admitted.
                self.counters.published -= 1;
                let Queued { message, .. } = item.item;
                return Err(message.expect("a published message has its body"));
            }
            // `Offer` is not non_exhaustive: every outcome is listed, so one levee-flow adds is a
            // compile error here, not a silent default.
            Offer::Rejected(_) => self.refuse(ErrorCode::QueueFull, "queue is full".into()),
        })
    }

    /// Admits held publishes while they fit, then tops up producers' credit. Called after
    /// anything that frees room.
    fn make_room(&mut self, now: u64) {
        while let Some((producer, token, msg)) = self.held.pop_front() {
            let copy = msg.clone();
            match self.admit(now, msg) {
                Ok(outcome) => {
                    let stored = matches!(outcome, PublishOutcome::Stored { .. }).then_some(copy);
                    self.effects.push(Effect::Confirm {
                        token,
                        outcome,
                        stored,
                    });
                }
                Err(msg) => {
                    self.held.push_front((producer, token, *msg));
                    break;
                }
            }
        }
        self.grant_credit();
    }

    /// Whether `msg` would be stored now without waiting (a `block` queue with room for it).
    pub fn would_fit(&mut self, msg: &Message) -> bool {
        self.sync_external();
        self.held.is_empty() && self.ready.fits(msg.payload.len() as u64)
    }

    /// Takes back messages just stored whose log append failed: they leave the ready set and
    /// count as rejected instead of stored. `seqs` are the last ones assigned, in order.
    pub fn abort_publish(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            if let Some(item) = self.ready.remove(seq) {
                self.counters.stored -= 1;
                self.counters.rejected += 1;
                if let (Some(w), Some(id)) = (
                    &mut self.dedup,
                    item.item
                        .message
                        .as_ref()
                        .and_then(|m| m.message_id.as_ref()),
                ) {
                    w.remove(id, seq);
                }
            }
        }
        if let Some(&first) = seqs.first() {
            self.next_seq = self.next_seq.min(first);
        }
    }

    /// Refuses a publish before it reaches the ready set (no credit, rate limit under `reject`,
    /// invalid message), counting it as published and rejected.
    pub fn refuse_publish(&mut self, code: ErrorCode, reason: String) -> PublishOutcome {
        self.counters.published += 1;
        self.refuse(code, reason)
    }

    fn refuse(&mut self, code: ErrorCode, reason: String) -> PublishOutcome {
        self.counters.rejected += 1;
        PublishOutcome::Rejected { code, reason }
    }

    /// Counts a message evicted from the ready set and records its settlement.
    fn account_evicted(&mut self, e: Evicted<Queued, Key>) {
        let reason = flow_reason(e.reason);
        self.counters.dropped[reason_index(reason)] += 1;
        self.effects.push(Effect::Settle {
            seq: e.entry.seq,
            how: Settlement::Dropped(reason),
        });
    }

    /// Every producer with the publish credit it holds unused (the monitor's view), sorted.
    pub fn producer_credits(&self) -> Vec<(ProducerId, u64)> {
        let mut v: Vec<(ProducerId, u64)> = self
            .producers
            .iter()
            .map(|(id, p)| (*id, u64::from(p.outstanding)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Registers a producer (a connection that publishes here) and grants it credit if there is
    /// room. Idempotent.
    pub fn add_producer(&mut self, producer: ProducerId) {
        self.producers.entry(producer).or_default();
        self.grant_credit();
    }

    /// Forgets a producer (its connection closed); its unused credit is released and its held
    /// publishes are discarded, counted as dropped with reason
    /// [`DropReason::PublisherGone`]: the publisher never got their confirms, so storing them
    /// later would only create duplicates of what it publishes again. Each discarded publish
    /// gets its outcome as an [`Effect::Confirm`] (for the caller's bookkeeping).
    pub fn remove_producer(&mut self, now: u64, producer: ProducerId) {
        if let Some(p) = self.producers.remove(&producer) {
            self.credit_outstanding -= u64::from(p.outstanding);
        }
        if self.held.iter().any(|(p, _, _)| *p == producer) {
            let held = std::mem::take(&mut self.held);
            for (p, token, msg) in held {
                if p != producer {
                    self.held.push_back((p, token, msg));
                    continue;
                }
                let reason = DropReason::PublisherGone;
                self.counters.published += 1;
                self.counters.stored += 1;
                self.counters.dropped[reason_index(reason)] += 1;
                self.effects.push(Effect::Confirm {
                    token,
                    outcome: PublishOutcome::Dropped { reason },
                    stored: None,
                });
            }
            // What was waiting behind the discarded publishes may fit now.
            self.make_room(now);
            return;
        }
        self.grant_credit();
    }

    /// Whether `consumer` is an auto-ack consumer.
    pub fn is_auto_ack(&self, consumer: ConsumerId) -> bool {
        self.consumers.get(&consumer).is_some_and(|c| c.auto_ack)
    }

    /// The publishes of `producer` held now, in order.
    pub fn held_of(&self, producer: ProducerId) -> impl Iterator<Item = &Message> {
        self.held
            .iter()
            .filter(move |(p, _, _)| *p == producer)
            .map(|(_, _, m)| m)
    }

    /// Held publishes (waiting for room or for the rate limit).
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Room left for new messages on a `block` queue, after the reservations of outstanding credit.
    fn room(&self) -> u64 {
        let held = (self.ready.len() + self.unacked.len() + self.delayed.len()) as u64
            + self.credit_outstanding;
        self.config.max_messages.saturating_sub(held)
    }

    /// Tops producers' credit up to their window. On a `block` queue the total credit never
    /// exceeds the room left; producers are served round-robin so none starves. Other policies
    /// always accept publishes and get no credit frames.
    fn grant_credit(&mut self) {
        if self.config.overflow != Overflow::Block
            || self.producers.is_empty()
            || !self.held.is_empty()
        {
            return;
        }
        let mut room = self.room();
        let bytes_left = self
            .config
            .max_bytes
            .saturating_sub(self.ready.bytes() + self.unacked_bytes + self.delayed_bytes);
        if bytes_left == 0 {
            return;
        }
        // Refill a producer only when it has used at least half its window (fewer credit frames).
        // Start after the producer served first last time, so a scarce room rotates fairly.
        let mut ids: Vec<ProducerId> = self.producers.keys().copied().collect();
        let start = ids.partition_point(|id| *id <= self.grant_cursor);
        ids.rotate_left(start);
        if let Some(first) = ids.first() {
            self.grant_cursor = *first;
        }
        let share = (room / ids.len() as u64).max(1);
        for id in ids {
            if room == 0 {
                break;
            }
            let p = self.producers.get_mut(&id).expect("listed");
            let want = PUBLISH_WINDOW - p.outstanding;
            if want < PUBLISH_WINDOW / 2 && p.outstanding > 0 {
                continue;
            }
            let n = u64::from(want).min(room).min(share.max(1)) as u32;
            if n == 0 {
                continue;
            }
            p.outstanding += n;
            self.credit_outstanding += u64::from(n);
            room -= u64::from(n);
            self.effects.push(Effect::Credit { producer: id, n });
        }
    }

    /// Makes deliveries to `consumer` count as sent only once [`QueueState::written`] reports
    /// them written to its connection: their ack deadline starts then, and deliveries still
    /// unwritten when the consumer goes away return to the queue with their delivery count
    /// unchanged. (Untracked consumers, the default, count a delivery as sent when dispatched.)
    pub fn track_writes(&mut self, consumer: ConsumerId) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.tracked = true;
        }
    }

    /// Sets how many bytes of deliveries `consumer` may be handed now (its connection's free
    /// outbound room); `None` removes the bound. Dispatch skips a consumer whose budget is 0 and
    /// charges each delivery's estimated encoded size (a delivery larger than what is left is
    /// still handed over, so any message can pass: the overshoot is at most one message).
    pub fn set_budget(&mut self, consumer: ConsumerId, budget: Option<u64>) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.budget = budget;
        }
    }

    /// Consumers that could be handed a delivery now if their connection has room: they have
    /// credit and a message is ready. Empty when nothing is ready.
    pub fn consumers_wanting(&self) -> Vec<ConsumerId> {
        if self.ready.is_empty() {
            return Vec::new();
        }
        self.consumers
            .iter()
            .filter(|(_, c)| c.credit > 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Reports that every delivery to `consumer` up to and including `through_tag` was written
    /// to its connection: their ack deadlines start now.
    pub fn written(&mut self, now: u64, consumer: ConsumerId, through_tag: u64) {
        let timeout = self.config.ack_timeout_ms;
        let Some(c) = self.consumers.get_mut(&consumer) else {
            return;
        };
        while let Some(&tag) = c.unwritten.front() {
            if tag > through_tag {
                break;
            }
            c.unwritten.pop_front();
            if let Some(u) = self.unacked.get_mut(&tag)
                && u.deadline.is_none()
                && timeout > 0
            {
                let d = now + timeout;
                u.deadline = Some(d);
                self.deadlines.insert((d, tag));
            }
        }
    }

    /// Adds a consumer with no credit yet.
    pub fn subscribe(&mut self, consumer: ConsumerId, auto_ack: bool) {
        self.idle_since = None;
        self.consumers.insert(
            consumer,
            Consumer {
                auto_ack,
                ..Consumer::default()
            },
        );
    }

    /// `request(n)`: the consumer can take `n` more messages.
    pub fn add_credit(&mut self, consumer: ConsumerId, n: u32) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.credit = c.credit.saturating_add(u64::from(n));
        }
    }

    /// Removes a consumer (unsubscribe, or its connection died): its unacked deliveries go back
    /// to the queue with their delivery count kept (or to the dead-letter queue past
    /// `max_deliveries`).
    pub fn unsubscribe(&mut self, now: u64, consumer: ConsumerId) {
        let removed = self.consumers.remove(&consumer);
        if removed.as_ref().is_some_and(|c| c.priority != 0) {
            self.prioritized -= 1;
        }
        if self.consumers.is_empty() {
            self.idle_since = Some(now);
        }
        let unwritten: std::collections::HashSet<u64> = removed
            .map(|c| c.unwritten.into_iter().collect())
            .unwrap_or_default();
        let mut tags: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.consumer == consumer)
            .map(|(t, _)| *t)
            .collect();
        // In delivery order, so messages go back to their original positions predictably.
        tags.sort_unstable();
        for tag in tags {
            if let Some(u) = self.take_unacked(tag) {
                if unwritten.contains(&tag) {
                    self.return_unsent(u);
                } else {
                    self.requeue(now, u, 0);
                }
            }
        }
    }

    /// A delivery that never left the broker (its connection closed before writing it) goes
    /// back to its position with the delivery count it had before: it was not delivered.
    fn return_unsent(&mut self, u: Unacked) {
        let Unacked {
            seq,
            mut queued,
            meta,
            ..
        } = u;
        queued.deliveries = queued.deliveries.saturating_sub(1);
        self.put_back(seq, queued, meta);
    }

    fn take_unacked(&mut self, tag: u64) -> Option<Unacked> {
        let u = self.unacked.remove(&tag)?;
        self.unacked_bytes -= u.meta.weight;
        if let Some(d) = u.deadline {
            self.deadlines.remove(&(d, tag));
        }
        if let Some(c) = self.consumers.get_mut(&u.consumer) {
            c.unacked -= 1;
        }
        Some(u)
    }

    fn take_owned(&mut self, consumer: ConsumerId, tag: u64) -> Result<Unacked, SettleError> {
        match self.unacked.get(&tag) {
            Some(u) if u.consumer == consumer => Ok(self.take_unacked(tag).expect("present")),
            _ => Err(SettleError::UnknownTag(tag)),
        }
    }

    /// Acknowledges deliveries. Unknown tags are reported, the rest are settled.
    pub fn ack(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) -> Vec<SettleError> {
        let mut errors = Vec::new();
        for &tag in tags {
            match self.take_owned(consumer, tag) {
                Ok(u) => {
                    self.counters.acked += 1;
                    self.effects.push(Effect::Settle {
                        seq: u.seq,
                        how: Settlement::Acked,
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        self.make_room(now);
        errors
    }

    /// Returns deliveries to the queue, at once (`delay_ms = 0`) or after a delay.
    pub fn nack(
        &mut self,
        now: u64,
        consumer: ConsumerId,
        tags: &[u64],
        delay_ms: u64,
    ) -> Vec<SettleError> {
        let mut errors = Vec::new();
        for &tag in tags {
            match self.take_owned(consumer, tag) {
                Ok(u) => self.requeue(now, u, delay_ms),
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Renews the leases of unacked deliveries: each one's ack deadline becomes `now + extend_ms`
    /// (`extend_ms = 0`: now + the queue's ack timeout; with an ack timeout of 0 as well the
    /// delivery keeps no deadline). Unknown tags (settled, returned after their deadline, another
    /// consumer's) are reported: a lease that ended cannot be renewed.
    pub fn extend(
        &mut self,
        now: u64,
        consumer: ConsumerId,
        tags: &[u64],
        extend_ms: u64,
    ) -> Vec<SettleError> {
        let ms = if extend_ms == 0 {
            self.config.ack_timeout_ms
        } else {
            extend_ms.min(levee_proto::MAX_ACK_TIMEOUT_MS)
        };
        let mut errors = Vec::new();
        for &tag in tags {
            match self.unacked.get_mut(&tag) {
                Some(u) if u.consumer == consumer => {
                    if let Some(d) = u.deadline.take() {
                        self.deadlines.remove(&(d, tag));
                    }
                    if ms > 0 {
                        let d = now.saturating_add(ms);
                        u.deadline = Some(d);
                        self.deadlines.insert((d, tag));
                    }
                }
                _ => errors.push(SettleError::UnknownTag(tag)),
            }
        }
        errors
    }

    /// The next `n` ready messages in delivery order, without taking them (peek / browse):
    /// `(seq, deliveries so far, publish time, body if held in memory)`. Messages waiting for a
    /// nack delay and unacked ones are not ready and not shown.
    pub fn peek(&self, n: usize) -> Vec<(u64, u32, u64, Option<Message>)> {
        self.ready
            .peek(n)
            .into_iter()
            .map(|(seq, q)| {
                let body = q.message.as_deref().cloned();
                (seq, q.deliveries, q.timestamp_ms, body)
            })
            .collect()
    }

    /// Sets a consumer's credit to `n` (whatever it had left): the HTTP receive session takes
    /// back the credit of a long poll that ended.
    pub fn set_credit(&mut self, consumer: ConsumerId, n: u64) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.credit = n;
        }
    }

    /// Returns deliveries that never left the broker (their message could not be read for
    /// sending): back to their positions, their delivery count unchanged.
    pub fn unsent(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) {
        for &tag in tags {
            if let Ok(u) = self.take_owned(consumer, tag) {
                self.return_unsent(u);
            }
        }
        self.make_room(now);
    }

    /// Sends deliveries to the dead-letter queue (dropped, counted, if there is none).
    pub fn reject(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) -> Vec<SettleError> {
        let mut errors = Vec::new();
        for &tag in tags {
            match self.take_owned(consumer, tag) {
                Ok(u) => self.dead_letter(u.seq, u.queued, DeadLetterReason::Rejected),
                Err(e) => errors.push(e),
            }
        }
        self.make_room(now);
        errors
    }

    /// A delivery came back unacked: to the dead-letter queue if it reached `max_deliveries`,
    /// otherwise back to the ready set (at its original position) or the delay set.
    fn requeue(&mut self, now: u64, u: Unacked, delay_ms: u64) {
        let Unacked {
            seq, queued, meta, ..
        } = u;
        if self
            .config
            .max_deliveries
            .is_some_and(|max| queued.deliveries >= max)
        {
            self.dead_letter(seq, queued, DeadLetterReason::MaxDeliveries);
            self.make_room(now);
            return;
        }
        self.effects.push(Effect::DeliveryCount {
            seq,
            count: queued.deliveries,
        });
        if delay_ms > 0 {
            let due = now.saturating_add(delay_ms);
            self.delayed_bytes += meta.weight;
            self.delayed_due.insert((due, seq));
            self.delayed.insert(seq, (queued, meta));
        } else {
            self.put_back(seq, queued, meta);
        }
    }

    fn put_back(&mut self, seq: u64, queued: Queued, meta: Meta<Key>) {
        if let Some(at) = queued.expires_at {
            self.expiries.push(Reverse((at, seq)));
        }
        if let Some(superseded) = self.ready.reinsert(seq, queued, meta) {
            self.account_evicted(superseded);
        }
    }

    /// Settles `seq` as dead-lettered (emitting the move) or, with no dead-letter queue, as
    /// dropped (rejected, max deliveries) or expired.
    fn dead_letter(&mut self, seq: u64, queued: Queued, reason: DeadLetterReason) {
        if let Some(target) = DeadLetterTarget::of(&self.config) {
            self.counters.dead_lettered += 1;
            self.effects.push(Effect::DeadLetter {
                seq,
                target,
                message: queued.message.map(|m| *m),
                reason,
                deliveries: queued.deliveries,
            });
            self.effects.push(Effect::Settle {
                seq,
                how: Settlement::DeadLettered,
            });
            return;
        }
        let how = match reason {
            DeadLetterReason::Expired => {
                self.counters.expired += 1;
                Settlement::Expired
            }
            DeadLetterReason::MaxDeliveries => {
                self.counters.dropped[reason_index(DropReason::MaxDeliveries)] += 1;
                Settlement::Dropped(DropReason::MaxDeliveries)
            }
            DeadLetterReason::Rejected => {
                self.counters.dropped[reason_index(DropReason::DeadLetterRefused)] += 1;
                Settlement::Dropped(DropReason::DeadLetterRefused)
            }
        };
        self.effects.push(Effect::Settle { seq, how });
    }

    /// Advances time: expired ack deadlines return their messages, due delayed messages become
    /// ready, expired ready messages are settled (or dead-lettered).
    pub fn tick(&mut self, now: u64) {
        while let Some(&(deadline, tag)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(u) = self.take_unacked(tag) {
                self.requeue(now, u, 0);
            }
        }
        while let Some(&(due, seq)) = self.delayed_due.first() {
            if due > now {
                break;
            }
            self.delayed_due.pop_first();
            if let Some((queued, meta)) = self.delayed.remove(&seq) {
                self.delayed_bytes -= meta.weight;
                self.put_back(seq, queued, meta);
            }
        }
        while let Some(&Reverse((at, seq))) = self.expiries.peek() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if let Some(item) = self.ready.remove(seq) {
                self.dead_letter(item.seq, item.item, DeadLetterReason::Expired);
            }
        }
        self.make_room(now);
    }

    /// The earliest time at which [`tick`](QueueState::tick) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let a = self.deadlines.first().map(|d| d.0);
        let b = self.delayed_due.first().map(|d| d.0);
        let c = self.expiries.peek().map(|Reverse(e)| e.0);
        let d = self.rate_retry_at.filter(|_| !self.held.is_empty());
        [a, b, c, d, self.expires_at()].into_iter().flatten().min()
    }

    /// Picks the next consumer with credit: with `single_active_consumer` only the
    /// longest-subscribed one (lowest id) is ever picked; else round-robin after the one served
    /// last, among the consumers of the highest priority that can take a message.
    fn next_consumer(&self) -> Option<ConsumerId> {
        let can_take = |c: &Consumer| c.credit > 0 && c.budget != Some(0);
        if self.config.single_active_consumer {
            let (id, c) = self.consumers.iter().next()?;
            return can_take(c).then_some(*id);
        }
        let top = if self.prioritized == 0 {
            0
        } else {
            self.consumers
                .values()
                .filter(|c| can_take(c))
                .map(|c| c.priority)
                .max()?
        };
        let after = self.cursor.unwrap_or(0);
        let with_credit =
            |(id, c): (&ConsumerId, &Consumer)| (can_take(c) && c.priority == top).then_some(*id);
        self.consumers
            .range(after.saturating_add(1)..)
            .find_map(with_credit)
            .or_else(|| self.consumers.range(..=after).find_map(with_credit))
    }

    /// Hands ready messages to consumers with credit, round-robin, each within its credit, never
    /// past the durability watermark. Expired messages met on the way are settled instead.
    pub fn dispatch(&mut self, now: u64, out: &mut Vec<Outgoing>) {
        while !self.ready.is_empty() {
            let Some(consumer) = self.next_consumer() else {
                break;
            };
            let Some(Item { seq, item, meta }) = self.ready.pop() else {
                break;
            };
            if seq >= self.durable_below {
                // Not yet on disk: put it back and wait for the watermark to move.
                if let Some(superseded) = self.ready.reinsert(seq, item, meta) {
                    self.account_evicted(superseded);
                }
                break;
            }
            let mut queued = item;
            if queued.expires_at.is_some_and(|at| at <= now) {
                self.dead_letter(seq, queued, DeadLetterReason::Expired);
                continue;
            }
            queued.deliveries += 1;
            self.counters.delivered += 1;
            if queued.deliveries > 1 {
                self.counters.redelivered += 1;
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            self.cursor = Some(consumer);
            let c = self.consumers.get_mut(&consumer).expect("chosen");
            c.credit -= 1;
            if let Some(b) = &mut c.budget {
                *b = b.saturating_sub(delivery_cost(&queued, &meta));
            }
            let outgoing = Outgoing {
                consumer,
                tag,
                seq,
                deliveries: queued.deliveries,
                timestamp_ms: queued.timestamp_ms,
                message: queued.message.as_deref().cloned(),
            };
            if c.auto_ack {
                self.counters.acked += 1;
                self.effects.push(Effect::Settle {
                    seq,
                    how: Settlement::Acked,
                });
            } else {
                c.unacked += 1;
                let deadline = if c.tracked {
                    // Starts when the connection reports the delivery written.
                    c.unwritten.push_back(tag);
                    None
                } else {
                    (self.config.ack_timeout_ms > 0).then(|| now + self.config.ack_timeout_ms)
                };
                if let Some(d) = deadline {
                    self.deadlines.insert((d, tag));
                }
                self.unacked_bytes += meta.weight;
                self.unacked.insert(
                    tag,
                    Unacked {
                        seq,
                        consumer,
                        deadline,
                        queued,
                        meta,
                    },
                );
            }
            out.push(outgoing);
        }
        self.make_room(now);
    }

    /// Drops every ready and delayed message (reason `purged`); returns how many.
    pub fn purge(&mut self, now: u64) -> u64 {
        let mut n = 0;
        for item in self.ready.drain() {
            self.settle_purged(item.seq);
            n += 1;
        }
        for (seq, (_, meta)) in std::mem::take(&mut self.delayed) {
            self.delayed_bytes -= meta.weight;
            self.settle_purged(seq);
            n += 1;
        }
        self.delayed_due.clear();
        self.make_room(now);
        n
    }

    fn settle_purged(&mut self, seq: u64) {
        self.counters.dropped[reason_index(DropReason::Purged)] += 1;
        self.effects.push(Effect::Settle {
            seq,
            how: Settlement::Dropped(DropReason::Purged),
        });
    }

    /// Takes the effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Ready messages (including delayed ones).
    pub fn ready_len(&self) -> u64 {
        (self.ready.len() + self.delayed.len()) as u64
    }

    /// Whether any consumer has credit.
    pub fn has_demand(&self) -> bool {
        self.consumers.values().any(|c| c.credit > 0)
    }

    /// The raw counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A stats snapshot (rates are filled in by the caller, which owns the clock).
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            published: self.counters.published,
            stored: self.counters.stored,
            rejected: self.counters.rejected,
            acked: self.counters.acked,
            dropped: DropReason::ALL
                .iter()
                .zip(self.counters.dropped)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (*r, n))
                .collect(),
            expired: self.counters.expired,
            dead_lettered: self.counters.dead_lettered,
            ready: self.ready_len(),
            unacked: self.unacked.len() as u64,
            bytes: self.ready.bytes() + self.unacked_bytes + self.delayed_bytes,
            publish_credit_outstanding: self.credit_outstanding,
            consumers: self
                .consumers
                .iter()
                .map(|(id, c)| ConsumerStats {
                    subscription: *id,
                    credit: c.credit,
                    unacked: c.unacked,
                })
                .collect(),
            publish_rate: 0,
            deliver_rate: 0,
            ack_rate: 0,
            duplicates: self.counters.duplicates,
        }
    }
}

fn config_dedup(config: &QueueConfig) -> Option<dedup::DedupWindow> {
    config.dedup.map(dedup::DedupWindow::new)
}

pub mod confirms;
pub mod core;
pub mod dedup;
pub mod reconfigure;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
