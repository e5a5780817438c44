//! The cluster layer's errors.

/// What can go wrong in the cluster layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// This node is not the leader of the group (the leader's id, if known).
    #[error("not the leader of {group} (leader: {leader:?})")]
    NotLeader {
        /// The Raft group.
        group: String,
        /// The leader's node id, if known.
        leader: Option<u64>,
    },
    /// The group cannot commit now (no quorum, shutting down, a proposal that timed out).
    #[error("{group}: cannot commit: {reason}")]
    NoQuorum {
        /// The Raft group.
        group: String,
        /// Why.
        reason: String,
    },
    /// A local disk operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that do not decode (a peer of another version, a corrupt file).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A peer could not be reached or answered badly.
    #[error("peer {addr}: {reason}")]
    Peer {
        /// Its cluster address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A bad `[cluster]` configuration or request.
    #[error("{0}")]
    Config(String),
    /// The broker refused.
    #[error(transparent)]
    Broker(#[from] levee_broker::BrokerError),
    /// openraft reported a fatal error or failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ClusterError {
        ClusterError::Io {
            what: what.into(),
            source,
        }
    }
}
