//! levee-flow vs in-process channels: SPSC, MPSC (4->1) and MPMC (4->4) moving N small
//! messages through a bounded channel (capacity 1024) on a 2-worker tokio runtime, plus each
//! drop policy under overload (producers 4x faster than the consumer can keep up with).
//!
//! N defaults to 1,000,000 per case; set `LEVEE_BENCH_MSGS` to change it. Run:
//! `cargo bench -p levee-flow --bench channels -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use levee_flow::{Config, Overflow, channel};
use tokio::runtime::Runtime;

const CAP: usize = 1024;

fn msgs() -> u64 {
    std::env::var("LEVEE_BENCH_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Spawns `p` producers sending `n / p` messages each and `c` consumers; returns elapsed time.
macro_rules! run_case {
    ($rt:expr, $n:expr, $p:expr, $c:expr, $make:expr, |$tx:ident, $v:ident| $send:expr, |$rx:ident| $recv:expr) => {{
        let n: u64 = $n;
        let (p, c): (u64, u64) = ($p, $c);
        $rt.block_on(async {
            let (tx0, rx0) = $make;
            let start = Instant::now();
            let mut hs = Vec::new();
            for _ in 0..c {
                let $rx = rx0.clone();
                hs.push(tokio::spawn(async move {
                    let mut got = 0u64;
                    while let Some(v) = $recv {
                        black_box(v);
                        got += 1;
                    }
                    got
                }));
            }
            drop(rx0);
            let mut ps = Vec::new();
            for _ in 0..p {
                let $tx = tx0.clone();
                ps.push(tokio::spawn(async move {
                    for $v in 0..n / p {
                        $send;
                    }
                }));
            }
            drop(tx0);
            for h in ps {
                h.await.unwrap();
            }
            let mut total = 0;
            for h in hs {
                total += h.await.unwrap();
            }
            assert_eq!(total, n / p * p);
            start.elapsed()
        })
    }};
}

/// tokio's mpsc has a single receiver; it gets the consumer side unwrapped.
fn tokio_mpsc(rt: &Runtime, n: u64, p: u64) -> Duration {
    rt.block_on(async {
        let (tx0, mut rx) = tokio::sync::mpsc::channel::<u64>(CAP);
        let start = Instant::now();
        let c = tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(v) = rx.recv().await {
                black_box(v);
                got += 1;
            }
            got
        });
        let mut ps = Vec::new();
        for _ in 0..p {
            let tx = tx0.clone();
            ps.push(tokio::spawn(async move {
                for v in 0..n / p {
                    tx.send(v).await.unwrap();
                }
            }));
        }
        drop(tx0);
        for h in ps {
            h.await.unwrap();
        }
        assert_eq!(c.await.unwrap(), n / p * p);
        start.elapsed()
    })
}

fn topologies(cr: &mut Criterion) {
    let n = msgs();
    let rt = rt();
    let mut g = cr.benchmark_group("channels");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(n));
    for (name, p, c) in [
        ("spsc", 1u64, 1u64),
        ("mpsc_4to1", 4, 1),
        ("mpmc_4to4", 4, 4),
    ] {
        g.bench_function(BenchmarkId::new("levee", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        run_case!(
                            rt,
                            n,
                            p,
                            c,
                            channel(Config::<u64>::bounded(CAP)).unwrap(),
                            |tx, v| tx.send(v).await.unwrap(),
                            |rx| rx.recv().await
                        )
                    })
                    .sum()
            });
        });
        if c == 1 {
            g.bench_function(BenchmarkId::new("tokio_mpsc", name), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| tokio_mpsc(&rt, n, p)).sum());
            });
        }
        g.bench_function(BenchmarkId::new("flume", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        run_case!(
                            rt,
                            n,
                            p,
                            c,
                            flume::bounded::<u64>(CAP),
                            |tx, v| tx.send_async(v).await.unwrap(),
                            |rx| rx.recv_async().await.ok()
                        )
                    })
                    .sum()
            });
        });
        g.bench_function(BenchmarkId::new("async_channel", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        run_case!(
                            rt,
                            n,
                            p,
                            c,
                            async_channel::bounded::<u64>(CAP),
                            |tx, v| tx.send(v).await.unwrap(),
                            |rx| rx.recv().await.ok()
                        )
                    })
                    .sum()
            });
        });
        g.bench_function(BenchmarkId::new("kanal", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        run_case!(
                            rt,
                            n,
                            p,
                            c,
                            {
                                let (t, r) = kanal::bounded_async::<u64>(CAP);
                                (t, r)
                            },
                            |tx, v| tx.send(v).await.unwrap(),
                            |rx| rx.recv().await.ok()
                        )
                    })
                    .sum()
            });
        });
    }
    g.finish();
}

/// Each drop policy under overload: 4 producers, 1 consumer that does a little work per
/// message, so the channel is full most of the time and the policy decides on most sends.
fn overload(cr: &mut Criterion) {
    let n = msgs();
    let rt = rt();
    let mut g = cr.benchmark_group("overload");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(n));
    let policies: [(&str, Overflow); 6] = [
        ("block", Overflow::Block),
        ("reject", Overflow::Reject),
        ("drop_newest", Overflow::DropNewest),
        ("drop_oldest", Overflow::DropOldest),
        ("conflate_64_keys", Overflow::Conflate),
        ("shed_priority", Overflow::ShedPriority),
    ];
    for (name, policy) in policies {
        g.bench_function(BenchmarkId::new("levee", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let cfg = Config::<u64>::bounded(CAP)
                            .overflow(policy)
                            .priority_by(|v| (*v % 4) as u8);
                        let cfg = if policy == Overflow::Conflate {
                            cfg.conflate_by(|v: &u64| *v % 64)
                        } else {
                            cfg
                        };
                        rt.block_on(async {
                            let (tx0, rx) = channel(cfg).unwrap();
                            let start = Instant::now();
                            let c = tokio::spawn(async move {
                                while let Some(v) = rx.recv().await {
                                    // A slower consumer: a little work per message.
                                    black_box((0..20u64).fold(v, |a, x| a.wrapping_mul(31) ^ x));
                                }
                                rx.stats()
                            });
                            let mut ps = Vec::new();
                            for _ in 0..4 {
                                let tx = tx0.clone();
                                ps.push(tokio::spawn(async move {
                                    for v in 0..n / 4 {
                                        let _ = black_box(tx.send(v).await);
                                    }
                                }));
                            }
                            drop(tx0);
                            for h in ps {
                                h.await.unwrap();
                            }
                            let s = c.await.unwrap();
                            assert!(s.balanced());
                            start.elapsed()
                        })
                    })
                    .sum()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, topologies, overload);
criterion_main!(benches);
