//! The Levee broker: queues with hard limits and declared overflow policies, consumer credit,
//! producer publish credit, acknowledgements, redelivery, dead letters, TTL and durability.
//!
//! Layers, from the inside out:
//! - [`queue`]: the per-queue state machine (pure: time is an argument, effects are returned),
//!   built on levee-flow's policy core, and [`queue::core::QueueCore`], which adds the queue's
//!   log and confirm ledger: every decision of a queue, with no async and no clock;
//! - `storage`: every mapping between broker and levee-store types, and recovery;
//! - `actor`: one task per queue, a thin shell around its core;
//! - `net`: the network front ends: `net::listener` (the accept loop), `net::conn` (one task
//!   pair per client connection speaking the levee-proto wire protocol) and `net::limits` (the
//!   broker-wide bounds on connections and on bytes of frames still arriving);
//! - [`security`]: users, permissions, logins, TLS (every listener goes through it);
//! - `amqp`: the AMQP 0-9-1 front end (its own listener, an I/O-free connection state machine
//!   and a thin tokio shell), plugged into the same queue actors and outboxes as `net::conn`;
//! - `outbox`: each connection's bounded outbound queue;
//! - `routing`: exchanges, bindings, the routing decision and the confirm aggregation of a
//!   publish routed to several queues (shared by every front end);
//! - [`ops`]: server-side history, alert rules (I/O-free), latency histograms and the monitor
//!   task that samples every queue once a second;
//! - [`Broker`]: the registry of queues, declare/delete, recovery; `catalog`: the catalog file
//!   codec (`queue.meta`) and its reads and writes; `data_dir`: the lock file and queue directory
//!   names.

mod actor;
mod amqp;
mod broker;
mod catalog;
mod data_dir;
pub mod definitions;
mod error;
pub mod http;
mod net;
pub mod ops;
mod outbox;
pub mod queue;
mod rate;
pub mod redrive;
pub mod remote;
mod routing;
pub mod security;
mod storage;

pub use amqp::{AmqpConfig, AmqpListener};
pub use broker::{
    Broker, BrokerConfig, Deletion, MAX_MAX_FRAME, MIN_MAX_FRAME, MetricsSource, Replication,
};
pub use error::BrokerError;
pub use http::{HttpError, router, serve_http};
pub use routing::{ConfirmCallback, RoutedConfirm, RoutedPublisher, combine};
