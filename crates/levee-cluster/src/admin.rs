//! The cluster's admin requests (sent to a node's cluster listener, by `levee cluster ...`) and
//! the metadata group's state machine: the catalog of replicated queues.
//!
//! # Invariants
//! - The catalog changes only by committed commands of the metadata group, so every node
//!   serves the same set of replicated queues; each node starts a queue's Raft group when it
//!   applies (or, at start, restores) the queue's entry.

use std::collections::BTreeMap;

use levee_proto::{ClientFrame, QueueConfig};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::ClusterError;
use crate::replicated_log::StateMachine;

/// A request to a node's cluster listener.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AdminRequest {
    /// This node's view of the cluster.
    Status,
    /// Create a replicated queue (through the metadata leader).
    Declare {
        /// Queue name.
        name: String,
        /// Its config, see [`encode_config`].
        config: Vec<u8>,
    },
}

/// The answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AdminReply {
    /// See [`Status`].
    Status(Status),
    /// The queue was created (`true`) or existed.
    Declared(bool),
    /// The request failed.
    Error(String),
}

/// One node's view of the cluster (`levee cluster status --json` merges every node's).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The answering node.
    pub node: u64,
    /// Every configured member.
    pub members: Vec<Member>,
    /// The metadata group's leader, as known here.
    pub meta_leader: Option<u64>,
    /// Every replicated queue.
    pub queues: Vec<QueueStatus>,
}

/// A configured member.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Cluster (Raft) address.
    pub cluster: String,
    /// Wire (client) address.
    pub wire: String,
}

/// One replicated queue as seen from the answering node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Its leader, as known here.
    pub leader: Option<u64>,
    /// Whether this node serves it now (it leads it and has loaded it).
    pub served_here: bool,
    /// Raft term here.
    pub term: u64,
    /// Last applied log index here.
    pub applied: u64,
    /// Entries in the local Raft log (bounded by snapshots).
    pub log_entries: usize,
    /// On the leader: each replica's replication lag in entries (`None`: unknown).
    pub lag: BTreeMap<u64, Option<u64>>,
}

/// A command of the metadata group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum CatalogCmd {
    Declare { name: String, config: Vec<u8> },
}

/// A queue config as bytes: levee-proto's own encoding of it (inside a `Declare` frame), so the
/// catalog never has a second definition of the config's format.
pub fn encode_config(name: &str, config: &QueueConfig) -> Result<Vec<u8>, ClusterError> {
    let mut buf = bytes::BytesMut::new();
    ClientFrame::Declare {
        req: 0,
        queue: name.to_string(),
        config: config.clone(),
    }
    .encode(&mut buf)
    .map_err(|e| ClusterError::Config(e.to_string()))?;
    Ok(buf.to_vec())
}

/// See [`encode_config`].
pub fn decode_config(bytes: &[u8]) -> Result<QueueConfig, ClusterError> {
    let mut buf = bytes::BytesMut::from(bytes);
    match ClientFrame::decode(&mut buf, levee_proto::DEFAULT_MAX_FRAME) {
        Ok(Some(ClientFrame::Declare { config, .. })) => Ok(config),
        Ok(_) => Err(ClusterError::Decode {
            what: "queue config",
            reason: "not a Declare frame".into(),
        }),
        Err(e) => Err(ClusterError::Decode {
            what: "queue config",
            reason: e.to_string(),
        }),
    }
}

/// A queue added to the catalog.
pub(crate) type Added = (String, Vec<u8>);

/// The catalog of replicated queues (the metadata group's state): name → encoded config.
pub(crate) struct Catalog {
    queues: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Queues added (for the node to start their groups).
    added: mpsc::UnboundedSender<Added>,
}

impl Catalog {
    pub(crate) fn new(added: mpsc::UnboundedSender<Added>) -> Catalog {
        Catalog {
            queues: Mutex::new(BTreeMap::new()),
            added,
        }
    }

    /// The encoded config of `name`, if the catalog (as applied here) has it.
    pub(crate) fn config_of(&self, name: &str) -> Option<Vec<u8>> {
        self.queues.lock().get(name).cloned()
    }
}

impl StateMachine for Catalog {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let created = match bincode::deserialize::<CatalogCmd>(command) {
            Ok(CatalogCmd::Declare { name, config }) => {
                let mut queues = self.queues.lock();
                let created = !queues.contains_key(&name);
                if created {
                    queues.insert(name.clone(), config.clone());
                    let _ = self.added.send((name, config));
                }
                created
            }
            Err(e) => {
                tracing::error!(error = %e, "undecodable catalog command");
                false
            }
        };
        vec![u8::from(created)]
    }

    fn snapshot(&self) -> Result<Vec<u8>, ClusterError> {
        let queues: Vec<(String, Vec<u8>)> = self
            .queues
            .lock()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        bincode::serialize(&queues).map_err(|e| ClusterError::Decode {
            what: "catalog snapshot",
            reason: e.to_string(),
        })
    }

    fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), ClusterError> {
        let queues: Vec<(String, Vec<u8>)> = match snapshot {
            Some(b) => bincode::deserialize(b).map_err(|e| ClusterError::Decode {
                what: "catalog snapshot",
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let mut q = self.queues.lock();
        q.clear();
        for (n, c) in queues {
            q.insert(n.clone(), c.clone());
            let _ = self.added.send((n, c));
        }
        Ok(())
    }
}

/// Sends one admin request to the node at `addr` (its cluster address).
pub async fn request(addr: &str, req: AdminRequest) -> Result<AdminReply, ClusterError> {
    match crate::raft::net::call_once(addr, &crate::raft::net::Rpc::Admin(req)).await {
        Ok(crate::raft::net::RpcReply::Admin(r)) => Ok(r),
        Ok(_) => Err(ClusterError::Peer {
            addr: addr.to_string(),
            reason: "answered another request kind".into(),
        }),
        Err(e) => Err(ClusterError::Peer {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Where clients find a replicated queue (the redirect step of failover): asks the nodes at
/// `nodes` (cluster addresses) in turn and returns the wire address of the node serving `queue`
/// now, if one answers that it does.
pub async fn serving_node(nodes: &[String], queue: &str) -> Option<(u64, String)> {
    for addr in nodes {
        let Ok(AdminReply::Status(s)) = request(addr, AdminRequest::Status).await else {
            continue;
        };
        if s.queues.iter().any(|q| q.name == queue && q.served_here) {
            let wire = s.members.iter().find(|m| m.id == s.node)?.wire.clone();
            return Some((s.node, wire));
        }
    }
    None
}
