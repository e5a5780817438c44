//! Write-behind for WAL-attached logs: a record's bytes go to the shared WAL at once (that is what
//! makes them durable) and to their segment file later, and a message settled by then is not
//! written to its segment at all. For a queue whose consumers keep up, most payloads are written
//! to disk once (the WAL) instead of twice. See `docs/design.md`, levee-store, "Write-behind".
//!
//! Owns `State::behind` (records in the WAL, not yet in their segment, oldest first),
//! `State::skipped` and the *materialization* that writes them: live records as they are,
//! and every run of records nobody needs any more as one [`format::TYPE_SKIP`] record over the gap
//! (the rest of the gap stays a hole, or stale bytes).
//!
//! Invariants:
//! 1. Chunks are materialized oldest first, by a caller holding `Inner::write_lock` (so nothing is
//!    pushed, rolled or settled meanwhile), and leave `State::behind` only after their bytes (or
//!    the skip over them) were written: a reader finds a record either in a chunk or in its file.
//! 2. A message record is left out only if it is settled, its settlement's WAL record is durable
//!    (`Behind::settled_at` <= the WAL's synced position), it is not a compaction copy, and no
//!    deduplication window needs its message id. So a crash cannot bring back an unsettled
//!    message's absence: until the WAL file holding the message's record is deleted (after a
//!    checkpoint fsynced the segment), redo writes it back, and its settlement with it.
//! 3. A settlement or delivery record is left out only if every message it names was left out
//!    (`State::skipped`); otherwise it is written, so a message on disk always has its settlement.
//! 4. A rolled segment with chunks is not sealed (renamed `.seg`) until they are materialized: a
//!    sealed file is complete, and redo never writes into one.
//! 5. A skip record's gap ends at or before the next written record; when nothing follows it
//!    yet the file is extended to the gap's end, so recovery always finds the whole gap.
//!
//! Memory bound: [`crate::WalConfig::write_behind_bytes`] per log (an appender past it
//! materializes its log's oldest chunks down to half of it) and
//! [`crate::WalConfig::write_behind_total`] for all logs of the WAL (an appender past it
//! materializes all of its own); checkpoints, sealing and closing materialize everything.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::{Inner, State};
use crate::backend::StorageFile;
use crate::error::{Result, StoreError};
use crate::format::{self, SKIP_FRAME_LEN};

/// What the records of a chunk refer to (what decides whether they may be left out).
#[derive(Debug)]
pub(super) enum Refs {
    /// Message records `first_seq..`, one length each, in order. `keep`: never left out (a
    /// message id the deduplication window needs).
    Messages {
        first_seq: u64,
        lens: Vec<u32>,
        keep: bool,
    },
    /// One settlement record of these seqs.
    Settle(Vec<u64>),
    /// One delivery-count record of these seqs.
    Delivery(Vec<u64>),
    /// Always written (compaction copies and their delivery counts).
    Other,
}

/// Bytes in the WAL, not yet in their segment.
#[derive(Debug)]
pub(super) struct Behind {
    pub(super) segment: u64,
    pub(super) pos: u64,
    pub(super) bytes: Bytes,
    pub(super) refs: Refs,
    /// The next seq after these records (monotonic over the queue: the look-up key).
    pub(super) seq_end: u64,
    /// WAL position after the newest settlement record of a message in it (0: none).
    pub(super) settled_at: u64,
}

impl Inner {
    /// Queues bytes just logged to the WAL (see [`State::push_behind`]) and counts them against
    /// the WAL's total bound.
    pub(super) fn push_behind(
        &self,
        st: &mut State,
        segment: u64,
        pos: u64,
        bytes: Bytes,
        refs: Refs,
    ) {
        if let Some(wal) = &self.config.wal {
            wal.behind_add(bytes.len());
        }
        st.push_behind(segment, pos, bytes, refs);
    }
}

impl State {
    /// Queues bytes just logged to the WAL at `pos` of `segment` (invariant 1 of [`crate::wal`]:
    /// called under the write lock, right after the WAL record).
    pub(super) fn push_behind(&mut self, segment: u64, pos: u64, bytes: Bytes, refs: Refs) {
        self.behind_bytes += bytes.len();
        // Message records end at their own last seq + 1 (an appender may push them before it
        // counts them in `next_seq`); anything else at the seqs handed out so far.
        let seq_end = match &refs {
            Refs::Messages {
                first_seq, lens, ..
            } => first_seq + lens.len() as u64,
            _ => self.next_seq,
        };
        self.behind.push_back(Behind {
            segment,
            pos,
            bytes,
            refs,
            seq_end,
            settled_at: 0,
        });
    }

    /// The chunk holding the byte at `offset` of `segment`, if it is not yet written.
    pub(super) fn behind_at(&self, segment: u64, offset: u64) -> Option<&Behind> {
        let i = self
            .behind
            .partition_point(|c| (c.segment, c.pos + c.bytes.len() as u64) <= (segment, offset));
        self.behind
            .get(i)
            .filter(|c| c.segment == segment && c.pos <= offset)
    }

    /// Records that `seqs` were settled by a WAL record ending at `wal_pos` (invariant 2).
    pub(super) fn note_settled(&mut self, seqs: impl Iterator<Item = u64>, wal_pos: u64) {
        if self.behind.is_empty() {
            return;
        }
        for seq in seqs {
            let i = self.behind.partition_point(|c| c.seq_end <= seq);
            if let Some(c) = self.behind.get_mut(i)
                && matches!(c.refs, Refs::Messages { first_seq, .. } if first_seq <= seq)
            {
                c.settled_at = c.settled_at.max(wal_pos);
            }
        }
    }
}

/// One write of a materialization (kept by the WAL for a log that closed before it could
/// write it: [`crate::Wal::flush_orphans`]).
#[derive(Debug, Clone)]
pub(crate) struct Op {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    pos: u64,
    data: Bytes,
    /// A skip: make the file at least this long afterwards (invariant 5).
    extend_to: Option<u64>,
}

impl Op {
    /// Writes it.
    pub(crate) fn apply(&self) -> Result<()> {
        self.file
            .write_at(&self.data, self.pos)
            .map_err(|e| StoreError::io("write", &self.path, e))?;
        if let Some(end) = self.extend_to {
            let len = self
                .file
                .len()
                .map_err(|e| StoreError::io("stat", &self.path, e))?;
            if len < end {
                self.file
                    .set_len(end)
                    .map_err(|e| StoreError::io("extend", &self.path, e))?;
            }
        }
        Ok(())
    }
}

/// A run of records that may be left out, not yet turned into a skip.
struct Run {
    segment: u64,
    start: u64,
    end: u64,
    seq_end: u64,
    /// The records' bytes, in case the run is too short for a skip record.
    pieces: Vec<Bytes>,
}

/// Builds the writes for the oldest chunks, oldest first.
struct Planner<'a> {
    inner: &'a Inner,
    st: &'a mut State,
    synced: u64,
    ops: Vec<Op>,
    run: Option<Run>,
    left_out: u64,
}

impl Planner<'_> {
    fn file(&self, segment: u64) -> Option<(Arc<dyn StorageFile>, PathBuf)> {
        self.st
            .segment(segment)
            .map(|s| (s.file.clone(), self.inner.path(segment, false)))
    }

    fn flush_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let Some((file, path)) = self.file(run.segment) else {
            return;
        };
        let gap = run.end - run.start;
        if gap >= SKIP_FRAME_LEN as u64 && gap <= u32::MAX as u64 {
            let mut skip = Vec::with_capacity(SKIP_FRAME_LEN);
            format::encode_skip(&mut skip, gap as u32, run.seq_end);
            self.left_out += gap;
            self.ops.push(Op {
                file,
                path,
                pos: run.start,
                data: Bytes::from(skip),
                extend_to: Some(run.end),
            });
        } else {
            let mut pos = run.start;
            for piece in run.pieces {
                let len = piece.len() as u64;
                self.ops.push(Op {
                    file: file.clone(),
                    path: path.clone(),
                    pos,
                    data: piece,
                    extend_to: None,
                });
                pos += len;
            }
        }
    }

    fn dead(&mut self, segment: u64, pos: u64, data: Bytes, seq_end: u64) {
        let len = data.len() as u64;
        match &mut self.run {
            Some(r) if r.segment == segment && r.end == pos => {
                r.end += len;
                r.seq_end = r.seq_end.max(seq_end);
                r.pieces.push(data);
            }
            _ => {
                self.flush_run();
                self.run = Some(Run {
                    segment,
                    start: pos,
                    end: pos + len,
                    seq_end,
                    pieces: vec![data],
                });
            }
        }
    }

    fn live(&mut self, segment: u64, pos: u64, data: Bytes) {
        self.flush_run();
        let Some((file, path)) = self.file(segment) else {
            return;
        };
        self.ops.push(Op {
            file,
            path,
            pos,
            data,
            extend_to: None,
        });
    }

    fn chunk(&mut self, i: usize) {
        let c = &mut self.st.behind[i];
        let (segment, pos, bytes, seq_end) = (c.segment, c.pos, c.bytes.clone(), c.seq_end);
        let durable = c.settled_at <= self.synced;
        // Taken out while the planner borrows the state, put back below.
        let refs = std::mem::replace(&mut c.refs, Refs::Other);
        match &refs {
            Refs::Messages {
                first_seq,
                lens,
                keep,
            } => {
                let mut off = 0usize;
                // Consecutive live records of the chunk are one write.
                let mut live_from: Option<usize> = None;
                for (k, len) in lens.iter().enumerate() {
                    let seq = first_seq + k as u64;
                    let len = *len as usize;
                    let gone = !keep && durable && !self.st.index.contains_key(&seq);
                    if gone {
                        if let Some(from) = live_from.take() {
                            self.live(segment, pos + from as u64, bytes.slice(from..off));
                        }
                        self.st.skipped.insert(seq);
                        self.dead(
                            segment,
                            pos + off as u64,
                            bytes.slice(off..off + len),
                            seq + 1,
                        );
                    } else if live_from.is_none() {
                        live_from = Some(off);
                    }
                    off += len;
                }
                if let Some(from) = live_from {
                    self.live(segment, pos + from as u64, bytes.slice(from..off));
                }
            }
            Refs::Settle(seqs) | Refs::Delivery(seqs) => {
                let gone = seqs.iter().all(|s| self.st.skipped.contains(s));
                if matches!(refs, Refs::Settle(_)) {
                    for s in seqs {
                        self.st.skipped.remove(s);
                    }
                }
                if gone {
                    self.dead(segment, pos, bytes, seq_end);
                } else {
                    self.live(segment, pos, bytes);
                }
            }
            Refs::Other => self.live(segment, pos, bytes),
        }
        self.st.behind[i].refs = refs;
    }
}

impl Inner {
    /// Writes the oldest chunks to their segments until at most `keep_bytes` stay behind
    /// (0: all). The caller holds the write lock (invariant 1) and not the state lock. A failed
    /// write stops the log.
    pub(super) fn materialize(&self, keep_bytes: usize) -> Result<()> {
        let Some((ops, n, bytes, left_out)) = self.plan(keep_bytes) else {
            return Ok(());
        };
        if let Err(e) = ops.iter().try_for_each(Op::apply) {
            // A full disk leaves the chunks where they are (in memory and in the WAL): the
            // next materialization writes them again, and appends are refused while the log
            // is past its bound (`refuse_past_bound`). Anything else stops the log.
            if !e.is_disk_full() {
                let mut st = self.state.lock();
                if st.failed.is_none() {
                    st.failed = Some(e.clone());
                }
            }
            return Err(e);
        }
        self.written_behind(n, bytes, left_out);
        Ok(())
    }

    /// The writes that materialize the oldest chunks down to `keep_bytes` behind: (writes,
    /// chunks, their bytes, bytes left out), or `None` with nothing behind.
    fn plan(&self, keep_bytes: usize) -> Option<(Vec<Op>, usize, usize, u64)> {
        let synced = self.attachment.get()?.sync.synced_hint();
        let mut st = self.state.lock();
        if st.behind.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut bytes = 0usize;
        while n < st.behind.len() && st.behind_bytes - bytes > keep_bytes {
            bytes += st.behind[n].bytes.len();
            n += 1;
        }
        let mut p = Planner {
            inner: self,
            st: &mut st,
            synced,
            ops: Vec::new(),
            run: None,
            left_out: 0,
        };
        for i in 0..n {
            p.chunk(i);
        }
        p.flush_run();
        Some((p.ops, n, bytes, p.left_out))
    }

    /// The oldest `n` chunks (`bytes` of them) are written.
    fn written_behind(&self, n: usize, bytes: usize, left_out: u64) {
        let mut st = self.state.lock();
        let rolled = st.segments.back().map(|s| s.index);
        let mut touched_rolled = false;
        for c in st.behind.drain(..n) {
            touched_rolled |= Some(c.segment) != rolled;
        }
        st.behind_bytes -= bytes;
        st.left_out_bytes += left_out;
        if st.behind.is_empty() {
            st.skipped.clear();
        }
        drop(st);
        if let Some(wal) = &self.config.wal {
            wal.behind_sub(bytes);
        }
        if touched_rolled {
            // A rolled segment may be sealed now (invariant 4).
            self.kick_maintenance();
        }
    }

    /// A closing log that could not write what is behind: hands the writes over (the WAL keeps
    /// them for the next log of this directory) and forgets the chunks.
    pub(super) fn orphan_writes(&self) -> Vec<Op> {
        let Some((ops, n, bytes, left_out)) = self.plan(0) else {
            return Vec::new();
        };
        let mut st = self.state.lock();
        st.behind.drain(..n);
        st.behind_bytes -= bytes;
        // Counted now: the next log of the directory writes these writes as they are planned
        // (skip records for the settled ones), and this log's counters end with its close.
        st.left_out_bytes += left_out;
        st.skipped.clear();
        st.orphaned = true;
        drop(st);
        if let Some(wal) = &self.config.wal {
            wal.behind_sub(bytes);
        }
        ops
    }

    /// Whether write-behind is on for this log.
    pub(super) fn writes_behind(&self) -> bool {
        self.attachment.get().is_some()
            && self
                .config
                .wal
                .as_ref()
                .is_some_and(|w| w.write_behind_bytes() > 0)
    }

    /// After a push: materializes down to half the per-log bound when past it, or everything
    /// when the WAL's total is past its bound. Caller holds the write lock, not the state lock.
    /// A full disk is not this append's error (its bytes are in the WAL): the log stays past its
    /// bound and the next append is refused ([`Inner::refuse_past_bound`]).
    pub(super) fn bound_behind(&self) -> Result<()> {
        let Some(wal) = self.config.wal.as_ref() else {
            return Ok(());
        };
        let per_log = wal.write_behind_bytes();
        let mine = self.state.lock().behind_bytes;
        let r = if wal.behind_over_total() {
            self.materialize(0)
        } else if mine > per_log {
            self.materialize(per_log / 2)
        } else {
            Ok(())
        };
        match r {
            Err(e) if e.is_disk_full() => Ok(()),
            r => r,
        }
    }

    /// Before an append, when this log is past its write-behind bound (its segments could not
    /// be written: a full disk): tries again, and refuses the append with that error if the log
    /// is still past the bound. Takes the write lock; the caller holds no lock.
    pub(super) fn refuse_past_bound(&self) -> Result<()> {
        let Some(wal) = self.config.wal.as_ref() else {
            return Ok(());
        };
        let per_log = wal.write_behind_bytes();
        let _w = self.write_lock.lock();
        if self.state.lock().behind_bytes <= per_log {
            return Ok(());
        }
        self.materialize(per_log / 2)
    }

    /// Whether this log is past its write-behind bound (cheap; caller holds the state).
    pub(super) fn past_bound(&self, st: &State) -> bool {
        st.behind_bytes > 0
            && self
                .config
                .wal
                .as_ref()
                .is_some_and(|w| st.behind_bytes > w.write_behind_bytes())
    }
}

/// Segments with chunks not yet written (not to be sealed: invariant 4).
pub(super) fn segments_behind(st: &State) -> HashSet<u64> {
    st.behind.iter().map(|c| c.segment).collect()
}
