//! Compaction: when the log's files hold much more than its live messages, the live messages of the
//! oldest segment are copied forward (copy records, [`format::TYPE_COPY`]) so that segment, and the
//! settled ones behind it, can be reclaimed. Bounds disk use to about twice the live records plus
//! the segments being filled, however long a single message stays unsettled. See `docs/design.md`,
//! levee-store, "Compaction".
//!
//! Invariants:
//! - Only unsettled messages are copied, under the write lock, after the pending records were
//!   written: a settlement of a copied message is always written after its copy (log order), so
//!   recovery, which applies a copy by moving the message, never resurrects a settled message.
//! - A copy carries the message's record body unchanged; its delivery count follows in a delivery
//!   record written right after the copies (when non-zero). Recovery gives a copy the count of the
//!   original it moves, so a crash between the two loses no count.
//! - The victim segment is reclaimed only once the copies are durable (the caller waits for the
//!   WAL commit, or for the next sync cycle of a standalone log).
//! - Copies go through the normal write path (rolling, WAL logging), in chunks of at most
//!   [`CHUNK_BYTES`] (or half a segment) per write-lock hold, so appends of the queue wait at
//!   most one chunk.

use super::index::Entry;
use super::{Inner, State};
use crate::error::{Result, StoreError};
use crate::format::{self, FrameError};

/// Most bytes copied per write-lock hold.
const CHUNK_BYTES: u64 = 1 << 20;

/// Whether the log is worth compacting: its oldest segment is sealed, not the active one, holds
/// live messages but others hold dead bytes, and the files exceed twice the live records plus two
/// segments.
fn should_compact(inner: &Inner, st: &State) -> Option<u64> {
    let front = st.segments.front()?;
    if st.segments.len() < 3 || !front.sealed || front.live == 0 {
        return None;
    }
    if !super::sync::ids_expired(front.ids_until_ms, inner.config.keep_ids_ms) {
        return None;
    }
    let on_disk: u64 = st.segments.iter().map(|s| s.len).sum();
    let live: u64 = st.index.record_lens().map(u64::from).sum();
    (on_disk > 2 * live + 2 * inner.config.segment_bytes).then_some(front.index)
}

/// Copies the live messages of the oldest segment forward if [`should_compact`]; returns whether it
/// did (the caller then reclaims).
pub(super) fn compact(inner: &Inner) -> Result<bool> {
    let Some(victim) = should_compact(inner, &inner.state.lock()) else {
        return Ok(false);
    };
    let chunk = CHUNK_BYTES.min(inner.config.capacity() / 2).max(1);
    loop {
        let _w = inner.write_lock.lock();
        let mut st = inner.state.lock();
        st.usable()?;
        if st.segments.front().map(|s| s.index) != Some(victim) {
            return Ok(true);
        }
        // The next chunk of live messages still in the victim, in seq order.
        let mut batch: Vec<(u64, Entry)> = Vec::new();
        let mut bytes = 0u64;
        for (seq, e) in st.index.iter() {
            if e.segment != victim {
                continue;
            }
            if bytes > 0 && bytes + u64::from(e.len) > chunk {
                break;
            }
            bytes += u64::from(e.len);
            batch.push((seq, e));
        }
        if batch.is_empty() {
            return Ok(true);
        }
        super::writer::flush_pending_locked(inner, &mut st)?;
        let file = st
            .segment(victim)
            .expect("the victim is the front segment")
            .file
            .clone();
        let path = inner.path(victim, true);
        let mut out = Vec::with_capacity(bytes as usize);
        let mut lens = Vec::with_capacity(batch.len());
        let mut read = Vec::new();
        for (seq, e) in &batch {
            read.resize(e.len as usize, 0);
            file.read_at(&mut read, u64::from(e.offset))
                .map_err(|err| StoreError::io("read", &path, err))?;
            let bad = |err: FrameError| {
                StoreError::corruption(&path, u64::from(e.offset), err.to_string())
            };
            let frame = format::decode_frame(&read).map_err(bad)?;
            let p = format::parse_message(frame.body).map_err(bad)?;
            if p.seq != *seq {
                return Err(bad(FrameError::Malformed(
                    "index points at another message",
                )));
            }
            let body = frame.body.to_vec();
            lens.push(format::frame_into(&mut out, format::TYPE_COPY, |b| {
                b.extend_from_slice(&body);
            }) as u64);
        }
        let (segment, pos) = super::writer::write_record(inner, &mut st, &out)?;
        let mut off = pos;
        let mut counts = Vec::new();
        for ((seq, old), len) in batch.iter().zip(&lens) {
            let mut moved = *old;
            moved.segment = segment;
            moved.offset = off as u32;
            off += len;
            st.index.insert(*seq, moved);
            if let Some(s) = st.segment_mut(old.segment) {
                s.live -= 1;
            }
            if let Some(s) = st.segment_mut(segment) {
                s.live += 1;
            }
            if old.delivery_count > 0 {
                counts.push((*seq, old.delivery_count));
            }
        }
        if !counts.is_empty() {
            let mut buf = Vec::new();
            format::encode_deliveries(&mut buf, &counts);
            super::writer::write_record(inner, &mut st, &buf)?;
        }
        st.compacted += batch.len() as u64;
    }
}
