//! levee-store append throughput vs the raw disk, and recovery time of a large log.
//!
//! A custom harness (not criterion) because the figure of interest is a ratio to a baseline measured
//! in the same run: first the disk's raw sequential write + fdatasync bandwidth, then appends of 1 KiB
//! and 256 B records under each fsync policy with 1, 4 and 16 writer threads. Each writer keeps up to
//! `WINDOW` appends in flight (waits for the oldest handle when the window is full), like a producer
//! with a bounded number of unconfirmed messages. Then a log of `LEVEE_BENCH_RECOVERY_MB` (default
//! 1024) MiB is written and reopened, warm (page cache) and cold (`posix_fadvise(DONTNEED)`).
//!
//! Run: `cargo bench -p levee-store --bench append` (env: `LEVEE_BENCH_SECS` per cell, default 1.5;
//! `LEVEE_BENCH_DIR` directory on the disk to measure, default the system temp dir).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use levee_store::{Durability, FsBackend, FsyncPolicy, LogConfig, NewMessage, QueueLog};

const WINDOW: usize = 256;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raw baseline: one thread writes `chunk`-byte blocks sequentially and fdatasyncs after each.
fn raw(dir: &Path, chunk: usize, secs: f64) -> (f64, f64) {
    let path = dir.join(format!("raw-{chunk}"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let buf = vec![0x5Au8; chunk];
    let start = Instant::now();
    let mut off = 0u64;
    let mut syncs = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&buf, off).unwrap();
        f.sync_data().unwrap();
        off += chunk as u64;
        syncs += 1;
        if off > 512 << 20 {
            off = 0; // stay within 512 MiB of disk
        }
    }
    let el = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    let bytes = syncs as f64 * chunk as f64;
    (bytes / el / 1e6, syncs as f64 / el)
}

struct Cell {
    mbps: f64,
    recs: f64,
    fsyncs: u64,
}

fn run_cell(
    dir: &Path,
    policy: FsyncPolicy,
    size: usize,
    writers: usize,
    batch: usize,
    secs: f64,
) -> Cell {
    let qdir = dir.join("bench-q");
    let _ = std::fs::remove_dir_all(&qdir);
    let config = LogConfig {
        fsync: policy,
        ..LogConfig::default()
    };
    let (log, _) = QueueLog::open(FsBackend::shared(), &qdir, config).unwrap();
    let log = Arc::new(log);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let msg = NewMessage {
        payload: vec![0xA5u8; size].into(),
        ..Default::default()
    };
    let msgs = vec![msg; batch];
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (log, stop, count, msgs) = (log.clone(), stop.clone(), count.clone(), msgs.clone());
            std::thread::spawn(move || {
                let mut inflight: VecDeque<Durability> = VecDeque::with_capacity(WINDOW);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let a = log.append_batch(&msgs).unwrap();
                    inflight.push_back(a.durability);
                    if inflight.len() * msgs.len() >= WINDOW {
                        inflight.pop_front().unwrap().wait().unwrap();
                    }
                    n += msgs.len() as u64;
                }
                for d in inflight {
                    d.wait().unwrap();
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed) as f64;
    let fsyncs = log.stats().fsyncs;
    drop(log);
    let _ = std::fs::remove_dir_all(&qdir);
    Cell {
        mbps: n * size as f64 / el / 1e6,
        recs: n / el,
        fsyncs,
    }
}

fn drop_cache(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let f = std::fs::File::open(&p).unwrap();
        // SAFETY: plain syscall on an open descriptor.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn recovery(dir: &Path, mib: u64) {
    let qdir = dir.join("bench-recovery");
    let _ = std::fs::remove_dir_all(&qdir);
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let (log, _) = QueueLog::open(FsBackend::shared(), &qdir, config.clone()).unwrap();
    let msg = NewMessage {
        payload: vec![0x3Cu8; 4096].into(),
        ..Default::default()
    };
    let batch = vec![msg; 16];
    let t = Instant::now();
    while log.stats().bytes_on_disk < mib << 20 {
        let _ = log.append_batch(&batch).unwrap();
    }
    let stats = log.stats();
    log.close().unwrap();
    println!(
        "recovery: wrote {} MiB ({} messages of 4 KiB, {} segments) in {:.2}s",
        stats.bytes_on_disk >> 20,
        stats.appended,
        stats.segments,
        t.elapsed().as_secs_f64()
    );
    for (label, cold) in [
        ("warm (page cache)", false),
        ("cold (fadvise DONTNEED)", true),
    ] {
        if cold {
            drop_cache(&qdir);
        }
        let t = Instant::now();
        let (log, rec) = QueueLog::open(FsBackend::shared(), &qdir, config.clone()).unwrap();
        let el = t.elapsed().as_secs_f64();
        println!(
            "recovery {label}: {} MiB, {} records, {} unsettled in {:.2}s ({:.0} MB/s)",
            rec.report.bytes_scanned >> 20,
            rec.report.records,
            rec.unsettled.len(),
            el,
            rec.report.bytes_scanned as f64 / el / 1e6
        );
        log.close().unwrap();
    }
    let _ = std::fs::remove_dir_all(&qdir);
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let secs = env_f64("LEVEE_BENCH_SECS", 1.5);
    let tmp = match std::env::var_os("LEVEE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let dir = tmp.path();
    println!(
        "levee-store append benchmark in {} ({secs}s per cell, window {WINDOW} in flight per writer)",
        dir.display()
    );
    // The raw figure is the best of three block sizes: one thread, write a block, fdatasync, repeat.
    let mut raw_mbps = 0.0f64;
    for chunk in [256usize << 10, 1 << 20, 4 << 20] {
        let (mbps, syncs) = raw(dir, chunk, secs);
        println!(
            "raw: {} KiB write + fdatasync: {mbps:.1} MB/s ({syncs:.0} fsyncs/s)",
            chunk >> 10
        );
        raw_mbps = raw_mbps.max(mbps);
    }
    println!("raw sequential write + fsync bandwidth (best of the above): {raw_mbps:.1} MB/s");
    let (raw1k_mbps, raw1k_syncs) = raw(dir, 1024, secs);
    println!(
        "raw: 1 KiB write + fdatasync (one fsync per record): {raw1k_mbps:.2} MB/s ({raw1k_syncs:.0} records/s)"
    );
    println!();
    println!("MB/s counts payload bytes; records carry 43 bytes of framing and metadata on top.");
    println!("| policy | record | writers | MB/s | records/s | % of raw MB/s | fsync cycles |");
    println!("|---|---|---|---|---|---|---|");
    let policies = [
        ("always", FsyncPolicy::Always),
        (
            "interval(10ms)",
            FsyncPolicy::Interval(Duration::from_millis(10)),
        ),
        ("never", FsyncPolicy::Never),
    ];
    for (name, policy) in policies {
        for size in [1024usize, 256] {
            for writers in [1usize, 4, 16] {
                let c = run_cell(dir, policy, size, writers, 1, secs);
                println!(
                    "| {name} | {size} B | {writers} | {:.1} | {:.0} | {:.0} % | {} |",
                    c.mbps,
                    c.recs,
                    100.0 * c.mbps / raw_mbps,
                    c.fsyncs
                );
                std::io::stdout().flush().unwrap();
            }
        }
    }
    println!();
    println!("Same with append_batch of 16 records per call (how the broker publishes):");
    println!("| policy | record | writers | MB/s | records/s | % of raw MB/s | fsync cycles |");
    println!("|---|---|---|---|---|---|---|");
    for size in [1024usize, 256] {
        for writers in [1usize, 4, 16] {
            let c = run_cell(dir, FsyncPolicy::Always, size, writers, 16, secs);
            println!(
                "| always, batch 16 | {size} B | {writers} | {:.1} | {:.0} | {:.0} % | {} |",
                c.mbps,
                c.recs,
                100.0 * c.mbps / raw_mbps,
                c.fsyncs
            );
        }
    }
    println!();
    recovery(dir, env_f64("LEVEE_BENCH_RECOVERY_MB", 1024.0) as u64);
}
