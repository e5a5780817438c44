//! The catalog: one file per durable queue, `queues/<dir>/queue.meta`, holding the queue's name and
//! config, and everything that reads or writes it.
//!
//! Format: the queue's declaration as a `Declare` frame of the wire protocol (`req` 0), so the
//! catalog and the protocol share one encoding of a [`QueueConfig`] (see docs/design.md). The file
//! is written with levee-store's `meta::write_meta_atomic` (write a temporary file, fsync, rename,
//! fsync the directory) and read with `meta::read_meta`.
//!
//! # Invariants
//! - A queue's directory holds its catalog entry once [`create`] returned; a directory without one
//!   (a declare that crashed half-way) is ignored by [`load`] and may be reused.
//! - An entry that does not decode as a declaration is an error ([`BrokerError::Catalog`]), never
//!   skipped: the broker does not start without one of its durable queues.
//! - [`load`] takes each queue's name from its entry, never from its directory name, and refuses two
//!   entries naming the same queue.
//!
//! Every function here does blocking I/O: call it from `spawn_blocking`.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use levee_proto::{ClientFrame, DEFAULT_MAX_FRAME, QueueConfig};
use levee_store::Backend;

use crate::data_dir::{MAX_PROBES, PLAIN_NAME_MAX, candidate, is_queue_dir_name};
use crate::error::BrokerError;

/// The catalog entry's file name inside a queue's directory.
const META_FILE: &str = "queue.meta";
/// The subdirectory of a durable queue's directory that holds its log's segments.
pub(crate) const LOG_DIR: &str = "log";

/// A durable queue found in the catalog.
pub(crate) struct Entry {
    /// The queue's name (from its entry).
    pub(crate) name: String,
    /// The queue's config (from its entry).
    pub(crate) config: QueueConfig,
    /// The queue's directory (`queues/<dir>`).
    pub(crate) dir: PathBuf,
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

/// Decodes the catalog entry read from `path`.
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

/// Reads the catalog entry of the queue directory `dir`: `None` if it has none.
fn read(backend: &dyn Backend, dir: &Path) -> Result<Option<(String, QueueConfig)>, BrokerError> {
    let path = dir.join(META_FILE);
    match levee_store::meta::read_meta(backend, &path)? {
        Some(bytes) => decode_meta(&path, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Every durable queue under `root` (`<data_dir>/queues`, created if missing), in directory-listing
/// order.
pub(crate) fn load(backend: &dyn Backend, root: &Path) -> Result<Vec<Entry>, BrokerError> {
    backend
        .create_dir_all(root)
        .map_err(|e| BrokerError::io("create data dir", root, e))?;
    let names = backend
        .list_dir(root)
        .map_err(|e| BrokerError::io("list data dir", root, e))?;
    let mut entries: Vec<Entry> = Vec::new();
    for dir_name in names {
        if !is_queue_dir_name(&dir_name) {
            continue;
        }
        let dir = root.join(&dir_name);
        let Some((name, config)) = read(backend, &dir)? else {
            // A directory without a catalog entry: a declare that crashed half-way.
            tracing::warn!(dir = %dir.display(), "queue directory without queue.meta: ignored");
            continue;
        };
        if let Some(first) = entries.iter().find(|e| e.name == name) {
            return Err(BrokerError::Catalog {
                path: dir.join(META_FILE),
                reason: format!(
                    "queue {name} is also in {}: remove one of the two directories",
                    first.dir.display()
                ),
            });
        }
        entries.push(Entry { name, config, dir });
    }
    Ok(entries)
}

/// Creates the directory of a new durable queue under `root` and writes (and fsyncs) its catalog
/// entry; returns the directory.
pub(crate) fn create(
    backend: &dyn Backend,
    root: &Path,
    name: &str,
    config: &QueueConfig,
) -> Result<PathBuf, BrokerError> {
    let meta = encode_meta(name, config);
    let dir = choose_queue_dir(backend, root, name)?;
    // The log's directory too, in one go: its fsyncs then commit both new entries together, and
    // the log's open finds it there (a declare is a handful of fsyncs, and 10,000 declares are
    // bounded by them).
    let log_dir = dir.join(LOG_DIR);
    backend
        .create_dir_all(&log_dir)
        .map_err(|e| BrokerError::io("create queue dir", &log_dir, e))?;
    levee_store::meta::write_meta_atomic(backend, &dir.join(META_FILE), &meta)?;
    Ok(dir)
}

/// Replaces the catalog entry of the queue in `dir` (a configuration change), atomically.
pub(crate) fn rewrite(
    backend: &dyn Backend,
    dir: &Path,
    name: &str,
    config: &QueueConfig,
) -> Result<(), BrokerError> {
    let meta = encode_meta(name, config);
    levee_store::meta::write_meta_atomic(backend, &dir.join(META_FILE), &meta)?;
    Ok(())
}

/// Chooses the directory for a new durable queue called `name` (a valid queue name) under
/// `root` (`<data_dir>/queues`): its usual directory, unless that holds another queue's catalog
/// entry. Blocking (reads catalog entries of colliding candidates).
fn choose_queue_dir(
    backend: &dyn Backend,
    root: &Path,
    name: &str,
) -> Result<PathBuf, BrokerError> {
    if name.len() <= PLAIN_NAME_MAX {
        return Ok(root.join(candidate(name, 0)));
    }
    for n in 0..MAX_PROBES {
        let dir = root.join(candidate(name, n));
        match read(backend, &dir) {
            // Free, or left by a declare that crashed before its catalog entry was written.
            Ok(None) => return Ok(dir),
            Ok(Some((other, _))) if other == name => return Ok(dir),
            // Another queue's, or unreadable (it may belong to some queue): never reuse it.
            Ok(Some(_)) | Err(_) => {}
        }
    }
    Err(BrokerError::Catalog {
        path: root.join(candidate(name, 0)),
        reason: format!("{MAX_PROBES} directories for long names like this one are taken"),
    })
}
