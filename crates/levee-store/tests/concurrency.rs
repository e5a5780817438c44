//! Concurrent appenders share combined writes and group commits. With a disk that fills up and frees
//! space at random moments, every append that returned `Ok` (and its fsync proof) is readable and
//! recovered after a power loss with its own payload, every append that returned `DiskFull` left no
//! trace, sequence numbers are never handed out twice, and settlements hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use levee_store::backend::fault::{CrashMode, FaultyBackend};
use levee_store::{DurabilityLevel, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement};

fn payload(t: usize, i: usize) -> Bytes {
    Bytes::from(format!("t{t}-i{i}-").repeat(1 + (i * 7 + t) % 60))
}

#[test]
fn concurrent_appends_with_a_flapping_full_disk_keep_exactly_what_was_confirmed() {
    let backend = FaultyBackend::new();
    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 64 << 10,
        max_record_bytes: 8 << 10,
        ..levee_store::LogConfig::default()
    };
    let (log, _) = QueueLog::open(backend.shared(), "/disk/q", config.clone()).unwrap();
    let log = Arc::new(log);
    let done = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (b, done) = (backend.clone(), done.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !done.load(Ordering::Relaxed) {
                k += 1;
                b.set_write_budget(Some(k * 37 % 3000));
                std::thread::sleep(Duration::from_micros(300));
                b.set_write_budget(None);
                std::thread::sleep(Duration::from_micros(700));
            }
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut ok = BTreeMap::new();
                let mut settled = BTreeSet::new();
                let mut failed = 0;
                // At least 300 attempts and 40 successes each (bounded), however long the
                // flapper's full-disk spells last on a loaded machine.
                let mut i = 0;
                while (i < 300 || ok.len() < 40) && i < 20_000 {
                    i += 1;
                    match log.append(&NewMessage {
                        payload: payload(t, i),
                        ..Default::default()
                    }) {
                        Ok(a) => {
                            let proof = a.durability.wait().unwrap();
                            assert_eq!(proof.level(), DurabilityLevel::Fsynced);
                            assert_eq!(
                                log.read(a.first_seq).unwrap().message.payload,
                                payload(t, i)
                            );
                            ok.insert(a.first_seq, payload(t, i));
                            if i % 5 == 0 {
                                match log.settle(a.first_seq, Settlement::Acked) {
                                    Ok(d) => {
                                        d.wait().unwrap();
                                        settled.insert(a.first_seq);
                                    }
                                    Err(e) => assert!(e.is_disk_full(), "{e:?}"),
                                }
                            }
                        }
                        Err(e) => {
                            assert!(e.is_disk_full(), "{e:?}");
                            failed += 1;
                        }
                    }
                }
                (ok, settled, failed)
            })
        })
        .collect();
    let mut ok = BTreeMap::new();
    let mut settled = BTreeSet::new();
    let mut failed = 0;
    for w in workers {
        let (o, s, f) = w.join().unwrap();
        for (seq, p) in o {
            assert!(ok.insert(seq, p).is_none(), "seq {seq} handed out twice");
        }
        settled.extend(s);
        failed += f;
    }
    done.store(true, Ordering::Relaxed);
    flapper.join().unwrap();
    assert!(
        failed > 0,
        "the disk never filled up; the test did not test anything"
    );
    assert!(ok.len() > 100);
    let stats = log.stats();
    drop(log);
    backend.crash(CrashMode::LoseUnsynced);
    let (log, rec) = QueueLog::open(backend.shared(), "/disk/q", config).unwrap();
    let got: Vec<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = ok
        .keys()
        .filter(|s| !settled.contains(s))
        .copied()
        .collect();
    assert_eq!(got, want, "{stats:?} {:?}", rec.report);
    for s in want {
        assert_eq!(log.read(s).unwrap().message.payload, ok[&s]);
    }
}

#[test]
fn power_loss_under_concurrent_appenders_keeps_every_confirmed_message() {
    let mut total_confirmed = 0;
    for round in 0..20u64 {
        let backend = FaultyBackend::new();
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 16 << 10,
            max_record_bytes: 4 << 10,
            ..levee_store::LogConfig::default()
        };
        let (log, _) = QueueLog::open(backend.shared(), "/disk/q", config.clone()).unwrap();
        let log = Arc::new(log);
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut confirmed = BTreeMap::new();
                    let mut attempted = BTreeMap::new();
                    for i in 0..10_000 {
                        let Ok(a) = log.append(&NewMessage {
                            payload: payload(t, i),
                            ..Default::default()
                        }) else {
                            break;
                        };
                        attempted.insert(a.first_seq, payload(t, i));
                        match a.durability.wait() {
                            Ok(_) => {
                                confirmed.insert(a.first_seq, payload(t, i));
                            }
                            Err(_) => break,
                        }
                    }
                    (confirmed, attempted)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(500 + round * 700));
        backend.crash(CrashMode::Torn { seed: round });
        let mut confirmed = BTreeMap::new();
        let mut attempted: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        for w in workers {
            let (c, a) = w.join().unwrap();
            confirmed.extend(c);
            for (s, p) in a {
                attempted.entry(s).or_default().push(p);
            }
        }
        drop(log);
        total_confirmed += confirmed.len();
        let (log, rec) = QueueLog::open(backend.shared(), "/disk/q", config).unwrap();
        let got: BTreeSet<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
        for (s, p) in &confirmed {
            assert!(got.contains(s), "round {round}: confirmed {s} lost");
            assert_eq!(&log.read(*s).unwrap().message.payload, p);
        }
        for s in &got {
            let p = log.read(*s).unwrap().message.payload;
            let candidates = attempted.get(s).expect("recovered a seq never appended");
            assert!(
                candidates.contains(&p),
                "round {round}: invented payload for {s}"
            );
        }
        // No holes: recovered seqs are consecutive from the first.
        let v: Vec<u64> = got.iter().copied().collect();
        assert!(
            v.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: hole in {v:?}"
        );
    }
    assert!(
        total_confirmed > 100,
        "crashes came too early to test anything"
    );
}
