//! Opening a log: the recovery algorithm (`docs/design.md`, levee-store, "Recovery algorithm").
//!
//! Owns turning a directory of segment files into a [`State`]: listing and checking the segment names,
//! scanning every segment's records in log order into the index, cutting off a torn tail, discarding
//! the unsealed segments after it, sealing complete `.open` segments, and finally ([`activate`]) making
//! sure there is an active segment and starting the durable positions at the recovered end.
//!
//! Invariants:
//! - Damage anywhere but the tail of the unsealed segment(s) is [`StoreError::Corruption`] naming the
//!   file and offset, and then nothing on disk is changed (every check runs before the first change).
//! - A `.seg` is entirely valid (sealed segments were trimmed, sealed and synced before their rename),
//!   so any bad byte in one is corruption; in an `.open` segment the first bad frame is a torn tail.
//! - Nothing after a torn tail was ever reported fsynced, so dropping it loses no confirmed record; the
//!   truncation (or deletion) and the directory are fsynced before the log is used.
//! - Records apply in log order: a message enters the index, a settlement removes its seq (ignored if
//!   the seq is not there), a delivery record sets the count.
//! - Memory: one segment's bytes at a time.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::index::{Entry, SeqIndex};
use super::writer::create_segment;
use super::{Inner, MessageId, RecoveryReport, Segment, State, TruncatedTail, seg_name};
use crate::backend::{Backend, OpenMode, StorageFile};
use crate::error::{Result, StoreError};
use crate::format::{self, FrameError, SEGMENT_HEADER_LEN};

pub(super) fn parse_name(name: &str) -> Option<(u64, bool)> {
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

/// Recovery steps 1-6 short of creating a new active segment: lists and checks the segment files in
/// `dir` (creating it if needed), scans them into a fresh [`State`], cuts a torn tail and seals the
/// complete unsealed segments. The returned state may have no segment, or only sealed ones.
pub(super) fn scan(
    backend: &dyn Backend,
    dir: &Path,
    max_ids: usize,
) -> Result<(State, RecoveryReport, Vec<MessageId>)> {
    let mut ids = Ids {
        max: max_ids,
        list: VecDeque::new(),
    };
    backend
        .create_dir_all(dir)
        .map_err(|e| StoreError::io("create_dir", dir, e))?;
    let mut names: Vec<(u64, bool)> = backend
        .list_dir(dir)
        .map_err(|e| StoreError::io("list_dir", dir, e))?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    names.sort_unstable();
    if let Some(&(index, sealed)) = names.last()
        && index > super::index::MAX_SEGMENT
    {
        return Err(StoreError::corruption(
            &dir.join(seg_name(index, sealed)),
            0,
            format!(
                "segment index {index:016x} is past the last a log uses ({:016x})",
                super::index::MAX_SEGMENT
            ),
        ));
    }
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
        index: SeqIndex::new(),
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
        wal_pos: 0,
        wal_uncounted: false,
        wal_dirty: false,
        behind: VecDeque::new(),
        behind_bytes: 0,
        skipped: HashSet::new(),
        pending_keep: false,
        left_out_bytes: 0,
        orphaned: false,
        appended: 0,
        settled: 0,
        fsyncs: 0,
        last_fsync: None,
        reclaimed: 0,
        compacted: 0,
    };
    // Where recovery stopped because of a torn tail: (position in `names`, offset, reason).
    let mut torn: Option<(usize, u64, String)> = None;
    let mut files: Vec<Arc<dyn StorageFile>> = Vec::new();
    for (pos, &(index, sealed)) in names.iter().enumerate() {
        let path = dir.join(seg_name(index, sealed));
        let (file, data) = open_whole(backend, &path)?;
        let len = data.len() as u64;
        report.segments += 1;
        report.bytes_scanned += len;
        match scan_segment(&path, index, sealed, &data, &mut st, &mut report, &mut ids)? {
            None => {
                files.push(file);
                let seg = st.segments.back().expect("scanned segment");
                if !seg.complete && pos + 1 < names.len() {
                    // Later segments exist, so this one was rolled: its seal record (and maybe
                    // more) was lost. Nothing after it was ever reported fsynced.
                    torn = Some((
                        pos,
                        seg.len,
                        "unsealed segment lacks its seal record but later segments exist".into(),
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
            .sync_dir(dir)
            .map_err(|e| StoreError::io("fsync_dir", dir, e))?;
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
            .sync_dir(dir)
            .map_err(|e| StoreError::io("fsync_dir", dir, e))?;
    }
    Ok((st, report, ids.list.into()))
}

/// The newest message ids seen, at most `max`.
struct Ids {
    max: usize,
    list: VecDeque<MessageId>,
}

/// The end of recovery: creates a fresh active segment (fsynced, with the directory) if the last one
/// is sealed or there is none, starts the written, requested and synced positions at the recovered
/// end (everything recovered is on disk), and asks for a first maintenance cycle (reclamation).
pub(super) fn activate(inner: &Inner) -> Result<()> {
    let mut st = inner.state.lock();
    let need_new = st.segments.back().is_none_or(|s| s.sealed);
    if need_new {
        let index = st.segments.back().map_or(0, |s| s.index + 1);
        create_segment(inner, &mut st, index)?;
        if inner.attachment.get().is_none() {
            let file = st.segments.back().expect("just created").file.clone();
            let path = inner.path(index, false);
            file.sync().map_err(|e| StoreError::io("fsync", &path, e))?;
            inner
                .backend
                .sync_dir(&inner.dir)
                .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
            st.dir_dirty = false;
        }
        // Attached, the header is in the WAL (redo recreates the file) and `dir_dirty` stays
        // set for the log's first checkpoint.
    } else {
        // The active segment as found may hold records that were written but never fsynced
        // (the previous process stopped before, or its fsync failed). What recovery returns is
        // reported durable, so make it so before returning it.
        let seg = st.segments.back().expect("an active segment");
        let path = inner.path(seg.index, false);
        seg.file
            .sync()
            .map_err(|e| StoreError::io("fsync", &path, e))?;
        if inner.config.wal.is_some() {
            // Attached, the directory entry of the active segment may not be durable yet (the
            // WAL's redo would have recreated it; a new attachment supersedes the old records).
            inner
                .backend
                .sync_dir(&inner.dir)
                .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
        }
    }
    let written = st.written;
    st.logical = written;
    if inner.attachment.get().is_some() {
        // Only the log's own cycles (sealing, checkpoints) use its sync state.
        let mut s = inner.sync.state.lock();
        s.synced = written;
        s.requested = written;
        s.written = written;
        return Ok(());
    }
    let mut s = inner.sync.state.lock();
    s.synced = written;
    s.requested = written;
    s.written = written;
    s.maintenance = true;
    Ok(())
}

/// Scans one segment's bytes into the state. `Ok(Some((offset, reason)))` = a torn tail in an unsealed
/// segment at `offset`.
/// Opens the existing file at `path` and reads all of it: the file and its bytes (recovery of a
/// segment, replay of a write-ahead log file).
pub(crate) fn open_whole(
    backend: &dyn Backend,
    path: &Path,
) -> Result<(Arc<dyn StorageFile>, Vec<u8>)> {
    let file = backend
        .open_file(path, OpenMode::Existing)
        .map_err(|e| StoreError::io("open", path, e))?;
    let len = file.len().map_err(|e| StoreError::io("stat", path, e))?;
    let mut data = vec![0u8; len as usize];
    file.read_at(&mut data, 0)
        .map_err(|e| StoreError::io("read", path, e))?;
    Ok((file, data))
}

fn scan_segment(
    path: &Path,
    index: u64,
    sealed: bool,
    data: &[u8],
    st: &mut State,
    report: &mut RecoveryReport,
    ids: &mut Ids,
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
                let seg = st.segments.back_mut().expect("pushed");
                seg.live += 1;
                if let Some(id) = p.message_id {
                    seg.ids_until_ms = seg.ids_until_ms.max(p.timestamp_ms);
                    if ids.max > 0 {
                        if ids.list.len() == ids.max {
                            ids.list.pop_front();
                        }
                        ids.list.push_back(MessageId {
                            seq: p.seq,
                            timestamp_ms: p.timestamp_ms,
                            id: bytes::Bytes::copy_from_slice(id),
                        });
                    }
                }
                report.messages += 1;
            }
            format::TYPE_COPY => {
                let p = format::parse_message(frame.body).map_err(bad)?;
                if p.seq >= st.next_seq {
                    return Err(bad(FrameError::Malformed(
                        "copy of a message that was never appended",
                    )));
                }
                let mut entry = Entry::new(index, off as u64, frame.total_len as u64, &p);
                match st.index.get(&p.seq) {
                    Some(old) => {
                        entry.delivery_count = old.delivery_count;
                        if let Some(seg) = st.segment_mut(old.segment) {
                            seg.live -= 1;
                        }
                    }
                    // The original's segment was reclaimed after the copy.
                    None => st.unsettled_bytes += p.payload.len() as u64,
                }
                st.index.insert(p.seq, entry);
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
                    st.index.set_delivery_count(&seq, n);
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
            format::TYPE_SKIP => {
                let (gap, next_seq) = format::parse_skip(frame.body).map_err(bad)?;
                let end = off + gap as usize;
                if end > data.len() {
                    // The file is extended to a skip's end right after the skip is written (and
                    // both before the WAL records it replaces may go): short only if torn.
                    let e = FrameError::Truncated {
                        needed: gap as u64,
                        have: (data.len() - off) as u64,
                    };
                    if sealed {
                        return Err(bad(e));
                    }
                    return Ok(Some((off as u64, e.to_string())));
                }
                st.next_seq = st.next_seq.max(next_seq);
                report.records += 1;
                off = end;
                st.written += gap as u64;
                st.segments.back_mut().expect("pushed").len = off as u64;
                continue;
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
        ids_until_ms: 0,
    }
}
