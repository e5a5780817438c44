//! Producer batching: messages are coalesced into few `Publish` frames by size, bytes and linger;
//! linger zero sends each at once. Counted with the client's frame counters.

mod common;

use std::time::Duration;

use levee_client::{Client, Message, Overflow, ProducerOptions, PublishOutcome};

async fn setup() -> (common::TestBroker, Client) {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::DropNewest, 100_000))
        .await
        .unwrap();
    (b, client)
}

async fn publish_all(client: &Client, opts: ProducerOptions, msgs: Vec<Message>) -> u64 {
    let producer = client.producer("q", opts).await.unwrap();
    let before = client.stats().publish_frames;
    let mut confirms = Vec::new();
    for m in msgs {
        confirms.push(producer.publish(m).await.unwrap());
    }
    producer.flush().await;
    for c in confirms {
        assert!(matches!(c.await, Ok(PublishOutcome::Stored { .. })));
    }
    client.stats().publish_frames - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_splits_frames() {
    let (_b, client) = setup().await;
    let opts = ProducerOptions {
        batch_size: 100,
        linger: Duration::from_secs(60),
        ..ProducerOptions::default()
    };
    let msgs = (0..1000u32)
        .map(|i| Message::new(i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(publish_all(&client, opts, msgs).await, 10);
    assert_eq!(client.inspect("q").await.unwrap().stats.stored, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_bytes_splits_frames() {
    let (_b, client) = setup().await;
    let opts = ProducerOptions {
        batch_bytes: 10_000,
        linger: Duration::from_secs(60),
        ..ProducerOptions::default()
    };
    // 1000-byte payloads: 1007 bytes each on the wire, so 9 fit in 10 000 bytes.
    let msgs = (0..90).map(|_| Message::new(vec![7u8; 1000])).collect();
    assert_eq!(publish_all(&client, opts, msgs).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_coalesces_many_messages_into_few_frames() {
    let (_b, client) = setup().await;
    let opts = ProducerOptions {
        batch_size: 4096,
        linger: Duration::from_millis(200),
        ..ProducerOptions::default()
    };
    let producer = client.producer("q", opts).await.unwrap();
    let before = client.stats();
    let mut confirms = Vec::new();
    for i in 0..1000u32 {
        confirms.push(
            producer
                .publish(Message::new(i.to_be_bytes().to_vec()))
                .await
                .unwrap(),
        );
    }
    // No flush: the linger timer sends the batch.
    for c in confirms {
        assert!(matches!(c.await, Ok(PublishOutcome::Stored { .. })));
    }
    let after = client.stats();
    assert_eq!(after.messages_published - before.messages_published, 1000);
    let frames = after.publish_frames - before.publish_frames;
    assert!(
        (1..=5).contains(&frames),
        "1000 messages took {frames} frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_linger_sends_each_message_at_once() {
    let (_b, client) = setup().await;
    let opts = ProducerOptions {
        linger: Duration::ZERO,
        ..ProducerOptions::default()
    };
    let msgs = (0..200u32)
        .map(|i| Message::new(i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(publish_all(&client, opts, msgs).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_uses_few_frames() {
    let (_b, client) = setup().await;
    let producer = client
        .producer(
            "q",
            ProducerOptions {
                batch_size: 256,
                linger: Duration::from_secs(60),
                ..ProducerOptions::default()
            },
        )
        .await
        .unwrap();
    let before = client.stats().publish_frames;
    let out = producer
        .send_batch(
            (0..500u32)
                .map(|i| Message::new(i.to_be_bytes().to_vec()))
                .collect(),
        )
        .await;
    assert_eq!(out.len(), 500);
    assert!(
        out.iter()
            .all(|r| matches!(r, Ok(PublishOutcome::Stored { .. })))
    );
    assert_eq!(client.stats().publish_frames - before, 2);
}
