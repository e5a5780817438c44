//! Producer backpressure on a `block` queue: a full queue stops granting publish credit, so
//! `publish` waits and `try_publish` hands the message back; once a consumer acks, the producer
//! proceeds, and nothing is lost.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use levee_client::{
    ConsumerOptions, Credit, Message, Overflow, ProducerOptions, PublishOutcome, TryPublishError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_block_queue_makes_the_producer_wait_and_loses_nothing() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 10))
        .await
        .unwrap();
    let producer = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    assert!(producer.is_block());
    common::eventually("initial publish credit", || async {
        producer.publish_credit() == 10
    })
    .await;
    for i in 0..10u32 {
        let o = producer
            .send(Message::new(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    }
    assert_eq!(producer.publish_credit(), 0);

    // Full: publish waits, try_publish returns the message.
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        producer.publish(Message::new(10u32.to_be_bytes().to_vec())),
    )
    .await;
    assert!(waiting.is_err(), "publish must wait on a full block queue");
    assert_eq!(
        producer
            .publish_timeout(Message::new("y"), Duration::from_millis(50))
            .await
            .map(|_| ()),
        Err(levee_client::ClientError::Timeout(Duration::from_millis(
            50
        )))
    );
    match producer.try_publish(Message::new("x")) {
        Err(TryPublishError::Full(m)) => assert_eq!(&m.payload[..], b"x"),
        r => panic!("expected Full, got {:?}", r.map(|_| ())),
    }
    let stats = client.inspect("q").await.unwrap().stats;
    assert_eq!((stats.stored, stats.rejected, stats.ready), (10, 0, 10));

    // A second batch of 10 publishes in the background: it can only progress as room frees.
    let p = producer.clone();
    let background = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 10..20u32 {
            outcomes.push(p.send(Message::new(i.to_be_bytes().to_vec())).await);
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!background.is_finished());
    assert_eq!(client.inspect("q").await.unwrap().stats.stored, 10);

    let mut consumer = common::consumer(&client, "q", Credit::Fixed(2), false).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the producer resumes once the consumer acks")
            .unwrap()
            .unwrap();
        let v = u32::from_be_bytes(d.payload()[..].try_into().unwrap());
        assert!(seen.insert(v), "message {v} delivered twice");
        d.ack().unwrap();
    }
    for o in background.await.unwrap() {
        assert!(matches!(o, Ok(PublishOutcome::Stored { .. })), "{o:?}");
    }
    assert_eq!(seen, (0..20).collect());
    consumer.flush();
    common::eventually("all acked", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == 20 && s.ready == 0
    })
    .await;
    let s = client.inspect("q").await.unwrap().stats;
    assert_eq!(
        (s.published, s.stored, s.rejected, s.dropped_total()),
        (20, 20, 0, 0)
    );
    assert!(s.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_window_bounds_unconfirmed_messages() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::DropNewest, 1000))
        .await
        .unwrap();
    // A long linger keeps messages unconfirmed in the open batch: the window of 4 fills.
    let producer = client
        .producer(
            "q",
            ProducerOptions {
                max_in_flight_messages: 4,
                linger: Duration::from_secs(30),
                ..ProducerOptions::default()
            },
        )
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..4u8 {
        confirms.push(producer.try_publish(Message::new(vec![i])).unwrap());
    }
    assert_eq!(producer.in_flight(), 4);
    assert!(matches!(
        producer.try_publish(Message::new("5")),
        Err(TryPublishError::Full(_))
    ));
    let waiting = tokio::time::timeout(
        Duration::from_millis(100),
        producer.publish(Message::new("5")),
    )
    .await;
    assert!(waiting.is_err(), "publish waits for window room");
    producer.flush().await;
    for c in confirms {
        assert!(matches!(c.await, Ok(PublishOutcome::Stored { .. })));
    }
    assert_eq!(producer.in_flight(), 0);
    assert!(producer.try_publish(Message::new("6")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_sharing_a_connection_share_its_publish_credit() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 50))
        .await
        .unwrap();
    // Two producers (and two tasks on a clone of one) on one connection, one consumer.
    let p1 = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    let p2 = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (k, p) in [(0u32, p1.clone()), (1, p1), (2, p2)] {
        tasks.push(tokio::spawn(async move {
            let mut confirms = Vec::new();
            for i in 0..300u32 {
                let v = k * 1000 + i;
                confirms.push(
                    p.publish(Message::new(v.to_be_bytes().to_vec()))
                        .await
                        .unwrap(),
                );
            }
            let mut out = Vec::new();
            for c in confirms {
                out.push(c.await);
            }
            out
        }));
    }
    let mut consumer = client
        .consumer("q", ConsumerOptions::default())
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 900 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("producers keep going as the consumer acks")
            .unwrap()
            .unwrap();
        assert!(seen.insert(u32::from_be_bytes(d.payload()[..].try_into().unwrap())));
        d.ack().unwrap();
    }
    for t in tasks {
        for o in t.await.unwrap() {
            assert!(matches!(o, Ok(PublishOutcome::Stored { .. })), "{o:?}");
        }
    }
    let s = client.inspect("q").await.unwrap().stats;
    assert_eq!(
        (s.stored, s.rejected),
        (900, 0),
        "no publish beyond credit: {s:?}"
    );
}
