//! openraft's storage traits over our own pieces: [`LogAdapter`] encodes entries into a
//! [`LogStore`] (fsynced before openraft is told they are flushed), [`SmAdapter`] drives a
//! [`StateMachine`] and keeps the last snapshot on disk.
//!
//! # Invariants
//! - `append` calls openraft's flush callback only after the entries are fsynced.
//! - The state machine itself is not persisted: at open it is restored from the last persisted
//!   snapshot (or empty) and openraft re-applies the committed log after it. So a snapshot is
//!   written (fsynced) before openraft may purge the log it covers.

// openraft's traits fix the error type (`StorageError`, over 200 bytes); the helpers here return
// it as the traits do.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use parking_lot::Mutex;

use super::{Reply, TypeConfig};
use crate::logstore::{LogStore, write_atomic};
use crate::replicated_log::StateMachine;

type NodeId = u64;
type SErr = StorageError<NodeId>;

fn serr(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> SErr {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).unwrap_or_default()
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The Raft log of one group (cheap to clone: readers share it).
#[derive(Clone)]
pub(crate) struct LogAdapter {
    store: Arc<Mutex<LogStore>>,
}

impl LogAdapter {
    pub(crate) fn open(dir: &Path) -> std::io::Result<LogAdapter> {
        Ok(LogAdapter {
            store: Arc::new(Mutex::new(LogStore::open(dir)?)),
        })
    }

    /// Entries held (for status).
    pub(crate) fn len(&self) -> usize {
        self.store.lock().len()
    }
}

impl RaftLogReader<TypeConfig> for LogAdapter {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self.store.lock().range(start, end);
        raw.iter()
            .map(|(_, b)| dec(b).map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Read, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogAdapter {
    type LogReader = LogAdapter;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let st = self.store.lock();
        let last_purged_log_id: Option<LogId<NodeId>> = match st.purged() {
            Some(b) => Some(dec(b).map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Read, e))?),
            None => None,
        };
        let last_log_id = match st.last() {
            Some((_, b)) => {
                let e: Entry<TypeConfig> =
                    dec(b).map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(e.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.store
            .lock()
            .save_state("vote", &enc(vote))
            .map_err(|e| serr(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        let st = self.store.lock();
        match st
            .load_state("vote")
            .map_err(|e| serr(ErrorSubject::Vote, ErrorVerb::Read, e))?
        {
            Some(b) => {
                Ok(Some(dec::<Vote<NodeId>>(&b).map_err(|e| {
                    serr(ErrorSubject::Vote, ErrorVerb::Read, e)
                })?))
            }
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        self.store
            .lock()
            .save_state("committed", &enc(&committed))
            .map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        let st = self.store.lock();
        match st
            .load_state("committed")
            .map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Read, e))?
        {
            Some(b) => Ok(dec::<Option<LogId<NodeId>>>(&b)
                .map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Read, e))?),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let items: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, enc(&e)))
            .collect();
        let res = self.store.lock().append(items);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(serr(ErrorSubject::Logs, ErrorVerb::Write, msg))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.store
            .lock()
            .truncate(log_id.index)
            .map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.store
            .lock()
            .purge(log_id.index, enc(&log_id))
            .map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Write, e))
    }
}

/// A snapshot as persisted: its meta and the state machine's bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    #[serde(with = "crate::raw")]
    data: Vec<u8>,
}

struct SmState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<Arc<Stored>>,
    snapshot_seq: u64,
}

/// The state machine side of one group (cheap to clone: the snapshot builder is a clone).
#[derive(Clone)]
pub(crate) struct SmAdapter {
    sm: Arc<dyn StateMachine>,
    dir: PathBuf,
    state: Arc<Mutex<SmState>>,
}

impl SmAdapter {
    /// Restores `sm` from the snapshot persisted in `dir` (or to empty).
    pub(crate) fn open(dir: &Path, sm: Arc<dyn StateMachine>) -> Result<SmAdapter, SErr> {
        std::fs::create_dir_all(dir)
            .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let stored: Option<Stored> = match std::fs::read(dir.join("snapshot")) {
            Ok(b) => {
                Some(dec(&b).map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)),
        };
        sm.restore(stored.as_ref().map(|s| s.data.as_slice()))
            .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let state = match stored {
            Some(s) => SmState {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                snapshot: Some(Arc::new(s)),
                snapshot_seq: 0,
            },
            None => SmState {
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshot_seq: 0,
            },
        };
        Ok(SmAdapter {
            sm,
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    fn persist(&self, stored: &Stored) -> Result<(), SErr> {
        write_atomic(&self.dir, "snapshot", &enc(stored))
            .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }

    /// The index of the last applied entry (for status).
    pub(crate) fn last_applied(&self) -> u64 {
        self.state.lock().last_applied.map_or(0, |l| l.index)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmAdapter {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        // Taken under the state lock: no entry is applied meanwhile, so the bytes and
        // `last_applied` agree.
        let stored = {
            let mut st = self.state.lock();
            let data = self
                .sm
                .snapshot()
                .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
            st.snapshot_seq += 1;
            let id = format!(
                "{}-{}",
                st.last_applied.map_or(0, |l| l.index),
                st.snapshot_seq
            );
            Stored {
                meta: SnapshotMeta {
                    last_log_id: st.last_applied,
                    last_membership: st.membership.clone(),
                    snapshot_id: id,
                },
                data,
            }
        };
        self.persist(&stored)?;
        let snapshot = Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        };
        self.state.lock().snapshot = Some(Arc::new(stored));
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for SmAdapter {
    type SnapshotBuilder = SmAdapter;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let st = self.state.lock();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut st = self.state.lock();
        for e in entries {
            st.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Reply(Vec::new())),
                EntryPayload::Normal(cmd) => out.push(Reply(self.sm.apply(&cmd.0))),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Reply(Vec::new()));
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let stored = Stored {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.persist(&stored)?;
        let mut st = self.state.lock();
        self.sm
            .restore(Some(&stored.data))
            .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.snapshot = Some(Arc::new(stored));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let st = self.state.lock();
        Ok(st.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
