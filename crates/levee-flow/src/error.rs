//! Errors of the levee-flow layer.
//!
//! A failed send always hands the message back (tokio habit): every [`SendError`] variant holds
//! it, and [`SendError::into_inner`] recovers it. A handed-back message was never counted as
//! sent; it counts as `rejected` in the stats (except [`SendError::Closed`]).

use std::fmt;

/// Why a send did not queue (or account) the message. The message is handed back.
#[derive(thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<T> {
    /// `try_send` under the `Block` policy found no room.
    #[error("channel is full")]
    Full(T),
    /// The `Reject` policy refused the message because the channel is full.
    #[error("channel is full and its policy is Reject")]
    Rejected(T),
    /// The message weighs more than `max_bytes`, so it could never fit.
    #[error("message is heavier than the channel's max_bytes")]
    TooLarge(T),
    /// The channel is closed (closed explicitly, or every receiver is gone).
    #[error("channel is closed")]
    Closed(T),
    /// `send_timeout` waited its whole timeout without room.
    #[error("timed out waiting for room in the channel")]
    Timeout(T),
}

/// The tokio name for the `try_send` error; the same type as [`SendError`].
pub type TrySendError<T> = SendError<T>;

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Full(t)
            | SendError::Rejected(t)
            | SendError::TooLarge(t)
            | SendError::Closed(t)
            | SendError::Timeout(t) => t,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            SendError::Full(_) => "Full",
            SendError::Rejected(_) => "Rejected",
            SendError::TooLarge(_) => "TooLarge",
            SendError::Closed(_) => "Closed",
            SendError::Timeout(_) => "Timeout",
        };
        write!(f, "SendError::{name}(..)")
    }
}

/// Why a receive returned no message.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// `try_recv`: nothing queued right now, but senders remain.
    #[error("channel is empty")]
    Empty,
    /// The channel is closed and fully drained.
    #[error("channel is closed and drained")]
    Closed,
    /// `recv_timeout`: nothing arrived within the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
}

/// Invalid configuration, reported when building a channel, limiter, breaker or controller.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit was set to zero (the field is named).
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Neither `max_messages` nor `max_bytes` was set and `unbounded()` was not asked for.
    #[error("no limit set: set max_messages and/or max_bytes, or ask for unbounded() explicitly")]
    NoLimit,
    /// `max_bytes` is set but no weigher says how much a message weighs.
    #[error("max_bytes needs a weigher (Config::weigh or Config::weigh_with)")]
    NoWeigher,
    /// A parameter is out of its range (the message says which and why).
    #[error("invalid parameter: {0}")]
    Invalid(&'static str),
}

/// The error of a call made through a [`crate::breaker::CircuitBreaker`].
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The breaker is open (or half-open with every probe slot taken): the call was not made.
    #[error("circuit breaker is open")]
    Open,
    /// The call was made and failed with this error (it counted as a failure).
    #[error("operation failed: {0}")]
    Inner(E),
}
