//! openraft's storage traits over our own pieces: [`LogAdapter`] encodes entries into a
//! [`LogStore`] (fsynced before openraft is told they are flushed), [`SmAdapter`] drives a
//! [`StateMachine`] and keeps the last snapshot on disk.
//!
//! # Invariants
//! - `append` calls openraft's flush callback only after the entries are fsynced, and refuses
//!   an entry that would leave a hole after the last one held.
//! - The state machine itself is not persisted: at open it is restored from the last persisted
//!   snapshot (or empty) and openraft re-applies the committed log after it. So the log is
//!   purged only up to what a snapshot on disk covers: [`LogAdapter`]'s purge waits for
//!   [`SmAdapter`] to report one (`durable`). openraft 0.9 itself does not order these on a
//!   follower: it purges the log a received snapshot covers while its state machine worker is
//!   still installing it, and a crash between would restart on the older snapshot with the
//!   entries after it gone.
//! - The snapshot on disk only moves forward: a snapshot built from older state than one
//!   installed meanwhile (the build is a task of its own) is not written over it.
//! - A read returns the entries from the first index asked for with no gap, and stops at the
//!   first one missing. openraft's replication reads `[start, end)` and sends what it gets as
//!   following `start - 1`; entries purged under a read (the leader's purge and a replication
//!   read race) must not come back as a shorter, later run, which the follower would append
//!   after the wrong entry.

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
use tokio::sync::watch;

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

/// How long a purge waits for the snapshot that covers it to reach disk (the state machine
/// worker installing it) before the group fails rather than purge what no snapshot holds.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The last log index the snapshot on disk covers, published by [`SmAdapter`], read by
/// [`LogAdapter`]'s purge.
pub(crate) type Durable = watch::Receiver<Option<u64>>;

/// The Raft log of one group (cheap to clone: readers share it).
#[derive(Clone)]
pub(crate) struct LogAdapter {
    store: Arc<Mutex<LogStore>>,
    durable: Durable,
}

impl LogAdapter {
    /// Opens the log in `dir`; `durable` is the group's [`SmAdapter::durable`].
    pub(crate) fn open(dir: &Path, durable: Durable) -> std::io::Result<LogAdapter> {
        Ok(LogAdapter {
            store: Arc::new(Mutex::new(LogStore::open(dir)?)),
            durable,
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
        // From `start` on with no gap (see the module's invariants); unbounded, from the first held.
        let first = match range.start_bound() {
            Bound::Unbounded => raw.first().map_or(0, |(i, _)| *i),
            _ => start,
        };
        let run = raw
            .iter()
            .zip(first..)
            .take_while(|((i, _), want)| i == want);
        let mut out = Vec::with_capacity(raw.len());
        for ((_, b), _) in run {
            out.push(dec(b).map_err(|e| serr(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
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
        // Only what a snapshot on disk covers (see the module's invariants).
        let mut durable = self.durable.clone();
        let covered = durable.wait_for(|d| d.is_some_and(|d| d >= log_id.index));
        match tokio::time::timeout(PURGE_WAIT, covered).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return Err(serr(
                    ErrorSubject::Logs,
                    ErrorVerb::Delete,
                    "the state machine closed before a snapshot covered the purge",
                ));
            }
            Err(_) => {
                return Err(serr(
                    ErrorSubject::Logs,
                    ErrorVerb::Delete,
                    format!(
                        "no snapshot on disk covered log index {} within {PURGE_WAIT:?}",
                        log_id.index
                    ),
                ));
            }
        }
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
    /// The last index the snapshot on disk covers; held while one is written, so that writes
    /// are in order and never go back.
    durable: Arc<Mutex<watch::Sender<Option<u64>>>>,
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
        let durable = watch::Sender::new(
            stored
                .as_ref()
                .and_then(|s| s.meta.last_log_id)
                .map(|l| l.index),
        );
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
            durable: Arc::new(Mutex::new(durable)),
        })
    }

    /// What the group's [`LogAdapter`] purges by.
    pub(crate) fn durable(&self) -> Durable {
        self.durable.lock().subscribe()
    }

    /// Writes `stored` unless the snapshot on disk is newer; true if written.
    fn persist(&self, stored: &Stored) -> Result<bool, SErr> {
        let durable = self.durable.lock();
        let index = stored.meta.last_log_id.map(|l| l.index);
        if *durable.borrow() > index {
            return Ok(false);
        }
        write_atomic(&self.dir, "snapshot", &enc(stored))
            .map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        durable.send_replace(index);
        Ok(true)
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
        let written = self.persist(&stored)?;
        let snapshot = Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        };
        if written {
            let mut st = self.state.lock();
            if st.snapshot.as_ref().map(|s| s.meta.last_log_id) <= Some(stored.meta.last_log_id) {
                st.snapshot = Some(Arc::new(stored));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use std::time::Duration;

    /// A state machine that holds nothing.
    struct Nothing;

    impl StateMachine for Nothing {
        fn apply(&self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Result<Vec<u8>, crate::error::ClusterError> {
            Ok(Vec::new())
        }
        fn restore(&self, _: Option<&[u8]>) -> Result<(), crate::error::ClusterError> {
            Ok(())
        }
    }

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn meta(index: u64) -> SnapshotMeta<NodeId, openraft::BasicNode> {
        SnapshotMeta {
            last_log_id: Some(id(index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    fn open(dir: &Path) -> (LogAdapter, SmAdapter) {
        let sm = SmAdapter::open(&dir.join("snapshot"), Arc::new(Nothing)).unwrap();
        let log = LogAdapter::open(&dir.join("log"), sm.durable()).unwrap();
        (log, sm)
    }

    fn fill(log: &LogAdapter, upto: u64) {
        let items = (1..=upto)
            .map(|i| {
                let e: Entry<TypeConfig> = Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                };
                (i, enc(&e))
            })
            .collect();
        log.store.lock().append(items).unwrap();
    }

    async fn indexes(log: &mut LogAdapter, range: std::ops::Range<u64>) -> Vec<u64> {
        let got = log.try_get_log_entries(range).await.unwrap();
        got.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_purge_waits_until_a_snapshot_on_disk_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(dir.path());
        fill(&log, 10);
        let mut purge = Box::pin({
            let mut log = log.clone();
            async move { log.purge(id(8)).await }
        });
        // No snapshot yet: the entries stay.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut purge)
                .await
                .is_err()
        );
        assert_eq!(indexes(&mut log, 1..11).await.len(), 10);
        // A snapshot up to 5 does not cover it either.
        sm.install_snapshot(&meta(5), Box::new(Cursor::new(Vec::new())))
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut purge)
                .await
                .is_err()
        );
        // Once one up to 8 is on disk, the purge goes ahead.
        sm.install_snapshot(&meta(8), Box::new(Cursor::new(Vec::new())))
            .await
            .unwrap();
        purge.await.unwrap();
        assert_eq!(indexes(&mut log, 9..11).await, vec![9, 10]);
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(id(8))
        );
        // And one that no snapshot ever covers fails the group instead of purging.
        let err = log.purge(id(9)).await.unwrap_err();
        assert!(err.to_string().contains("no snapshot on disk"), "{err}");
        assert_eq!(indexes(&mut log, 9..11).await, vec![9, 10]);
    }

    #[tokio::test]
    async fn a_read_stops_at_the_first_entry_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(dir.path());
        fill(&log, 10);
        sm.install_snapshot(&meta(6), Box::new(Cursor::new(Vec::new())))
            .await
            .unwrap();
        log.purge(id(6)).await.unwrap();
        // A read from a purged index gets nothing, not the entries after the purge (which
        // replication would send as following the entry before the first one asked for).
        assert_eq!(indexes(&mut log, 3..9).await, Vec::<u64>::new());
        assert_eq!(indexes(&mut log, 7..9).await, vec![7, 8]);
        assert_eq!(indexes(&mut log, 9..20).await, vec![9, 10]);
        let all = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(all.first().map(|e| e.log_id.index), Some(7));
    }

    #[tokio::test]
    async fn the_snapshot_on_disk_never_goes_back_to_older_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(dir.path());
        sm.install_snapshot(&meta(8), Box::new(Cursor::new(Vec::new())))
            .await
            .unwrap();
        // A build that read older state before the install wrote its snapshot.
        let older = Stored {
            meta: meta(5),
            data: Vec::new(),
        };
        assert!(!sm.persist(&older).unwrap());
        let reopened = SmAdapter::open(&dir.path().join("snapshot"), Arc::new(Nothing)).unwrap();
        assert_eq!(reopened.last_applied(), 8);
        assert_eq!(*reopened.durable().borrow(), Some(8));
    }
}
