//! An in-memory [`Backend`] that models durability and injects faults, for crash-consistency tests.
//!
//! Every file keeps two images: what the process sees (`current`) and what survives a crash
//! (`durable`, updated by [`StorageFile::sync`]). Directory operations (create, rename, remove) are
//! queued per directory and reach the durable namespace only through [`Backend::sync_dir`].
//! [`FaultyBackend::crash`] simulates power loss at that instant: every handle opened before becomes
//! dead (all calls fail, as if the process died), and the file system is reset to its durable image —
//! optionally keeping a random part of the unsynced writes and directory operations, torn the way real
//! page-cache writeback can tear them ([`CrashMode::Torn`]).
//!
//! Faults: a write budget after which writes fail with `StorageFull` (a short write first, like a real
//! `pwrite` on a full disk), failing syncs, and failing every operation.
//!
//! Memory bound: it holds every file twice in memory (current + durable); for tests only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Backend, OpenMode, StorageFile};

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Exactly what was synced survives; every unsynced write and directory operation is lost.
    LoseUnsynced,
    /// What was synced survives, plus a random prefix (chosen by `seed`) of each file's unsynced
    /// bytes, possibly followed by a few zero bytes (a length update that outran the data), plus a
    /// random prefix of the queued directory operations.
    Torn {
        /// Seed of the random choices.
        seed: u64,
    },
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Bytes allocated by `preallocate`: writes below this need no space (the write budget).
    allocated: u64,
}

#[derive(Debug, Clone)]
enum DirOp {
    Create { path: PathBuf, ino: u64 },
    Remove { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        match self {
            DirOp::Create { path, .. } | DirOp::Remove { path } => path.parent() == Some(dir),
            DirOp::Rename { from, to } => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Create { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Remove { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    next_ino: u64,
    files: HashMap<u64, MemFile>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    write_budget: Option<u64>,
    fail_syncs: Option<io::ErrorKind>,
    fail_all: Option<io::ErrorKind>,
    hold_syncs: bool,
    sync_delay: Option<std::time::Duration>,
    syncs: u64,
}

/// Blocks while syncs are held, then applies the configured sync delay (outside the lock, so other
/// operations proceed meanwhile, as with a slow real fsync).
fn sync_gate(state: &Mutex<State>) {
    loop {
        let (hold, delay) = {
            let st = state.lock();
            (st.hold_syncs, st.sync_delay)
        };
        if !hold {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The fault-injecting in-memory backend. Cloning shares the same simulated disk.
///
/// [`FaultyBackend::shared`] hands out a handle bound to the current "process incarnation": after
/// [`FaultyBackend::crash`], every operation through it (and every file opened through it) fails, as if
/// the process had died with the machine. The `FaultyBackend` itself always acts on the current one.
#[derive(Debug, Clone, Default)]
pub struct FaultyBackend {
    state: Arc<Mutex<State>>,
    /// `Some(epoch)`: a handle that dies at the next crash.
    epoch: Option<u64>,
}

fn injected(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "injected fault")
}

fn dead() -> io::Error {
    io::Error::other("handle from before a simulated crash")
}

/// A small deterministic generator (splitmix64) so the crate needs no RNG dependency.
fn splitmix(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl FaultyBackend {
    /// A new, empty simulated disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle for one process incarnation, as the trait object [`crate::QueueLog::open`] takes; it
    /// dies at the next [`FaultyBackend::crash`].
    pub fn shared(&self) -> Arc<dyn Backend> {
        let epoch = self.state.lock().epoch;
        Arc::new(FaultyBackend {
            state: self.state.clone(),
            epoch: Some(epoch),
        })
    }

    /// Simulates power loss now (see the module docs). Handles opened before become dead.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.state.lock();
        st.epoch += 1;
        match mode {
            CrashMode::LoseUnsynced => {
                for f in st.files.values_mut() {
                    f.current = f.durable.clone();
                }
            }
            CrashMode::Torn { seed } => {
                let mut seed = seed;
                let keep_ops = if st.pending.is_empty() {
                    0
                } else {
                    (splitmix(&mut seed) % (st.pending.len() as u64 + 1)) as usize
                };
                let ops: Vec<DirOp> = st.pending[..keep_ops].to_vec();
                for op in &ops {
                    op.apply(&mut st.durable_names);
                }
                let mut inos: Vec<u64> = st.files.keys().copied().collect();
                inos.sort_unstable();
                for ino in inos {
                    let r1 = splitmix(&mut seed);
                    let r2 = splitmix(&mut seed);
                    let f = st.files.get_mut(&ino).expect("listed inode");
                    let common = f
                        .current
                        .iter()
                        .zip(f.durable.iter())
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(f.durable.len());
                    if f.current.len() > common {
                        let extra = (f.current.len() - common) as u64;
                        let keep = common + (r1 % (extra + 1)) as usize;
                        let mut img = f.current[..keep].to_vec();
                        if keep < f.current.len() && r2.is_multiple_of(3) {
                            let zeros = ((r2 >> 8) % 64) as usize;
                            img.extend(std::iter::repeat_n(0u8, zeros.min(f.current.len() - keep)));
                        }
                        f.durable = img;
                    }
                    f.current = f.durable.clone();
                }
            }
        }
        st.pending.clear();
        st.names = st.durable_names.clone();
    }

    /// After `bytes` more bytes have been written (over all files) outside space reserved by
    /// `preallocate`, writes fail with `StorageFull` (the write that crosses the limit writes its
    /// allowed prefix first). Writes into preallocated space always succeed, as on a real file
    /// system. `None` removes the limit.
    pub fn set_write_budget(&self, bytes: Option<u64>) {
        self.state.lock().write_budget = bytes;
    }

    /// Makes every file and directory sync fail with `kind` (`None` to stop).
    pub fn fail_syncs(&self, kind: Option<io::ErrorKind>) {
        self.state.lock().fail_syncs = kind;
    }

    /// Makes every operation fail with `kind` (`None` to stop).
    pub fn fail_all(&self, kind: Option<io::ErrorKind>) {
        self.state.lock().fail_all = kind;
    }

    /// While `true`, every file and directory sync blocks (a stalled disk); `false` releases them.
    pub fn hold_syncs(&self, hold: bool) {
        self.state.lock().hold_syncs = hold;
    }

    /// Makes every file and directory sync take at least `delay` (a slow disk), `None` to stop.
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.state.lock().sync_delay = delay;
    }

    /// Number of successful file and directory syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// The bytes the process currently sees in `path` (`None` if there is no such file).
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let ino = st.names.get(path)?;
        st.files.get(ino).map(|f| f.current.clone())
    }

    /// Replaces the contents of `path`, current and durable alike (to simulate media corruption).
    pub fn set_file_contents(&self, path: &Path, bytes: Vec<u8>) -> bool {
        let mut st = self.state.lock();
        let Some(ino) = st.names.get(path).copied() else {
            return false;
        };
        let f = st.files.get_mut(&ino).expect("named inode exists");
        f.current = bytes.clone();
        f.durable = bytes;
        true
    }
}

#[derive(Debug)]
struct FaultyFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    epoch: u64,
}

impl FaultyFile {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.state.lock();
        if st.epoch != self.epoch {
            return Err(dead());
        }
        if let Some(kind) = st.fail_all {
            return Err(injected(kind));
        }
        f(&mut st)
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|st| {
            let f = &st.files[&self.ino];
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let end = start
                .checked_add(buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            if end > f.current.len() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.copy_from_slice(&f.current[start..end]);
            Ok(())
        })
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(|st| {
            // Only bytes past the preallocated space need space (as on a real file system).
            let allocated = st.files[&self.ino].allocated;
            let free = allocated.saturating_sub(offset).min(data.len() as u64);
            let (n, fail) = match st.write_budget {
                Some(b) if (data.len() as u64 - free) > b => ((free + b) as usize, true),
                _ => (data.len(), false),
            };
            if let Some(b) = st.write_budget.as_mut() {
                *b -= n as u64 - free.min(n as u64);
            }
            let f = st.files.get_mut(&self.ino).expect("open inode exists");
            let start = offset as usize;
            if f.current.len() < start + n {
                f.current.resize(start + n, 0);
            }
            f.current[start..start + n].copy_from_slice(&data[..n]);
            if fail {
                Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected: no space left",
                ))
            } else {
                Ok(())
            }
        })
    }

    fn sync(&self) -> io::Result<()> {
        sync_gate(&self.state);
        self.with(|st| {
            if let Some(kind) = st.fail_syncs {
                return Err(injected(kind));
            }
            st.syncs += 1;
            let f = st.files.get_mut(&self.ino).expect("open inode exists");
            f.durable = f.current.clone();
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st| {
            let f = st.files.get_mut(&self.ino).expect("open inode exists");
            f.current.resize(len as usize, 0);
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|st| Ok(st.files[&self.ino].current.len() as u64))
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.with(|st| {
            let f = st.files.get_mut(&self.ino).expect("open inode exists");
            if (f.current.len() as u64) < len {
                f.current.resize(len as usize, 0);
            }
            f.allocated = f.allocated.max(len);
            Ok(())
        })
    }
}

impl FaultyBackend {
    fn check(&self, st: &State) -> io::Result<()> {
        if self.epoch.is_some_and(|e| e != st.epoch) {
            return Err(dead());
        }
        match st.fail_all {
            Some(kind) => Err(injected(kind)),
            None => Ok(()),
        }
    }
}

impl Backend for FaultyBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check(&st)?;
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.as_os_str().is_empty() {
                break;
            }
            st.dirs.insert(d.to_path_buf());
            cur = d.parent();
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        self.check(&st)?;
        if !st.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        // Files and subdirectories, as a real directory listing has both.
        let mut entries: Vec<String> = st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        entries.sort_unstable();
        entries.dedup();
        Ok(entries)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state.lock();
        self.check(&st)?;
        let ino = match (st.names.get(path).copied(), mode) {
            (Some(ino), OpenMode::Existing) => ino,
            (Some(_), OpenMode::CreateNew) => return Err(io::ErrorKind::AlreadyExists.into()),
            (None, OpenMode::Existing) => return Err(io::ErrorKind::NotFound.into()),
            (None, OpenMode::CreateNew) => {
                let parent = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
                if !st.dirs.contains(parent) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                st.next_ino += 1;
                let ino = st.next_ino;
                st.files.insert(ino, MemFile::default());
                st.names.insert(path.to_path_buf(), ino);
                st.pending.push(DirOp::Create {
                    path: path.to_path_buf(),
                    ino,
                });
                ino
            }
        };
        Ok(Arc::new(FaultyFile {
            state: self.state.clone(),
            ino,
            epoch: self.epoch.unwrap_or(st.epoch),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check(&st)?;
        if st.names.remove(path).is_none() {
            return Err(io::ErrorKind::NotFound.into());
        }
        st.pending.push(DirOp::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check(&st)?;
        let ino = st.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        st.names.insert(to.to_path_buf(), ino);
        st.pending.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_gate(&self.state);
        let mut st = self.state.lock();
        self.check(&st)?;
        if let Some(kind) = st.fail_syncs {
            return Err(injected(kind));
        }
        st.syncs += 1;
        let pending = std::mem::take(&mut st.pending);
        let (mine, rest): (Vec<DirOp>, Vec<DirOp>) =
            pending.into_iter().partition(|op| op.touches(dir));
        for op in &mine {
            op.apply(&mut st.durable_names);
        }
        st.pending = rest;
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check(&st)?;
        st.names.retain(|p, _| !p.starts_with(dir));
        st.durable_names.retain(|p, _| !p.starts_with(dir));
        st.pending.retain(|op| match op {
            DirOp::Create { path, .. } | DirOp::Remove { path } => !path.starts_with(dir),
            DirOp::Rename { from, to } => !from.starts_with(dir) && !to.starts_with(dir),
        });
        st.dirs.retain(|d| !d.starts_with(dir));
        Ok(())
    }
}
