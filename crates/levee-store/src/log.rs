//! [`QueueLog`]: one queue's segmented, append-only, crash-safe log.
//!
//! Owns everything inside its directory: segment files `<index as 16 hex digits>.open` (the active
//! segment and segments not yet sealed) and `<index>.seg` (sealed: fully synced, never written again).
//!
//! Invariants (see `docs/design.md`, section levee-store, for the full list and their proofs):
//! 1. Records are written only to the active (last) segment, at its end; the bytes of a segment below
//!    its write position are never rewritten.
//! 2. A segment is renamed `.open` -> `.seg` only after it was trimmed to its write position and
//!    fsynced; so a `.seg` file is always entirely valid, and a damaged `.seg` is corruption.
//! 3. `synced` (what handles see as durable) is raised only after every unsealed segment and, when new
//!    segments were created, the directory were synced.
//! 4. Segments are deleted only as a prefix: the oldest segment, when it is sealed, not the active one,
//!    and holds no unsettled message; after each deletion the directory is synced before the next. So a
//!    settlement record is never deleted while the message it settles still exists on disk.
//! 5. A settlement or delivery record always follows the message it refers to in log order.
//! 6. An index entry exists only for a written record; appends queued for a combined write that
//!    failed are discarded as a whole (their appenders get the error, their seqs are reused).
//!
//! Memory: the index holds one 48-byte `Entry` per unsettled message in a `BTreeMap<u64, Entry>`
//! (measured total including map overhead: see `docs/design.md`); payloads stay on disk. One reusable
//! encode buffer per log (shrunk back to 1 MiB after a larger batch); the pending (combining) buffer
//! holds at most what concurrent appenders queue during one `pwrite`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::backend::{Backend, OpenMode, StorageFile};
use crate::durability::{Durability, DurabilityLevel, SyncShared};
use crate::error::{Result, StoreError};
use crate::format::{
    self, FrameError, NewMessage, Record, SEAL_FRAME_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
    Settlement, StoredMessage,
};

/// When appended bytes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every message append's [`Durability`] resolves only after an fsync covering it; concurrent
    /// appends share one fsync (group commit) done by the log's sync thread.
    Always,
    /// A background fsync at most this often while there are unsynced bytes. Handles resolve at once
    /// with [`DurabilityLevel::Written`]: a process crash loses nothing, a power loss at most the last
    /// interval.
    Interval(Duration),
    /// No fsync except when segments are sealed, on [`QueueLog::sync`] and on close. Handles resolve at
    /// once with [`DurabilityLevel::Written`].
    Never,
}

/// Configuration of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Maximum size of a segment file in bytes (default 64 MiB; at most 4 GiB - 1). Recovery reads one
    /// segment at a time into memory, so this is also recovery's memory bound.
    pub segment_bytes: u64,
    /// Maximum size of one encoded record (frame) in bytes (default 8 MiB); must fit in a segment.
    pub max_record_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_record_bytes: 8 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the ranges: a segment must hold its header, one largest record and the seal.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(StoreError::InvalidConfig { reason });
        if self.segment_bytes > u32::MAX as u64 {
            return bad(format!(
                "segment_bytes {} exceeds 4 GiB - 1",
                self.segment_bytes
            ));
        }
        if self.segment_bytes < 4096 {
            return bad(format!(
                "segment_bytes {} is below 4096",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > self.capacity() {
            return bad(format!(
                "max_record_bytes {} must be in 1..={} (segment size minus header)",
                self.max_record_bytes,
                self.capacity()
            ));
        }
        if let FsyncPolicy::Interval(d) = self.fsync
            && d.is_zero()
        {
            return bad("fsync interval must be > 0".into());
        }
        Ok(())
    }
    /// Bytes of records a segment holds (header and seal record excluded).
    fn capacity(&self) -> u64 {
        self.segment_bytes - SEGMENT_HEADER_LEN as u64 - SEAL_FRAME_LEN as u64
    }
}

/// What the index keeps about one unsettled message (and what recovery returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    /// Sequence number.
    pub seq: u64,
    /// Payload size in bytes.
    pub payload_len: u32,
    /// Size of the whole record on disk in bytes.
    pub record_len: u32,
    /// Priority as appended.
    pub priority: u8,
    /// Delivery count (0 until a delivery record raises it).
    pub delivery_count: u32,
    /// `timestamp_ms + ttl_ms` (saturating), if the message has a TTL.
    pub expires_at_ms: Option<u64>,
    /// [`crate::key_hash`] of the key, if the message has one.
    pub key_hash: Option<u64>,
}

/// The in-memory index entry: 48 bytes (plus the 8-byte key in the map).
#[derive(Debug, Clone, Copy)]
struct Entry {
    segment: u64,
    offset: u32,
    len: u32,
    payload_len: u32,
    delivery_count: u32,
    priority: u8,
    /// `u64::MAX` = no TTL.
    expires_at_ms: u64,
    /// 0 = no key.
    key_hash: u64,
}

// Keep the documented per-message figure honest.
const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn meta(&self, seq: u64) -> MessageMeta {
        MessageMeta {
            seq,
            payload_len: self.payload_len,
            record_len: self.len,
            priority: self.priority,
            delivery_count: self.delivery_count,
            expires_at_ms: (self.expires_at_ms != u64::MAX).then_some(self.expires_at_ms),
            key_hash: (self.key_hash != 0).then_some(self.key_hash),
        }
    }
    fn from_message(segment: u64, offset: u64, len: u64, m: &NewMessage) -> Self {
        Entry {
            segment,
            offset: offset as u32,
            len: len as u32,
            payload_len: m.payload.len() as u32,
            delivery_count: 0,
            priority: m.priority,
            expires_at_ms: m.ttl_ms.map_or(u64::MAX, |t| {
                m.timestamp_ms.saturating_add(t).min(u64::MAX - 1)
            }),
            key_hash: m.key.as_deref().map_or(0, format::key_hash),
        }
    }
    fn new(segment: u64, offset: u64, len: u64, p: &format::MessageParts<'_>) -> Self {
        Entry {
            segment,
            offset: offset as u32,
            len: len as u32,
            payload_len: p.payload.len() as u32,
            delivery_count: 0,
            priority: p.priority,
            expires_at_ms: p.ttl_ms.map_or(u64::MAX, |t| {
                p.timestamp_ms.saturating_add(t).min(u64::MAX - 1)
            }),
            key_hash: p.key.map_or(0, format::key_hash),
        }
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Valid records found.
    pub records: u64,
    /// Message records found.
    pub messages: u64,
    /// Individual settlements found.
    pub settlements: u64,
    /// Settlements naming a message not in the log (below the first retained segment, or settled
    /// twice); ignored.
    pub ignored_settlements: u64,
    /// Individual delivery-count updates found.
    pub delivery_updates: u64,
    /// A torn or damaged tail that was cut off, if any.
    pub truncated: Option<TruncatedTail>,
    /// Unsealed segments after a torn tail, deleted (nothing in them was ever reported fsynced).
    pub discarded_segments: Vec<PathBuf>,
    /// Unsealed, complete segments that were sealed during open.
    pub sealed_on_open: usize,
    /// Wall time of recovery.
    pub elapsed: Duration,
}

/// A tail cut off by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first bad byte (the file's new length).
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Why the record at `offset` was rejected.
    pub reason: String,
}

/// What [`QueueLog::open`] returns besides the log.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Every unsettled message, in sequence order, with metadata and delivery counts (no payloads).
    pub unsettled: Vec<MessageMeta>,
    /// What recovery found.
    pub report: RecoveryReport,
}

/// Result of an append.
#[derive(Debug)]
#[must_use = "the durability handle says when the messages may be confirmed"]
pub struct Appended {
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Sequence number of the last message (= `first_seq` for a single append).
    pub last_seq: u64,
    /// Resolves when the messages are durable.
    pub durability: Durability,
}

/// Counters and gauges of one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of all segment files.
    pub bytes_on_disk: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Unsettled messages.
    pub unsettled: u64,
    /// Payload bytes of unsettled messages.
    pub unsettled_bytes: u64,
    /// The next sequence number to be assigned.
    pub next_seq: u64,
    /// Messages appended since open.
    pub appended: u64,
    /// Messages settled since open.
    pub settled: u64,
    /// Completed sync cycles (each fsyncs every dirty file) since open.
    pub fsyncs: u64,
    /// Duration of the last sync cycle.
    pub last_fsync: Option<Duration>,
    /// Log position (bytes since open) written.
    pub written_position: u64,
    /// Log position covered by the last sync.
    pub synced_position: u64,
    /// Segments deleted by reclamation since open.
    pub reclaimed_segments: u64,
}

#[derive(Debug)]
struct Segment {
    index: u64,
    file: Arc<dyn StorageFile>,
    /// Write position = valid length.
    len: u64,
    /// Unsettled messages stored in this segment.
    live: u64,
    /// Renamed to `.seg` (fully synced, immutable).
    sealed: bool,
    /// Ends with a seal record: no more writes.
    complete: bool,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    index: BTreeMap<u64, Entry>,
    next_seq: u64,
    written: u64,
    unsettled_bytes: u64,
    dir_dirty: bool,
    closed: bool,
    failed: Option<StoreError>,
    buf: Vec<u8>,
    appended: u64,
    settled: u64,
    fsyncs: u64,
    last_fsync: Option<Duration>,
    reclaimed: u64,
    /// Encoded messages appended but not yet written (always destined for the end of the active
    /// segment, whose `len` already counts them). Bounded by what concurrent appenders queue during
    /// one `pwrite`.
    pending: Vec<u8>,
    /// Index entries of `pending`, inserted into the index once their bytes are written.
    pending_entries: Vec<(u64, Entry)>,
    /// `written` + `pending.len()`: the position the next appended byte gets.
    logical: u64,
    /// Incremented each time a combined write fails and its pending records are discarded.
    generation: u64,
    /// Failed generations that still have appenders in flight: (generation, `written` when it
    /// failed, error). Bounded by the number of concurrent appenders.
    failures: Vec<(u64, u64, StoreError)>,
    /// Appenders between encoding and the end of their flush, per generation.
    /// (A vector, not a map: almost always one entry, and it must not allocate per append.)
    inflight: Vec<(u64, usize)>,
}

impl State {
    fn usable(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(StoreError::Failed {
                cause: Arc::new(e.clone()),
            });
        }
        if self.closed {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
    fn segment_mut(&mut self, index: u64) -> Option<&mut Segment> {
        let front = self.segments.front()?.index;
        self.segments.get_mut(index.checked_sub(front)? as usize)
    }
    fn segment(&self, index: u64) -> Option<&Segment> {
        let front = self.segments.front()?.index;
        self.segments.get(index.checked_sub(front)? as usize)
    }
    fn missing(&self, seq: u64) -> StoreError {
        if seq >= self.next_seq {
            StoreError::UnknownSeq { seq }
        } else {
            StoreError::Settled { seq }
        }
    }
    fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf.shrink_to(1 << 20);
        }
        self.buf = buf;
    }
}

#[derive(Debug)]
struct Inner {
    /// Held by whoever writes to the active segment (combined flushes, settlements, rolls); never
    /// taken while holding `state`.
    write_lock: Mutex<()>,
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: LogConfig,
    state: Mutex<State>,
    sync: Arc<SyncShared>,
}

/// One queue's durable log. `Send + Sync`: share it behind an `Arc`. Every method except `open` and
/// `close` is synchronous and short: at most one `pwrite` into the page cache (an append may instead
/// wait, on the write lock, for a concurrent append's combined `pwrite` that covers it) or one `pread`.
/// Fsyncs happen only on the log's own sync thread. Dropping the log syncs and joins that thread.
#[derive(Debug)]
pub struct QueueLog {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn seg_name(index: u64, sealed: bool) -> String {
    format!("{index:016x}.{}", if sealed { "seg" } else { "open" })
}

fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (stem, ext) = name.split_once('.')?;
    let sealed = match ext {
        "seg" => true,
        "open" => false,
        _ => return None,
    };
    if stem.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(stem, 16).ok()?, sealed))
}

impl Inner {
    fn path(&self, index: u64, sealed: bool) -> PathBuf {
        self.dir.join(seg_name(index, sealed))
    }
}

impl QueueLog {
    /// Opens (creating if needed) the log in `dir`, recovers it and starts its sync thread.
    ///
    /// Blocking (reads every segment once, may truncate, seal and fsync): call it from a blocking
    /// context (e.g. `spawn_blocking`). A torn tail of the unsealed segment(s) is cut off and reported;
    /// damage anywhere else is [`StoreError::Corruption`] naming the file and offset, and nothing is
    /// changed on disk in that case.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(QueueLog, Recovered)> {
        config.validate()?;
        let started = Instant::now();
        let dir = dir.into();
        backend
            .create_dir_all(&dir)
            .map_err(|e| StoreError::io("create_dir", &dir, e))?;
        let mut names: Vec<(u64, bool)> = backend
            .list_dir(&dir)
            .map_err(|e| StoreError::io("list_dir", &dir, e))?
            .iter()
            .filter_map(|n| parse_name(n))
            .collect();
        names.sort_unstable();
        for w in names.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(StoreError::corruption(
                    &dir.join(seg_name(w[0].0, true)),
                    0,
                    "segment exists both sealed and unsealed",
                ));
            }
            if w[1].0 != w[0].0 + 1 {
                return Err(StoreError::corruption(
                    &dir.join(seg_name(w[0].0 + 1, true)),
                    0,
                    format!(
                        "segment {:016x} is missing between {:016x} and {:016x}",
                        w[0].0 + 1,
                        w[0].0,
                        w[1].0
                    ),
                ));
            }
        }

        let mut report = RecoveryReport::default();
        let mut st = State {
            segments: VecDeque::new(),
            index: BTreeMap::new(),
            next_seq: 0,
            written: 0,
            unsettled_bytes: 0,
            dir_dirty: false,
            closed: false,
            failed: None,
            buf: Vec::new(),
            pending: Vec::new(),
            pending_entries: Vec::new(),
            logical: 0,
            generation: 0,
            failures: Vec::new(),
            inflight: Vec::new(),
            appended: 0,
            settled: 0,
            fsyncs: 0,
            last_fsync: None,
            reclaimed: 0,
        };
        // Where recovery stopped because of a torn tail: (position in `names`, offset, reason).
        let mut torn: Option<(usize, u64, String)> = None;
        let mut files: Vec<Arc<dyn StorageFile>> = Vec::new();
        for (pos, &(index, sealed)) in names.iter().enumerate() {
            let path = dir.join(seg_name(index, sealed));
            let file = backend
                .open_file(&path, OpenMode::Existing)
                .map_err(|e| StoreError::io("open", &path, e))?;
            let len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
            let mut data = vec![0u8; len as usize];
            file.read_at(&mut data, 0)
                .map_err(|e| StoreError::io("read", &path, e))?;
            report.segments += 1;
            report.bytes_scanned += len;
            match scan_segment(&path, index, sealed, &data, &mut st, &mut report)? {
                None => {
                    files.push(file);
                    let seg = st.segments.back().expect("scanned segment");
                    if !seg.complete && pos + 1 < names.len() {
                        // Later segments exist, so this one was rolled: its seal record (and maybe
                        // more) was lost. Nothing after it was ever reported fsynced.
                        torn = Some((
                            pos,
                            seg.len,
                            "unsealed segment lacks its seal record but later segments exist"
                                .into(),
                        ));
                        break;
                    }
                }
                Some((offset, reason)) => {
                    files.push(file);
                    torn = Some((pos, offset, reason));
                    break;
                }
            }
        }

        // Cut a torn tail and discard the unsealed segments after it.
        if let Some((pos, offset, reason)) = torn {
            let (index, _) = names[pos];
            let path = dir.join(seg_name(index, false));
            for &(later, sealed) in &names[pos + 1..] {
                if sealed {
                    return Err(StoreError::corruption(
                        &path,
                        offset,
                        format!(
                            "{reason}; a sealed segment ({later:016x}) follows this damaged unsealed one"
                        ),
                    ));
                }
            }
            let file = files.last().expect("torn segment was opened").clone();
            let len = file.len().map_err(|e| StoreError::io("stat", &path, e))?;
            report.truncated = Some(TruncatedTail {
                path: path.clone(),
                offset,
                bytes: len - offset,
                reason,
            });
            for &(later, _) in &names[pos + 1..] {
                let p = dir.join(seg_name(later, false));
                backend
                    .remove_file(&p)
                    .map_err(|e| StoreError::io("remove", &p, e))?;
                report.discarded_segments.push(p);
            }
            if offset < SEGMENT_HEADER_LEN as u64 {
                // Not even the header survived: drop the file, a fresh segment replaces it.
                backend
                    .remove_file(&path)
                    .map_err(|e| StoreError::io("remove", &path, e))?;
                report.discarded_segments.push(path.clone());
                st.segments.pop_back();
                files.pop();
            } else {
                file.set_len(offset)
                    .map_err(|e| StoreError::io("truncate", &path, e))?;
                file.sync().map_err(|e| StoreError::io("fsync", &path, e))?;
                st.segments.back_mut().expect("torn segment is loaded").len = offset;
            }
            backend
                .sync_dir(&dir)
                .map_err(|e| StoreError::io("fsync_dir", &dir, e))?;
        }
        for (seg, file) in st.segments.iter_mut().zip(files) {
            seg.file = file;
        }

        // Seal complete unsealed segments (every one but the last is complete by now).
        let mut renamed = false;
        for seg in st.segments.iter_mut() {
            if seg.complete && !seg.sealed {
                let from = dir.join(seg_name(seg.index, false));
                let to = dir.join(seg_name(seg.index, true));
                seg.file
                    .set_len(seg.len)
                    .map_err(|e| StoreError::io("truncate", &from, e))?;
                seg.file
                    .sync()
                    .map_err(|e| StoreError::io("fsync", &from, e))?;
                backend
                    .rename(&from, &to)
                    .map_err(|e| StoreError::io("rename", &from, e))?;
                seg.sealed = true;
                renamed = true;
                report.sealed_on_open += 1;
            }
        }
        if renamed {
            backend
                .sync_dir(&dir)
                .map_err(|e| StoreError::io("fsync_dir", &dir, e))?;
        }

        let inner = Arc::new(Inner {
            backend,
            dir,
            config,
            state: Mutex::new(st),
            sync: Arc::new(SyncShared::default()),
            write_lock: Mutex::new(()),
        });
        {
            let mut st = inner.state.lock();
            let need_new = st.segments.back().is_none_or(|s| s.sealed);
            if need_new {
                let index = st.segments.back().map_or(0, |s| s.index + 1);
                create_segment(&inner, &mut st, index)?;
                let file = st.segments.back().expect("just created").file.clone();
                let path = inner.path(index, false);
                file.sync().map_err(|e| StoreError::io("fsync", &path, e))?;
                inner
                    .backend
                    .sync_dir(&inner.dir)
                    .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
                st.dir_dirty = false;
            }
            let written = st.written;
            st.logical = written;
            let mut s = inner.sync.state.lock();
            s.synced = written;
            s.requested = written;
            s.written = written;
            s.maintenance = true;
        }
        let unsettled = {
            let st = inner.state.lock();
            st.index.iter().map(|(&seq, e)| e.meta(seq)).collect()
        };
        report.elapsed = started.elapsed();
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("levee-store-sync".into())
            .spawn(move || sync_loop(&thread_inner))
            .map_err(|e| StoreError::io("spawn sync thread", &inner.dir, e))?;
        Ok((
            QueueLog {
                inner,
                thread: Mutex::new(Some(thread)),
            },
            Recovered { unsettled, report },
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Appends one message. See [`QueueLog::append_batch`].
    pub fn append(&self, message: &NewMessage) -> Result<Appended> {
        self.append_batch(std::slice::from_ref(message))
    }

    /// Appends messages atomically with respect to errors (all are written or none; a crash may keep
    /// a prefix of an unsynced batch) and returns their consecutive sequence numbers at once.
    ///
    /// The bytes are written (`pwrite`, page cache; concurrent appends are combined into one
    /// `pwrite`) before this returns; under
    /// [`FsyncPolicy::Always`] the returned handle resolves after the sync thread's next fsync covers
    /// them. The whole batch must fit in one segment ([`StoreError::RecordTooLarge`] otherwise). A full
    /// disk returns [`StoreError::DiskFull`] and leaves the log as it was.
    pub fn append_batch(&self, messages: &[NewMessage]) -> Result<Appended> {
        let inner = &*self.inner;
        if messages.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty batch".into(),
            });
        }
        let mut total = 0u64;
        for m in messages {
            let len = format::message_frame_len(m)
                .map_err(|reason| StoreError::InvalidInput { reason })?;
            if len > inner.config.max_record_bytes {
                return Err(StoreError::RecordTooLarge {
                    size: len,
                    max: inner.config.max_record_bytes,
                });
            }
            total += len;
        }
        if total > inner.config.capacity() {
            return Err(StoreError::RecordTooLarge {
                size: total,
                max: inner.config.capacity(),
            });
        }
        let mut st = inner.state.lock();
        st.usable()?;
        let active = st.segments.back().expect("active segment");
        if active.complete
            || active.len + total > inner.config.segment_bytes - SEAL_FRAME_LEN as u64
        {
            drop(st);
            return self.append_direct(messages);
        }
        // Fast path: encode into the pending buffer; whoever writes next writes it (write
        // combining: one `pwrite` for every append queued meanwhile).
        let first = st.next_seq;
        let generation = st.generation;
        let segment = active.index;
        let mut pos = active.len;
        match st.inflight.iter_mut().find(|(g, _)| *g == generation) {
            Some((_, n)) => *n += 1,
            None => st.inflight.push((generation, 1)),
        }
        let mut pending = std::mem::take(&mut st.pending);
        for (i, m) in messages.iter().enumerate() {
            let seq = first + i as u64;
            let len = format::encode_message(&mut pending, seq, m) as u64;
            st.pending_entries
                .push((seq, Entry::from_message(segment, pos, len, m)));
            pos += len;
        }
        st.pending = pending;
        st.segments.back_mut().expect("active segment").len = pos;
        let n = messages.len() as u64;
        st.next_seq += n;
        st.logical += total;
        let target = st.logical;
        drop(st);
        self.flush_until(target, generation)?;
        let durability = self.durability_for(target, true);
        Ok(Appended {
            first_seq: first,
            last_seq: first + n - 1,
            durability,
        })
    }

    /// Makes sure the bytes up to `target` (queued in generation `generation`) are written: returns at once
    /// if another appender's combined write covered them, else writes everything pending.
    fn flush_until(&self, target: u64, generation: u64) -> Result<()> {
        let result = self.flush_inner(target, generation);
        let mut st = self.inner.state.lock();
        if let Some(i) = st.inflight.iter().position(|(g, _)| *g == generation) {
            st.inflight[i].1 -= 1;
            if st.inflight[i].1 == 0 {
                st.inflight.swap_remove(i);
            }
        }
        // A failure record is kept only while appenders of its generation are still in flight.
        if !st.failures.is_empty() {
            let State {
                failures, inflight, ..
            } = &mut *st;
            failures.retain(|f| inflight.iter().any(|(g, _)| *g == f.0));
        }
        result
    }

    fn flush_inner(&self, target: u64, generation: u64) -> Result<()> {
        let inner = &*self.inner;
        let _w = inner.write_lock.lock();
        let mut st = inner.state.lock();
        if st.generation != generation {
            return match st.failures.iter().find(|f| f.0 == generation) {
                Some((_, at, _)) if target <= *at => Ok(()),
                Some((_, _, e)) => Err(e.clone()),
                // Unreachable: a failure is kept while appenders of its generation are in flight.
                None => Err(StoreError::InvalidInput {
                    reason: format!("write generation {generation} lost its failure record"),
                }),
            };
        }
        if st.written >= target {
            return Ok(());
        }
        let buf = std::mem::take(&mut st.pending);
        let entries = std::mem::take(&mut st.pending_entries);
        let active = st.segments.back().expect("active segment");
        let (file, index) = (active.file.clone(), active.index);
        let pos = active.len - buf.len() as u64;
        drop(st);
        let res = file.write_at(&buf, pos);
        let mut st = inner.state.lock();
        match res {
            Ok(()) => {
                apply_flushed(&mut st, entries, buf.len() as u64);
                if st.pending.capacity() == 0 {
                    let mut buf = buf;
                    buf.clear();
                    if buf.capacity() <= 1 << 20 {
                        st.pending = buf;
                    }
                }
                Ok(())
            }
            Err(e) => {
                let err = StoreError::io("write", &inner.path(index, false), e);
                discard_pending(&mut st, &file, pos, entries[0].0, err.clone());
                Err(err)
            }
        }
    }

    /// The slow path for a batch that needs a new segment: written directly under the write lock.
    fn append_direct(&self, messages: &[NewMessage]) -> Result<Appended> {
        let inner = &*self.inner;
        let _w = inner.write_lock.lock();
        let mut st = inner.state.lock();
        st.usable()?;
        flush_pending_locked(inner, &mut st)?;
        let first = st.next_seq;
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        for (i, m) in messages.iter().enumerate() {
            format::encode_message(&mut buf, first + i as u64, m);
        }
        let (segment, pos) = match write_record(inner, &mut st, &buf) {
            Ok(v) => v,
            Err(e) => {
                st.recycle(buf);
                return Err(e);
            }
        };
        let mut off = 0u64;
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let len = format::message_frame_len(m).expect("validated by append_batch");
            entries.push((
                first + i as u64,
                Entry::from_message(segment, pos + off, len, m),
            ));
            off += len;
        }
        debug_assert_eq!(off, buf.len() as u64);
        let n = messages.len() as u64;
        st.next_seq += n;
        apply_flushed(&mut st, entries, 0);
        let written = st.written;
        st.recycle(buf);
        drop(st);
        let durability = self.durability_for(written, true);
        Ok(Appended {
            first_seq: first,
            last_seq: first + n - 1,
            durability,
        })
    }

    fn durability_for(&self, written: u64, eager: bool) -> Durability {
        let sync = &self.inner.sync;
        let always = self.inner.config.fsync == FsyncPolicy::Always;
        {
            let mut s = sync.state.lock();
            if written > s.written {
                s.written = written;
            }
            if always && eager && written > s.requested {
                s.requested = written;
                sync.work.notify_one();
            }
        }
        match self.inner.config.fsync {
            FsyncPolicy::Always => Durability::pending(sync.clone(), written, eager),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                Durability::ready(DurabilityLevel::Written, written)
            }
        }
    }

    /// Settles one message. See [`QueueLog::settle_batch`].
    pub fn settle(&self, seq: u64, settlement: Settlement) -> Result<Durability> {
        self.settle_batch(&[(seq, settlement)])
    }

    /// Settles messages (acked, dropped, expired, dead-lettered) in one record. Every seq must be
    /// unsettled and appear once, else nothing is written ([`StoreError::Settled`] /
    /// [`StoreError::UnknownSeq`]). The messages leave the index at once (reads fail from now on).
    ///
    /// Durability: the record is written before this returns; under `Always` the handle does not start
    /// an fsync by itself until it is polled or waited on: unawaited, the settlement rides along with
    /// the next group commit. Losing an unsynced settlement in a crash only makes the message
    /// reappear (redelivery), never loses one.
    pub fn settle_batch(&self, items: &[(u64, Settlement)]) -> Result<Durability> {
        if items.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty settlement batch".into(),
            });
        }
        for (_, s) in items {
            format::check_settlement(s).map_err(|reason| StoreError::InvalidInput { reason })?;
        }
        let inner = &*self.inner;
        let _w = inner.write_lock.lock();
        let mut st = inner.state.lock();
        st.usable()?;
        flush_pending_locked(inner, &mut st)?;
        let mut seen = HashSet::with_capacity(if items.len() > 1 { items.len() } else { 0 });
        for (seq, _) in items {
            if !st.index.contains_key(seq) || (items.len() > 1 && !seen.insert(*seq)) {
                return Err(st.missing(*seq));
            }
        }
        self.write_encoded(&mut st, |buf| format::encode_settlements(buf, items))?;
        let mut maintenance = false;
        for (seq, _) in items {
            let e = st.index.remove(seq).expect("checked above");
            st.unsettled_bytes -= e.payload_len as u64;
            st.settled += 1;
            let front = st.segments.front().map(|s| s.index);
            let seg = st
                .segment_mut(e.segment)
                .expect("segment of a live message exists");
            seg.live -= 1;
            if seg.live == 0 && Some(seg.index) == front {
                maintenance = true;
            }
        }
        let written = st.written;
        drop(st);
        if maintenance {
            self.kick_maintenance();
        }
        Ok(self.durability_for(written, false))
    }

    /// Records absolute delivery counts (the broker raises a count when a delivery comes back), so
    /// `max_deliveries` survives a restart. Same durability rules as settlements. Every seq must be
    /// unsettled, else nothing is written.
    pub fn record_deliveries(&self, items: &[(u64, u32)]) -> Result<Durability> {
        if items.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty delivery batch".into(),
            });
        }
        let inner = &*self.inner;
        let _w = inner.write_lock.lock();
        let mut st = inner.state.lock();
        st.usable()?;
        flush_pending_locked(inner, &mut st)?;
        for (seq, _) in items {
            if !st.index.contains_key(seq) {
                return Err(st.missing(*seq));
            }
        }
        self.write_encoded(&mut st, |buf| format::encode_deliveries(buf, items))?;
        for (seq, n) in items {
            st.index.get_mut(seq).expect("checked above").delivery_count = *n;
        }
        let written = st.written;
        drop(st);
        Ok(self.durability_for(written, false))
    }

    /// Raises a message's delivery count by one and records it; returns the new count.
    pub fn increment_delivery(&self, seq: u64) -> Result<(u32, Durability)> {
        let current = self.meta(seq)?.delivery_count;
        let next = current.saturating_add(1);
        Ok((next, self.record_deliveries(&[(seq, next)])?))
    }

    /// Encodes one record (settlements, delivery counts) into the log's reusable buffer, checks
    /// its length against `max_record_bytes`, and writes it. On error nothing is written.
    fn write_encoded(
        &self,
        st: &mut State,
        encode: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        let len = encode(&mut buf) as u64;
        let written = self
            .check_len(len)
            .and_then(|_| write_record(&self.inner, st, &buf));
        st.recycle(buf);
        written.map(|_| ())
    }

    fn check_len(&self, len: u64) -> Result<()> {
        let max = self.inner.config.max_record_bytes;
        if len > max {
            return Err(StoreError::RecordTooLarge { size: len, max });
        }
        Ok(())
    }

    fn kick_maintenance(&self) {
        let mut s = self.inner.sync.state.lock();
        s.maintenance = true;
        self.inner.sync.work.notify_one();
    }

    /// Reads an unsettled message back (one `pread` of its record, checksum verified).
    pub fn read(&self, seq: u64) -> Result<StoredMessage> {
        let inner = &*self.inner;
        let (file, entry, path) = {
            let st = inner.state.lock();
            let entry = *st.index.get(&seq).ok_or_else(|| st.missing(seq))?;
            let seg = st
                .segment(entry.segment)
                .expect("segment of a live message exists");
            (seg.file.clone(), entry, inner.path(seg.index, seg.sealed))
        };
        let mut buf = vec![0u8; entry.len as usize];
        file.read_at(&mut buf, entry.offset as u64)
            .map_err(|e| StoreError::io("read", &path, e))?;
        let owner = Bytes::from(buf);
        let bad = |e: FrameError| StoreError::corruption(&path, entry.offset as u64, e.to_string());
        let frame = format::decode_frame(&owner).map_err(bad)?;
        match format::decode_record(&frame, &owner).map_err(bad)? {
            Record::Message { seq: s, message } if s == seq => Ok(StoredMessage {
                seq,
                delivery_count: entry.delivery_count,
                message,
            }),
            _ => Err(StoreError::corruption(
                &path,
                entry.offset as u64,
                format!("index points at a record that is not message {seq}"),
            )),
        }
    }

    /// Metadata of an unsettled message.
    pub fn meta(&self, seq: u64) -> Result<MessageMeta> {
        let st = self.inner.state.lock();
        st.index
            .get(&seq)
            .map(|e| e.meta(seq))
            .ok_or_else(|| st.missing(seq))
    }

    /// A snapshot of every unsettled message's metadata, in sequence order (allocates one
    /// `MessageMeta` per unsettled message).
    pub fn unsettled(&self) -> Vec<MessageMeta> {
        let st = self.inner.state.lock();
        st.index.iter().map(|(&seq, e)| e.meta(seq)).collect()
    }

    /// Number of unsettled messages.
    pub fn unsettled_count(&self) -> u64 {
        self.inner.state.lock().index.len() as u64
    }

    /// Asks for an fsync of everything written so far, under every policy. The handle resolves with
    /// [`DurabilityLevel::Fsynced`].
    pub fn sync(&self) -> Durability {
        let written = self.inner.state.lock().written;
        self.inner.sync.request(written);
        Durability::pending(self.inner.sync.clone(), written, true)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> LogStats {
        let synced = self.inner.sync.state.lock().synced;
        let st = self.inner.state.lock();
        LogStats {
            bytes_on_disk: st.segments.iter().map(|s| s.len).sum(),
            segments: st.segments.len(),
            unsettled: st.index.len() as u64,
            unsettled_bytes: st.unsettled_bytes,
            next_seq: st.next_seq,
            appended: st.appended,
            settled: st.settled,
            fsyncs: st.fsyncs,
            last_fsync: st.last_fsync,
            written_position: st.written,
            synced_position: synced,
            reclaimed_segments: st.reclaimed,
        }
    }

    /// Syncs everything, stops the sync thread and closes the log. Blocking. Returns the error that
    /// stopped the log, if any (then some unsynced records may be lost).
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let Some(handle) = self.thread.lock().take() else {
            return Ok(());
        };
        self.inner.state.lock().closed = true;
        {
            let mut s = self.inner.sync.state.lock();
            s.shutdown = true;
            self.inner.sync.work.notify_one();
        }
        let _ = handle.join();
        let st = self.inner.state.lock();
        match &st.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for QueueLog {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Scans one segment's bytes into the state. `Ok(Some((offset, reason)))` = a torn tail in an unsealed
/// segment at `offset`.
fn scan_segment(
    path: &Path,
    index: u64,
    sealed: bool,
    data: &[u8],
    st: &mut State,
    report: &mut RecoveryReport,
) -> Result<Option<(u64, String)>> {
    let header = match format::decode_segment_header(data) {
        Ok(h) => h,
        Err(FrameError::Version(found)) => {
            return Err(StoreError::FormatVersion {
                path: path.to_path_buf(),
                found,
                supported: format::FORMAT_VERSION,
            });
        }
        Err(e) if sealed => {
            return Err(StoreError::corruption(
                path,
                0,
                format!("segment header: {e}"),
            ));
        }
        Err(e) => {
            st.segments.push_back(placeholder_segment(index, 0));
            return Ok(Some((0, format!("segment header: {e}"))));
        }
    };
    if header.index != index {
        return Err(StoreError::corruption(
            path,
            0,
            format!("header says segment {:016x}", header.index),
        ));
    }
    if header.base_seq < st.next_seq {
        return Err(StoreError::corruption(
            path,
            0,
            format!(
                "base sequence {} is below the previous segment's next sequence {}",
                header.base_seq, st.next_seq
            ),
        ));
    }
    st.next_seq = header.base_seq;
    st.segments
        .push_back(placeholder_segment(index, SEGMENT_HEADER_LEN as u64));
    st.segments.back_mut().expect("pushed").sealed = sealed;
    st.written += SEGMENT_HEADER_LEN as u64;
    let mut off = SEGMENT_HEADER_LEN;
    while off < data.len() {
        let frame = match format::decode_frame(&data[off..]) {
            Ok(f) => f,
            Err(e) if sealed => {
                return Err(StoreError::corruption(path, off as u64, e.to_string()));
            }
            Err(e) => return Ok(Some((off as u64, e.to_string()))),
        };
        let bad = |e: FrameError| StoreError::corruption(path, off as u64, e.to_string());
        match frame.kind {
            format::TYPE_MESSAGE => {
                let p = format::parse_message(frame.body).map_err(bad)?;
                if p.seq < st.next_seq {
                    return Err(StoreError::corruption(
                        path,
                        off as u64,
                        format!(
                            "message seq {} is not above the previous {}",
                            p.seq, st.next_seq
                        ),
                    ));
                }
                st.index.insert(
                    p.seq,
                    Entry::new(index, off as u64, frame.total_len as u64, &p),
                );
                st.next_seq = p.seq + 1;
                st.unsettled_bytes += p.payload.len() as u64;
                st.segments.back_mut().expect("pushed").live += 1;
                report.messages += 1;
            }
            format::TYPE_SETTLE => {
                let mut settled = Vec::new();
                format::for_each_settlement(frame.body, |seq, _| settled.push(seq)).map_err(bad)?;
                for seq in settled {
                    report.settlements += 1;
                    match st.index.remove(&seq) {
                        Some(e) => {
                            st.unsettled_bytes -= e.payload_len as u64;
                            if let Some(seg) = st.segment_mut(e.segment) {
                                seg.live -= 1;
                            }
                        }
                        None => report.ignored_settlements += 1,
                    }
                }
            }
            format::TYPE_DELIVERY => {
                let mut updates = Vec::new();
                format::for_each_delivery(frame.body, |seq, n| updates.push((seq, n)))
                    .map_err(bad)?;
                for (seq, n) in updates {
                    report.delivery_updates += 1;
                    if let Some(e) = st.index.get_mut(&seq) {
                        e.delivery_count = n;
                    }
                }
            }
            format::TYPE_SEAL => {
                let (at, next_seq) = format::parse_seal(frame.body).map_err(bad)?;
                if at != off as u64 || next_seq < st.next_seq {
                    return Err(bad(FrameError::Malformed(
                        "seal record does not match its position",
                    )));
                }
                st.next_seq = next_seq;
                let seg = st.segments.back_mut().expect("pushed");
                seg.complete = true;
                seg.len = (off + frame.total_len) as u64;
                report.records += 1;
                st.written += frame.total_len as u64;
                let end = off + frame.total_len;
                if end < data.len() {
                    // A segment is trimmed before its seal is written, so no crash leaves bytes here.
                    return Err(StoreError::corruption(
                        path,
                        end as u64,
                        "bytes after the seal record",
                    ));
                }
                return Ok(None);
            }
            other => return Err(bad(FrameError::UnknownType(other))),
        }
        report.records += 1;
        off += frame.total_len;
        st.written += frame.total_len as u64;
        st.segments.back_mut().expect("pushed").len = off as u64;
    }
    if sealed {
        return Err(StoreError::corruption(
            path,
            data.len() as u64,
            "sealed segment does not end with a seal record (truncated)",
        ));
    }
    Ok(None)
}

#[derive(Debug)]
struct NoFile;

impl StorageFile for NoFile {
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn sync(&self) -> io::Result<()> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn len(&self) -> io::Result<u64> {
        Err(io::ErrorKind::NotFound.into())
    }
}

/// A segment entry during the scan; its real file handle is attached after the scan.
fn placeholder_segment(index: u64, len: u64) -> Segment {
    Segment {
        index,
        file: Arc::new(NoFile),
        len,
        live: 0,
        sealed: false,
        complete: false,
    }
}

/// Creates segment `index` (header written, not synced) and makes it the active one.
fn create_segment(inner: &Inner, st: &mut State, index: u64) -> Result<()> {
    let path = inner.path(index, false);
    let file = inner
        .backend
        .open_file(&path, OpenMode::CreateNew)
        .map_err(|e| StoreError::io("create", &path, e))?;
    let header = format::encode_segment_header(&SegmentHeader {
        index,
        base_seq: st.next_seq,
    });
    if let Err(e) = file.write_at(&header, 0) {
        let _ = inner.backend.remove_file(&path);
        return Err(StoreError::io("write", &path, e));
    }
    st.segments.push_back(Segment {
        index,
        file,
        len: SEGMENT_HEADER_LEN as u64,
        live: 0,
        sealed: false,
        complete: false,
    });
    st.written += SEGMENT_HEADER_LEN as u64;
    st.logical += SEGMENT_HEADER_LEN as u64;
    st.dir_dirty = true;
    Ok(())
}

/// Inserts the index entries of records whose bytes (`bytes` of them, counted as written unless 0 is
/// passed because the caller already advanced `written`) are now in the file.
fn apply_flushed(st: &mut State, entries: Vec<(u64, Entry)>, bytes: u64) {
    st.written += bytes;
    let n = entries.len() as u64;
    for (seq, e) in entries {
        st.unsettled_bytes += e.payload_len as u64;
        let seg = e.segment;
        st.index.insert(seq, e);
        if let Some(s) = st.segment_mut(seg) {
            s.live += 1;
        }
    }
    st.appended += n;
}

/// A combined write failed: forget every pending record (their appenders get `err`), give their
/// sequence numbers back and cut the partial bytes.
fn discard_pending(
    st: &mut State,
    file: &Arc<dyn StorageFile>,
    pos: u64,
    first_seq: u64,
    err: StoreError,
) {
    let _ = file.set_len(pos);
    st.pending.clear();
    st.pending_entries.clear();
    st.segments.back_mut().expect("active segment").len = pos;
    st.next_seq = first_seq;
    st.logical = st.written;
    let (generation, written) = (st.generation, st.written);
    st.failures.push((generation, written, err));
    st.generation += 1;
}

/// Writes the pending records now (caller holds the write lock and the state).
fn flush_pending_locked(inner: &Inner, st: &mut State) -> Result<()> {
    if st.pending.is_empty() {
        return Ok(());
    }
    let buf = std::mem::take(&mut st.pending);
    let entries = std::mem::take(&mut st.pending_entries);
    let active = st.segments.back().expect("active segment");
    let (file, index) = (active.file.clone(), active.index);
    let pos = active.len - buf.len() as u64;
    match file.write_at(&buf, pos) {
        Ok(()) => {
            apply_flushed(st, entries, buf.len() as u64);
            Ok(())
        }
        Err(e) => {
            let err = StoreError::io("write", &inner.path(index, false), e);
            discard_pending(st, &file, pos, entries[0].0, err.clone());
            Err(err)
        }
    }
}

/// Writes one encoded record (or batch) at the end of the active segment, rolling to a new segment
/// first if it does not fit. On error nothing is recorded and the write position is unchanged.
fn write_record(inner: &Inner, st: &mut State, buf: &[u8]) -> Result<(u64, u64)> {
    let len = buf.len() as u64;
    if len > inner.config.capacity() {
        return Err(StoreError::RecordTooLarge {
            size: len,
            max: inner.config.capacity(),
        });
    }
    let active = st
        .segments
        .back_mut()
        .expect("a log always has an active segment");
    if active.complete || active.len + len > inner.config.segment_bytes - SEAL_FRAME_LEN as u64 {
        if !active.complete {
            // Trim whatever a failed write may have left past the write position, then seal.
            let path = inner.path(active.index, false);
            active
                .file
                .set_len(active.len)
                .map_err(|e| StoreError::io("truncate", &path, e))?;
            let mut seal = Vec::with_capacity(SEAL_FRAME_LEN);
            format::encode_seal(&mut seal, active.len, st.next_seq);
            if let Err(e) = active.file.write_at(&seal, active.len) {
                let _ = active.file.set_len(active.len);
                return Err(StoreError::io("write", &path, e));
            }
            active.len += SEAL_FRAME_LEN as u64;
            active.complete = true;
            st.written += SEAL_FRAME_LEN as u64;
            st.logical += SEAL_FRAME_LEN as u64;
        }
        let next = st.segments.back().expect("active").index + 1;
        create_segment(inner, st, next)?;
        let mut s = inner.sync.state.lock();
        s.maintenance = true;
        inner.sync.work.notify_one();
    }
    let active = st.segments.back_mut().expect("active segment");
    let pos = active.len;
    if let Err(e) = active.file.write_at(buf, pos) {
        // Best effort: drop the partial bytes now; sealing trims them in any case.
        let _ = active.file.set_len(pos);
        return Err(StoreError::io("write", &inner.path(active.index, false), e));
    }
    active.len += len;
    let index = active.index;
    st.written += len;
    st.logical += len;
    Ok((index, pos))
}

fn sync_loop(inner: &Inner) {
    let sync = &inner.sync;
    let mut last_cycle = Instant::now();
    loop {
        let final_cycle;
        {
            let mut s = sync.state.lock();
            loop {
                if s.shutdown {
                    final_cycle = true;
                    break;
                }
                if s.requested > s.synced || s.maintenance {
                    final_cycle = false;
                    break;
                }
                match inner.config.fsync {
                    FsyncPolicy::Interval(every) => {
                        let due = last_cycle + every;
                        if s.written > s.synced && Instant::now() >= due {
                            final_cycle = false;
                            break;
                        }
                        let wait_until = if s.written > s.synced {
                            due
                        } else {
                            Instant::now() + every
                        };
                        sync.work.wait_until(&mut s, wait_until);
                    }
                    _ => sync.work.wait(&mut s),
                }
            }
            s.maintenance = false;
        }
        last_cycle = Instant::now();
        let result = sync_cycle(inner).and_then(|()| reclaim(inner));
        if let Err(e) = result {
            tracing::error!(dir = %inner.dir.display(), error = %e, "levee-store log failed");
            inner.state.lock().failed = Some(e.clone());
            sync.state.lock().failed = Some(e);
            break;
        }
        if final_cycle {
            break;
        }
    }
    sync.state.lock().stopped = true;
    sync.wake_all();
}

/// One group commit: fsync every unsealed segment (and the directory if segments were created), seal
/// the complete ones, publish the synced position.
fn sync_cycle(inner: &Inner) -> Result<()> {
    let (target, files, dir_dirty) = {
        let mut st = inner.state.lock();
        let last = st.segments.len() - 1;
        let files: Vec<(u64, Arc<dyn StorageFile>, bool)> = st
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.sealed)
            .map(|(i, s)| (s.index, s.file.clone(), i == last))
            .collect();
        (st.written, files, std::mem::take(&mut st.dir_dirty))
    };
    let started = Instant::now();
    for (index, file, _) in &files {
        file.sync()
            .map_err(|e| StoreError::io("fsync", &inner.path(*index, false), e))?;
    }
    if dir_dirty {
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
    }
    let mut sealed = Vec::new();
    for (index, _, active) in &files {
        if !active {
            let from = inner.path(*index, false);
            inner
                .backend
                .rename(&from, &inner.path(*index, true))
                .map_err(|e| StoreError::io("rename", &from, e))?;
            sealed.push(*index);
        }
    }
    if !sealed.is_empty() {
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
    }
    let elapsed = started.elapsed();
    {
        let mut st = inner.state.lock();
        for index in sealed {
            if let Some(seg) = st.segment_mut(index) {
                seg.sealed = true;
            }
        }
        st.fsyncs += 1;
        st.last_fsync = Some(elapsed);
    }
    inner.sync.publish(target);
    Ok(())
}

/// Deletes the oldest segments while they are sealed, not active and hold no unsettled message; the
/// directory is synced after each deletion so deletions become durable strictly oldest first.
fn reclaim(inner: &Inner) -> Result<()> {
    loop {
        let victim = {
            let st = inner.state.lock();
            match st.segments.front() {
                Some(s) if st.segments.len() > 1 && s.sealed && s.live == 0 => s.index,
                _ => return Ok(()),
            }
        };
        let path = inner.path(victim, true);
        inner
            .backend
            .remove_file(&path)
            .map_err(|e| StoreError::io("remove", &path, e))?;
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
        let mut st = inner.state.lock();
        let popped = st.segments.pop_front().expect("victim is the front");
        debug_assert_eq!(popped.index, victim);
        st.reclaimed += 1;
    }
}
