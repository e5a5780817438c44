//! Deduplication by message id across a broker crash: a producer that lost its confirms to a
//! `kill -9` (SIGKILL) republishes everything with the same ids; every message ends up in the
//! queue exactly once, and what was stored before the crash is confirmed `Duplicate`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Server, client, id_of, numbered};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{PublishOutcome, QueueConfig};

const N: u32 = 400;

fn message(i: u32) -> levee_proto::Message {
    numbered(i, 16).with_message_id(format!("producer-1:{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_republishing_after_kill9_stores_each_message_once() {
    let mut server = Server::start();
    {
        let c = client(&server).await;
        c.declare("orders", QueueConfig::default()).await.unwrap();
        let p = c
            .producer("orders", ProducerOptions::default())
            .await
            .unwrap();
        // Half of them confirmed before the crash...
        for i in 0..N / 2 {
            let o = p.send(message(i)).await.unwrap();
            assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
        }
        // ...and more in flight, unconfirmed, when the broker is SIGKILLed.
        let mut inflight = Vec::new();
        for i in N / 2..N * 3 / 4 {
            inflight.push(p.publish(message(i)).await.unwrap());
        }
        p.flush().await;
        server.restart_after_kill9();
        for f in inflight {
            let _ = f.await; // stored or lost: the producer cannot know
        }
    }
    let c = client(&server).await;
    let p = c
        .producer("orders", ProducerOptions::default())
        .await
        .unwrap();
    // The producer republishes everything it ever sent, and the rest.
    let mut duplicates = 0;
    for i in 0..N {
        match p.send(message(i)).await.unwrap() {
            PublishOutcome::Stored { .. } => {}
            PublishOutcome::Duplicate { .. } => duplicates += 1,
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(
        duplicates >= N / 2,
        "at least the confirmed half is a duplicate: {duplicates}"
    );
    let stats = c.inspect("orders").await.unwrap().stats;
    assert_eq!(stats.ready, u64::from(N), "{stats:?}");
    assert_eq!(stats.duplicates, u64::from(duplicates), "{stats:?}");
    let mut consumer = c
        .consumer(
            "orders",
            ConsumerOptions {
                credit: Credit::Fixed(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    while seen.len() < N as usize {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("delivery");
        assert_eq!(
            d.message().message_id.as_deref(),
            Some(format!("producer-1:{}", id_of(d.payload())).as_bytes()),
            "the id is delivered with the message"
        );
        *seen.entry(id_of(d.payload())).or_default() += 1;
        d.ack().unwrap();
    }
    assert!(seen.values().all(|n| *n == 1), "each message once");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_an_id_are_never_deduplicated() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("plain", QueueConfig::default()).await.unwrap();
    let p = c
        .producer("plain", ProducerOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        let o = p.send(numbered(1, 8)).await.unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    }
    assert_eq!(c.inspect("plain").await.unwrap().stats.ready, 3);
}
