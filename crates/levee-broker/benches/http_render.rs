//! Cost of rendering the HTTP API's answers from queue snapshots: the `/metrics` text and the
//! `/api/queues` JSON, for 1 000 queues with 4 consumers each (the part of a scrape that grows
//! with the number of queues, besides one inspect round trip per queue).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use levee_broker::http::{QueueSnapshot, render_metrics, render_queues_json};
use levee_proto::{ConsumerStats, DropReason, QueueConfig, QueueInfo, QueueStats};

fn snapshots(n: u64) -> Vec<QueueSnapshot> {
    (0..n)
        .map(|i| QueueSnapshot {
            info: QueueInfo {
                queue: format!("queue-{i:05}"),
                config: QueueConfig::default(),
                stats: QueueStats {
                    published: 1_000_000 + i,
                    stored: 990_000 + i,
                    rejected: 10_000,
                    acked: 900_000,
                    dropped: vec![
                        (DropReason::EvictedOldest, 80_000),
                        (DropReason::Purged, 10),
                    ],
                    ready: 9_000 + i,
                    unacked: 990,
                    bytes: 4_000_000,
                    consumers: (0..4)
                        .map(|c| ConsumerStats {
                            subscription: i * 4 + c,
                            credit: 100,
                            unacked: 250,
                        })
                        .collect(),
                    publish_rate: 12_000,
                    deliver_rate: 11_000,
                    ack_rate: 11_000,
                    ..QueueStats::default()
                },
            },
            storage: None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let queues = snapshots(1_000);
    let mut g = c.benchmark_group("http_render_1000_queues");
    g.throughput(Throughput::Elements(queues.len() as u64));
    g.bench_function("prometheus_text", |b| {
        b.iter(|| render_metrics(black_box(&queues), &[]));
    });
    g.bench_function("queues_json", |b| {
        b.iter(|| render_queues_json(black_box(&queues), &[]));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
