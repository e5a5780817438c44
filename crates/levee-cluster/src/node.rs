//! A cluster node: the cluster listener, the metadata group, one Raft group per replicated
//! queue, and the watcher that serves a queue in the local broker exactly while this node leads
//! its group.
//!
//! Raft (its tasks, the network, log fsyncs) runs on a runtime of its own, so a busy broker never
//! delays heartbeats and a queue log blocked on a commit never blocks Raft.
//!
//! # Invariants
//! - A replicated queue is served by the broker only on the node that leads its group, and only
//!   after that node applied everything committed before its term (`Group::caught_up`); it is
//!   unloaded as soon as this node sees it is no longer the leader.
//! - A leader without a quorum acknowledgement for `QUORUM_ACK_MS` stops serving (a leader
//!   cut off in a minority neither confirms nor delivers).
//! - Every node starts a group with the same initial membership: the configured nodes for the
//!   metadata group, the members its declaration recorded for a queue group (`CreateOn`; the
//!   configured nodes for one declared before that). openraft's first membership entry is then
//!   identical everywhere, so initialising on each of those nodes is safe; a node that is not
//!   one of them (it joined later, `[cluster] join`) never initialises the group. The metadata
//!   group is initialised on every node at start (not with `join`); a new queue group only on
//!   one node, by a hash of its name (the others join through its leader's appends, or
//!   initialise after `INIT_FALLBACK` of silence), so a node applying a declaration late does
//!   not depose the group's first leader.
//! - Membership changes go through the metadata group first (`add-node`, `remove-node`); every
//!   queue group's leader then makes its group's voters the metadata group's committed voters
//!   (`reconcile_memberships`, and at once during the request: `follow_queues`). A new voter is
//!   a learner until it holds the log up to its addition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use levee_broker::Broker;
use levee_proto::{Durability, Fsync, QueueConfig};
use openraft::ServerState;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::{
    AdminReply, AdminRequest, Catalog, CatalogCmd, CatalogEvent, Member, QueueStatus, Status,
};
use crate::error::ClusterError;
use crate::raft::Group;
use crate::raft::net::{Rpc, RpcReply, read_frame, write_frame};
use crate::replicated_dir::{DirStateMachine, ReplicatedBackend, RuntimeProposer};
use crate::replicated_log::ReplicatedLog;

/// A leader whose last quorum acknowledgement is older than this stops serving its queues: by
/// then (more than the longest election timeout, 1.2 s) the majority may have elected another
/// leader. Not a safety bound (a leader without a quorum commits nothing, so it confirms
/// nothing and no settlement of its sticks): it bounds how long an isolated leader may still
/// hand out already committed messages, which are then delivered again, marked, by the new one.
/// Above the election timeout so that acks delayed under load do not make a leader flap.
const QUORUM_ACK_MS: u64 = 3000;

/// A node other than the [`initializer`] initialises a new queue group itself only if it has
/// heard nothing from a leader this long after applying the declaration.
const INIT_FALLBACK: std::time::Duration = std::time::Duration::from_secs(3);

/// The node that initialises a new queue group (and so most likely leads it first): picked
/// among the group's first `members` by a hash of the queue's name, so that the leaders of many
/// queues spread over the nodes; the same on every node.
fn initializer(members: &BTreeSet<u64>, queue: &str) -> Option<u64> {
    pick(members, 1, queue).first().copied()
}

/// How long a membership change waits for a new node to catch up (log or snapshot) before it
/// may vote, in the metadata group; and how long `add-node`/`remove-node` then wait for the
/// queue groups to follow before answering (they keep following after the answer).
const MEMBERS_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);
/// The same wait for one queue group's new member, per attempt of the reconciler (a member
/// not caught up by then stays a learner and is tried again on its next round).
const QUEUE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);
/// How often each node compares the groups it leads with the metadata group's voters.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The metadata group's name.
pub const META: &str = "meta";

/// A configured node's addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct NodeAddrs {
    /// Cluster (Raft) address, `HOST:PORT`.
    pub cluster: String,
    /// Wire (client) address, `HOST:PORT` (reported to clients looking for a leader).
    pub wire: String,
}

/// The `[cluster]` section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (≥ 1).
    pub node_id: u64,
    /// This node's cluster listener.
    pub listen: SocketAddr,
    /// Every member (this node included): id → addresses.
    pub nodes: BTreeMap<u64, NodeAddrs>,
    /// Where Raft logs, snapshots and replicated queue files live.
    pub data_dir: PathBuf,
    /// The leader's heartbeat interval, ms (default [`DEFAULT_HEARTBEAT_MS`]). It is also how
    /// long the leader waits for a follower to answer an append (openraft's RPC deadline), so
    /// it must exceed the slowest round trip between nodes that a majority needs: past it, a
    /// follower's answers never arrive in time and it counts for nothing.
    pub heartbeat_ms: u64,
    /// The shortest election timeout, ms (default [`DEFAULT_ELECTION_TIMEOUT_MS`]; each node
    /// draws its timeout from this to twice this): a follower that hears no leader for that
    /// long campaigns. At least 3 heartbeats.
    pub election_timeout_ms: u64,
    /// How this node reaches its peers' cluster listeners: TLS (when the broker speaks TLS)
    /// and the user it logs in as (`[cluster] user`, `password_file`). The listener admits
    /// peers by the broker's own users and TLS settings (see `link`).
    pub link: crate::link::Link,
    /// `[cluster] join`: this node joins a running cluster (`levee cluster add-node`): it
    /// never initialises the metadata group or a queue group declared before it was added,
    /// and waits for a leader to bring it in. Without it a node with no Raft state forms the
    /// cluster of its configured nodes.
    pub join: bool,
}

/// Default [`ClusterConfig::heartbeat_ms`]: a LAN or one region.
pub const DEFAULT_HEARTBEAT_MS: u64 = 150;
/// Default [`ClusterConfig::election_timeout_ms`].
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 600;

impl ClusterConfig {
    /// Checks the section.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.node_id == 0 {
            return Err(ClusterError::Config(
                "[cluster] node_id must be at least 1".into(),
            ));
        }
        if !self.nodes.contains_key(&self.node_id) {
            return Err(ClusterError::Config(format!(
                "[cluster] nodes does not list this node (node_id = {})",
                self.node_id
            )));
        }
        if !(10..=60_000).contains(&self.heartbeat_ms) {
            return Err(ClusterError::Config(format!(
                "[cluster] raft_heartbeat_ms must be in 10..=60000, got {}",
                self.heartbeat_ms
            )));
        }
        if self.election_timeout_ms < 3 * self.heartbeat_ms || self.election_timeout_ms > 600_000 {
            return Err(ClusterError::Config(format!(
                "[cluster] raft_election_timeout_ms must be at least 3 heartbeats ({}) and at most \
                 600000, got {}",
                3 * self.heartbeat_ms,
                self.election_timeout_ms
            )));
        }
        Ok(())
    }

    fn timing(&self) -> crate::raft::Timing {
        crate::raft::Timing {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
        }
    }
}

/// The config a replicated queue gets from `requested` in a cluster of `nodes` members: always on
/// disk with fsync `always` (its fsyncs are what commits through Raft; a confirm must wait for
/// the commit), with one copy per node.
pub fn replicated_queue_config(requested: &QueueConfig, nodes: usize) -> QueueConfig {
    QueueConfig {
        durability: Durability::Disk(Fsync::Always),
        replicas: u8::try_from(nodes).unwrap_or(u8::MAX),
        ..requested.clone()
    }
}

/// The broker's way to declare replicated queues (`replicas` > 1) through this node: checks
/// `replicas` against the cluster's size and the catalog's config, proposes the declaration
/// to the metadata group (forwarded to its leader), and waits (at most
/// [`DECLARE_SERVED_WITHIN`]) until a node serves the new queue, so the client's next step
/// finds it.
struct ClusterReplication {
    shared: std::sync::Weak<Shared>,
}

/// How long a declaration waits for the metadata group to take it, and then for its queue's
/// group to have a serving leader.
const DECLARE_SERVED_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl levee_broker::Replication for ClusterReplication {
    fn replicas(&self) -> u8 {
        let nodes = self.shared.upgrade().map_or(1, |s| cluster_size(&s));
        u8::try_from(nodes).unwrap_or(u8::MAX)
    }

    fn declare(
        &self,
        name: String,
        config: QueueConfig,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bool, levee_broker::BrokerError>> + Send>,
    > {
        let shared = self.shared.clone();
        Box::pin(async move {
            use levee_broker::BrokerError;
            let s = shared
                .upgrade()
                .ok_or_else(|| BrokerError::Internal("the cluster node stopped".into()))?;
            let nodes = cluster_size(&s);
            let invalid = |reason: String| {
                BrokerError::Proto(levee_proto::ProtoError::InvalidConfig {
                    field: "replicas",
                    reason,
                })
            };
            let wanted = usize::from(config.replicas);
            if !(2..=nodes).contains(&wanted) {
                return Err(invalid(format!(
                    "this cluster has {nodes} members: replicas must be 1 (a local queue) or \
                     2 to {nodes} (the copies of a replicated queue), not {}",
                    config.replicas
                )));
            }
            let config = replicated_queue_config(&config, wanted);
            // `replicas` = the member count follows the cluster's size (membership changes);
            // fewer copies stay that many. The rest must match.
            if let Some(entry) = s.catalog.entry(&name)
                && let Ok(existing) = crate::admin::decode_config(&entry.config)
                && let existing = replicated_queue_config(&existing, copies(&s, &entry))
                && existing != config
            {
                return Err(BrokerError::ConfigMismatch {
                    queue: name.clone(),
                    differences: existing.describe_differences(&config),
                });
            }
            let encoded =
                crate::admin::encode_config(&name, &config).map_err(|e| invalid(e.to_string()))?;
            let created = match admin_retrying(
                &s,
                &name,
                AdminRequest::Declare {
                    name: name.clone(),
                    config: encoded,
                },
            )
            .await?
            {
                AdminReply::Declared(created) => created,
                other => return Err(unexpected(&other)),
            };
            applied_everywhere(&s, &name, true).await;
            let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
            while tokio::time::Instant::now() < deadline {
                let elsewhere = s
                    .catalog
                    .entry(&name)
                    .and_then(|e| e.on)
                    .is_some_and(|on| !on.contains(&s.config.node_id));
                let served = elsewhere
                    || s.queues.read().get(&name).is_some_and(|q| {
                        let leader = q.group.raft().metrics().borrow().current_leader;
                        leader.is_some_and(|l| {
                            l != s.config.node_id
                                || q.served.load(std::sync::atomic::Ordering::Acquire)
                        })
                    });
                if served {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok(created)
        })
    }

    fn delete(&self, name: String) -> levee_broker::Deletion {
        let shared = self.shared.clone();
        Box::pin(async move {
            use levee_broker::BrokerError;
            let s = shared
                .upgrade()
                .ok_or_else(|| BrokerError::Internal("the cluster node stopped".into()))?;
            let Some(entry) = s.catalog.entry(&name) else {
                return Err(BrokerError::UnknownQueue(name));
            };
            // Only the serving node knows what the queue holds.
            let messages = match running(&s, &name, entry.incarnation) == Some(true) {
                true => s
                    .broker
                    .inspect(&name)
                    .await
                    .map(|i| i.stats.ready + i.stats.unacked)
                    .unwrap_or(0),
                false => 0,
            };
            match admin_retrying(&s, &name, AdminRequest::Delete { name: name.clone() }).await? {
                AdminReply::Deleted(true) => {}
                AdminReply::Deleted(false) => return Err(BrokerError::UnknownQueue(name)),
                other => return Err(unexpected(&other)),
            }
            // Applied here: this node's group is stopped and its files removed (so the name is
            // free for a new declaration on this node at once).
            let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
            while running(&s, &name, entry.incarnation).is_some()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            applied_everywhere(&s, &name, false).await;
            Ok(messages)
        })
    }

    fn update(
        &self,
        name: String,
        config: QueueConfig,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<QueueConfig, levee_broker::BrokerError>> + Send,
        >,
    > {
        let shared = self.shared.clone();
        Box::pin(async move {
            use levee_broker::BrokerError;
            let s = shared
                .upgrade()
                .ok_or_else(|| BrokerError::Internal("the cluster node stopped".into()))?;
            let Some(entry) = s.catalog.entry(&name) else {
                return Err(BrokerError::UnknownQueue(name));
            };
            let nodes = copies(&s, &entry);
            let old = crate::admin::decode_config(&entry.config)
                .map(|c| replicated_queue_config(&c, nodes))
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            // `replicas` and the durability are checked as given (they cannot change); the
            // stored config is the replicated one.
            levee_broker::Broker::check_update(&old, &config)?;
            let new = replicated_queue_config(&config, nodes);
            if new == old {
                return Ok(old);
            }
            let encoded = crate::admin::encode_config(&name, &new)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            match admin_retrying(
                &s,
                &name,
                AdminRequest::Update {
                    name: name.clone(),
                    config: encoded,
                },
            )
            .await?
            {
                AdminReply::Updated(true) => {}
                AdminReply::Updated(false) => return Err(BrokerError::UnknownQueue(name)),
                other => return Err(unexpected(&other)),
            }
            // Applied here (on the serving node: the queue runs with it).
            let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
            while tokio::time::Instant::now() < deadline {
                let applied =
                    s.queues.read().get(&name).is_none_or(|q| {
                        q.incarnation != entry.incarnation || *q.applied.read() == new
                    });
                if applied {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(old)
        })
    }
}

/// How long a declaration or deletion waits for the other nodes to have applied it.
const APPLIED_EVERYWHERE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits (at most [`APPLIED_EVERYWHERE_WITHIN`]) until every other node that answers runs
/// `name`'s group and knows its leader (`present`), or no longer runs it: so that right after a declaration (deletion)
/// returns, the other nodes know the queue (no longer serve it) instead of answering
/// `unknown-queue` until their next heartbeat and apply. A node that does not answer (down, cut
/// off) is not waited for: it learns the change when it is back.
async fn applied_everywhere(s: &Arc<Shared>, name: &str, present: bool) {
    let deadline = tokio::time::Instant::now() + APPLIED_EVERYWHERE_WITHIN;
    let nodes = match s.catalog.entry(name).and_then(|e| e.on) {
        Some(on) if present => on.into_iter().collect(),
        _ => voters(s),
    };
    let mut pending: Vec<String> = nodes
        .into_iter()
        .filter(|id| *id != s.config.node_id)
        .filter_map(|id| addrs(s, id).map(|a| a.cluster))
        .collect();
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for addr in pending {
            let asked = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                crate::admin::request_via(&s.link, &addr, AdminRequest::Status),
            )
            .await;
            // Present: the node runs the group and knows its leader (so it can tell a client
            // where the queue is served).
            if let Ok(Ok(AdminReply::Status(st))) = asked
                && st
                    .queues
                    .iter()
                    .any(|q| q.name == name && (q.leader.is_some() || !present))
                    != present
            {
                still.push(addr);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn unexpected(reply: &AdminReply) -> levee_broker::BrokerError {
    levee_broker::BrokerError::Internal(format!("unexpected admin reply {reply:?}"))
}

/// Sends `request` (about queue `name`) to the metadata group through this node, retrying, as
/// a client would, for up to [`DECLARE_SERVED_WITHIN`] while it fails for availability (no
/// leader known for a moment, a forward that failed, no quorum).
async fn admin_retrying(
    s: &Arc<Shared>,
    name: &str,
    request: AdminRequest,
) -> Result<AdminReply, levee_broker::BrokerError> {
    use levee_broker::BrokerError;
    let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let (s2, r) = (s.clone(), request.clone());
        let reply =
            s.rt.spawn(async move { admin(&s2, r).await })
                .await
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
        match reply {
            AdminReply::Error(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(queue = %name, error = %e, "a catalog change: retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            AdminReply::Error(e) => {
                return Err(BrokerError::Internal(format!(
                    "the cluster did not take the change of {name} within {} s: {e}",
                    DECLARE_SERVED_WITHIN.as_secs()
                )));
            }
            other => return Ok(other),
        }
    }
}

/// Whether this node runs `name`'s group in this incarnation: `Some(served here)`.
fn running(s: &Shared, name: &str, incarnation: u64) -> Option<bool> {
    s.queues
        .read()
        .get(name)
        .filter(|q| q.incarnation == incarnation)
        .map(|q| q.served.load(std::sync::atomic::Ordering::Acquire))
}

struct QueueGroup {
    /// See the catalog's incarnations (`admin`).
    incarnation: u64,
    group: Arc<Group>,
    served: Arc<std::sync::atomic::AtomicBool>,
    /// The catalog's config of the queue as last applied here (the replicated form): the
    /// watcher serves the queue with it.
    applied: Arc<RwLock<QueueConfig>>,
    backend: ReplicatedBackend,
    /// Stops the watcher (the queue was deleted).
    stop: tokio::sync::watch::Sender<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

/// The Raft group of `name` in `incarnation`.
fn group_name(name: &str, incarnation: u64) -> String {
    match incarnation {
        0 => format!("queue/{name}"),
        n => format!("queue/{name}+{n}"),
    }
}

/// The directory under `[cluster] data_dir`/queues of `name` in `incarnation` (`+` is not
/// allowed in queue names, so the name and the number cannot be confused).
fn queue_dir_name(name: &str, incarnation: u64) -> String {
    match incarnation {
        0 => name.to_string(),
        n => format!("{name}+{n}"),
    }
}

/// The inverse of [`queue_dir_name`] (and of [`group_name`] without `queue/`).
fn parse_incarnation(dir: &str) -> Option<(&str, u64)> {
    match dir.rsplit_once('+') {
        Some((name, n)) => Some((name, n.parse().ok()?)),
        None => Some((dir, 0)),
    }
}

struct Shared {
    config: ClusterConfig,
    broker: Broker,
    /// The metadata group's state: the replicated queues and their configs.
    catalog: Arc<Catalog>,
    rt: tokio::runtime::Handle,
    meta: RwLock<Option<Arc<Group>>>,
    queues: RwLock<HashMap<String, QueueGroup>>,
    /// [`ClusterConfig::link`], shared by every group's network.
    link: Arc<crate::link::Link>,
}

/// A running cluster node (dropping it stops its Raft runtime).
pub struct Node {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    local: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn members(config: &ClusterConfig) -> BTreeMap<u64, String> {
    config
        .nodes
        .iter()
        .map(|(id, a)| (*id, a.cluster.clone()))
        .collect()
}

/// Where this node reaches node `id`: its own file's `[[cluster.nodes]]` entry, else the
/// addresses the catalog recorded when the node was added.
fn addrs(s: &Shared, id: u64) -> Option<NodeAddrs> {
    s.config
        .nodes
        .get(&id)
        .cloned()
        .or_else(|| s.catalog.node(id))
}

/// The cluster address of the node serving replicated queue `queue` now: the leader of its
/// group when this node keeps a copy (possibly this node, elected and not serving yet: its own
/// listener then answers "not served here" until it serves, and the forward is sent again),
/// else the node the broker was told serves it (`track_elsewhere`).
fn serving_cluster_addr(s: &Shared, queue: &str) -> Option<String> {
    let me = s.config.node_id;
    let leader = s
        .queues
        .read()
        .get(queue)
        .map(|q| q.group.raft().metrics().borrow().current_leader);
    let id = match leader {
        Some(leader) => leader?,
        None => {
            let wire = s.broker.serving_elsewhere(queue)??;
            s.config
                .nodes
                .iter()
                .map(|(id, a)| (*id, a.clone()))
                .chain(s.catalog.nodes())
                .find(|(id, a)| *id != me && a.wire == wire)?
                .0
        }
    };
    addrs(s, id).map(|a| a.cluster)
}

/// `ids` with their cluster addresses (an unknown one gets an empty address: the membership
/// still names it, and a node that knows it better uses its own).
fn cluster_addrs(s: &Shared, ids: &BTreeSet<u64>) -> BTreeMap<u64, String> {
    ids.iter()
        .map(|id| (*id, addrs(s, *id).map(|a| a.cluster).unwrap_or_default()))
        .collect()
}

/// The cluster's members: the metadata group's voters as this node knows them (both sides of
/// a change in progress), or the configured nodes before it knows any.
fn voters(s: &Shared) -> BTreeSet<u64> {
    let known = s.meta.read().as_ref().map(|m| {
        let metrics = m.raft().metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .collect::<BTreeSet<u64>>()
    });
    match known {
        Some(v) if !v.is_empty() => v,
        _ => s.config.nodes.keys().copied().collect(),
    }
}

/// The metadata group's voters once committed (applied here) and not in a joint change: what
/// the queue groups are made to follow.
fn committed_voters(s: &Shared) -> Option<BTreeSet<u64>> {
    let meta = s.meta.read().clone()?;
    let m = meta.raft().metrics().borrow().clone();
    let at = m.membership_config.log_id().as_ref().map(|l| l.index);
    if at > m.last_applied.map(|l| l.index) {
        return None;
    }
    meta.voters().filter(|v| !v.is_empty())
}

/// The number of members (the copies of a queue on every member).
fn cluster_size(s: &Shared) -> usize {
    voters(s).len()
}

/// How many copies the catalog's queue has: its nodes' count for a subset queue, else the
/// member count.
fn copies(s: &Shared, entry: &crate::admin::Entry) -> usize {
    entry.on.as_ref().map_or_else(|| cluster_size(s), Vec::len)
}

/// The voters `entry`'s group should have: its nodes (a subset queue), or every member of
/// `members`.
fn queue_target(entry: &crate::admin::Entry, members: &BTreeSet<u64>) -> BTreeSet<u64> {
    match &entry.on {
        Some(on) => on.iter().copied().collect(),
        None => members.clone(),
    }
}

/// `n` of `members` for a new subset queue, picked by a hash of its name (so queues spread
/// over the nodes); the same on every node.
fn pick(members: &BTreeSet<u64>, n: usize, queue: &str) -> Vec<u64> {
    let ids: Vec<u64> = members.iter().copied().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let start = crc32c::crc32c(queue.as_bytes()) as usize % ids.len();
    (0..n.min(ids.len()))
        .map(|i| ids[(start + i) % ids.len()])
        .collect()
}

impl Node {
    /// Starts the node: binds the cluster listener, opens the metadata group and every queue
    /// group the catalog names, and serves each queue this node leads in `broker`. Call from
    /// the broker's runtime (queue watchers run there).
    pub async fn start(config: ClusterConfig, broker: Broker) -> Result<Node, ClusterError> {
        config.validate()?;
        let config_link = config.link.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("levee-raft")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::io("starting the raft runtime", e))?;
        let rt = runtime.handle().clone();
        let listener = {
            let addr = config.listen;
            rt.spawn(async move { TcpListener::bind(addr).await })
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?
                .map_err(|e| ClusterError::io(format!("listening on {addr}"), e))?
        };
        let local = listener
            .local_addr()
            .map_err(|e| ClusterError::io("cluster listener address", e))?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let catalog = Arc::new(Catalog::new(events_tx));
        let shared = Arc::new(Shared {
            config,
            broker,
            catalog: catalog.clone(),
            rt: rt.clone(),
            meta: RwLock::new(None),
            queues: RwLock::new(HashMap::new()),
            link: Arc::new(config_link),
        });
        rt.spawn(serve(listener, shared.clone()));
        // `levee_cluster_*` on the broker's `/metrics` (a weak handle: the broker must not keep
        // the node alive).
        let weak = Arc::downgrade(&shared);
        shared
            .broker
            .set_metrics_source(Arc::new(move |out: &mut String| {
                if let Some(s) = weak.upgrade() {
                    crate::metrics::render(out, &status(&s));
                }
            }));
        // Replicated queues declared through the broker (`replicas` > 1: native, HTTP, AMQP
        // quorum) go through this node.
        shared.broker.set_replication(Arc::new(ClusterReplication {
            shared: Arc::downgrade(&shared),
        }));
        // Publishes on this node to a replicated queue another node serves go to that node.
        let weak = Arc::downgrade(&shared);
        shared
            .broker
            .set_forwarder(Arc::new(crate::forward::ClusterForwarder::new(
                shared.link.clone(),
                rt.clone(),
                Box::new(move |queue: &str| {
                    weak.upgrade().and_then(|s| serving_cluster_addr(&s, queue))
                }),
            )));
        // The metadata group.
        let meta = {
            let (s, c) = (shared.clone(), catalog.clone());
            rt.spawn(async move {
                let g = Group::open(
                    META,
                    s.config.node_id,
                    &s.config.data_dir.join("meta"),
                    c,
                    Arc::new(members(&s.config)),
                    s.link.clone(),
                    s.config.timing(),
                )
                .await?;
                // A joining node waits to be added (`levee cluster add-node`) instead.
                if !s.config.join {
                    g.initialize(&members(&s.config)).await;
                }
                Ok::<_, ClusterError>(Arc::new(g))
            })
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))??
        };
        *shared.meta.write() = Some(meta);
        // Queue groups, as the catalog names them (at start from its snapshot and log, later
        // as declarations, deletions and updates commit), in the catalog's order.
        let s = shared.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                catalog_changed(&s, event).await;
            }
        });
        // Files of queues deleted while this node was down (it restored a snapshot without
        // them) are removed once the metadata group has applied all it holds.
        tokio::spawn(sweep_when_caught_up(shared.clone()));
        // Queue groups follow the metadata group's membership (add-node, remove-node).
        rt.spawn(reconcile_memberships(Arc::downgrade(&shared)));
        Ok(Node {
            shared,
            runtime: Some(runtime),
            local,
        })
    }

    /// The cluster listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        status(&self.shared)
    }

    /// Stops every group's Raft tasks (the broker is the caller's to shut down).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self
            .shared
            .queues
            .read()
            .values()
            .map(|q| q.group.clone())
            .chain(self.shared.meta.read().clone())
            .collect();
        let rt = self.shared.rt.clone();
        let _ = rt
            .spawn(async move {
                for g in groups {
                    g.shutdown().await;
                }
            })
            .await;
    }
}

/// Acts on one change of the catalog.
async fn catalog_changed(s: &Arc<Shared>, event: CatalogEvent) {
    match event {
        CatalogEvent::Added {
            name,
            incarnation,
            config,
            members,
            on,
        } => {
            let copies = on.as_ref().map_or_else(|| cluster_size(s), Vec::len);
            let config = match crate::admin::decode_config(&config) {
                Ok(c) => replicated_queue_config(&c, copies),
                Err(e) => {
                    tracing::error!(queue = %name, error = %e, "a replicated queue's config does not decode");
                    return;
                }
            };
            let other = s
                .queues
                .read()
                .get(&name)
                .map(|q| q.incarnation)
                .filter(|i| *i != incarnation);
            if let Some(old) = other {
                remove_queue_group(s, &name, old).await;
            }
            // A queue with fewer copies than members: not run on the other nodes, which
            // send clients to its nodes.
            if let Some(on) = &on
                && !on.contains(&s.config.node_id)
            {
                if running(s, &name, incarnation).is_some() {
                    remove_queue_group(s, &name, incarnation).await;
                }
                remove_other_incarnations(s, &name, u64::MAX).await;
                point_elsewhere(s, &name, on);
                return;
            }
            if running(s, &name, incarnation).is_some() {
                apply_config(s, &name, incarnation, config).await;
                return;
            }
            // Another incarnation's files (a deletion this node missed) are not this one's.
            remove_other_incarnations(s, &name, incarnation).await;
            if let Err(e) = start_queue_group(s, &name, incarnation, config, members).await {
                tracing::error!(queue = %name, error = %e, "starting a replicated queue failed");
            }
        }
        CatalogEvent::Moved {
            name,
            incarnation,
            on,
        } => {
            let here = on.contains(&s.config.node_id);
            match (running(s, &name, incarnation).is_some(), here) {
                (false, true) => {
                    // A new copy: the group's leader brings it in (it never initialises).
                    let Some(entry) = s.catalog.entry(&name) else {
                        return;
                    };
                    let config = match crate::admin::decode_config(&entry.config) {
                        Ok(c) => replicated_queue_config(&c, on.len()),
                        Err(e) => {
                            tracing::error!(queue = %name, error = %e, "a replicated queue's config does not decode");
                            return;
                        }
                    };
                    s.broker.set_served_elsewhere(&name, None);
                    let first = Some(entry.members.unwrap_or_default());
                    if let Err(e) = start_queue_group(s, &name, incarnation, config, first).await {
                        tracing::error!(queue = %name, error = %e, "starting a replicated queue failed");
                    }
                }
                (true, false) => {
                    remove_queue_group(s, &name, incarnation).await;
                    point_elsewhere(s, &name, &on);
                }
                (false, false) => point_elsewhere(s, &name, &on),
                (true, true) => {}
            }
            tracing::info!(queue = %name, incarnation, nodes = ?on, "replicated queue moved");
        }
        CatalogEvent::Removed { name, incarnation } => {
            remove_queue_group(s, &name, incarnation).await;
            tracing::info!(queue = %name, incarnation, "replicated queue deleted");
        }
        CatalogEvent::Updated {
            name,
            incarnation,
            config,
        } => match crate::admin::decode_config(&config) {
            Ok(c) => {
                let n = s
                    .catalog
                    .entry(&name)
                    .map_or_else(|| cluster_size(s), |e| copies(s, &e));
                let c = replicated_queue_config(&c, n);
                apply_config(s, &name, incarnation, c).await;
            }
            Err(e) => {
                tracing::error!(queue = %name, error = %e, "a replicated queue's new config does not decode");
            }
        },
    }
}

/// Records `config` as the queue's and applies it to the queue if this node serves it.
async fn apply_config(s: &Arc<Shared>, name: &str, incarnation: u64, config: QueueConfig) {
    let served = {
        let queues = s.queues.read();
        let Some(q) = queues.get(name).filter(|q| q.incarnation == incarnation) else {
            return;
        };
        *q.applied.write() = config.clone();
        q.served.load(std::sync::atomic::Ordering::Acquire)
    };
    // The watcher, loading the queue meanwhile, compares after it set `served` (so one of the
    // two applies it).
    if served && let Err(e) = s.broker.reconfigure_external(name, config).await {
        tracing::warn!(queue = %name, error = %e, "applying a replicated queue's new config failed");
    }
}

/// Tells clients naming `name` here (a queue not kept on this node) to go to one of `on`
/// (refined to its leader by `track_elsewhere`).
fn point_elsewhere(s: &Shared, name: &str, on: &[u64]) {
    let at = on.iter().find_map(|id| addrs(s, *id)).map(|a| a.wire);
    s.broker.set_served_elsewhere(name, Some(at));
}

/// Stops `name`'s group of `incarnation` (its watcher, the queue in the broker, its Raft
/// tasks) and removes its files.
async fn remove_queue_group(s: &Arc<Shared>, name: &str, incarnation: u64) {
    let q = {
        let mut queues = s.queues.write();
        match queues.get(name) {
            Some(q) if q.incarnation == incarnation => queues.remove(name),
            _ => None,
        }
    };
    if let Some(q) = q {
        let _ = q.stop.send(true);
        let _ = q.watcher.await;
        q.backend.set_active(false);
        s.broker.remove_external(name).await;
        let g = q.group.clone();
        let _ = s.rt.spawn(async move { g.shutdown().await }).await;
    } else {
        s.broker.set_served_elsewhere(name, None);
    }
    let dir = s
        .config
        .data_dir
        .join("queues")
        .join(queue_dir_name(name, incarnation));
    remove_dir(dir).await;
}

async fn remove_dir(dir: PathBuf) {
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await {
        Ok(Ok(())) => tracing::debug!(dir = %shown, "removed a deleted replicated queue's files"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(e)) => {
            tracing::warn!(dir = %shown, error = %e, "removing a deleted replicated queue's files failed");
        }
        Err(e) => tracing::warn!(dir = %shown, error = %e, "removing files: task failed"),
    }
}

/// The directories under `[cluster] data_dir`/queues, parsed into (queue, incarnation).
async fn queue_dirs(s: &Shared) -> Vec<(String, u64)> {
    let root = s.config.data_dir.join("queues");
    tokio::task::spawn_blocking(move || {
        let Ok(rd) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let (name, inc) = parse_incarnation(&n)?;
                Some((name.to_string(), inc))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Removes the files of `name`'s incarnations other than `keep` (not running here).
async fn remove_other_incarnations(s: &Arc<Shared>, name: &str, keep: u64) {
    for (n, inc) in queue_dirs(s).await {
        if n == name && inc != keep && running(s, &n, inc).is_none() {
            remove_dir(
                s.config
                    .data_dir
                    .join("queues")
                    .join(queue_dir_name(&n, inc)),
            )
            .await;
        }
    }
}

/// Once the metadata group has applied every entry of its local log (at start), removes the
/// directory of every queue incarnation the catalog does not hold and no group runs: queues
/// deleted while this node was down, whose deletion it learnt from a snapshot.
async fn sweep_when_caught_up(s: Arc<Shared>) {
    let Some(meta) = s.meta.read().clone() else {
        return;
    };
    let mut metrics = meta.raft().metrics();
    loop {
        let done = {
            let m = metrics.borrow_and_update();
            m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index
        };
        if done {
            break;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
    for (name, inc) in queue_dirs(&s).await {
        if !s.catalog.holds(&name, inc) && running(&s, &name, inc).is_none() {
            tracing::info!(queue = %name, incarnation = inc, "removing the files of a replicated queue deleted meanwhile");
            remove_dir(
                s.config
                    .data_dir
                    .join("queues")
                    .join(queue_dir_name(&name, inc)),
            )
            .await;
        }
    }
}

async fn start_queue_group(
    s: &Arc<Shared>,
    name: &str,
    incarnation: u64,
    config: QueueConfig,
    first_members: Option<Vec<u64>>,
) -> Result<(), ClusterError> {
    if s.queues.read().contains_key(name) {
        return Ok(());
    }
    let base = s
        .config
        .data_dir
        .join("queues")
        .join(queue_dir_name(name, incarnation));
    let state_dir = base.join("state");
    let sm = Arc::new(DirStateMachine::new(state_dir.clone()));
    // The group's first membership: recorded with the declaration; before members were
    // recorded, the configured nodes (which a node that joined later must not trust: it was
    // not one of them).
    let me = s.config.node_id;
    let (first, may_initialize) = match first_members {
        Some(m) => {
            let m: BTreeSet<u64> = m.into_iter().collect();
            let mine = m.contains(&me);
            (m, mine)
        }
        None => (s.config.nodes.keys().copied().collect(), !s.config.join),
    };
    let first_addrs = cluster_addrs(s, &first);
    let group = {
        let (s2, n, b) = (s.clone(), name.to_string(), base.clone());
        s.rt.spawn(async move {
            let g = Group::open(
                &group_name(&n, incarnation),
                s2.config.node_id,
                &b.join("raft"),
                sm,
                Arc::new(members(&s2.config)),
                s2.link.clone(),
                s2.config.timing(),
            )
            .await?;
            let g = Arc::new(g);
            // One node starts the group's first election, at once: `initializer`. Had every
            // node initialised it as it applied the declaration, one applying it late (its
            // group did not exist yet when the leader's first appends came) would campaign
            // with a higher term and depose the new leader: the queue changed leaders in its
            // first seconds. The others join through the leader's appends, and initialise
            // only if none came within `INIT_FALLBACK` (that node may be down).
            if !may_initialize {
                // Brought in by the group's leader (it follows the metadata group's members).
            } else if initializer(&first, &n) == Some(me) {
                g.initialize(&first_addrs).await;
            } else {
                let (g2, m) = (g.clone(), first_addrs.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(INIT_FALLBACK).await;
                    let untouched = {
                        let metrics = g2.raft().metrics().borrow().clone();
                        metrics.current_leader.is_none() && metrics.last_log_index.is_none()
                    };
                    if untouched {
                        g2.initialize(&m).await;
                    }
                });
            }
            Ok::<_, ClusterError>(g)
        })
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))??
    };
    let backend = ReplicatedBackend::new(
        state_dir.clone(),
        Arc::new(RuntimeProposer {
            log: group.clone(),
            rt: s.rt.clone(),
        }),
    );
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let applied = Arc::new(RwLock::new(config));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_leadership(
        s.clone(),
        name.to_string(),
        Watched {
            config: applied.clone(),
            group: group.clone(),
            backend: backend.clone(),
            state_dir,
            served: served.clone(),
            stopped,
        },
    ));
    s.queues.write().insert(
        name.to_string(),
        QueueGroup {
            incarnation,
            group,
            served,
            applied,
            backend,
            stop,
            watcher,
        },
    );
    Ok(())
}

/// What a queue's watcher works with.
struct Watched {
    config: Arc<RwLock<QueueConfig>>,
    group: Arc<Group>,
    backend: ReplicatedBackend,
    state_dir: PathBuf,
    served: Arc<std::sync::atomic::AtomicBool>,
    /// `true`: the queue was deleted; the watcher ends (its remover unloads the queue).
    stopped: tokio::sync::watch::Receiver<bool>,
}

/// Serves the queue in the broker while this node leads its group, until it is deleted.
async fn watch_leadership(s: Arc<Shared>, name: String, w: Watched) {
    let Watched {
        config,
        group,
        backend,
        state_dir,
        served,
        mut stopped,
    } = w;
    let me = s.config.node_id;
    let mut metrics = group.raft().metrics();
    loop {
        if *stopped.borrow() {
            return;
        }
        let (leading, leader) = {
            let m = metrics.borrow_and_update();
            let leader = m.current_leader;
            // A leader that has not heard from a quorum within an election timeout may be cut
            // off in a minority (another leader may already serve the queue): it stops serving
            // (no confirms, no deliveries) until a quorum acknowledges it again.
            let leading = m.state == ServerState::Leader
                && m.current_leader == Some(me)
                && m.millis_since_quorum_ack
                    .is_some_and(|ms| ms < QUORUM_ACK_MS);
            (leading, leader)
        };
        if !leading {
            // Clients naming the queue here are told where it is served (or that it is elsewhere).
            let at = leader
                .filter(|l| *l != me)
                .and_then(|l| addrs(&s, l))
                .map(|a| a.wire);
            s.broker.set_served_elsewhere(&name, Some(at));
        }
        let is_served = served.load(std::sync::atomic::Ordering::Acquire);
        if leading && !is_served {
            let g = group.clone();
            let caught_up =
                s.rt.spawn(async move { g.caught_up().await })
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))
                    .and_then(|r| r);
            match caught_up {
                Ok(()) => {
                    backend.set_active(true);
                    let backend: Arc<dyn levee_store::Backend> = Arc::new(backend.clone());
                    let loaded = config.read().clone();
                    match s
                        .broker
                        .load_external(&name, loaded.clone(), state_dir.clone(), backend, 1)
                        .await
                    {
                        Ok(messages) => {
                            s.broker.set_served_elsewhere(&name, None);
                            served.store(true, std::sync::atomic::Ordering::Release);
                            tracing::info!(queue = %name, messages, "leading the replicated queue: serving it");
                            // A config change applied while the queue was loading.
                            let now = config.read().clone();
                            if now != loaded
                                && let Err(e) = s.broker.reconfigure_external(&name, now).await
                            {
                                tracing::warn!(queue = %name, error = %e, "applying a replicated queue's new config failed");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(queue = %name, error = %e, "loading the replicated queue failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(queue = %name, error = %e, "leader not caught up yet");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        } else if !leading && is_served {
            backend.set_active(false);
            s.broker.unload(&name).await;
            served.store(false, std::sync::atomic::Ordering::Release);
            tracing::info!(queue = %name, "no longer the leader of the replicated queue: stopped serving it");
        }
        // Metrics change on every leadership event; the quorum-ack age grows silently, so it is
        // also looked at on a tick.
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = stopped.changed() => if r.is_err() { return },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
}

fn status(s: &Shared) -> Status {
    let meta_leader = s.meta.read().as_ref().and_then(|g| g.leader());
    let mut queues: Vec<QueueStatus> = s
        .queues
        .read()
        .iter()
        .map(|(name, q)| {
            let m = q.group.raft().metrics().borrow().clone();
            let (log_entries, applied) = q.group.log_state();
            let last = m.last_log_index.unwrap_or(0);
            let lag = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, matched)| (*id, matched.map(|l| last.saturating_sub(l.index))))
                        .collect()
                })
                .unwrap_or_default();
            QueueStatus {
                name: name.clone(),
                incarnation: q.incarnation,
                leader: m.current_leader,
                served_here: q.served.load(std::sync::atomic::Ordering::Acquire),
                term: m.current_term,
                applied,
                log_entries,
                lag,
                voters: q.group.voters().into_iter().flatten().collect(),
            }
        })
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    // The members, and this node if it is not one (yet): clients find its wire address here.
    let mut ids = voters(s);
    ids.insert(s.config.node_id);
    Status {
        node: s.config.node_id,
        members: ids
            .into_iter()
            .map(|id| {
                let a = addrs(s, id);
                Member {
                    id,
                    cluster: a.as_ref().map(|a| a.cluster.clone()).unwrap_or_default(),
                    wire: a.map(|a| a.wire).unwrap_or_default(),
                }
            })
            .collect(),
        meta_leader,
        queues,
    }
}

/// Most connections the cluster listener holds at once (peers keep one per group and peer; a
/// connection past this is closed at once).
const MAX_PEER_CONNECTIONS: usize = 4096;

async fn serve(listener: TcpListener, s: Arc<Shared>) {
    let acceptor = levee_broker::security::Acceptor::new(s.broker.security());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "cluster listener: too many connections, closing one");
            continue;
        };
        let (s, acceptor) = (s.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let accepted = match acceptor.accept(tcp).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cluster connection: TLS handshake failed");
                    return;
                }
            };
            let mut stream: crate::link::Stream = Box::new(accepted.stream);
            if let Err(why) = crate::link::admit(s.broker.security(), &mut stream, peer).await {
                tracing::warn!(%peer, reason = %why, "cluster connection refused");
                return;
            }
            while let Ok(Some(rpc)) = read_frame::<_, Rpc>(&mut stream).await {
                let reply = handle(&s, rpc).await;
                if write_frame(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn group_of(s: &Shared, name: &str) -> Option<Arc<Group>> {
    if name == META {
        return s.meta.read().clone();
    }
    let (queue, incarnation) = parse_incarnation(name.strip_prefix("queue/")?)?;
    s.queues
        .read()
        .get(queue)
        .filter(|q| q.incarnation == incarnation)
        .map(|q| q.group.clone())
}

async fn handle(s: &Arc<Shared>, rpc: Rpc) -> RpcReply {
    match rpc {
        Rpc::Append(g, req) => match group_of(s, &g) {
            Some(g) => RpcReply::Append(g.raft().append_entries(req).await),
            None => RpcReply::NoGroup,
        },
        Rpc::Vote(g, req) => match group_of(s, &g) {
            Some(g) => RpcReply::Vote(g.raft().vote(req).await),
            None => RpcReply::NoGroup,
        },
        Rpc::Snapshot(g, req) => match group_of(s, &g) {
            Some(g) => RpcReply::Snapshot(g.raft().install_snapshot(req).await),
            None => RpcReply::NoGroup,
        },
        Rpc::Admin(req) => RpcReply::Admin(admin(s, req).await),
        // Admitted already (see `serve`): a peer that logs in though none is needed.
        Rpc::Hello { .. } => RpcReply::Welcome,
        Rpc::Forward(frame) => RpcReply::Forwarded(crate::forward::serve(&s.broker, frame).await),
    }
}

async fn admin(s: &Arc<Shared>, req: AdminRequest) -> AdminReply {
    // The config as stored, for `copies` copies (`None`: as requested, 2 up to the member
    // count; 0 or 1 means every member), and whether that is fewer than the members.
    let checked_config = |name: &str, config: &[u8], copies: Option<usize>| {
        levee_proto::validate_queue_name(name).map_err(|e| ClusterError::Config(e.to_string()))?;
        crate::admin::decode_config(config).and_then(|c| {
            let size = cluster_size(s);
            let n = copies.unwrap_or(match usize::from(c.replicas) {
                r @ 2.. => r.min(size),
                _ => size,
            });
            let c = replicated_queue_config(&c, n);
            c.validate(name)
                .map_err(|e| ClusterError::Config(e.to_string()))?;
            Ok((crate::admin::encode_config(name, &c)?, n < size, n))
        })
    };
    let cmd = match &req {
        AdminRequest::Status => return AdminReply::Status(status(s)),
        AdminRequest::AddNode { .. } | AdminRequest::RemoveNode { .. } => {
            return change_members(s, req).await;
        }
        AdminRequest::SetVoters {
            queue,
            incarnation,
            voters,
        } => return set_voters(s, queue, *incarnation, voters).await,
        AdminRequest::Declare { name, config } => match checked_config(name, config, None) {
            Ok((config, true, n)) => CatalogCmd::CreateSubset {
                name: name.clone(),
                config,
                members: pick(&voters(s), n, name),
            },
            Ok((config, false, _)) => CatalogCmd::CreateOn {
                name: name.clone(),
                config,
                members: voters(s).into_iter().collect(),
            },
            Err(e) => return AdminReply::Error(e.to_string()),
        },
        AdminRequest::Update { name, config } => {
            let n = s.catalog.entry(name).map(|e| copies(s, &e));
            match checked_config(name, config, n) {
                Ok((config, _, _)) => CatalogCmd::Update {
                    name: name.clone(),
                    config,
                },
                Err(e) => return AdminReply::Error(e.to_string()),
            }
        }
        AdminRequest::Delete { name } => CatalogCmd::Delete { name: name.clone() },
    };
    let Some(meta) = s.meta.read().clone() else {
        return AdminReply::Error("the metadata group is not open yet".into());
    };
    let cmd = match bincode::serialize(&cmd) {
        Ok(c) => c,
        Err(e) => return AdminReply::Error(e.to_string()),
    };
    match meta.propose(cmd).await {
        Ok(r) => {
            // Followers learn of the commit at once, not a heartbeat later.
            meta.nudge().await;
            let changed = r.first() == Some(&1);
            match req {
                AdminRequest::Declare { .. } => AdminReply::Declared(changed),
                AdminRequest::Update { .. } => AdminReply::Updated(changed),
                AdminRequest::Delete { .. } => AdminReply::Deleted(changed),
                AdminRequest::Status
                | AdminRequest::AddNode { .. }
                | AdminRequest::RemoveNode { .. }
                | AdminRequest::SetVoters { .. } => AdminReply::Status(status(s)),
            }
        }
        Err(ClusterError::NotLeader {
            leader: Some(l), ..
        }) if l != s.config.node_id => forward(s, l, req).await,
        Err(e) => AdminReply::Error(e.to_string()),
    }
}

/// Sends `req` on to node `leader` (the metadata leader), which answers it itself.
async fn forward(s: &Arc<Shared>, leader: u64, req: AdminRequest) -> AdminReply {
    match addrs(s, leader) {
        Some(a) => match crate::admin::request_via(&s.link, &a.cluster, req).await {
            Ok(r) => r,
            Err(e) => AdminReply::Error(e.to_string()),
        },
        None => AdminReply::Error(format!("leader {leader} has no known address")),
    }
}

/// `add-node` / `remove-node`, on the metadata leader (forwarded there): records a new node's
/// addresses in the catalog, changes the metadata group's voters (a new node first catches up
/// as a learner), then waits (at most [`MEMBERS_CATCH_UP`]) for every queue group to follow
/// (each queue's leader makes its group's voters the metadata group's: `reconcile`).
async fn change_members(s: &Arc<Shared>, req: AdminRequest) -> AdminReply {
    let Some(meta) = s.meta.read().clone() else {
        return AdminReply::Error("the metadata group is not open yet".into());
    };
    if !meta.leading() {
        return match meta.leader() {
            Some(l) if l != s.config.node_id => forward(s, l, req).await,
            _ => AdminReply::Error("no metadata leader known yet; try again".into()),
        };
    }
    // Both sides of a change left half done (its leader died): this one takes it on.
    let uniform = meta.voters();
    let current = meta.voter_ids();
    let mut target = cluster_addrs(s, &current);
    match &req {
        AdminRequest::AddNode { id, cluster, wire } => {
            if *id == 0 {
                return AdminReply::Error("node ids start at 1".into());
            }
            let node = CatalogCmd::Node {
                id: *id,
                cluster: cluster.clone(),
                wire: wire.clone(),
            };
            let recorded = match bincode::serialize(&node) {
                Ok(cmd) => meta.propose(cmd).await,
                Err(e) => return AdminReply::Error(e.to_string()),
            };
            if let Err(e) = recorded {
                return AdminReply::Error(e.to_string());
            }
            // This node's own file wins for where it reaches the new node.
            let reach = addrs(s, *id).map_or_else(|| cluster.clone(), |a| a.cluster);
            target.insert(*id, reach);
        }
        AdminRequest::RemoveNode { id } => {
            if !current.contains(id) {
                return AdminReply::Error(format!("node {id} is not a member"));
            }
            if current.len() == 1 {
                return AdminReply::Error("the last member cannot be removed".into());
            }
            target.remove(id);
        }
        _ => return AdminReply::Error("not a membership change".into()),
    }
    if uniform != Some(target.keys().copied().collect::<BTreeSet<u64>>())
        && let Err(e) = meta.change_voters(&target, MEMBERS_CATCH_UP).await
    {
        return AdminReply::Error(e.to_string());
    }
    meta.nudge().await;
    let want: BTreeSet<u64> = target.keys().copied().collect();
    if let AdminRequest::RemoveNode { id } = &req
        && let Err(e) = move_subsets_off(s, &meta, *id, &want).await
    {
        return AdminReply::Error(e);
    }
    let pending = follow_queues(s, &target).await;
    AdminReply::Members {
        voters: want.into_iter().collect(),
        pending,
    }
}

/// Moves every queue with fewer copies than members off node `gone`: onto a member it is
/// not on yet (the least loaded, then the lowest id), or one copy fewer if there is none.
async fn move_subsets_off(
    s: &Arc<Shared>,
    meta: &Arc<Group>,
    gone: u64,
    members: &BTreeSet<u64>,
) -> Result<(), String> {
    let entries = s.catalog.entries();
    let mut load: BTreeMap<u64, usize> = members.iter().map(|m| (*m, 0)).collect();
    for (_, e) in &entries {
        for id in e.on.iter().flatten() {
            if let Some(n) = load.get_mut(id) {
                *n += 1;
            }
        }
    }
    for (name, e) in entries {
        let Some(on) = e.on.clone() else { continue };
        if !on.contains(&gone) {
            continue;
        }
        let mut new: Vec<u64> = on.iter().copied().filter(|n| *n != gone).collect();
        let spare = load
            .iter()
            .filter(|(id, _)| !on.contains(id))
            .min_by_key(|(id, n)| (**n, **id))
            .map(|(id, _)| *id);
        if let Some(id) = spare {
            new.push(id);
            *load.entry(id).or_default() += 1;
        }
        let cmd = CatalogCmd::QueueMembers {
            name: name.clone(),
            incarnation: e.incarnation,
            members: new,
        };
        let cmd = bincode::serialize(&cmd).map_err(|e| e.to_string())?;
        meta.propose(cmd)
            .await
            .map_err(|e| format!("moving {name} off node {gone}: {e}"))?;
    }
    meta.nudge().await;
    Ok(())
}

/// Asks each queue group's leader to make `target` its voters (it may be this node, or the
/// node being removed: it removes itself before it is stopped), until every group this node
/// runs shows them or [`MEMBERS_CATCH_UP`] has passed; returns the queues not there yet.
async fn follow_queues(s: &Arc<Shared>, target: &BTreeMap<u64, String>) -> Vec<String> {
    let want: BTreeSet<u64> = target.keys().copied().collect();
    let me = s.config.node_id;
    let deadline = tokio::time::Instant::now() + MEMBERS_CATCH_UP;
    loop {
        let mut pending = Vec::new();
        for (name, entry, group) in groups_here(s, false) {
            let incarnation = entry.incarnation;
            let want = queue_target(&entry, &want);
            if !want.contains(&me) && entry.on.is_some() {
                continue; // moved off this node: its group stops here
            }
            let target = &cluster_addrs(s, &want);
            let voters = group.voters();
            // This node removed itself: it sees its groups only up to its own removal.
            let done = voters
                .as_ref()
                .is_some_and(|v| *v == want || (!want.contains(&me) && !v.contains(&me)));
            if done {
                continue;
            }
            pending.push(name.clone());
            if voters.is_none() {
                continue; // a change under way
            }
            let asked = match group.leader() {
                Some(l) if l == me => group
                    .change_voters(target, QUEUE_CATCH_UP)
                    .await
                    .map_err(|e| e.to_string()),
                Some(l) => match addrs(s, l) {
                    Some(a) => {
                        let req = AdminRequest::SetVoters {
                            queue: name.clone(),
                            incarnation,
                            voters: target.clone(),
                        };
                        match crate::admin::request_via(&s.link, &a.cluster, req).await {
                            Ok(AdminReply::Members { .. }) => Ok(()),
                            Ok(other) => Err(format!("{other:?}")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    None => Err(format!("leader {l} has no known address")),
                },
                None => Err("no leader known".into()),
            };
            if let Err(e) = asked {
                tracing::debug!(queue = %name, error = %e, "a queue's members did not change yet");
            }
        }
        pending.extend(follow_away(s, &want).await);
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return pending;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The queue groups this node runs (`led`: only those it leads), with their catalog entries.
fn groups_here(s: &Shared, led: bool) -> Vec<(String, crate::admin::Entry, Arc<Group>)> {
    let groups: Vec<(String, u64, Arc<Group>)> = s
        .queues
        .read()
        .iter()
        .filter(|(_, q)| !led || q.group.leading())
        .map(|(n, q)| (n.clone(), q.incarnation, q.group.clone()))
        .collect();
    groups
        .into_iter()
        .filter_map(|(name, incarnation, group)| {
            let entry = s.catalog.entry(&name)?;
            (entry.incarnation == incarnation).then_some((name, entry, group))
        })
        .collect()
}

/// [`follow_queues`] for the queues this node keeps no copy of: asks their nodes where each
/// is served and with which voters, and their leaders to change them. Returns the queues not
/// there yet.
async fn follow_away(s: &Arc<Shared>, members: &BTreeSet<u64>) -> Vec<String> {
    let me = s.config.node_id;
    let away: Vec<(String, crate::admin::Entry)> = s
        .catalog
        .entries()
        .into_iter()
        .filter(|(_, e)| e.on.as_ref().is_some_and(|on| !on.contains(&me)))
        .collect();
    let nodes: BTreeSet<u64> = away
        .iter()
        .flat_map(|(_, e)| e.on.iter().flatten().copied())
        .collect();
    let answers = statuses_of(s, nodes, 500).await;
    let mut pending = Vec::new();
    for (name, entry) in away {
        let want = queue_target(&entry, members);
        let led = answers.iter().find_map(|(id, st)| {
            st.queues
                .iter()
                .find(|q| q.name == name && q.incarnation == entry.incarnation)
                .filter(|q| q.leader == Some(*id))
                .map(|q| (*id, q.voters.iter().copied().collect::<BTreeSet<u64>>()))
        });
        match led {
            Some((_, voters)) if voters == want => {}
            Some((leader, _)) => {
                pending.push(name.clone());
                if let Some(a) = addrs(s, leader) {
                    let req = AdminRequest::SetVoters {
                        queue: name.clone(),
                        incarnation: entry.incarnation,
                        voters: cluster_addrs(s, &want),
                    };
                    let _ = crate::admin::request_via(&s.link, &a.cluster, req).await;
                }
            }
            None => pending.push(name.clone()),
        }
    }
    pending
}

/// The status of each of `nodes` that answers within `ms` milliseconds.
async fn statuses_of(s: &Shared, nodes: BTreeSet<u64>, ms: u64) -> BTreeMap<u64, Status> {
    let mut answers = BTreeMap::new();
    for id in nodes {
        let Some(a) = addrs(s, id) else { continue };
        let asked = tokio::time::timeout(
            std::time::Duration::from_millis(ms),
            crate::admin::request_via(&s.link, &a.cluster, AdminRequest::Status),
        )
        .await;
        if let Ok(Ok(AdminReply::Status(st))) = asked {
            answers.insert(id, st);
        }
    }
    answers
}

/// For each queue with fewer copies than members that this node does not keep: asks its
/// nodes (one status request per node for all such queues) where it is served, and sends
/// clients there (else to a node of it that answers).
async fn track_elsewhere(s: &Arc<Shared>) {
    let me = s.config.node_id;
    let away: Vec<(String, Vec<u64>)> = s
        .catalog
        .entries()
        .into_iter()
        .filter_map(|(n, e)| e.on.filter(|on| !on.contains(&me)).map(|on| (n, on)))
        .collect();
    if away.is_empty() {
        return;
    }
    let nodes: BTreeSet<u64> = away.iter().flat_map(|(_, on)| on.iter().copied()).collect();
    let answers = statuses_of(s, nodes, 300).await;
    for (name, on) in away {
        let serving = on.iter().find(|id| {
            answers
                .get(id)
                .is_some_and(|st| st.queues.iter().any(|q| q.name == name && q.served_here))
        });
        let alive = on.iter().find(|id| answers.contains_key(id));
        if let Some(id) = serving.or(alive) {
            let at = addrs(s, *id).map(|a| a.wire);
            s.broker.set_served_elsewhere(&name, Some(at));
        }
    }
}

/// [`AdminRequest::SetVoters`], on the queue group's leader.
async fn set_voters(
    s: &Arc<Shared>,
    queue: &str,
    incarnation: u64,
    voters: &BTreeMap<u64, String>,
) -> AdminReply {
    let group = s
        .queues
        .read()
        .get(queue)
        .filter(|q| q.incarnation == incarnation)
        .map(|q| q.group.clone());
    let Some(group) = group else {
        return AdminReply::Error(format!("this node does not run {queue}'s group"));
    };
    if !group.leading() {
        return AdminReply::Error(format!("this node does not lead {queue}'s group"));
    }
    // Where this node reaches them: its own file wins over the sender's addresses.
    let voters: BTreeMap<u64, String> = voters
        .iter()
        .map(|(id, a)| (*id, addrs(s, *id).map_or_else(|| a.clone(), |n| n.cluster)))
        .collect();
    match group.change_voters(&voters, QUEUE_CATCH_UP).await {
        Ok(()) => AdminReply::Members {
            voters: voters.keys().copied().collect(),
            pending: Vec::new(),
        },
        Err(e) => AdminReply::Error(e.to_string()),
    }
}

/// Every [`RECONCILE_EVERY`], makes the voters of each queue group this node leads the
/// metadata group's (committed) voters: a node added to the cluster becomes a replica of every
/// queue (as a learner until it has caught up), a removed one stops being one. Runs until the
/// node stops.
async fn reconcile_memberships(s: std::sync::Weak<Shared>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let Some(s) = s.upgrade() else {
            return;
        };
        tick += 1;
        if tick.is_multiple_of(2) {
            track_elsewhere(&s).await;
        }
        let Some(target) = committed_voters(&s) else {
            continue;
        };
        for (name, entry, group) in groups_here(&s, true) {
            let target = queue_target(&entry, &target);
            let uniform = group.voters();
            if uniform.as_ref() == Some(&target) {
                continue;
            }
            // A joint membership is a change under way (this node's own, or `follow_queues`'),
            // or one whose leader died half-way: taken on to the target; refused while the
            // change is still running.
            let to = cluster_addrs(&s, &target);
            match group.change_voters(&to, QUEUE_CATCH_UP).await {
                Ok(()) => {
                    tracing::info!(queue = %name, voters = ?target, "replicated queue follows the cluster's members");
                }
                Err(e) if uniform.is_none() => {
                    tracing::debug!(queue = %name, error = %e, "a replicated queue's membership change is under way");
                }
                Err(e) => {
                    tracing::warn!(queue = %name, error = %e, "changing a replicated queue's members failed; retrying");
                }
            }
        }
    }
}
