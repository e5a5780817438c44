//! Reconnection: the connection is cut by a TCP proxy between client and a real broker; the
//! client reconnects with backoff, re-registers producers and consumers, fails what was in flight
//! with `ConnectionLost`, and goes on.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use levee_client::{
    Backoff, Client, ClientError, ClientOptions, ConsumerOptions, Credit, Message, Overflow,
    ProducerOptions, PublishOutcome,
};

fn options(reconnect: bool) -> ClientOptions {
    ClientOptions {
        reconnect: reconnect.then_some(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
        }),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

async fn wait_reconnects(client: &Client, n: u64) {
    common::eventually("reconnection", || async {
        client.stats().reconnects >= n && client.is_connected()
    })
    .await;
}

fn value(d: &levee_client::Delivery) -> u32 {
    u32::from_be_bytes(d.payload()[..].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_continues_producing_and_consuming() {
    let b = common::broker().await;
    let proxy = common::Proxy::start(b.addr).await;
    let client = Client::connect(proxy.addr, options(true)).await.unwrap();
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    let producer = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..5u32 {
        producer
            .send(Message::new(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    let mut consumer = common::consumer(&client, "q", Credit::Fixed(4), false).await;
    let first = consumer.next().await.unwrap().unwrap();
    assert_eq!((value(&first), first.delivery_count()), (0, 1));

    proxy.cut();
    wait_reconnects(&client, 1).await;
    // The broker requeued it when the old connection ended; it can no longer be settled.
    assert_eq!(first.ack(), Err(ClientError::ConnectionLost));

    // The producer was re-registered (a block queue needs its publish credit again).
    for i in 5..10u32 {
        let o = producer
            .send(Message::new(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    }
    // The consumer was resubscribed and gets everything, message 0 again with its count kept.
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("deliveries resume after reconnection")
            .unwrap()
            .unwrap();
        if value(&d) == 0 {
            assert!(d.delivery_count() >= 2, "{d:?}");
        }
        seen.insert(value(&d));
        d.ack().unwrap();
    }
    assert_eq!(seen, (0..10).collect());
    consumer.flush();
    common::eventually("all acked", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == 10 && s.ready == 0 && s.unacked == 0
    })
    .await;
    // One subscription on the broker, not a stale one left behind.
    assert_eq!(client.inspect("q").await.unwrap().stats.consumers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_publishes_fail_with_connection_lost() {
    let b = common::broker().await;
    let proxy = common::Proxy::start(b.addr).await;
    let client = Client::connect(proxy.addr, options(true)).await.unwrap();
    client
        .declare("q", common::memory(Overflow::DropNewest, 100))
        .await
        .unwrap();
    // A long linger keeps the message in the open batch, unsent, when the connection drops.
    let producer = client
        .producer(
            "q",
            ProducerOptions {
                linger: Duration::from_secs(60),
                ..ProducerOptions::default()
            },
        )
        .await
        .unwrap();
    let confirm = producer.publish(Message::new("lost")).await.unwrap();
    proxy.cut();
    assert_eq!(confirm.await, Err(ClientError::ConnectionLost));
    assert_eq!(producer.in_flight(), 0, "window room released");
    wait_reconnects(&client, 1).await;
    assert!(matches!(
        producer.send(Message::new("retried")).await,
        Ok(PublishOutcome::Stored { .. })
    ));
    assert_eq!(client.inspect("q").await.unwrap().stats.stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_while_the_broker_is_unreachable() {
    let b = common::broker().await;
    let proxy = common::Proxy::start(b.addr).await;
    let client = Client::connect(proxy.addr, options(true)).await.unwrap();
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    proxy.refuse(true);
    proxy.cut();
    common::eventually("disconnected", || async { !client.is_connected() }).await;
    let c = client.clone();
    let pending = tokio::spawn(async move { c.inspect("q").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "waits for the connection");
    assert_eq!(client.stats().reconnects, 0, "attempts fail while refused");
    proxy.refuse(false);
    let info = pending.await.unwrap().unwrap();
    assert_eq!(info.queue, "q");
    assert_eq!(client.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_lost_connection_ends_the_client() {
    let b = common::broker().await;
    let proxy = common::Proxy::start(b.addr).await;
    let client = Client::connect(proxy.addr, options(false)).await.unwrap();
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("q", ConsumerOptions::default())
        .await
        .unwrap();
    proxy.cut();
    let item = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    assert!(
        matches!(item, Some(Err(ClientError::ConnectionLost))),
        "{item:?}"
    );
    assert!(consumer.next().await.is_none());
    assert_eq!(
        client.inspect("q").await.map(|_| ()),
        Err(ClientError::ConnectionLost)
    );
    // The broker saw the connection end and dropped the subscription.
    let b2 = common::client(b.addr).await;
    common::eventually("subscription gone", || async {
        b2.inspect("q").await.unwrap().stats.consumers.is_empty()
    })
    .await;
}

/// A producer whose queue is gone when the client reconnects (deleted meanwhile) cannot be
/// registered again, so no publish credit will ever come on the new connection: its publishes
/// fail with the broker's reason instead of waiting for credit forever (what the cluster checker
/// once hit: a producer reconnected to a node that no longer served its queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_not_registered_again_fails_instead_of_waiting_for_credit() {
    let b = common::broker().await;
    let proxy = common::Proxy::start(b.addr).await;
    let client = Client::connect(proxy.addr, options(true)).await.unwrap();
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    let producer = client
        .producer("q", ProducerOptions::default())
        .await
        .unwrap();
    producer.send(Message::new("before")).await.unwrap();
    // While the client is cut off, the queue is deleted.
    proxy.refuse(true);
    proxy.cut();
    let admin = Client::connect(b.addr, options(false)).await.unwrap();
    admin.delete("q").await.unwrap();
    proxy.refuse(false);
    wait_reconnects(&client, 1).await;
    let r = tokio::time::timeout(Duration::from_secs(5), producer.send(Message::new("after")))
        .await
        .expect("the publish fails at once, it does not wait for credit");
    match r {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, levee_client::ErrorCode::UnknownQueue);
        }
        other => panic!("expected unknown-queue, got {other:?}"),
    }
}
