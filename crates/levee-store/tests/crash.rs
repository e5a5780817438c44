//! A real process crash: a child process appends under `FsyncPolicy::Always` and prints each
//! sequence number once its fsync returned; the test SIGKILLs it at a random moment, reopens the log
//! and checks that every printed message is there with its payload and every printed settlement
//! holds. A few rounds here; many in the `#[ignore]`d stress test.
//!
//! (SIGKILL keeps the page cache; power loss is covered by the fault-injecting backend in
//! `tests/recovery_props.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use levee_store::{FsBackend, FsyncPolicy, LogConfig, QueueLog};

#[derive(Default)]
struct Seen {
    /// seq -> (expected payload, whether the child settles it after printing `A`)
    appended: BTreeMap<u64, (String, bool)>,
    settled: BTreeSet<u64>,
}

fn run_once(dir: &Path, seen: &mut Seen, kill_after: Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee-store-crashtest"))
        .arg(dir)
        .arg("4")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crash test child");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') {
                lines.push(line.trim_end().to_owned());
            }
            line.clear();
        }
        lines
    });
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    for line in reader.join().unwrap() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["A", seq, who, i] => {
                let seq: u64 = seq.parse().unwrap();
                let i: usize = i.parse().unwrap();
                let payload = format!("crash-{who}-{i}-").repeat(1 + i % 20);
                let will_settle = i.is_multiple_of(3);
                assert!(
                    seen.appended.insert(seq, (payload, will_settle)).is_none(),
                    "seq {seq} assigned twice"
                );
            }
            ["S", seq] => {
                seen.settled.insert(seq.parse().unwrap());
            }
            other => panic!("unexpected line {other:?}"),
        }
    }
}

fn verify(dir: &Path, seen: &Seen) {
    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 64 << 10,
        max_record_bytes: 16 << 10,
        ..levee_store::LogConfig::default()
    };
    let (log, rec) =
        QueueLog::open(FsBackend::shared(), dir, config).expect("recovery after SIGKILL");
    let present: BTreeSet<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
    for (seq, (payload, will_settle)) in &seen.appended {
        if seen.settled.contains(seq) {
            assert!(!present.contains(seq), "acked message {seq} came back");
        } else if *will_settle && !present.contains(seq) {
            // Killed between writing its ack and printing `S`: the ack may be on disk.
        } else {
            assert!(
                present.contains(seq),
                "fsynced message {seq} lost after SIGKILL"
            );
            let m = log.read(*seq).unwrap();
            assert_eq!(
                &m.message.payload[..],
                payload.as_bytes(),
                "payload of {seq}"
            );
        }
    }
    log.close().unwrap();
}

fn rounds(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let mut seen = Seen::default();
    for _ in 0..n {
        let delay = Duration::from_millis(rand::random_range(100..400));
        run_once(&dir, &mut seen, delay);
        verify(&dir, &seen);
    }
    assert!(
        !seen.appended.is_empty(),
        "the child never confirmed anything"
    );
}

#[test]
fn sigkill_never_loses_a_printed_durable_message() {
    rounds(3);
}

#[test]
#[ignore = "stress: cargo test -p levee-store --test crash -- --ignored"]
fn sigkill_stress_many_rounds() {
    rounds(200);
}

/// Queues of the shared-WAL child (`levee-store-walcrash`).
const WAL_QUEUES: usize = 40;

/// What the shared-WAL child printed: (queue, seq) -> (payload, will settle); settled (queue, seq).
#[derive(Default)]
struct WalSeen {
    appended: BTreeMap<(usize, u64), (String, bool)>,
    settled: BTreeSet<(usize, u64)>,
}

fn wal_run_once(dir: &Path, seen: &mut WalSeen, kill_after: Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee-store-walcrash"))
        .arg(dir)
        .arg(WAL_QUEUES.to_string())
        .arg("6")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn WAL crash test child");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') {
                lines.push(line.trim_end().to_owned());
            }
            line.clear();
        }
        lines
    });
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    for line in reader.join().unwrap() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["A", q, seq, who, i] => {
                let key = (q.parse().unwrap(), seq.parse().unwrap());
                let i: usize = i.parse().unwrap();
                let payload = format!("walcrash-{who}-{i}-").repeat(1 + i % 20);
                assert!(
                    seen.appended
                        .insert(key, (payload, i.is_multiple_of(3)))
                        .is_none(),
                    "{key:?} assigned twice"
                );
            }
            ["S", q, seq] => {
                seen.settled
                    .insert((q.parse().unwrap(), seq.parse().unwrap()));
            }
            other => panic!("unexpected line {other:?}"),
        }
    }
}

fn wal_verify(dir: &Path, seen: &WalSeen) {
    let backend = FsBackend::shared();
    let (wal, _) = levee_store::Wal::open(
        backend.clone(),
        dir.join("wal"),
        levee_store::WalConfig {
            file_bytes: 256 << 10,
            ..levee_store::WalConfig::default()
        },
    )
    .expect("WAL redo after SIGKILL");
    for q in 0..WAL_QUEUES {
        let config = LogConfig {
            segment_bytes: 64 << 10,
            max_record_bytes: 16 << 10,
            wal: Some(wal.clone()),
            ..LogConfig::default()
        };
        let (log, rec) = QueueLog::open(backend.clone(), dir.join(format!("q{q}")), config)
            .expect("recovery after SIGKILL");
        let present: BTreeSet<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
        for (&(_, seq), (payload, will_settle)) in seen.appended.range((q, 0)..(q + 1, 0)) {
            if seen.settled.contains(&(q, seq)) {
                assert!(!present.contains(&seq), "acked {q}/{seq} came back");
            } else if *will_settle && !present.contains(&seq) {
                // Killed between writing its ack and printing `S`.
            } else {
                assert!(
                    present.contains(&seq),
                    "durable {q}/{seq} lost after SIGKILL"
                );
                let m = log.read(seq).unwrap();
                assert_eq!(&m.message.payload[..], payload.as_bytes(), "{q}/{seq}");
            }
        }
        log.close().unwrap();
    }
    wal.close().unwrap();
}

fn wal_rounds(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = WalSeen::default();
    for _ in 0..n {
        let delay = Duration::from_millis(rand::random_range(200..600));
        wal_run_once(tmp.path(), &mut seen, delay);
        wal_verify(tmp.path(), &seen);
    }
    assert!(
        !seen.appended.is_empty(),
        "the child never confirmed anything"
    );
}

#[test]
fn sigkill_with_a_shared_wal_never_loses_a_printed_durable_message() {
    wal_rounds(3);
}

#[test]
#[ignore = "stress: cargo test -p levee-store --test crash -- --ignored"]
fn sigkill_with_a_shared_wal_stress() {
    wal_rounds(50);
}
