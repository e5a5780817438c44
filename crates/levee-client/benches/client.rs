//! Client throughput against an in-process broker over loopback TCP (memory queues, 100-byte
//! payloads): publish with confirms (batched vs unbatched vs one-at-a-time), and publish +
//! consume + ack end to end (fixed vs adaptive credit).
//!
//! Run: `cargo bench -p levee-client --bench client -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use levee_broker::{Broker, BrokerConfig};
use levee_client::{
    Client, ClientOptions, ConsumerOptions, Credit, Durability, Message, Overflow, ProducerOptions,
    QueueConfig,
};

const N: usize = 2000;

fn queue(overflow: Overflow) -> QueueConfig {
    QueueConfig {
        overflow,
        max_messages: 1_000_000,
        max_bytes: 1 << 30,
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
    let client = rt.block_on(async {
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        let (addr, _task) = broker.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = Client::connect(addr, ClientOptions::default())
            .await
            .unwrap();
        client
            .declare("sink", queue(Overflow::DropOldest))
            .await
            .unwrap();
        client
            .declare("pipe", queue(Overflow::Block))
            .await
            .unwrap();
        client
    });
    let payload = bytes::Bytes::from(vec![7u8; 100]);

    let mut g = c.benchmark_group("publish_confirm");
    g.throughput(Throughput::Elements(N as u64));
    for (name, linger) in [
        ("batched_1ms", Duration::from_millis(1)),
        ("unbatched", Duration::ZERO),
    ] {
        let producer = rt
            .block_on(client.producer(
                "sink",
                ProducerOptions {
                    linger,
                    ..ProducerOptions::default()
                },
            ))
            .unwrap();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut confirms = Vec::with_capacity(N);
                for _ in 0..N {
                    confirms.push(
                        producer
                            .publish(Message::new(payload.clone()))
                            .await
                            .unwrap(),
                    );
                }
                producer.flush().await;
                for c in confirms {
                    c.await.unwrap();
                }
            });
        });
    }
    let producer = rt
        .block_on(client.producer("sink", ProducerOptions::default()))
        .unwrap();
    g.throughput(Throughput::Elements(100));
    g.bench_function("send_one_at_a_time", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..100 {
                producer.send(Message::new(payload.clone())).await.unwrap();
            }
        });
    });
    g.finish();

    let mut g = c.benchmark_group("end_to_end");
    g.throughput(Throughput::Elements(N as u64));
    let producer = rt
        .block_on(client.producer("pipe", ProducerOptions::default()))
        .unwrap();
    for (name, credit) in [
        ("fixed_64", Credit::Fixed(64)),
        ("fixed_1", Credit::Fixed(1)),
        ("adaptive_1_1024", Credit::Adaptive { min: 1, max: 1024 }),
    ] {
        let consumer = rt
            .block_on(client.consumer(
                "pipe",
                ConsumerOptions {
                    credit,
                    ..ConsumerOptions::default()
                },
            ))
            .unwrap();
        let consumer = tokio::sync::Mutex::new(consumer);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let consumer = &consumer;
                let producer = &producer;
                let payload = payload.clone();
                async move {
                    let mut consumer = consumer.lock().await;
                    let publish = async {
                        for _ in 0..N {
                            drop(
                                producer
                                    .publish(Message::new(payload.clone()))
                                    .await
                                    .unwrap(),
                            );
                        }
                        producer.flush().await;
                    };
                    let consume = async {
                        for _ in 0..N {
                            consumer.next().await.unwrap().unwrap().ack().unwrap();
                        }
                    };
                    tokio::join!(publish, consume);
                }
            });
        });
        rt.block_on(consumer.into_inner().close()).unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
