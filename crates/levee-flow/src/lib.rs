//! levee-flow: bounded in-process channels with declared overflow policies, exact drop
//! accounting, batching, rate limiting, a circuit breaker and adaptive sizing, plus the pure
//! policy core ([`policy`]) that the Levee broker reuses for its queues.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use levee_flow::{channel, Config, Overflow};
//! let (tx, rx) = channel(Config::<u32>::bounded(2).overflow(Overflow::DropOldest)).unwrap();
//! for i in 0..5 { tx.send(i).await.unwrap(); }
//! drop(tx);
//! assert_eq!(rx.recv().await, Some(3));
//! assert_eq!(rx.recv().await, Some(4));
//! assert_eq!(rx.recv().await, None);
//! let s = rx.stats();
//! assert_eq!((s.sent, s.received, s.dropped), (5, 2, 3));
//! # }
//! ```
//!
//! Modules: [`policy`] (pure overflow decisions), [`channel`](mod@channel) (the async MPMC
//! channel), [`key`] (allocation-free conflation keys), [`stats`] (accounting and rates),
//! [`adaptive`] (capacity controller), [`rate`] (pacing with `governor`, concurrency limit),
//! [`breaker`] (circuit breaker), [`error`].

pub mod adaptive;
pub mod breaker;
pub mod channel;
pub mod error;
pub mod key;
pub mod policy;
pub mod rate;
pub mod stats;

pub use adaptive::{AdaptiveConfig, AdaptiveSizer, Resize, spawn_adaptive};
pub use breaker::{BreakerConfig, BreakerState, BreakerStats, CircuitBreaker};
pub use channel::{Config, Monitor, Receiver, Sender, Sent, Weigh, bounded, channel, unbounded};
pub use error::{BreakerError, ConfigError, RecvError, SendError, TrySendError};
pub use key::Key;
pub use policy::{
    DropReason, Evicted, Evictions, Limits, Meta, Offer, Order, Overflow, PolicyQueue,
};
pub use rate::{ConcurrencyLimit, Paced, RateConfig};
pub use stats::{DropCounts, RateWindow, Stats};
