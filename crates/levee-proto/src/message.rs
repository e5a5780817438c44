//! Message-level values: [`Message`], [`Delivery`], [`PublishOutcome`], [`DropReason`],
//! [`QueueStats`] and their wire encoding.
//!
//! Invariants: decoded `Bytes` fields (key, header values, payload) are zero-copy slices of the frame
//! buffer, so a retained payload keeps its whole frame's allocation alive (copy it if that matters);
//! strings are copied. Every collection is bounded by a protocol limit from the crate root and by the
//! bytes of its frame.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ErrorCode, ProtoError};
use crate::wire::{Reader, put_bytes8, put_bytes16, put_bytes32, put_count8, put_count32};
use crate::{MAX_HEADERS, MAX_LIST};

type Result<T> = std::result::Result<T, ProtoError>;

/// A message as published (and as delivered, inside a [`Delivery`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Message {
    /// Key for `conflate-by-key` (at most 65 535 bytes).
    pub key: Option<Bytes>,
    /// Priority for `priority` order and `shed-priority` overflow; higher is more important. Default 0.
    pub priority: u8,
    /// Time-to-live in ms from publish; overrides the queue's `message_ttl_ms`.
    pub ttl_ms: Option<u64>,
    /// Application headers: names of at most 255 bytes, values of at most 65 535 bytes, at most
    /// [`MAX_HEADERS`] of them.
    pub headers: Vec<(String, Bytes)>,
    /// Producer-chosen message id (at most 255 bytes, opaque): the key of the queue's
    /// deduplication window (a publish whose id the queue saw within its window is confirmed
    /// [`PublishOutcome::Duplicate`] and not stored again). A producer that retries after a lost
    /// connection uses a stable id per message, e.g. `producer-id:sequence`. Kept with the message
    /// and delivered with it. `None`: never deduplicated.
    pub message_id: Option<Bytes>,
    /// Opaque protocol properties kept and delivered byte for byte (at most `u32::MAX` bytes):
    /// for a message published over AMQP 0-9-1, the encoded basic property block of its content
    /// header (property flags + property list), so typed headers and every property come back
    /// exactly as sent. Native clients may ignore it; the broker never interprets it except to
    /// map properties onto headers for native consumers (see `docs/amqp.md`). Wire flag 8.
    pub properties: Option<Bytes>,
    /// The body (at most `u32::MAX` bytes; in practice bounded by the max frame size).
    pub payload: Bytes,
}

impl Message {
    /// A message with this payload and every other field at its default.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Sets the conflation key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the time-to-live.
    pub fn with_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = Some(ttl_ms);
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the message id (the deduplication key; at most 255 bytes).
    pub fn with_message_id(mut self, id: impl Into<Bytes>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the opaque protocol properties block.
    pub fn with_properties(mut self, properties: impl Into<Bytes>) -> Self {
        self.properties = Some(properties.into());
        self
    }

    /// Exact number of bytes this message occupies inside a `Publish` or `Deliver` frame; use it to
    /// split batches below the negotiated max frame size.
    pub fn wire_len(&self) -> usize {
        MESSAGE_MIN_LEN
            + self.key.as_ref().map_or(0, |k| 2 + k.len())
            + self.ttl_ms.map_or(0, |_| 8)
            + self.message_id.as_ref().map_or(0, |id| 1 + id.len())
            + self.properties.as_ref().map_or(0, |p| 4 + p.len())
            + self
                .headers
                .iter()
                .map(|(n, v)| 3 + n.len() + v.len())
                .sum::<usize>()
            + self.payload.len()
    }
}

/// flags + priority + header count + payload length.
pub(crate) const MESSAGE_MIN_LEN: usize = 1 + 1 + 1 + 4;
const FLAG_KEY: u8 = 1;
const FLAG_TTL: u8 = 2;
/// Protocol 1's `producer_id: u64`. Still decoded (it becomes the message id in decimal), never
/// encoded: the message id replaced it.
const FLAG_PRODUCER_ID: u8 = 4;
/// A message id (`u8` length + bytes) follows the TTL.
const FLAG_MESSAGE_ID: u8 = 16;
/// The opaque properties block (`bytes32`) follows the headers (AMQP's basic properties).
const FLAG_PROPERTIES: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_KEY | FLAG_TTL | FLAG_PRODUCER_ID | FLAG_MESSAGE_ID | FLAG_PROPERTIES;

pub(crate) fn encode_message(dst: &mut BytesMut, m: &Message) -> Result<()> {
    let mut flags = 0;
    if m.key.is_some() {
        flags |= FLAG_KEY;
    }
    if m.ttl_ms.is_some() {
        flags |= FLAG_TTL;
    }
    if m.message_id.is_some() {
        flags |= FLAG_MESSAGE_ID;
    }
    if m.properties.is_some() {
        flags |= FLAG_PROPERTIES;
    }
    dst.put_u8(flags);
    dst.put_u8(m.priority);
    if let Some(k) = &m.key {
        put_bytes16(dst, k, "message key")?;
    }
    if let Some(t) = m.ttl_ms {
        dst.put_u64_le(t);
    }
    if let Some(id) = &m.message_id {
        put_bytes8(dst, id, "message id")?;
    }
    put_count8(dst, m.headers.len(), MAX_HEADERS, "message headers")?;
    for (name, value) in &m.headers {
        put_bytes8(dst, name.as_bytes(), "header name")?;
        put_bytes16(dst, value, "header value")?;
    }
    if let Some(p) = &m.properties {
        put_bytes32(dst, p, "properties")?;
    }
    put_bytes32(dst, &m.payload, "payload")
}

pub(crate) fn decode_message(r: &mut Reader) -> Result<Message> {
    let flags = r.u8("message flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::InvalidValue {
            what: "message flags",
            value: flags.into(),
        });
    }
    let priority = r.u8("priority")?;
    let key = if flags & FLAG_KEY != 0 {
        Some(r.bytes16("message key")?)
    } else {
        None
    };
    let ttl_ms = if flags & FLAG_TTL != 0 {
        Some(r.u64("ttl_ms")?)
    } else {
        None
    };
    let mut message_id = if flags & FLAG_PRODUCER_ID != 0 {
        Some(Bytes::from(r.u64("producer_id")?.to_string()))
    } else {
        None
    };
    if flags & FLAG_MESSAGE_ID != 0 {
        message_id = Some(r.bytes8("message id")?);
    }
    let headers = r.vec8("message headers", MAX_HEADERS, 3, |r| {
        Ok((r.str8("header name")?, r.bytes16("header value")?))
    })?;
    let properties = if flags & FLAG_PROPERTIES != 0 {
        Some(r.bytes32("properties")?)
    } else {
        None
    };
    let payload = r.bytes32("payload")?;
    Ok(Message {
        key,
        priority,
        ttl_ms,
        headers,
        message_id,
        properties,
        payload,
    })
}

/// One message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The subscription it is delivered on.
    pub subscription: u64,
    /// Tag to ack / nack / reject it with; unique within the subscription.
    pub tag: u64,
    /// The message's sequence number in its queue (as in `Stored { seq }`).
    pub seq: u64,
    /// 1 on first delivery, incremented on every redelivery.
    pub delivery_count: u32,
    /// Publish time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The message.
    pub message: Message,
}

pub(crate) const DELIVERY_MIN_LEN: usize = 8 + 8 + 8 + 4 + 8 + MESSAGE_MIN_LEN;

pub(crate) fn encode_delivery(dst: &mut BytesMut, d: &Delivery) -> Result<()> {
    dst.put_u64_le(d.subscription);
    dst.put_u64_le(d.tag);
    dst.put_u64_le(d.seq);
    dst.put_u32_le(d.delivery_count);
    dst.put_u64_le(d.timestamp_ms);
    encode_message(dst, &d.message)
}

pub(crate) fn decode_delivery(r: &mut Reader) -> Result<Delivery> {
    Ok(Delivery {
        subscription: r.u64("subscription")?,
        tag: r.u64("delivery tag")?,
        seq: r.u64("seq")?,
        delivery_count: r.u32("delivery_count")?,
        timestamp_ms: r.u64("timestamp_ms")?,
        message: decode_message(r)?,
    })
}

/// Why a stored message left its queue without being acked (or never entered it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// `drop-newest`: the incoming message was dropped because the queue was full. Wire 1.
    OverflowNewest,
    /// `drop-oldest`: evicted to make room for a newer message. Wire 2.
    EvictedOldest,
    /// `conflate-by-key`: replaced by a newer message with the same key. Wire 3.
    Conflated,
    /// `shed-priority`: dropped as the lowest-priority message of a full queue. Wire 4.
    ShedPriority,
    /// Its TTL ran out before delivery. Wire 5. (Queue stats count expiry in `expired`, not `dropped`.)
    Expired,
    /// Delivered `max_deliveries` times and the queue has no dead-letter queue. Wire 6.
    MaxDeliveries,
    /// Removed by `Purge`. Wire 7.
    Purged,
    /// Was to be dead-lettered but the dead-letter queue refused it. Wire 8.
    DeadLetterRefused,
    /// Removed together with its queue by `Delete`. Wire 9.
    QueueDeleted,
    /// Held for room (a full `block` queue, or the rate limit) when its publisher's connection
    /// closed: never stored, since the publisher got no confirm and may publish it again. Wire 10.
    PublisherGone,
}

impl DropReason {
    /// All reasons, in wire order.
    pub const ALL: [DropReason; 10] = [
        DropReason::OverflowNewest,
        DropReason::EvictedOldest,
        DropReason::Conflated,
        DropReason::ShedPriority,
        DropReason::Expired,
        DropReason::MaxDeliveries,
        DropReason::Purged,
        DropReason::DeadLetterRefused,
        DropReason::QueueDeleted,
        DropReason::PublisherGone,
    ];

    /// The wire value (1-based).
    pub fn as_u8(self) -> u8 {
        match self {
            DropReason::OverflowNewest => 1,
            DropReason::EvictedOldest => 2,
            DropReason::Conflated => 3,
            DropReason::ShedPriority => 4,
            DropReason::Expired => 5,
            DropReason::MaxDeliveries => 6,
            DropReason::Purged => 7,
            DropReason::DeadLetterRefused => 8,
            DropReason::QueueDeleted => 9,
            DropReason::PublisherGone => 10,
        }
    }

    /// The reason for a wire value.
    pub fn from_u8(v: u8) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.as_u8() == v)
    }

    /// Stable name, e.g. `"evicted-oldest"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::OverflowNewest => "overflow-newest",
            DropReason::EvictedOldest => "evicted-oldest",
            DropReason::Conflated => "conflated",
            DropReason::ShedPriority => "shed-priority",
            DropReason::Expired => "expired",
            DropReason::MaxDeliveries => "max-deliveries",
            DropReason::Purged => "purged",
            DropReason::DeadLetterRefused => "dead-letter-refused",
            DropReason::QueueDeleted => "queue-deleted",
            DropReason::PublisherGone => "publisher-gone",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn decode_drop_reason(r: &mut Reader) -> Result<DropReason> {
    let v = r.u8("drop reason")?;
    DropReason::from_u8(v).ok_or(ProtoError::InvalidValue {
        what: "drop reason",
        value: v.into(),
    })
}

pub(crate) fn decode_error_code(r: &mut Reader, what: &'static str) -> Result<ErrorCode> {
    let v = r.u16(what)?;
    ErrorCode::from_u16(v).ok_or(ProtoError::InvalidValue {
        what,
        value: v.into(),
    })
}

/// The fate of one published message, reported in `PublishConfirm` at the message's index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Stored (and fsynced if the queue's durability says so) with this queue sequence number. Wire 0.
    Stored {
        /// Queue sequence number.
        seq: u64,
    },
    /// Accepted and counted, but dropped at once by the overflow policy. Wire 1.
    Dropped {
        /// Why.
        reason: DropReason,
    },
    /// Refused; not counted as stored. Wire 2.
    Rejected {
        /// Machine-readable cause (e.g. `QueueFull`, `MessageTooLarge`, `NoPublishCredit`).
        code: ErrorCode,
        /// Human-readable detail (at most 65 535 bytes).
        reason: String,
    },
    /// Refused by the queue's publish rate limit; not counted as stored. Wire 3.
    Throttled {
        /// Suggested wait before retrying, in ms.
        retry_after_ms: u32,
    },
    /// The queue saw this message id within its deduplication window: not stored again (and not
    /// counted as published; counted in `duplicates`). Wire 4.
    Duplicate {
        /// Sequence number the message got when first stored.
        seq: u64,
    },
}

pub(crate) const OUTCOME_MIN_LEN: usize = 2;

pub(crate) fn encode_outcome(dst: &mut BytesMut, o: &PublishOutcome) -> Result<()> {
    match o {
        PublishOutcome::Stored { seq } => {
            dst.put_u8(0);
            dst.put_u64_le(*seq);
        }
        PublishOutcome::Dropped { reason } => {
            dst.put_u8(1);
            dst.put_u8(reason.as_u8());
        }
        PublishOutcome::Rejected { code, reason } => {
            dst.put_u8(2);
            dst.put_u16_le(code.as_u16());
            put_bytes16(dst, reason.as_bytes(), "reject reason")?;
        }
        PublishOutcome::Throttled { retry_after_ms } => {
            dst.put_u8(3);
            dst.put_u32_le(*retry_after_ms);
        }
        PublishOutcome::Duplicate { seq } => {
            dst.put_u8(4);
            dst.put_u64_le(*seq);
        }
    }
    Ok(())
}

pub(crate) fn decode_outcome(r: &mut Reader) -> Result<PublishOutcome> {
    Ok(match r.u8("publish outcome")? {
        0 => PublishOutcome::Stored { seq: r.u64("seq")? },
        1 => PublishOutcome::Dropped {
            reason: decode_drop_reason(r)?,
        },
        2 => PublishOutcome::Rejected {
            code: decode_error_code(r, "reject code")?,
            reason: r.str16("reject reason")?,
        },
        3 => PublishOutcome::Throttled {
            retry_after_ms: r.u32("retry_after_ms")?,
        },
        4 => PublishOutcome::Duplicate { seq: r.u64("seq")? },
        v => {
            return Err(ProtoError::InvalidValue {
                what: "publish outcome",
                value: v.into(),
            });
        }
    })
}

/// One consumer of a queue, as reported by `Inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConsumerStats {
    /// Subscription id (unique within the broker).
    pub subscription: u64,
    /// Credit still available: messages it may be sent without asking again.
    pub credit: u64,
    /// Messages delivered to it and not yet acked, nacked or rejected.
    pub unacked: u64,
}

/// A queue's counters, as reported by `Inspect`.
///
/// Accounting identities the broker maintains exactly (checked by [`QueueStats::is_balanced`]):
/// `published = stored + rejected` and
/// `stored = acked + Σ dropped + expired + dead_lettered + ready + unacked`.
/// Throttled publishes count as rejected; `dropped` never contains [`DropReason::Expired`] (expiry has
/// its own counter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct QueueStats {
    /// Messages received in `Publish` frames for this queue.
    pub published: u64,
    /// Messages accepted into the queue's accounting (outcome `Stored` or `Dropped`).
    pub stored: u64,
    /// Messages refused (outcome `Rejected` or `Throttled`).
    pub rejected: u64,
    /// Messages acked by consumers.
    pub acked: u64,
    /// Messages dropped, by reason (each reason at most once, at most 255 entries).
    pub dropped: Vec<(DropReason, u64)>,
    /// Messages whose TTL ran out.
    pub expired: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Messages waiting for delivery.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Payload bytes of ready + unacked messages.
    pub bytes: u64,
    /// Publish credit granted to producers and not yet used (`block` queues).
    pub publish_credit_outstanding: u64,
    /// Every consumer with its credit (at most [`MAX_LIST`]).
    pub consumers: Vec<ConsumerStats>,
    /// Messages published per second over the broker's stats window.
    pub publish_rate: u64,
    /// Messages delivered per second over the broker's stats window.
    pub deliver_rate: u64,
    /// Messages acked per second over the broker's stats window.
    pub ack_rate: u64,
    /// Publishes confirmed [`PublishOutcome::Duplicate`] (not in `published`). Sent at the end of
    /// a protocol-2 `QueueStats` frame.
    pub duplicates: u64,
}

impl QueueStats {
    /// Sum of all `dropped` counters.
    pub fn dropped_total(&self) -> u64 {
        self.dropped
            .iter()
            .fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
    }

    /// The counter for one drop reason (0 if absent).
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .iter()
            .filter(|(r, _)| *r == reason)
            .fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
    }

    /// Whether both accounting identities hold (computed without overflow).
    pub fn is_balanced(&self) -> bool {
        let published = u128::from(self.stored) + u128::from(self.rejected);
        let stored = u128::from(self.acked)
            + self
                .dropped
                .iter()
                .map(|(_, n)| u128::from(*n))
                .sum::<u128>()
            + u128::from(self.expired)
            + u128::from(self.dead_lettered)
            + u128::from(self.ready)
            + u128::from(self.unacked);
        u128::from(self.published) == published && u128::from(self.stored) == stored
    }
}

pub(crate) fn encode_stats(dst: &mut BytesMut, s: &QueueStats) -> Result<()> {
    dst.put_u64_le(s.published);
    dst.put_u64_le(s.stored);
    dst.put_u64_le(s.rejected);
    dst.put_u64_le(s.acked);
    put_count8(dst, s.dropped.len(), u8::MAX.into(), "dropped counters")?;
    for (reason, n) in &s.dropped {
        dst.put_u8(reason.as_u8());
        dst.put_u64_le(*n);
    }
    dst.put_u64_le(s.expired);
    dst.put_u64_le(s.dead_lettered);
    dst.put_u64_le(s.ready);
    dst.put_u64_le(s.unacked);
    dst.put_u64_le(s.bytes);
    dst.put_u64_le(s.publish_credit_outstanding);
    put_count32(dst, s.consumers.len(), MAX_LIST, "consumers")?;
    for c in &s.consumers {
        dst.put_u64_le(c.subscription);
        dst.put_u64_le(c.credit);
        dst.put_u64_le(c.unacked);
    }
    dst.put_u64_le(s.publish_rate);
    dst.put_u64_le(s.deliver_rate);
    dst.put_u64_le(s.ack_rate);
    Ok(())
}

pub(crate) fn decode_stats(r: &mut Reader) -> Result<QueueStats> {
    let published = r.u64("published")?;
    let stored = r.u64("stored")?;
    let rejected = r.u64("rejected")?;
    let acked = r.u64("acked")?;
    let dropped = r.vec8("dropped counters", u8::MAX.into(), 9, |r| {
        Ok((decode_drop_reason(r)?, r.u64("dropped count")?))
    })?;
    let expired = r.u64("expired")?;
    let dead_lettered = r.u64("dead_lettered")?;
    let ready = r.u64("ready")?;
    let unacked = r.u64("unacked")?;
    let bytes = r.u64("bytes")?;
    let publish_credit_outstanding = r.u64("publish_credit_outstanding")?;
    let consumers = r.vec32("consumers", MAX_LIST, 24, |r| {
        Ok(ConsumerStats {
            subscription: r.u64("subscription")?,
            credit: r.u64("credit")?,
            unacked: r.u64("unacked")?,
        })
    })?;
    Ok(QueueStats {
        published,
        stored,
        rejected,
        acked,
        dropped,
        expired,
        dead_lettered,
        ready,
        unacked,
        bytes,
        publish_credit_outstanding,
        consumers,
        publish_rate: r.u64("publish_rate")?,
        deliver_rate: r.u64("deliver_rate")?,
        ack_rate: r.u64("ack_rate")?,
        duplicates: 0,
    })
}
