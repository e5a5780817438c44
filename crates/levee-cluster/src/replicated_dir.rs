//! A replicated queue's files: the queue's own log (levee-store, unchanged) runs on a
//! [`ReplicatedBackend`] whose writes are held back and shipped through the queue's Raft group at
//! each fsync; [`DirStateMachine`] applies them, on every member, to that member's copy of the
//! directory. So the queue core's rule "confirm and deliver only what is durable" becomes "only
//! what a majority has committed (each fsynced in its Raft log) and this node has applied".
//!
//! What is replicated is therefore everything the queue log records: enqueues (with message ids,
//! which the dedup window is rebuilt from), settlements (ack, reject, dead-letter), requeues and
//! delivery counts. Credit, consumers and in-flight deliveries are never written to the log and
//! stay with the leader; a new leader recovers the queue from its copy as after a restart (every
//! unsettled message is delivered again, with its delivery count).
//!
//! # Invariants
//! - The directory (`root`) only ever holds applied, i.e. committed, operations: the leader does
//!   not write its own files directly, so a leader deposed with uncommitted writes has nothing
//!   to undo ([`ReplicatedBackend::discard`] drops what was never proposed).
//! - Operations are proposed in the order they were made: taking the pending batch and handing
//!   it to Raft happen under one lock.
//! - `sync` (file or directory) returns `Ok` only once every operation made before it is
//!   committed and applied here; otherwise an error, and the queue core never confirms.
//! - Reads go to the applied files: the core reads only durable (hence applied) records.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_store::{Backend, OpenMode, StorageFile};
use parking_lot::Mutex;

use crate::error::ClusterError;
use crate::replicated_log::{ReplicatedLog, StateMachine};

/// How long a sync waits for its batch to commit before failing (the queue then treats it as
/// a failed fsync: nothing confirmed; a leader without a quorum stops confirming).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// One file operation, paths relative to the queue's directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum FileOp {
    CreateDir(String),
    Create(String),
    Write(String, u64, #[serde(with = "crate::raw")] Vec<u8>),
    SetLen(String, u64),
    Remove(String),
    Rename(String, String),
    RemoveDirAll(String),
}

/// A safe relative path (no `..`, not absolute).
fn safe(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| p.to_path_buf())
}

/// The state of a replicated directory: applies `FileOp` batches under `root`.
pub struct DirStateMachine {
    root: PathBuf,
    /// Open handles of files written recently.
    files: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl DirStateMachine {
    /// The state machine of the directory `root`.
    pub fn new(root: PathBuf) -> DirStateMachine {
        DirStateMachine {
            root,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn handle(&self, path: &Path) -> io::Result<Arc<File>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(path) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?,
        );
        files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    fn apply_op(&self, op: &FileOp) -> io::Result<()> {
        let bad = || io::Error::other("unsafe path in a replicated file operation");
        match op {
            FileOp::CreateDir(d) => fs::create_dir_all(self.root.join(safe(d).ok_or_else(bad)?)),
            FileOp::Create(p) => {
                let path = self.root.join(safe(p).ok_or_else(bad)?);
                self.files.lock().remove(&path);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                let f = File::create(&path)?;
                self.files.lock().insert(path, Arc::new(f));
                Ok(())
            }
            FileOp::Write(p, off, data) => {
                let f = self.handle(&self.root.join(safe(p).ok_or_else(bad)?))?;
                f.write_all_at(data, *off)
            }
            FileOp::SetLen(p, len) => self
                .handle(&self.root.join(safe(p).ok_or_else(bad)?))?
                .set_len(*len),
            FileOp::Remove(p) => {
                let path = self.root.join(safe(p).ok_or_else(bad)?);
                self.files.lock().remove(&path);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
            FileOp::Rename(a, b) => {
                let from = self.root.join(safe(a).ok_or_else(bad)?);
                let to = self.root.join(safe(b).ok_or_else(bad)?);
                let mut files = self.files.lock();
                files.remove(&from);
                files.remove(&to);
                fs::rename(from, to)
            }
            FileOp::RemoveDirAll(d) => {
                let path = self.root.join(safe(d).ok_or_else(bad)?);
                self.files.lock().retain(|p, _| !p.starts_with(&path));
                match fs::remove_dir_all(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
        }
    }
}

/// One file (or, with a trailing `/`, directory) of a snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapFile(String, #[serde(with = "crate::raw")] Vec<u8>);

fn walk(root: &Path, dir: &Path, out: &mut Vec<SnapFile>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned();
        if entry.file_type()?.is_dir() {
            out.push(SnapFile(format!("{rel}/"), Vec::new()));
            walk(root, &path, out)?;
        } else {
            out.push(SnapFile(rel, fs::read(&path)?));
        }
    }
    Ok(())
}

impl StateMachine for DirStateMachine {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let ops: Vec<FileOp> = match bincode::deserialize(command) {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!(error = %e, "undecodable replicated file operations");
                return b"undecodable".to_vec();
            }
        };
        for op in &ops {
            if let Err(e) = self.apply_op(op) {
                // The same operation fails the same way on every member (the states are equal).
                tracing::warn!(?op, error = %e, root = %self.root.display(), "replicated file operation failed");
            }
        }
        Vec::new()
    }

    fn snapshot(&self) -> Result<Vec<u8>, ClusterError> {
        let mut files = Vec::new();
        if self.root.exists() {
            walk(&self.root, &self.root, &mut files)
                .map_err(|e| ClusterError::io("reading a replicated directory", e))?;
        }
        bincode::serialize(&files).map_err(|e| ClusterError::Decode {
            what: "directory snapshot",
            reason: e.to_string(),
        })
    }

    fn restore(&self, snapshot: Option<&[u8]>) -> Result<(), ClusterError> {
        self.files.lock().clear();
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ClusterError::io("clearing a replicated directory", e));
            }
            _ => {}
        }
        fs::create_dir_all(&self.root)
            .map_err(|e| ClusterError::io("creating a replicated directory", e))?;
        let Some(bytes) = snapshot else {
            return Ok(());
        };
        let files: Vec<SnapFile> =
            bincode::deserialize(bytes).map_err(|e| ClusterError::Decode {
                what: "directory snapshot",
                reason: e.to_string(),
            })?;
        for SnapFile(rel, data) in files {
            let Some(p) = safe(rel.trim_end_matches('/')) else {
                continue;
            };
            let path = self.root.join(p);
            let r = if rel.ends_with('/') {
                fs::create_dir_all(&path)
            } else {
                fs::write(&path, &data)
            };
            r.map_err(|e| ClusterError::io("restoring a replicated directory", e))?;
        }
        Ok(())
    }
}

/// Proposes batches through a group (from any thread: the cluster runtime runs the proposal).
pub trait Proposer: Send + Sync + 'static {
    /// Proposes and waits (at most [`SYNC_TIMEOUT`]) for commit and local apply.
    fn propose_blocking(&self, command: Vec<u8>) -> Result<(), ClusterError>;
}

/// A [`Proposer`] over a [`ReplicatedLog`] on a tokio runtime.
pub struct RuntimeProposer<L: ReplicatedLog> {
    /// The log.
    pub log: Arc<L>,
    /// The runtime its tasks run on.
    pub rt: tokio::runtime::Handle,
}

impl<L: ReplicatedLog> Proposer for RuntimeProposer<L> {
    fn propose_blocking(&self, command: Vec<u8>) -> Result<(), ClusterError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let log = self.log.clone();
        self.rt.spawn(async move {
            let r = tokio::time::timeout(SYNC_TIMEOUT, log.propose(command)).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) | Err(_) => Err(ClusterError::NoQuorum {
                group: String::new(),
                reason: "the batch did not commit in time".into(),
            }),
        }
    }
}

struct Shared {
    root: PathBuf,
    proposer: Arc<dyn Proposer>,
    /// Operations made and not yet proposed, in order. Locked while proposing (order).
    pending: Mutex<Vec<FileOp>>,
    /// Whether this node leads the group (writes are refused otherwise).
    active: std::sync::atomic::AtomicBool,
}

/// The storage backend of a replicated queue on the node that leads it (see the module docs).
#[derive(Clone)]
pub struct ReplicatedBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicatedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicatedBackend({})", self.shared.root.display())
    }
}

fn not_leader() -> io::Error {
    io::Error::other("not the leader of this replicated queue")
}

impl ReplicatedBackend {
    /// The backend of the directory `root`, proposing through `proposer`.
    pub fn new(root: PathBuf, proposer: Arc<dyn Proposer>) -> ReplicatedBackend {
        ReplicatedBackend {
            shared: Arc::new(Shared {
                root,
                proposer,
                pending: Mutex::new(Vec::new()),
                active: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Starts (true) or stops (false) taking writes; stopping drops what was never proposed.
    pub fn set_active(&self, active: bool) {
        self.shared
            .active
            .store(active, std::sync::atomic::Ordering::Release);
        if !active {
            self.discard();
        }
    }

    /// Drops the operations not yet proposed.
    pub fn discard(&self) {
        self.shared.pending.lock().clear();
    }

    fn rel(&self, path: &Path) -> io::Result<String> {
        let rel = path.strip_prefix(&self.shared.root).map_err(|_| {
            io::Error::other(format!(
                "{} is outside the replicated directory",
                path.display()
            ))
        })?;
        Ok(rel.to_string_lossy().into_owned())
    }

    fn push(&self, op: FileOp) -> io::Result<()> {
        if !self
            .shared
            .active
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(not_leader());
        }
        self.shared.pending.lock().push(op);
        Ok(())
    }

    /// Proposes everything pending and waits for it to be applied here.
    fn flush(&self) -> io::Result<()> {
        if !self
            .shared
            .active
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(not_leader());
        }
        let mut pending = self.shared.pending.lock();
        if pending.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut *pending);
        let cmd = bincode::serialize(&ops).map_err(io::Error::other)?;
        // Proposed while holding the lock: batches commit in the order they were made.
        let r = self.shared.proposer.propose_blocking(cmd);
        drop(pending);
        r.map_err(|e| io::Error::other(e.to_string()))
    }

    /// The length a file will have once its pending operations are applied.
    fn pending_len(&self, rel: &str, applied: Option<u64>) -> Option<u64> {
        let pending = self.shared.pending.lock();
        let mut len = applied;
        for op in pending.iter() {
            match op {
                FileOp::Create(p) if p == rel => len = Some(0),
                FileOp::Write(p, off, data) if p == rel => {
                    len = Some(len.unwrap_or(0).max(off + data.len() as u64));
                }
                FileOp::SetLen(p, l) if p == rel => len = Some(*l),
                FileOp::Remove(p) if p == rel => len = None,
                _ => {}
            }
        }
        len
    }
}

impl Backend for ReplicatedBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let rel = self.rel(dir)?;
        // Directories are created at once too (empty, harmless): opening files under them
        // and listing them work before the next sync.
        fs::create_dir_all(dir)?;
        self.push(FileOp::CreateDir(rel))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let rel = self.rel(path)?;
        let exists = self
            .pending_len(&rel, fs::metadata(path).ok().map(|m| m.len()))
            .is_some();
        match mode {
            OpenMode::CreateNew if exists => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            OpenMode::CreateNew => self.push(FileOp::Create(rel.clone()))?,
            OpenMode::Existing if !exists => {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
            }
            _ => {}
        }
        Ok(Arc::new(ReplicatedFile {
            backend: self.clone(),
            path: path.to_path_buf(),
            rel,
            reader: Mutex::new(None),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path)?;
        self.push(FileOp::Remove(rel))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (self.rel(from)?, self.rel(to)?);
        self.push(FileOp::Rename(a, b))
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.flush()
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let rel = self.rel(dir)?;
        self.push(FileOp::RemoveDirAll(rel))
    }
}

/// A file of a replicated directory: writes become pending operations, reads see applied data.
struct ReplicatedFile {
    backend: ReplicatedBackend,
    path: PathBuf,
    rel: String,
    reader: Mutex<Option<File>>,
}

impl std::fmt::Debug for ReplicatedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicatedFile({})", self.rel)
    }
}

impl StorageFile for ReplicatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut reader = self.reader.lock();
        if reader.is_none() {
            *reader = Some(File::open(&self.path)?);
        }
        match reader.as_ref() {
            Some(f) => f.read_exact_at(buf, offset),
            None => Err(io::Error::other("unreachable: reader just opened")),
        }
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.backend
            .push(FileOp::Write(self.rel.clone(), offset, data.to_vec()))
    }

    fn sync(&self) -> io::Result<()> {
        self.backend.flush()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.backend.push(FileOp::SetLen(self.rel.clone(), len))
    }

    fn len(&self) -> io::Result<u64> {
        let applied = fs::metadata(&self.path).ok().map(|m| m.len());
        self.backend
            .pending_len(&self.rel, applied)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies every batch at once, as a one-node group would.
    struct Local(Arc<DirStateMachine>);

    impl Proposer for Local {
        fn propose_blocking(&self, command: Vec<u8>) -> Result<(), ClusterError> {
            self.0.apply(&command);
            Ok(())
        }
    }

    #[test]
    fn writes_reach_the_directory_only_at_sync_and_a_snapshot_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("q");
        let sm = Arc::new(DirStateMachine::new(root.clone()));
        sm.restore(None).unwrap();
        let b = ReplicatedBackend::new(root.clone(), Arc::new(Local(sm.clone())));
        b.set_active(true);
        b.create_dir_all(&root.join("log")).unwrap();
        let f = b
            .open_file(&root.join("log/a"), OpenMode::CreateNew)
            .unwrap();
        f.write_at(b"hello", 0).unwrap();
        assert_eq!(f.len().unwrap(), 5);
        assert!(!root.join("log/a").exists());
        f.sync().unwrap();
        let mut buf = [0u8; 5];
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        let snap = sm.snapshot().unwrap();
        b.remove_file(&root.join("log/a")).unwrap();
        b.sync_dir(&root).unwrap();
        assert!(!root.join("log/a").exists());
        sm.restore(Some(&snap)).unwrap();
        assert_eq!(fs::read(root.join("log/a")).unwrap(), b"hello");
        // Not the leader: writes are refused and nothing is proposed.
        b.set_active(false);
        assert!(f.write_at(b"x", 5).is_err());
        assert!(f.sync().is_err());
    }
}
