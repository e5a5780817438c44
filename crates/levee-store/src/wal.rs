//! [`Wal`]: one write-ahead log shared by every [`QueueLog`](crate::QueueLog) of a broker, with one
//! group-commit thread (one `pwrite` + one `fdatasync` per commit cycle for all queues) and one
//! maintenance thread (checkpoints, sealing, reclamation, compaction). See `docs/design.md`,
//! levee-store, "Write-ahead log".
//!
//! A queue log opened with [`LogConfig::wal`](crate::LogConfig::wal) set (an *attached* log) still
//! keeps its records in its own segment files in the standalone format, but it never writes or
//! fsyncs them on the hot path: every byte range it assigns in a segment file (records, segment
//! headers, seal records) is appended to the WAL as a `write` record naming the log, the segment
//! and the offset. A durability handle resolves when the WAL's commit covers that record. The
//! records reach their segment later (the log's write-behind, which leaves out those settled by
//! then: `log::behind`), and the segment files are fsynced only by checkpoints (when a WAL file is
//! full), sealing and closing, on the maintenance thread, never while a confirm waits.
//!
//! Recovery ([`Wal::open`], before any queue log is opened) is redo: every `write` record of the
//! WAL's valid prefix is written again at its offset of its segment file, the touched files are
//! fsynced, the WAL files are deleted and a fresh one is started; each queue log's own recovery then
//! scans its segments as usual. So a segment file is always valid up to everything the WAL made
//! durable, whatever the page cache wrote back or lost.
//!
//! Logical logs: each attached log has a [`LogId`] (unique for this WAL's lifetime and recorded with
//! its directory in an `attach` record at the head of every WAL file it writes into) and its own
//! truncation point (its segments are deleted by its own reclamation, independently of the others).
//! The replication branch's Raft logs attach the same way (one queue log per Raft group:
//! `append_batch` = append, settling a prefix = `truncate_prefix`, [`crate::Durability`] = durable
//! notification).
//!
//! Invariants:
//! 1. Per attached log, WAL order is segment write order: the WAL record is appended right after the
//!    segment `pwrite` succeeded (or in its place, written behind), under the log's write lock. So the WAL holds, for each log, a
//!    contiguous range of its segment bytes ending at its newest write.
//! 2. A WAL file is retired (deleted, or renamed to a spare for reuse) only after every log that
//!    wrote into it (or into an older file) had all its unsealed segments and its directory
//!    fsynced (a checkpoint, or its close): so retiring it loses no byte a handle reported durable.
//! 3. Redo skips records of a log that is not the newest attached to its directory (a deleted and
//!    re-declared queue, a log reopened after a failure: the new log's open fsynced everything and
//!    its `attach` record, durable before its first write, supersedes the old one), records for a
//!    missing directory (a deleted queue), for a sealed segment (already fsynced) and for a segment
//!    below the directory's newest one that no longer exists (reclaimed). It creates a missing
//!    segment only above the newest one (created, but its directory entry was not yet durable).
//! 4. `synced` of an epoch's `SyncShared` only grows, and only after the commit's fdatasync
//!    returned. A failed write or fsync fails the epoch: every handle of it and every log attached
//!    in it fails (they are reopened by their owner); the commit thread starts a new epoch in a
//!    fresh file once a file can be created again.
//! 5. A scan of a WAL file reads only frames of its current life: from format version 5 each
//!    frame's stored CRC is salted with the file's index (`frame_salt`), so the frames a
//!    recycled file keeps from its earlier life (another index) fail their check and end the scan.
//!    A spare gets its new header (fsynced) before it takes its new name.
//!
//! Memory bound: the pending buffer holds at most [`WalConfig::max_pending_bytes`] (appenders wait
//! for the commit thread beyond that: backpressure), plus one spare buffer of the same size; the
//! logs' write-behind at most [`WalConfig::write_behind_bytes`] each and
//! [`WalConfig::write_behind_total`] together (appenders write their segments beyond that).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::{Backend, OpenMode, StorageFile};
use crate::durability::SyncShared;
use crate::error::{Result, StoreError};
use crate::format::{self, FrameError};

/// Identifies one logical log inside a [`Wal`].
pub type LogId = u64;

/// Magic at the start of every WAL file.
pub const WAL_MAGIC: [u8; 8] = *b"LEVEEWAL";
/// Oldest format version of a WAL file still read (the WAL came with version 3; version 4 changed
/// only segments).
const WAL_MIN_FORMAT_VERSION: u16 = 3;
/// Format version this build writes in WAL headers. Version 5: every frame's stored CRC is XORed
/// with the salt of the file's index (WAL files are recycled, and a recycled file's stale
/// frames must not check). Segments stay at [`crate::format::FORMAT_VERSION`]; the WAL's version is its own
/// from 5 on, and a build that knows only 4 refuses a version 5 WAL with a clear error.
pub const WAL_FORMAT_VERSION: u16 = 5;
/// Name suffix of a spare (retired, to be recycled) WAL file: `<old index>.spare`.
const SPARE_SUFFIX: &str = ".spare";
/// Size of a WAL file header: magic | version u16 | flags u16 (0) | file index u64 | crc32c u32.
pub const WAL_HEADER_LEN: usize = 24;
/// WAL record: bytes written to a segment (log id u64, segment index u64, offset u64, bytes).
const T_WRITE: u8 = 1;
/// WAL record: a log attached (log id u64, directory path bytes).
const T_ATTACH: u8 = 2;
/// WAL record: the last record of a full file.
const T_END: u8 = 3;
const END_FRAME_LEN: u64 = format::FRAME_PREFIX_LEN as u64 + 1;

/// Configuration of the shared WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of one WAL file (preallocated). When it is full the commit thread starts the next one
    /// and a checkpoint deletes the full one. Default 64 MiB.
    pub file_bytes: u64,
    /// Most bytes waiting for the commit thread; appenders block beyond (backpressure). Default 32 MiB.
    pub max_pending_bytes: usize,
    /// Records nobody waits for (settlements, logs under `Interval`/`Never`) are committed at the
    /// latest this long after they were appended (they usually ride along sooner). Default 50 ms.
    pub lazy_commit: Duration,
    /// Write-behind: most bytes one attached log keeps in memory, logged to the WAL but not yet
    /// written to its segment files (records settled before they are written never are). An
    /// appender past it writes its log's oldest half. Default 4 MiB (measured in
    /// `docs/BENCHMARKS.md`); 0: attached logs write their segments at once, as standalone logs
    /// do.
    pub write_behind_bytes: usize,
    /// Write-behind: most such bytes over all attached logs; an appender past it writes all of
    /// its log's. Default 64 MiB.
    pub write_behind_total: usize,
    /// Full WAL files kept as spares after their checkpoint, and reused for the next files
    /// instead of creating new ones. Default 1 (then the WAL directory holds at most three
    /// files: the active one, the next one made ahead, one spare). Deleting a preallocated file
    /// frees (and on a `discard` mount trims) all its blocks at once, which stalled the
    /// commits' fdatasync by tens of ms; a recycled file also has its blocks written already,
    /// so a commit's fdatasync converts no unwritten extents. 0: delete them, as before.
    pub recycle_files: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            file_bytes: 64 << 20,
            max_pending_bytes: 32 << 20,
            lazy_commit: Duration::from_millis(50),
            write_behind_bytes: 4 << 20,
            write_behind_total: 64 << 20,
            recycle_files: 1,
        }
    }
}

/// Counters of the WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Commit cycles (one write + one fdatasync each) since open.
    pub commits: u64,
    /// Bytes committed since open.
    pub bytes: u64,
    /// Duration of the last commit's write + fdatasync.
    pub last_commit: Option<Duration>,
    /// Checkpoints completed (WAL files deleted after the segments they cover were fsynced).
    pub checkpoints: u64,
    /// Logs attached now.
    pub attached: usize,
    /// Index of the WAL file being written.
    pub file_index: u64,
    /// Failures survived (epochs started after a failed write or fsync).
    pub failures: u64,
    /// Rotations into a file the maintenance thread had made ahead (the others created their
    /// file on the commit path).
    pub rotations_made_ahead: u64,
    /// Rotations that created their file on the commit path.
    pub rotations_made_inline: u64,
    /// WAL files made by reusing a spare (see [`WalConfig::recycle_files`]) rather than creating one.
    pub files_recycled: u64,
}

/// What [`Wal::open`]'s redo found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// WAL files read.
    pub files: usize,
    /// Bytes of valid records read.
    pub bytes: u64,
    /// `write` records applied (written again into their segment).
    pub applied: u64,
    /// `write` records skipped (superseded log, deleted queue, sealed or reclaimed segment).
    pub skipped: u64,
    /// Segment files fsynced after the redo.
    pub synced_files: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// What the WAL needs from an attached log (implemented by the queue log).
pub(crate) trait Attached: Send + Sync + fmt::Debug {
    /// Fsyncs every unsealed segment and the directory, seals rolled segments.
    fn checkpoint(&self) -> Result<()>;
    /// Sealing, reclamation, compaction (may fsync).
    fn maintain(&self) -> Result<()>;
    /// The WAL epoch the log is attached in failed: the log stops and must be reopened.
    fn wal_failed(&self, error: &StoreError);
}

/// A log's attachment: what its writes need.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    pub(crate) id: LogId,
    pub(crate) epoch: u64,
    pub(crate) sync: Arc<SyncShared>,
}

/// The shared write-ahead log (cheap to clone: a handle). Equality is identity.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<WalInner>,
    /// Dropped with the last handle: then the threads are told to finish (without being joined).
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<WalInner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.signal_shutdown();
    }
}

impl PartialEq for Wal {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Wal {}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("dir", &self.inner.dir).finish()
    }
}

struct Buf {
    data: Vec<u8>,
    /// Logical position after `data` (bytes appended since open).
    end: u64,
    epoch: u64,
    sync: Arc<SyncShared>,
    failed: Option<StoreError>,
    closed: bool,
}

struct Logs {
    next_id: LogId,
    /// Attached logs: id -> (directory, epoch, the log).
    attached: HashMap<LogId, (PathBuf, u64, Weak<dyn Attached>)>,
    /// Directories attached (or detached) while WAL file `value` was written: a new attachment to
    /// such a directory waits until its `attach` record is durable (invariant 3).
    seen: HashMap<PathBuf, u64>,
    /// The ids in `attached` of each directory (usually one; two while a closed log's
    /// successor opens), so an attach does not scan every attached log.
    by_dir: HashMap<PathBuf, Vec<LogId>>,
}

impl Logs {
    fn insert(&mut self, id: LogId, dir: &Path, epoch: u64, log: Weak<dyn Attached>) {
        self.attached.insert(id, (dir.to_path_buf(), epoch, log));
        self.by_dir.entry(dir.to_path_buf()).or_default().push(id);
    }

    fn remove(&mut self, id: LogId) -> Option<(PathBuf, u64, Weak<dyn Attached>)> {
        let entry = self.attached.remove(&id)?;
        if let Some(ids) = self.by_dir.get_mut(&entry.0) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_dir.remove(&entry.0);
            }
        }
        Some(entry)
    }
}

#[derive(Default)]
struct Maint {
    queue: VecDeque<Weak<dyn Attached>>,
    /// Delete WAL files below this index once a checkpoint succeeded.
    checkpoint: Option<u64>,
    /// Make the next WAL file ahead (`WalInner::prepared`).
    prepare: bool,
    shutdown: bool,
}

struct WalInner {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: WalConfig,
    buf: Mutex<Buf>,
    space: Condvar,
    logs: Mutex<Logs>,
    maint: Mutex<Maint>,
    maint_cv: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Mutex<WalStats>,
    file_index: AtomicU64,
    /// The file being written: used by the commit thread, and by a restart after a failure.
    active: Mutex<Active>,
    /// Write-behind bytes of all attached logs.
    behind_total: AtomicUsize,
    /// The segment writes of closed logs that could not write their records behind (a full
    /// disk, a failed write), kept until the next log of their directory opens
    /// ([`Wal::flush_orphans`]). Their attachment stays with a dead handle, so no WAL file they
    /// wrote into is deleted meanwhile.
    orphans: Mutex<Vec<(PathBuf, Vec<crate::log::OrphanWrite>)>>,
    /// The next WAL file, made ahead by the maintenance thread (created, preallocated, header
    /// fsynced with the directory) so a rotation costs the commit path no file creation: only its
    /// `attach` records, written in front of the commit's records. Held while a file is made,
    /// so the commit thread never creates the same name at the same time.
    prepared: Mutex<Option<(u64, Arc<dyn StorageFile>)>>,
    /// Spare WAL files (paths), at most [`WalConfig::recycle_files`]: full files retired by a
    /// checkpoint, reused by [`WalInner::create_file`].
    spares: Mutex<Vec<PathBuf>>,
}

struct Active {
    file: Arc<dyn StorageFile>,
    index: u64,
    pos: u64,
}

fn wal_name(index: u64) -> String {
    format!("{index:016x}.wal")
}

fn parse_wal_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

fn spare_name(index: u64) -> String {
    format!("{index:016x}{SPARE_SUFFIX}")
}

/// The value every frame's stored CRC in WAL file `index` is XORed with (version 5): distinct for
/// any two indices less than 2^32 apart (an odd multiplier and an XOR are bijections of `u32`),
/// so no frame left in a recycled file checks under its new index.
pub(crate) fn frame_salt(index: u64) -> u32 {
    ((index as u32) ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b1)
}

fn encode_header(index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(WAL_HEADER_LEN);
    out.extend_from_slice(&WAL_MAGIC);
    out.extend_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn encode_attach(out: &mut Vec<u8>, id: LogId, dir: &Path) {
    format::frame_into(out, T_ATTACH, |b| {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(dir.as_os_str().as_bytes());
    });
}

/// One decoded WAL record.
enum WalRecord<'a> {
    Write {
        id: LogId,
        segment: u64,
        offset: u64,
        bytes: &'a [u8],
    },
    Attach {
        id: LogId,
        dir: PathBuf,
    },
    End,
}

fn parse_record<'a>(kind: u8, body: &'a [u8]) -> std::result::Result<WalRecord<'a>, FrameError> {
    let u64_at = |i: usize| -> std::result::Result<u64, FrameError> {
        body.get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or(FrameError::Malformed("short WAL record"))
    };
    match kind {
        T_WRITE => Ok(WalRecord::Write {
            id: u64_at(0)?,
            segment: u64_at(8)?,
            offset: u64_at(16)?,
            bytes: &body[24..],
        }),
        T_ATTACH => Ok(WalRecord::Attach {
            id: u64_at(0)?,
            dir: PathBuf::from(std::ffi::OsStr::from_bytes(&body[8..])),
        }),
        T_END => Ok(WalRecord::End),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// The valid records of one WAL file's bytes: (header ok, records, valid length). A torn or damaged
/// tail ends the file (invariant: nothing after it was reported durable).
fn scan_file(path: &Path, index: u64, data: &[u8]) -> Result<Vec<(u8, std::ops::Range<usize>)>> {
    if data.len() < WAL_HEADER_LEN {
        return Ok(Vec::new());
    }
    let version = u16::from_le_bytes([data[8], data[9]]);
    let crc = u32::from_le_bytes(data[20..24].try_into().expect("4 bytes"));
    if data[..8] != WAL_MAGIC || crc32c::crc32c(&data[..20]) != crc {
        // A header torn while the file was created (a file's header is fsynced, with the
        // directory, before any record is written into it): nothing in it was ever committed.
        tracing::warn!(path = %path.display(), "WAL file with a torn header ignored");
        return Ok(Vec::new());
    }
    if !(WAL_MIN_FORMAT_VERSION..=WAL_FORMAT_VERSION).contains(&version) {
        return Err(StoreError::FormatVersion {
            path: path.to_path_buf(),
            found: version,
            supported: WAL_FORMAT_VERSION,
        });
    }
    let found = u64::from_le_bytes(data[12..20].try_into().expect("8 bytes"));
    if found != index {
        return Err(StoreError::corruption(
            path,
            12,
            format!("header says WAL file {found:016x}"),
        ));
    }
    // Versions 3 and 4 never recycled files: their frames are not salted.
    let salt = if version >= 5 { frame_salt(index) } else { 0 };
    let mut out = Vec::new();
    let mut off = WAL_HEADER_LEN;
    while off < data.len() {
        let Ok(frame) = format::decode_frame_salted(&data[off..], salt) else {
            break;
        };
        let body_start = off + format::FRAME_PREFIX_LEN + 1;
        out.push((frame.kind, body_start..off + frame.total_len));
        off += frame.total_len;
        if frame.kind == T_END {
            break;
        }
    }
    Ok(out)
}

/// A queue directory's segment files as redo sees them.
struct RedoDir {
    exists: bool,
    /// index -> sealed
    names: HashMap<u64, bool>,
    max: Option<u64>,
    files: HashMap<u64, Arc<dyn StorageFile>>,
    created: bool,
}

impl RedoDir {
    fn load(backend: &dyn Backend, dir: &Path) -> Result<Self> {
        let list = match backend.list_dir(dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RedoDir {
                    exists: false,
                    names: HashMap::new(),
                    max: None,
                    files: HashMap::new(),
                    created: false,
                });
            }
            Err(e) => return Err(StoreError::io("list_dir", dir, e)),
        };
        let mut names = HashMap::new();
        for n in &list {
            if let Some((index, sealed)) = crate::log::parse_segment_name(n) {
                names.insert(index, sealed);
            }
        }
        let max = names.keys().copied().max();
        Ok(RedoDir {
            exists: true,
            names,
            max,
            files: HashMap::new(),
            created: false,
        })
    }

    /// The file a `write` record for `segment` goes to, or `None` if it is skipped (invariant 3).
    fn target(
        &mut self,
        backend: &dyn Backend,
        dir: &Path,
        segment: u64,
    ) -> Result<Option<Arc<dyn StorageFile>>> {
        if !self.exists {
            return Ok(None);
        }
        if let Some(f) = self.files.get(&segment) {
            return Ok(Some(f.clone()));
        }
        let path = dir.join(crate::log::segment_name(segment, false));
        let file = match self.names.get(&segment) {
            Some(true) => return Ok(None),
            Some(false) => backend
                .open_file(&path, OpenMode::Existing)
                .map_err(|e| StoreError::io("open", &path, e))?,
            None if self.max.is_none_or(|m| segment > m) => {
                let f = backend
                    .open_file(&path, OpenMode::CreateNew)
                    .map_err(|e| StoreError::io("create", &path, e))?;
                self.names.insert(segment, false);
                self.max = Some(segment);
                self.created = true;
                f
            }
            None => return Ok(None),
        };
        self.files.insert(segment, file.clone());
        Ok(Some(file))
    }
}

impl Wal {
    /// Opens the WAL in `dir` (creating it), redoes every record of the WAL files found into the
    /// segment files of the logs that wrote them, fsyncs those, deletes the old WAL files, starts a
    /// fresh one and the commit and maintenance threads. Call it before opening any queue log that
    /// attaches to it. Blocking.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        config: WalConfig,
    ) -> Result<(Wal, ReplayReport)> {
        if config.file_bytes < 4096 || config.max_pending_bytes == 0 || config.lazy_commit.is_zero()
        {
            return Err(StoreError::InvalidConfig {
                reason: "WAL file_bytes must be >= 4096, max_pending_bytes and lazy_commit > 0"
                    .into(),
            });
        }
        let started = Instant::now();
        let dir = dir.into();
        backend
            .create_dir_all(&dir)
            .map_err(|e| StoreError::io("create_dir", &dir, e))?;
        let names = backend
            .list_dir(&dir)
            .map_err(|e| StoreError::io("list_dir", &dir, e))?;
        let mut indices: Vec<u64> = names.iter().filter_map(|n| parse_wal_name(n)).collect();
        // Spares hold nothing anyone needs (a recycled file's header is rewritten before it
        // takes a WAL name): keep as many as configured, remove the rest.
        let mut spares = Vec::new();
        for n in names.iter().filter(|n| n.ends_with(SPARE_SUFFIX)) {
            let path = dir.join(n);
            if spares.len() < config.recycle_files {
                spares.push(path);
            } else {
                backend
                    .remove_file(&path)
                    .map_err(|e| StoreError::io("remove", &path, e))?;
            }
        }
        indices.sort_unstable();
        let mut report = ReplayReport::default();
        let read = |index: u64| -> Result<Vec<u8>> {
            let path = dir.join(wal_name(index));
            Ok(crate::log::open_whole(backend.as_ref(), &path)?.1)
        };
        // Pass 1: which log is the newest of each directory.
        let mut dirs_of: HashMap<LogId, PathBuf> = HashMap::new();
        let mut newest: HashMap<PathBuf, LogId> = HashMap::new();
        let mut max_id = 0;
        for &index in &indices {
            let data = read(index)?;
            let path = dir.join(wal_name(index));
            for (kind, range) in scan_file(&path, index, &data)? {
                if kind != T_ATTACH {
                    continue;
                }
                if let Ok(WalRecord::Attach { id, dir: d }) = parse_record(kind, &data[range]) {
                    max_id = max_id.max(id + 1);
                    let e = newest.entry(d.clone()).or_insert(id);
                    *e = (*e).max(id);
                    dirs_of.insert(id, d);
                }
            }
        }
        // Pass 2: redo.
        let mut redo: HashMap<PathBuf, RedoDir> = HashMap::new();
        for &index in &indices {
            let data = read(index)?;
            let path = dir.join(wal_name(index));
            report.files += 1;
            for (kind, range) in scan_file(&path, index, &data)? {
                report.bytes += (range.len() + format::FRAME_PREFIX_LEN + 1) as u64;
                let Ok(WalRecord::Write {
                    id,
                    segment,
                    offset,
                    bytes,
                }) = parse_record(kind, &data[range.clone()])
                else {
                    continue;
                };
                let Some(d) = dirs_of.get(&id).filter(|d| newest.get(*d) == Some(&id)) else {
                    report.skipped += 1;
                    continue;
                };
                if !redo.contains_key(d) {
                    redo.insert(d.clone(), RedoDir::load(&*backend, d)?);
                }
                let rd = redo.get_mut(d).expect("inserted");
                match rd.target(&*backend, d, segment)? {
                    Some(file) => {
                        file.write_at(bytes, offset).map_err(|e| {
                            StoreError::io(
                                "write",
                                &d.join(crate::log::segment_name(segment, false)),
                                e,
                            )
                        })?;
                        report.applied += 1;
                    }
                    None => report.skipped += 1,
                }
            }
        }
        for (d, rd) in &redo {
            for (segment, file) in &rd.files {
                file.sync().map_err(|e| {
                    StoreError::io(
                        "fsync",
                        &d.join(crate::log::segment_name(*segment, false)),
                        e,
                    )
                })?;
                report.synced_files += 1;
            }
            if rd.created {
                backend
                    .sync_dir(d)
                    .map_err(|e| StoreError::io("fsync_dir", d, e))?;
            }
        }
        drop(redo);
        let first = indices.last().map_or(0, |i| i + 1);
        let sync = Arc::new(SyncShared::default());
        let inner = Arc::new(WalInner {
            backend,
            dir,
            config,
            buf: Mutex::new(Buf {
                data: Vec::new(),
                end: 0,
                epoch: 0,
                sync,
                failed: None,
                closed: false,
            }),
            space: Condvar::new(),
            logs: Mutex::new(Logs {
                next_id: max_id,
                attached: HashMap::new(),
                by_dir: HashMap::new(),
                seen: HashMap::new(),
            }),
            maint: Mutex::new(Maint::default()),
            maint_cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            stats: Mutex::new(WalStats::default()),
            file_index: AtomicU64::new(first),
            active: Mutex::new(Active {
                file: Arc::new(NoWalFile),
                index: first,
                pos: 0,
            }),
            behind_total: AtomicUsize::new(0),
            orphans: Mutex::new(Vec::new()),
            prepared: Mutex::new(None),
            spares: Mutex::new(spares),
        });
        // Everything is in the segment files now: start over (the old files become spares or
        // go).
        for &index in &indices {
            inner.retire(index)?;
        }
        // new_file syncs the WAL directory, which also makes the retirements durable.
        let (file, _, pos) = inner.new_file(first, 0, true)?;
        *inner.active.lock() = Active {
            file,
            index: first,
            pos,
        };
        let commit_inner = inner.clone();
        let commit = std::thread::Builder::new()
            .name("levee-wal-commit".into())
            .spawn(move || commit_loop(&commit_inner))
            .map_err(|e| StoreError::io("spawn WAL thread", &inner.dir, e))?;
        let maint_inner = inner.clone();
        let maint = std::thread::Builder::new()
            .name("levee-wal-maint".into())
            .spawn(move || maint_loop(&maint_inner))
            .map_err(|e| StoreError::io("spawn WAL thread", &inner.dir, e))?;
        inner.threads.lock().extend([commit, maint]);
        inner.request_prepare();
        report.elapsed = started.elapsed();
        let stop = Arc::new(StopOnDrop(inner.clone()));
        Ok((Wal { inner, _stop: stop }, report))
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        let mut s = self.inner.stats.lock().clone();
        s.attached = self.inner.logs.lock().attached.len();
        s.file_index = self.inner.file_index.load(Ordering::Relaxed);
        s
    }

    /// Commits everything appended so far, stops the threads. Attached logs should be closed first
    /// (their later writes fail with [`StoreError::Closed`]). Blocking.
    pub fn close(&self) -> Result<()> {
        self.inner.signal_shutdown();
        let threads: Vec<_> = self.inner.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        match &self.inner.buf.lock().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Attaches a log writing to `dir`: writes its `attach` record and returns its attachment.
    /// If the directory was attached before within the WAL files still present, waits until the
    /// record is durable (invariant 3).
    pub(crate) fn attach(&self, dir: &Path, log: Weak<dyn Attached>) -> Result<Attachment> {
        if self.inner.buf.lock().failed.is_some() {
            self.inner.restart()?;
        }
        let (epoch, sync) = {
            let b = self.inner.buf.lock();
            if b.closed {
                return Err(StoreError::Closed);
            }
            if let Some(e) = &b.failed {
                return Err(StoreError::Failed {
                    cause: Arc::new(e.clone()),
                });
            }
            (b.epoch, b.sync.clone())
        };
        let (id, wait) = {
            let mut logs = self.inner.logs.lock();
            // A log of this directory that closed without making its segments durable: this
            // log's recovery just fsynced them.
            let gone: Vec<LogId> = logs
                .by_dir
                .get(dir)
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| {
                    logs.attached
                        .get(i)
                        .is_some_and(|(_, _, l)| l.strong_count() == 0)
                })
                .collect();
            for i in gone {
                logs.remove(i);
            }
            let id = logs.next_id;
            logs.next_id += 1;
            logs.insert(id, dir, epoch, log);
            let file = self.inner.file_index.load(Ordering::Relaxed);
            let wait = logs.seen.insert(dir.to_path_buf(), file).is_some();
            (id, wait)
        };
        let at = Attachment { id, epoch, sync };
        let pos = self.append(&at, true, |out| encode_attach(out, id, dir));
        let pos = match pos {
            Ok(p) => p,
            Err(e) => {
                self.detach(id);
                return Err(e);
            }
        };
        if wait {
            let handle = crate::Durability::pending(at.sync.clone(), pos, true);
            if let Err(e) = handle.wait() {
                self.detach(id);
                return Err(e);
            }
        }
        Ok(at)
    }

    /// Blocks until WAL position `pos` of `at`'s epoch is durable (or failed), for the
    /// maintenance thread. Gives up with [`StoreError::Closed`] once the WAL is closing: `close`
    /// joins the maintenance thread, and a wait its commit thread will never answer (it may
    /// already be gone) must not hold that join. Blocking.
    pub(crate) fn wait_durable(&self, at: &Attachment, pos: u64) -> Result<()> {
        at.sync.request(pos);
        loop {
            let handle = crate::Durability::pending(at.sync.clone(), pos, true);
            match handle.wait_timeout(Some(Duration::from_millis(50))) {
                Some(r) => return r.map(|_| ()),
                None if self.inner.buf.lock().closed => {
                    tracing::debug!(pos, "WAL closing: maintenance stops waiting for a commit");
                    return Err(StoreError::Closed);
                }
                None => {}
            }
        }
    }

    /// [`WalConfig::write_behind_bytes`].
    pub(crate) fn write_behind_bytes(&self) -> usize {
        self.inner.config.write_behind_bytes
    }

    /// Counts write-behind bytes queued by a log.
    pub(crate) fn behind_add(&self, n: usize) {
        self.inner.behind_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts write-behind bytes written (or left out) by a log.
    pub(crate) fn behind_sub(&self, n: usize) {
        self.inner.behind_total.fetch_sub(n, Ordering::Relaxed);
    }

    /// Whether all logs together keep more than [`WalConfig::write_behind_total`] behind.
    pub(crate) fn behind_over_total(&self) -> bool {
        self.inner.behind_total.load(Ordering::Relaxed) > self.inner.config.write_behind_total
    }

    /// Keeps the segment writes of a closed log that could not make them (see
    /// `WalInner::orphans`).
    pub(crate) fn keep_orphan(&self, dir: &Path, writes: Vec<crate::log::OrphanWrite>) {
        self.inner.orphans.lock().push((dir.to_path_buf(), writes));
    }

    /// Before a log of `dir` opens: makes the writes closed logs of that directory left behind
    /// (so the new log's recovery reads them and fsyncs them). An error keeps them; the open
    /// fails and is retried by its owner.
    pub(crate) fn flush_orphans(&self, dir: &Path) -> Result<()> {
        let mine: Vec<(PathBuf, Vec<crate::log::OrphanWrite>)> = {
            let mut o = self.inner.orphans.lock();
            let (mine, rest) = std::mem::take(&mut *o)
                .into_iter()
                .partition(|(d, _)| d == dir);
            *o = rest;
            mine
        };
        for (i, (_, writes)) in mine.iter().enumerate() {
            if let Err(e) = writes.iter().try_for_each(|w| w.apply()) {
                self.inner.orphans.lock().extend(mine[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Forgets an attached log (after it made its segments durable).
    pub(crate) fn detach(&self, id: LogId) {
        let mut logs = self.inner.logs.lock();
        if let Some((dir, _, _)) = logs.remove(id) {
            let file = self.inner.file_index.load(Ordering::Relaxed);
            logs.seen.insert(dir, file);
        }
    }

    /// Appends a `write` record for bytes a log wrote at `offset` of `segment`. Returns the WAL
    /// position after it.
    pub(crate) fn log_write(
        &self,
        at: &Attachment,
        eager: bool,
        segment: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u64> {
        self.append(at, eager, |out| {
            format::frame_into(out, T_WRITE, |b| {
                b.extend_from_slice(&at.id.to_le_bytes());
                b.extend_from_slice(&segment.to_le_bytes());
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(bytes);
            });
        })
    }

    /// Queues a log for the maintenance thread.
    pub(crate) fn maintain(&self, log: Weak<dyn Attached>) {
        let mut m = self.inner.maint.lock();
        m.queue.push_back(log);
        self.inner.maint_cv.notify_one();
    }

    fn append(
        &self,
        at: &Attachment,
        eager: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<u64> {
        let inner = &*self.inner;
        let mut b = inner.buf.lock();
        loop {
            if b.closed {
                return Err(StoreError::Closed);
            }
            if b.epoch != at.epoch || b.failed.is_some() {
                let cause = b.failed.clone().unwrap_or(StoreError::Closed);
                return Err(StoreError::Failed {
                    cause: Arc::new(cause),
                });
            }
            if b.data.len() < inner.config.max_pending_bytes {
                break;
            }
            inner.space.wait(&mut b);
        }
        let before = b.data.len();
        encode(&mut b.data);
        b.end += (b.data.len() - before) as u64;
        let end = b.end;
        drop(b);
        let sync = &at.sync;
        let mut s = sync.state.lock();
        if end > s.written {
            s.written = end;
        }
        if eager && end > s.requested {
            s.requested = end;
        }
        sync.work.notify_one();
        Ok(end)
    }
}

impl WalInner {
    fn signal_shutdown(&self) {
        let sync = {
            let mut b = self.buf.lock();
            b.closed = true;
            b.sync.clone()
        };
        self.space.notify_all();
        {
            let mut s = sync.state.lock();
            s.shutdown = true;
            sync.work.notify_one();
        }
        let mut m = self.maint.lock();
        m.shutdown = true;
        self.maint_cv.notify_all();
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(wal_name(index))
    }

    /// WAL file `index`: taken from [`WalInner::prepared`] if it was made ahead (the second
    /// value says so), else created, with the `attach` records of every log attached in `epoch`
    /// after its header. With `sync` those are fsynced here; without, the caller's commit fsyncs
    /// them with its records (a rotation). Returns the file, whether it was made ahead, and its
    /// write position.
    fn new_file(
        &self,
        index: u64,
        epoch: u64,
        sync: bool,
    ) -> Result<(Arc<dyn StorageFile>, bool, u64)> {
        let (file, ahead) = {
            let mut prepared = self.prepared.lock();
            let made = match prepared.take() {
                Some((i, f)) if i == index => (f, true),
                stale => {
                    if let Some((i, _)) = stale {
                        // Made for a name a failure skipped: never written, nothing to keep.
                        let _ = self.backend.remove_file(&self.path(i));
                    }
                    (self.create_file(index)?, false)
                }
            };
            // Under the lock: `prepare_next` makes the file after this one, never this one.
            self.file_index.store(index, Ordering::Relaxed);
            made
        };
        let mut head = self.attach_frames(epoch);
        format::salt_frames(&mut head, frame_salt(index));
        let path = self.path(index);
        file.write_at(&head, WAL_HEADER_LEN as u64)
            .and_then(|()| if sync { file.sync() } else { Ok(()) })
            .map_err(|e| StoreError::io("write", &path, e))?;
        Ok((file, ahead, (WAL_HEADER_LEN + head.len()) as u64))
    }

    /// Creates WAL file `index`: preallocated, its header written and fsynced, the directory
    /// fsynced (nothing in it yet), by recycling a spare if there is one. A failure after the
    /// file was created removes it (best effort). Blocking.
    fn create_file(&self, index: u64) -> Result<Arc<dyn StorageFile>> {
        let spare = self.spares.lock().pop();
        if let Some(spare) = spare {
            match self.recycle(&spare, index) {
                Ok(f) => {
                    self.stats.lock().files_recycled += 1;
                    return Ok(f);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "recycling a WAL file failed; creating one");
                    let _ = self.backend.remove_file(&spare);
                    // Failed after its rename (the directory fsync): the file has the new name,
                    // which the fresh file below must take.
                    let _ = self.backend.remove_file(&self.path(index));
                }
            }
        }
        let path = self.path(index);
        let file = self
            .backend
            .open_file(&path, OpenMode::CreateNew)
            .map_err(|e| StoreError::io("create", &path, e))?;
        let _ = file.preallocate(self.config.file_bytes);
        let made = file
            .write_at(&encode_header(index), 0)
            .and_then(|()| file.sync())
            .map_err(|e| StoreError::io("write", &path, e))
            .and_then(|()| {
                self.backend
                    .sync_dir(&self.dir)
                    .map_err(|e| StoreError::io("fsync_dir", &self.dir, e))
            });
        if let Err(e) = made {
            let _ = self.backend.remove_file(&path);
            return Err(e);
        }
        Ok(file)
    }

    /// Makes the spare at `spare` WAL file `index`: its new header is written and fsynced while it
    /// still has its spare name (a crash then leaves a spare, ignored by recovery), then it is
    /// renamed and the directory fsynced. Its old frames stay behind the header, and none of them
    /// checks under the new index's salt: a scan stops at the first one as at zeros.
    fn recycle(&self, spare: &Path, index: u64) -> Result<Arc<dyn StorageFile>> {
        let path = self.path(index);
        let file = self
            .backend
            .open_file(spare, OpenMode::Existing)
            .map_err(|e| StoreError::io("open", spare, e))?;
        // A spare from a smaller `file_bytes`: extend it (a no-op when it is large enough).
        let _ = file.preallocate(self.config.file_bytes);
        file.write_at(&encode_header(index), 0)
            .and_then(|()| file.sync())
            .map_err(|e| StoreError::io("write", spare, e))?;
        self.backend
            .rename(spare, &path)
            .map_err(|e| StoreError::io("rename", spare, e))?;
        self.backend
            .sync_dir(&self.dir)
            .map_err(|e| StoreError::io("fsync_dir", &self.dir, e))?;
        Ok(file)
    }

    /// Retires a WAL file nothing needs any more: renamed to a spare while there are fewer than
    /// [`WalConfig::recycle_files`], else removed. Durable after the caller's `sync_dir`.
    fn retire(&self, index: u64) -> Result<()> {
        let path = self.path(index);
        let mut spares = self.spares.lock();
        if spares.len() < self.config.recycle_files {
            let to = self.dir.join(spare_name(index));
            self.backend
                .rename(&path, &to)
                .map_err(|e| StoreError::io("rename", &path, e))?;
            spares.push(to);
            return Ok(());
        }
        drop(spares);
        self.backend
            .remove_file(&path)
            .map_err(|e| StoreError::io("remove", &path, e))
    }

    /// The `attach` records of every log attached in `epoch`: the first records of each WAL file.
    fn attach_frames(&self, epoch: u64) -> Vec<u8> {
        let mut head = Vec::new();
        let logs = self.logs.lock();
        for (id, (dir, e, _)) in &logs.attached {
            if *e == epoch {
                encode_attach(&mut head, *id, dir);
            }
        }
        head
    }

    /// Asks the maintenance thread to make the next WAL file ahead.
    fn request_prepare(&self) {
        let mut m = self.maint.lock();
        m.prepare = true;
        self.maint_cv.notify_one();
    }

    /// On the maintenance thread: makes the file after the active one, unless it is made already.
    /// A failure leaves none (the next rotation creates its file itself, and asks again).
    fn prepare_next(&self) {
        let mut prepared = self.prepared.lock();
        let index = self.file_index.load(Ordering::Relaxed) + 1;
        if prepared.as_ref().is_some_and(|(i, _)| *i == index) {
            return;
        }
        if let Some((i, _)) = prepared.take() {
            let _ = self.backend.remove_file(&self.path(i));
        }
        match self.create_file(index) {
            Ok(f) => *prepared = Some((index, f)),
            Err(e) => tracing::debug!(error = %e, "making the next WAL file ahead failed"),
        }
    }

    /// Fails the current epoch (invariant 4).
    fn fail(&self, error: StoreError) {
        tracing::error!(dir = %self.dir.display(), %error, "levee WAL failed");
        let (sync, epoch) = {
            let mut b = self.buf.lock();
            b.failed = Some(error.clone());
            b.data.clear();
            (b.sync.clone(), b.epoch)
        };
        self.space.notify_all();
        sync.state.lock().failed = Some(error.clone());
        sync.wake_all();
        // The commit thread may wait on this epoch's condition variable while an attach already
        // restarted into a new epoch (whose notification it then missed): it must see the failure
        // to move on.
        sync.work.notify_all();
        // Only the logs of the failed epoch: a log attached since (after a restart) is fine.
        let logs: Vec<Arc<dyn Attached>> = self
            .logs
            .lock()
            .attached
            .values()
            .filter(|(_, e, _)| *e == epoch)
            .filter_map(|(_, _, l)| l.upgrade())
            .collect();
        for l in logs {
            l.wal_failed(&error);
        }
        self.stats.lock().failures += 1;
    }
}

/// The commit thread: waits for a request (or for lazy records to age), takes everything pending,
/// writes it with one `pwrite` and one `fdatasync`, publishes the position. No timer delays a
/// requested commit: while one commit runs, appends accumulate into the next (adaptive batching).
fn commit_loop(w: &WalInner) {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let sync = w.buf.lock().sync.clone();
        let mut final_cycle = false;
        {
            let mut s = sync.state.lock();
            let mut lazy_deadline: Option<Instant> = None;
            loop {
                if s.shutdown {
                    final_cycle = true;
                    break;
                }
                if s.failed.is_some() {
                    break;
                }
                if s.requested > s.synced {
                    break;
                }
                if s.written > s.synced {
                    let d = *lazy_deadline.get_or_insert(Instant::now() + w.config.lazy_commit);
                    if Instant::now() >= d {
                        break;
                    }
                    sync.work.wait_until(&mut s, d);
                    continue;
                }
                sync.work.wait(&mut s);
            }
        }
        let failed = sync.state.lock().failed.is_some();
        if failed {
            // Start a new epoch in a fresh file once that works (backing off; an attach tries
            // too).
            let mut backoff = Duration::from_millis(20);
            loop {
                if w.buf.lock().closed {
                    sync.state.lock().stopped = true;
                    sync.wake_all();
                    return;
                }
                match w.restart() {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "starting a new WAL file failed; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
            }
            continue;
        }
        let end = {
            let mut b = w.buf.lock();
            std::mem::swap(&mut b.data, &mut spare);
            b.end
        };
        w.space.notify_all();
        let started = Instant::now();
        let result = w.write_and_sync(&mut spare);
        match result {
            Ok(()) => {
                let took = started.elapsed();
                {
                    let mut st = w.stats.lock();
                    st.commits += 1;
                    st.bytes += spare.len() as u64;
                    st.last_commit = Some(took);
                }
                sync.publish(end);
            }
            Err(e) => {
                w.fail(e);
                spare.clear();
                continue;
            }
        }
        spare.clear();
        // Keep a buffer for the usual commit; give a burst's back (memory bound when idle).
        if spare.capacity() > 4 << 20 {
            spare = Vec::new();
        }
        if final_cycle {
            sync.state.lock().stopped = true;
            sync.wake_all();
            return;
        }
    }
}

impl WalInner {
    /// One commit's I/O: rotate if `data` does not fit, write it, fdatasync.
    fn write_and_sync(&self, data: &mut [u8]) -> Result<()> {
        let mut a = self.active.lock();
        if !data.is_empty() {
            let len = data.len() as u64;
            if a.pos + len + END_FRAME_LEN > self.config.file_bytes
                && a.pos > WAL_HEADER_LEN as u64 + 4096
            {
                // Rotate: end this file, start the next, checkpoint the full one behind. The
                // end frame needs no fsync of its own: a scan stops at the first invalid frame
                // (the preallocated zeros) as at the end frame, and every record before it was
                // fsynced by its commit.
                let mut endf = Vec::new();
                format::frame_into(&mut endf, T_END, |_| {});
                format::salt_frames(&mut endf, frame_salt(a.index));
                let path = self.path(a.index);
                a.file
                    .write_at(&endf, a.pos)
                    .map_err(|e| StoreError::io("write", &path, e))?;
                let epoch = self.buf.lock().epoch;
                let next = a.index + 1;
                // Made ahead or here, the file's header and directory entry are durable
                // (`create_file`); its attach records go in front of this commit's records, and
                // this commit's fdatasync covers both (the file's size does not change).
                let (f, ahead, p) = self.new_file(next, epoch, false).inspect_err(|_| {
                    // The file may exist half made: the restart uses the next name.
                    a.index = next;
                })?;
                {
                    let mut st = self.stats.lock();
                    if ahead {
                        st.rotations_made_ahead += 1;
                    } else {
                        st.rotations_made_inline += 1;
                    }
                }
                *a = Active {
                    file: f,
                    index: next,
                    pos: p,
                };
                let mut m = self.maint.lock();
                m.checkpoint = Some(a.index);
                m.prepare = true;
                self.maint_cv.notify_one();
            }
            let path = self.path(a.index);
            // Salted for the file they land in (only known now: a rotation may have just
            // happened). After a failed write the buffer is dropped, never written again.
            format::salt_frames(data, frame_salt(a.index));
            a.file
                .write_at(data, a.pos)
                .map_err(|e| StoreError::io("write", &path, e))?;
            a.pos += len;
        }
        let path = self.path(a.index);
        a.file.sync().map_err(|e| StoreError::io("fsync", &path, e))
    }

    /// After a failure: a fresh file and a new epoch (no-op if that already happened).
    fn restart(&self) -> Result<()> {
        let mut a = self.active.lock();
        let epoch = {
            let b = self.buf.lock();
            if b.closed {
                return Err(StoreError::Closed);
            }
            if b.failed.is_none() {
                return Ok(());
            }
            b.epoch + 1
        };
        let (f, _, p) = self
            .new_file(a.index + 1, epoch, true)
            .inspect_err(|_| a.index += 1)?;
        *a = Active {
            file: f,
            index: a.index + 1,
            pos: p,
        };
        let mut b = self.buf.lock();
        if b.closed {
            // `close` flagged the current epoch's sync state for shutdown: a fresh one now would
            // leave the commit thread waiting on a condition nobody signals. (The file just made
            // holds only its header and attach records; recovery reads it as any fresh file.)
            return Err(StoreError::Closed);
        }
        let fresh = Arc::new(SyncShared::default());
        {
            let mut s = fresh.state.lock();
            s.synced = b.end;
            s.written = b.end;
            s.requested = b.end;
        }
        b.epoch = epoch;
        let old = std::mem::replace(&mut b.sync, fresh);
        b.failed = None;
        b.data.clear();
        drop(b);
        // The commit thread may be waiting on the old epoch's condition variable.
        old.work.notify_all();
        let mut m = self.maint.lock();
        m.checkpoint = Some(a.index);
        self.maint_cv.notify_one();
        Ok(())
    }
}

#[derive(Debug)]
struct NoWalFile;

impl StorageFile for NoWalFile {
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn len(&self) -> std::io::Result<u64> {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

/// The maintenance thread: checkpoints (then deletes full WAL files) and per-log maintenance.
fn maint_loop(w: &WalInner) {
    loop {
        let (checkpoint, batch, prepare) = {
            let mut m = w.maint.lock();
            while !m.shutdown && m.checkpoint.is_none() && m.queue.is_empty() && !m.prepare {
                w.maint_cv.wait(&mut m);
            }
            if m.shutdown {
                return;
            }
            let batch: Vec<_> = m.queue.drain(..).collect();
            (m.checkpoint.take(), batch, std::mem::take(&mut m.prepare))
        };
        // First, before the checkpoint's fsyncs: the next rotation must find its file made.
        if prepare {
            w.prepare_next();
        }
        let mut done: HashSet<*const ()> = HashSet::new();
        for log in batch {
            if let Some(l) = log.upgrade() {
                if !done.insert(Arc::as_ptr(&l).cast::<()>()) {
                    continue;
                }
                if let Err(e) = l.maintain() {
                    tracing::warn!(error = %e, "log maintenance failed");
                }
            }
        }
        if let Some(upto) = checkpoint
            && let Err(e) = checkpoint_upto(w, upto)
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying later");
            std::thread::sleep(Duration::from_millis(100));
            let mut m = w.maint.lock();
            m.checkpoint = Some(m.checkpoint.map_or(upto, |c| c.max(upto)));
        }
    }
}

/// Invariant 2: fsync every attached log's segments, then delete the WAL files below `upto`.
fn checkpoint_upto(w: &WalInner, upto: u64) -> Result<()> {
    let mut logs: Vec<Arc<dyn Attached>> = Vec::new();
    for (dir, _, l) in w.logs.lock().attached.values() {
        match l.upgrade() {
            Some(l) => logs.push(l),
            None => {
                return Err(StoreError::InvalidInput {
                    reason: format!(
                        "the log of {} closed without making its segments durable",
                        dir.display()
                    ),
                });
            }
        }
    }
    for l in &logs {
        l.checkpoint()?;
    }
    drop(logs);
    let names = w
        .backend
        .list_dir(&w.dir)
        .map_err(|e| StoreError::io("list_dir", &w.dir, e))?;
    let mut removed = false;
    for n in names {
        if let Some(i) = parse_wal_name(&n)
            && i < upto
        {
            w.retire(i)?;
            removed = true;
        }
    }
    if removed {
        w.backend
            .sync_dir(&w.dir)
            .map_err(|e| StoreError::io("fsync_dir", &w.dir, e))?;
    }
    {
        let mut logs = w.logs.lock();
        let Logs { attached, seen, .. } = &mut *logs;
        let live: HashSet<&PathBuf> = attached.values().map(|(d, _, _)| d).collect();
        seen.retain(|d, f| *f >= upto || live.contains(d));
    }
    w.stats.lock().checkpoints += 1;
    Ok(())
}
