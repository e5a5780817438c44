//! The shared write-ahead log: many queue logs attached to one WAL, group commit, redo after power
//! loss (exact and torn), superseded and deleted logs, rotation and checkpoints, a full disk and
//! failing fsyncs. Power loss is simulated with the fault-injecting backend; the real-process
//! SIGKILL test is in `crash.rs`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use levee_store::backend::fault::{CrashMode, FaultyBackend};
use levee_store::{
    Backend, FsyncPolicy, LogConfig, NewMessage, QueueLog, Recovered, Settlement, Wal, WalConfig,
};
use proptest::prelude::*;

/// Small files (rotation and checkpoints happen), write-behind on (it is off by default).
fn wal_config() -> WalConfig {
    WalConfig {
        file_bytes: 64 * 1024,
        write_behind_bytes: 4 << 20,
        ..WalConfig::default()
    }
}

fn log_config(wal: &Wal) -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        max_record_bytes: 4096,
        wal: Some(wal.clone()),
        ..LogConfig::default()
    }
}

fn msg(queue: usize, i: u32, len: usize) -> NewMessage {
    let mut payload = vec![queue as u8; len.max(8)];
    payload[..4].copy_from_slice(&(queue as u32).to_le_bytes());
    payload[4..8].copy_from_slice(&i.to_le_bytes());
    NewMessage {
        timestamp_ms: 1,
        payload: payload.into(),
        ..Default::default()
    }
}

fn id_of(m: &levee_store::StoredMessage) -> u32 {
    u32::from_le_bytes(m.message.payload[4..8].try_into().unwrap())
}

/// The ids of the messages a log recovered as unsettled.
fn unsettled_ids(log: &QueueLog, rec: &Recovered) -> BTreeSet<u32> {
    rec.unsettled
        .iter()
        .map(|m| id_of(&log.read(m.seq).unwrap()))
        .collect()
}

fn qdir(i: usize) -> PathBuf {
    PathBuf::from(format!("/data/queues/q{i}/log"))
}

fn open_all(backend: Arc<dyn Backend>, queues: usize) -> (Wal, Vec<QueueLog>, Vec<BTreeSet<u32>>) {
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", wal_config()).unwrap();
    let mut logs = Vec::new();
    let mut found = Vec::new();
    for q in 0..queues {
        let (log, rec) = QueueLog::open(backend.clone(), qdir(q), log_config(&wal)).unwrap();
        found.push(unsettled_ids(&log, &rec));
        logs.push(log);
    }
    (wal, logs, found)
}

#[test]
fn attached_logs_start_no_thread_and_share_one_fsync_per_commit() {
    let disk = FaultyBackend::new();
    let (wal, logs, _) = open_all(disk.shared(), 50);
    // A disk whose fsync takes time, as a real one: appends made during a commit ride the next.
    disk.set_sync_delay(Some(std::time::Duration::from_millis(20)));
    let before = disk.sync_count();
    let commits_before = wal.stats().commits;
    // One append per queue, all pending at once: they ride one commit (or very few).
    let handles: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(q, l)| l.append(&msg(q, 0, 100)).unwrap().durability)
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    let syncs = disk.sync_count() - before;
    let commits = wal.stats().commits - commits_before;
    assert!(
        commits <= 3,
        "50 queues' appends took {commits} WAL commits"
    );
    assert!(
        syncs < 10,
        "50 queues' appends took {syncs} fsyncs; a standalone log per queue would take 50"
    );
    assert!(wal.stats().commits >= 1);
    drop(logs);
    wal.close().unwrap();
}

/// An attached log runs no sync cycle of its own, so its `fsyncs` counts the WAL commits that
/// covered its records: never 0 once an append is durable, never more than the WAL's commits.
#[test]
fn an_attached_log_counts_the_wal_commits_that_made_it_durable() {
    let disk = FaultyBackend::new();
    let (wal, logs, _) = open_all(disk.shared(), 2);
    let durable_append = |i| {
        logs[0]
            .append(&msg(0, i, 100))
            .unwrap()
            .durability
            .wait()
            .unwrap();
    };
    durable_append(0);
    let before = logs[0].stats().fsyncs;
    assert!(before >= 1, "a durable append was counted");
    let (idle, commits_before) = (logs[1].stats().fsyncs, wal.stats().commits);
    for i in 1..=5 {
        durable_append(i);
    }
    let counted = logs[0].stats().fsyncs - before;
    let commits = wal.stats().commits - commits_before;
    // Five appends, each waited for, ride five commits; the log's own cycle that syncs the
    // directory entry of its first segment (run once, on the WAL's maintenance thread) may land
    // in between.
    assert!((5..=6).contains(&counted), "{counted}");
    assert!(counted <= commits + 1, "{counted} > {commits} + 1");
    // The idle log took part in none of the commits; its own one-time directory cycle (on the
    // maintenance thread, asynchronous to its open) may land in between.
    let idle_now = logs[1].stats().fsyncs;
    assert!(
        idle_now <= idle + 1,
        "the idle log took part in none: {idle} -> {idle_now}"
    );
    // Counting is monotonic and idempotent: asking again counts nothing new.
    assert_eq!(logs[0].stats().fsyncs - before, counted);
    drop(logs);
    wal.close().unwrap();
}

#[test]
fn clean_restart_keeps_everything_and_empties_the_wal() {
    let disk = FaultyBackend::new();
    let (wal, logs, _) = open_all(disk.shared(), 3);
    for (q, l) in logs.iter().enumerate() {
        for i in 0..200 {
            let a = l.append(&msg(q, i, 200)).unwrap();
            if i % 3 == 0 {
                l.settle(a.first_seq, Settlement::Acked)
                    .unwrap()
                    .wait()
                    .unwrap();
            } else {
                a.durability.wait().unwrap();
            }
        }
    }
    for l in logs {
        l.close().unwrap();
    }
    wal.close().unwrap();
    let (_wal, _logs, found) = open_all(disk.shared(), 3);
    for ids in found {
        let want: BTreeSet<u32> = (0..200).filter(|i| i % 3 != 0).collect();
        assert_eq!(ids, want);
    }
}

/// A queue deleted and declared again in the same directory: the old log's WAL records are not
/// redone into the new one's segments.
#[test]
fn a_redeclared_queue_gets_nothing_of_the_deleted_one() {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", wal_config()).unwrap();
    let dir = qdir(0);
    let (old, _) = QueueLog::open(backend.clone(), &dir, log_config(&wal)).unwrap();
    for i in 0..50 {
        old.append(&msg(0, i, 300))
            .unwrap()
            .durability
            .wait()
            .unwrap();
    }
    old.close().unwrap();
    levee_store::meta::remove_queue_dir(&*backend, dir.parent().unwrap()).unwrap();
    let (new, rec) = QueueLog::open(backend.clone(), &dir, log_config(&wal)).unwrap();
    assert!(rec.unsettled.is_empty());
    new.append(&msg(0, 1000, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
    disk.crash(CrashMode::LoseUnsynced);
    drop(new);
    drop(wal);
    let (_wal, _logs, found) = open_all(disk.shared(), 1);
    assert_eq!(found[0], BTreeSet::from([1000]));
}

/// Many queues appending and settling concurrently from threads, with rotation and checkpoints
/// (small WAL files), then power loss: every confirmed message comes back, no durably settled
/// one does.
/// `mostly_settled`: three in four are settled (most records are then left out of the segments
/// by write-behind, as skips), else one in four.
fn concurrent_power_loss(queues: usize, per_queue: u32, mode: CrashMode, mostly_settled: bool) {
    let disk = FaultyBackend::new();
    let (wal, logs, _) = open_all(disk.shared(), queues);
    let logs: Vec<Arc<QueueLog>> = logs.into_iter().map(Arc::new).collect();
    let results: Vec<(BTreeSet<u32>, BTreeSet<u32>)> = std::thread::scope(|s| {
        let hs: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(q, l)| {
                let l = l.clone();
                s.spawn(move || {
                    let mut confirmed = BTreeSet::new();
                    let mut settled = BTreeSet::new();
                    for i in 0..per_queue {
                        let a = l.append(&msg(q, i, 64 + (i as usize * 37) % 900)).unwrap();
                        a.durability.wait().unwrap();
                        confirmed.insert(i);
                        if (i % 4 == 1) != mostly_settled {
                            l.settle(a.first_seq, Settlement::Acked)
                                .unwrap()
                                .wait()
                                .unwrap();
                            settled.insert(i);
                        }
                    }
                    (confirmed, settled)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = wal.stats();
    // ~1.5 MB of records through 64 KiB files (the smaller property cases may not rotate).
    assert!(
        queues * (per_queue as usize) < 2000
            || stats.rotations_made_ahead + stats.rotations_made_inline > 0,
        "the power loss comes after rotations: {stats:?}"
    );
    disk.crash(mode);
    drop(logs);
    drop(wal);
    let (_wal, _logs, found) = open_all(disk.shared(), queues);
    for (q, ((confirmed, settled), ids)) in results.iter().zip(&found).enumerate() {
        let want: BTreeSet<u32> = confirmed.difference(settled).copied().collect();
        assert_eq!(ids, &want, "queue {q}");
    }
}

#[test]
fn power_loss_under_concurrent_appends_to_many_queues() {
    concurrent_power_loss(20, 150, CrashMode::LoseUnsynced, false);
    concurrent_power_loss(20, 150, CrashMode::LoseUnsynced, true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    #[test]
    fn torn_power_loss_under_concurrent_appends(seed in any::<u64>(), queues in 1usize..8) {
        concurrent_power_loss(queues, 80, CrashMode::Torn { seed }, seed % 2 == 0);
    }
}

/// Power loss while appends are in flight (nothing waited for): what was confirmed before the
/// crash survives; unconfirmed tails may or may not; the logs open cleanly.
#[test]
fn power_loss_mid_stream_keeps_every_confirmed_message() {
    for seed in 0..6u64 {
        let disk = FaultyBackend::new();
        let (wal, logs, _) = open_all(disk.shared(), 4);
        let mut confirmed: HashMap<usize, BTreeSet<u32>> = HashMap::new();
        let mut pending = Vec::new();
        for i in 0..300u32 {
            for (q, l) in logs.iter().enumerate() {
                let a = l.append(&msg(q, i, 100)).unwrap();
                pending.push((q, i, a.durability));
            }
            if i % 50 == 49 {
                for (q, i, mut d) in pending.drain(..) {
                    if let Some(Ok(_)) = d.try_now() {
                        confirmed.entry(q).or_default().insert(i);
                    }
                }
            }
        }
        disk.crash(CrashMode::Torn { seed });
        drop(pending);
        drop(logs);
        drop(wal);
        let (_wal, _logs, found) = open_all(disk.shared(), 4);
        for (q, ids) in found.iter().enumerate() {
            let want = confirmed.remove(&q).unwrap_or_default();
            assert!(
                want.is_subset(ids),
                "seed {seed} queue {q}: lost {:?}",
                want.difference(ids).collect::<Vec<_>>()
            );
            // What came back is a prefix (no holes): appends of one queue are ordered.
            if let Some(&max) = ids.iter().max() {
                assert_eq!(ids.len() as u32, max + 1, "seed {seed} queue {q}: holes");
            }
        }
    }
}

#[test]
fn wal_files_are_checkpointed_and_deleted() {
    let disk = FaultyBackend::new();
    let (wal, logs, _) = open_all(disk.shared(), 2);
    for i in 0..2000 {
        for (q, l) in logs.iter().enumerate() {
            let a = l.append(&msg(q, i, 500)).unwrap();
            drop(l.settle(a.first_seq, Settlement::Acked).unwrap());
        }
    }
    logs[0].sync().wait().unwrap();
    // ~2 MB through 64 KiB WAL files: the full ones are deleted behind.
    // Reclamation still works for attached logs. Both run behind, on the WAL's maintenance
    // thread: wait (bounded) for them.
    let (mut files, mut segs) = (usize::MAX, usize::MAX);
    for _ in 0..500 {
        files = wal_files(&disk, Path::new("/data/wal"));
        segs = logs[0].stats().segments;
        if files <= 3 && segs <= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The active file, one being checkpointed, the next one made ahead.
    assert!(files <= 3, "{files} WAL files left");
    assert!(wal.stats().checkpoints > 0);
    // The maintenance thread makes each next file after a rotation (first thing, before the
    // checkpoint's fsyncs) and one at open; a rotation that finds none makes its own (here, with
    // files filled in a millisecond, often: the maintenance thread is checkpointing).
    let stats = wal.stats();
    assert!(
        stats.rotations_made_ahead > 0,
        "rotations use the files made ahead: {stats:?}"
    );
    assert!(segs <= 3, "{segs} segments left");
}

/// `recycle_files = 0`: full WAL files are deleted, never kept as spares, and a crash still
/// brings back exactly the unsettled messages.
#[test]
fn without_recycling_full_wal_files_are_deleted() {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let config = WalConfig {
        recycle_files: 0,
        ..wal_config()
    };
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", config.clone()).unwrap();
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), log_config(&wal)).unwrap();
    let mut live = BTreeSet::new();
    for i in 0..2000u32 {
        let a = log.append(&msg(0, i, 500)).unwrap();
        if i % 50 == 0 {
            live.insert(i);
        } else {
            drop(log.settle(a.first_seq, Settlement::Acked).unwrap());
        }
        if i % 500 == 499 {
            // Spares would show up while the run goes on.
            assert_eq!(files_ending(&disk, Path::new("/data/wal"), ".spare"), 0);
        }
    }
    log.sync().wait().unwrap();
    let mut files = usize::MAX;
    for _ in 0..500 {
        files = wal_files(&disk, Path::new("/data/wal"));
        if files <= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(files <= 3, "{files} WAL files left");
    let stats = wal.stats();
    assert!(stats.checkpoints > 0, "{stats:?}");
    assert_eq!(stats.files_recycled, 0, "{stats:?}");
    assert_eq!(files_ending(&disk, Path::new("/data/wal"), ".spare"), 0);
    disk.crash(CrashMode::LoseUnsynced);
    drop(log);
    drop(wal);
    let backend = disk.shared();
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", config).unwrap();
    let (log, rec) = QueueLog::open(backend.clone(), qdir(0), log_config(&wal)).unwrap();
    assert_eq!(unsettled_ids(&log, &rec), live);
}

/// WAL files are recycled (a retired file is renamed to a spare and reused as a later file, its
/// old frames left behind the new ones): after power loss, redo must read only the frames of the
/// file's current life. A stale `write` record replayed puts old bytes back into a segment, and a
/// message whose settlement was in another (deleted) file would come back unsettled.
#[test]
fn a_recycled_wal_file_replays_only_its_own_frames() {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let config = wal_config();
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", config.clone()).unwrap();
    let lc = LogConfig {
        // One segment for the whole run: never sealed, so redo writes into it.
        segment_bytes: 4 << 20,
        ..log_config(&wal)
    };
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), lc.clone()).unwrap();
    // Waiting for each record keeps every commit the same two frames, so every file of the run
    // has the same layout: a file's own frames end exactly where a stale frame of its old life
    // begins, and the scan would go on into them if they checked.
    let pair = |i: u32| {
        let a = log.append(&msg(0, i, 500)).unwrap();
        a.durability.wait().unwrap();
        log.settle(a.first_seq, Settlement::Acked)
            .unwrap()
            .wait()
            .unwrap();
    };
    let mut i = 0;
    while wal.stats().files_recycled < 1 {
        pair(i);
        i += 1;
        assert!(i < 100_000, "no WAL file was recycled: {:?}", wal.stats());
    }
    // The recycled file is the next one made ahead: go on until it is the active one, and a
    // little into it.
    let f0 = wal.stats().file_index;
    let mut in_active = 0u64;
    while in_active < 3 {
        pair(i);
        i += 1;
        match wal.stats().file_index {
            f if f == f0 + 1 => in_active += 1,
            f if f == f0 => {}
            f => panic!("file {f} after {f0}: the files hold ~100 pairs"),
        }
    }
    // The checkpoint behind the rotation retires the full file (f0): then the directory holds
    // the active file and the one made ahead (and a spare). Wait for f0 itself to go: before the
    // next file is made ahead, f0 and the active one are two files too.
    let full = format!("{f0:016x}.wal");
    let mut listed = Vec::new();
    for _ in 0..500 {
        listed = disk.shared().list_dir(Path::new("/data/wal")).unwrap();
        if !listed.contains(&full) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!listed.contains(&full), "{full} not retired: {listed:?}");
    let files = wal_files(&disk, Path::new("/data/wal"));
    assert!(files <= 2, "{files} WAL files");
    let spares = files_ending(&disk, Path::new("/data/wal"), ".spare");
    assert!(spares <= 1, "{spares} spares, recycle_files is 1");
    disk.crash(CrashMode::LoseUnsynced);
    let backend = disk.shared();
    let (wal, report) = Wal::open(backend.clone(), "/data/wal", config).unwrap();
    let lc = LogConfig {
        wal: Some(wal.clone()),
        ..lc
    };
    let (log, rec) = QueueLog::open(backend.clone(), qdir(0), lc).unwrap();
    let back = unsettled_ids(&log, &rec);
    assert!(back.is_empty(), "acked messages came back: {back:?}");
    // Redo applied what the files hold since their last rotation: no stale frame.
    assert!(
        report.applied <= 2 * in_active + 2,
        "redo applied {} records, {in_active} pairs were written since the rotation: {report:?}",
        report.applied
    );
    // The spare left at the crash is reused again.
    assert!(wal.stats().files_recycled >= 1, "{:?}", wal.stats());
}

fn wal_files(disk: &FaultyBackend, dir: &Path) -> usize {
    files_ending(disk, dir, ".wal")
}

fn files_ending(disk: &FaultyBackend, dir: &Path, suffix: &str) -> usize {
    disk.shared()
        .list_dir(dir)
        .unwrap()
        .iter()
        .filter(|n| n.ends_with(suffix))
        .count()
}

#[test]
fn failing_fsyncs_fail_the_logs_and_a_reopen_works_once_they_succeed() {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let (wal, logs, _) = open_all(backend.clone(), 2);
    logs[0]
        .append(&msg(0, 0, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
    disk.fail_syncs(Some(std::io::ErrorKind::Other));
    // (The append itself may already fail: a maintenance fsync can fail the log first.)
    let r = match logs[0].append(&msg(0, 1, 10)) {
        Ok(a) => a.durability.wait().map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "an append whose fsync failed is not durable");
    // The other queue's log failed with the WAL epoch.
    assert!(logs[1].append(&msg(1, 0, 10)).is_err() || logs[1].sync().wait().is_err());
    disk.fail_syncs(None);
    drop(logs);
    // The WAL starts its new epoch behind (as the broker does, retry the reopen).
    let mut opened = QueueLog::open(backend.clone(), qdir(0), log_config(&wal));
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        opened = QueueLog::open(backend.clone(), qdir(0), log_config(&wal));
    }
    let (log, rec) = opened.unwrap();
    assert!(!rec.unsettled.is_empty());
    log.append(&msg(0, 2, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
}

#[test]
fn a_full_disk_refuses_appends_and_the_log_goes_on_after() {
    // Segments written at once (no write-behind): the segment write itself meets the full disk.
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let config = WalConfig {
        write_behind_bytes: 0,
        ..wal_config()
    };
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", config).unwrap();
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), log_config(&wal)).unwrap();
    log.append(&msg(0, 0, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
    disk.set_write_budget(Some(0));
    let r = log.append(&msg(0, 1, 100));
    assert!(matches!(r, Err(ref e) if e.is_disk_full()), "{r:?}");
    disk.set_write_budget(None);
    log.append(&msg(0, 2, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
    drop(log);
    disk.crash(CrashMode::LoseUnsynced);
    drop(wal);
    let (_wal, _logs, found) = open_all(disk.shared(), 1);
    assert_eq!(found[0], BTreeSet::from([0, 2]));
}

#[test]
fn a_full_disk_refuses_appends_once_the_write_behind_bound_is_reached() {
    // Appends go to the (preallocated) WAL; the segments behind it meet the full disk. The log
    // keeps what it could not write in memory up to its bound, then refuses appends, and goes
    // on once there is space: nothing accepted is lost.
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let config = WalConfig {
        write_behind_bytes: 1024,
        ..wal_config()
    };
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", config).unwrap();
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), log_config(&wal)).unwrap();
    disk.set_write_budget(Some(0));
    let mut accepted = BTreeSet::new();
    let mut refused = None;
    for i in 0..100u32 {
        match log.append(&msg(0, i, 100)) {
            Ok(a) => {
                a.durability.wait().unwrap();
                accepted.insert(i);
            }
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                refused = Some(i);
                break;
            }
        }
    }
    let refused = refused.expect("appends are refused once the bound is reached");
    assert!(refused >= 5, "refused only at message {refused}");
    assert!(log.stats().behind_bytes > 1024);
    disk.set_write_budget(None);
    let a = log.append(&msg(0, refused, 100)).unwrap();
    a.durability.wait().unwrap();
    accepted.insert(refused);
    assert!(log.stats().behind_bytes <= 1024);
    drop(log);
    disk.crash(CrashMode::LoseUnsynced);
    drop(wal);
    let (_wal, _logs, found) = open_all(disk.shared(), 1);
    assert_eq!(found[0], accepted);
}

/// Settled messages are never written to their segment (the WAL holds them until a
/// checkpoint), unsettled ones are, and a crash at any point restores exactly the unsettled
/// ones.
#[test]
fn write_behind_leaves_settled_messages_out_of_the_segments() {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", wal_config()).unwrap();
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), log_config(&wal)).unwrap();
    let mut live = BTreeSet::new();
    let mut live_seqs = Vec::new();
    for i in 0..2000u32 {
        let a = log.append(&msg(0, i, 200)).unwrap();
        a.durability.wait().unwrap();
        if i % 100 == 7 {
            live.insert(i);
            live_seqs.push(a.first_seq);
        } else {
            drop(log.settle(a.first_seq, Settlement::Acked).unwrap());
        }
    }
    // Checkpoints and seals materialize what is behind on the WAL's maintenance thread: wait
    // (bounded) until at most a WAL file's worth is left, as the last rotations catch up.
    let mut st = log.stats();
    for _ in 0..1000 {
        if st.behind_bytes <= 64 * 1024 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        st = log.stats();
    }
    // Some 460 KB went through the log: most of it never reached a segment.
    assert!(st.left_out_bytes > 300_000, "{st:?}");
    for s in &live_seqs {
        assert_eq!(log.read(*s).unwrap().seq, *s);
    }
    drop(log);
    disk.crash(CrashMode::LoseUnsynced);
    drop(wal);
    let (wal, logs, found) = open_all(disk.shared(), 1);
    assert_eq!(found[0], live);
    drop(logs);
    drop(wal);
}

#[test]
fn standalone_logs_are_unchanged() {
    let disk = FaultyBackend::new();
    let (log, _) = QueueLog::open(
        disk.shared(),
        "/solo",
        LogConfig {
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        },
    )
    .unwrap();
    log.append(&msg(0, 0, 10))
        .unwrap()
        .durability
        .wait()
        .unwrap();
}

/// One message never settled while thousands pass: compaction copies it forward, so the files
/// stay bounded; with appends and settlements running concurrently and a power loss at the end,
/// nothing confirmed is lost and nothing settled comes back.
fn compaction_under_load(attached: bool, mode: CrashMode) {
    let disk = FaultyBackend::new();
    let backend = disk.shared();
    let (wal, _) = Wal::open(backend.clone(), "/data/wal", wal_config()).unwrap();
    let config = LogConfig {
        wal: attached.then(|| wal.clone()),
        ..log_config(&wal)
    };
    let (log, _) = QueueLog::open(backend.clone(), qdir(0), config.clone()).unwrap();
    let log = Arc::new(log);
    // Pinned: never settled. Every 50th message after it is kept too.
    let pinned = log.append(&msg(0, 0, 200)).unwrap();
    pinned.durability.wait().unwrap();
    let mut kept = BTreeSet::from([0u32]);
    let mut max_bytes = 0;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut kept = BTreeSet::new();
            for i in 1..3000u32 {
                let a = log.append(&msg(0, i, 300)).unwrap();
                a.durability.wait().unwrap();
                if i % 50 == 0 {
                    kept.insert(i);
                } else {
                    log.settle(a.first_seq, Settlement::Acked)
                        .unwrap()
                        .wait()
                        .unwrap();
                }
            }
            kept
        })
    };
    while !writer.is_finished() {
        max_bytes = max_bytes.max(log.stats().bytes_on_disk);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    kept.extend(writer.join().unwrap());
    log.sync().wait().unwrap();
    // 3000 x ~340 B = ~1 MB went through 16 KiB segments, with a kept message in nearly every
    // one (without compaction all would stay); live is ~60 x 340 B = ~20 KiB. Compaction runs
    // behind the appends (it may lag under load), and catches up: about 2x live + 2 segments.
    let bound = 2 * 60 * 360 + 3 * 16 * 1024;
    let mut stats = log.stats();
    for _ in 0..400 {
        if stats.bytes_on_disk <= bound {
            break;
        }
        // Maintenance runs on rolls and emptied segments: keep it going.
        drop(log.settle(
            log.append(&msg(0, 99_999, 10)).unwrap().first_seq,
            Settlement::Acked,
        ));
        std::thread::sleep(std::time::Duration::from_millis(5));
        stats = log.stats();
    }
    assert!(stats.compacted_messages > 0, "{stats:?}");
    assert!(stats.bytes_on_disk <= bound, "{stats:?}");
    assert!(max_bytes < 1_000_000, "peak {max_bytes} bytes");
    log.sync().wait().unwrap();
    disk.crash(mode);
    drop(log);
    drop(wal);
    let (wal, _) = Wal::open(disk.shared(), "/data/wal", wal_config()).unwrap();
    let config = LogConfig {
        wal: attached.then(|| wal.clone()),
        ..log_config(&wal)
    };
    let (log, rec) = QueueLog::open(disk.shared(), qdir(0), config).unwrap();
    assert_eq!(unsettled_ids(&log, &rec), kept);
}

#[test]
fn compaction_bounds_disk_use_behind_a_pinned_message_attached() {
    compaction_under_load(true, CrashMode::LoseUnsynced);
}

#[test]
fn compaction_bounds_disk_use_behind_a_pinned_message_standalone() {
    compaction_under_load(false, CrashMode::LoseUnsynced);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    #[test]
    fn compaction_survives_torn_power_loss(seed in any::<u64>(), attached in any::<bool>()) {
        compaction_under_load(attached, CrashMode::Torn { seed });
    }
}
