//! Helper for `tests/crash.rs`: many queue logs attached to one shared WAL, appended to from
//! several threads until the process is killed, printing one line per durable fact, flushed
//! before the next operation:
//!
//! - `A <queue> <seq> <thread> <i>`: message `<seq>` of queue `<queue>` (payload
//!   `walcrash-<thread>-<i>-` repeated) is durable;
//! - `S <queue> <seq>`: its settlement (ack) is durable.
//!
//! Usage: `levee-store-walcrash <dir> <queues> [threads]`. WAL files (256 KiB) and segments
//! (64 KiB) are small so rotation, checkpoints, rolling, sealing and reclamation happen while it
//! runs.

use std::io::Write;
use std::sync::Arc;

use levee_store::{FsBackend, LogConfig, NewMessage, QueueLog, Settlement, Wal, WalConfig};

/// The WAL configuration the helper and its test share.
fn wal_config() -> WalConfig {
    WalConfig {
        file_bytes: 256 << 10,
        ..WalConfig::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(queues)) = (args.next(), args.next()) else {
        eprintln!("usage: levee-store-walcrash <dir> <queues> [threads]");
        std::process::exit(2);
    };
    let queues: usize = queues.parse().expect("queues is a number");
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(4);
    let dir = std::path::PathBuf::from(dir);
    let backend = FsBackend::shared();
    let (wal, _) = Wal::open(backend.clone(), dir.join("wal"), wal_config()).expect("WAL");
    let logs: Vec<Arc<QueueLog>> = (0..queues)
        .map(|q| {
            let config = LogConfig {
                segment_bytes: 64 << 10,
                max_record_bytes: 16 << 10,
                wal: Some(wal.clone()),
                ..LogConfig::default()
            };
            Arc::new(
                QueueLog::open(backend.clone(), dir.join(format!("q{q}")), config)
                    .expect("open")
                    .0,
            )
        })
        .collect();
    let logs = Arc::new(logs);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let logs = logs.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let pid = std::process::id();
                for i in 0u64.. {
                    let q = (t + i as usize * threads) % logs.len();
                    let log = &logs[q];
                    let payload = format!("walcrash-{pid}-{t}-{i}-").repeat(1 + (i % 20) as usize);
                    let a = log
                        .append(&NewMessage {
                            payload: payload.into(),
                            ..Default::default()
                        })
                        .expect("append");
                    a.durability.wait().expect("commit");
                    {
                        let mut o = out.lock().unwrap();
                        writeln!(o, "A {q} {} {pid}-{t} {i}", a.first_seq).unwrap();
                        o.flush().unwrap();
                    }
                    if i.is_multiple_of(3) {
                        let d = log.settle(a.first_seq, Settlement::Acked).expect("settle");
                        d.wait().expect("commit settlement");
                        let mut o = out.lock().unwrap();
                        writeln!(o, "S {q} {}", a.first_seq).unwrap();
                        o.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
