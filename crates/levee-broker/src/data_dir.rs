//! The data directory's layout outside the queue logs: its lock file, and the name of each durable
//! queue's directory.
//!
//! - `<data_dir>/LOCK`: held with an exclusive `flock` by the one broker using the directory, and
//!   holding that broker's PID (decimal, one line) for the error message of a second one. The lock
//!   belongs to the open file, so it is released when the broker process ends, however it ends
//!   (`kill -9` included); a stale PID in the file is harmless.
//! - `<data_dir>/queues/<dir>/`: one durable queue. `<dir>` is `q-<name>` when that fits a file
//!   name (names of at most [`PLAIN_NAME_MAX`] bytes: every name such a directory was ever made
//!   for), else `h-<first 200 bytes of the name>-<crc32c of the name, 8 hex digits>`, with `-<n>`
//!   appended in the rare case two long names collide.
//!
//! # Invariants
//! - A directory name is at most 255 bytes (the usual `NAME_MAX`) for every valid queue name.
//! - The queue's real name is in its `queue.meta`; recovery takes the name from there and
//!   remembers the directory it found, so a directory name is never parsed back into a name.
//! - Two queues never share a directory: a long name's candidate directory whose `queue.meta` names
//!   another queue (or cannot be read) is skipped (`catalog::choose_queue_dir`, which reads them).
//!
//! This module only names things (and holds the lock); it reads no catalog entry, so it depends
//! on nothing of the catalog, which depends on it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::BrokerError;

/// Longest queue name stored in a `q-<name>` directory: `q-` plus 253 bytes is 255 bytes.
pub(crate) const PLAIN_NAME_MAX: usize = 253;
/// How many bytes of a long name its `h-` directory name keeps (for people reading the directory).
const HASHED_PREFIX: usize = 200;
/// Most `-<n>` suffixes tried for colliding long names before declaring gives up.
pub(crate) const MAX_PROBES: u32 = 1000;

/// The name of the lock file in the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a data directory, held until dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed and takes its lock, writing this process's PID into the lock file.
///
/// Fails with [`BrokerError::DataDirLocked`] if another process (or another [`crate::Broker`] in
/// this one) holds it.
pub(crate) fn lock(dir: &Path) -> Result<DataDirLock, BrokerError> {
    std::fs::create_dir_all(dir).map_err(|e| BrokerError::io("create data dir", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| BrokerError::io("open lock file", &path, e))?;
    if !try_lock_exclusive(&file).map_err(|e| BrokerError::io("lock", &path, e))? {
        let mut text = String::new();
        let holder = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.trim().parse().ok());
        return Err(BrokerError::DataDirLocked {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(|e| BrokerError::io("write lock file", &path, e))?;
    Ok(DataDirLock { _file: file })
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` if someone else holds the lock.
#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only takes a file descriptor, which `file` keeps open for the whole call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// No advisory lock available: run unlocked (Levee is developed and tested on Unix).
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<bool> {
    tracing::warn!("data directory locking is not supported on this platform");
    Ok(true)
}

/// Whether a directory in `queues/` can be a queue directory (others are ignored at recovery).
pub(crate) fn is_queue_dir_name(dir_name: &str) -> bool {
    dir_name.starts_with("q-") || dir_name.starts_with("h-")
}

/// The `n`th candidate directory name of a valid queue name (`n = 0` is the usual one).
pub(crate) fn candidate(name: &str, n: u32) -> String {
    if name.len() <= PLAIN_NAME_MAX {
        // Unique by construction: only n = 0 is ever used.
        return format!("q-{name}");
    }
    // Valid names are ASCII, so any byte index is a char boundary.
    let prefix = &name[..HASHED_PREFIX];
    let hash = crc32c::crc32c(name.as_bytes());
    match n {
        0 => format!("h-{prefix}-{hash:08x}"),
        n => format!("h-{prefix}-{hash:08x}-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_name_length_gets_a_directory_name_that_fits_a_file_name() {
        for len in 1..=levee_proto::MAX_QUEUE_NAME_LEN {
            let name = "x".repeat(len);
            for n in [0, 1, MAX_PROBES - 1] {
                let dir = candidate(&name, n);
                assert!(dir.len() <= 255, "{len}: {} bytes", dir.len());
                assert!(is_queue_dir_name(&dir));
            }
        }
    }

    #[test]
    fn names_that_fit_keep_the_plain_form_of_existing_data_directories() {
        assert_eq!(candidate("jobs", 0), "q-jobs");
        let longest = "a".repeat(PLAIN_NAME_MAX);
        assert_eq!(candidate(&longest, 0), format!("q-{longest}"));
    }

    #[test]
    fn long_names_differing_only_at_the_end_get_different_directories() {
        let a = format!("{}a", "x".repeat(254));
        let b = format!("{}b", "x".repeat(254));
        assert_ne!(candidate(&a, 0), candidate(&b, 0));
        assert_eq!(candidate(&a, 0), candidate(&a, 0), "deterministic");
    }
}
