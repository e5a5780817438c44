//! Levee clustering: replicated queues on Raft (openraft), without a consensus algorithm of our
//! own. See docs/cluster.md for what works and what does not yet.
//!
//! Layers, from the inside out:
//! - [`replicated_log`]: Levee's own consensus interface ([`StateMachine`], [`ReplicatedLog`]);
//!   nothing outside `raft` sees an openraft type;
//! - `raft`: that interface on openraft — one [`raft::Group`] per replicated thing, the storage
//!   adapters and the TCP network between nodes;
//! - [`logstore`]: the Raft log on disk (fsynced before Raft acknowledges an entry), behind a
//!   narrow adapter so it can move into the shared write-ahead log;
//! - [`replicated_dir`]: a replicated queue's files — the broker's queue log runs unchanged on a
//!   storage backend whose fsync commits the writes through the queue's Raft group;
//! - [`admin`]: the metadata group's catalog of replicated queues and the admin requests;
//! - [`forward`]: publishes on any node to a replicated queue, carried to the node serving it;
//! - [`link`]: how connections between nodes are opened (TLS, the login) and admitted;
//! - [`metrics`]: the `levee_cluster_*` gauges a node adds to its broker's `/metrics`;
//! - [`node`]: a node — groups, the cluster listener, and serving each queue in the local broker
//!   while this node leads it.
//!
//! # Invariants
//! - A publish to a replicated queue is confirmed only after the records holding it are
//!   committed by a majority (each fsynced them in its Raft log) and applied on the leader.
//! - A node serves a replicated queue only while it leads the queue's group.

pub mod admin;
mod error;
pub mod forward;
pub mod link;
pub mod logstore;
pub mod metrics;
pub mod node;
pub mod raft;
mod raw;
pub mod replicated_dir;
pub mod replicated_log;

pub use error::ClusterError;
pub use link::Link;
pub use node::{ClusterConfig, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, Node, NodeAddrs};
pub use replicated_log::{ReplicatedLog, StateMachine};
