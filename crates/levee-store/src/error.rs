//! The one error type of levee-store.
//!
//! Every fallible call of the crate returns [`StoreError`]. I/O failures carry the operation and the
//! path; a full disk has its own variant so the broker can apply backpressure instead of failing hard;
//! corruption names the file, the byte offset and what was wrong. The type is `Clone` (I/O sources are
//! shared behind an `Arc`) because one fsync failure must be reported to every waiter of a group commit.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of the storage engine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation failed. `op` names the operation (`"write"`, `"fsync"`, `"open"`, ...).
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk (or quota) is full (`ENOSPC` / `EDQUOT`). Nothing already stored was changed; the
    /// failed append left no record behind and the log stays usable once space is freed.
    #[error("disk full during {op} on {}", path.display())]
    DiskFull {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Stored bytes are damaged somewhere recovery cannot treat as a torn tail (a sealed segment, a
    /// checksum-valid record that does not parse, a missing segment file, ...).
    #[error("corruption in {} at byte offset {offset}: {reason}", path.display())]
    Corruption {
        /// The damaged file (or the directory, for a missing segment).
        path: PathBuf,
        /// Byte offset of the damaged record or header inside the file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A segment or metadata file was written by a different on-disk format version.
    #[error("{} has on-disk format version {found}, this build supports {supported}", path.display())]
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// The version found in its header.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// The sequence number was never assigned by this log (it is at or past the next sequence number).
    #[error("unknown sequence number {seq}")]
    UnknownSeq {
        /// The sequence number asked for.
        seq: u64,
    },
    /// The sequence number was assigned but the message is settled (acked, dropped, expired,
    /// dead-lettered) or was lost in a torn tail; it can no longer be read or settled.
    #[error("message {seq} is already settled")]
    Settled {
        /// The sequence number asked for.
        seq: u64,
    },
    /// A record (or an atomic batch) is larger than the configured limit.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Encoded size in bytes.
        size: u64,
        /// The configured limit in bytes.
        max: u64,
    },
    /// A message or settlement cannot be encoded (a field exceeds its on-disk width, ...).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What was wrong.
        reason: String,
    },
    /// The log was closed (or is shutting down); nothing more can be appended or waited for.
    #[error("the log is closed")]
    Closed,
    /// An earlier fsync (or another unrecoverable write-path failure) failed; after a failed fsync the
    /// state of unsynced data is unknown, so the log refuses further work. Reopen it to recover what is
    /// really on disk.
    #[error("the log failed earlier and must be reopened: {cause}")]
    Failed {
        /// The failure that stopped the log.
        cause: Arc<StoreError>,
    },
}

impl StoreError {
    /// Wraps an I/O error, mapping "no space" to [`StoreError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        let full = source.kind() == io::ErrorKind::StorageFull
            || source.kind() == io::ErrorKind::QuotaExceeded
            || matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            );
        let path = path.to_path_buf();
        let source = Arc::new(source);
        if full {
            StoreError::DiskFull { op, path, source }
        } else {
            StoreError::Io { op, path, source }
        }
    }

    pub(crate) fn corruption(path: &Path, offset: u64, reason: impl Into<String>) -> Self {
        StoreError::Corruption {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for [`StoreError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// Result alias of the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
