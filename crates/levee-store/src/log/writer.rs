//! Writing: appends (with write combining), settlement and delivery records, rolling segments.
//!
//! Owns every write to the active segment and the in-memory effects of a write (`State::written`,
//! `logical`, `next_seq`, the pending buffer, the index entries of appended messages, segment `live`
//! counts and `unsettled_bytes` on append and settlement). See `docs/design.md`, levee-store, "Writing,
//! rolling, sealing".
//!
//! Invariants:
//! - Records are written only at the end of the active (last) segment; bytes below a segment's write
//!   position are never rewritten. A failed write cuts back to the write position and changes no
//!   in-memory state (the log stays usable once space is freed).
//! - Write combining: an append encodes into `State::pending` under the state mutex (seq and position
//!   assigned there) and returns only once a `pwrite` (its own or a concurrent append's) covered its
//!   bytes. Index entries of pending records are inserted only after their bytes were written. If a
//!   combined write fails, every record in it is discarded as a whole: its appenders get the error
//!   (found by write generation in `State::failures`), its seqs are handed out again, its partial bytes
//!   are cut.
//! - Everything else that writes (settlements, delivery records, batches that need a roll) takes
//!   `Inner::write_lock` and writes the pending records first, so log order matches seq order and a
//!   settlement or delivery record always follows the message it refers to.
//! - Rolling: the full segment is trimmed to its write position and gets a seal record before segment
//!   `index + 1` is created; the sync thread is asked to sync, seal (rename) and maybe reclaim it.
//! - Lock order: `write_lock` before `state`, `state` before the sync state; never `write_lock` while
//!   holding `state`.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use super::behind::Refs;
use super::index::Entry;
use super::{Appended, Inner, Segment, State};
use crate::backend::{OpenMode, StorageFile};
use crate::durability::Durability;
use crate::error::{Result, StoreError};
use crate::format::{
    self, NewMessage, SEAL_FRAME_LEN, SEGMENT_HEADER_LEN, SegmentHeader, Settlement,
};

impl Inner {
    /// [`super::QueueLog::append_batch`]: validates, then queues the batch for a combined write (or
    /// writes it directly when it needs a new segment) and returns once its bytes are written.
    pub(super) fn append_batch(&self, messages: &[NewMessage]) -> Result<Appended> {
        if messages.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty batch".into(),
            });
        }
        let mut total = 0u64;
        for m in messages {
            let len = format::message_frame_len(m)
                .map_err(|reason| StoreError::InvalidInput { reason })?;
            if len > self.config.max_record_bytes {
                return Err(StoreError::RecordTooLarge {
                    size: len,
                    max: self.config.max_record_bytes,
                });
            }
            total += len;
        }
        if total > self.config.capacity() {
            return Err(StoreError::RecordTooLarge {
                size: total,
                max: self.config.capacity(),
            });
        }
        let mut st = self.state.lock();
        st.usable()?;
        if self.past_bound(&st) {
            drop(st);
            self.refuse_past_bound()?;
            st = self.state.lock();
            st.usable()?;
        }
        let active = st.segments.back().expect("active segment");
        if active.complete || active.len + total > self.config.segment_bytes - SEAL_FRAME_LEN as u64
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
        if self.keeps_ids(messages) {
            st.pending_keep = true;
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
        let active = st.segments.back_mut().expect("active segment");
        active.len = pos;
        note_ids(active, messages);
        let n = messages.len() as u64;
        st.next_seq += n;
        st.logical += total;
        let target = st.logical;
        drop(st);
        let wal_pos = self.flush_until(target, generation)?;
        let durability = self.durability_for(target, wal_pos, true);
        Ok(Appended {
            first_seq: first,
            last_seq: first + n - 1,
            durability,
        })
    }

    /// Makes sure the bytes up to `target` (queued in generation `generation`) are written: returns at once
    /// if another appender's combined write covered them, else writes everything pending.
    fn flush_until(&self, target: u64, generation: u64) -> Result<u64> {
        let result = self.flush_inner(target, generation);
        let mut st = self.state.lock();
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
        result.map(|()| st.wal_pos)
    }

    fn flush_inner(&self, target: u64, generation: u64) -> Result<()> {
        let _w = self.write_lock.lock();
        let mut st = self.state.lock();
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
        if self.writes_behind() {
            flush_behind(self, &mut st)?;
            drop(st);
            return self.bound_behind();
        }
        let buf = std::mem::take(&mut st.pending);
        let entries = std::mem::take(&mut st.pending_entries);
        let active = st.segments.back().expect("active segment");
        let (file, index) = (active.file.clone(), active.index);
        let pos = active.len - buf.len() as u64;
        drop(st);
        let res = file.write_at(&buf, pos);
        let mut st = self.state.lock();
        match res {
            Ok(()) => {
                apply_flushed(&mut st, entries, buf.len() as u64);
                self.log_wal(&mut st, index, pos, &buf)?;
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
                let err = StoreError::io("write", &self.path(index, false), e);
                discard_pending(&mut st, &file, pos, entries[0].0, err.clone());
                Err(err)
            }
        }
    }

    /// The slow path for a batch that needs a new segment: written directly under the write lock.
    fn append_direct(&self, messages: &[NewMessage]) -> Result<Appended> {
        let _w = self.write_lock.lock();
        let mut st = self.state.lock();
        st.usable()?;
        flush_pending_locked(self, &mut st)?;
        let first = st.next_seq;
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        let lens: Vec<u32> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| format::encode_message(&mut buf, first + i as u64, m) as u32)
            .collect();
        let refs = || Refs::Messages {
            first_seq: first,
            lens: lens.clone(),
            keep: self.keeps_ids(messages),
        };
        let (segment, pos) = match write_record_as(self, &mut st, &buf, refs) {
            Ok(v) => v,
            Err(e) => {
                st.recycle(buf);
                return Err(e);
            }
        };
        if let Some(seg) = st.segment_mut(segment) {
            note_ids(seg, messages);
        }
        let mut off = 0u64;
        let mut entries = Vec::with_capacity(messages.len());
        for ((i, m), len) in messages.iter().enumerate().zip(&lens) {
            let len = u64::from(*len);
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
        let (written, wal_pos) = (st.written, st.wal_pos);
        st.recycle(buf);
        drop(st);
        self.bound_behind()?;
        let durability = self.durability_for(written, wal_pos, true);
        Ok(Appended {
            first_seq: first,
            last_seq: first + n - 1,
            durability,
        })
    }

    /// [`super::QueueLog::settle_batch`]: checks every seq, writes one settlement record, removes the
    /// messages from the index.
    pub(super) fn settle_batch(&self, items: &[(u64, Settlement)]) -> Result<Durability> {
        if items.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty settlement batch".into(),
            });
        }
        for (_, s) in items {
            format::check_settlement(s).map_err(|reason| StoreError::InvalidInput { reason })?;
        }
        let _w = self.write_lock.lock();
        let mut st = self.state.lock();
        st.usable()?;
        flush_pending_locked(self, &mut st)?;
        let mut seen = HashSet::with_capacity(if items.len() > 1 { items.len() } else { 0 });
        for (seq, _) in items {
            if !st.index.contains_key(seq) || (items.len() > 1 && !seen.insert(*seq)) {
                return Err(st.missing(*seq));
            }
        }
        let refs = || Refs::Settle(items.iter().map(|(s, _)| *s).collect());
        self.write_encoded(&mut st, refs, |buf| format::encode_settlements(buf, items))?;
        let wal_pos = st.wal_pos;
        st.note_settled(items.iter().map(|(s, _)| *s), wal_pos);
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
        let (written, wal_pos) = (st.written, st.wal_pos);
        drop(st);
        if maintenance {
            self.kick_maintenance();
        }
        Ok(self.durability_for(written, wal_pos, false))
    }

    /// [`super::QueueLog::record_deliveries`]: checks every seq, writes one delivery record, updates the
    /// counts in the index.
    pub(super) fn record_deliveries(&self, items: &[(u64, u32)]) -> Result<Durability> {
        if items.is_empty() {
            return Err(StoreError::InvalidInput {
                reason: "empty delivery batch".into(),
            });
        }
        let _w = self.write_lock.lock();
        let mut st = self.state.lock();
        st.usable()?;
        flush_pending_locked(self, &mut st)?;
        for (seq, _) in items {
            if !st.index.contains_key(seq) {
                return Err(st.missing(*seq));
            }
        }
        let refs = || Refs::Delivery(items.iter().map(|(s, _)| *s).collect());
        self.write_encoded(&mut st, refs, |buf| format::encode_deliveries(buf, items))?;
        for (seq, n) in items {
            st.index.set_delivery_count(seq, *n);
        }
        let (written, wal_pos) = (st.written, st.wal_pos);
        drop(st);
        Ok(self.durability_for(written, wal_pos, false))
    }

    /// Encodes one record (settlements, delivery counts) into the log's reusable buffer, checks
    /// its length against `max_record_bytes`, and writes it. On error nothing is written.
    fn write_encoded(
        &self,
        st: &mut State,
        refs: impl FnOnce() -> Refs,
        encode: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut st.buf);
        buf.clear();
        let len = encode(&mut buf) as u64;
        let written = self
            .check_len(len)
            .and_then(|_| write_record_as(self, st, &buf, refs));
        st.recycle(buf);
        written.map(|_| ())
    }

    /// Attached logs: appends the WAL record of bytes just written at `pos` of segment `index`
    /// (invariant 1 of [`crate::wal`]: called right after the `pwrite`, under the write lock).
    /// If the WAL refuses it the log stops: the segment holds bytes the WAL does not.
    pub(super) fn log_wal(&self, st: &mut State, index: u64, pos: u64, bytes: &[u8]) -> Result<()> {
        let (Some(at), Some(wal)) = (self.attachment.get(), self.config.wal.as_ref()) else {
            return Ok(());
        };
        match wal.log_write(at, false, index, pos, bytes) {
            Ok(p) => {
                st.count_wal_commit(at.sync.synced_hint());
                st.wal_uncounted = true;
                st.wal_pos = p;
                st.wal_dirty = true;
                Ok(())
            }
            Err(e) => {
                if st.failed.is_none() {
                    st.failed = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// Write-behind must keep these messages' records (a deduplication window needs their ids).
    fn keeps_ids(&self, messages: &[NewMessage]) -> bool {
        self.config.keep_ids_ms > 0 && messages.iter().any(|m| m.message_id.is_some())
    }

    fn check_len(&self, len: u64) -> Result<()> {
        let max = self.config.max_record_bytes;
        if len > max {
            return Err(StoreError::RecordTooLarge { size: len, max });
        }
        Ok(())
    }
}

/// Creates segment `index` (header written, not synced) and makes it the active one.
pub(super) fn create_segment(inner: &Inner, st: &mut State, index: u64) -> Result<()> {
    if index > super::index::MAX_SEGMENT {
        // 2^32 segments (at the smallest size, 4 KiB each: 16 TiB written through one log).
        return Err(StoreError::InvalidInput {
            reason: format!("the log has used all {} segment indexes", 1u64 << 32),
        });
    }
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
    inner.log_wal(st, index, 0, &header)?;
    st.segments.push_back(Segment {
        index,
        file,
        len: SEGMENT_HEADER_LEN as u64,
        live: 0,
        sealed: false,
        complete: false,
        ids_until_ms: 0,
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
pub(super) fn flush_pending_locked(inner: &Inner, st: &mut State) -> Result<()> {
    if st.pending.is_empty() {
        return Ok(());
    }
    if inner.writes_behind() {
        return flush_behind(inner, st);
    }
    let buf = std::mem::take(&mut st.pending);
    let entries = std::mem::take(&mut st.pending_entries);
    let active = st.segments.back().expect("active segment");
    let (file, index) = (active.file.clone(), active.index);
    let pos = active.len - buf.len() as u64;
    match file.write_at(&buf, pos) {
        Ok(()) => {
            apply_flushed(st, entries, buf.len() as u64);
            inner.log_wal(st, index, pos, &buf)
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
/// Compaction's records (always written, see [`Refs::Other`]).
pub(super) fn write_record(inner: &Inner, st: &mut State, buf: &[u8]) -> Result<(u64, u64)> {
    write_record_as(inner, st, buf, || Refs::Other)
}

/// [`write_record`] for records whose `refs` say when write-behind may leave them out.
fn write_record_as(
    inner: &Inner,
    st: &mut State,
    buf: &[u8],
    refs: impl FnOnce() -> Refs,
) -> Result<(u64, u64)> {
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
            let (index, at) = (active.index, active.len);
            active.len += SEAL_FRAME_LEN as u64;
            active.complete = true;
            st.written += SEAL_FRAME_LEN as u64;
            st.logical += SEAL_FRAME_LEN as u64;
            inner.log_wal(st, index, at, &seal)?;
        }
        let next = st.segments.back().expect("active").index + 1;
        create_segment(inner, st, next)?;
        inner.kick_maintenance();
    }
    let active = st.segments.back_mut().expect("active segment");
    let pos = active.len;
    if inner.writes_behind() {
        active.len += len;
        let index = active.index;
        st.written += len;
        st.logical += len;
        inner.log_wal(st, index, pos, buf)?;
        inner.push_behind(st, index, pos, Bytes::copy_from_slice(buf), refs());
        return Ok((index, pos));
    }
    if let Err(e) = active.file.write_at(buf, pos) {
        // Best effort: drop the partial bytes now; sealing trims them in any case.
        let _ = active.file.set_len(pos);
        return Err(StoreError::io("write", &inner.path(active.index, false), e));
    }
    active.len += len;
    let index = active.index;
    st.written += len;
    st.logical += len;
    inner.log_wal(st, index, pos, buf)?;
    Ok((index, pos))
}

/// Write-behind: logs the pending records to the WAL and queues them for their segment instead of
/// writing them (caller holds the write lock and the state).
fn flush_behind(inner: &Inner, st: &mut State) -> Result<()> {
    if st.pending.is_empty() {
        return Ok(());
    }
    let mut buf = std::mem::take(&mut st.pending);
    let entries = std::mem::take(&mut st.pending_entries);
    let keep = std::mem::take(&mut st.pending_keep);
    let active = st.segments.back().expect("active segment");
    let index = active.index;
    let pos = active.len - buf.len() as u64;
    let refs = Refs::Messages {
        first_seq: entries[0].0,
        lens: entries.iter().map(|(_, e)| e.len).collect(),
        keep,
    };
    apply_flushed(st, entries, buf.len() as u64);
    let logged = inner.log_wal(st, index, pos, &buf);
    // The chunk keeps what it holds, not a mostly empty buffer: a small batch is copied out and
    // the buffer stays the pending one; a large one is handed over whole.
    let bytes = if buf.capacity() > 2 * buf.len() {
        let bytes = Bytes::copy_from_slice(&buf);
        buf.clear();
        if buf.capacity() <= 1 << 20 {
            st.pending = buf;
        }
        bytes
    } else {
        st.pending = Vec::with_capacity(buf.len());
        Bytes::from(buf)
    };
    logged?;
    inner.push_behind(st, index, pos, bytes, refs);
    Ok(())
}

/// Raises the segment's newest message-id timestamp ([`super::LogConfig::keep_ids_ms`]).
fn note_ids(seg: &mut Segment, messages: &[NewMessage]) {
    for m in messages {
        if m.message_id.is_some() {
            seg.ids_until_ms = seg.ids_until_ms.max(m.timestamp_ms);
        }
    }
}
