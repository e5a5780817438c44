//! Levee's wire protocol: frame types, queue configuration, message values and a pure (no I/O, no
//! async runtime) streaming encoder / decoder over [`bytes::BytesMut`].
//!
//! A connection carries length-prefixed frames: `u32 LE length | u8 frame type | body`. The client
//! sends [`ClientFrame`]s, the server [`ServerFrame`]s; the first exchange is
//! [`ClientFrame::Hello`] -> [`ServerFrame::Welcome`] (or `Error` + `Close`). The byte-level format,
//! error code table, limits and invariants are documented in `docs/design.md`
//! (section "levee-proto (wire format)").
//!
//! Invariants this crate guarantees:
//! - decoding never panics on any input (proptest suite + cargo-fuzz target `decode`);
//! - a frame whose declared length exceeds `max_frame` is refused from its 4-byte prefix, before any
//!   allocation; every inner length and count is checked against the bytes actually in the frame;
//! - whatever encodes successfully decodes to an equal value (encoders enforce the same limits);
//! - payloads, keys and header values are zero-copy slices of the received frame.
//!
//! ```
//! use bytes::BytesMut;
//! use levee_proto::{ClientFrame, DEFAULT_MAX_FRAME, Message};
//!
//! let frame = ClientFrame::Publish {
//!     req: 7,
//!     queue: "orders".into(),
//!     messages: vec![Message::new("hello").with_priority(3)],
//! };
//! let mut buf = BytesMut::new();
//! frame.encode(&mut buf).unwrap();
//! assert_eq!(ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(), Some(frame));
//! assert!(buf.is_empty());
//! ```

mod config;
mod error;
mod exchange;
mod frame;
mod message;
mod wire;

pub use config::{
    ConfigDifference, Dedup, Durability, Fsync, MAX_ACK_TIMEOUT_MS, MAX_DEDUP_IDS,
    MAX_DEDUP_WINDOW_MS, MAX_FSYNC_INTERVAL_MS, MAX_MESSAGE_TTL_MS, MAX_QUEUE_NAME_LEN,
    MAX_REPLICAS, Order, Overflow, QueueConfig, RateLimit, validate_queue_name,
};
pub use error::{ErrorCode, ProtoError};
pub use exchange::{
    Binding, DEFAULT_EXCHANGE, ExchangeConfig, ExchangeInfo, ExchangeKind, MAX_EXCHANGE_NAME_LEN,
    MAX_ROUTING_KEY_LEN, PREDECLARED_EXCHANGES, RoutedOutcome, describe_arguments,
    validate_exchange_name, validate_routing_key,
};
pub use frame::{
    ClientFrame, Credentials, FrameHeader, Hello, LEN_PREFIX, MAGIC, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, QueueInfo, ServerFrame, Welcome, frame_type, negotiate_version,
};
pub use message::{ConsumerStats, Delivery, DropReason, Message, PublishOutcome, QueueStats};

/// Default maximum frame size (value of the length field): 16 MiB. A connection buffers at most
/// this plus the 4-byte prefix for one incoming frame.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Maximum frame size a server should accept before the handshake completes (64 KiB): enough for any
/// `Hello`, small enough that unauthenticated peers cannot make it buffer much.
pub const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

/// Most messages in one `Publish` or `Deliver`, and outcomes in one `PublishConfirm` (4096).
/// With [`MAX_HEADERS`] this bounds the in-memory overhead of a decoded batch beyond its wire bytes.
pub const MAX_BATCH: usize = 4096;

/// Most delivery tags in one `Ack`, `Nack` or `Reject` (65 536, i.e. 512 KiB of tags).
pub const MAX_TAGS: usize = 65_536;

/// Most headers on one message (64).
pub const MAX_HEADERS: usize = 64;

/// Most entries in a `QueueList` and consumers in a `QueueStats` (65 536).
pub const MAX_LIST: usize = 65_536;
