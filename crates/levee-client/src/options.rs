//! Options of the client, producers and consumers, with their defaults and memory bounds.
//!
//! Every limit here bounds memory: a producer holds at most `max_in_flight_bytes` of unconfirmed
//! payload (plus one open batch, itself within that window), a consumer at most its credit target
//! of received-but-unsettled deliveries.

use std::time::Duration;

use levee_flow::BreakerConfig;

use crate::error::ClientError;

/// Exponential backoff between reconnection attempts: `initial`, then x`multiplier` up to `max`,
/// each delay scaled by a random factor in [0.5, 1.0] ("equal jitter") so that many clients cut
/// off together do not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay (default 100 ms).
    pub initial: Duration,
    /// Largest delay (default 10 s).
    pub max: Duration,
    /// Growth factor per failed attempt (default 2.0, must be >= 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay after `delay`: x`multiplier`, capped at `max`.
    pub fn next(&self, delay: Duration) -> Duration {
        delay.mul_f64(self.multiplier.max(1.0)).min(self.max)
    }
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Name sent in `Hello`, shown in broker logs (default `"levee-client"`).
    pub name: String,
    /// Reconnect with this backoff when the connection drops (default `Some(Backoff::default())`);
    /// `None`: a lost connection ends the client (operations fail with `ConnectionLost`).
    pub reconnect: Option<Backoff>,
    /// Limit on connecting plus the handshake (default 10 s).
    pub connect_timeout: Duration,
    /// Limit on every request / reply, and on waiting for a connection while reconnecting
    /// (default 30 s).
    pub request_timeout: Duration,
    /// Largest frame accepted from the broker (default 64 MiB). Memory bound: one frame of this size
    /// is buffered while it arrives.
    pub max_incoming_frame: usize,
    /// Unconfirmed publishes across all producers of this client (default 16 384 messages), kept
    /// below the broker's per-connection limit (65 536 by default) so the broker never refuses a
    /// publish for that reason.
    pub max_in_flight_messages: u32,
    /// Unconfirmed payload bytes across all producers of this client (default 32 MiB, below the
    /// broker's 64 MiB). Memory bound of what the client holds for confirms.
    pub max_in_flight_bytes: u32,
    /// User and password sent in `Hello` (default none; needed when the broker has users).
    pub credentials: Option<levee_proto::Credentials>,
    /// Speak TLS (default `None`: plain TCP).
    pub tls: Option<crate::TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: "levee-client".into(),
            reconnect: Some(Backoff::default()),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_incoming_frame: 64 * 1024 * 1024,
            max_in_flight_messages: 16_384,
            max_in_flight_bytes: 32 * 1024 * 1024,
            credentials: None,
            tls: None,
        }
    }
}

impl ClientOptions {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.max_in_flight_messages == 0 || self.max_in_flight_bytes == 0 {
            return Err(ClientError::InvalidOption(
                "max_in_flight_messages and max_in_flight_bytes must be > 0".into(),
            ));
        }
        if let Some(b) = self.reconnect
            && (b.multiplier.is_nan() || b.multiplier < 1.0 || b.initial.is_zero())
        {
            return Err(ClientError::InvalidOption(
                "backoff needs initial > 0 and multiplier >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// Producer options.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Most messages in one `Publish` frame (default 256, at most 4096 = `levee_proto::MAX_BATCH`).
    pub batch_size: usize,
    /// Most encoded bytes in one `Publish` frame (default 1 MiB; also capped by the broker's
    /// `max_frame`).
    pub batch_bytes: usize,
    /// How long an open batch waits for more messages before it is sent (default 1 ms); with
    /// `adaptive`, at most that long. Zero sends every message at once in its own frame.
    pub linger: Duration,
    /// Adaptive batching (default off): a message opening a batch is sent at once when nothing
    /// this producer sent is unconfirmed, and an open batch as soon as everything sent before it
    /// is confirmed (Nagle's rule, the confirms as the clock), so an idle producer never waits for
    /// `linger` and batches grow only under load.
    pub adaptive: bool,
    /// This producer's unconfirmed messages (default 4096).
    pub max_in_flight_messages: u32,
    /// This producer's unconfirmed payload bytes (default 8 MiB).
    pub max_in_flight_bytes: u32,
    /// Wrap publishes in a circuit breaker (default `None`): outcomes `Rejected` / `Throttled` and
    /// errors count as failures; while it is open, publishes fail at once with
    /// [`ClientError::CircuitOpen`].
    pub breaker: Option<BreakerConfig>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            batch_size: 256,
            batch_bytes: 1024 * 1024,
            linger: Duration::from_millis(1),
            adaptive: false,
            max_in_flight_messages: 4096,
            max_in_flight_bytes: 8 * 1024 * 1024,
            breaker: None,
        }
    }
}

impl ProducerOptions {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.batch_size == 0 || self.batch_size > levee_proto::MAX_BATCH {
            return Err(ClientError::InvalidOption(format!(
                "batch_size must be in 1..={}",
                levee_proto::MAX_BATCH
            )));
        }
        if self.batch_bytes == 0
            || self.max_in_flight_messages == 0
            || self.max_in_flight_bytes == 0
        {
            return Err(ClientError::InvalidOption(
                "batch_bytes and the in-flight window must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// How a consumer asks the broker for messages (its `request(n)` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// Keep about `n` messages outstanding (granted, buffered or being processed); more credit is
    /// requested once at least half of it has been used.
    Fixed(u32),
    /// Size the outstanding count from the measured round trip and processing time:
    /// `ceil(rtt / processing_time) + 1`, smoothed, clamped to `[min, max]`. See
    /// [`crate::credit`] for the algorithm.
    Adaptive {
        /// Lower bound (>= 1).
        min: u32,
        /// Upper bound (>= min).
        max: u32,
    },
}

/// Consumer options.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Credit policy (default `Adaptive { min: 1, max: 1024 }`).
    pub credit: Credit,
    /// The broker settles each delivery as it sends it (at-most-once; default false).
    pub auto_ack: bool,
    /// Settlements (ack / nack / reject) are sent at the latest this long after the first one is
    /// made (default 1 ms), together with other settlements in as few frames as possible.
    pub settle_linger: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            credit: Credit::Adaptive { min: 1, max: 1024 },
            auto_ack: false,
            settle_linger: Duration::from_millis(1),
        }
    }
}

impl ConsumerOptions {
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        match self.credit {
            Credit::Fixed(0) => Err(ClientError::InvalidOption("Credit::Fixed(0)".into())),
            Credit::Adaptive { min, max } if min == 0 || max < min => Err(
                ClientError::InvalidOption("Credit::Adaptive needs 1 <= min <= max".into()),
            ),
            _ => Ok(()),
        }
    }
}
