//! The Raft log's storage, behind a narrow adapter: a durable, ordered map from log index to
//! opaque bytes, plus a small durable "hard state" blob (the vote and the committed id), in one
//! directory per Raft group. Nothing here knows about openraft; `raft::log` encodes openraft's
//! entries into it. This is the one place to change when the Raft log moves into the shared
//! write-ahead log (branch `wal`): the operations below are exactly what it must offer.
//!
//! Format (`log` file, little-endian): records `[len u32][crc32c u32][kind u8][body]`, the crc
//! over kind and body. Kinds: 1 entry (`index u64`, bytes), 2 truncate (`from u64`: entries at
//! and after it are gone), 3 purge (`upto u64`, then the caller's purge marker bytes: entries up
//! to it are gone). Opening replays the records; a torn or corrupt tail (a crash mid-write) is
//! cut off. The `state` file is written whole (temporary file, fsync, rename, directory fsync).
//!
//! # Invariants
//! - [`LogStore::append`] returns only after the records are fsynced: Raft acknowledges an
//!   entry only once it is on disk here (no ack from memory).
//! - Indexes are appended in increasing order; truncate and purge only remove.
//! - The file is rewritten (compacted) only as a whole: a new file is fsynced, then renamed over
//!   the old one, so a crash leaves either the old or the new log.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
/// Compact when the file holds this many bytes more than the live entries.
const COMPACT_SLACK: u64 = 8 << 20;

/// One group's durable log.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    file: File,
    file_len: u64,
    entries: BTreeMap<u64, Vec<u8>>,
    live_bytes: u64,
    /// The caller's marker of the last purge (openraft's last purged log id), if any.
    purged: Option<(u64, Vec<u8>)>,
}

fn record(kind: u8, body: &[&[u8]]) -> Vec<u8> {
    let len: usize = 1 + body.iter().map(|b| b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    for b in body {
        out.extend_from_slice(b);
    }
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut data = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut data)?;
        }
        let mut entries = BTreeMap::new();
        let mut purged = None;
        let mut off = 0usize;
        while off + 9 <= data.len() {
            let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
            let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap_or([0; 4]));
            if len == 0 || off + 8 + len > data.len() {
                break;
            }
            let body = &data[off + 8..off + 8 + len];
            if crc32c::crc32c(body) != crc || body.len() < 9 {
                break;
            }
            let index = u64::from_le_bytes(body[1..9].try_into().unwrap_or([0; 8]));
            match body[0] {
                ENTRY => {
                    // As `append` did: an entry replaces the one at its index and all after.
                    let _ = entries.split_off(&index);
                    entries.insert(index, body[9..].to_vec());
                }
                TRUNCATE => {
                    let _ = entries.split_off(&index);
                }
                PURGE => {
                    entries = entries.split_off(&(index + 1));
                    purged = Some((index, body[9..].to_vec()));
                }
                _ => break,
            }
            off += 8 + len;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        if (off as u64) < file.metadata()?.len() {
            // A torn or corrupt tail: cut it off, so new records follow the last good one.
            file.set_len(off as u64)?;
            file.sync_all()?;
        }
        let live_bytes = entries.values().map(|v| v.len() as u64 + 17).sum();
        Ok(LogStore {
            dir: dir.to_path_buf(),
            file,
            file_len: off as u64,
            entries,
            live_bytes,
            purged,
        })
    }

    /// Appends entries (consecutive indexes, the first at most one past the last held or
    /// purged: an entry at a held index replaces it and all after it) and fsyncs them. A hole
    /// is refused, with nothing written: a log with one would hand out the wrong entry.
    pub fn append(&mut self, items: Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let next = match (self.entries.last_key_value(), &self.purged) {
            (Some((last, _)), _) => Some(last + 1),
            (None, Some((upto, _))) => Some(upto + 1),
            (None, None) => None,
        };
        let mut expect = next;
        for (n, (index, _)) in items.iter().enumerate() {
            let fits = match expect {
                None => true,
                Some(e) if n == 0 => *index <= e,
                Some(e) => *index == e,
            };
            if !fits {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "log append at index {index} would leave a hole (next is {})",
                        expect.unwrap_or_default()
                    ),
                ));
            }
            expect = Some(index + 1);
        }
        let mut buf = Vec::new();
        for (index, bytes) in &items {
            buf.extend_from_slice(&record(ENTRY, &[&index.to_le_bytes(), bytes]));
        }
        self.write_synced(&buf)?;
        for (index, bytes) in items {
            self.live_bytes += bytes.len() as u64 + 17;
            // Appending over an index replaces it (openraft truncates first; this is safe anyway).
            let _ = self.entries.split_off(&index);
            self.entries.insert(index, bytes);
        }
        Ok(())
    }

    fn write_synced(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Removes the entries at and after `from` (durably).
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        self.write_synced(&record(TRUNCATE, &[&from.to_le_bytes()]))?;
        let gone = self.entries.split_off(&from);
        self.live_bytes -= gone.values().map(|v| v.len() as u64 + 17).sum::<u64>();
        Ok(())
    }

    /// Removes the entries up to and including `upto` (durably), remembering `marker`.
    pub fn purge(&mut self, upto: u64, marker: Vec<u8>) -> io::Result<()> {
        self.write_synced(&record(PURGE, &[&upto.to_le_bytes(), &marker]))?;
        let keep = self.entries.split_off(&(upto + 1));
        let gone = std::mem::replace(&mut self.entries, keep);
        self.live_bytes -= gone.values().map(|v| v.len() as u64 + 17).sum::<u64>();
        self.purged = Some((upto, marker));
        if self.file_len > self.live_bytes + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the live entries only.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.dir.join("log.tmp");
        let mut buf = Vec::new();
        if let Some((upto, marker)) = &self.purged {
            buf.extend_from_slice(&record(PURGE, &[&upto.to_le_bytes(), marker]));
        }
        for (index, bytes) in &self.entries {
            buf.extend_from_slice(&record(ENTRY, &[&index.to_le_bytes(), bytes]));
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join("log"))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join("log"))?;
        self.file_len = buf.len() as u64;
        Ok(())
    }

    /// The entries in `[start, end)`.
    pub fn range(&self, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
        if start >= end {
            return Vec::new();
        }
        self.entries
            .range(start..end)
            .map(|(i, b)| (*i, b.clone()))
            .collect()
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<(u64, &[u8])> {
        self.entries
            .last_key_value()
            .map(|(i, b)| (*i, b.as_slice()))
    }

    /// The last purge's marker.
    pub fn purged(&self) -> Option<&[u8]> {
        self.purged.as_ref().map(|(_, m)| m.as_slice())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the hard-state blob durably.
    pub fn save_state(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomic(&self.dir, name, bytes)
    }

    /// Reads a hard-state blob.
    pub fn load_state(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Writes `dir/name` whole and durably: temporary file, fsync, rename, directory fsync.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_appends_truncates_and_purges_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.append((1..=5).map(|i| (i, vec![i as u8; 3])).collect())
                .unwrap();
            log.truncate(4).unwrap();
            log.append(vec![(4, b"new".to_vec())]).unwrap();
            log.purge(1, b"m1".to_vec()).unwrap();
        }
        // A torn record at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let got: Vec<u64> = log.range(0, 100).into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, vec![2, 3, 4]);
        assert_eq!(log.range(4, 5)[0].1, b"new".to_vec());
        assert_eq!(log.purged(), Some(&b"m1"[..]));
        log.append(vec![(5, b"five".to_vec())]).unwrap();
        drop(log);
        let log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.last().unwrap().0, 5);
        log.save_state("vote", b"v").unwrap();
        assert_eq!(log.load_state("vote").unwrap().unwrap(), b"v".to_vec());
    }

    #[test]
    fn an_append_that_would_leave_a_hole_is_refused_and_an_overwrite_replays_as_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.append((1..=5).map(|i| (i, vec![i as u8])).collect())
                .unwrap();
            let err = log.append(vec![(7, b"x".to_vec())]).unwrap_err();
            assert!(err.to_string().contains("hole"), "{err}");
            assert!(log.append(vec![(6, vec![]), (8, vec![])]).is_err());
            assert_eq!(log.last().unwrap().0, 5);
            // Appending at a held index replaces it and everything after it.
            log.append(vec![(3, b"new".to_vec())]).unwrap();
            assert_eq!(log.last().unwrap().0, 3);
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.last().unwrap(), (3, &b"new"[..]));
        // After a purge past every entry, the next is the one after the purge.
        log.purge(9, b"m".to_vec()).unwrap();
        assert!(log.append(vec![(11, vec![])]).is_err());
        log.append(vec![(10, vec![])]).unwrap();
        assert_eq!(log.range(0, 100).len(), 1);
    }
}
