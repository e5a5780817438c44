//! Small metadata files replaced atomically (the broker's queue catalog: name -> config bytes).
//!
//! [`write_meta_atomic`] writes `<path>.tmp`, fsyncs it, renames it over `<path>` and fsyncs the
//! directory, so after a crash `<path>` holds either the old or the new contents, never a mix. The file
//! is framed (magic, version, length, CRC32C) so damage is detected by [`read_meta`].
//!
//! ```text
//! magic "LEVEEMET" (8) | version u16 (1) | reserved u16 (0) | length u32 | crc32c(contents) u32 | contents
//! ```
//!
//! Memory bound: the whole file is read into memory; keep metadata small (it is capped at 64 MiB).

use std::path::{Path, PathBuf};

use crate::backend::{Backend, OpenMode};
use crate::error::{Result, StoreError};
use crate::format::{FORMAT_VERSION, MIN_FORMAT_VERSION};

const MAGIC: [u8; 8] = *b"LEVEEMET";
const HEADER: usize = 20;
/// Largest metadata contents accepted (64 MiB).
pub const MAX_META_BYTES: usize = 64 << 20;

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Atomically replaces `path` with `contents` (blocking; several fsyncs).
pub fn write_meta_atomic(backend: &dyn Backend, path: &Path, contents: &[u8]) -> Result<()> {
    if contents.len() > MAX_META_BYTES {
        return Err(StoreError::RecordTooLarge {
            size: contents.len() as u64,
            max: MAX_META_BYTES as u64,
        });
    }
    let dir = path.parent().ok_or_else(|| StoreError::InvalidInput {
        reason: format!("{} has no parent directory", path.display()),
    })?;
    backend
        .create_dir_all(dir)
        .map_err(|e| StoreError::io("create_dir", dir, e))?;
    let tmp = tmp_path(path);
    match backend.remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove", &tmp, e)),
    }
    let file = backend
        .open_file(&tmp, OpenMode::CreateNew)
        .map_err(|e| StoreError::io("create", &tmp, e))?;
    let mut buf = Vec::with_capacity(HEADER + contents.len());
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(contents).to_le_bytes());
    buf.extend_from_slice(contents);
    let written = file
        .write_at(&buf, 0)
        .and_then(|()| file.sync())
        .map_err(|e| StoreError::io("write", &tmp, e));
    if let Err(e) = written {
        let _ = backend.remove_file(&tmp);
        return Err(e);
    }
    backend
        .rename(&tmp, path)
        .map_err(|e| StoreError::io("rename", &tmp, e))?;
    backend
        .sync_dir(dir)
        .map_err(|e| StoreError::io("fsync_dir", dir, e))
}

/// Reads a file written by [`write_meta_atomic`]; `Ok(None)` if it does not exist.
pub fn read_meta(backend: &dyn Backend, path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match backend.open_file(path, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let len = file.len().map_err(|e| StoreError::io("stat", path, e))? as usize;
    if len < HEADER {
        return Err(StoreError::corruption(
            path,
            0,
            "metadata file shorter than its header",
        ));
    }
    if len > HEADER + MAX_META_BYTES {
        return Err(StoreError::corruption(
            path,
            0,
            "metadata file larger than the limit",
        ));
    }
    let mut buf = vec![0u8; len];
    file.read_at(&mut buf, 0)
        .map_err(|e| StoreError::io("read", path, e))?;
    if buf[..8] != MAGIC {
        return Err(StoreError::corruption(path, 0, "bad metadata magic"));
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(StoreError::FormatVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let n = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
    if HEADER + n != len {
        return Err(StoreError::corruption(
            path,
            12,
            "metadata length does not match the file size",
        ));
    }
    let crc = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[HEADER..]) != crc {
        return Err(StoreError::corruption(
            path,
            16,
            "metadata checksum mismatch",
        ));
    }
    buf.drain(..HEADER);
    Ok(Some(buf))
}

/// Removes a queue's directory (after its [`crate::QueueLog`] was closed) and syncs the parent, so the
/// deletion survives a crash.
pub fn remove_queue_dir(backend: &dyn Backend, dir: &Path) -> Result<()> {
    backend
        .remove_dir_all(dir)
        .map_err(|e| StoreError::io("remove_dir", dir, e))?;
    if let Some(parent) = dir.parent() {
        backend
            .sync_dir(parent)
            .map_err(|e| StoreError::io("fsync_dir", parent, e))?;
    }
    Ok(())
}
