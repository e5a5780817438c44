//! The broker: the registry of queues, their durable catalog, recovery at start. The accept
//! loops that serve connections on it are in `net` (this module knows nothing of connections).
//!
//! On disk (`data_dir`): `LOCK`, the lock file one broker holds while it uses the directory;
//! `queues/<dir>/queue.meta` holds a queue's name and config (its catalog entry, see `catalog`)
//! and, for a disk queue, `queues/<dir>/log/` its [`QueueLog`](levee_store::QueueLog) (`<dir>` is
//! `q-<name>` for names that fit, see `data_dir` for the others). A memory queue has only its
//! `queue.meta`: it comes back empty after a restart. A transient queue has no files and is gone
//! after a restart (like RabbitMQ's `durable=false` queues).
//!
//! # Invariants
//! - At most one broker uses a data directory: [`Broker::open`] takes its lock (released when the
//!   broker is dropped or its process ends) before reading anything.
//! - A queue is in the registry only while its actor runs; declare and delete are serialised, so
//!   a name never maps to two actors and a deleted queue's files are removed only after its actor
//!   stopped.
//! - A durable queue's catalog entry is written (and fsynced) before it is announced to the client.
//! - Open connections stay within `max_connections`; frames still arriving that are larger than a
//!   connection's standing read buffer hold a reservation of the broker-wide
//!   `max_partial_frame_bytes` budget (see `net::limits`; the broker owns the budgets, the
//!   listeners and connections draw from them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use levee_proto::{
    DEFAULT_MAX_FRAME, Durability, Message, QueueConfig, QueueInfo, validate_queue_name,
};
use levee_store::{Backend, FsBackend};
use parking_lot::RwLock;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::actor::{Cmd, ConfirmTo, LogSlot, QueueActor, Router};
use crate::data_dir::DataDirLock;
use crate::error::BrokerError;
use crate::net::limits::Limits;
use crate::queue::QueueState;
use crate::queue::core::QueueCore;

/// Broker settings. Every field has a zero-config default.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where durable queues live (default `./levee-data`).
    pub data_dir: PathBuf,
    /// Largest frame accepted from a client (default 16 MiB). Memory bound: one frame of this
    /// size is buffered per connection while it arrives, and frames over 64 KiB still arriving
    /// share `max_partial_frame_bytes` across all connections.
    pub max_frame: usize,
    /// Heartbeat interval announced to clients; a connection silent for 3 intervals is closed.
    pub heartbeat_ms: u32,
    /// Most unconfirmed publish payload bytes per connection (default 64 MiB); publishes past
    /// it are refused. Memory bound: together with `max_frame`, what one connection can make the
    /// broker hold beyond the queues' own limits.
    pub max_in_flight_bytes: u64,
    /// Most unconfirmed published messages per connection (default 65 536).
    pub max_in_flight_messages: u64,
    /// Segment file size of queue logs (default 64 MiB).
    pub segment_bytes: u64,
    /// Name announced in the handshake.
    pub server_name: String,
    /// Most delivery bytes waiting for one connection's writer (default 8 MiB): credit is what
    /// a consumer may be sent, this is what the broker buffers for it at most (plus one message
    /// per queue dispatching to it).
    pub max_outbox_bytes: u64,
    /// Most open wire connections (default 10 000); a connection over the cap is answered with a
    /// `Close` saying so and closed. Keep it below the process's file descriptor limit.
    pub max_connections: usize,
    /// Most open HTTP connections (default 1 024); one more is answered `503` and closed.
    pub max_http_connections: usize,
    /// Most bytes buffered, across all connections, for frames larger than 64 KiB that are still
    /// arriving (default 256 MiB; at least `max_frame`). A connection whose frame does not fit
    /// stops reading (TCP backpressure) until others finish theirs.
    pub max_partial_frame_bytes: u64,
    /// HTTP: most ms to wait for a request's headers, counted from when the connection opens or
    /// the previous response was sent, so it is also the idle timeout between requests (default
    /// 30 000). A request being answered is not limited by it.
    pub http_header_timeout_ms: u32,
    /// Users, permissions, TLS (see [`crate::security`]; default: no users, no TLS, loopback
    /// only). Loaded (TLS files read) by [`Broker::open`].
    pub security: crate::security::SecurityConfig,
    /// Alert rules (`[[alerts]]`, see [`crate::ops::alerts`]; default none).
    pub alerts: Vec<crate::ops::RuleConfig>,
    /// Seconds of per-queue history kept at 1 s resolution (`[history] seconds`, default 900).
    /// Memory bound: about 120 bytes per queue per second (see [`crate::ops::history`]).
    pub history_seconds: u32,
    /// The shared write-ahead log of every disk queue (`<data_dir>/wal/`; see levee-store's
    /// `wal` module): file size, pending-bytes bound, lazy commit delay.
    pub wal: levee_store::WalConfig,
    /// Whether disk queues attach to the shared write-ahead log (default `true`). With `false`
    /// (`[wal] enabled = false`) every disk queue's log is standalone, as before the WAL: its
    /// own sync thread and one fdatasync per queue per commit cycle. That is faster for one or
    /// a few busy queues (each payload is written once, not to its segment and the WAL) and
    /// costs a thread per durable queue. The WAL is still opened at start, so records a
    /// previous run left in it are redone before any queue opens.
    pub shared_wal: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("levee-data"),
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat_ms: 10_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_messages: 65_536,
            segment_bytes: 64 * 1024 * 1024,
            server_name: format!("levee {}", env!("CARGO_PKG_VERSION")),
            max_outbox_bytes: crate::outbox::DEFAULT_OUTBOX_BYTES,
            max_connections: 10_000,
            max_http_connections: 1024,
            max_partial_frame_bytes: 256 * 1024 * 1024,
            http_header_timeout_ms: 30_000,
            security: crate::security::SecurityConfig::default(),
            alerts: Vec::new(),
            history_seconds: crate::ops::history::DEFAULT_HISTORY_SECONDS,
            wal: levee_store::WalConfig::default(),
            shared_wal: true,
        }
    }
}

/// Smallest accepted `max_frame` (1 KiB): the handshake and small requests must fit.
pub const MIN_MAX_FRAME: usize = 1024;
/// How long [`Broker::publish_here`] waits for its confirm (a `block` queue may hold it).
const PUBLISH_HERE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest accepted `max_frame` (256 MiB).
pub const MAX_MAX_FRAME: usize = 256 << 20;

impl BrokerConfig {
    /// Checks every setting's range, so a bad setting is refused at start instead of failing
    /// every later operation. [`Broker::open`] calls it.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |setting, reason: String| Err(BrokerError::InvalidSetting { setting, reason });
        if self.wal.file_bytes < 4096 {
            return bad(
                "wal.file_bytes",
                format!("must be at least 4096, got {}", self.wal.file_bytes),
            );
        }
        if self.wal.max_pending_bytes == 0 || self.wal.lazy_commit.is_zero() {
            return bad(
                "wal.max_pending_bytes / wal.lazy_commit_ms",
                "must be above 0".into(),
            );
        }
        if !(MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&self.max_frame) {
            return bad(
                "max_frame",
                format!(
                    "must be between {MIN_MAX_FRAME} (1 KiB) and {MAX_MAX_FRAME} (256 MiB), got {}",
                    self.max_frame
                ),
            );
        }
        if self.max_outbox_bytes < 64 * 1024 {
            return bad(
                "max_outbox_bytes",
                format!(
                    "must be at least 65536 (64 KiB), got {}",
                    self.max_outbox_bytes
                ),
            );
        }
        if self.heartbeat_ms < 100 {
            return bad(
                "heartbeat_ms",
                format!("must be at least 100, got {}", self.heartbeat_ms),
            );
        }
        if self.max_in_flight_bytes == 0 {
            return bad("max_in_flight_bytes", "must be at least 1, got 0".into());
        }
        if self.max_in_flight_messages == 0 {
            return bad("max_in_flight_messages", "must be at least 1, got 0".into());
        }
        if let Err(e) =
            crate::storage::log_config(levee_proto::Fsync::Always, self.segment_bytes).validate()
        {
            return bad(
                "segment_bytes",
                format!(
                    "{} does not make a valid queue log ({e}); the default is 64 MiB",
                    self.segment_bytes
                ),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1, got 0".into());
        }
        if self.max_http_connections == 0 {
            return bad("max_http_connections", "must be at least 1, got 0".into());
        }
        if !(self.max_frame as u64..=u64::from(u32::MAX)).contains(&self.max_partial_frame_bytes) {
            return bad(
                "max_partial_frame_bytes",
                format!(
                    "must be between max_frame ({}: one largest frame must fit) and {}, got {}",
                    self.max_frame,
                    u32::MAX,
                    self.max_partial_frame_bytes
                ),
            );
        }
        if self.http_header_timeout_ms == 0 {
            return bad("http_header_timeout_ms", "must be at least 1, got 0".into());
        }
        if !(1..=crate::ops::history::MAX_HISTORY_SECONDS).contains(&self.history_seconds) {
            return bad(
                "history.seconds",
                format!(
                    "must be between 1 and {}, got {}",
                    crate::ops::history::MAX_HISTORY_SECONDS,
                    self.history_seconds
                ),
            );
        }
        if let Err(e) = crate::ops::alerts::compile_all(self.alerts.clone()) {
            return bad("alerts", e.to_string());
        }
        if self.server_name.len() > usize::from(u16::MAX) {
            return bad("server_name", "longer than 65535 bytes".into());
        }
        Ok(())
    }
}

struct QueueEntry {
    config: QueueConfig,
    tx: mpsc::UnboundedSender<Cmd>,
    log: Option<LogSlot>,
    /// A disk queue's directory (`queues/<dir>`).
    dir: Option<PathBuf>,
    task: tokio::task::JoinHandle<()>,
}

#[path = "broker_ops.rs"]
mod ops;

/// A deletion in progress: resolves to the number of messages the queue held.
pub type Deletion =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BrokerError>> + Send>>;

/// A callback appending Prometheus text to `/metrics` ([`Broker::set_metrics_source`]).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// How a broker that is a cluster node declares replicated queues (`replicas` > 1): installed
/// by levee-cluster ([`Broker::set_replication`]). Without one, a broker refuses such queues.
pub trait Replication: Send + Sync {
    /// The copies a replicated queue has in this cluster (its node count): the only `replicas`
    /// value above 1 it accepts, and what AMQP's `x-queue-type = quorum` asks for.
    fn replicas(&self) -> u8;
    /// Adds `name` with `config` (`replicas` checked, disk with fsync always) to the cluster's
    /// catalog, or checks that the one there has this config; resolves once a node is known to
    /// serve it, to whether it was created.
    fn declare(
        &self,
        name: String,
        config: QueueConfig,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, BrokerError>> + Send>>;
    /// Deletes the replicated queue `name` on every node (through the cluster's catalog);
    /// resolves once this node has removed it, to the messages it held (as far as this node
    /// knows: 0 unless it served the queue).
    fn delete(&self, name: String) -> Deletion;
    /// Replaces the config of the replicated queue `name` (checked as [`Broker::update`]
    /// checks a local queue's) on every node; resolves once this node has applied it, to the
    /// previous config.
    fn update(
        &self,
        name: String,
        config: QueueConfig,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<QueueConfig, BrokerError>> + Send>>;
}

pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    pub(crate) backend: Arc<dyn Backend>,
    queues: RwLock<HashMap<String, QueueEntry>>,
    /// Serialises declare and delete.
    catalog: Mutex<()>,
    /// Queues taken out of the registry whose actor and files are still being removed: a
    /// declare of the same name waits for it.
    deleting: parking_lot::Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    next_id: AtomicU64,
    pub(crate) limits: Limits,
    /// Exchanges and bindings (see `routing`).
    pub(crate) exchanges: crate::routing::Exchanges,
    pub(crate) security: crate::security::Security,
    /// History, alert rules, the connection registry (see `ops`).
    pub(crate) ops: Arc<crate::ops::Ops>,
    /// The write-ahead log every disk queue's log is attached to.
    pub(crate) wal: levee_store::Wal,
    /// Replicated queues this node does not serve now, with the wire address of the node that
    /// does (if known): a client naming one is told `not-leader` instead of `unknown-queue`.
    elsewhere: parking_lot::RwLock<HashMap<String, Option<String>>>,
    /// Carries publishes to the node serving a replicated queue (a cluster node's), see
    /// [`Broker::set_forwarder`].
    forwarder: parking_lot::RwLock<Option<Arc<dyn crate::remote::Forwarder>>>,
    /// The stand-ins of queues served elsewhere that publishes here reach (`crate::remote`).
    remotes: parking_lot::Mutex<HashMap<String, mpsc::UnboundedSender<Cmd>>>,
    /// Extra Prometheus text appended to `/metrics` by a layer above the broker (the cluster
    /// node's `levee_cluster_*` gauges), see [`Broker::set_metrics_source`].
    metrics_source: parking_lot::RwLock<Option<MetricsSource>>,
    /// Declares replicated queues (a cluster node's), see [`Broker::set_replication`].
    replication: parking_lot::RwLock<Option<Arc<dyn Replication>>>,
    /// Held for the broker's lifetime: no other broker opens this data directory meanwhile
    /// (`None` on a caller-provided backend).
    _lock: Option<DataDirLock>,
}

impl Router for Inner {
    fn route(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>> {
        self.publish_sender(queue)
    }

    fn dead_letter_via(&self, from: &str, exchange: &str, routing_key: &str, message: Message) {
        crate::routing::dead_letter_via(self, from, exchange, routing_key, message);
    }

    fn expire(self: Arc<Self>, queue: &str) {
        let broker = Broker { inner: self };
        let queue = queue.to_string();
        tokio::spawn(async move {
            // Under the catalog lock, as a delete through the API: a declare waits for it.
            let deletion = {
                let _guard = broker.inner.catalog.lock().await;
                broker.begin_delete(&queue)
            };
            // An error here: the queue was deleted meanwhile.
            if let Ok(d) = deletion {
                match d.await {
                    Ok(n) => tracing::info!(%queue, messages = n, "expired queue deleted"),
                    Err(e) => {
                        tracing::warn!(%queue, error = %e, "deleting an expired queue failed");
                    }
                }
            }
        });
    }
}

impl Inner {
    /// The command channel of `queue`, if it exists.
    pub(crate) fn queue_sender(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>> {
        self.queues.read().get(queue).map(|q| q.tx.clone())
    }

    /// `Some` (with the serving node's wire address, if known) when `queue` is a replicated
    /// queue another node serves now: it exists, but not here.
    pub(crate) fn served_elsewhere(&self, queue: &str) -> Option<Option<String>> {
        if self.queues.read().contains_key(queue) {
            return None;
        }
        self.elsewhere.read().get(queue).cloned()
    }

    /// Where publishes to `queue` go: its actor, or (a replicated queue another node serves, on
    /// a cluster node with a [`crate::remote::Forwarder`]) its stand-in, started on first use.
    pub(crate) fn publish_sender(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>> {
        if let Some(tx) = self.queue_sender(queue) {
            return Some(tx);
        }
        self.served_elsewhere(queue)?;
        let forwarder = self.forwarder.read().clone()?;
        let mut remotes = self.remotes.lock();
        if let Some(tx) = remotes.get(queue).filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let tx = crate::remote::RemoteQueue::spawn(queue, forwarder);
        remotes.insert(queue.to_string(), tx.clone());
        Some(tx)
    }

    /// Whether `queue` exists: here, or a replicated queue another node serves (publishes and
    /// dead letters reach it through [`Inner::publish_sender`]).
    pub(crate) fn queue_exists(&self, queue: &str) -> bool {
        self.queues.read().contains_key(queue) || self.elsewhere.read().contains_key(queue)
    }

    /// Whether publishes to `queue`, served by another node, are forwarded to it from here.
    pub(crate) fn forwards(&self, queue: &str) -> bool {
        self.served_elsewhere(queue).is_some() && self.forwarder.read().is_some()
    }

    /// Whether `queue` keeps its definition across restarts (`None`: no such queue).
    pub(crate) fn queue_keeps_definition(&self, queue: &str) -> Option<bool> {
        self.queues
            .read()
            .get(queue)
            .map(|q| q.config.durability.keeps_definition())
    }
}

/// A running broker (cheap to clone).
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl Broker {
    /// Opens the broker: checks the settings ([`BrokerConfig::validate`]), locks
    /// `config.data_dir` (creating it if needed; [`BrokerError::DataDirLocked`] if another broker
    /// holds it) and recovers every durable queue in it. The lock is released when the broker
    /// (every clone, and every task it started) is gone, or the process ends.
    ///
    /// Not cancel-safe: dropping it part-way leaves the queues recovered so far running in
    /// tasks of their own (nothing is lost; open the data directory again to retry).
    pub async fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        let lock = tokio::task::spawn_blocking(move || crate::data_dir::lock(&dir))
            .await
            .map_err(BrokerError::join)??;
        Self::start(FsBackend::shared(), config, Some(lock)).await
    }

    /// Opens the broker on a storage backend of the caller's choice (levee-store's fault-injecting
    /// backend in tests: failed fsyncs, a full disk, power loss). No data-directory lock is taken:
    /// the backend is the caller's, and so is keeping one broker per directory.
    ///
    /// Not cancel-safe, as [`Broker::open`].
    pub async fn open_with_backend(
        backend: Arc<dyn Backend>,
        config: BrokerConfig,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        Self::start(backend, config, None).await
    }

    async fn start(
        backend: Arc<dyn Backend>,
        config: BrokerConfig,
        lock: Option<DataDirLock>,
    ) -> Result<Broker, BrokerError> {
        let security = crate::security::Security::new(&config.security)?;
        let rules = crate::ops::alerts::compile_all(config.alerts.clone()).map_err(|e| {
            BrokerError::InvalidSetting {
                setting: "alerts",
                reason: e.to_string(),
            }
        })?;
        let (wal_backend, wal_dir, wal_config) = (
            backend.clone(),
            config.data_dir.join("wal"),
            config.wal.clone(),
        );
        let (wal, replay) = tokio::task::spawn_blocking(move || {
            levee_store::Wal::open(wal_backend, wal_dir, wal_config)
        })
        .await
        .map_err(BrokerError::join)??;
        if replay.applied > 0 {
            tracing::info!(
                files = replay.files,
                applied = replay.applied,
                skipped = replay.skipped,
                elapsed_ms = replay.elapsed.as_millis() as u64,
                "redid the write-ahead log"
            );
        }
        let inner = Arc::new(Inner {
            wal,
            security,
            ops: Arc::new(crate::ops::Ops::new(config.history_seconds, rules)),
            limits: Limits::new(
                config.max_connections,
                config.max_http_connections,
                config.max_partial_frame_bytes,
            ),
            config,
            backend,
            queues: RwLock::new(HashMap::new()),
            catalog: Mutex::new(()),
            deleting: parking_lot::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            exchanges: crate::routing::Exchanges::new(),
            elsewhere: parking_lot::RwLock::new(HashMap::new()),
            forwarder: parking_lot::RwLock::new(None),
            remotes: parking_lot::Mutex::new(HashMap::new()),
            metrics_source: parking_lot::RwLock::new(None),
            replication: parking_lot::RwLock::new(None),
            _lock: lock,
        });
        let broker = Broker { inner };
        broker.recover().await?;
        crate::ops::monitor::start(&broker);
        Ok(broker)
    }

    async fn recover(&self) -> Result<(), BrokerError> {
        let root = self.inner.config.data_dir.join("queues");
        let backend = self.inner.backend.clone();
        let recovered =
            tokio::task::spawn_blocking(move || crate::catalog::load(backend.as_ref(), &root))
                .await
                .map_err(BrokerError::join)??;
        // Dead-letter targets are looked up when a message is dead-lettered, not at start, so
        // the order in which queues come back does not matter.
        // Several queues at once (their opens are blocking jobs: reads and fsyncs, which the
        // file system batches when they overlap), so a restart with thousands of queues is not
        // a sum of fsync latencies.
        let mut starting = tokio::task::JoinSet::new();
        for entry in recovered {
            if starting.len() >= 32
                && let Some(r) = starting.join_next().await
            {
                r.map_err(BrokerError::join)??;
            }
            let broker = self.clone();
            let backend = self.inner.backend.clone();
            starting.spawn(async move {
                broker
                    .start_queue(entry.name, entry.config, Some(entry.dir), backend, 0, true)
                    .await
            });
        }
        while let Some(r) = starting.join_next().await {
            r.map_err(BrokerError::join)??;
        }
        // Bindings name queues: exchanges come back once every queue has.
        self.recover_exchanges().await
    }

    /// Opens the log (for a disk queue, in `queue_dir`, on `backend`), rebuilds the state and
    /// starts the actor.
    async fn start_queue(
        &self,
        name: String,
        config: QueueConfig,
        queue_dir: Option<PathBuf>,
        backend: Arc<dyn Backend>,
        min_deliveries: u32,
        on_wal: bool,
    ) -> Result<u64, BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (core, log) = match (config.durability, &queue_dir) {
            (Durability::Disk(_), Some(queue_dir)) => {
                let dir = queue_dir.join(crate::catalog::LOG_DIR);
                let mut lc =
                    crate::storage::log_config_for(&config, self.inner.config.segment_bytes);
                // A queue on the broker's own backend shares its write-ahead log. A replicated
                // queue (`load_external`) must not: its backend's fsync is the Raft commit, and
                // with the WAL its log would never fsync on the confirm path.
                if on_wal && self.inner.config.shared_wal {
                    lc.wal = Some(self.inner.wal.clone());
                }
                let cfg = config.clone();
                let b = backend.clone();
                let (state, log) = tokio::task::spawn_blocking(move || {
                    crate::storage::recover_counting(b, &dir, lc, cfg, min_deliveries)
                })
                .await
                .map_err(BrokerError::join)??;
                let log = Arc::new(log);
                let slot: LogSlot = Arc::new(parking_lot::RwLock::new(Some(log.clone())));
                (
                    QueueCore::disk(name.clone(), state, log, backend),
                    Some(slot),
                )
            }
            (Durability::Disk(_), None) => {
                return Err(BrokerError::Internal(format!(
                    "disk queue {name} started without its directory"
                )));
            }
            (Durability::Memory | Durability::Transient, _) => (
                QueueCore::memory(name.clone(), QueueState::new(config.clone(), 1)),
                None,
            ),
            // levee-proto's enum is non_exhaustive: a durability this broker does not know is
            // refused, never served as a memory queue (which would lose what it promised to keep).
            (other, _) => {
                return Err(BrokerError::Internal(format!(
                    "queue {name}: durability {other:?} is not supported by this broker"
                )));
            }
        };
        // Memory queues have a directory too: their catalog entry (not a transient one).
        let dir = queue_dir;
        let messages = core.stats().ready;
        let router: Arc<dyn Router> = self.inner.clone();
        let actor = QueueActor::new(core, log.clone(), router, tx.downgrade(), rx);
        let task = tokio::spawn(actor.run());
        self.inner.queues.write().insert(
            name,
            QueueEntry {
                config,
                tx,
                log,
                dir,
                task,
            },
        );
        Ok(messages)
    }

    /// Creates a queue, or checks that an existing one has this config. Returns whether it was
    /// created and how many messages it holds.
    ///
    /// Not cancel-safe: dropped after the catalog entry is written, the queue exists on disk
    /// and is recovered at the next start (declaring it again then succeeds).
    pub async fn declare(
        &self,
        name: &str,
        config: QueueConfig,
    ) -> Result<(bool, u64), BrokerError> {
        validate_queue_name(name)?;
        config.validate(name)?;
        if config.replicas > 1 {
            let Some(replication) = self.replication() else {
                return Err(BrokerError::Proto(levee_proto::ProtoError::InvalidConfig {
                    field: "replicas",
                    reason: format!(
                        "{} copies need a cluster (a [cluster] section); this broker is a single \
                         node: use replicas = 1",
                        config.replicas
                    ),
                }));
            };
            let created = replication.declare(name.to_string(), config).await?;
            return Ok((created, 0));
        }
        if let Some(serving) = self.inner.elsewhere.read().get(name) {
            // A replicated queue of this name exists (served by another node now): a local
            // queue may not take its name. Its leader answers for it.
            return Err(BrokerError::NotLeader {
                queue: name.to_string(),
                serving: serving.clone(),
            });
        }
        let _guard = self.inner.catalog.lock().await;
        let pending = self.inner.deleting.lock().get(name).cloned();
        if let Some(mut done) = pending {
            // The queue of this name is still being removed: its files must be gone first.
            let _ = done.wait_for(|d| *d).await;
        }
        if let Some(existing) = self.inner.queues.read().get(name) {
            if existing.config != config {
                return Err(BrokerError::ConfigMismatch {
                    queue: name.to_string(),
                    differences: existing.config.describe_differences(&config),
                });
            }
            // A redeclare is a use (RabbitMQ's `x-expires` counts it).
            let _ = existing.tx.send(Cmd::Touch);
            return Ok((false, 0));
        }
        if let Some(dlq) = &config.dead_letter
            && dlq != name
            && !self.inner.queue_exists(dlq)
        {
            return Err(BrokerError::UnknownQueue(format!(
                "{dlq} (the dead-letter queue of {name}: declare it first)"
            )));
        }
        let mut queue_dir = None;
        // Every queue but a transient one has a catalog entry, so its definition survives a
        // restart (a memory queue's messages do not).
        if config.durability.keeps_definition() {
            let root = self.inner.config.data_dir.join("queues");
            let backend = self.inner.backend.clone();
            let (name, config) = (name.to_string(), config.clone());
            let dir = tokio::task::spawn_blocking(move || {
                crate::catalog::create(backend.as_ref(), &root, &name, &config)
            })
            .await
            .map_err(BrokerError::join)??;
            queue_dir = Some(dir);
        }
        let backend = self.inner.backend.clone();
        let messages = self
            .start_queue(name.to_string(), config, queue_dir, backend, 0, true)
            .await?;
        Ok((true, messages))
    }

    /// Serves a queue whose files live outside this broker's catalog (a replicated queue led by
    /// this node, see levee-cluster): opens its log in `dir/log` on `backend` (recovering what is
    /// there) and starts its actor. No catalog entry is written: whoever owns `dir` decides when
    /// the queue is served ([`Broker::unload`] stops it again). Every unsettled message counts as
    /// delivered at least `min_deliveries` times (1 after a failover: the previous server may
    /// have delivered any of them, so each goes out again marked redelivered). Returns the
    /// messages it holds.
    pub async fn load_external(
        &self,
        name: &str,
        config: QueueConfig,
        dir: PathBuf,
        backend: Arc<dyn Backend>,
        min_deliveries: u32,
    ) -> Result<u64, BrokerError> {
        validate_queue_name(name)?;
        config.validate(name)?;
        if !matches!(config.durability, Durability::Disk(_)) {
            return Err(BrokerError::Internal(format!(
                "queue {name}: an external queue must be a disk queue"
            )));
        }
        let _guard = self.inner.catalog.lock().await;
        if self.inner.queues.read().contains_key(name) {
            return Err(BrokerError::Internal(format!(
                "queue {name} is already served"
            )));
        }
        self.start_queue(
            name.to_string(),
            config,
            Some(dir),
            backend,
            min_deliveries,
            false,
        )
        .await
    }

    /// Stops serving a queue here without removing its files, because another node serves it
    /// now (a replicated queue whose leadership moved): its actor stops, its log is closed, and
    /// what was in flight, its producers and its consumers are told `not-leader` (so clients
    /// that follow queues move on). Returns whether it was served.
    pub async fn unload(&self, name: &str) -> bool {
        let _guard = self.inner.catalog.lock().await;
        let Some(entry) = self.inner.queues.write().remove(name) else {
            return false;
        };
        let _ = entry.tx.send(Cmd::Unload);
        let _ = entry.task.await;
        if let Some(log) = entry.log.and_then(|slot| slot.write().take()) {
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(log) = Arc::try_unwrap(log) {
                    let _ = log.close();
                }
            })
            .await;
        }
        true
    }

    /// Deletes a queue with its messages; returns how many messages it held.
    ///
    /// Cancel-safe in effect: the deletion runs in a task of its own and completes (files
    /// included) even if this future is dropped, so a deleted queue can never come back at the
    /// next start.
    pub async fn delete(&self, name: &str) -> Result<u64, BrokerError> {
        self.begin_delete(name)?.await
    }

    /// Takes the queue out of the registry at once (later lookups fail) and removes it in a task
    /// of its own: stops its actor, then removes its files. The returned future resolves to the
    /// number of messages it held; it need not be awaited for the deletion to complete.
    ///
    /// A replicated queue is deleted through the cluster ([`Replication::delete`]), from any
    /// node: the future resolves once this node has removed it.
    pub(crate) fn begin_delete(&self, name: &str) -> Result<Deletion, BrokerError> {
        if self.is_replicated(name)
            && let Some(replication) = self.replication()
        {
            return Ok(replication.delete(name.to_string()));
        }
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let entry = {
            let mut queues = self.inner.queues.write();
            let entry = queues
                .remove(name)
                .ok_or_else(|| BrokerError::UnknownQueue(name.to_string()))?;
            self.inner.deleting.lock().insert(name.to_string(), done_rx);
            entry
        };
        let (broker, name) = (self.clone(), name.to_string());
        let task = tokio::spawn(async move {
            let result = broker.finish_delete(entry).await;
            // Before a queue of this name can be declared again (declare waits for `deleting`).
            broker.remove_queue_bindings(&name).await;
            broker.inner.deleting.lock().remove(&name);
            let _ = done_tx.send(true);
            result
        });
        Ok(Box::pin(
            async move { task.await.map_err(BrokerError::join)? },
        ))
    }

    async fn finish_delete(&self, entry: QueueEntry) -> Result<u64, BrokerError> {
        let (reply, rx) = oneshot::channel();
        let _ = entry.tx.send(Cmd::Delete(reply));
        let dropped = rx.await.unwrap_or(0);
        let _ = entry.task.await;
        if let Some(dir) = entry.dir {
            let backend = self.inner.backend.clone();
            let log = entry.log.and_then(|slot| slot.write().take());
            tokio::task::spawn_blocking(move || -> Result<(), BrokerError> {
                if let Some(log) = log
                    && let Ok(log) = Arc::try_unwrap(log)
                {
                    log.close()?;
                }
                levee_store::meta::remove_queue_dir(backend.as_ref(), &dir)?;
                Ok(())
            })
            .await
            .map_err(BrokerError::join)??;
        }
        Ok(dropped)
    }

    /// Stops every queue and closes its log (syncing what is written). Connections still open get
    /// `shutting-down` errors for what they send next.
    ///
    /// Not cancel-safe: queues stopped before the drop stay stopped.
    pub async fn shutdown(&self) {
        let _guard = self.inner.catalog.lock().await;
        let entries: Vec<(String, QueueEntry)> = self.inner.queues.write().drain().collect();
        for (name, entry) in entries {
            let _ = entry.tx.send(Cmd::Stop);
            let _ = entry.task.await;
            if let Some(log) = entry.log.and_then(|slot| slot.write().take()) {
                let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(log) {
                    Ok(log) => log.close().map_err(BrokerError::from),
                    Err(log) => log.sync().wait().map(|_| ()).map_err(BrokerError::from),
                })
                .await;
                if let Ok(Err(e)) = closed {
                    tracing::error!(queue = %name, error = %e, "closing the log failed");
                }
            }
        }
        let wal = self.inner.wal.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || wal.close()).await {
            tracing::error!(error = %e, "closing the write-ahead log failed");
        }
    }

    /// Drops every ready message of a queue; returns how many.
    ///
    /// Cancel-safe in effect: the purge happens whether or not the reply is awaited.
    pub async fn purge(&self, name: &str) -> Result<u64, BrokerError> {
        let tx = self.sender(name)?;
        let (reply, rx) = oneshot::channel();
        let _ = tx.send(Cmd::Purge(reply));
        rx.await
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))
    }

    /// A queue's config and counters.
    ///
    /// Cancel-safe: it only reads.
    pub async fn inspect(&self, name: &str) -> Result<QueueInfo, BrokerError> {
        let tx = self.sender(name)?;
        let (reply, rx) = oneshot::channel();
        let _ = tx.send(Cmd::Inspect(reply));
        rx.await
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))
    }

    /// Every queue's name, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.queues.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The shared write-ahead log's counters.
    pub fn wal_stats(&self) -> levee_store::WalStats {
        self.inner.wal.stats()
    }

    /// Storage figures of a disk queue's log.
    pub fn log_stats(&self, name: &str) -> Option<levee_store::LogStats> {
        let queues = self.inner.queues.read();
        let log = queues.get(name)?.log.as_ref()?.read().clone()?;
        Some(log.stats())
    }

    /// The config of queue `name`, if it exists (an in-memory lookup).
    pub(crate) fn queue_config(&self, name: &str) -> Option<QueueConfig> {
        self.inner.queues.read().get(name).map(|q| q.config.clone())
    }

    pub(crate) fn sender(&self, name: &str) -> Result<mpsc::UnboundedSender<Cmd>, BrokerError> {
        self.inner
            .queue_sender(name)
            .ok_or_else(|| match self.inner.served_elsewhere(name) {
                Some(serving) => BrokerError::NotLeader {
                    queue: name.to_string(),
                    serving,
                },
                None => BrokerError::UnknownQueue(name.to_string()),
            })
    }

    /// Whether `name` is a replicated queue, served here or elsewhere.
    pub(crate) fn is_replicated(&self, name: &str) -> bool {
        self.inner.elsewhere.read().contains_key(name)
            || self
                .inner
                .queues
                .read()
                .get(name)
                .is_some_and(|q| q.config.replicas > 1)
    }

    /// Removes a queue served by [`Broker::load_external`] because it was deleted (a
    /// replicated queue deleted through the cluster): its actor stops, its producers and
    /// consumers are told `unknown-queue`, its bindings go; its files are left to their owner
    /// (who removes them). Afterwards the name is unknown here (not `not-leader`). Returns the
    /// messages it held, if it was served here.
    pub async fn remove_external(&self, name: &str) -> Option<u64> {
        self.set_served_elsewhere(name, None);
        let entry = {
            let _guard = self.inner.catalog.lock().await;
            self.inner.queues.write().remove(name)
        };
        let entry = entry?;
        let (reply, rx) = oneshot::channel();
        let _ = entry.tx.send(Cmd::Delete(reply));
        let dropped = rx.await.unwrap_or(0);
        let _ = entry.task.await;
        if let Some(log) = entry.log.and_then(|slot| slot.write().take()) {
            // Its files are about to be removed: closing only releases them (a final sync the
            // owner's backend may refuse is of no use now).
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(log) = Arc::try_unwrap(log) {
                    let _ = log.close();
                }
            })
            .await;
        }
        self.remove_queue_bindings(name).await;
        Some(dropped)
    }

    /// Marks `queue` as a replicated queue served by another node (`Some(serving)`: its wire
    /// address if known), or not (`None`): operations on it while it is not served here fail
    /// with `not-leader` rather than `unknown-queue`.
    pub fn set_served_elsewhere(&self, queue: &str, serving: Option<Option<String>>) {
        let mut e = self.inner.elsewhere.write();
        match serving {
            Some(at) => {
                e.insert(queue.to_string(), at);
            }
            None => {
                e.remove(queue);
                // Not a replicated queue any more: its stand-in stops (forwards in flight end).
                if let Some(tx) = self.inner.remotes.lock().remove(queue) {
                    let _ = tx.send(Cmd::Stop);
                }
            }
        }
    }

    /// `Some` (with the serving node's wire address, if known) when `queue` is a replicated
    /// queue that another node serves now.
    pub fn serving_elsewhere(&self, queue: &str) -> Option<Option<String>> {
        self.inner.served_elsewhere(queue)
    }

    /// Installs the cluster's [`crate::remote::Forwarder`]: from then on a publish on this node
    /// (through any exchange, AMQP's default exchange included) or a dead letter for a
    /// replicated queue that another node serves is forwarded to that node and confirmed with
    /// its outcomes. Used by the cluster node; the last one installed wins.
    pub fn set_forwarder(&self, forwarder: Arc<dyn crate::remote::Forwarder>) {
        *self.inner.forwarder.write() = Some(forwarder);
    }

    /// Publishes `messages` to `queue` if this node serves it, never forwarding (what a
    /// [`crate::remote::Forwarder`] calls on the serving node): the outcomes once confirmed
    /// (stored under the queue's durability), in order. As a routed publish, a full `block`
    /// queue holds the batch until room frees.
    ///
    /// `Err(NotLeader | UnknownQueue)`: not served here, nothing was sent. Another error: the
    /// queue stopped (or did not answer in time) with the batch in flight, which may or may not
    /// have been stored.
    ///
    /// # Cancel safety
    /// Dropping the future after the batch was sent leaves it to the queue (it is stored or
    /// refused all the same; the outcome is lost).
    pub async fn publish_here(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<levee_proto::PublishOutcome>, BrokerError> {
        let tx = self.sender(queue)?;
        let (conn, mut rx) = crate::outbox::conn_channel(0);
        let in_flight = Arc::new(crate::actor::InFlight::default());
        let n = messages.len() as u64;
        let bytes = messages.iter().map(|m| m.payload.len() as u64).sum();
        in_flight.charge(n, bytes);
        let producer = self.next_id();
        let sent = tx.send(Cmd::Publish {
            producer,
            req: 1,
            messages,
            confirm_to: ConfirmTo::Conn { conn, in_flight },
            credited: false,
        });
        if sent.is_err() {
            return Err(BrokerError::UnknownQueue(queue.to_string()));
        }
        let result =
            match tokio::time::timeout(PUBLISH_HERE_TIMEOUT, crate::actor::confirm_of(&mut rx, 1))
                .await
            {
                Ok(Some(r)) => r.map_err(BrokerError::Internal),
                Ok(None) => Err(BrokerError::Internal(format!(
                    "queue {queue} stopped with the publish in flight"
                ))),
                Err(_) => Err(BrokerError::Internal(format!(
                    "queue {queue}: no confirm within {} s",
                    PUBLISH_HERE_TIMEOUT.as_secs()
                ))),
            };
        let _ = tx.send(Cmd::RemoveProducer(producer));
        result
    }

    /// Installs the cluster's [`Replication`]: from then on `replicas` > 1 declares a replicated
    /// queue through it. Used by the cluster node; the last one installed wins.
    pub fn set_replication(&self, replication: Arc<dyn Replication>) {
        *self.inner.replication.write() = Some(replication);
    }

    /// The installed [`Replication`], if this broker is a cluster node.
    pub fn replication(&self) -> Option<Arc<dyn Replication>> {
        self.inner.replication.read().clone()
    }

    /// Installs `source`, which appends Prometheus text-format families (each with its
    /// `# HELP` and `# TYPE` lines, names outside the broker's own) to every `/metrics` answer.
    /// Used by the cluster node; the last one installed wins.
    pub fn set_metrics_source(&self, source: MetricsSource) {
        *self.inner.metrics_source.write() = Some(source);
    }

    /// Appends the installed [`Broker::set_metrics_source`] text, if any, to `out`.
    pub(crate) fn render_metrics_source(&self, out: &mut String) {
        let source = self.inner.metrics_source.read().clone();
        if let Some(source) = source {
            source(out);
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Open wire connections (each holds one of `max_connections` slots from accept to close).
    pub fn open_connections(&self) -> usize {
        self.inner.limits.open_connections()
    }

    /// Open HTTP connections (each holds one of `max_http_connections` slots).
    pub fn open_http_connections(&self) -> usize {
        self.inner.limits.open_http_connections()
    }

    /// Bytes of the `max_partial_frame_bytes` budget reserved by large frames still arriving.
    pub fn partial_frame_bytes(&self) -> u64 {
        self.inner.limits.partial_frame_bytes()
    }

    /// The broker's users, permissions and certificates: what every listener logs in and
    /// authorizes with (see [`crate::security`]), and what a reload replaces.
    pub fn security(&self) -> &crate::security::Security {
        &self.inner.security
    }

    /// The settings the broker was opened with (`security` as at start: reloads go to
    /// [`Broker::security`]).
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }
}
