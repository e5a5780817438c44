//! A seeded simulation of the Raft integration: five [`Raft`] nodes with Levee's own storage
//! adapters (`store`: the fsynced log, the snapshot files) and openraft configured as a group
//! is (`raft_config`, with snapshots every 40 entries so that lagging nodes get them), on one
//! tokio thread with virtual time, talking through an in-memory network that a seeded fault
//! schedule cuts (partitions, a leader isolated in a minority, one-way links), makes lossy and
//! slow, while nodes are stopped and started again on their files, the voters change (3 to 5
//! of the five, the others learners) and a client keeps proposing.
//!
//! Checked all along and at the end:
//! - **votes are never taken back**, across restarts included (a forgotten vote lets a second
//!   candidate win where the first already had a majority: split brain). openraft without
//!   `single-term-leader` allows several leaders per term, ordered by (term, node id), so
//!   "one leader per term" is not its invariant;
//! - **state machine safety**: every node applies the same command at each position of its
//!   state (no log divergence survives into a state machine, snapshots included);
//! - **durability of acknowledged writes**: every proposal answered `Ok` is, after the faults
//!   heal, applied exactly once on every node, and every node holds the same state.
//!
//! `LEVEE_RAFT_SIM_RESTARTS=0` leaves the stops, restarts and bounces out.
//! `LEVEE_RAFT_SIM_SEEDS=N` runs seeds 1..=N (default 5), `LEVEE_RAFT_SIM_SEED=S` only seed S,
//! `LEVEE_RAFT_SIM_EVENTS` fault events per seed (default 100). The fault schedule and the
//! network's drops and delays come from the seed; openraft draws its election timeouts from
//! its own thread RNG, so a seed reproduces the faults, not every interleaving.
//!
//! A stop here is a clean process stop (what was appended is on disk: the log fsyncs before it
//! acknowledges); torn writes and lost fsyncs are the log store's own tests'.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, ServerState};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Cmd, Timing, TypeConfig, store};
use crate::error::ClusterError;
use crate::replicated_log::StateMachine;

const NODES: u64 = 5;

/// What every node applied, position by position, and what went wrong.
#[derive(Default)]
struct History {
    at: Mutex<Vec<Vec<u8>>>,
    /// Every leadership seen: (term, node).
    leaders: Mutex<BTreeSet<(u64, u64)>>,
    /// Each node's highest vote seen, across its restarts.
    votes: Mutex<BTreeMap<u64, openraft::Vote<u64>>>,
    violations: Mutex<Vec<String>>,
}

impl History {
    fn applied(&self, node: u64, pos: usize, cmd: &[u8]) {
        let mut at = self.at.lock();
        if pos < at.len() {
            if at[pos] != cmd {
                self.violations.lock().push(format!(
                    "node {node} applied {:?} at position {pos}, another node {:?}",
                    String::from_utf8_lossy(cmd),
                    String::from_utf8_lossy(&at[pos])
                ));
            }
        } else if pos == at.len() {
            at.push(cmd.to_vec());
        } else {
            self.violations.lock().push(format!(
                "node {node} applied position {pos} past the known {}",
                at.len()
            ));
        }
    }

    fn leader(&self, term: u64, node: u64) {
        self.leaders.lock().insert((term, node));
    }

    /// A node's vote never goes back, not even across a restart (it is persisted before it
    /// is acted on): one that did could grant a second vote for a leader it already refused.
    fn vote(&self, node: u64, vote: openraft::Vote<u64>) {
        let mut votes = self.votes.lock();
        match votes.get(&node) {
            Some(max) if vote < *max => self.violations.lock().push(format!(
                "node {node}'s vote went back from {max} to {vote} (a forgotten vote)"
            )),
            Some(max) if vote <= *max => {}
            _ => {
                votes.insert(node, vote);
            }
        }
    }
}

/// A state machine that records its commands in order.
struct Recorder {
    node: u64,
    applied: Mutex<Vec<Vec<u8>>>,
    history: Arc<History>,
}

impl StateMachine for Recorder {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let mut a = self.applied.lock();
        let pos = a.len();
        a.push(command.to_vec());
        self.history.applied(self.node, pos, command);
        (pos as u64).to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Result<Vec<u8>, ClusterError> {
        bincode::serialize(&*self.applied.lock()).map_err(|e| ClusterError::Raft(e.to_string()))
    }

    fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), ClusterError> {
        let v: Vec<Vec<u8>> = match snapshot {
            Some(b) => bincode::deserialize(b).map_err(|e| ClusterError::Raft(e.to_string()))?,
            None => Vec::new(),
        };
        for (pos, cmd) in v.iter().enumerate() {
            self.history.applied(self.node, pos, cmd);
        }
        *self.applied.lock() = v;
        Ok(())
    }
}

/// The in-memory network: who is up, which links are cut, how lossy it is.
struct Router {
    nodes: Mutex<BTreeMap<u64, Raft<TypeConfig>>>,
    /// (from, to): messages from `from` to `to` are lost.
    cut: Mutex<BTreeSet<(u64, u64)>>,
    rng: Mutex<StdRng>,
    drop_permille: AtomicU32,
}

impl Router {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.rng.lock().random_range(1..12))
    }

    fn passes(&self, from: u64, to: u64) -> bool {
        let lost =
            self.rng.lock().random_range(0..1000) < self.drop_permille.load(Ordering::Relaxed);
        !lost && !self.cut.lock().contains(&(from, to))
    }
}

struct SimNet {
    from: u64,
    router: Arc<Router>,
}

impl RaftNetworkFactory<TypeConfig> for SimNet {
    type Network = SimConn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimConn {
        SimConn {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

struct SimConn {
    from: u64,
    to: u64,
    router: Arc<Router>,
}

fn lost(why: &str) -> Unreachable {
    Unreachable::new(&std::io::Error::other(why.to_string()))
}

impl SimConn {
    /// One request and its reply over the simulated links, within `ttl`: the peer's answer,
    /// its error as a remote one, or a lost message as `Unreachable`.
    async fn call<T, E, F, Fut>(
        &self,
        ttl: Duration,
        f: F,
    ) -> Result<T, RPCError<u64, BasicNode, E>>
    where
        E: std::error::Error,
        F: FnOnce(Raft<TypeConfig>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let r = &self.router;
        let trip = async {
            tokio::time::sleep(r.delay()).await;
            if !r.passes(self.from, self.to) {
                return Err(lost("request lost"));
            }
            let Some(target) = r.nodes.lock().get(&self.to).cloned() else {
                return Err(lost("node down"));
            };
            let out = f(target).await;
            tokio::time::sleep(r.delay()).await;
            if !r.passes(self.to, self.from) {
                return Err(lost("reply lost"));
            }
            Ok(out)
        };
        match tokio::time::timeout(ttl, trip).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
            Ok(Err(u)) => Err(RPCError::Unreachable(u)),
            Err(_) => Err(RPCError::Unreachable(lost("timeout"))),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(
            option.hard_ttl(),
            |r| async move { r.append_entries(rpc).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(option.hard_ttl(), |r| async move {
            r.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(option.hard_ttl(), |r| async move { r.vote(rpc).await })
            .await
    }
}

/// The simulated cluster.
struct Sim {
    dir: tempfile::TempDir,
    router: Arc<Router>,
    history: Arc<History>,
    /// Each running node's recorder (its state machine).
    recorders: Mutex<BTreeMap<u64, Arc<Recorder>>>,
    /// Each node's current directory generation (see `stop_node`).
    generation: Mutex<BTreeMap<u64, u32>>,
    config: Arc<openraft::Config>,
}

impl Sim {
    fn node_dir(&self, id: u64) -> std::path::PathBuf {
        let generation = self.generation.lock().get(&id).copied().unwrap_or(0);
        self.dir.path().join(format!("n{id}-{generation}"))
    }

    async fn start_node(&self, id: u64) {
        let dir = self.node_dir(id);
        let rec = Arc::new(Recorder {
            node: id,
            applied: Mutex::new(Vec::new()),
            history: self.history.clone(),
        });
        let sm = store::SmAdapter::open(&dir.join("snapshot"), rec.clone()).expect("open sm");
        let log = store::LogAdapter::open(&dir.join("log"), sm.durable()).expect("open log");
        let net = SimNet {
            from: id,
            router: self.router.clone(),
        };
        let raft = Raft::new(id, self.config.clone(), net, log, sm)
            .await
            .expect("raft");
        // Every vote and leadership this node reports.
        let (mut m, h) = (raft.metrics(), self.history.clone());
        tokio::spawn(async move {
            loop {
                {
                    // openraft (without `single-term-leader`) lets a term have several
                    // leaders, ordered by (term, node): what must hold is that no vote is ever
                    // taken back, and one applied history (`History::applied`).
                    let x = m.borrow_and_update();
                    h.vote(id, x.vote);
                    if x.state == ServerState::Leader
                        && x.vote.is_committed()
                        && x.vote.leader_id().voted_for() == Some(id)
                    {
                        h.leader(x.vote.leader_id().term, id);
                    }
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        });
        self.recorders.lock().insert(id, rec);
        self.router.nodes.lock().insert(id, raft);
    }

    /// A process stop: the node's files as they are at that instant are what it restarts on.
    /// openraft's `shutdown` joins its core task but not its state machine worker or a snapshot
    /// build in progress, which would go on writing the files under a restarted instance (a
    /// process stop ends them); so the files are copied, in one step of this single-threaded
    /// runtime, to the next generation's directory, and the old tasks write to the old one.
    async fn stop_node(&self, id: u64) {
        let raft = self.router.nodes.lock().remove(&id);
        if let Some(r) = raft {
            let _ = r.shutdown().await;
        }
        let from = self.node_dir(id);
        *self.generation.lock().entry(id).or_default() += 1;
        copy_dir(&from, &self.node_dir(id)).expect("copying a stopped node's files");
        self.recorders.lock().remove(&id);
    }

    fn up(&self) -> Vec<u64> {
        self.router.nodes.lock().keys().copied().collect()
    }

    /// The nodes that say they lead, with their terms.
    fn leaders(&self) -> Vec<(u64, u64)> {
        self.router
            .nodes
            .lock()
            .iter()
            .filter_map(|(id, r)| {
                let m = r.metrics().borrow().clone();
                (m.state == ServerState::Leader).then_some((*id, m.current_term))
            })
            .collect()
    }

    /// Cuts every link between `a` and the other nodes.
    fn partition(&self, a: &BTreeSet<u64>) {
        let mut cut = self.router.cut.lock();
        cut.clear();
        for x in 1..=NODES {
            for y in 1..=NODES {
                if a.contains(&x) != a.contains(&y) {
                    cut.insert((x, y));
                }
            }
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One seeded run; returns what it saw, or the violations.
fn run(seed: u64, events: u64, restarts: bool) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run_async(seed, events, restarts))
}

async fn run_async(seed: u64, events: u64, restarts: bool) -> Result<String, String> {
    let base = std::path::Path::new("/dev/shm");
    let dir = if base.is_dir() {
        tempfile::tempdir_in(base)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let mut config = (*super::raft_config(Timing {
        heartbeat_ms: 50,
        election_timeout_ms: 200,
    }))
    .clone();
    config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(40);
    config.max_in_snapshot_log_to_keep = 5;
    let sim = Arc::new(Sim {
        dir,
        router: Arc::new(Router {
            nodes: Mutex::new(BTreeMap::new()),
            cut: Mutex::new(BTreeSet::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
            drop_permille: AtomicU32::new(0),
        }),
        history: Arc::new(History::default()),
        recorders: Mutex::new(BTreeMap::new()),
        generation: Mutex::new(BTreeMap::new()),
        config: Arc::new(config.validate().expect("config")),
    });
    for id in 1..=NODES {
        sim.start_node(id).await;
    }
    let members: BTreeMap<u64, BasicNode> = (1..=NODES)
        .map(|id| (id, BasicNode::new(format!("n{id}"))))
        .collect();
    let first = sim.router.nodes.lock().get(&1).cloned().expect("node 1");
    first.initialize(members).await.expect("initialize");

    // The client: a proposal every 10 ms to a node that says it leads (at most 16 in flight);
    // `acked` holds the ones answered Ok.
    let acked = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proposed = Arc::new(AtomicU64::new(0));
    // Membership changes that completed.
    let changed = Arc::new(AtomicU64::new(0));
    let client = {
        let (sim, acked, stop, proposed) =
            (sim.clone(), acked.clone(), stop.clone(), proposed.clone());
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let leaders = sim.leaders();
                let Some((id, _)) = leaders.get(n as usize % leaders.len().max(1)).copied() else {
                    continue;
                };
                let Some(raft) = sim.router.nodes.lock().get(&id).cloned() else {
                    continue;
                };
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    continue;
                };
                n += 1;
                proposed.fetch_add(1, Ordering::Relaxed);
                let cmd = format!("c{n}").into_bytes();
                let acked = acked.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        raft.client_write(Cmd(cmd.clone())),
                    )
                    .await;
                    if let Ok(Ok(_)) = r {
                        acked.lock().push(cmd);
                    }
                });
            }
        })
    };

    // The faults.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    let mut down: BTreeSet<u64> = BTreeSet::new();
    for _ in 0..events {
        let wait = rng.random_range(50..1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut kind = rng.random_range(0..14);
        if !restarts && matches!(kind, 4..=7 | 9 | 10) {
            kind = [0, 3, 11][kind % 3];
        }
        let event = match kind {
            0 => {
                // A random minority cut off (1 or 2 of 5).
                let k = rng.random_range(1..=2);
                let mut side = BTreeSet::new();
                while side.len() < k {
                    side.insert(rng.random_range(1..=NODES));
                }
                sim.partition(&side);
                format!("partition {side:?}")
            }
            1 | 2 => {
                // Split brain: the leader alone, or with one follower, in the minority.
                match sim.leaders().first().copied() {
                    Some((l, _)) => {
                        let mut side = BTreeSet::from([l]);
                        if rng.random_bool(0.5) {
                            side.insert(l % NODES + 1);
                        }
                        sim.partition(&side);
                        format!("isolate leader {l} with {side:?}")
                    }
                    None => "isolate: no leader".into(),
                }
            }
            3 => {
                sim.router.cut.lock().clear();
                "heal".into()
            }
            4 | 5 => {
                // At most two of five stopped at once.
                let up = sim.up();
                if down.len() < 2 {
                    let id = up[rng.random_range(0..up.len())];
                    sim.stop_node(id).await;
                    down.insert(id);
                    format!("stop {id}")
                } else {
                    "stop: two down already".into()
                }
            }
            6 | 7 => match down.iter().next().copied() {
                Some(id) => {
                    down.remove(&id);
                    sim.start_node(id).await;
                    format!("start {id}")
                }
                None => "start: none down".into(),
            },
            9 | 10 => {
                // Bounces during an election: the leader is cut off, and while the others
                // elect (within 200-400 ms) voters are stopped and started again at once, each
                // a few times (a vote one forgot would be given twice in one term).
                let leader = sim.leaders().first().map(|(l, _)| *l);
                if let Some(l) = leader {
                    sim.partition(&BTreeSet::from([l]));
                }
                let mut bounced = Vec::new();
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
                    let up: Vec<u64> = sim
                        .up()
                        .into_iter()
                        .filter(|n| Some(*n) != leader)
                        .collect();
                    if up.is_empty() {
                        break;
                    }
                    let id = up[rng.random_range(0..up.len())];
                    sim.stop_node(id).await;
                    sim.start_node(id).await;
                    bounced.push(id);
                }
                format!("leader {leader:?} cut off, bounced {bounced:?}")
            }
            12 | 13 => {
                // A membership change: 3 to 5 of the nodes as voters, the others kept as
                // learners (they still get every entry), proposed to a node that says it leads
                // and left to finish or fail under the faults that follow (an interrupted one
                // leaves a joint config, which the next change starts from).
                let k = rng.random_range(3..=NODES as usize);
                let mut voters = BTreeSet::new();
                while voters.len() < k {
                    voters.insert(rng.random_range(1..=NODES));
                }
                let leader = sim.leaders().first().map(|(l, _)| *l);
                let raft = leader.and_then(|l| sim.router.nodes.lock().get(&l).cloned());
                if let Some(raft) = raft {
                    let (v, changed) = (voters.clone(), changed.clone());
                    tokio::spawn(async move {
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            raft.change_membership(v, true),
                        )
                        .await;
                        if let Ok(Ok(_)) = r {
                            changed.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                format!("voters {voters:?} through {leader:?}")
            }
            8 => {
                let p = [0, 0, 20, 100, 300][rng.random_range(0..5)];
                sim.router.drop_permille.store(p, Ordering::Relaxed);
                format!("drop {p}/1000")
            }
            _ => {
                let (a, b) = (rng.random_range(1..=NODES), rng.random_range(1..=NODES));
                if a != b {
                    sim.router.cut.lock().insert((a, b));
                }
                format!("one-way cut {a}->{b}")
            }
        };
        log.push(event);
    }

    // Heal everything, then let the cluster converge.
    sim.router.cut.lock().clear();
    sim.router.drop_permille.store(0, Ordering::Relaxed);
    for id in std::mem::take(&mut down) {
        sim.start_node(id).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client.await;
    tokio::time::sleep(Duration::from_secs(4)).await; // answers in flight
    let converged = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let states: Vec<Vec<Vec<u8>>> = sim
                .recorders
                .lock()
                .values()
                .map(|r| r.applied.lock().clone())
                .collect();
            let acked = acked.lock().clone();
            let all_in = states.iter().all(|s| {
                let have: BTreeSet<&Vec<u8>> = s.iter().collect();
                acked.iter().all(|c| have.contains(c))
            });
            if states.len() == NODES as usize && all_in && states.windows(2).all(|w| w[0] == w[1]) {
                return states;
            }
        }
    };
    let states = tokio::time::timeout(Duration::from_secs(120), converged).await;
    // What each node says of itself, for a run that did not converge.
    let nodes: Vec<String> = sim
        .router
        .nodes
        .lock()
        .iter()
        .map(|(id, r)| {
            let m = r.metrics().borrow().clone();
            format!(
                "node {id}: {:?}, leader {:?}, vote {}, last log {:?}, applied {:?}, membership {:?}",
                m.state,
                m.current_leader,
                m.vote,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.membership_config.membership().get_joint_config()
            )
        })
        .collect();
    for id in 1..=NODES {
        sim.stop_node(id).await;
    }
    let mut violations = sim.history.violations.lock().clone();
    let summary = format!(
        "seed {seed}: {events} fault events, {} proposed, {} acknowledged, {} leaderships, \
         {} membership changes",
        proposed.load(Ordering::Relaxed),
        acked.lock().len(),
        sim.history.leaders.lock().len(),
        changed.load(Ordering::Relaxed)
    );
    match states {
        Ok(states) => {
            let s = &states[0];
            let distinct: BTreeSet<&Vec<u8>> = s.iter().collect();
            if distinct.len() != s.len() {
                violations.push(format!(
                    "a command applied twice: {} applied, {} distinct",
                    s.len(),
                    distinct.len()
                ));
            }
        }
        Err(_) => violations.push(format!(
            "after healing, the nodes did not converge on one state holding every acknowledged \
             command within 120 s:\n    {}",
            nodes.join("\n    ")
        )),
    }
    if violations.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{summary}\nviolations:\n  {}\nfaults:\n  {}",
            violations.join("\n  "),
            log.join("\n  ")
        ))
    }
}

#[test]
fn raft_never_takes_back_a_vote_and_keeps_one_history_under_faults() {
    let events = env_u64("LEVEE_RAFT_SIM_EVENTS").unwrap_or(100);
    let seeds: Vec<u64> = match env_u64("LEVEE_RAFT_SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("LEVEE_RAFT_SIM_SEEDS").unwrap_or(5)).collect(),
    };
    // Stops and restarts on the files are what find a forgotten vote, and what found two
    // crash-consistency bugs of `store` (a purge ahead of the snapshot on disk, a read that
    // skipped purged entries: see its module doc); `LEVEE_RAFT_SIM_RESTARTS=0` leaves them out.
    let restarts = env_u64("LEVEE_RAFT_SIM_RESTARTS") != Some(0);
    for seed in seeds {
        match run(seed, events, restarts) {
            Ok(summary) => eprintln!("{summary}"),
            Err(e) => panic!("{e}\nreproduce: LEVEE_RAFT_SIM_SEED={seed}"),
        }
    }
}
