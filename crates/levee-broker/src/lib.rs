//! The Levee broker: queues with hard limits and declared overflow policies, consumer credit,
//! producer publish credit, acknowledgements, redelivery, dead letters, TTL and durability.
//!
//! Layers, from the inside out:
//! - [`queue`]: the per-queue state machine (pure: time is an argument, effects are returned),
//!   built on levee-flow's policy core;
//! - `actor`: one task per queue carrying out the state machine's effects against its
//!   levee-store log;
//! - `conn`: one task pair per client connection speaking the levee-proto wire protocol;
//! - [`Broker`]: the registry of queues, the durable catalog, recovery, the accept loop;
//!   `data_dir`: the lock file and queue directory names; `limits`: the broker-wide bounds on
//!   connections and on bytes of frames still arriving.

mod actor;
mod broker;
mod conn;
mod data_dir;
mod error;
pub mod http;
mod limits;
pub mod queue;
mod rate;

pub use broker::{Broker, BrokerConfig, MAX_MAX_FRAME, MIN_MAX_FRAME};
pub use error::BrokerError;
pub use http::{HttpError, router, serve_http};
