//! Behaviour of the public API: append/read/settle/reopen, typed errors, durability handles, group
//! commit, disk full and fsync failure, space reclamation, metadata files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use levee_store::backend::fault::{CrashMode, FaultyBackend};
use levee_store::meta::{read_meta, remove_queue_dir, write_meta_atomic};
use levee_store::{
    DurabilityLevel, FsBackend, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement,
    StoreError, key_hash,
};

fn msg(payload: &str) -> NewMessage {
    NewMessage {
        timestamp_ms: 1_000,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

fn small(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        segment_bytes: 4096,
        max_record_bytes: 2048,
        ..LogConfig::default()
    }
}

fn open(b: &FaultyBackend, cfg: LogConfig) -> (QueueLog, levee_store::Recovered) {
    QueueLog::open(b.shared(), "/data/queues/q", cfg).expect("open")
}

#[test]
fn full_message_roundtrips_through_reopen_on_real_disk() {
    let dir = tempfile::tempdir().unwrap();
    let m = NewMessage {
        timestamp_ms: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"order-17")),
        priority: 7,
        ttl_ms: Some(30_000),
        headers: vec![
            ("content-type".into(), Bytes::from_static(b"json")),
            ("trace".into(), Bytes::from_static(b"")),
        ],
        message_id: Some(Bytes::from_static(b"producer-7:42")),
        properties: Some(Bytes::from_static(b"\x90\x00\x10application/json")),
        payload: Bytes::from(vec![0xAB; 3000]),
    };
    let seq;
    {
        let (log, rec) =
            QueueLog::open(FsBackend::shared(), dir.path(), LogConfig::default()).unwrap();
        assert!(rec.unsettled.is_empty());
        let a = log.append(&m).unwrap();
        seq = a.first_seq;
        assert_eq!(
            a.durability.wait().unwrap().level(),
            DurabilityLevel::Fsynced
        );
        log.close().unwrap();
    }
    let (log, rec) = QueueLog::open(FsBackend::shared(), dir.path(), LogConfig::default()).unwrap();
    assert_eq!(rec.unsettled.len(), 1);
    let meta = rec.unsettled[0];
    assert_eq!(meta.seq, seq);
    assert_eq!(meta.priority, 7);
    assert_eq!(meta.payload_len, 3000);
    assert_eq!(meta.expires_at_ms, Some(1_700_000_030_000));
    assert_eq!(meta.key_hash, Some(key_hash(b"order-17")));
    let back = log.read(seq).unwrap();
    assert_eq!(back.message, m);
    assert_eq!(back.delivery_count, 0);
}

#[test]
fn sequence_numbers_are_consecutive_and_continue_after_reopen() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let a = log.append_batch(&[msg("a"), msg("b"), msg("c")]).unwrap();
    assert_eq!((a.first_seq, a.last_seq), (0, 2));
    let d = log.append(&msg("d")).unwrap();
    assert_eq!(d.first_seq, 3);
    d.durability.wait().unwrap();
    drop(log);
    let (log, rec) = open(&b, LogConfig::default());
    assert_eq!(
        rec.unsettled.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(log.append(&msg("e")).unwrap().first_seq, 4);
}

#[test]
fn settled_and_unknown_sequence_numbers_are_typed_errors() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let a = log.append(&msg("x")).unwrap();
    drop(log.settle(a.first_seq, Settlement::Acked).unwrap());
    assert!(matches!(
        log.read(a.first_seq),
        Err(StoreError::Settled { seq: 0 })
    ));
    assert!(matches!(
        log.read(99),
        Err(StoreError::UnknownSeq { seq: 99 })
    ));
    assert!(matches!(
        log.settle(a.first_seq, Settlement::Expired),
        Err(StoreError::Settled { .. })
    ));
    // A batch naming one bad seq writes nothing.
    let c = log.append(&msg("y")).unwrap();
    let before = log.stats().written_position;
    assert!(
        log.settle_batch(&[(c.first_seq, Settlement::Acked), (77, Settlement::Acked)])
            .is_err()
    );
    assert!(
        log.settle_batch(&[
            (c.first_seq, Settlement::Acked),
            (c.first_seq, Settlement::Expired)
        ])
        .is_err()
    );
    assert_eq!(log.stats().written_position, before);
    assert!(log.read(c.first_seq).is_ok());
}

#[test]
fn every_settlement_kind_survives_reopen() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let a = log
        .append_batch(&[msg("0"), msg("1"), msg("2"), msg("3"), msg("4")])
        .unwrap();
    a.durability.wait().unwrap();
    log.settle_batch(&[
        (0, Settlement::Acked),
        (1, Settlement::Dropped("queue full".into())),
        (2, Settlement::Expired),
    ])
    .unwrap()
    .wait()
    .unwrap();
    log.settle(3, Settlement::DeadLettered("dlq".into()))
        .unwrap()
        .wait()
        .unwrap();
    drop(log);
    b.crash(CrashMode::LoseUnsynced);
    let (_log, rec) = open(&b, LogConfig::default());
    assert_eq!(
        rec.unsettled.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(rec.report.settlements, 4);
}

#[test]
fn delivery_counts_survive_reopen() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let a = log.append_batch(&[msg("a"), msg("b")]).unwrap();
    a.durability.wait().unwrap();
    let (n, d) = log.increment_delivery(0).unwrap();
    assert_eq!(n, 1);
    d.wait().unwrap();
    let (n, d) = log.increment_delivery(0).unwrap();
    assert_eq!(n, 2);
    d.wait().unwrap();
    log.record_deliveries(&[(1, 5)]).unwrap().wait().unwrap();
    assert_eq!(log.read(0).unwrap().delivery_count, 2);
    drop(log);
    b.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open(&b, LogConfig::default());
    assert_eq!(rec.unsettled[0].delivery_count, 2);
    assert_eq!(rec.unsettled[1].delivery_count, 5);
    assert_eq!(log.read(1).unwrap().delivery_count, 5);
    assert!(matches!(
        log.record_deliveries(&[(9, 1)]),
        Err(StoreError::UnknownSeq { .. })
    ));
}

#[test]
fn always_handle_does_not_resolve_before_the_fsync() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    b.hold_syncs(true);
    let a = log.append(&msg("held")).unwrap();
    let mut d = a.durability;
    assert!(d.try_now().is_none());
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        d.try_now().is_none(),
        "reported durable while the fsync is stalled"
    );
    // A crash now loses it: it really was not durable.
    let probe = b.clone();
    b.hold_syncs(false);
    let proof = d.wait().unwrap();
    assert_eq!(proof.level(), DurabilityLevel::Fsynced);
    drop(log);
    probe.crash(CrashMode::LoseUnsynced);
    let (_log, rec) = open(&probe, LogConfig::default());
    assert_eq!(rec.unsettled.len(), 1);
}

#[test]
fn handle_is_a_future_usable_without_a_runtime() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    b.set_sync_delay(Some(Duration::from_millis(20)));
    let a = log.append(&msg("async")).unwrap();
    let proof = futures::executor::block_on(a.durability).unwrap();
    assert_eq!(proof.level(), DurabilityLevel::Fsynced);
    let s = log.settle(a.first_seq, Settlement::Acked).unwrap();
    assert!(futures::executor::block_on(s).is_ok());
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let log = Arc::new(log);
    b.set_sync_delay(Some(Duration::from_millis(100)));
    let first = log.append(&msg("first")).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // the first fsync is now in progress
    let before = log.stats().fsyncs;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| log.append(&msg(&format!("{t}-{i}"))).unwrap().durability)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let pending: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    first.durability.wait().unwrap();
    for d in pending {
        assert_eq!(d.wait().unwrap().level(), DurabilityLevel::Fsynced);
    }
    let cycles = log.stats().fsyncs - before;
    assert!(
        cycles <= 2,
        "200 appends during one fsync needed {cycles} more sync cycles"
    );
}

#[test]
fn interval_and_never_resolve_at_once_as_written() {
    for policy in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let b = FaultyBackend::new();
        let cfg = LogConfig {
            fsync: policy,
            ..LogConfig::default()
        };
        let (log, _) = open(&b, cfg);
        b.hold_syncs(true); // no fsync can complete now
        let mut d = log.append(&msg("w")).unwrap().durability;
        assert_eq!(
            d.try_now().unwrap().unwrap().level(),
            DurabilityLevel::Written
        );
        // An explicit sync gives a real fsync proof, only once the disk syncs.
        let mut s = log.sync();
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.try_now().is_none());
        b.hold_syncs(false);
        assert_eq!(s.wait().unwrap().level(), DurabilityLevel::Fsynced);
    }
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let b = FaultyBackend::new();
    let cfg = LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(10)),
        ..LogConfig::default()
    };
    let (log, _) = open(&b, cfg.clone());
    let _ = log.append(&msg("bg")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.stats().synced_position < log.stats().written_position {
        assert!(
            std::time::Instant::now() < deadline,
            "interval sync never happened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let probe = b.clone();
    probe.crash(CrashMode::LoseUnsynced);
    drop(log);
    let (_log, rec) = open(&probe, cfg);
    assert_eq!(rec.unsettled.len(), 1);
}

#[test]
fn disk_full_is_typed_and_corrupts_nothing() {
    let b = FaultyBackend::new();
    let cfg = small(FsyncPolicy::Always);
    let (log, _) = open(&b, cfg.clone());
    let mut kept = Vec::new();
    for i in 0..20 {
        let a = log.append(&msg(&format!("kept-{i}"))).unwrap();
        a.durability.wait().unwrap();
        kept.push(a.first_seq);
    }
    b.set_write_budget(Some(30)); // the next record is written only partly
    let err = log
        .append(&msg("this one does not fit on the disk"))
        .unwrap_err();
    assert!(err.is_disk_full(), "{err:?}");
    // Keep failing across a segment roll attempt too.
    for _ in 0..200 {
        let e = log.append(&msg("more data that will not fit")).unwrap_err();
        assert!(e.is_disk_full(), "{e:?}");
    }
    for &s in &kept {
        assert!(log.read(s).is_ok());
    }
    b.set_write_budget(None);
    let after = log.append(&msg("after")).unwrap();
    after.durability.wait().unwrap();
    assert_eq!(
        log.read(after.first_seq).unwrap().message.payload,
        Bytes::from_static(b"after")
    );
    drop(log);
    b.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open(&b, cfg);
    let mut expect = kept.clone();
    expect.push(after.first_seq);
    assert_eq!(
        rec.unsettled.iter().map(|m| m.seq).collect::<Vec<_>>(),
        expect
    );
    assert!(rec.report.truncated.is_none(), "{:?}", rec.report.truncated);
    for s in expect {
        log.read(s).unwrap();
    }
}

#[test]
fn failed_fsync_fails_waiters_and_stops_the_log() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let ok = log.append(&msg("ok")).unwrap();
    ok.durability.wait().unwrap();
    b.fail_syncs(Some(std::io::ErrorKind::Other));
    let a = log.append(&msg("doomed")).unwrap();
    let err = a.durability.wait().unwrap_err();
    assert!(matches!(err, StoreError::Failed { .. }), "{err:?}");
    assert!(matches!(
        log.append(&msg("refused")),
        Err(StoreError::Failed { .. })
    ));
    assert!(log.close().is_err());
    b.fail_syncs(None);
    b.crash(CrashMode::LoseUnsynced);
    let (_log, rec) = open(&b, LogConfig::default());
    assert_eq!(rec.unsettled[0].seq, ok.first_seq);
}

#[test]
fn settled_prefix_segments_are_deleted_and_disk_stays_bounded() {
    let b = FaultyBackend::new();
    let cfg = small(FsyncPolicy::Always);
    let (log, _) = open(&b, cfg.clone());
    let payload = "p".repeat(500);
    for round in 0..20 {
        let mut seqs = Vec::new();
        for _ in 0..20 {
            seqs.push(log.append(&msg(&payload)).unwrap().first_seq);
        }
        let items: Vec<_> = seqs.iter().map(|&s| (s, Settlement::Acked)).collect();
        log.settle_batch(&items).unwrap().wait().unwrap();
        log.sync().wait().unwrap();
        let st = log.stats();
        assert!(
            st.segments <= 6,
            "round {round}: {} segments kept for 0 unsettled",
            st.segments
        );
    }
    let st = log.stats();
    assert!(st.reclaimed_segments > 50, "{st:?}");
    assert!(st.bytes_on_disk <= 6 * 4096);
    let next = st.next_seq;
    drop(log);
    let (log, rec) = open(&b, cfg);
    assert!(rec.unsettled.is_empty());
    assert_eq!(log.stats().next_seq, next);
}

#[test]
fn an_unsettled_old_message_no_longer_pins_later_segments() {
    let b = FaultyBackend::new();
    let cfg = small(FsyncPolicy::Always);
    let (log, _) = open(&b, cfg.clone());
    let pinned = log.append(&msg("old")).unwrap().first_seq;
    let payload = "p".repeat(500);
    for _ in 0..100 {
        let s = log.append(&msg(&payload)).unwrap().first_seq;
        drop(log.settle(s, Settlement::Acked).unwrap());
    }
    log.sync().wait().unwrap();
    // Compaction (format version 3) copies the pinned message forward instead of keeping every
    // segment behind it; it runs on the sync thread, behind the appends.
    for _ in 0..200 {
        if log.stats().segments <= 6 {
            break;
        }
        log.sync().wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        log.stats().segments <= 6,
        "segments stay pinned by message {pinned}: {:?}",
        log.stats()
    );
    assert_eq!(&log.read(pinned).unwrap().message.payload[..], b"old");
    log.settle(pinned, Settlement::Acked)
        .unwrap()
        .wait()
        .unwrap();
    log.sync().wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.stats().segments > 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", log.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(log);
    b.crash(CrashMode::LoseUnsynced);
    let (_log, rec) = open(&b, cfg);
    assert!(rec.unsettled.is_empty(), "{:?}", rec.unsettled);
}

#[test]
fn limits_and_bad_input_are_errors_not_panics() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, small(FsyncPolicy::Never));
    let big = NewMessage {
        payload: Bytes::from(vec![0u8; 5000]),
        ..Default::default()
    };
    assert!(matches!(
        log.append(&big),
        Err(StoreError::RecordTooLarge { .. })
    ));
    let batch = vec![msg(&"x".repeat(1000)); 5];
    assert!(matches!(
        log.append_batch(&batch),
        Err(StoreError::RecordTooLarge { .. })
    ));
    assert!(matches!(
        log.append_batch(&[]),
        Err(StoreError::InvalidInput { .. })
    ));
    let long_key = NewMessage {
        key: Some(Bytes::from(vec![1u8; 70_000])),
        ..Default::default()
    };
    assert!(matches!(
        log.append(&long_key),
        Err(StoreError::InvalidInput { .. })
    ));
    let bad_cfg = LogConfig {
        segment_bytes: 100,
        ..LogConfig::default()
    };
    assert!(matches!(
        QueueLog::open(b.shared(), "/data/other", bad_cfg),
        Err(StoreError::InvalidConfig { .. })
    ));
}

#[test]
fn close_syncs_pending_settlements() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    let a = log.append(&msg("x")).unwrap();
    let mut d = log.settle(a.first_seq, Settlement::Acked).unwrap();
    log.close().unwrap();
    // Close synced everything: the lazy settlement handle resolves, and the ack survives power loss.
    assert!(d.try_now().unwrap().is_ok());
    b.crash(CrashMode::LoseUnsynced);
    let (_log, rec) = open(&b, LogConfig::default());
    assert!(rec.unsettled.is_empty());
}

#[test]
fn newer_format_version_is_refused() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    log.close().unwrap();
    let path = Path::new("/data/queues/q/0000000000000000.open");
    let mut bytes = b.file_contents(path).unwrap();
    bytes[8] = 5; // version 5 (this build writes 4 and reads 1 to 4)
    let crc = crc32c::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    b.set_file_contents(path, bytes);
    let err = QueueLog::open(b.shared(), "/data/queues/q", LogConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FormatVersion {
                found: 5,
                supported: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

/// `recover_unsettled: false` leaves the recovered list empty; paging through the index gives
/// the same messages in the same order.
#[test]
fn unsettled_messages_can_be_paged_instead_of_listed() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    for i in 0..1000 {
        let a = log.append(&msg(&format!("m{i}"))).unwrap();
        if i % 7 == 3 {
            drop(log.settle(a.first_seq, Settlement::Acked).unwrap());
        }
    }
    log.sync().wait().unwrap();
    log.close().unwrap();
    let (_, listed) = open(&b, LogConfig::default());
    let (log, rec) = open(
        &b,
        LogConfig {
            recover_unsettled: false,
            ..LogConfig::default()
        },
    );
    assert!(rec.unsettled.is_empty());
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = log.unsettled_page(from, 100);
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        paged.extend(page.iter().map(|m| (m.seq, m.payload_len)));
    }
    let want: Vec<_> = listed
        .unsettled
        .iter()
        .map(|m| (m.seq, m.payload_len))
        .collect();
    assert_eq!(want.len(), 1000 - 143);
    assert_eq!(paged, want);
}

/// The index keeps segment indexes in 32 bits: a data directory naming a segment past that is
/// refused with a clear error, not misread.
#[test]
fn a_segment_index_past_32_bits_is_refused() {
    let b = FaultyBackend::new();
    let (log, _) = open(&b, LogConfig::default());
    log.close().unwrap();
    let from = Path::new("/data/queues/q/0000000000000000.open");
    b.shared()
        .rename(from, Path::new("/data/queues/q/0000000100000000.seg"))
        .unwrap();
    let err = QueueLog::open(b.shared(), "/data/queues/q", LogConfig::default()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corruption { reason, .. } if reason.contains("past the last")),
        "{err:?}"
    );
}

#[test]
fn meta_files_are_replaced_atomically() {
    let b = FaultyBackend::new();
    let path = Path::new("/data/catalog.meta");
    assert_eq!(read_meta(&b, path).unwrap(), None);
    write_meta_atomic(&b, path, b"v1").unwrap();
    assert_eq!(read_meta(&b, path).unwrap().as_deref(), Some(&b"v1"[..]));
    // A crash while the replacement is stalled in its fsync keeps the old contents.
    b.hold_syncs(true);
    let b2 = b.clone();
    let writer =
        std::thread::spawn(move || write_meta_atomic(&b2, Path::new("/data/catalog.meta"), b"v2"));
    std::thread::sleep(Duration::from_millis(30));
    b.crash(CrashMode::Torn { seed: 7 });
    b.hold_syncs(false);
    assert!(writer.join().unwrap().is_err());
    assert_eq!(read_meta(&b, path).unwrap().as_deref(), Some(&b"v1"[..]));
    write_meta_atomic(&b, path, b"v3").unwrap();
    b.crash(CrashMode::LoseUnsynced);
    assert_eq!(read_meta(&b, path).unwrap().as_deref(), Some(&b"v3"[..]));
    // Real disk, plus queue directory removal.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("catalog");
    write_meta_atomic(&FsBackend, &p, b"real").unwrap();
    std::fs::write(&p, b"LEVEEMET garbage").unwrap();
    assert!(matches!(
        read_meta(&FsBackend, &p),
        Err(StoreError::Corruption { .. })
    ));
    let qdir = dir.path().join("queues").join("q1");
    let (log, _) = QueueLog::open(FsBackend::shared(), &qdir, LogConfig::default()).unwrap();
    log.close().unwrap();
    remove_queue_dir(&FsBackend, &qdir).unwrap();
    assert!(!qdir.exists());
}

/// Recovery returns the newest message ids, settled messages included, at most `recover_ids`,
/// and a segment whose ids are younger than `keep_ids_ms` is kept even when fully settled.
#[test]
fn recovery_returns_the_newest_message_ids_and_keeps_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let cfg = LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 4096,
        max_record_bytes: 2048,
        keep_ids_ms: 3_600_000,
        recover_ids: 1_000,
        recover_unsettled: true,
        wal: None,
    };
    {
        let (log, _) = QueueLog::open(FsBackend::shared(), dir.path(), cfg.clone()).unwrap();
        for i in 0..200u64 {
            let m = NewMessage {
                timestamp_ms: now,
                message_id: (i % 2 == 0).then(|| Bytes::from(format!("id-{i}"))),
                payload: Bytes::from(vec![b'x'; 100]),
                ..Default::default()
            };
            let a = log.append(&m).unwrap();
            a.durability.wait().unwrap();
            log.settle(a.first_seq, Settlement::Acked)
                .unwrap()
                .wait()
                .unwrap();
        }
        assert!(log.stats().segments > 2, "several segments were written");
        log.close().unwrap();
    }
    let (log, rec) = QueueLog::open(FsBackend::shared(), dir.path(), cfg.clone()).unwrap();
    assert!(rec.unsettled.is_empty());
    assert_eq!(log.stats().reclaimed_segments, 0);
    let ids: Vec<_> = rec.message_ids.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 100, "every id, also of settled messages");
    assert_eq!(ids[0], Bytes::from("id-0"));
    assert_eq!(rec.message_ids[99].seq, 198);
    log.close().unwrap();
    let few = LogConfig {
        recover_ids: 3,
        ..cfg
    };
    let (_log, rec) = QueueLog::open(FsBackend::shared(), dir.path(), few).unwrap();
    let ids: Vec<_> = rec.message_ids.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, ["id-194", "id-196", "id-198"].map(Bytes::from));
}
