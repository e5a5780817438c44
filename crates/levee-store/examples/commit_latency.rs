//! Store-level durable-append latency (issue 13's breakdown): one message of 1 KiB appended every
//! 200 µs (5,000/s) and waited for, through a log attached to a shared WAL and through a
//! standalone log (its own sync thread), side by side on the same disk; also the raw
//! `pwrite` + `fdatasync` of 4 KiB on a preallocated file. Prints p50 / p99 in µs.
//!
//! usage: cargo run --release -p levee-store --example commit_latency [DIR] [COUNT]

use std::time::{Duration, Instant};

use levee_store::{FsBackend, LogConfig, NewMessage, QueueLog, Wal, WalConfig};

fn pct(mut v: Vec<Duration>) -> (u128, u128) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize].as_micros();
    (p(0.5), p(0.99))
}

fn run(log: &QueueLog, n: usize) -> Vec<Duration> {
    let m = NewMessage {
        payload: vec![7u8; 1024].into(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(n);
    let mut next = Instant::now();
    for _ in 0..n {
        next += Duration::from_micros(200);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let t = Instant::now();
        let a = log.append(&m).expect("append");
        a.durability.wait().expect("durable");
        out.push(t.elapsed());
        drop(
            log.settle(a.first_seq, levee_store::Settlement::Acked)
                .expect("settle"),
        );
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let backend = FsBackend::shared();

    let raw = backend
        .open_file(&dir.path().join("raw"), levee_store::OpenMode::CreateNew)
        .expect("raw");
    raw.preallocate(64 << 20).expect("preallocate");
    raw.sync().expect("sync");
    let mut lat = Vec::new();
    for i in 0..n as u64 {
        let t = Instant::now();
        raw.write_at(&[1u8; 4096], (i % 10_000) * 4096)
            .expect("write");
        raw.sync().expect("sync");
        lat.push(t.elapsed());
    }
    println!("raw pwrite+fdatasync 4 KiB p50/p99 us: {:?}", pct(lat));

    let (wal, _) = Wal::open(
        backend.clone(),
        dir.path().join("wal"),
        WalConfig::default(),
    )
    .expect("wal");
    let (attached, _) = QueueLog::open(
        backend.clone(),
        dir.path().join("q1"),
        LogConfig {
            wal: Some(wal.clone()),
            ..LogConfig::default()
        },
    )
    .expect("open");
    let (solo, _) =
        QueueLog::open(backend, dir.path().join("q2"), LogConfig::default()).expect("open");
    for round in 0..2 {
        println!(
            "round {round}: WAL-attached append->durable p50/p99 us: {:?}",
            pct(run(&attached, n))
        );
        println!(
            "round {round}: standalone append->durable p50/p99 us: {:?}",
            pct(run(&solo, n))
        );
    }
}
