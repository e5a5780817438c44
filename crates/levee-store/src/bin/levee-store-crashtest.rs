//! Helper for `tests/crash.rs`: appends to a log under `FsyncPolicy::Always` from several threads
//! until it is killed, printing one line per durable fact, flushed before the next operation:
//!
//! - `A <seq> <thread> <i>`: message `<seq>` with payload `crash-<thread>-<i>` is fsynced;
//! - `S <seq>`: the settlement (ack) of `<seq>` is fsynced.
//!
//! Usage: `levee-store-crashtest <dir> [threads]`. Segments are small (64 KiB) so rolling, sealing and
//! reclamation happen while it runs.

use std::io::Write;
use std::sync::Arc;

use levee_store::{
    DurabilityLevel, FsBackend, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: levee-store-crashtest <dir> [threads]");
        std::process::exit(2);
    };
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(4);
    let config = LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 64 << 10,
        max_record_bytes: 16 << 10,
        ..levee_store::LogConfig::default()
    };
    let (log, recovered) = match QueueLog::open(FsBackend::shared(), &dir, config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("recovered {} unsettled messages", recovered.unsettled.len());
    let log = Arc::new(log);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let pid = std::process::id();
                for i in 0u64.. {
                    let payload = format!("crash-{pid}-{t}-{i}-").repeat(1 + (i % 20) as usize);
                    let a = log
                        .append(&NewMessage {
                            payload: payload.into(),
                            ..Default::default()
                        })
                        .expect("append");
                    let proof = a.durability.wait().expect("fsync");
                    assert_eq!(proof.level(), DurabilityLevel::Fsynced);
                    {
                        let mut o = out.lock().unwrap();
                        writeln!(o, "A {} {pid}-{t} {i}", a.first_seq).unwrap();
                        o.flush().unwrap();
                    }
                    if i.is_multiple_of(3) {
                        let d = log.settle(a.first_seq, Settlement::Acked).expect("settle");
                        d.wait().expect("fsync settlement");
                        let mut o = out.lock().unwrap();
                        writeln!(o, "S {}", a.first_seq).unwrap();
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
