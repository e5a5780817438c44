//! A plain driver for profilers (`valgrind --tool=callgrind`, `perf`) and quick A/B checks:
//! moves N messages through one case of `benches/channels.rs` without criterion's statistics
//! (which would dominate a profile), and prints the time.
//!
//! `cargo bench -p levee-flow --bench drive --no-run`, then run the binary it names with
//! `CASE N` where CASE is `spsc`, `mpsc`, `mpmc` (Block policy) or a policy name under
//! overload: `block`, `reject`, `drop_newest`, `drop_oldest`, `conflate`, `shed_priority`.
//! `--flume` or `--kanal` runs a topology case over that channel instead.

use std::hint::black_box;
use std::time::Instant;

use levee_flow::{Config, Overflow, channel};

/// The same topology over another channel (for same-moment ratios).
macro_rules! run_other {
    ($p:expr, $c:expr, $n:expr, $tx0:expr, $rx0:expr, |$tx:ident, $v:ident| $send:expr, |$rx:ident| $recv:expr) => {{
        let (tx0, rx0) = ($tx0, $rx0);
        let cs: Vec<_> = (0..$c)
            .map(|_| {
                let $rx = rx0.clone();
                tokio::spawn(async move {
                    while let Some(v) = $recv {
                        black_box(v);
                    }
                })
            })
            .collect();
        drop(rx0);
        let ps: Vec<_> = (0..$p)
            .map(|_| {
                let $tx = tx0.clone();
                tokio::spawn(async move {
                    for $v in 0..$n / $p {
                        black_box($send);
                    }
                })
            })
            .collect();
        drop(tx0);
        for h in ps {
            h.await.unwrap();
        }
        for h in cs {
            h.await.unwrap();
        }
    }};
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let case = args.next().unwrap_or_else(|| "mpsc".into());
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (p, c, policy, slow) = match case.as_str() {
        "spsc" => (1, 1, Overflow::Block, false),
        "mpsc" => (4, 1, Overflow::Block, false),
        "mpmc" => (4, 4, Overflow::Block, false),
        "block" => (4, 1, Overflow::Block, true),
        "reject" => (4, 1, Overflow::Reject, true),
        "drop_newest" => (4, 1, Overflow::DropNewest, true),
        "drop_oldest" => (4, 1, Overflow::DropOldest, true),
        "conflate" => (4, 1, Overflow::Conflate, true),
        "shed_priority" => (4, 1, Overflow::ShedPriority, true),
        other => panic!("unknown case {other}"),
    };
    let cfg = Config::<u64>::bounded(1024)
        .overflow(policy)
        .priority_by(|v| (*v % 4) as u8);
    let cfg = if policy == Overflow::Conflate {
        cfg.conflate_by(|v: &u64| *v % 64)
    } else {
        cfg
    };
    let other = std::env::args().any(|a| a == "--flume" || a == "--kanal");
    if other {
        let kanal = std::env::args().any(|a| a == "--kanal");
        let elapsed = rt.block_on(async move {
            let start = Instant::now();
            if kanal {
                let (tx0, rx0) = kanal::bounded_async::<u64>(1024);
                run_other!(p, c, n, tx0, rx0, |tx, v| tx.send(v).await.is_ok(), |rx| rx
                    .recv()
                    .await
                    .ok());
            } else {
                let (tx0, rx0) = flume::bounded::<u64>(1024);
                run_other!(
                    p,
                    c,
                    n,
                    tx0,
                    rx0,
                    |tx, v| tx.send_async(v).await.is_ok(),
                    |rx| rx.recv_async().await.ok()
                );
            }
            start.elapsed()
        });
        println!(
            "{case}: {n} messages in {elapsed:?} ({:.2} M/s)",
            n as f64 / elapsed.as_secs_f64() / 1e6
        );
        return;
    }
    let elapsed = rt.block_on(async move {
        let (tx0, rx0) = channel(cfg).unwrap();
        let start = Instant::now();
        let consumers: Vec<_> = (0..c)
            .map(|_| {
                let rx = rx0.clone();
                tokio::spawn(async move {
                    while let Some(v) = rx.recv().await {
                        if slow {
                            black_box((0..20u64).fold(v, |a, x| a.wrapping_mul(31) ^ x));
                        } else {
                            black_box(v);
                        }
                    }
                })
            })
            .collect();
        drop(rx0);
        let producers: Vec<_> = (0..p)
            .map(|_| {
                let tx = tx0.clone();
                tokio::spawn(async move {
                    for v in 0..n / p {
                        let _ = black_box(tx.send(v).await);
                    }
                })
            })
            .collect();
        drop(tx0);
        for h in producers {
            h.await.unwrap();
        }
        for h in consumers {
            h.await.unwrap();
        }
        start.elapsed()
    });
    println!(
        "{case}: {n} messages in {elapsed:?} ({:.2} M/s)",
        n as f64 / elapsed.as_secs_f64() / 1e6
    );
}
