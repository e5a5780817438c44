//! Cost of a routed publish through the broker (in-process, memory queues, no network): one
//! batch of 64 messages of 256 bytes published and confirmed, through the default exchange to
//! one queue, through a fanout exchange to three queues (each stores its own copy), and through
//! a topic exchange with 100 bindings of which one matches.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use levee_broker::{Broker, BrokerConfig, RoutedConfirm};
use levee_proto::{
    Binding, Durability, ExchangeConfig, ExchangeKind, Message, Overflow, QueueConfig,
};

const BATCH: usize = 64;

fn ring() -> QueueConfig {
    QueueConfig {
        max_messages: 100_000,
        overflow: Overflow::DropOldest,
        durability: Durability::Memory,
        ..QueueConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = rt.block_on(async {
        let b = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        for q in ["one", "f1", "f2", "f3"] {
            b.declare(q, ring()).await.unwrap();
        }
        b.declare_exchange("fan", ExchangeConfig::new(ExchangeKind::Fanout))
            .await
            .unwrap();
        for q in ["f1", "f2", "f3"] {
            b.add_binding(&Binding::new("fan", q, "")).await.unwrap();
        }
        b.declare_exchange("topics", ExchangeConfig::new(ExchangeKind::Topic))
            .await
            .unwrap();
        for i in 0..100 {
            b.add_binding(&Binding::new("topics", "one", format!("region{i}.*.#")))
                .await
                .unwrap();
        }
        b
    });
    let batch: Vec<Message> = (0..BATCH).map(|_| Message::new(vec![7u8; 256])).collect();
    let mut g = c.benchmark_group("routed_publish");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, exchange, key) in [
        ("default_exchange_1_queue", "", "one"),
        ("fanout_3_queues", "fan", ""),
        ("topic_100_bindings_1_match", "topics", "region42.eu.paris"),
    ] {
        let (tx, rx) = std::sync::mpsc::channel::<RoutedConfirm>();
        let tx = parking_lot::Mutex::new(tx);
        let mut p = broker.routed_publisher(move |c| {
            let _ = tx.lock().send(c);
        });
        let _guard = rt.enter();
        g.bench_function(name, |b| {
            b.iter(|| {
                p.publish(0, exchange, key, batch.clone()).unwrap();
                black_box(rx.recv().unwrap());
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
