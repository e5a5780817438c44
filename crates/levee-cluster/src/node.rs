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
//! - Every node starts every group with the same initial membership (all configured nodes):
//!   openraft's first membership entry is then identical everywhere, so initialising on each
//!   node is safe. The metadata group is initialised on every node at start; a new queue group
//!   only on one node, by a hash of its name (the others join through its leader's appends, or initialise
//!   after `INIT_FALLBACK` of silence), so a node applying a declaration late does not depose
//!   the group's first leader.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use levee_broker::Broker;
use levee_proto::{Durability, Fsync, QueueConfig};
use openraft::ServerState;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::{AdminReply, AdminRequest, Catalog, CatalogCmd, Member, QueueStatus, Status};
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

/// The node that initialises a new queue group (and so most likely leads it first): picked by
/// a hash of the queue's name, so that the leaders of many queues spread over the nodes; the
/// same on every node.
fn initializer(config: &ClusterConfig, queue: &str) -> Option<u64> {
    let ids: Vec<u64> = config.nodes.keys().copied().collect();
    let i = crc32c::crc32c(queue.as_bytes()) as usize % ids.len().max(1);
    ids.get(i).copied()
}

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

/// The config a replicated queue gets from `requested` in a cluster of `nodes` nodes: always on
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
    nodes: usize,
}

/// How long a declaration waits for the metadata group to take it, and then for its queue's
/// group to have a serving leader.
const DECLARE_SERVED_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl levee_broker::Replication for ClusterReplication {
    fn replicas(&self) -> u8 {
        u8::try_from(self.nodes).unwrap_or(u8::MAX)
    }

    fn declare(
        &self,
        name: String,
        config: QueueConfig,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bool, levee_broker::BrokerError>> + Send>,
    > {
        let (shared, nodes) = (self.shared.clone(), self.nodes);
        Box::pin(async move {
            use levee_broker::BrokerError;
            let invalid = |reason: String| {
                BrokerError::Proto(levee_proto::ProtoError::InvalidConfig {
                    field: "replicas",
                    reason,
                })
            };
            if usize::from(config.replicas) != nodes {
                return Err(invalid(format!(
                    "this cluster keeps a replicated queue on each of its {nodes} nodes: \
                     replicas must be 1 (a local queue) or {nodes}, not {}",
                    config.replicas
                )));
            }
            let s = shared
                .upgrade()
                .ok_or_else(|| BrokerError::Internal("the cluster node stopped".into()))?;
            let config = replicated_queue_config(&config, nodes);
            if let Some(existing) = s.catalog.config_of(&name)
                && let Ok(existing) = crate::admin::decode_config(&existing)
                && existing != config
            {
                return Err(BrokerError::ConfigMismatch {
                    queue: name.clone(),
                    differences: existing.describe_differences(&config),
                });
            }
            let encoded =
                crate::admin::encode_config(&name, &config).map_err(|e| invalid(e.to_string()))?;
            // The name and config are checked: what can still fail is the metadata group's
            // availability (no leader known for a moment, a forward that failed, no quorum).
            // Retried, as a client would, for a while.
            let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
            let mut pause = std::time::Duration::from_millis(50);
            let created = loop {
                let request = AdminRequest::Declare {
                    name: name.clone(),
                    config: encoded.clone(),
                };
                let s2 = s.clone();
                let reply =
                    s.rt.spawn(async move { admin(&s2, request).await })
                        .await
                        .map_err(|e| BrokerError::Internal(e.to_string()))?;
                match reply {
                    AdminReply::Declared(created) => break created,
                    AdminReply::Error(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(queue = %name, error = %e, "declaring a replicated queue: retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_millis(500));
                    }
                    AdminReply::Error(e) => {
                        return Err(BrokerError::Internal(format!(
                            "the cluster did not take the declaration of {name} within {} s: {e}",
                            DECLARE_SERVED_WITHIN.as_secs()
                        )));
                    }
                    AdminReply::Status(_) => {
                        return Err(BrokerError::Internal("unexpected admin reply".into()));
                    }
                }
            };
            let deadline = tokio::time::Instant::now() + DECLARE_SERVED_WITHIN;
            while tokio::time::Instant::now() < deadline {
                let served = s.queues.read().get(&name).is_some_and(|q| {
                    let leader = q.group.raft().metrics().borrow().current_leader;
                    leader.is_some_and(|l| {
                        l != s.config.node_id || q.served.load(std::sync::atomic::Ordering::Acquire)
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
}

struct QueueGroup {
    group: Arc<Group>,
    served: Arc<std::sync::atomic::AtomicBool>,
}

struct Shared {
    config: ClusterConfig,
    broker: Broker,
    /// The metadata group's state: the replicated queues and their configs.
    catalog: Arc<Catalog>,
    rt: tokio::runtime::Handle,
    meta: RwLock<Option<Arc<Group>>>,
    queues: RwLock<HashMap<String, QueueGroup>>,
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

impl Node {
    /// Starts the node: binds the cluster listener, opens the metadata group and every queue
    /// group the catalog names, and serves each queue this node leads in `broker`. Call from
    /// the broker's runtime (queue watchers run there).
    pub async fn start(config: ClusterConfig, broker: Broker) -> Result<Node, ClusterError> {
        config.validate()?;
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
        let (added_tx, mut added_rx) = mpsc::unbounded_channel();
        let catalog = Arc::new(Catalog::new(added_tx));
        let shared = Arc::new(Shared {
            config,
            broker,
            catalog: catalog.clone(),
            rt: rt.clone(),
            meta: RwLock::new(None),
            queues: RwLock::new(HashMap::new()),
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
            nodes: shared.config.nodes.len(),
        }));
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
                    s.config.timing(),
                )
                .await?;
                g.initialize(&members(&s.config)).await;
                Ok::<_, ClusterError>(Arc::new(g))
            })
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))??
        };
        *shared.meta.write() = Some(meta);
        // Queue groups, as the catalog names them (at start from its snapshot and log, later
        // as declarations commit).
        let s = shared.clone();
        tokio::spawn(async move {
            while let Some((name, config)) = added_rx.recv().await {
                let started = match crate::admin::decode_config(&config) {
                    Ok(config) => start_queue_group(&s, &name, config).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
                    tracing::error!(queue = %name, error = %e, "starting a replicated queue failed");
                }
            }
        });
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

async fn start_queue_group(
    s: &Arc<Shared>,
    name: &str,
    config: QueueConfig,
) -> Result<(), ClusterError> {
    if s.queues.read().contains_key(name) {
        return Ok(());
    }
    let base = s.config.data_dir.join("queues").join(name);
    let state_dir = base.join("state");
    let sm = Arc::new(DirStateMachine::new(state_dir.clone()));
    let group = {
        let (s2, n, b) = (s.clone(), name.to_string(), base.clone());
        s.rt.spawn(async move {
            let g = Group::open(
                &format!("queue/{n}"),
                s2.config.node_id,
                &b.join("raft"),
                sm,
                Arc::new(members(&s2.config)),
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
            if initializer(&s2.config, &n) == Some(s2.config.node_id) {
                g.initialize(&members(&s2.config)).await;
            } else {
                let (g2, m) = (g.clone(), members(&s2.config));
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
    s.queues.write().insert(
        name.to_string(),
        QueueGroup {
            group: group.clone(),
            served: served.clone(),
        },
    );
    tokio::spawn(watch_leadership(
        s.clone(),
        name.to_string(),
        replicated_queue_config(&config, s.config.nodes.len()),
        group,
        backend,
        state_dir,
        served,
    ));
    Ok(())
}

/// Serves the queue in the broker while this node leads its group.
async fn watch_leadership(
    s: Arc<Shared>,
    name: String,
    config: QueueConfig,
    group: Arc<Group>,
    backend: ReplicatedBackend,
    state_dir: PathBuf,
    served: Arc<std::sync::atomic::AtomicBool>,
) {
    let me = s.config.node_id;
    let mut metrics = group.raft().metrics();
    loop {
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
                .and_then(|l| s.config.nodes.get(&l))
                .map(|a| a.wire.clone());
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
                    match s
                        .broker
                        .load_external(&name, config.clone(), state_dir.clone(), backend, 1)
                        .await
                    {
                        Ok(messages) => {
                            s.broker.set_served_elsewhere(&name, None);
                            served.store(true, std::sync::atomic::Ordering::Release);
                            tracing::info!(queue = %name, messages, "leading the replicated queue: serving it");
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
                leader: m.current_leader,
                served_here: q.served.load(std::sync::atomic::Ordering::Acquire),
                term: m.current_term,
                applied,
                log_entries,
                lag,
            }
        })
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        node: s.config.node_id,
        members: s
            .config
            .nodes
            .iter()
            .map(|(id, a)| Member {
                id: *id,
                cluster: a.cluster.clone(),
                wire: a.wire.clone(),
            })
            .collect(),
        meta_leader,
        queues,
    }
}

async fn serve(listener: TcpListener, s: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let s = s.clone();
        tokio::spawn(async move {
            while let Ok(Some(rpc)) = read_frame::<Rpc>(&mut stream).await {
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
    let q = name.strip_prefix("queue/")?;
    s.queues.read().get(q).map(|q| q.group.clone())
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
    }
}

async fn admin(s: &Arc<Shared>, req: AdminRequest) -> AdminReply {
    match req {
        AdminRequest::Status => AdminReply::Status(status(s)),
        AdminRequest::Declare { name, config } => {
            if let Err(e) = levee_proto::validate_queue_name(&name) {
                return AdminReply::Error(e.to_string());
            }
            let checked = crate::admin::decode_config(&config).and_then(|c| {
                let c = replicated_queue_config(&c, s.config.nodes.len());
                c.validate(&name)
                    .map_err(|e| ClusterError::Config(e.to_string()))?;
                crate::admin::encode_config(&name, &c)
            });
            let config = match checked {
                Ok(c) => c,
                Err(e) => return AdminReply::Error(e.to_string()),
            };
            let Some(meta) = s.meta.read().clone() else {
                return AdminReply::Error("the metadata group is not open yet".into());
            };
            let cmd = match bincode::serialize(&CatalogCmd::Declare {
                name: name.clone(),
                config: config.clone(),
            }) {
                Ok(c) => c,
                Err(e) => return AdminReply::Error(e.to_string()),
            };
            match meta.propose(cmd).await {
                Ok(r) => AdminReply::Declared(r.first() == Some(&1)),
                Err(ClusterError::NotLeader {
                    leader: Some(l), ..
                }) if l != s.config.node_id => match s.config.nodes.get(&l) {
                    // Forwarded once to the leader (which answers itself).
                    Some(a) => {
                        match crate::admin::request(
                            &a.cluster,
                            AdminRequest::Declare { name, config },
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(e) => AdminReply::Error(e.to_string()),
                        }
                    }
                    None => AdminReply::Error(format!("leader {l} is not a configured node")),
                },
                Err(e) => AdminReply::Error(e.to_string()),
            }
        }
    }
}
