//! Queue configuration: [`QueueConfig`] and its parts, their defaults, validation and wire encoding.
//!
//! Owns the rules for queue names ([`validate_queue_name`]) and config ranges
//! ([`QueueConfig::validate`]), and the field-by-field comparison used to explain why a redeclare
//! with a different config is refused ([`QueueConfig::differences`]). The decoder only checks a config
//! structurally (known enum tags); the broker calls `validate` so that a bad value is answered with a
//! per-request `InvalidConfig` error instead of closing the connection. The textual settings that
//! the CLI and the HTTP API share go through the same parsers here (`FromStr` of [`Overflow`],
//! [`Order`], [`Fsync`], and [`Durability::from_parts`] for the durability / fsync pair), so
//! both front ends accept and refuse the same combinations.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use crate::error::ProtoError;
use crate::wire::{Reader, put_bytes8, put_option};

type Result<T> = std::result::Result<T, ProtoError>;

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 255;
/// Longest accepted `ack_timeout_ms` (24 h).
pub const MAX_ACK_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest accepted `message_ttl_ms` (365 days).
pub const MAX_MESSAGE_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// Longest accepted fsync interval (60 s).
pub const MAX_FSYNC_INTERVAL_MS: u32 = 60_000;

/// Checks that `name` is 1..=255 bytes of `[A-Za-z0-9._@-]` (`@` for names such as Celery's
/// `celery@host.celery.pidbox`).
pub fn validate_queue_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(ProtoError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_QUEUE_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return bad("only A-Z, a-z, 0-9, '.', '_', '@' and '-' are allowed");
    }
    Ok(())
}

/// What a queue does with a publish when it is full (`max_messages` or `max_bytes` reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// The producer may only publish within the publish credit the broker grants; no credit is granted
    /// while the queue is full. Nothing is dropped. Wire value 0. The default.
    #[default]
    Block,
    /// The new message is refused with `Rejected { code: QueueFull }`. Wire value 1.
    Reject,
    /// The new message is accepted and dropped (`Dropped { OverflowNewest }`). Wire value 2.
    DropNewest,
    /// The oldest ready message is evicted to make room (counted as `EvictedOldest`). Wire value 3.
    DropOldest,
    /// A ready message with the same key is replaced (counted as `Conflated`); messages without a key,
    /// or with a key not yet queued, fall back to `DropOldest`. Wire value 4.
    ConflateByKey,
    /// The lowest-priority ready message is dropped if it has lower priority than the new one,
    /// otherwise the new one is dropped (both counted as `ShedPriority`). Wire value 5.
    ShedPriority,
}

impl Overflow {
    /// All policies, in wire order.
    pub const ALL: [Overflow; 6] = [
        Overflow::Block,
        Overflow::Reject,
        Overflow::DropNewest,
        Overflow::DropOldest,
        Overflow::ConflateByKey,
        Overflow::ShedPriority,
    ];

    /// Stable name, e.g. `"drop-oldest"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Reject => "reject",
            Overflow::DropNewest => "drop-newest",
            Overflow::DropOldest => "drop-oldest",
            Overflow::ConflateByKey => "conflate-by-key",
            Overflow::ShedPriority => "shed-priority",
        }
    }

    const fn wire(self) -> u8 {
        match self {
            Overflow::Block => 0,
            Overflow::Reject => 1,
            Overflow::DropNewest => 2,
            Overflow::DropOldest => 3,
            Overflow::ConflateByKey => 4,
            Overflow::ShedPriority => 5,
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Overflow {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self> {
        Overflow::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| ProtoError::InvalidConfig {
                field: "overflow",
                reason: format!("unknown policy {s:?}"),
            })
    }
}

/// Order in which ready messages are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Order {
    /// Publish order. Wire value 0. The default.
    #[default]
    Fifo,
    /// Highest `priority` first, publish order within a priority. Wire value 1.
    Priority,
}

impl Order {
    /// Stable name: `"fifo"` or `"priority"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Order::Fifo => "fifo",
            Order::Priority => "priority",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Order {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fifo" => Ok(Order::Fifo),
            "priority" => Ok(Order::Priority),
            _ => Err(ProtoError::InvalidConfig {
                field: "order",
                reason: format!("unknown order {s:?}"),
            }),
        }
    }
}

/// When a disk queue fsyncs appended messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Fsync {
    /// Before a publish is confirmed as stored. Wire value 0. The default.
    #[default]
    Always,
    /// At most every `n` milliseconds (1..=60 000); a crash may lose that window. Wire value 1 + `u32`.
    Interval(u32),
    /// Left to the OS. Wire value 2.
    Never,
}

impl fmt::Display for Fsync {
    /// The words the `levee` flags take: `always`, `never`, `interval:MS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Never => f.write_str("never"),
            Fsync::Interval(ms) => write!(f, "interval:{ms}"),
        }
    }
}

impl FromStr for Fsync {
    type Err = ProtoError;
    /// `always`, `never` or `interval:MS` (the range of MS is checked by
    /// [`QueueConfig::validate`]).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u32>) {
                Some(Ok(ms)) => Ok(Fsync::Interval(ms)),
                _ => Err(ProtoError::InvalidConfig {
                    field: "fsync",
                    reason: format!("{s:?}: expected always, never or interval:MS"),
                }),
            },
        }
    }
}

/// Where a queue keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// Messages in memory only, lost on restart; the queue's definition is kept in the catalog,
    /// so the queue itself comes back (empty). Wire value 0.
    Memory,
    /// On disk with the given fsync policy. Wire value 1 + fsync.
    Disk(Fsync),
    /// Messages in memory and no catalog entry: the queue is gone after a restart (RabbitMQ's
    /// `durable=false`). Wire value 2.
    Transient,
}

impl Default for Durability {
    /// `Disk(Fsync::Always)`: a confirmed message survives a crash.
    fn default() -> Self {
        Durability::Disk(Fsync::Always)
    }
}

impl Durability {
    /// The durability that the two settings `durability` (`"memory"` | `"disk"`, default disk)
    /// and `fsync` (default always) name, as the CLI flags and the HTTP API take them. The one
    /// place that rules on their combination: an fsync policy with a memory queue is refused
    /// (field `fsync`), as is an unknown durability (field `durability`).
    pub fn from_parts(durability: Option<&str>, fsync: Option<Fsync>) -> Result<Durability> {
        match durability {
            None | Some("disk") => Ok(Durability::Disk(fsync.unwrap_or_default())),
            Some(kind @ ("memory" | "transient")) => match fsync {
                None if kind == "memory" => Ok(Durability::Memory),
                None => Ok(Durability::Transient),
                Some(f) => Err(ProtoError::InvalidConfig {
                    field: "fsync",
                    reason: format!("{f} applies only to disk queues, not to a {kind} queue"),
                }),
            },
            Some(other) => Err(ProtoError::InvalidConfig {
                field: "durability",
                reason: format!("unknown durability {other:?}: expected disk, memory or transient"),
            }),
        }
    }

    /// `"memory"`, `"disk"` or `"transient"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Disk(_) => "disk",
            Durability::Transient => "transient",
        }
    }

    /// Whether the queue's definition is kept in the catalog (it comes back after a restart).
    pub const fn keeps_definition(self) -> bool {
        !matches!(self, Durability::Transient)
    }

    /// The fsync policy of a disk queue (`None` for memory).
    pub const fn fsync(self) -> Option<Fsync> {
        match self {
            Durability::Memory | Durability::Transient => None,
            Durability::Disk(f) => Some(f),
        }
    }
}

impl fmt::Display for Durability {
    /// `memory`, or `disk` with its policy: `disk fsync=always`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Memory => f.write_str("memory"),
            Durability::Disk(fs) => write!(f, "disk fsync={fs}"),
            Durability::Transient => f.write_str("transient"),
        }
    }
}

/// Publish rate limit of a queue (token buckets). `None` rates are unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RateLimit {
    /// Sustained messages per second (`Some(0)` is invalid).
    pub msgs_per_sec: Option<u32>,
    /// Sustained payload bytes per second (`Some(0)` is invalid).
    pub bytes_per_sec: Option<u64>,
    /// Message bucket size: messages admitted at once above the rate (>= 1 when `msgs_per_sec` is set).
    pub burst_msgs: u32,
    /// Byte bucket size (>= 1 when `bytes_per_sec` is set); a message larger than this never passes.
    pub burst_bytes: u64,
}

impl fmt::Display for RateLimit {
    /// `msgs_per_sec=100 burst_msgs=100 bytes_per_sec=none burst_bytes=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("none".into(), |n| n.to_string());
        write!(
            f,
            "msgs_per_sec={} burst_msgs={} bytes_per_sec={} burst_bytes={}",
            opt(self.msgs_per_sec.map(u64::from)),
            self.burst_msgs,
            opt(self.bytes_per_sec),
            self.burst_bytes
        )
    }
}

impl RateLimit {
    /// A limit of `msgs_per_sec` with a burst of one second's worth.
    pub fn msgs(msgs_per_sec: u32) -> Self {
        RateLimit {
            msgs_per_sec: Some(msgs_per_sec),
            burst_msgs: msgs_per_sec,
            ..RateLimit::default()
        }
    }

    /// A limit of `bytes_per_sec` with a burst of one second's worth.
    pub fn bytes(bytes_per_sec: u64) -> Self {
        RateLimit {
            bytes_per_sec: Some(bytes_per_sec),
            burst_bytes: bytes_per_sec,
            ..RateLimit::default()
        }
    }
}

/// Most message ids a deduplication window may hold ([`Dedup::max_ids`]).
pub const MAX_DEDUP_IDS: u32 = 10_000_000;
/// Longest deduplication window ([`Dedup::window_ms`]): 24 h.
pub const MAX_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// A queue's deduplication window of message ids ([`crate::Message::message_id`]): a publish
/// whose id the queue stored within the window is confirmed
/// [`crate::PublishOutcome::Duplicate`] and not stored again. An id leaves the window when it is
/// older than `window_ms` or when `max_ids` newer ids have been stored, whichever comes first
/// (the count bounds the memory: at most `max_ids` × (id length + about 80 bytes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dedup {
    /// How long an id is remembered, in ms (`None`: only the count bounds it). Default 120 000
    /// (JetStream's default duplicate window); 1..=86 400 000.
    pub window_ms: Option<u64>,
    /// Most ids remembered. Default 100 000; 1..=10 000 000.
    pub max_ids: u32,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            window_ms: Some(120_000),
            max_ids: 100_000,
        }
    }
}

impl fmt::Display for Dedup {
    /// `window_ms=120000 max_ids=100000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.window_ms {
            Some(w) => write!(f, "window_ms={w} max_ids={}", self.max_ids),
            None => write!(f, "window_ms=none max_ids={}", self.max_ids),
        }
    }
}

/// A queue's declared configuration. See each field for its default and valid range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueConfig {
    /// Hard limit on stored messages (ready + unacked). Default 100 000; must be >= 1.
    pub max_messages: u64,
    /// Hard limit on stored payload bytes (ready + unacked). Default 64 MiB; must be >= 1.
    pub max_bytes: u64,
    /// What happens when a limit is reached. Default [`Overflow::Block`].
    pub overflow: Overflow,
    /// Delivery order. Default [`Order::Fifo`].
    pub order: Order,
    /// Storage. Default `Disk(Always)`.
    pub durability: Durability,
    /// An unacked delivery is requeued after this many ms; 0 = never (a delivery stays unacked until
    /// it is settled or its connection ends). Default 30 000; 0..=86 400 000.
    pub ack_timeout_ms: u64,
    /// After this many deliveries a message is dead-lettered (or dropped as `MaxDeliveries` without a
    /// dead-letter queue). `None` = unlimited. Default `Some(20)`; `Some(0)` is invalid.
    pub max_deliveries: Option<u32>,
    /// Queue receiving rejected, expired and over-delivered messages. Default `None`; must be a valid
    /// name different from the queue's own.
    pub dead_letter: Option<String>,
    /// Default time-to-live of messages without their own. Default `None`; 1..=365 days in ms.
    pub message_ttl_ms: Option<u64>,
    /// Publish rate limit. Default `None` (unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Exchange receiving this queue's dead letters (rejected, expired, over-delivered), used
    /// instead of `dead_letter` when set. Default `None`. Wire: extension tag 1.
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead letters sent to `dead_letter_exchange`; `None` keeps each message's
    /// own routing key (as RabbitMQ). Default `None`; needs `dead_letter_exchange`. Wire:
    /// extension tag 2.
    pub dead_letter_routing_key: Option<String>,
    /// Deliver to one consumer at a time: the longest-subscribed one gets every message while
    /// it stays; the others wait, and the next takes over when it leaves (RabbitMQ's
    /// `x-single-active-consumer`). Default `false`. Wire: extension tag 16 (`"1"`).
    pub single_active_consumer: bool,
    /// Delete the queue once it has gone unused this long: no consumer, no `basic.get` and no
    /// redeclare (RabbitMQ's `x-expires`). The clock restarts when the broker does. Default
    /// `None`; 1..=365 days in ms. Wire: extension tag 17 (decimal).
    pub expires_ms: Option<u64>,
    /// Deduplication of publishes by message id. Default `Some(Dedup::default())` (on, 2
    /// minutes); `None` = off. Sent at the end of protocol-2 `Declare` / `QueueStats` frames
    /// (a protocol-1 `Declare` gets the default).
    pub dedup: Option<Dedup>,
    /// Copies of the queue kept by a cluster: 1 (the default) = a local queue on the node that
    /// declared it; 2..=[`MAX_REPLICAS`] = a replicated queue (one Raft group over the cluster's
    /// nodes, which must number at least this many), always on disk with fsync `always`, served
    /// by its group's leader (RabbitMQ's quorum queues, NATS' R3 streams). A broker outside a
    /// cluster refuses it. Wire: extension tag 48 (decimal).
    pub replicas: u8,
}

/// Most copies a replicated queue may ask for ([`QueueConfig::replicas`]).
pub const MAX_REPLICAS: u8 = 9;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
            overflow: Overflow::Block,
            order: Order::Fifo,
            durability: Durability::default(),
            ack_timeout_ms: 30_000,
            max_deliveries: Some(20),
            dead_letter: None,
            message_ttl_ms: None,
            rate_limit: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            single_active_consumer: false,
            expires_ms: None,
            dedup: Some(Dedup::default()),
            replicas: 1,
        }
    }
}

/// One field that differs between an existing queue's config and a redeclare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// Field name, e.g. `"max_messages"`.
    pub field: &'static str,
    /// The existing value, formatted.
    pub existing: String,
    /// The requested value, formatted.
    pub requested: String,
}

impl fmt::Display for ConfigDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: existing {}, requested {}",
            self.field, self.existing, self.requested
        )
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Result<()> {
    Err(ProtoError::InvalidConfig {
        field,
        reason: reason.into(),
    })
}

impl QueueConfig {
    /// Checks every range and cross-field rule for a queue called `queue` (the name itself included).
    pub fn validate(&self, queue: &str) -> Result<()> {
        validate_queue_name(queue)?;
        if self.max_messages == 0 {
            return invalid("max_messages", "must be at least 1");
        }
        if self.max_bytes == 0 {
            return invalid("max_bytes", "must be at least 1");
        }
        if let Durability::Disk(Fsync::Interval(ms)) = self.durability
            && !(1..=MAX_FSYNC_INTERVAL_MS).contains(&ms)
        {
            return invalid(
                "durability",
                format!("fsync interval {ms} ms is outside 1..={MAX_FSYNC_INTERVAL_MS}"),
            );
        }
        if self.ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            return invalid(
                "ack_timeout_ms",
                format!(
                    "{} is outside 0..={MAX_ACK_TIMEOUT_MS} (0 = never)",
                    self.ack_timeout_ms
                ),
            );
        }
        if self.max_deliveries == Some(0) {
            return invalid("max_deliveries", "must be at least 1 (or unset)");
        }
        if let Some(dl) = &self.dead_letter {
            if let Err(ProtoError::InvalidName { reason, .. }) = validate_queue_name(dl) {
                return invalid("dead_letter", format!("{dl:?}: {reason}"));
            }
            if dl == queue {
                return invalid("dead_letter", "a queue cannot dead-letter into itself");
            }
        }
        if let Some(x) = &self.dead_letter_exchange
            && let Err(ProtoError::InvalidName { reason, .. }) = crate::validate_exchange_name(x)
        {
            return invalid("dead_letter_exchange", format!("{x:?}: {reason}"));
        }
        if let Some(k) = &self.dead_letter_routing_key {
            if self.dead_letter_exchange.is_none() {
                return invalid(
                    "dead_letter_routing_key",
                    "needs dead_letter_exchange (a dead-letter queue takes no routing key)",
                );
            }
            if k.len() > crate::MAX_ROUTING_KEY_LEN {
                return invalid("dead_letter_routing_key", "longer than 255 bytes");
            }
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return invalid(
                "replicas",
                format!("{} is outside 1..={MAX_REPLICAS}", self.replicas),
            );
        }
        if self.replicas > 1 && !matches!(self.durability, Durability::Disk(Fsync::Always)) {
            return invalid(
                "replicas",
                "a replicated queue is on disk with fsync always (its fsync is the Raft commit)",
            );
        }
        if let Some(ms) = self.expires_ms
            && !(1..=MAX_MESSAGE_TTL_MS).contains(&ms)
        {
            return invalid(
                "expires_ms",
                format!("{ms} is outside 1..={MAX_MESSAGE_TTL_MS}"),
            );
        }
        if let Some(ttl) = self.message_ttl_ms
            && !(1..=MAX_MESSAGE_TTL_MS).contains(&ttl)
        {
            return invalid(
                "message_ttl_ms",
                format!("{ttl} is outside 1..={MAX_MESSAGE_TTL_MS}"),
            );
        }
        if let Some(rl) = &self.rate_limit {
            match rl.msgs_per_sec {
                Some(0) => return invalid("rate_limit.msgs_per_sec", "must be at least 1"),
                Some(_) if rl.burst_msgs == 0 => {
                    return invalid("rate_limit.burst_msgs", "must be at least 1");
                }
                _ => {}
            }
            match rl.bytes_per_sec {
                Some(0) => return invalid("rate_limit.bytes_per_sec", "must be at least 1"),
                Some(_) if rl.burst_bytes == 0 => {
                    return invalid("rate_limit.burst_bytes", "must be at least 1");
                }
                _ => {}
            }
        }
        if let Some(d) = &self.dedup {
            if d.window_ms
                .is_some_and(|w| !(1..=MAX_DEDUP_WINDOW_MS).contains(&w))
            {
                return invalid(
                    "dedup.window_ms",
                    format!(
                        "{} is outside 1..={MAX_DEDUP_WINDOW_MS}",
                        d.window_ms.unwrap_or(0)
                    ),
                );
            }
            if !(1..=MAX_DEDUP_IDS).contains(&d.max_ids) {
                return invalid(
                    "dedup.max_ids",
                    format!("{} is outside 1..={MAX_DEDUP_IDS}", d.max_ids),
                );
            }
        }
        Ok(())
    }

    /// Every field whose value differs between `self` (the existing config) and `requested`, in
    /// declaration order. Empty when the configs are equal.
    pub fn differences(&self, requested: &QueueConfig) -> Vec<ConfigDifference> {
        let mut out = Vec::new();
        let mut cmp = |field: &'static str, a: String, b: String| {
            if a != b {
                out.push(ConfigDifference {
                    field,
                    existing: a,
                    requested: b,
                });
            }
        };
        let r = requested;
        cmp(
            "max_messages",
            self.max_messages.to_string(),
            r.max_messages.to_string(),
        );
        cmp(
            "max_bytes",
            self.max_bytes.to_string(),
            r.max_bytes.to_string(),
        );
        cmp(
            "overflow",
            self.overflow.to_string(),
            r.overflow.to_string(),
        );
        cmp("order", self.order.to_string(), r.order.to_string());
        cmp(
            "durability",
            self.durability.to_string(),
            r.durability.to_string(),
        );
        cmp(
            "ack_timeout_ms",
            self.ack_timeout_ms.to_string(),
            r.ack_timeout_ms.to_string(),
        );
        let deliveries = |v: Option<u32>| v.map_or("unlimited".into(), |n| n.to_string());
        cmp(
            "max_deliveries",
            deliveries(self.max_deliveries),
            deliveries(r.max_deliveries),
        );
        let name = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        cmp("dead_letter", name(&self.dead_letter), name(&r.dead_letter));
        let ttl = |v: Option<u64>| v.map_or("none".into(), |n| n.to_string());
        cmp(
            "message_ttl_ms",
            ttl(self.message_ttl_ms),
            ttl(r.message_ttl_ms),
        );
        let rate = |v: &Option<RateLimit>| v.map_or("none".into(), |rl| rl.to_string());
        cmp("rate_limit", rate(&self.rate_limit), rate(&r.rate_limit));
        cmp(
            "dead_letter_exchange",
            name(&self.dead_letter_exchange),
            name(&r.dead_letter_exchange),
        );
        cmp(
            "dead_letter_routing_key",
            name(&self.dead_letter_routing_key),
            name(&r.dead_letter_routing_key),
        );
        cmp(
            "single_active_consumer",
            self.single_active_consumer.to_string(),
            r.single_active_consumer.to_string(),
        );
        cmp("expires_ms", ttl(self.expires_ms), ttl(r.expires_ms));
        cmp(
            "replicas",
            self.replicas.to_string(),
            r.replicas.to_string(),
        );
        let dedup = |v: &Option<Dedup>| v.map_or("off".into(), |d| d.to_string());
        cmp("dedup", dedup(&self.dedup), dedup(&r.dedup));
        out
    }

    /// One-line explanation of [`QueueConfig::differences`], e.g. for a `QueueConfigMismatch` error:
    /// `"max_messages: existing 10, requested 20; overflow: existing block, requested reject"`.
    pub fn describe_differences(&self, requested: &QueueConfig) -> String {
        self.differences(requested)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Set on the `order` byte when an extension section follows the config's version-1 fields: a
/// `u8` count, then that many `(u8 tag, bytes16 value)` entries in ascending tag order. A config
/// without extension fields encodes exactly as in protocol version 1 (so version-1 peers and
/// catalog entries keep working). Tags: 1 = `dead_letter_exchange`, 2 =
/// `dead_letter_routing_key` (routing); 16..=31 are set aside for the AMQP front end's fields
/// (16 = `single_active_consumer` as `"1"`, 17 = `expires_ms` in decimal), 32..=47 for
/// operations' fields and 48..=63 for the cluster's (48 = `replicas` in decimal, when not 1). An unknown tag is an error, never skipped (a catalog entry
/// must not lose a setting).
const ORDER_EXTENSIONS: u8 = 0x80;
const EXT_DEAD_LETTER_EXCHANGE: u8 = 1;
const EXT_DEAD_LETTER_ROUTING_KEY: u8 = 2;
const EXT_SINGLE_ACTIVE_CONSUMER: u8 = 16;
const EXT_EXPIRES_MS: u8 = 17;
const EXT_REPLICAS: u8 = 48;

fn extensions(c: &QueueConfig) -> Vec<(u8, Vec<u8>)> {
    let mut ext: Vec<(u8, Vec<u8>)> = Vec::new();
    if let Some(x) = &c.dead_letter_exchange {
        ext.push((EXT_DEAD_LETTER_EXCHANGE, x.as_bytes().to_vec()));
    }
    if let Some(k) = &c.dead_letter_routing_key {
        ext.push((EXT_DEAD_LETTER_ROUTING_KEY, k.as_bytes().to_vec()));
    }
    if c.single_active_consumer {
        ext.push((EXT_SINGLE_ACTIVE_CONSUMER, b"1".to_vec()));
    }
    if let Some(ms) = c.expires_ms {
        ext.push((EXT_EXPIRES_MS, ms.to_string().into_bytes()));
    }
    if c.replicas != 1 {
        ext.push((EXT_REPLICAS, c.replicas.to_string().into_bytes()));
    }
    ext
}

pub(crate) fn encode_config(dst: &mut BytesMut, c: &QueueConfig) -> Result<()> {
    let ext = extensions(c);
    dst.put_u64_le(c.max_messages);
    dst.put_u64_le(c.max_bytes);
    dst.put_u8(c.overflow.wire());
    let order = match c.order {
        Order::Fifo => 0,
        Order::Priority => 1,
    };
    dst.put_u8(if ext.is_empty() {
        order
    } else {
        order | ORDER_EXTENSIONS
    });
    match c.durability {
        Durability::Memory => dst.put_u8(0),
        Durability::Transient => dst.put_u8(2),
        Durability::Disk(fsync) => {
            dst.put_u8(1);
            match fsync {
                Fsync::Always => dst.put_u8(0),
                Fsync::Interval(ms) => {
                    dst.put_u8(1);
                    dst.put_u32_le(ms);
                }
                Fsync::Never => dst.put_u8(2),
            }
        }
    }
    dst.put_u64_le(c.ack_timeout_ms);
    put_option(dst, c.max_deliveries.as_ref(), |d, v| {
        d.put_u32_le(*v);
        Ok(())
    })?;
    put_option(dst, c.dead_letter.as_ref(), |d, v| {
        put_bytes8(d, v.as_bytes(), "dead_letter")
    })?;
    put_option(dst, c.message_ttl_ms.as_ref(), |d, v| {
        d.put_u64_le(*v);
        Ok(())
    })?;
    put_option(dst, c.rate_limit.as_ref(), |d, rl| {
        put_option(d, rl.msgs_per_sec.as_ref(), |d, v| {
            d.put_u32_le(*v);
            Ok(())
        })?;
        put_option(d, rl.bytes_per_sec.as_ref(), |d, v| {
            d.put_u64_le(*v);
            Ok(())
        })?;
        d.put_u32_le(rl.burst_msgs);
        d.put_u64_le(rl.burst_bytes);
        Ok(())
    })?;
    if !ext.is_empty() {
        crate::wire::put_count8(dst, ext.len(), usize::from(u8::MAX), "config extensions")?;
        for (tag, value) in ext {
            dst.put_u8(tag);
            crate::wire::put_bytes16(dst, &value, "config extension")?;
        }
    }
    Ok(())
}

/// The protocol-2 trailer of a config (at the very end of its frame): the dedup setting.
pub(crate) fn encode_dedup(dst: &mut BytesMut, d: Option<&Dedup>) -> Result<()> {
    put_option(dst, d, |d, v| {
        put_option(d, v.window_ms.as_ref(), |d, w| {
            d.put_u64_le(*w);
            Ok(())
        })?;
        d.put_u32_le(v.max_ids);
        Ok(())
    })
}

/// Reads [`encode_dedup`]'s trailer.
pub(crate) fn decode_dedup(r: &mut Reader) -> Result<Option<Dedup>> {
    r.option("dedup", |r| {
        Ok(Dedup {
            window_ms: r.option("dedup window", |r| r.u64("dedup window_ms"))?,
            max_ids: r.u32("dedup max_ids")?,
        })
    })
}

pub(crate) fn decode_config(r: &mut Reader) -> Result<QueueConfig> {
    let max_messages = r.u64("max_messages")?;
    let max_bytes = r.u64("max_bytes")?;
    let overflow = match r.u8("overflow")? {
        v if usize::from(v) < Overflow::ALL.len() => Overflow::ALL[usize::from(v)],
        v => {
            return Err(ProtoError::InvalidValue {
                what: "overflow",
                value: v.into(),
            });
        }
    };
    let order_byte = r.u8("order")?;
    let has_ext = order_byte & ORDER_EXTENSIONS != 0;
    let order = match order_byte & !ORDER_EXTENSIONS {
        0 => Order::Fifo,
        1 => Order::Priority,
        v => {
            return Err(ProtoError::InvalidValue {
                what: "order",
                value: v.into(),
            });
        }
    };
    let durability = match r.u8("durability")? {
        0 => Durability::Memory,
        2 => Durability::Transient,
        1 => Durability::Disk(match r.u8("fsync")? {
            0 => Fsync::Always,
            1 => Fsync::Interval(r.u32("fsync interval")?),
            2 => Fsync::Never,
            v => {
                return Err(ProtoError::InvalidValue {
                    what: "fsync",
                    value: v.into(),
                });
            }
        }),
        v => {
            return Err(ProtoError::InvalidValue {
                what: "durability",
                value: v.into(),
            });
        }
    };
    let ack_timeout_ms = r.u64("ack_timeout_ms")?;
    let max_deliveries = r.option("max_deliveries", |r| r.u32("max_deliveries"))?;
    let dead_letter = r.option("dead_letter", |r| r.str8("dead_letter"))?;
    let message_ttl_ms = r.option("message_ttl_ms", |r| r.u64("message_ttl_ms"))?;
    let rate_limit = r.option("rate_limit", |r| {
        Ok(RateLimit {
            msgs_per_sec: r.option("msgs_per_sec", |r| r.u32("msgs_per_sec"))?,
            bytes_per_sec: r.option("bytes_per_sec", |r| r.u64("bytes_per_sec"))?,
            burst_msgs: r.u32("burst_msgs")?,
            burst_bytes: r.u64("burst_bytes")?,
        })
    })?;
    let mut dead_letter_exchange = None;
    let mut dead_letter_routing_key = None;
    let mut single_active_consumer = false;
    let mut expires_ms = None;
    let mut replicas = 1u8;
    if has_ext {
        let n = r.u8("config extensions")?;
        let mut last = 0u8;
        for _ in 0..n {
            let tag = r.u8("config extension tag")?;
            if tag <= last {
                return Err(ProtoError::InvalidValue {
                    what: "config extension tag (repeated or out of order)",
                    value: tag.into(),
                });
            }
            last = tag;
            let value = r.str16("config extension")?;
            match tag {
                EXT_DEAD_LETTER_EXCHANGE => dead_letter_exchange = Some(value),
                EXT_DEAD_LETTER_ROUTING_KEY => dead_letter_routing_key = Some(value),
                EXT_SINGLE_ACTIVE_CONSUMER if value == "1" => single_active_consumer = true,
                EXT_EXPIRES_MS => match value.parse::<u64>() {
                    Ok(ms) if value.bytes().all(|b| b.is_ascii_digit()) => expires_ms = Some(ms),
                    _ => {
                        return Err(ProtoError::InvalidValue {
                            what: "config extension expires_ms (not a decimal number)",
                            value: u64::from(tag),
                        });
                    }
                },
                EXT_REPLICAS => match value.parse::<u8>() {
                    Ok(n) if n != 1 && value.bytes().all(|b| b.is_ascii_digit()) => replicas = n,
                    _ => {
                        return Err(ProtoError::InvalidValue {
                            what: "config extension replicas (not a decimal number other than 1)",
                            value: u64::from(tag),
                        });
                    }
                },
                other => {
                    return Err(ProtoError::InvalidValue {
                        what: "config extension tag",
                        value: other.into(),
                    });
                }
            }
        }
    }
    Ok(QueueConfig {
        max_messages,
        max_bytes,
        overflow,
        order,
        durability,
        ack_timeout_ms,
        max_deliveries,
        dead_letter,
        message_ttl_ms,
        rate_limit,
        dead_letter_exchange,
        dead_letter_routing_key,
        single_active_consumer,
        expires_ms,
        replicas,
        // The frame's protocol-2 trailer overrides it (`decode_dedup`).
        dedup: Some(Dedup::default()),
    })
}
