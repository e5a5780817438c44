//! The storage backend trait and the real file-system implementation.
//!
//! Everything levee-store does to a disk goes through [`Backend`] (directory operations) and
//! [`StorageFile`] (positional read/write, sync, truncate on one file). The production implementation
//! is [`FsBackend`]; [`fault::FaultyBackend`] keeps files in memory, models which bytes and directory
//! entries an fsync has made durable, loses the rest on a simulated crash and injects I/O errors.
//!
//! Contract every implementation keeps (the log's correctness depends on it):
//! - [`StorageFile::sync`] returns only after every byte written to that file before the call (and its
//!   length) is durable; [`Backend::sync_dir`] returns only after every create, rename and remove of an
//!   entry of that directory done before the call is durable.
//! - [`StorageFile::write_at`] either writes all bytes or returns an error (it may have written a prefix).
//! - Files stay readable through an open handle after their name was removed or renamed.

pub mod fault;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`Backend::open_file`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file; fail with `AlreadyExists` if it exists.
    CreateNew,
    /// Open an existing file; fail with `NotFound` if it is missing.
    Existing,
}

/// One open file: positional I/O, durability and truncation. Shared between the writer, readers and
/// the sync thread, so every method takes `&self`.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` if the file is shorter).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far, and the file length, durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Truncates (or extends with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Allocates disk space for the first `len` bytes, extending the file with zeros to `len` if it
    /// is shorter (`fallocate` mode 0 on Linux), so later writes below `len` change neither the size
    /// nor the block map and their fdatasync is cheaper. A hint: the default does nothing (the file
    /// then grows as it is written), and callers may ignore an error.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }
    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Directory operations and file opening.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents (durably: implementations sync the parents they create).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing.
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file's name (durable after [`Backend::sync_dir`] of its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames a file, replacing `to` (durable after [`Backend::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system (`std::fs`, `pread`/`pwrite`, `fdatasync`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsBackend;

impl FsBackend {
    /// A shareable handle, the form [`crate::QueueLog::open`] takes.
    pub fn shared() -> Arc<dyn Backend> {
        Arc::new(FsBackend)
    }
}

#[derive(Debug)]
struct FsFile(File);

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    #[cfg(target_os = "linux")]
    fn preallocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate only takes the descriptor, which `self.0` keeps open for the call.
        let rc = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Backend for FsBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // The missing directories, deepest first, up to the first one that exists.
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.as_os_str().is_empty() || d.is_dir() {
                break;
            }
            missing.push(d);
            cur = d.parent();
        }
        if missing.is_empty() {
            return Ok(());
        }
        fs::create_dir_all(dir)?;
        // A new entry is durable once its parent directory is synced: sync the parent of each
        // directory created (the first existing ancestor and every new one but the deepest), and
        // nothing above, whose entries did not change. The deepest one's own entries are its
        // creator's to sync.
        for d in missing {
            if let Some(p) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(p)?;
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if mode == OpenMode::CreateNew {
            opts.create_new(true);
        }
        Ok(Arc::new(FsFile(opts.open(path)?)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }
}
