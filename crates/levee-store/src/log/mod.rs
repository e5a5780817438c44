//! [`QueueLog`]: one queue's segmented, append-only, crash-safe log.
//!
//! Owns everything inside its directory: segment files `<index as 16 hex digits>.open` (the active
//! segment and segments not yet sealed) and `<index>.seg` (sealed: fully synced, never written again).
//!
//! Invariants (see `docs/design.md`, section levee-store, for the full list and their proofs):
//! 1. Records are written only to the active (last) segment, at its end; the bytes of a segment below
//!    its write position are never rewritten. (A WAL-attached log assigns positions the same way
//!    and writes the bytes there later, once: `behind`.)
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
//!
//! Layout: this file holds the public API ([`QueueLog`] and its types, each method's contract) and the
//! shared `Segment` / `State` / `Inner` types; the work is done in the submodules, which use these
//! types and depend on each other only downwards (no cycle):
//! - `index`: the index `Entry` (48 bytes) [`MessageMeta`] is built from, and index look-ups. Uses
//!   nothing else here.
//! - `sync`: the sync thread (group commit, durability publication, sealing, reclamation) and the
//!   durability handles appenders get. Uses nothing else here.
//! - `writer`: appends, write combining, settlement and delivery records, rolling segments. Uses
//!   `index`, `sync` and `behind`.
//! - `behind`: write-behind of WAL-attached logs (records kept in memory until written to their
//!   segment; settled ones left out as skip records). Uses nothing else here but the shared types;
//!   `sync` calls it before fsyncing and sealing.
//! - `compact`: copying the live messages of the oldest segment forward when dead bytes dominate,
//!   so one long-lived message does not pin every later segment. Uses `index` and `writer`.
//! - `recovery`: `open`'s scan, torn-tail truncation and sealing. Uses `index`, and `writer`'s
//!   `create_segment` for the fresh active segment.

mod behind;
pub(crate) use behind::Op as OrphanWrite;
mod compact;
mod index;
mod recovery;
pub(crate) use recovery::open_whole;
mod sync;
mod writer;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::backend::{Backend, StorageFile};
use crate::durability::{Durability, SyncShared};
use crate::error::{Result, StoreError};
use crate::format::{
    self, FrameError, NewMessage, Record, SEAL_FRAME_LEN, SEGMENT_HEADER_LEN, Settlement,
    StoredMessage,
};
use index::Entry;

/// When appended bytes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every message append's [`Durability`] resolves only after an fsync covering it; concurrent
    /// appends share one fsync (group commit) done by the log's sync thread.
    Always,
    /// A background fsync at most this often while there are unsynced bytes. Handles resolve at once
    /// with [`DurabilityLevel::Written`](crate::DurabilityLevel::Written): a process crash loses
    /// nothing, a power loss at most the last interval.
    Interval(Duration),
    /// No fsync except when segments are sealed, on [`QueueLog::sync`] and on close. Handles resolve at
    /// once with [`DurabilityLevel::Written`](crate::DurabilityLevel::Written).
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
    /// A segment holding a message with a message id published less than this many ms ago is not
    /// reclaimed even when all its messages are settled, so that recovery still finds the id
    /// (the broker's deduplication window). Default 0 (reclaim at once).
    pub keep_ids_ms: u64,
    /// Most message ids recovery returns in [`Recovered::message_ids`] (the newest ones; default
    /// 0). Bounds recovery's memory.
    pub recover_ids: usize,
    /// Whether [`Recovered::unsettled`] lists the unsettled messages (default `true`). With
    /// `false` it is left empty and the caller pages through [`QueueLog::unsettled_page`], so a
    /// deep backlog's metadata is not held twice at once (the index and the list) while it is
    /// rebuilt.
    pub recover_unsettled: bool,
    /// The broker's shared write-ahead log to attach to (default `None`: a standalone log with its
    /// own sync thread that fsyncs its segments). Attached, the log starts no thread: its records
    /// are made durable by the WAL's group commit, its segments are written behind (see
    /// [`crate::wal`]).
    pub wal: Option<crate::Wal>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_record_bytes: 8 << 20,
            keep_ids_ms: 0,
            recover_ids: 0,
            recover_unsettled: true,
            wal: None,
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

/// A message id found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId {
    /// The message's sequence number.
    pub seq: u64,
    /// Its timestamp as appended.
    pub timestamp_ms: u64,
    /// The id.
    pub id: bytes::Bytes,
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
    /// The message ids of the newest messages found (settled or not; at most
    /// [`LogConfig::recover_ids`]), in sequence order: what the broker rebuilds its deduplication
    /// window from.
    pub message_ids: Vec<MessageId>,
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
    /// Syncs that made this log's records durable since open. Standalone: completed sync cycles
    /// (each fsyncs every dirty file). Attached to the shared WAL: checkpoint cycles plus the WAL
    /// commits seen to cover this log's newest record (a lower bound of the commits that carried
    /// its records: two records in consecutive commits, the second written while the first's
    /// commit ran, count once). After a confirmed append it is at least 1 either way.
    pub fsyncs: u64,
    /// Duration of the last sync cycle.
    pub last_fsync: Option<Duration>,
    /// Log position (bytes since open) written.
    pub written_position: u64,
    /// Log position covered by the last sync.
    pub synced_position: u64,
    /// Segments deleted by reclamation since open.
    pub reclaimed_segments: u64,
    /// Live messages copied forward by compaction since open.
    pub compacted_messages: u64,
    /// Write-behind (attached logs): bytes in the WAL not yet written to their segment.
    pub behind_bytes: u64,
    /// Write-behind: record bytes never written to a segment because they were settled first
    /// (left out as skip records) since open.
    pub left_out_bytes: u64,
}

/// One segment file as the log tracks it (front of `State::segments` = oldest, back = active).
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
    /// Newest timestamp of a message with a message id in it (0: none); see
    /// [`LogConfig::keep_ids_ms`].
    ids_until_ms: u64,
}

/// Everything behind the state mutex: the segments, the index, positions, counters, the pending
/// (combining) buffer and its failure bookkeeping. Held only briefly, never across a `pwrite` or fsync.
#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    index: index::SeqIndex,
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
    /// Messages copied forward by compaction since open.
    compacted: u64,
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
    /// Attached logs: the WAL position after this log's newest WAL record (what a durability
    /// handle of its newest write waits for).
    wal_pos: u64,
    /// Attached logs: the newest record (at `wal_pos`) is not yet counted in `fsyncs` as covered
    /// by a WAL commit.
    wal_uncounted: bool,
    /// Attached logs: written since the last sync cycle snapshot (a checkpoint skips clean logs,
    /// so idle queues cost a checkpoint nothing).
    wal_dirty: bool,
    /// Write-behind: records in the WAL, not yet in their segment, oldest first (`behind`).
    behind: VecDeque<behind::Behind>,
    /// Bytes of `behind`.
    behind_bytes: usize,
    /// Write-behind: messages left out of their segment whose settlement record has not been
    /// materialized yet (it is left out too if it settles only such messages).
    skipped: HashSet<u64>,
    /// Write-behind: `pending` holds a message whose id the deduplication window needs.
    pending_keep: bool,
    /// Write-behind: segment bytes left out (as skips) since open.
    left_out_bytes: u64,
    /// Write-behind: a closing log handed the writes it could not make to the WAL
    /// (`Inner::orphan_writes`): its rolled segments are missing bytes that only the WAL (and,
    /// after a restart, redo) holds, so no segment of it may be sealed any more (redo skips
    /// sealed segments).
    orphaned: bool,
}

impl State {
    /// Attached logs: counts one WAL commit in `fsyncs` if the WAL's synced position (`synced`)
    /// now covers the newest uncounted record.
    fn count_wal_commit(&mut self, synced: u64) {
        if self.wal_uncounted && synced >= self.wal_pos {
            self.fsyncs += 1;
            self.wal_uncounted = false;
        }
    }

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
    fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf.shrink_to(1 << 20);
        }
        self.buf = buf;
    }
}

/// What the log's handle and its sync thread share.
#[derive(Debug)]
struct Inner {
    /// Held by whoever writes to the active segment (combined flushes, settlements, rolls); never
    /// taken while holding `state`.
    write_lock: Mutex<()>,
    /// Held through a sync cycle: the log's own thread or the WAL's maintenance thread and a
    /// closing caller may run one at once, and both would fsync and rename the same segments
    /// (the second rename of a rolled segment finds no `.open` file). Taken after `write_lock`
    /// when both are held.
    cycle_lock: Mutex<()>,
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: LogConfig,
    state: Mutex<State>,
    sync: Arc<SyncShared>,
    /// This log itself (for the WAL's maintenance queue).
    me: std::sync::Weak<Inner>,
    /// Set once the log is attached to its WAL (`config.wal`); never for a standalone log.
    attachment: std::sync::OnceLock<crate::wal::Attachment>,
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

/// A segment's file name: `<index as 16 hex digits>.seg` (sealed) or `.open`.
fn seg_name(index: u64, sealed: bool) -> String {
    format!("{index:016x}.{}", if sealed { "seg" } else { "open" })
}

/// A segment's file name (for the WAL's redo).
pub(crate) fn segment_name(index: u64, sealed: bool) -> String {
    seg_name(index, sealed)
}

/// A segment file's index and whether it is sealed, from its name.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, bool)> {
    recovery::parse_name(name)
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
        if let Some(wal) = &config.wal {
            // What an earlier log of this directory could not write behind goes in first.
            wal.flush_orphans(&dir)?;
        }
        let (st, mut report, message_ids) = recovery::scan(&*backend, &dir, config.recover_ids)?;
        let inner = Arc::new_cyclic(|me| Inner {
            backend,
            dir,
            config,
            state: Mutex::new(st),
            sync: Arc::new(SyncShared::default()),
            write_lock: Mutex::new(()),
            cycle_lock: Mutex::new(()),
            me: me.clone(),
            attachment: std::sync::OnceLock::new(),
        });
        let thread = match &inner.config.wal {
            Some(wal) => {
                // A fresh active segment (a new queue, or every segment sealed) is created after
                // attaching: its header goes through the WAL, no fsync of its own. An existing
                // active segment is fsynced first (it may hold bytes of the previous process or
                // log that no WAL record covers any more), then the log attaches.
                let me: std::sync::Weak<dyn crate::wal::Attached> = inner.me.clone();
                let need_new = inner.state.lock().segments.back().is_none_or(|s| s.sealed);
                if !need_new {
                    recovery::activate(&inner)?;
                }
                let at = wal.attach(&inner.dir, me.clone())?;
                let _ = inner.attachment.set(at);
                if need_new {
                    recovery::activate(&inner)?;
                }
                wal.maintain(me);
                None
            }
            None => {
                recovery::activate(&inner)?;
                Some(sync::spawn(&inner)?)
            }
        };
        let unsettled = if inner.config.recover_unsettled {
            inner.state.lock().unsettled_metas()
        } else {
            Vec::new()
        };
        report.elapsed = started.elapsed();
        Ok((
            QueueLog {
                inner,
                thread: Mutex::new(thread),
            },
            Recovered {
                unsettled,
                message_ids,
                report,
            },
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
        self.inner.append_batch(messages)
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
        self.inner.settle_batch(items)
    }

    /// Records absolute delivery counts (the broker raises a count when a delivery comes back), so
    /// `max_deliveries` survives a restart. Same durability rules as settlements. Every seq must be
    /// unsettled, else nothing is written.
    pub fn record_deliveries(&self, items: &[(u64, u32)]) -> Result<Durability> {
        self.inner.record_deliveries(items)
    }

    /// Raises a message's delivery count by one and records it; returns the new count.
    pub fn increment_delivery(&self, seq: u64) -> Result<(u32, Durability)> {
        let current = self.meta(seq)?.delivery_count;
        let next = current.saturating_add(1);
        Ok((next, self.record_deliveries(&[(seq, next)])?))
    }

    /// Reads an unsettled message back (one `pread` of its record, checksum verified).
    pub fn read(&self, seq: u64) -> Result<StoredMessage> {
        let inner = &*self.inner;
        let (file, entry, path, behind) = {
            let st = inner.state.lock();
            let entry = st.index.get(&seq).ok_or_else(|| st.missing(seq))?;
            let seg = st
                .segment(entry.segment)
                .expect("segment of a live message exists");
            // Not yet written to its segment: the bytes are still in memory.
            let behind = st
                .behind_at(entry.segment, entry.offset as u64)
                .and_then(|c| {
                    let from = (entry.offset as u64 - c.pos) as usize;
                    let to = from + entry.len as usize;
                    (to <= c.bytes.len()).then(|| c.bytes.slice(from..to))
                });
            (
                seg.file.clone(),
                entry,
                inner.path(seg.index, seg.sealed),
                behind,
            )
        };
        let owner = match behind {
            Some(bytes) => bytes,
            None => {
                let mut buf = vec![0u8; entry.len as usize];
                file.read_at(&mut buf, entry.offset as u64)
                    .map_err(|e| StoreError::io("read", &path, e))?;
                Bytes::from(buf)
            }
        };
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
        self.inner.state.lock().unsettled_metas()
    }

    /// Up to `max` unsettled messages' metadata from `from_seq` on, in sequence order: page
    /// through a deep backlog with `from_seq` = the last seq returned + 1.
    pub fn unsettled_page(&self, from_seq: u64, max: usize) -> Vec<MessageMeta> {
        let st = self.inner.state.lock();
        st.index
            .iter_from(from_seq)
            .take(max)
            .map(|(seq, e)| e.meta(seq))
            .collect()
    }

    /// Number of unsettled messages.
    pub fn unsettled_count(&self) -> u64 {
        self.inner.state.lock().index.len() as u64
    }

    /// Asks for an fsync of everything written so far, under every policy. The handle resolves with
    /// [`DurabilityLevel::Fsynced`](crate::DurabilityLevel::Fsynced).
    pub fn sync(&self) -> Durability {
        let (written, wal_pos) = {
            let st = self.inner.state.lock();
            (st.written, st.wal_pos)
        };
        if let Some(at) = self.inner.attachment.get() {
            at.sync.request(wal_pos);
            return Durability::pending(at.sync.clone(), wal_pos, true);
        }
        self.inner.sync.request(written);
        Durability::pending(self.inner.sync.clone(), written, true)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> LogStats {
        let synced = self.inner.sync.state.lock().synced;
        let mut st = self.inner.state.lock();
        if let Some(at) = self.inner.attachment.get() {
            st.count_wal_commit(at.sync.synced_hint());
        }
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
            compacted_messages: st.compacted,
            behind_bytes: st.behind_bytes as u64,
            left_out_bytes: st.left_out_bytes,
        }
    }

    /// Syncs everything, stops the sync thread and closes the log. Blocking. Returns the error that
    /// stopped the log, if any (then some unsynced records may be lost).
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        if self.inner.attachment.get().is_some() {
            return self.inner.close_attached();
        }
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
