//! Publish / confirm round trips against a real broker, on memory and disk queues, and the
//! request / reply operations.

mod common;

use futures::StreamExt;
use levee_client::{
    ClientError, ConsumerOptions, Credit, ErrorCode, Message, Overflow, ProducerOptions,
    PublishOutcome, QueueConfig,
};

async fn round_trip(config: QueueConfig, n: usize) {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    assert!(client.declare("q", config).await.unwrap().created);
    let producer = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();

    let first = producer.send(Message::new("m0")).await.unwrap();
    let PublishOutcome::Stored { seq: first_seq } = first else {
        panic!("expected Stored, got {first:?}");
    };
    let mut confirms = Vec::new();
    for i in 1..n {
        confirms.push(
            producer
                .publish(Message::new(format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let mut last = first_seq;
    for c in confirms {
        match c.await.unwrap() {
            PublishOutcome::Stored { seq } => {
                assert!(seq > last, "sequence numbers grow in publish order");
                last = seq;
            }
            other => panic!("expected Stored, got {other:?}"),
        }
    }
    assert_eq!(producer.in_flight(), 0);
    let stats = client.inspect("q").await.unwrap().stats;
    assert_eq!(
        (stats.published, stats.stored, stats.ready),
        (n as u64, n as u64, n as u64)
    );

    let mut consumer = common::consumer(&client, "q", Credit::Fixed(32), false).await;
    for i in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(&d.payload()[..], format!("m{i}").as_bytes());
        assert_eq!(d.delivery_count(), 1);
        d.ack().unwrap();
    }
    consumer.flush();
    common::eventually("all acked", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == n as u64 && s.ready == 0 && s.unacked == 0
    })
    .await;
    assert!(client.inspect("q").await.unwrap().stats.is_balanced());
    consumer.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_round_trip() {
    round_trip(common::memory(Overflow::Block, 10_000), 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_queue_round_trip() {
    // Default config: disk, fsync always. A confirm means the message is durable.
    round_trip(QueueConfig::default(), 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_declare_inspect_list_purge_delete() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    let cfg = common::memory(Overflow::DropNewest, 100);
    assert!(client.declare("a", cfg.clone()).await.unwrap().created);
    assert!(!client.declare("a", cfg.clone()).await.unwrap().created);
    let mut other = cfg.clone();
    other.max_messages = 5;
    match client.declare("a", other).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::QueueConfigMismatch);
            assert!(message.contains("max_messages"), "{message}");
        }
        r => panic!("expected a config mismatch, got {r:?}"),
    }
    match client.declare("bad name!", cfg.clone()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::InvalidName),
        r => panic!("expected invalid-name, got {r:?}"),
    }
    client.declare("b", cfg.clone()).await.unwrap();
    let mut names = client.list_queues().await.unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);

    let producer = client
        .producer("a", ProducerOptions::default())
        .await
        .unwrap();
    assert!(!producer.is_block());
    for r in producer
        .send_batch((0..7).map(|i| Message::new(vec![i])).collect())
        .await
    {
        assert!(matches!(r, Ok(PublishOutcome::Stored { .. })), "{r:?}");
    }
    let info = client.inspect("a").await.unwrap();
    assert_eq!(info.config, cfg);
    assert_eq!(info.stats.ready, 7);
    assert_eq!(client.purge("a").await.unwrap(), 7);
    assert_eq!(client.inspect("a").await.unwrap().stats.ready, 0);
    client.delete("b").await.unwrap();
    match client.inspect("b").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownQueue),
        r => panic!("expected unknown-queue, got {r:?}"),
    }
    match client.producer("nope", ProducerOptions::default()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownQueue),
        r => panic!("expected unknown-queue, got {r:?}"),
    }
    match client.consumer("nope", ConsumerOptions::default()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownQueue),
        r => panic!("expected unknown-queue, got {r:?}"),
    }
    client.close().await.unwrap();
    assert_eq!(client.list_queues().await, Err(ClientError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_before_sending() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::DropNewest, 10))
        .await
        .unwrap();
    let producer = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    let huge = Message::new(vec![0u8; 17 * 1024 * 1024]);
    match producer.publish(huge).await {
        Err(ClientError::MessageTooLarge { size, max }) => assert!(size > max),
        r => panic!("expected MessageTooLarge, got {:?}", r.map(|_| ())),
    }
    assert_eq!(client.stats().publish_frames, 0);
}
