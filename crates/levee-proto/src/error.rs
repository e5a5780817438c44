//! Errors of the protocol layer and the stable wire error codes.
//!
//! Owns [`ProtoError`] (everything that can go wrong while encoding, decoding or validating protocol
//! values) and [`ErrorCode`] (the small, stable set of `u16` codes carried by `Error`, `Close` and
//! `Rejected` on the wire). Invariant: an [`ErrorCode`]'s numeric value never changes once released;
//! new codes may only be added together with a new protocol version.

use std::fmt;

/// A stable error code carried on the wire (`u16`, little-endian).
///
/// The numeric values are part of the protocol and documented in `docs/design.md`; they never change.
/// A decoder that meets a value not listed here reports [`ProtoError::InvalidValue`] (new codes only
/// appear with a new protocol version, so a peer never sends a code the negotiated version lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame could not be decoded (malformed body, unknown frame type or enum value). Fatal.
    BadFrame = 1,
    /// A frame's declared length exceeds the negotiated maximum frame size. Fatal.
    FrameTooLarge = 2,
    /// Client and server share no protocol version, or the handshake magic is wrong. Fatal.
    UnsupportedVersion = 3,
    /// A well-formed frame arrived when it is not allowed (before `Hello`, a second `Hello`, ...).
    ProtocolViolation = 4,
    /// The credentials in `Hello` were rejected. Fatal.
    AuthFailed = 5,
    /// The authenticated user may not perform this operation.
    AccessDenied = 6,
    /// The named queue does not exist.
    UnknownQueue = 16,
    /// `Declare` named an existing queue with a different config; the message says what differs.
    QueueConfigMismatch = 17,
    /// A queue name is not 1..=255 bytes of `[A-Za-z0-9._@-]`.
    InvalidName = 18,
    /// A queue config field is out of range; the message names the field.
    InvalidConfig = 19,
    /// A subscription id that this connection does not own.
    UnknownSubscription = 20,
    /// An ack / nack / reject named a delivery tag that is not outstanding.
    UnknownDeliveryTag = 21,
    /// The named exchange does not exist.
    UnknownExchange = 22,
    /// `DeclareExchange` named an existing exchange with a different config; the message says
    /// what differs.
    ExchangeConfigMismatch = 23,
    /// The exchange is in use: `DeleteExchange` with `if_unused` while it has bindings.
    ExchangeInUse = 24,
    /// A publish to a `block` queue exceeded the publish credit granted for that queue.
    NoPublishCredit = 32,
    /// A message is larger than the queue or server accepts.
    MessageTooLarge = 33,
    /// The queue's publish rate limit refused the message.
    Throttled = 34,
    /// The queue is full and its overflow policy is `reject`.
    QueueFull = 35,
    /// The storage layer has no space left.
    StorageFull = 36,
    /// The server is shutting down.
    ShuttingDown = 48,
    /// The queue is replicated and this node does not serve it now (it is not the leader of the
    /// queue's Raft group); the reason names the node that does, when known. Retry there.
    NotLeader = 49,
    /// An unexpected server-side failure.
    Internal = 255,
}

impl ErrorCode {
    /// Every code, in ascending wire value.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ProtocolViolation,
        ErrorCode::AuthFailed,
        ErrorCode::AccessDenied,
        ErrorCode::UnknownQueue,
        ErrorCode::QueueConfigMismatch,
        ErrorCode::InvalidName,
        ErrorCode::InvalidConfig,
        ErrorCode::UnknownSubscription,
        ErrorCode::UnknownDeliveryTag,
        ErrorCode::UnknownExchange,
        ErrorCode::ExchangeConfigMismatch,
        ErrorCode::ExchangeInUse,
        ErrorCode::NoPublishCredit,
        ErrorCode::MessageTooLarge,
        ErrorCode::Throttled,
        ErrorCode::QueueFull,
        ErrorCode::StorageFull,
        ErrorCode::ShuttingDown,
        ErrorCode::NotLeader,
        ErrorCode::Internal,
    ];

    /// The wire value.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a wire value, `None` if the value is not a known code.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_u16() == value)
    }

    /// A short stable name, e.g. `"frame-too-large"`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad-frame",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::ProtocolViolation => "protocol-violation",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::AccessDenied => "forbidden",
            ErrorCode::UnknownQueue => "unknown-queue",
            ErrorCode::QueueConfigMismatch => "queue-config-mismatch",
            ErrorCode::InvalidName => "invalid-name",
            ErrorCode::InvalidConfig => "invalid-config",
            ErrorCode::UnknownSubscription => "unknown-subscription",
            ErrorCode::UnknownDeliveryTag => "unknown-delivery-tag",
            ErrorCode::UnknownExchange => "unknown-exchange",
            ErrorCode::ExchangeConfigMismatch => "exchange-config-mismatch",
            ErrorCode::ExchangeInUse => "exchange-in-use",
            ErrorCode::NoPublishCredit => "no-publish-credit",
            ErrorCode::MessageTooLarge => "message-too-large",
            ErrorCode::Throttled => "throttled",
            ErrorCode::QueueFull => "queue-full",
            ErrorCode::StorageFull => "storage-full",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::NotLeader => "not-leader",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the server closes the connection after sending this code.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion
                | ErrorCode::AuthFailed
                | ErrorCode::ShuttingDown
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Everything that can go wrong while encoding, decoding or validating protocol values.
///
/// Decode errors other than [`ProtoError::FrameTooLarge`] leave the offending frame consumed from the
/// buffer; a server answers any decode error with an `Error` frame carrying [`ProtoError::code`] and
/// then closes the connection, because the stream can no longer be trusted. Validation errors
/// ([`ProtoError::InvalidName`], [`ProtoError::InvalidConfig`]) concern a single request and are
/// answered with an `Error` echoing that request's id, without closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A frame's declared length exceeds the maximum frame size. Detected from the 4-byte length prefix
    /// alone, before anything is allocated; nothing is consumed from the buffer. When encoding: the
    /// frame would exceed the given limit (or `u32::MAX`) and nothing was written.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// Declared (or would-be) length of type byte + body.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// A length prefix of 0: a frame must hold at least its type byte. The 4 prefix bytes are consumed.
    #[error("empty frame: a length of 0 leaves no room for the frame type")]
    EmptyFrame,
    /// The frame type byte is not a frame of this direction.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// A field, or the items a count announces, needs more bytes than remain in the frame.
    #[error("truncated {what}: needs {needed} bytes but only {remaining} remain in the frame")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the frame.
        remaining: u64,
    },
    /// The body was fully decoded but bytes remain in the frame.
    #[error("{extra} unexpected trailing bytes in frame type 0x{frame_type:02x}")]
    TrailingBytes {
        /// The frame type byte.
        frame_type: u8,
        /// Number of unread bytes.
        extra: u64,
    },
    /// An enum tag, flag set, boolean or error code has a value this protocol version does not define.
    #[error("invalid value {value} for {what}")]
    InvalidValue {
        /// The field being read.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A string field is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A count or length exceeds a protocol limit (batch size, header count, length-prefix width).
    #[error("{what}: {len} exceeds the limit of {max}")]
    LimitExceeded {
        /// The field or collection.
        what: &'static str,
        /// The value found or requested.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The `Hello` frame does not start with the magic bytes `LEVE`.
    #[error("bad handshake magic {0:02x?}, expected \"LEVE\"")]
    BadMagic([u8; 4]),
    /// Version negotiation found no protocol version supported by both sides.
    #[error(
        "no common protocol version: client supports {client_min}..={client_max}, \
         server supports {server_min}..={server_max}"
    )]
    UnsupportedVersion {
        /// Lowest version the client speaks.
        client_min: u16,
        /// Highest version the client speaks.
        client_max: u16,
        /// Lowest version the server speaks.
        server_min: u16,
        /// Highest version the server speaks.
        server_max: u16,
    },
    /// A queue name is not 1..=255 bytes of `[A-Za-z0-9._@-]`.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name (lossy if it was not UTF-8).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue config field is out of range or inconsistent.
    #[error("invalid queue config: {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `"max_messages"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ProtoError {
    /// The wire code a server sends back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtoError::EmptyFrame
            | ProtoError::UnknownFrameType(_)
            | ProtoError::Truncated { .. }
            | ProtoError::TrailingBytes { .. }
            | ProtoError::InvalidValue { .. }
            | ProtoError::InvalidUtf8 { .. }
            | ProtoError::LimitExceeded { .. } => ErrorCode::BadFrame,
            ProtoError::BadMagic(_) | ProtoError::UnsupportedVersion { .. } => {
                ErrorCode::UnsupportedVersion
            }
            ProtoError::InvalidName { .. } => ErrorCode::InvalidName,
            ProtoError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        }
    }

    /// Whether the connection must be closed after reporting this error (true for every decode and
    /// handshake error, false for per-request validation errors).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtoError::InvalidName { .. } | ProtoError::InvalidConfig { .. }
        )
    }
}
