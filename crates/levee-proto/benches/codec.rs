//! Encode / decode cost of a 100-message publish batch of 1 KiB messages (and the matching deliver
//! batch). Run: `cargo bench -p levee-proto --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use levee_proto::{ClientFrame, DEFAULT_MAX_FRAME, Delivery, Message, ServerFrame};

fn batch() -> Vec<Message> {
    (0..100u64)
        .map(|i| {
            Message::new(Bytes::from(vec![i as u8; 1024]))
                .with_key(Bytes::from(format!("key-{}", i % 10)))
                .with_header("trace-id", Bytes::from_static(b"0123456789abcdef"))
                .with_message_id(format!("p1:{i}"))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let publish = ClientFrame::Publish {
        req: 1,
        queue: "bench.queue".into(),
        messages: batch(),
    };
    let mut wire = BytesMut::new();
    publish.encode(&mut wire).unwrap();
    let wire = wire.freeze();

    let mut g = c.benchmark_group("publish_100x1KiB");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            dst.clear();
            black_box(&publish).encode(&mut dst).unwrap();
            black_box(dst.len())
        });
    });
    g.bench_function("decode", |b| {
        // The copy into a fresh buffer stands in for the socket read and is not timed.
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| black_box(ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap()),
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let deliver = ServerFrame::Deliver {
        deliveries: batch()
            .into_iter()
            .enumerate()
            .map(|(i, message)| Delivery {
                subscription: 7,
                tag: i as u64,
                seq: 1000 + i as u64,
                delivery_count: 1,
                timestamp_ms: 1_700_000_000_000,
                message,
            })
            .collect(),
    };
    let mut wire = BytesMut::new();
    deliver.encode(&mut wire).unwrap();
    let wire = wire.freeze();
    let mut g = c.benchmark_group("deliver_100x1KiB");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            dst.clear();
            black_box(&deliver).encode(&mut dst).unwrap();
            black_box(dst.len())
        });
    });
    g.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| black_box(ServerFrame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap()),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
