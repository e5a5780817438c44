//! The broker: the registry of queues, their durable catalog, recovery at start, and the TCP
//! accept loop.
//!
//! On disk (`data_dir`): `queues/q-<name>/queue.meta` holds a durable queue's name and config (an
//! atomically replaced file, encoded as a `Declare` frame of the wire protocol) and
//! `queues/q-<name>/log/` its [`QueueLog`]. Memory queues have no files and do not survive a
//! restart (like RabbitMQ's transient queues).
//!
//! # Invariants
//! - A queue is in the registry only while its actor runs; declare and delete are serialised, so
//!   a name never maps to two actors and a deleted queue's files are removed only after its actor
//!   stopped.
//! - A durable queue's catalog entry is written (and fsynced) before it is announced to the client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use levee_proto::{
    ClientFrame, DEFAULT_MAX_FRAME, Durability, QueueConfig, QueueInfo, validate_queue_name,
};
use levee_store::{Backend, FsBackend};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::actor::{Cmd, LogSlot, QueueActor, Router};
use crate::error::BrokerError;
use crate::queue::QueueState;
use crate::queue::core::QueueCore;

/// Broker settings. Every field has a zero-config default.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where durable queues live (default `./levee-data`).
    pub data_dir: PathBuf,
    /// Largest frame accepted from a client (default 16 MiB). Memory bound: one frame of this
    /// size is buffered per connection while it arrives.
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
        }
    }
}

struct QueueEntry {
    config: QueueConfig,
    tx: mpsc::UnboundedSender<Cmd>,
    log: Option<LogSlot>,
    task: tokio::task::JoinHandle<()>,
}

/// A deletion in progress: resolves to the number of messages the queue held.
pub(crate) type Deletion =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BrokerError>> + Send>>;

pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    backend: Arc<dyn Backend>,
    queues: RwLock<HashMap<String, QueueEntry>>,
    /// Serialises declare and delete.
    catalog: Mutex<()>,
    /// Queues taken out of the registry whose actor and files are still being removed: a
    /// declare of the same name waits for it.
    deleting: parking_lot::Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    next_id: AtomicU64,
}

impl Router for Inner {
    fn route(&self, queue: &str) -> Option<mpsc::UnboundedSender<Cmd>> {
        self.queues.read().get(queue).map(|q| q.tx.clone())
    }
}

/// A running broker (cheap to clone).
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

fn queue_dir(data: &Path, name: &str) -> PathBuf {
    data.join("queues").join(format!("q-{name}"))
}

/// The catalog entry: the queue's declaration, in the wire encoding.
fn encode_meta(name: &str, config: &QueueConfig) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ClientFrame::Declare {
        req: 0,
        queue: name.to_string(),
        config: config.clone(),
    }
    .encode(&mut buf)
    .expect("a validated config encodes");
    buf.to_vec()
}

fn decode_meta(path: &Path, bytes: &[u8]) -> Result<(String, QueueConfig), BrokerError> {
    let mut buf = BytesMut::from(bytes);
    match ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME) {
        Ok(Some(ClientFrame::Declare { queue, config, .. })) => Ok((queue, config)),
        other => Err(BrokerError::Catalog {
            path: path.to_path_buf(),
            reason: format!("not a queue declaration: {other:?}"),
        }),
    }
}

impl Broker {
    /// Opens the broker: recovers every durable queue in `config.data_dir`.
    ///
    /// Not cancel-safe: dropping it part-way leaves the queues recovered so far running in
    /// tasks of their own (nothing is lost; open the data directory again to retry).
    pub async fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        Self::open_with_backend(FsBackend::shared(), config).await
    }

    /// Opens the broker on a storage backend of the caller's choice (levee-store's fault-injecting
    /// backend in tests: failed fsyncs, a full disk, power loss).
    ///
    /// Not cancel-safe, as [`Broker::open`].
    pub async fn open_with_backend(
        backend: Arc<dyn Backend>,
        config: BrokerConfig,
    ) -> Result<Broker, BrokerError> {
        let inner = Arc::new(Inner {
            config,
            backend,
            queues: RwLock::new(HashMap::new()),
            catalog: Mutex::new(()),
            deleting: parking_lot::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let broker = Broker { inner };
        broker.recover().await?;
        Ok(broker)
    }

    async fn recover(&self) -> Result<(), BrokerError> {
        let root = self.inner.config.data_dir.join("queues");
        let backend = self.inner.backend.clone();
        let names = {
            let root = root.clone();
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, BrokerError> {
                backend
                    .create_dir_all(&root)
                    .map_err(|e| BrokerError::io("create data dir", &root, e))?;
                backend
                    .list_dir(&root)
                    .map_err(|e| BrokerError::io("list data dir", &root, e))
            })
            .await
            .map_err(BrokerError::join)??
        };
        let mut recovered = Vec::new();
        for dir_name in names {
            if !dir_name.starts_with("q-") {
                continue;
            }
            let dir = root.join(&dir_name);
            let meta_path = dir.join("queue.meta");
            let backend = backend.clone();
            let mp = meta_path.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                levee_store::meta::read_meta(backend.as_ref(), &mp)
            })
            .await
            .map_err(BrokerError::join)??;
            let Some(bytes) = bytes else {
                // A directory without a catalog entry: a declare that crashed half-way.
                tracing::warn!(dir = %dir.display(), "queue directory without queue.meta: ignored");
                continue;
            };
            recovered.push(decode_meta(&meta_path, &bytes)?);
        }
        // Dead-letter targets are looked up when a message is dead-lettered, not at start, so
        // the order in which queues come back does not matter.
        for (name, config) in recovered {
            self.start_queue(name, config).await?;
        }
        Ok(())
    }

    /// Opens the log (for a disk queue), rebuilds the state and starts the actor.
    async fn start_queue(&self, name: String, config: QueueConfig) -> Result<u64, BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (core, log) = match config.durability {
            Durability::Disk(fsync) => {
                let dir = queue_dir(&self.inner.config.data_dir, &name).join("log");
                let backend = self.inner.backend.clone();
                let lc = crate::storage::log_config(fsync, self.inner.config.segment_bytes);
                let cfg = config.clone();
                let b = backend.clone();
                let (state, log) =
                    tokio::task::spawn_blocking(move || crate::storage::recover(b, &dir, lc, cfg))
                        .await
                        .map_err(BrokerError::join)??;
                let log = Arc::new(log);
                let slot: LogSlot = Arc::new(parking_lot::RwLock::new(Some(log.clone())));
                (
                    QueueCore::disk(name.clone(), state, log, backend),
                    Some(slot),
                )
            }
            _ => (
                QueueCore::memory(name.clone(), QueueState::new(config.clone(), 1)),
                None,
            ),
        };
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
            return Ok((false, 0));
        }
        if let Some(dlq) = &config.dead_letter
            && dlq != name
            && !self.inner.queues.read().contains_key(dlq)
        {
            return Err(BrokerError::UnknownQueue(format!(
                "{dlq} (the dead-letter queue of {name}: declare it first)"
            )));
        }
        if matches!(config.durability, Durability::Disk(_)) {
            let dir = queue_dir(&self.inner.config.data_dir, name);
            let backend = self.inner.backend.clone();
            let meta = encode_meta(name, &config);
            tokio::task::spawn_blocking(move || {
                backend
                    .create_dir_all(&dir)
                    .map_err(|e| BrokerError::io("create queue dir", &dir, e))?;
                levee_store::meta::write_meta_atomic(
                    backend.as_ref(),
                    &dir.join("queue.meta"),
                    &meta,
                )
                .map_err(BrokerError::from)
            })
            .await
            .map_err(BrokerError::join)??;
        }
        let messages = self.start_queue(name.to_string(), config).await?;
        Ok((true, messages))
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
    pub(crate) fn begin_delete(&self, name: &str) -> Result<Deletion, BrokerError> {
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
            let result = broker.finish_delete(&name, entry).await;
            broker.inner.deleting.lock().remove(&name);
            let _ = done_tx.send(true);
            result
        });
        Ok(Box::pin(
            async move { task.await.map_err(BrokerError::join)? },
        ))
    }

    async fn finish_delete(&self, name: &str, entry: QueueEntry) -> Result<u64, BrokerError> {
        let (reply, rx) = oneshot::channel();
        let _ = entry.tx.send(Cmd::Delete(reply));
        let dropped = rx.await.unwrap_or(0);
        let _ = entry.task.await;
        if let Some(slot) = entry.log {
            let dir = queue_dir(&self.inner.config.data_dir, name);
            let backend = self.inner.backend.clone();
            let log = slot.write().take();
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

    /// Storage figures of a disk queue's log.
    pub fn log_stats(&self, name: &str) -> Option<levee_store::LogStats> {
        let queues = self.inner.queues.read();
        let log = queues.get(name)?.log.as_ref()?.read().clone()?;
        Some(log.stats())
    }

    pub(crate) fn sender(&self, name: &str) -> Result<mpsc::UnboundedSender<Cmd>, BrokerError> {
        self.inner
            .route(name)
            .ok_or_else(|| BrokerError::UnknownQueue(name.to_string()))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Accepts connections on `listener` until the task is dropped.
    ///
    /// Cancel-safe: dropping the future stops accepting; connections already accepted go on.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let broker = self.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::conn::serve(broker, stream).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    /// Binds `addr` and serves on it; returns the bound address (useful with port 0) and the
    /// serving task.
    ///
    /// Cancel-safe: dropped before it returns, nothing is listening.
    pub async fn bind(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let broker = self.clone();
        Ok((
            local,
            tokio::spawn(async move { broker.serve(listener).await }),
        ))
    }
}
