//! Levee's own consensus interface: what a replicated thing (a queue's files, the catalog) needs
//! from a replicated log, with no openraft type in it. `raft` implements it on openraft; the
//! rest of the crate (and the broker, which only ever sees a storage backend) uses these traits.
//!
//! # Invariants
//! - [`StateMachine::apply`] sees every committed command exactly once per state, in log order,
//!   on every member (a restart rebuilds the state from the last snapshot and re-applies).
//! - [`ReplicatedLog::propose`] resolves `Ok` only once the command is committed (on a majority,
//!   each of which fsynced it) and applied here; `Err` means it may or may not commit later.

use std::future::Future;
use std::pin::Pin;

use crate::error::ClusterError;

/// A deterministic state machine fed by a replicated log.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command; returns its answer (given to the proposer).
    fn apply(&self, command: &[u8]) -> Vec<u8>;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, ClusterError>;
    /// Replaces the whole state with a snapshot's (`None`: the empty state).
    fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), ClusterError>;
}

/// A boxed future of a proposal.
pub type Proposal<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, ClusterError>> + Send + 'a>>;

/// A replicated log with a leader.
pub trait ReplicatedLog: Send + Sync + 'static {
    /// Appends a command through the leader; see the module invariants.
    fn propose(&self, command: Vec<u8>) -> Proposal<'_>;
    /// The current leader's node id, as known here.
    fn leader(&self) -> Option<u64>;
    /// This node's id.
    fn id(&self) -> u64;
    /// Whether this node is the leader now.
    fn is_leader(&self) -> bool {
        self.leader() == Some(self.id())
    }
}
