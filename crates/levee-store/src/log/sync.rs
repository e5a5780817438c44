//! The log's sync thread: group commit, durability publication, sealing and reclamation.
//!
//! Owns the sync thread's loop and the requesting side of its protocol with appenders (through
//! `SyncShared`): appenders never fsync; they raise `SyncState::written` / `requested` and get a
//! [`Durability`] handle for their position; one sync cycle fsyncs every unsealed segment (and the
//! directory when segments were created), renames the rolled ones `.open` -> `.seg`, and then publishes
//! `synced`, waking every handle at or below it. Appends arriving during a cycle are covered by the
//! next one. After the cycle, the oldest segments are reclaimed. See `docs/design.md`, levee-store,
//! "Group commit" and "Space reclamation".
//!
//! Invariants:
//! - `synced` only grows and is raised only after every unsealed segment holding bytes below it, and
//!   the directory entries of new segments, were synced (the cycle snapshots `written` first).
//! - A segment is renamed to `.seg` only after it was trimmed and sealed (by the writer) and fsynced
//!   (here), so a `.seg` file is entirely valid.
//! - Segments are deleted only as a prefix: the oldest, when it is sealed, not the active one, and holds
//!   no unsettled message; the directory is synced after each deletion before the next. So a settlement
//!   record is never deleted while the message it settles still exists on disk.
//! - A failed fsync, rename or delete stops the log (`State::failed`, `SyncState::failed`): the state of
//!   unsynced pages is unknown, so nothing more is reported durable; it must be reopened.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{FsyncPolicy, Inner};
use crate::backend::StorageFile;
use crate::durability::{Durability, DurabilityLevel};
use crate::error::{Result, StoreError};
use crate::wal::Attached;

/// Starts the log's sync thread.
pub(super) fn spawn(inner: &Arc<Inner>) -> Result<JoinHandle<()>> {
    let thread_inner = inner.clone();
    std::thread::Builder::new()
        .name("levee-store-sync".into())
        .spawn(move || sync_loop(&thread_inner))
        .map_err(|e| StoreError::io("spawn sync thread", &inner.dir, e))
}

impl Inner {
    /// The durability handle for bytes written up to `written`: records the written position and, if
    /// `eager` under [`FsyncPolicy::Always`], asks the sync thread for a cycle covering it (settlements
    /// are lazy: their handle asks only when polled).
    pub(super) fn durability_for(&self, written: u64, wal_pos: u64, eager: bool) -> Durability {
        if let Some(at) = self.attachment.get() {
            return match self.config.fsync {
                FsyncPolicy::Always => {
                    if eager {
                        at.sync.request(wal_pos);
                    }
                    Durability::pending(at.sync.clone(), wal_pos, eager)
                }
                FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                    Durability::ready(DurabilityLevel::Written, wal_pos)
                }
            };
        }
        let sync = &self.sync;
        let always = self.config.fsync == FsyncPolicy::Always;
        {
            let mut s = sync.state.lock();
            if written > s.written {
                s.written = written;
            }
            if always && eager && written > s.requested {
                s.requested = written;
                sync.work.notify_one();
            }
        }
        match self.config.fsync {
            FsyncPolicy::Always => Durability::pending(sync.clone(), written, eager),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                Durability::ready(DurabilityLevel::Written, written)
            }
        }
    }

    /// Asks the sync thread for a cycle even with nothing to sync (sealing, reclamation).
    pub(super) fn kick_maintenance(&self) {
        if let Some(wal) = self.attachment.get().and(self.config.wal.as_ref()) {
            let me: std::sync::Weak<dyn Attached> = self.me.clone();
            wal.maintain(me);
            return;
        }
        let mut s = self.sync.state.lock();
        s.maintenance = true;
        self.sync.work.notify_one();
    }
}

fn sync_loop(inner: &Inner) {
    let sync = &inner.sync;
    let mut last_cycle = Instant::now();
    loop {
        let final_cycle;
        {
            let mut s = sync.state.lock();
            loop {
                if s.shutdown {
                    final_cycle = true;
                    break;
                }
                if s.requested > s.synced || s.maintenance {
                    final_cycle = false;
                    break;
                }
                match inner.config.fsync {
                    FsyncPolicy::Interval(every) => {
                        let due = last_cycle + every;
                        if s.written > s.synced && Instant::now() >= due {
                            final_cycle = false;
                            break;
                        }
                        let wait_until = if s.written > s.synced {
                            due
                        } else {
                            Instant::now() + every
                        };
                        sync.work.wait_until(&mut s, wait_until);
                    }
                    _ => sync.work.wait(&mut s),
                }
            }
            s.maintenance = false;
        }
        last_cycle = Instant::now();
        let result = sync_cycle(inner)
            .and_then(|()| reclaim(inner))
            .and_then(|()| {
                // Copies are reclaimed behind on the next cycle, once that synced them.
                if super::compact::compact(inner)? {
                    inner.kick_maintenance();
                }
                Ok(())
            });
        if let Err(e) = result {
            tracing::error!(dir = %inner.dir.display(), error = %e, "levee-store log failed");
            inner.state.lock().failed = Some(e.clone());
            sync.state.lock().failed = Some(e);
            break;
        }
        if final_cycle {
            break;
        }
    }
    sync.state.lock().stopped = true;
    sync.wake_all();
}

/// One group commit: fsync every unsealed segment (and the directory if segments were created), seal
/// the complete ones, publish the synced position.
pub(super) fn sync_cycle(inner: &Inner) -> Result<()> {
    let _cycle = inner.cycle_lock.lock();
    let r = sync_cycle_once(inner);
    if r.is_err() {
        // Nothing is known to be synced: a later checkpoint must not skip this log.
        inner.state.lock().wal_dirty = true;
    }
    r
}

fn sync_cycle_once(inner: &Inner) -> Result<()> {
    let (target, files, dir_dirty) = {
        let mut st = inner.state.lock();
        let last = st.segments.len() - 1;
        // A rolled segment whose records are still behind is synced but not sealed yet; none is
        // sealed once the log handed its writes behind to the WAL (a maintenance cycle that
        // began before the close may get here after it).
        let behind = super::behind::segments_behind(&st);
        let orphaned = st.orphaned;
        let files: Vec<(u64, Arc<dyn StorageFile>, bool)> = st
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.sealed)
            .map(|(i, s)| {
                (
                    s.index,
                    s.file.clone(),
                    i == last || orphaned || behind.contains(&s.index),
                )
            })
            .collect();
        st.wal_dirty = false;
        (st.written, files, std::mem::take(&mut st.dir_dirty))
    };
    let started = Instant::now();
    for (index, file, _) in &files {
        file.sync()
            .map_err(|e| StoreError::io("fsync", &inner.path(*index, false), e))?;
    }
    if dir_dirty {
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
    }
    let mut sealed = Vec::new();
    for (index, _, active) in &files {
        if !active {
            let from = inner.path(*index, false);
            inner
                .backend
                .rename(&from, &inner.path(*index, true))
                .map_err(|e| StoreError::io("rename", &from, e))?;
            sealed.push(*index);
        }
    }
    if !sealed.is_empty() {
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
    }
    let elapsed = started.elapsed();
    {
        let mut st = inner.state.lock();
        for index in sealed {
            if let Some(seg) = st.segment_mut(index) {
                seg.sealed = true;
            }
        }
        st.fsyncs += 1;
        st.last_fsync = Some(elapsed);
    }
    inner.sync.publish(target);
    Ok(())
}

/// Whether a segment whose newest message id is from `until_ms` may go (no id, or older than
/// `keep_ms` by the wall clock).
pub(super) fn ids_expired(until_ms: u64, keep_ms: u64) -> bool {
    if until_ms == 0 || keep_ms == 0 {
        return true;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    until_ms.saturating_add(keep_ms) <= now
}

/// Deletes the oldest segments while they are sealed, not active and hold no unsettled message; the
/// directory is synced after each deletion so deletions become durable strictly oldest first.
pub(super) fn reclaim(inner: &Inner) -> Result<()> {
    loop {
        let victim = {
            let st = inner.state.lock();
            match st.segments.front() {
                Some(s)
                    if st.segments.len() > 1
                        && s.sealed
                        && s.live == 0
                        && ids_expired(s.ids_until_ms, inner.config.keep_ids_ms) =>
                {
                    s.index
                }
                _ => return Ok(()),
            }
        };
        let path = inner.path(victim, true);
        inner
            .backend
            .remove_file(&path)
            .map_err(|e| StoreError::io("remove", &path, e))?;
        inner
            .backend
            .sync_dir(&inner.dir)
            .map_err(|e| StoreError::io("fsync_dir", &inner.dir, e))?;
        let mut st = inner.state.lock();
        let popped = st.segments.pop_front().expect("victim is the front");
        debug_assert_eq!(popped.index, victim);
        st.reclaimed += 1;
    }
}

impl Inner {
    /// Marks the log failed (its owner reopens it).
    fn stop(&self, e: &StoreError) {
        let mut st = self.state.lock();
        if st.failed.is_none() {
            st.failed = Some(e.clone());
        }
    }

    /// Closing an attached log: its segments are fsynced (so the WAL no longer needs its records),
    /// then it is detached. If that fsync fails it stays attached with a dead handle, which keeps
    /// the WAL from deleting files until a new log of the same directory attached (after its
    /// recovery fsynced everything), or until the broker restarts (whose redo restores it).
    pub(super) fn close_attached(&self) -> Result<()> {
        let at = self.attachment.get().expect("attached");
        {
            let mut st = self.state.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
        }
        let _w = self.write_lock.lock();
        let mut synced = self.materialize(0).and_then(|()| sync_cycle(self));
        if synced.is_err()
            && let Err(e) = self.backend.list_dir(&self.dir)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            // The queue was deleted under the log: nothing of it needs keeping.
            synced = Ok(());
        }
        if let Some(wal) = &self.config.wal {
            if synced.is_ok() {
                wal.detach(at.id);
            } else if !self.state.lock().behind.is_empty() {
                // Records only in memory and the WAL: the next log of this directory writes
                // them before its recovery reads the segments.
                wal.keep_orphan(&self.dir, self.orphan_writes());
            }
        }
        let st = self.state.lock();
        match (&st.failed, synced) {
            (Some(e), _) => Err(e.clone()),
            (None, r) => r,
        }
    }
}

impl Inner {
    /// Write-behind: waits until the WAL holds everything up to `wal_pos` durably (so the
    /// settlements written so far count, invariant 2 of `behind`), then materializes every chunk
    /// under the write lock. A full disk leaves the log running (the chunks stay, see
    /// `behind`); any other failure stops it.
    fn materialize_settled(&self, wal_pos: u64) -> Result<()> {
        let Some(at) = self.attachment.get() else {
            return Ok(());
        };
        if self.state.lock().behind.is_empty() {
            return Ok(());
        }
        if let Some(wal) = &self.config.wal {
            wal.wait_durable(at, wal_pos)?;
        }
        let _w = self.write_lock.lock();
        self.materialize(0).inspect_err(|e| {
            if !e.is_disk_full() {
                self.stop(e);
            }
        })
    }
}

impl Attached for Inner {
    fn checkpoint(&self) -> Result<()> {
        let wal_pos = {
            let st = self.state.lock();
            if st.closed {
                // A closing log cannot vouch for its segments (its close may still be writing
                // what is behind, or be handing it to the WAL on a full disk): the WAL keeps its
                // files until the close detached the log (invariant 2 of `wal`).
                return Err(StoreError::Closed);
            }
            if !st.wal_dirty && !st.dir_dirty && st.behind.is_empty() {
                return Ok(());
            }
            st.wal_pos
        };
        self.materialize_settled(wal_pos)?;
        sync_cycle(self).inspect_err(|e| self.stop(e))
    }
    fn maintain(&self) -> Result<()> {
        if self.state.lock().closed {
            return Ok(());
        }
        // Only rolled segments need the fsync + rename here (the active one is the WAL's). A
        // directory entry not yet durable alone (a fresh log's first segment) waits for the next
        // checkpoint, which syncs it before the WAL file holding its header goes (the redo
        // recreates a missing newest segment): a declare costs no segment fsync.
        let (rolled, wal_pos) = {
            let st = self.state.lock();
            let rolled = st.segments.iter().rev().skip(1).any(|s| !s.sealed);
            (rolled, st.wal_pos)
        };
        if rolled {
            self.materialize_settled(wal_pos)?;
        }
        let sealed = if rolled { sync_cycle(self) } else { Ok(()) };
        sealed
            .and_then(|()| reclaim(self))
            .and_then(|()| {
                // Oldest segment first, while the files hold much more than the live records;
                // each round frees at least the segment it copied from.
                let rounds = self.state.lock().segments.len();
                for _ in 0..rounds {
                    if !super::compact::compact(self)? {
                        break;
                    }
                    // The victim goes only once its copies are durable in the WAL.
                    let (at, pos) = (self.attachment.get(), self.state.lock().wal_pos);
                    if let (Some(at), Some(wal)) = (at, &self.config.wal) {
                        wal.wait_durable(at, pos)?;
                    }
                    reclaim(self)?;
                }
                Ok(())
            })
            .inspect_err(|e| self.stop(e))
    }
    fn wal_failed(&self, error: &StoreError) {
        self.stop(error);
    }
}
