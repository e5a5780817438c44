//! The cluster's admin requests (sent to a node's cluster listener, by `levee cluster ...`) and
//! the metadata group's state machine: the catalog of replicated queues.
//!
//! # Invariants
//! - The catalog changes only by committed commands of the metadata group, so every node
//!   serves the same set of replicated queues; each node starts a queue's Raft group when it
//!   applies (or, at start, restores) the queue's entry, and stops it and removes its files
//!   when it applies the queue's deletion.
//! - Every declaration that creates a queue gets a new incarnation number (counted by the
//!   catalog, so the same on every node); a queue's Raft group and directory are named by name
//!   and incarnation, so a queue declared again after a delete never talks to, or reads the
//!   files of, the deleted one's group. Incarnation 0 is a queue declared before incarnations
//!   existed (its group and directory carry the bare name).

use std::collections::BTreeMap;

use levee_proto::{ClientFrame, QueueConfig};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::ClusterError;
use crate::link::Link;
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
    /// Delete a replicated queue with its messages, on every node (through the metadata
    /// leader).
    Delete {
        /// Queue name.
        name: String,
    },
    /// Replace a replicated queue's config (through the metadata leader): the serving node
    /// applies it at once, the others when they serve the queue next.
    Update {
        /// Queue name.
        name: String,
        /// The new config, see [`encode_config`] (checked against the old one by the caller).
        config: Vec<u8>,
    },
    /// Make node `id` a voting member of the metadata group and of every replicated queue's
    /// group (through the metadata leader). The node must run already, started with
    /// `[cluster] join = true` so that it waits to be added instead of forming a cluster of
    /// its own; it catches up (log or snapshot) before it votes.
    AddNode {
        /// Its id (not a member yet).
        id: u64,
        /// Its cluster (Raft) address, as the members reach it.
        cluster: String,
        /// Its wire (client) address, reported to clients.
        wire: String,
    },
    /// Remove node `id` from the metadata group and every replicated queue's group (through
    /// the metadata leader). Stop the node afterwards; its data is no longer a replica.
    RemoveNode {
        /// A member's id.
        id: u64,
    },
    /// To the leader of a queue's group (from the metadata leader, during `add-node` and
    /// `remove-node`): make `voters` (id → cluster address) the group's voters.
    SetVoters {
        /// Queue name.
        queue: String,
        /// Its incarnation.
        incarnation: u64,
        /// The new voters.
        voters: BTreeMap<u64, String>,
    },
}

/// The answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AdminReply {
    /// See [`Status`].
    Status(Status),
    /// The queue was created (`true`) or existed.
    Declared(bool),
    /// The queue was deleted (`true`) or did not exist.
    Deleted(bool),
    /// The config was replaced (`true`) or the queue did not exist.
    Updated(bool),
    /// A membership change: the voters now, and the replicated queues whose groups do not
    /// have them yet (they follow within seconds while their leaders are up).
    Members {
        /// The metadata group's voters.
        voters: Vec<u64>,
        /// Queues still on another membership when the answer was sent.
        pending: Vec<String>,
    },
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
    /// Its incarnation (see the module invariants).
    #[serde(default)]
    pub incarnation: u64,
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
    /// The group's voters as known here (empty while a membership change is half done).
    #[serde(default)]
    pub voters: Vec<u64>,
}

/// A command of the metadata group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum CatalogCmd {
    // New variants go at the end: bincode numbers them, and logs hold old ones.
    /// A declaration written before incarnations: applied as incarnation 0 (so a log written
    /// then still names the group and directory it made). No longer proposed.
    Declare {
        name: String,
        config: Vec<u8>,
    },
    Delete {
        name: String,
    },
    Update {
        name: String,
        config: Vec<u8>,
    },
    /// A declaration: creates the queue with the next incarnation if it is not there. No
    /// longer proposed (`CreateOn` records the members).
    Create {
        name: String,
        config: Vec<u8>,
    },
    /// A node's addresses (before it is added: the members learn where clients reach it).
    Node {
        id: u64,
        cluster: String,
        wire: String,
    },
    /// A declaration: creates the queue with the next incarnation if it is not there; its
    /// group starts with `members` (the metadata group's voters when it was proposed), the
    /// same on every node, and only those nodes may initialise it.
    CreateOn {
        name: String,
        config: Vec<u8>,
        members: Vec<u64>,
    },
    /// A declaration with fewer copies than members (`replicas` < the member count): as
    /// `CreateOn`, and the queue stays on `members` (not on every member) until
    /// `QueueMembers` moves it.
    CreateSubset {
        name: String,
        config: Vec<u8>,
        members: Vec<u64>,
    },
    /// The nodes a subset queue (`CreateSubset`) lives on now (a member was removed and
    /// replaced).
    QueueMembers {
        name: String,
        incarnation: u64,
        members: Vec<u64>,
    },
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

/// A change of the catalog, for the node to act on (start, stop or reconfigure a group), in
/// the order the catalog applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatalogEvent {
    /// A queue is in the catalog (declared, or restored at start).
    Added {
        name: String,
        incarnation: u64,
        config: Vec<u8>,
        /// The group's first members (`None`: declared before they were recorded, when
        /// the members were the configured nodes).
        members: Option<Vec<u64>>,
        /// See [`Entry::on`].
        on: Option<Vec<u64>>,
    },
    /// A subset queue's nodes changed (see [`Entry::on`]).
    Moved {
        name: String,
        incarnation: u64,
        on: Vec<u64>,
    },
    /// A queue was deleted (or a restored snapshot no longer has this incarnation).
    Removed { name: String, incarnation: u64 },
    /// A queue's config was replaced.
    Updated {
        name: String,
        incarnation: u64,
        config: Vec<u8>,
    },
}

/// One queue of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    pub(crate) incarnation: u64,
    pub(crate) config: Vec<u8>,
    /// See [`CatalogEvent::Added`].
    pub(crate) members: Option<Vec<u64>>,
    /// The nodes the queue lives on now, for a queue with fewer copies than members; `None`:
    /// on every member (its group follows the metadata group's voters).
    pub(crate) on: Option<Vec<u64>>,
}

/// An entry as `LCS2` snapshots hold it.
#[derive(serde::Serialize, serde::Deserialize)]
struct EntryV2 {
    incarnation: u64,
    config: Vec<u8>,
}

#[derive(Default)]
struct CatalogState {
    queues: BTreeMap<String, Entry>,
    /// The last incarnation handed out.
    last_incarnation: u64,
    /// Addresses of nodes added after the start (`CatalogCmd::Node`); configured nodes are
    /// in each node's own file, which wins.
    nodes: BTreeMap<u64, crate::node::NodeAddrs>,
}

/// The catalog of replicated queues (the metadata group's state): name → incarnation and
/// encoded config.
pub(crate) struct Catalog {
    state: Mutex<CatalogState>,
    /// Changes, for the node (it starts and stops groups in this order).
    events: mpsc::UnboundedSender<CatalogEvent>,
}

/// A snapshot starts with this: `LCS3` now; `LCS2` before members and node addresses were
/// recorded; snapshots before incarnations were a bare list of queues.
const SNAPSHOT_MAGIC: &[u8; 4] = b"LCS3";
const SNAPSHOT_MAGIC_V2: &[u8; 4] = b"LCS2";

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotV2 {
    last_incarnation: u64,
    queues: Vec<(String, EntryV2)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotV3 {
    last_incarnation: u64,
    queues: Vec<(String, Entry)>,
    nodes: Vec<(u64, crate::node::NodeAddrs)>,
}

impl Catalog {
    pub(crate) fn new(events: mpsc::UnboundedSender<CatalogEvent>) -> Catalog {
        Catalog {
            state: Mutex::new(CatalogState::default()),
            events,
        }
    }

    /// The entry of `name`, if the catalog (as applied here) has it.
    pub(crate) fn entry(&self, name: &str) -> Option<Entry> {
        self.state.lock().queues.get(name).cloned()
    }

    /// The addresses recorded for node `id` (a node added after the start).
    pub(crate) fn node(&self, id: u64) -> Option<crate::node::NodeAddrs> {
        self.state.lock().nodes.get(&id).cloned()
    }

    /// Every node the catalog recorded (added by `add-node`), with its addresses.
    pub(crate) fn nodes(&self) -> Vec<(u64, crate::node::NodeAddrs)> {
        let st = self.state.lock();
        st.nodes.iter().map(|(i, a)| (*i, a.clone())).collect()
    }

    /// Every queue's name and entry.
    pub(crate) fn entries(&self) -> Vec<(String, Entry)> {
        let st = self.state.lock();
        st.queues
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect()
    }

    /// Whether the catalog holds `name` in this incarnation.
    pub(crate) fn holds(&self, name: &str, incarnation: u64) -> bool {
        self.state
            .lock()
            .queues
            .get(name)
            .is_some_and(|e| e.incarnation == incarnation)
    }

    /// Adds `name` unless it is there: with the next incarnation (`fresh`) or as incarnation 0
    /// (a declaration from before incarnations). Whether it was added.
    fn create(
        &self,
        name: String,
        config: Vec<u8>,
        fresh: bool,
        members: Option<Vec<u64>>,
        on: Option<Vec<u64>>,
    ) -> bool {
        let mut st = self.state.lock();
        if st.queues.contains_key(&name) {
            return false;
        }
        let incarnation = if fresh {
            st.last_incarnation += 1;
            st.last_incarnation
        } else {
            0
        };
        st.queues.insert(
            name.clone(),
            Entry {
                incarnation,
                config: config.clone(),
                members: members.clone(),
                on: on.clone(),
            },
        );
        self.send(CatalogEvent::Added {
            name,
            incarnation,
            config,
            members,
            on,
        });
        true
    }

    fn send(&self, event: CatalogEvent) {
        let _ = self.events.send(event);
    }
}

/// What [`Catalog::apply`] answers: 1 if the command changed the catalog (created, deleted,
/// updated), 0 if not.
impl StateMachine for Catalog {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let changed = match bincode::deserialize::<CatalogCmd>(command) {
            Ok(CatalogCmd::Declare { name, config }) => {
                self.create(name, config, false, None, None)
            }
            Ok(CatalogCmd::Create { name, config }) => self.create(name, config, true, None, None),
            Ok(CatalogCmd::CreateOn {
                name,
                config,
                members,
            }) => self.create(name, config, true, Some(members), None),
            Ok(CatalogCmd::CreateSubset {
                name,
                config,
                members,
            }) => self.create(name, config, true, Some(members.clone()), Some(members)),
            Ok(CatalogCmd::QueueMembers {
                name,
                incarnation,
                members,
            }) => {
                let mut st = self.state.lock();
                match st.queues.get_mut(&name) {
                    Some(e) if e.incarnation == incarnation && e.on.is_some() => {
                        e.on = Some(members.clone());
                        self.send(CatalogEvent::Moved {
                            name,
                            incarnation,
                            on: members,
                        });
                        true
                    }
                    _ => false,
                }
            }
            Ok(CatalogCmd::Node { id, cluster, wire }) => {
                let addrs = crate::node::NodeAddrs { cluster, wire };
                self.state.lock().nodes.insert(id, addrs.clone()) != Some(addrs)
            }
            Ok(CatalogCmd::Delete { name }) => {
                let removed = self.state.lock().queues.remove(&name);
                match removed {
                    Some(e) => {
                        self.send(CatalogEvent::Removed {
                            name,
                            incarnation: e.incarnation,
                        });
                        true
                    }
                    None => false,
                }
            }
            Ok(CatalogCmd::Update { name, config }) => {
                let mut st = self.state.lock();
                match st.queues.get_mut(&name) {
                    Some(e) => {
                        e.config = config.clone();
                        let incarnation = e.incarnation;
                        self.send(CatalogEvent::Updated {
                            name,
                            incarnation,
                            config,
                        });
                        true
                    }
                    None => false,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "undecodable catalog command");
                false
            }
        };
        vec![u8::from(changed)]
    }

    fn snapshot(&self) -> Result<Vec<u8>, ClusterError> {
        let st = self.state.lock();
        let snap = SnapshotV3 {
            last_incarnation: st.last_incarnation,
            queues: st
                .queues
                .iter()
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            nodes: st.nodes.iter().map(|(i, a)| (*i, a.clone())).collect(),
        };
        let mut out = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut out, &snap).map_err(|e| ClusterError::Decode {
            what: "catalog snapshot",
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), ClusterError> {
        let bad = |e: bincode::Error| ClusterError::Decode {
            what: "catalog snapshot",
            reason: e.to_string(),
        };
        let v2 = |s: SnapshotV2| SnapshotV3 {
            last_incarnation: s.last_incarnation,
            queues: s
                .queues
                .into_iter()
                .map(|(n, e)| {
                    (
                        n,
                        Entry {
                            incarnation: e.incarnation,
                            config: e.config,
                            members: None,
                            on: None,
                        },
                    )
                })
                .collect(),
            nodes: Vec::new(),
        };
        let snap = match snapshot {
            Some(b) if b.starts_with(SNAPSHOT_MAGIC) => {
                bincode::deserialize::<SnapshotV3>(&b[SNAPSHOT_MAGIC.len()..]).map_err(bad)?
            }
            Some(b) if b.starts_with(SNAPSHOT_MAGIC_V2) => v2(bincode::deserialize::<SnapshotV2>(
                &b[SNAPSHOT_MAGIC_V2.len()..],
            )
            .map_err(bad)?),
            // Before incarnations: every queue is incarnation 0.
            Some(b) => v2(SnapshotV2 {
                last_incarnation: 0,
                queues: bincode::deserialize::<Vec<(String, Vec<u8>)>>(b)
                    .map_err(bad)?
                    .into_iter()
                    .map(|(n, config)| {
                        (
                            n,
                            EntryV2 {
                                incarnation: 0,
                                config,
                            },
                        )
                    })
                    .collect(),
            }),
            None => v2(SnapshotV2 {
                last_incarnation: 0,
                queues: Vec::new(),
            }),
        };
        let mut st = self.state.lock();
        let new: BTreeMap<String, Entry> = snap.queues.into_iter().collect();
        // What the snapshot no longer holds (a follower that missed deletions) goes first.
        for (name, e) in &st.queues {
            if new.get(name).is_none_or(|n| n.incarnation != e.incarnation) {
                self.send(CatalogEvent::Removed {
                    name: name.clone(),
                    incarnation: e.incarnation,
                });
            }
        }
        for (name, e) in &new {
            self.send(CatalogEvent::Added {
                name: name.clone(),
                incarnation: e.incarnation,
                config: e.config.clone(),
                members: e.members.clone(),
                on: e.on.clone(),
            });
        }
        st.queues = new;
        st.last_incarnation = snap.last_incarnation;
        st.nodes = snap.nodes.into_iter().collect();
        Ok(())
    }
}

/// Sends one admin request to the node at `addr` (its cluster address), over plain TCP
/// without a login (a cluster without users); see [`request_via`].
pub async fn request(addr: &str, req: AdminRequest) -> Result<AdminReply, ClusterError> {
    request_via(&Link::plain(), addr, req).await
}

/// Sends one admin request to the node at `addr` (its cluster address) through `link` (TLS,
/// login).
pub async fn request_via(
    link: &Link,
    addr: &str,
    req: AdminRequest,
) -> Result<AdminReply, ClusterError> {
    match crate::raft::net::call_once(link, addr, &crate::raft::net::Rpc::Admin(req)).await {
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
/// now, if one answers that it does. Plain TCP without a login; see [`serving_node_via`].
pub async fn serving_node(nodes: &[String], queue: &str) -> Option<(u64, String)> {
    serving_node_via(&Link::plain(), nodes, queue).await
}

/// [`serving_node`] through `link`.
pub async fn serving_node_via(link: &Link, nodes: &[String], queue: &str) -> Option<(u64, String)> {
    for addr in nodes {
        let Ok(AdminReply::Status(s)) = request_via(link, addr, AdminRequest::Status).await else {
            continue;
        };
        if s.queues.iter().any(|q| q.name == queue && q.served_here) {
            let wire = s.members.iter().find(|m| m.id == s.node)?.wire.clone();
            return Some((s.node, wire));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(c: &CatalogCmd) -> Vec<u8> {
        bincode::serialize(c).unwrap()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<CatalogEvent>) -> Vec<CatalogEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn create(name: &str) -> Vec<u8> {
        cmd(&CatalogCmd::Create {
            name: name.into(),
            config: vec![1],
        })
    }

    #[test]
    fn a_queue_declared_again_after_a_delete_is_a_new_incarnation() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Catalog::new(tx);
        assert_eq!(c.apply(&create("a")), vec![1]);
        assert_eq!(
            c.apply(&create("a")),
            vec![0],
            "a redeclare changes nothing"
        );
        assert_eq!(
            c.apply(&cmd(&CatalogCmd::Delete { name: "a".into() })),
            vec![1]
        );
        assert_eq!(
            c.apply(&cmd(&CatalogCmd::Delete { name: "a".into() })),
            vec![0]
        );
        assert_eq!(c.apply(&create("a")), vec![1]);
        let update = CatalogCmd::Update {
            name: "a".into(),
            config: vec![2],
        };
        assert_eq!(c.apply(&cmd(&update)), vec![1]);
        assert_eq!(
            drain(&mut rx),
            vec![
                CatalogEvent::Added {
                    name: "a".into(),
                    incarnation: 1,
                    config: vec![1],
                    members: None,
                    on: None
                },
                CatalogEvent::Removed {
                    name: "a".into(),
                    incarnation: 1
                },
                CatalogEvent::Added {
                    name: "a".into(),
                    incarnation: 2,
                    config: vec![1],
                    members: None,
                    on: None
                },
                CatalogEvent::Updated {
                    name: "a".into(),
                    incarnation: 2,
                    config: vec![2]
                },
            ]
        );
        assert!(c.holds("a", 2) && !c.holds("a", 1));
        assert_eq!(c.entry("a").map(|e| e.config), Some(vec![2]));
        let update_missing = CatalogCmd::Update {
            name: "b".into(),
            config: vec![2],
        };
        assert_eq!(c.apply(&cmd(&update_missing)), vec![0]);
    }

    #[test]
    fn a_declaration_from_before_incarnations_keeps_incarnation_0() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Catalog::new(tx);
        let legacy = CatalogCmd::Declare {
            name: "old".into(),
            config: vec![1],
        };
        assert_eq!(c.apply(&cmd(&legacy)), vec![1]);
        assert!(c.holds("old", 0));
        // The counter is untouched: the next new queue is incarnation 1.
        c.apply(&create("new"));
        assert!(c.holds("new", 1));
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[test]
    fn snapshots_round_trip_and_a_restore_reports_what_went() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Catalog::new(tx);
        c.apply(&create("a"));
        c.apply(&create("b"));
        let snap = c.snapshot().unwrap();
        c.apply(&cmd(&CatalogCmd::Delete { name: "a".into() }));
        c.apply(&create("a"));
        drain(&mut rx);
        // Back to the snapshot: a's incarnation 3 goes, a's 1 and b come.
        c.restore(Some(&snap)).unwrap();
        let events = drain(&mut rx);
        assert_eq!(
            events[0],
            CatalogEvent::Removed {
                name: "a".into(),
                incarnation: 3
            }
        );
        assert!(c.holds("a", 1) && c.holds("b", 2));
        // The counter came back with it.
        c.apply(&create("c"));
        assert!(c.holds("c", 3));

        // A snapshot written before incarnations: a bare list; every queue is incarnation 0.
        let legacy = bincode::serialize(&vec![("x".to_string(), vec![9u8])]).unwrap();
        c.restore(Some(&legacy)).unwrap();
        assert!(c.holds("x", 0) && !c.holds("a", 1));
        assert_eq!(c.entry("x").map(|e| e.config), Some(vec![9]));
        c.restore(None).unwrap();
        assert!(!c.holds("x", 0));
    }

    #[test]
    fn members_and_added_nodes_are_kept_and_survive_snapshots() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Catalog::new(tx);
        let on = CatalogCmd::CreateOn {
            name: "q".into(),
            config: vec![1],
            members: vec![2, 3, 4],
        };
        assert_eq!(c.apply(&cmd(&on)), vec![1]);
        let node = CatalogCmd::Node {
            id: 4,
            cluster: "h:1".into(),
            wire: "h:2".into(),
        };
        assert_eq!(c.apply(&cmd(&node)), vec![1]);
        assert_eq!(c.apply(&cmd(&node)), vec![0], "the same addresses again");
        let added = CatalogEvent::Added {
            name: "q".into(),
            incarnation: 1,
            config: vec![1],
            members: Some(vec![2, 3, 4]),
            on: None,
        };
        assert_eq!(drain(&mut rx), vec![added.clone()]);
        let snap = c.snapshot().unwrap();
        assert!(snap.starts_with(SNAPSHOT_MAGIC));

        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let d = Catalog::new(tx2);
        d.restore(Some(&snap)).unwrap();
        assert_eq!(drain(&mut rx2), vec![added]);
        let wanted = crate::node::NodeAddrs {
            cluster: "h:1".into(),
            wire: "h:2".into(),
        };
        assert_eq!(d.node(4), Some(wanted));
        assert_eq!(d.entry("q").unwrap().members, Some(vec![2, 3, 4]));

        // An `LCS2` snapshot (before members were recorded): members unknown, no nodes.
        let v2 = SnapshotV2 {
            last_incarnation: 7,
            queues: vec![(
                "old".into(),
                EntryV2 {
                    incarnation: 7,
                    config: vec![5],
                },
            )],
        };
        let mut bytes = SNAPSHOT_MAGIC_V2.to_vec();
        bincode::serialize_into(&mut bytes, &v2).unwrap();
        d.restore(Some(&bytes)).unwrap();
        assert!(d.holds("old", 7) && !d.holds("q", 1));
        assert_eq!(d.entry("old").unwrap().members, None);
        assert_eq!(d.node(4), None);
    }

    #[test]
    fn a_queue_with_fewer_copies_moves_between_nodes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Catalog::new(tx);
        let sub = CatalogCmd::CreateSubset {
            name: "s".into(),
            config: vec![1],
            members: vec![1, 2, 3],
        };
        assert_eq!(c.apply(&cmd(&sub)), vec![1]);
        c.apply(&create("all"));
        let moved = CatalogCmd::QueueMembers {
            name: "s".into(),
            incarnation: 1,
            members: vec![2, 3, 5],
        };
        assert_eq!(c.apply(&cmd(&moved)), vec![1]);
        // Only a subset queue moves, and only in its incarnation.
        let wrong = CatalogCmd::QueueMembers {
            name: "s".into(),
            incarnation: 9,
            members: vec![1],
        };
        assert_eq!(c.apply(&cmd(&wrong)), vec![0]);
        let every = CatalogCmd::QueueMembers {
            name: "all".into(),
            incarnation: 2,
            members: vec![1],
        };
        assert_eq!(c.apply(&cmd(&every)), vec![0]);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(
            events[2],
            CatalogEvent::Moved {
                name: "s".into(),
                incarnation: 1,
                on: vec![2, 3, 5]
            }
        );
        let e = c.entry("s").unwrap();
        assert_eq!(e.members, Some(vec![1, 2, 3]), "the first members stay");
        assert_eq!(e.on, Some(vec![2, 3, 5]));
        assert_eq!(c.entry("all").unwrap().on, None);
        // A snapshot keeps where it is.
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let d = Catalog::new(tx2);
        d.restore(Some(&c.snapshot().unwrap())).unwrap();
        assert_eq!(d.entry("s").unwrap().on, Some(vec![2, 3, 5]));
        assert!(drain(&mut rx2).iter().any(|ev| matches!(
            ev,
            CatalogEvent::Added { name, on: Some(on), .. } if name == "s" && *on == vec![2, 3, 5]
        )));
    }
}
