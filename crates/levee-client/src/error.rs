//! The client's error types: [`ClientError`] for every fallible operation and
//! [`TryPublishError`] for [`crate::Producer::try_publish`], which hands the message back.
//!
//! Invariant: an error never hides whether a message may have reached the broker. `Rejected`,
//! `Server` and `CircuitOpen` mean it was not stored; `ConnectionLost` and `Timeout` on a publish
//! mean "unknown" (at-least-once: the caller may publish it again and may then store it twice).

use levee_proto::{ErrorCode, Message, ProtoError};

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket operation failed (connect, read, write). The text is the `std::io::Error`.
    #[error("i/o error: {0}")]
    Io(String),
    /// The broker sent bytes that do not decode, or a message could not be encoded.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtoError),
    /// The broker answered a request (or the handshake) with an `Error` frame or closed the
    /// connection with this code.
    #[error("server error {code}: {message}")]
    Server {
        /// The wire error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The connection dropped while this operation was in flight, or the delivery being settled
    /// belongs to a connection that no longer exists (the broker has already requeued it). A
    /// publish that fails this way may or may not have been stored.
    #[error("connection lost")]
    ConnectionLost,
    /// The client (or this consumer / producer) was closed by the application.
    #[error("client closed")]
    Closed,
    /// The broker refused a published message (outcome `Rejected`): it was not stored.
    #[error("message rejected ({code}): {reason}")]
    Rejected {
        /// Why, as a wire code (e.g. `queue-full`, `message-too-large`).
        code: ErrorCode,
        /// The broker's explanation.
        reason: String,
    },
    /// The producer's circuit breaker is open: the message was not sent.
    #[error("circuit breaker open: publishing paused after repeated failures")]
    CircuitOpen,
    /// No reply within the configured request timeout (or no connection within it while
    /// reconnecting).
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A message is larger than the largest frame the broker accepts.
    #[error("message of {size} bytes does not fit in a frame of at most {max} bytes")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// Largest message that fits in one `Publish` frame on this connection.
        max: usize,
    },
    /// `nack` or `reject` on a delivery received with `auto_ack`: the broker already settled it.
    #[error("the delivery was auto-acked; it cannot be nacked or rejected")]
    AutoAcked,
    /// The server at the address answered the handshake in another protocol: `protocol` is
    /// `"HTTP"` (likely Levee's HTTP API port instead of its wire port), `"TLS"` or `"AMQP"`.
    #[error("{}", wrong_protocol_hint(protocol))]
    WrongProtocol {
        /// The protocol the answer looks like.
        protocol: &'static str,
    },
    /// An option is out of range; the text says which.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

fn wrong_protocol_hint(protocol: &str) -> String {
    let what = match protocol {
        "HTTP" => "this looks like Levee's HTTP port (API, metrics, dashboard)",
        "AMQP" => "this looks like an AMQP port (Levee's AMQP listener or RabbitMQ)",
        _ => "this port expects TLS",
    };
    format!(
        "the server answered in {protocol}, not the Levee wire protocol: {what}; the wire port \
         is the one `levee serve` prints as `wire listening on` (5680 by default)"
    )
}

/// The protocol that the first 5 bytes of a handshake answer belong to, if not Levee's: an
/// HTTP status line, a TLS record (handshake or alert), AMQP's protocol header. A Levee answer
/// is a length prefix then the frame type of `Welcome`, `Error` or `Close`, and is never taken
/// for another protocol.
pub(crate) fn foreign_protocol(first: &[u8]) -> Option<&'static str> {
    use levee_proto::frame_type::{ERROR, SERVER_CLOSE, WELCOME};
    match first {
        [_, _, _, _, WELCOME | ERROR | SERVER_CLOSE, ..] => None,
        [b'H', b'T', b'T', b'P', _, ..] => Some("HTTP"),
        [b'A', b'M', b'Q', b'P', _, ..] => Some("AMQP"),
        [0x15 | 0x16, 0x03, 0x00..=0x04, _, _, ..] => Some("TLS"),
        _ => None,
    }
}

impl ClientError {
    /// For a `not-leader` error (the queue is replicated and another cluster node serves it):
    /// the wire address of the serving node, when the broker named one. The broker's text for
    /// this code ends with `: try HOST:PORT`; that suffix is part of the contract of
    /// `not-leader` (docs/cluster.md, "Clients").
    pub fn serving_node(&self) -> Option<&str> {
        let (_, at) = self.not_leader_text()?.rsplit_once(": try ")?;
        let at = at.trim();
        (!at.is_empty() && !at.contains(char::is_whitespace)).then_some(at)
    }

    /// The broker's text of a `not-leader` error (as a request's error or a publish outcome).
    pub fn not_leader_text(&self) -> Option<&str> {
        match self {
            ClientError::Server {
                code: ErrorCode::NotLeader,
                message,
            } => Some(message),
            ClientError::Rejected {
                code: ErrorCode::NotLeader,
                reason,
            } => Some(reason),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

/// The error of [`crate::Producer::try_publish`]: the message is handed back (boxed, so the
/// `Result` stays small).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryPublishError {
    /// No room right now: the in-flight window is full or (on a `block` queue) there is no
    /// publish credit. Retry later or use [`crate::Producer::publish`], which waits.
    #[error("no publish credit or in-flight window room")]
    Full(Box<Message>),
    /// The publish cannot succeed now whatever the wait (circuit open, closed, disconnected,
    /// message too large); the error says why.
    #[error("publish failed: {1}")]
    Failed(Box<Message>, ClientError),
}

impl TryPublishError {
    /// The message that was not published.
    pub fn into_inner(self) -> Message {
        match self {
            TryPublishError::Full(m) | TryPublishError::Failed(m, _) => *m,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_leader_error_names_the_serving_node() {
        let err = |message: &str| ClientError::Server {
            code: ErrorCode::NotLeader,
            message: message.into(),
        };
        let e = err("queue jobs is replicated and served by another node: try 127.0.0.1:5783");
        assert_eq!(e.serving_node(), Some("127.0.0.1:5783"));
        assert_eq!(
            err("queue jobs is replicated and served by another node").serving_node(),
            None
        );
        let other = ClientError::Server {
            code: ErrorCode::UnknownQueue,
            message: "unknown queue jobs: try 1.2.3.4:5".into(),
        };
        assert_eq!(other.serving_node(), None);
        let rejected = ClientError::Rejected {
            code: ErrorCode::NotLeader,
            reason: "queue q is replicated and served by another node: try [::1]:5680".into(),
        };
        assert_eq!(rejected.serving_node(), Some("[::1]:5680"));
    }

    #[test]
    fn answers_of_other_protocols_are_recognised() {
        assert_eq!(
            foreign_protocol(b"HTTP/1.1 400 Bad Request\r\n"),
            Some("HTTP")
        );
        assert_eq!(foreign_protocol(b"AMQP\x00\x00\x09\x01"), Some("AMQP"));
        assert_eq!(
            foreign_protocol(&[0x15, 0x03, 0x03, 0x00, 0x02]),
            Some("TLS")
        );
        assert_eq!(
            foreign_protocol(&[0x16, 0x03, 0x01, 0x00, 0x4a]),
            Some("TLS")
        );
        // Levee answers, whatever their length prefix, are never taken for another protocol.
        assert_eq!(foreign_protocol(&[0x20, 0x00, 0x00, 0x00, 0x81]), None);
        assert_eq!(foreign_protocol(&[0x16, 0x03, 0x00, 0x00, 0x84]), None);
        assert_eq!(foreign_protocol(b"HTTP"), None, "needs 5 bytes");
    }
}
