//! Frames: [`ClientFrame`] (client -> server) and [`ServerFrame`] (server -> client), the handshake
//! values, the frame header peek and the streaming encoder / decoder.
//!
//! Layout of every frame: `u32 LE length` (of what follows) `| u8 frame type | body`.
//!
//! Decoder invariants (see also `docs/design.md`):
//! - it never panics, whatever the input;
//! - the declared length is checked against `max_frame` before anything is reserved, allocated or
//!   consumed, so a peer cannot make us buffer more than `max_frame + 4` bytes per frame;
//! - `Ok(None)` means "need more bytes" and leaves the buffer untouched;
//! - a complete frame is split off the buffer and frozen once; byte fields are zero-copy slices of it;
//! - every length and count inside is checked against the bytes remaining in that frame; unknown
//!   frame types and enum values, bad UTF-8 and trailing bytes are typed errors.
//!
//! Memory bound of one decoded frame: the frame buffer itself (<= `max_frame`), owned copies of its
//! strings (<= `max_frame`), plus per-item struct overhead bounded by the item limits in the crate root
//! (worst case [`crate::MAX_BATCH`] x [`crate::MAX_HEADERS`] headers of 56 bytes = 14.7 MiB).

use bytes::{Buf, BufMut, BytesMut};

use crate::config::{Dedup, QueueConfig, decode_config, decode_dedup, encode_config, encode_dedup};
use crate::error::{ErrorCode, ProtoError};
use crate::exchange::{
    BINDING_MIN_LEN, Binding, EXCHANGE_INFO_MIN_LEN, ExchangeConfig, ExchangeInfo,
    ROUTED_OUTCOME_MIN_LEN, RoutedOutcome, decode_binding, decode_exchange_config,
    decode_exchange_info, decode_routed_outcome, encode_binding, encode_exchange_config,
    encode_exchange_info, encode_routed_outcome, put_name,
};
use crate::message::{
    DELIVERY_MIN_LEN, Delivery, MESSAGE_MIN_LEN, Message, OUTCOME_MIN_LEN, PublishOutcome,
    QueueStats, decode_delivery, decode_error_code, decode_message, decode_outcome, decode_stats,
    encode_delivery, encode_message, encode_outcome, encode_stats,
};
use crate::wire::{Reader, put_bytes8, put_bytes16, put_count32, put_option, usize_from};
use crate::{MAX_BATCH, MAX_LIST, MAX_TAGS};

type Result<T> = std::result::Result<T, ProtoError>;

/// First four bytes of a `Hello` body.
pub const MAGIC: [u8; 4] = *b"LEVE";
/// Highest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// Lowest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Frame type bytes. Client frames use `0x01..=0x7f`, server frames `0x80..=0xff`, so a frame sent in
/// the wrong direction is an unknown frame type.
pub mod frame_type {
    /// Client `Hello`.
    pub const HELLO: u8 = 0x01;
    /// Client `Heartbeat`.
    pub const HEARTBEAT: u8 = 0x02;
    /// Client `Close`.
    pub const CLOSE: u8 = 0x03;
    /// Client `Declare`.
    pub const DECLARE: u8 = 0x10;
    /// Client `Delete`.
    pub const DELETE: u8 = 0x11;
    /// Client `Purge`.
    pub const PURGE: u8 = 0x12;
    /// Client `Inspect`.
    pub const INSPECT: u8 = 0x13;
    /// Client `ListQueues`.
    pub const LIST_QUEUES: u8 = 0x14;
    /// Client `Publish`.
    pub const PUBLISH: u8 = 0x20;
    /// Client `Produce`.
    pub const PRODUCE: u8 = 0x21;
    /// Client `Subscribe`.
    pub const SUBSCRIBE: u8 = 0x30;
    /// Client `Unsubscribe`.
    pub const UNSUBSCRIBE: u8 = 0x31;
    /// Client `Credit`.
    pub const CREDIT: u8 = 0x32;
    /// Client `Ack`.
    pub const ACK: u8 = 0x33;
    /// Client `Nack`.
    pub const NACK: u8 = 0x34;
    /// Client `Reject`.
    pub const REJECT: u8 = 0x35;
    /// Client `DeclareExchange` (protocol 2).
    pub const DECLARE_EXCHANGE: u8 = 0x40;
    /// Client `DeleteExchange` (protocol 2).
    pub const DELETE_EXCHANGE: u8 = 0x41;
    /// Client `Bind` (protocol 2).
    pub const BIND: u8 = 0x42;
    /// Client `Unbind` (protocol 2).
    pub const UNBIND: u8 = 0x43;
    /// Client `ListExchanges` (protocol 2).
    pub const LIST_EXCHANGES: u8 = 0x44;
    /// Client `ListBindings` (protocol 2).
    pub const LIST_BINDINGS: u8 = 0x45;
    /// Client `PublishRouted` (protocol 2).
    pub const PUBLISH_ROUTED: u8 = 0x46;
    /// Client `Extend` (protocol 2).
    pub const EXTEND: u8 = 0x36;
    /// Client `Update` (protocol 2).
    pub const UPDATE: u8 = 0x50;
    /// Client `Peek` (protocol 2).
    pub const PEEK: u8 = 0x51;
    /// Client `Move` (protocol 2).
    pub const MOVE: u8 = 0x52;

    /// Server `Welcome`.
    pub const WELCOME: u8 = 0x81;
    /// Server `Heartbeat`.
    pub const SERVER_HEARTBEAT: u8 = 0x82;
    /// Server `Close`.
    pub const SERVER_CLOSE: u8 = 0x83;
    /// Server `Error`.
    pub const ERROR: u8 = 0x84;
    /// Server `QueueOk`.
    pub const QUEUE_OK: u8 = 0x90;
    /// Server `QueueStats`.
    pub const QUEUE_STATS: u8 = 0x91;
    /// Server `QueueList`.
    pub const QUEUE_LIST: u8 = 0x92;
    /// Server `PublishConfirm`.
    pub const PUBLISH_CONFIRM: u8 = 0xa0;
    /// Server `PublishCredit`.
    pub const PUBLISH_CREDIT: u8 = 0xa1;
    /// Server `Subscribed`.
    pub const SUBSCRIBED: u8 = 0xb0;
    /// Server `Unsubscribed`.
    pub const UNSUBSCRIBED: u8 = 0xb1;
    /// Server `Deliver`.
    pub const DELIVER: u8 = 0xb2;
    /// Server `ExchangeOk` (protocol 2).
    pub const EXCHANGE_OK: u8 = 0xc0;
    /// Server `ExchangeList` (protocol 2).
    pub const EXCHANGE_LIST: u8 = 0xc1;
    /// Server `BindingList` (protocol 2).
    pub const BINDING_LIST: u8 = 0xc2;
    /// Server `RoutedConfirm` (protocol 2).
    pub const ROUTED_CONFIRM: u8 = 0xc3;
    /// Server `Peeked` (protocol 2).
    pub const PEEKED: u8 = 0xd0;
    /// Server `QueueClosed` (protocol 3).
    pub const QUEUE_CLOSED: u8 = 0xd1;
}
use frame_type as ft;

/// User name and password sent in `Hello`. `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// User name (at most 65 535 bytes).
    pub user: String,
    /// Password (at most 65 535 bytes).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// First frame of a connection, client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Free-form client name for logs (at most 65 535 bytes).
    pub client_name: String,
    /// Optional credentials.
    pub credentials: Option<Credentials>,
}

impl Hello {
    /// A hello offering every version this crate speaks, without credentials.
    pub fn new(client_name: impl Into<String>) -> Self {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: client_name.into(),
            credentials: None,
        }
    }

    /// The version a server speaking `server_min..=server_max` must choose, see [`negotiate_version`].
    pub fn negotiate(&self, server_min: u16, server_max: u16) -> Result<u16> {
        negotiate_version(self.min_version, self.max_version, server_min, server_max)
    }
}

/// Version negotiation: the highest version in both `client_min..=client_max` and
/// `server_min..=server_max`; [`ProtoError::UnsupportedVersion`] if the ranges do not overlap (or
/// either is empty).
pub fn negotiate_version(
    client_min: u16,
    client_max: u16,
    server_min: u16,
    server_max: u16,
) -> Result<u16> {
    let lo = client_min.max(server_min);
    let hi = client_max.min(server_max);
    if client_min <= client_max && server_min <= server_max && lo <= hi {
        Ok(hi)
    } else {
        Err(ProtoError::UnsupportedVersion {
            client_min,
            client_max,
            server_min,
            server_max,
        })
    }
}

/// Successful handshake reply, server -> client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Welcome {
    /// The chosen protocol version; both sides speak it from the next frame on.
    pub version: u16,
    /// Free-form server name (at most 65 535 bytes).
    pub server_name: String,
    /// Largest frame (length field value) the server accepts; the client must not send larger ones.
    pub max_frame: u32,
    /// The server sends a heartbeat when it has been silent this long and closes a connection that
    /// has been silent for three intervals. 0 disables heartbeats.
    pub heartbeat_ms: u32,
}

/// Name, config and counters of one queue (the body of `QueueStats`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueInfo {
    /// Queue name.
    pub queue: String,
    /// Its declared config.
    pub config: QueueConfig,
    /// Its counters.
    pub stats: QueueStats,
}

/// A frame sent by a client.
///
/// `req` is a client-chosen request id echoed by the reply (`QueueOk`, `QueueStats`, `QueueList`,
/// `PublishConfirm`, `Subscribed`, `Unsubscribed` or `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientFrame {
    /// Opens the connection; must be the first frame and is allowed only once.
    Hello(Hello),
    /// Keep-alive; no reply.
    Heartbeat,
    /// The client is closing the connection.
    Close {
        /// Why, if it is an error.
        code: Option<ErrorCode>,
        /// Human-readable reason.
        reason: String,
    },
    /// Create a queue, or check that an existing one has this config. Reply `QueueOk`.
    Declare {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// Config.
        config: QueueConfig,
    },
    /// Delete a queue and its messages. Reply `QueueOk { messages: dropped }`.
    Delete {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
    },
    /// Drop every ready message. Reply `QueueOk { messages: purged }`.
    Purge {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
    },
    /// Ask for a queue's config and counters. Reply `QueueStats`.
    Inspect {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
    },
    /// Ask for every queue name. Reply `QueueList`.
    ListQueues {
        /// Request id.
        req: u64,
    },
    /// Publish a batch (at most [`MAX_BATCH`] messages). Reply `PublishConfirm` with one outcome per
    /// message, in order.
    Publish {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Register this connection as a producer of a queue. Reply `QueueOk`; on a `block` queue the
    /// broker then grants publish credit with `PublishCredit` frames (none before this).
    Produce {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
    },
    /// Start consuming. Reply `Subscribed`.
    Subscribe {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// Initial credit (same as a `Credit` right after subscribing; 0 = none yet).
        credit: u32,
        /// Settle each message as acked when it is sent (no `Ack` needed; at-most-once).
        auto_ack: bool,
    },
    /// Stop consuming; unacked deliveries are requeued. Reply `Unsubscribed`.
    Unsubscribe {
        /// Request id.
        req: u64,
        /// Subscription id.
        subscription: u64,
    },
    /// `request(n)`: the consumer can take `n` more messages (additive). No reply.
    Credit {
        /// Subscription id.
        subscription: u64,
        /// Additional messages.
        n: u32,
    },
    /// Settle deliveries as processed. No reply.
    Ack {
        /// Subscription id.
        subscription: u64,
        /// Delivery tags (at most [`MAX_TAGS`]).
        tags: Vec<u64>,
    },
    /// Return deliveries to the queue, now (`delay_ms = 0`) or after a delay. No reply.
    Nack {
        /// Subscription id.
        subscription: u64,
        /// Delivery tags (at most [`MAX_TAGS`]).
        tags: Vec<u64>,
        /// Requeue delay in ms.
        delay_ms: u64,
    },
    /// Send deliveries to the dead-letter queue (dropped if there is none). No reply.
    Reject {
        /// Subscription id.
        subscription: u64,
        /// Delivery tags (at most [`MAX_TAGS`]).
        tags: Vec<u64>,
    },
    /// Create an exchange, or check that an existing one has this config (`passive`: only check
    /// that it exists, ignoring `config`). Reply `ExchangeOk`.
    DeclareExchange {
        /// Request id.
        req: u64,
        /// Exchange name.
        exchange: String,
        /// Config.
        config: ExchangeConfig,
        /// Only check that it exists.
        passive: bool,
    },
    /// Delete an exchange and its bindings (`if_unused`: refused while it has bindings). Reply
    /// `ExchangeOk`.
    DeleteExchange {
        /// Request id.
        req: u64,
        /// Exchange name.
        exchange: String,
        /// Refuse if it has bindings.
        if_unused: bool,
    },
    /// Bind a queue to an exchange. Reply `ExchangeOk { created }` (false: it was bound already).
    Bind {
        /// Request id.
        req: u64,
        /// The binding.
        binding: Binding,
    },
    /// Remove a binding. Reply `ExchangeOk { created }` (false: there was no such binding).
    Unbind {
        /// Request id.
        req: u64,
        /// The binding.
        binding: Binding,
    },
    /// Ask for every exchange. Reply `ExchangeList`.
    ListExchanges {
        /// Request id.
        req: u64,
    },
    /// Ask for the bindings of one exchange (or of all). Reply `BindingList`.
    ListBindings {
        /// Request id.
        req: u64,
        /// Only this exchange's.
        exchange: Option<String>,
    },
    /// Publish a batch (at most [`MAX_BATCH`]) to an exchange with a routing key. Reply
    /// `RoutedConfirm` with one outcome per message, in order.
    PublishRouted {
        /// Request id.
        req: u64,
        /// Exchange name (`""`: the default exchange, routing key = queue name).
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Change a live queue's configuration (limits, overflow, TTL, rate limit, dead letter, ack
    /// timeout, max deliveries, dedup; not durability or order). Reply `QueueOk`. Protocol 2.
    Update {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// The complete new config.
        config: QueueConfig,
    },
    /// Show the next `count` ready messages without consuming them. Reply `Peeked`. Protocol 2.
    Peek {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// Most messages (the broker caps it at 1000).
        count: u32,
    },
    /// Move up to `max` (all if `None`) ready messages to queue `to`, each settled here only
    /// once `to` stored it (with `header`, only messages carrying that header value). Reply
    /// `QueueOk` with `messages` = how many moved. Protocol 2.
    Move {
        /// Request id.
        req: u64,
        /// Source queue.
        queue: String,
        /// Target queue.
        to: String,
        /// Most messages.
        max: Option<u64>,
        /// Only messages whose header `name` has this value.
        header: Option<(String, bytes::Bytes)>,
    },
    /// Renew the leases of unacked deliveries: each one's ack deadline becomes now + `extend_ms`
    /// (0: now + the queue's ack timeout). No reply; unknown tags are reported like an `Ack`'s.
    /// Protocol 2.
    Extend {
        /// Subscription id.
        subscription: u64,
        /// Delivery tags (at most [`MAX_TAGS`]).
        tags: Vec<u64>,
        /// New lease from now, in ms (at most 24 h).
        extend_ms: u64,
    },
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerFrame {
    /// Successful handshake.
    Welcome(Welcome),
    /// Keep-alive.
    Heartbeat,
    /// The server is closing the connection.
    Close {
        /// Why, if it is an error.
        code: Option<ErrorCode>,
        /// Human-readable reason.
        reason: String,
    },
    /// A request failed (`req` = its id; 0 for connection-level errors, e.g. during the handshake).
    Error {
        /// Request id.
        req: u64,
        /// Stable code.
        code: ErrorCode,
        /// Human-readable message (at most 65 535 bytes).
        message: String,
    },
    /// Reply to `Declare`, `Delete` and `Purge`.
    QueueOk {
        /// Request id.
        req: u64,
        /// Queue name.
        queue: String,
        /// `Declare` created the queue (false: it existed with the same config).
        created: bool,
        /// `Declare`: messages currently stored; `Purge`: messages purged; `Delete`: messages dropped.
        messages: u64,
    },
    /// Reply to `Inspect`.
    QueueStats {
        /// Request id.
        req: u64,
        /// Name, config and counters (boxed to keep the enum small).
        info: Box<QueueInfo>,
    },
    /// Reply to `ListQueues` (at most [`MAX_LIST`] names).
    QueueList {
        /// Request id.
        req: u64,
        /// Queue names.
        queues: Vec<String>,
    },
    /// Reply to `Publish`: `outcomes[i]` is the fate of `messages[i]`.
    PublishConfirm {
        /// Request id.
        req: u64,
        /// One outcome per published message.
        outcomes: Vec<PublishOutcome>,
    },
    /// Grants `n` more messages of publish credit on a `block` queue (additive, per connection).
    PublishCredit {
        /// Queue name.
        queue: String,
        /// Additional messages.
        n: u32,
    },
    /// Reply to `Subscribe`.
    Subscribed {
        /// Request id.
        req: u64,
        /// Broker-unique subscription id.
        subscription: u64,
    },
    /// Reply to `Unsubscribe`.
    Unsubscribed {
        /// Request id.
        req: u64,
        /// The subscription that ended.
        subscription: u64,
    },
    /// Messages for consumers (at most [`MAX_BATCH`]), each within its subscription's credit.
    Deliver {
        /// The deliveries.
        deliveries: Vec<Delivery>,
    },
    /// Reply to `DeclareExchange`, `DeleteExchange`, `Bind` and `Unbind`.
    ExchangeOk {
        /// Request id.
        req: u64,
        /// Exchange name.
        exchange: String,
        /// Declare: created; delete: existed; bind: the binding is new; unbind: it existed.
        created: bool,
    },
    /// Reply to `ListExchanges` (at most [`MAX_LIST`]).
    ExchangeList {
        /// Request id.
        req: u64,
        /// The exchanges, by name.
        exchanges: Vec<ExchangeInfo>,
    },
    /// Reply to `ListBindings` (at most [`MAX_LIST`]).
    BindingList {
        /// Request id.
        req: u64,
        /// The bindings, sorted.
        bindings: Vec<Binding>,
    },
    /// Reply to `PublishRouted`: `outcomes[i]` is the fate of `messages[i]`.
    RoutedConfirm {
        /// Request id.
        req: u64,
        /// One outcome per published message.
        outcomes: Vec<RoutedOutcome>,
    },
    /// Reply to `Peek`: the messages (subscription and tag 0: not deliveries). Protocol 2.
    Peeked {
        /// Request id.
        req: u64,
        /// The messages, in delivery order.
        messages: Vec<Delivery>,
    },
    /// The queue stopped on this server (deleted, shutting down, or served by another node now):
    /// this connection's producer registration and subscriptions of it are over. No more
    /// publish credit or deliveries of it come; what was in flight was answered first (confirms
    /// or errors) and unsettled deliveries go back to the queue. Not a reply. Protocol 3: a
    /// connection that negotiated less never receives it.
    QueueClosed {
        /// Queue name.
        queue: String,
        /// Why (for example `unknown-queue` after a delete, `shutting-down`).
        code: ErrorCode,
        /// Human-readable reason (at most 65 535 bytes).
        message: String,
    },
}

/// The first bytes of a frame, readable before the frame is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Declared length of type byte + body.
    pub len: u32,
    /// The frame type byte, if already buffered (and `len > 0`).
    pub frame_type: Option<u8>,
}

impl FrameHeader {
    /// Reads the header from the start of `buf`; `None` if fewer than 4 bytes are buffered.
    pub fn peek(buf: &[u8]) -> Option<FrameHeader> {
        let prefix: [u8; 4] = buf.get(..LEN_PREFIX)?.try_into().ok()?;
        let len = u32::from_le_bytes(prefix);
        let frame_type = if len > 0 {
            buf.get(LEN_PREFIX).copied()
        } else {
            None
        };
        Some(FrameHeader { len, frame_type })
    }

    /// Bytes of the whole frame including the length prefix.
    pub fn total_len(&self) -> usize {
        usize_from(self.len).saturating_add(LEN_PREFIX)
    }

    /// [`ProtoError::FrameTooLarge`] if `len > max_frame`, [`ProtoError::EmptyFrame`] if `len == 0`.
    pub fn check(&self, max_frame: usize) -> Result<()> {
        if usize_from(self.len) > max_frame {
            Err(ProtoError::FrameTooLarge {
                len: self.len.into(),
                max: max_frame as u64,
            })
        } else if self.len == 0 {
            Err(ProtoError::EmptyFrame)
        } else {
            Ok(())
        }
    }
}

/// Reads a `Declare` / `Update` protocol-2 trailer (the dedup setting). A trailer naming the
/// default is refused: the encoder omits it, and only canonical frames decode.
fn decode_trailer(r: &mut Reader) -> Result<Option<Dedup>> {
    let d = decode_dedup(r)?;
    if d == Some(Dedup::default()) {
        return Err(ProtoError::InvalidValue {
            what: "protocol-2 trailer of defaults",
            value: 0,
        });
    }
    Ok(d)
}

/// Splits one complete frame off `buf`, or `Ok(None)` if it is not complete yet.
fn take_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<(u8, Reader)>> {
    let Some(header) = FrameHeader::peek(buf) else {
        return Ok(None);
    };
    if let Err(e) = header.check(max_frame) {
        if e == ProtoError::EmptyFrame {
            buf.advance(LEN_PREFIX);
        }
        return Err(e);
    }
    if buf.len() < header.total_len() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.total_len()).freeze();
    frame.advance(LEN_PREFIX);
    let ty = frame.get_u8();
    Ok(Some((ty, Reader::new(frame))))
}

/// Writes length placeholder, type and body; patches the length, or truncates `dst` back on error.
fn encode_frame(
    dst: &mut BytesMut,
    ty: u8,
    max_frame: usize,
    body: impl FnOnce(&mut BytesMut) -> Result<()>,
) -> Result<()> {
    let start = dst.len();
    dst.put_u32_le(0);
    dst.put_u8(ty);
    let len = body(dst).and_then(|()| {
        let len = dst.len() - start - LEN_PREFIX;
        match u32::try_from(len) {
            Ok(l) if len <= max_frame => Ok(l),
            _ => Err(ProtoError::FrameTooLarge {
                len: len as u64,
                max: max_frame.min(usize_from(u32::MAX)) as u64,
            }),
        }
    });
    match len {
        Ok(len) => {
            dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

fn put_queue(dst: &mut BytesMut, q: &str) -> Result<()> {
    put_bytes8(dst, q.as_bytes(), "queue name")
}

fn put_tags(dst: &mut BytesMut, tags: &[u64]) -> Result<()> {
    put_count32(dst, tags.len(), MAX_TAGS, "delivery tags")?;
    for t in tags {
        dst.put_u64_le(*t);
    }
    Ok(())
}

fn read_tags(r: &mut Reader) -> Result<Vec<u64>> {
    r.vec32("delivery tags", MAX_TAGS, 8, |r| r.u64("delivery tag"))
}

fn put_close(dst: &mut BytesMut, code: Option<ErrorCode>, reason: &str) -> Result<()> {
    dst.put_u16_le(code.map_or(0, ErrorCode::as_u16));
    put_bytes16(dst, reason.as_bytes(), "close reason")
}

fn read_close(r: &mut Reader) -> Result<(Option<ErrorCode>, String)> {
    let raw = r.u16("close code")?;
    let code = match raw {
        0 => None,
        v => Some(ErrorCode::from_u16(v).ok_or(ProtoError::InvalidValue {
            what: "close code",
            value: v.into(),
        })?),
    };
    Ok((code, r.str16("close reason")?))
}

impl ClientFrame {
    /// The frame type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            ClientFrame::Hello(_) => ft::HELLO,
            ClientFrame::Heartbeat => ft::HEARTBEAT,
            ClientFrame::Close { .. } => ft::CLOSE,
            ClientFrame::Declare { .. } => ft::DECLARE,
            ClientFrame::Delete { .. } => ft::DELETE,
            ClientFrame::Purge { .. } => ft::PURGE,
            ClientFrame::Inspect { .. } => ft::INSPECT,
            ClientFrame::ListQueues { .. } => ft::LIST_QUEUES,
            ClientFrame::Publish { .. } => ft::PUBLISH,
            ClientFrame::Produce { .. } => ft::PRODUCE,
            ClientFrame::Subscribe { .. } => ft::SUBSCRIBE,
            ClientFrame::Unsubscribe { .. } => ft::UNSUBSCRIBE,
            ClientFrame::Credit { .. } => ft::CREDIT,
            ClientFrame::Ack { .. } => ft::ACK,
            ClientFrame::Nack { .. } => ft::NACK,
            ClientFrame::Reject { .. } => ft::REJECT,
            ClientFrame::DeclareExchange { .. } => ft::DECLARE_EXCHANGE,
            ClientFrame::DeleteExchange { .. } => ft::DELETE_EXCHANGE,
            ClientFrame::Bind { .. } => ft::BIND,
            ClientFrame::Unbind { .. } => ft::UNBIND,
            ClientFrame::ListExchanges { .. } => ft::LIST_EXCHANGES,
            ClientFrame::ListBindings { .. } => ft::LIST_BINDINGS,
            ClientFrame::PublishRouted { .. } => ft::PUBLISH_ROUTED,
            ClientFrame::Extend { .. } => ft::EXTEND,
            ClientFrame::Update { .. } => ft::UPDATE,
            ClientFrame::Peek { .. } => ft::PEEK,
            ClientFrame::Move { .. } => ft::MOVE,
        }
    }

    /// The request id a reply must echo, for frames that get a reply.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            ClientFrame::Declare { req, .. }
            | ClientFrame::Delete { req, .. }
            | ClientFrame::Purge { req, .. }
            | ClientFrame::Inspect { req, .. }
            | ClientFrame::ListQueues { req }
            | ClientFrame::Publish { req, .. }
            | ClientFrame::Produce { req, .. }
            | ClientFrame::Subscribe { req, .. }
            | ClientFrame::Unsubscribe { req, .. }
            | ClientFrame::DeclareExchange { req, .. }
            | ClientFrame::DeleteExchange { req, .. }
            | ClientFrame::Bind { req, .. }
            | ClientFrame::Unbind { req, .. }
            | ClientFrame::ListExchanges { req }
            | ClientFrame::ListBindings { req, .. }
            | ClientFrame::PublishRouted { req, .. } => Some(*req),
            ClientFrame::Update { req, .. }
            | ClientFrame::Peek { req, .. }
            | ClientFrame::Move { req, .. } => Some(*req),
            _ => None,
        }
    }

    /// Appends the encoded frame to `dst`. Fails (writing nothing) if a field exceeds its length
    /// prefix or a protocol limit, or the frame would exceed `u32::MAX` bytes.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        self.encode_limited(dst, usize_from(u32::MAX))
    }

    /// Like [`ClientFrame::encode`], but also fails with [`ProtoError::FrameTooLarge`] (writing
    /// nothing) if the frame exceeds `max_frame` (the peer's negotiated maximum).
    pub fn encode_limited(&self, dst: &mut BytesMut, max_frame: usize) -> Result<()> {
        encode_frame(dst, self.frame_type(), max_frame, |d| self.encode_body(d))
    }

    fn encode_body(&self, d: &mut BytesMut) -> Result<()> {
        match self {
            ClientFrame::Hello(h) => {
                d.put_slice(&MAGIC);
                d.put_u16_le(h.min_version);
                d.put_u16_le(h.max_version);
                put_bytes16(d, h.client_name.as_bytes(), "client name")?;
                put_option(d, h.credentials.as_ref(), |d, c| {
                    put_bytes16(d, c.user.as_bytes(), "user")?;
                    put_bytes16(d, c.password.as_bytes(), "password")
                })
            }
            ClientFrame::Heartbeat => Ok(()),
            ClientFrame::Close { code, reason } => put_close(d, *code, reason),
            ClientFrame::Declare { req, queue, config }
            | ClientFrame::Update { req, queue, config } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                encode_config(d, config)?;
                // The protocol-2 trailer, omitted for the default: the frame stays canonical
                // and a protocol-1 peer's frame means the default.
                if config.dedup != Some(Dedup::default()) {
                    encode_dedup(d, config.dedup.as_ref())?;
                }
                Ok(())
            }
            ClientFrame::Delete { req, queue }
            | ClientFrame::Purge { req, queue }
            | ClientFrame::Inspect { req, queue } => {
                d.put_u64_le(*req);
                put_queue(d, queue)
            }
            ClientFrame::ListQueues { req } => {
                d.put_u64_le(*req);
                Ok(())
            }
            ClientFrame::Publish {
                req,
                queue,
                messages,
            } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                put_count32(d, messages.len(), MAX_BATCH, "publish batch")?;
                messages.iter().try_for_each(|m| encode_message(d, m))
            }
            ClientFrame::Produce { req, queue } => {
                d.put_u64_le(*req);
                put_queue(d, queue)
            }
            ClientFrame::Subscribe {
                req,
                queue,
                credit,
                auto_ack,
            } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                d.put_u32_le(*credit);
                d.put_u8(u8::from(*auto_ack));
                Ok(())
            }
            ClientFrame::Unsubscribe { req, subscription } => {
                d.put_u64_le(*req);
                d.put_u64_le(*subscription);
                Ok(())
            }
            ClientFrame::Credit { subscription, n } => {
                d.put_u64_le(*subscription);
                d.put_u32_le(*n);
                Ok(())
            }
            ClientFrame::Ack { subscription, tags }
            | ClientFrame::Reject { subscription, tags } => {
                d.put_u64_le(*subscription);
                put_tags(d, tags)
            }
            ClientFrame::Nack {
                subscription,
                tags,
                delay_ms,
            } => {
                d.put_u64_le(*subscription);
                d.put_u64_le(*delay_ms);
                put_tags(d, tags)
            }
            ClientFrame::DeclareExchange {
                req,
                exchange,
                config,
                passive,
            } => {
                d.put_u64_le(*req);
                put_name(d, exchange, "exchange name")?;
                encode_exchange_config(d, config)?;
                d.put_u8(u8::from(*passive));
                Ok(())
            }
            ClientFrame::DeleteExchange {
                req,
                exchange,
                if_unused,
            } => {
                d.put_u64_le(*req);
                put_name(d, exchange, "exchange name")?;
                d.put_u8(u8::from(*if_unused));
                Ok(())
            }
            ClientFrame::Bind { req, binding } | ClientFrame::Unbind { req, binding } => {
                d.put_u64_le(*req);
                encode_binding(d, binding)
            }
            ClientFrame::ListExchanges { req } => {
                d.put_u64_le(*req);
                Ok(())
            }
            ClientFrame::ListBindings { req, exchange } => {
                d.put_u64_le(*req);
                put_option(d, exchange.as_ref(), |d, x| put_name(d, x, "exchange name"))
            }
            ClientFrame::PublishRouted {
                req,
                exchange,
                routing_key,
                messages,
            } => {
                d.put_u64_le(*req);
                put_name(d, exchange, "exchange name")?;
                put_name(d, routing_key, "routing key")?;
                put_count32(d, messages.len(), MAX_BATCH, "publish batch")?;
                messages.iter().try_for_each(|m| encode_message(d, m))
            }
            ClientFrame::Extend {
                subscription,
                tags,
                extend_ms,
            } => {
                d.put_u64_le(*subscription);
                d.put_u64_le(*extend_ms);
                put_tags(d, tags)
            }
            ClientFrame::Peek { req, queue, count } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                d.put_u32_le(*count);
                Ok(())
            }
            ClientFrame::Move {
                req,
                queue,
                to,
                max,
                header,
            } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                put_queue(d, to)?;
                put_option(d, max.as_ref(), |d, v| {
                    d.put_u64_le(*v);
                    Ok(())
                })?;
                put_option(d, header.as_ref(), |d, (n, v)| {
                    put_bytes8(d, n.as_bytes(), "header name")?;
                    put_bytes16(d, v, "header value")
                })
            }
        }
    }

    /// Decodes the next frame from the front of `buf`.
    ///
    /// `Ok(None)`: incomplete, nothing consumed. `Ok(Some(_))`: the frame was consumed. `Err(_)`: see
    /// [`ProtoError`]; [`ProtoError::FrameTooLarge`] consumes nothing, every other error consumes the
    /// offending frame. `max_frame` bounds the length field (type byte + body); use
    /// [`crate::HANDSHAKE_MAX_FRAME`] until the handshake is done.
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<ClientFrame>> {
        let Some((ty, mut r)) = take_frame(buf, max_frame)? else {
            return Ok(None);
        };
        let frame = Self::decode_body(ty, &mut r)?;
        r.finish(ty)?;
        Ok(Some(frame))
    }

    fn decode_body(ty: u8, r: &mut Reader) -> Result<ClientFrame> {
        Ok(match ty {
            ft::HELLO => {
                let magic = r.array4("magic")?;
                if magic != MAGIC {
                    return Err(ProtoError::BadMagic(magic));
                }
                ClientFrame::Hello(Hello {
                    min_version: r.u16("min_version")?,
                    max_version: r.u16("max_version")?,
                    client_name: r.str16("client name")?,
                    credentials: r.option("credentials", |r| {
                        Ok(Credentials {
                            user: r.str16("user")?,
                            password: r.str16("password")?,
                        })
                    })?,
                })
            }
            ft::HEARTBEAT => ClientFrame::Heartbeat,
            ft::CLOSE => {
                let (code, reason) = read_close(r)?;
                ClientFrame::Close { code, reason }
            }
            ft::DECLARE => {
                let req = r.u64("request id")?;
                let queue = r.str8("queue name")?;
                let mut config = decode_config(r)?;
                if r.has_more() {
                    config.dedup = decode_trailer(r)?;
                }
                ClientFrame::Declare { req, queue, config }
            }
            ft::UPDATE => {
                let req = r.u64("request id")?;
                let queue = r.str8("queue name")?;
                let mut config = decode_config(r)?;
                if r.has_more() {
                    config.dedup = decode_trailer(r)?;
                }
                ClientFrame::Update { req, queue, config }
            }
            ft::DELETE => ClientFrame::Delete {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
            },
            ft::PURGE => ClientFrame::Purge {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
            },
            ft::INSPECT => ClientFrame::Inspect {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
            },
            ft::LIST_QUEUES => ClientFrame::ListQueues {
                req: r.u64("request id")?,
            },
            ft::PUBLISH => ClientFrame::Publish {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
                messages: r.vec32("publish batch", MAX_BATCH, MESSAGE_MIN_LEN, decode_message)?,
            },
            ft::PRODUCE => ClientFrame::Produce {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
            },
            ft::SUBSCRIBE => ClientFrame::Subscribe {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
                credit: r.u32("credit")?,
                auto_ack: match r.u8("auto_ack")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(ProtoError::InvalidValue {
                            what: "auto_ack",
                            value: v.into(),
                        });
                    }
                },
            },
            ft::UNSUBSCRIBE => ClientFrame::Unsubscribe {
                req: r.u64("request id")?,
                subscription: r.u64("subscription")?,
            },
            ft::CREDIT => ClientFrame::Credit {
                subscription: r.u64("subscription")?,
                n: r.u32("credit")?,
            },
            ft::ACK => ClientFrame::Ack {
                subscription: r.u64("subscription")?,
                tags: read_tags(r)?,
            },
            ft::NACK => {
                let subscription = r.u64("subscription")?;
                let delay_ms = r.u64("delay_ms")?;
                ClientFrame::Nack {
                    subscription,
                    tags: read_tags(r)?,
                    delay_ms,
                }
            }
            ft::REJECT => ClientFrame::Reject {
                subscription: r.u64("subscription")?,
                tags: read_tags(r)?,
            },
            ft::DECLARE_EXCHANGE => ClientFrame::DeclareExchange {
                req: r.u64("request id")?,
                exchange: r.str8("exchange name")?,
                config: decode_exchange_config(r)?,
                passive: r.bool("passive")?,
            },
            ft::DELETE_EXCHANGE => ClientFrame::DeleteExchange {
                req: r.u64("request id")?,
                exchange: r.str8("exchange name")?,
                if_unused: r.bool("if_unused")?,
            },
            ft::BIND => ClientFrame::Bind {
                req: r.u64("request id")?,
                binding: decode_binding(r)?,
            },
            ft::UNBIND => ClientFrame::Unbind {
                req: r.u64("request id")?,
                binding: decode_binding(r)?,
            },
            ft::LIST_EXCHANGES => ClientFrame::ListExchanges {
                req: r.u64("request id")?,
            },
            ft::LIST_BINDINGS => ClientFrame::ListBindings {
                req: r.u64("request id")?,
                exchange: r.option("exchange", |r| r.str8("exchange name"))?,
            },
            ft::PUBLISH_ROUTED => ClientFrame::PublishRouted {
                req: r.u64("request id")?,
                exchange: r.str8("exchange name")?,
                routing_key: r.str8("routing key")?,
                messages: r.vec32("publish batch", MAX_BATCH, MESSAGE_MIN_LEN, decode_message)?,
            },
            ft::PEEK => ClientFrame::Peek {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
                count: r.u32("count")?,
            },
            ft::MOVE => ClientFrame::Move {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
                to: r.str8("target queue")?,
                max: r.option("max", |r| r.u64("max"))?,
                header: r.option("header", |r| {
                    Ok((r.str8("header name")?, r.bytes16("header value")?))
                })?,
            },
            ft::EXTEND => {
                let subscription = r.u64("subscription")?;
                let extend_ms = r.u64("extend_ms")?;
                ClientFrame::Extend {
                    subscription,
                    tags: read_tags(r)?,
                    extend_ms,
                }
            }
            other => return Err(ProtoError::UnknownFrameType(other)),
        })
    }
}

impl ServerFrame {
    /// The frame type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            ServerFrame::Welcome(_) => ft::WELCOME,
            ServerFrame::Heartbeat => ft::SERVER_HEARTBEAT,
            ServerFrame::Close { .. } => ft::SERVER_CLOSE,
            ServerFrame::Error { .. } => ft::ERROR,
            ServerFrame::QueueOk { .. } => ft::QUEUE_OK,
            ServerFrame::QueueStats { .. } => ft::QUEUE_STATS,
            ServerFrame::QueueList { .. } => ft::QUEUE_LIST,
            ServerFrame::PublishConfirm { .. } => ft::PUBLISH_CONFIRM,
            ServerFrame::PublishCredit { .. } => ft::PUBLISH_CREDIT,
            ServerFrame::Subscribed { .. } => ft::SUBSCRIBED,
            ServerFrame::Unsubscribed { .. } => ft::UNSUBSCRIBED,
            ServerFrame::Deliver { .. } => ft::DELIVER,
            ServerFrame::ExchangeOk { .. } => ft::EXCHANGE_OK,
            ServerFrame::ExchangeList { .. } => ft::EXCHANGE_LIST,
            ServerFrame::BindingList { .. } => ft::BINDING_LIST,
            ServerFrame::RoutedConfirm { .. } => ft::ROUTED_CONFIRM,
            ServerFrame::Peeked { .. } => ft::PEEKED,
            ServerFrame::QueueClosed { .. } => ft::QUEUE_CLOSED,
        }
    }

    /// The request id this frame replies to, for replies.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            ServerFrame::Error { req, .. }
            | ServerFrame::QueueOk { req, .. }
            | ServerFrame::QueueStats { req, .. }
            | ServerFrame::QueueList { req, .. }
            | ServerFrame::PublishConfirm { req, .. }
            | ServerFrame::Subscribed { req, .. }
            | ServerFrame::Unsubscribed { req, .. }
            | ServerFrame::ExchangeOk { req, .. }
            | ServerFrame::ExchangeList { req, .. }
            | ServerFrame::BindingList { req, .. }
            | ServerFrame::RoutedConfirm { req, .. } => Some(*req),
            ServerFrame::Peeked { req, .. } => Some(*req),
            _ => None,
        }
    }

    /// The `Error` reply for a failed request (or a connection-level error with `req = 0`).
    pub fn error(req: u64, err: &ProtoError) -> ServerFrame {
        ServerFrame::Error {
            req,
            code: err.code(),
            message: err.to_string(),
        }
    }

    /// Appends the encoded frame to `dst`; see [`ClientFrame::encode`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        self.encode_limited(dst, usize_from(u32::MAX))
    }

    /// Appends the encoded frame to `dst`, failing (writing nothing) above `max_frame`; see
    /// [`ClientFrame::encode_limited`].
    pub fn encode_limited(&self, dst: &mut BytesMut, max_frame: usize) -> Result<()> {
        encode_frame(dst, self.frame_type(), max_frame, |d| self.encode_body(d))
    }

    fn encode_body(&self, d: &mut BytesMut) -> Result<()> {
        match self {
            ServerFrame::Welcome(w) => {
                d.put_u16_le(w.version);
                put_bytes16(d, w.server_name.as_bytes(), "server name")?;
                d.put_u32_le(w.max_frame);
                d.put_u32_le(w.heartbeat_ms);
                Ok(())
            }
            ServerFrame::Heartbeat => Ok(()),
            ServerFrame::Close { code, reason } => put_close(d, *code, reason),
            ServerFrame::Error { req, code, message } => {
                d.put_u64_le(*req);
                d.put_u16_le(code.as_u16());
                put_bytes16(d, message.as_bytes(), "error message")
            }
            ServerFrame::QueueOk {
                req,
                queue,
                created,
                messages,
            } => {
                d.put_u64_le(*req);
                put_queue(d, queue)?;
                d.put_u8(u8::from(*created));
                d.put_u64_le(*messages);
                Ok(())
            }
            ServerFrame::QueueStats { req, info } => {
                d.put_u64_le(*req);
                put_queue(d, &info.queue)?;
                encode_config(d, &info.config)?;
                encode_stats(d, &info.stats)?;
                if info.config.dedup != Some(Dedup::default()) || info.stats.duplicates != 0 {
                    encode_dedup(d, info.config.dedup.as_ref())?;
                    d.put_u64_le(info.stats.duplicates);
                }
                Ok(())
            }
            ServerFrame::QueueList { req, queues } => {
                d.put_u64_le(*req);
                put_count32(d, queues.len(), MAX_LIST, "queue list")?;
                queues.iter().try_for_each(|q| put_queue(d, q))
            }
            ServerFrame::PublishConfirm { req, outcomes } => {
                d.put_u64_le(*req);
                put_count32(d, outcomes.len(), MAX_BATCH, "publish outcomes")?;
                outcomes.iter().try_for_each(|o| encode_outcome(d, o))
            }
            ServerFrame::PublishCredit { queue, n } => {
                put_queue(d, queue)?;
                d.put_u32_le(*n);
                Ok(())
            }
            ServerFrame::Subscribed { req, subscription }
            | ServerFrame::Unsubscribed { req, subscription } => {
                d.put_u64_le(*req);
                d.put_u64_le(*subscription);
                Ok(())
            }
            ServerFrame::Deliver { deliveries } => {
                put_count32(d, deliveries.len(), MAX_BATCH, "deliver batch")?;
                deliveries.iter().try_for_each(|x| encode_delivery(d, x))
            }
            ServerFrame::ExchangeOk {
                req,
                exchange,
                created,
            } => {
                d.put_u64_le(*req);
                put_name(d, exchange, "exchange name")?;
                d.put_u8(u8::from(*created));
                Ok(())
            }
            ServerFrame::ExchangeList { req, exchanges } => {
                d.put_u64_le(*req);
                put_count32(d, exchanges.len(), MAX_LIST, "exchange list")?;
                exchanges
                    .iter()
                    .try_for_each(|x| encode_exchange_info(d, x))
            }
            ServerFrame::BindingList { req, bindings } => {
                d.put_u64_le(*req);
                put_count32(d, bindings.len(), MAX_LIST, "binding list")?;
                bindings.iter().try_for_each(|b| encode_binding(d, b))
            }
            ServerFrame::RoutedConfirm { req, outcomes } => {
                d.put_u64_le(*req);
                put_count32(d, outcomes.len(), MAX_BATCH, "routed outcomes")?;
                outcomes
                    .iter()
                    .try_for_each(|o| encode_routed_outcome(d, o))
            }
            ServerFrame::Peeked { req, messages } => {
                d.put_u64_le(*req);
                put_count32(d, messages.len(), MAX_BATCH, "peeked messages")?;
                messages.iter().try_for_each(|x| encode_delivery(d, x))
            }
            ServerFrame::QueueClosed {
                queue,
                code,
                message,
            } => {
                put_queue(d, queue)?;
                d.put_u16_le(code.as_u16());
                put_bytes16(d, message.as_bytes(), "error message")
            }
        }
    }

    /// Decodes the next frame from the front of `buf`; same contract as [`ClientFrame::decode`].
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<ServerFrame>> {
        let Some((ty, mut r)) = take_frame(buf, max_frame)? else {
            return Ok(None);
        };
        let frame = Self::decode_body(ty, &mut r)?;
        r.finish(ty)?;
        Ok(Some(frame))
    }

    fn decode_body(ty: u8, r: &mut Reader) -> Result<ServerFrame> {
        Ok(match ty {
            ft::WELCOME => ServerFrame::Welcome(Welcome {
                version: r.u16("version")?,
                server_name: r.str16("server name")?,
                max_frame: r.u32("max_frame")?,
                heartbeat_ms: r.u32("heartbeat_ms")?,
            }),
            ft::SERVER_HEARTBEAT => ServerFrame::Heartbeat,
            ft::SERVER_CLOSE => {
                let (code, reason) = read_close(r)?;
                ServerFrame::Close { code, reason }
            }
            ft::ERROR => ServerFrame::Error {
                req: r.u64("request id")?,
                code: decode_error_code(r, "error code")?,
                message: r.str16("error message")?,
            },
            ft::QUEUE_OK => ServerFrame::QueueOk {
                req: r.u64("request id")?,
                queue: r.str8("queue name")?,
                created: r.bool("created")?,
                messages: r.u64("messages")?,
            },
            ft::QUEUE_STATS => {
                let req = r.u64("request id")?;
                let mut info = QueueInfo {
                    queue: r.str8("queue name")?,
                    config: decode_config(r)?,
                    stats: decode_stats(r)?,
                };
                if r.has_more() {
                    info.config.dedup = decode_dedup(r)?;
                    info.stats.duplicates = r.u64("duplicates")?;
                    if info.config.dedup == Some(Dedup::default()) && info.stats.duplicates == 0 {
                        // The encoder omits a trailer of defaults: only canonical frames decode.
                        return Err(ProtoError::InvalidValue {
                            what: "protocol-2 trailer of defaults",
                            value: 0,
                        });
                    }
                }
                ServerFrame::QueueStats {
                    req,
                    info: Box::new(info),
                }
            }
            ft::QUEUE_LIST => ServerFrame::QueueList {
                req: r.u64("request id")?,
                queues: r.vec32("queue list", MAX_LIST, 1, |r| r.str8("queue name"))?,
            },
            ft::PUBLISH_CONFIRM => ServerFrame::PublishConfirm {
                req: r.u64("request id")?,
                outcomes: r.vec32(
                    "publish outcomes",
                    MAX_BATCH,
                    OUTCOME_MIN_LEN,
                    decode_outcome,
                )?,
            },
            ft::PUBLISH_CREDIT => ServerFrame::PublishCredit {
                queue: r.str8("queue name")?,
                n: r.u32("credit")?,
            },
            ft::SUBSCRIBED => ServerFrame::Subscribed {
                req: r.u64("request id")?,
                subscription: r.u64("subscription")?,
            },
            ft::UNSUBSCRIBED => ServerFrame::Unsubscribed {
                req: r.u64("request id")?,
                subscription: r.u64("subscription")?,
            },
            ft::DELIVER => ServerFrame::Deliver {
                deliveries: r.vec32(
                    "deliver batch",
                    MAX_BATCH,
                    DELIVERY_MIN_LEN,
                    decode_delivery,
                )?,
            },
            ft::EXCHANGE_OK => ServerFrame::ExchangeOk {
                req: r.u64("request id")?,
                exchange: r.str8("exchange name")?,
                created: r.bool("created")?,
            },
            ft::EXCHANGE_LIST => ServerFrame::ExchangeList {
                req: r.u64("request id")?,
                exchanges: r.vec32(
                    "exchange list",
                    MAX_LIST,
                    EXCHANGE_INFO_MIN_LEN,
                    decode_exchange_info,
                )?,
            },
            ft::BINDING_LIST => ServerFrame::BindingList {
                req: r.u64("request id")?,
                bindings: r.vec32("binding list", MAX_LIST, BINDING_MIN_LEN, decode_binding)?,
            },
            ft::ROUTED_CONFIRM => ServerFrame::RoutedConfirm {
                req: r.u64("request id")?,
                outcomes: r.vec32(
                    "routed outcomes",
                    MAX_BATCH,
                    ROUTED_OUTCOME_MIN_LEN,
                    decode_routed_outcome,
                )?,
            },
            ft::PEEKED => ServerFrame::Peeked {
                req: r.u64("request id")?,
                messages: r.vec32(
                    "peeked messages",
                    MAX_BATCH,
                    DELIVERY_MIN_LEN,
                    decode_delivery,
                )?,
            },
            ft::QUEUE_CLOSED => ServerFrame::QueueClosed {
                queue: r.str8("queue name")?,
                code: decode_error_code(r, "error code")?,
                message: r.str16("error message")?,
            },
            other => return Err(ProtoError::UnknownFrameType(other)),
        })
    }
}
