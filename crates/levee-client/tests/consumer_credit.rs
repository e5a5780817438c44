//! Consumer streams against a real broker: fixed credit is never exceeded, and ack / nack /
//! reject / drop / close / auto-ack have the effects the broker's counters show.

mod common;

use std::time::Duration;

use futures::StreamExt;
use levee_client::{Client, ClientError, Credit, Message, Overflow, ProducerOptions, QueueConfig};

async fn fill(client: &Client, queue: &str, n: u32) {
    let producer = client
        .producer(queue, ProducerOptions::default())
        .await
        .unwrap();
    for r in producer
        .send_batch(
            (0..n)
                .map(|i| Message::new(i.to_be_bytes().to_vec()))
                .collect(),
        )
        .await
    {
        r.unwrap();
    }
}

fn value(d: &levee_client::Delivery) -> u32 {
    u32::from_be_bytes(d.payload()[..].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_credit_is_never_exceeded() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 1000))
        .await
        .unwrap();
    fill(&client, "q", 100).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(8), false).await;

    // Take 8 and hold them: nothing more may arrive.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(c.next().await.unwrap().unwrap());
        assert!(c.credit().held() <= 8, "{:?}", c.credit());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.next())
            .await
            .is_err(),
        "a 9th delivery arrived with credit 8"
    );
    let cs = c.credit();
    assert_eq!((cs.in_flight, cs.outstanding, cs.buffered), (8, 0, 0));
    let s = client.inspect("q").await.unwrap().stats;
    assert_eq!((s.unacked, s.ready), (8, 92));
    assert_eq!(s.consumers.len(), 1);
    assert_eq!((s.consumers[0].unacked, s.consumers[0].credit), (8, 0));

    // Settle and go on; at every step, neither side holds more than 8.
    let mut seen: Vec<u32> = held.iter().map(value).collect();
    for d in held {
        d.ack().unwrap();
    }
    while seen.len() < 100 {
        let d = c.next().await.unwrap().unwrap();
        assert!(c.credit().held() <= 8, "{:?}", c.credit());
        if seen.len().is_multiple_of(10) {
            let s = client.inspect("q").await.unwrap().stats;
            let server_held = s.consumers[0].unacked + s.consumers[0].credit;
            assert!(
                server_held <= 8,
                "broker holds {server_held} for a credit of 8"
            );
        }
        seen.push(value(&d));
        d.ack().unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    // About two credit frames per 8 messages, not one per message.
    assert!(
        client.stats().credit_frames <= 100 / 4 + 2,
        "{:?}",
        client.stats()
    );
    c.flush();
    common::eventually("all acked", || async {
        client.inspect("q").await.unwrap().stats.acked == 100
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_reject_show_in_the_counters() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("dlq", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    client
        .declare(
            "q",
            QueueConfig {
                dead_letter: Some("dlq".into()),
                ..common::memory(Overflow::Block, 100)
            },
        )
        .await
        .unwrap();
    fill(&client, "q", 3).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(10), false).await;
    let d0 = c.next().await.unwrap().unwrap();
    let d1 = c.next().await.unwrap().unwrap();
    let d2 = c.next().await.unwrap().unwrap();
    assert_eq!((value(&d0), value(&d1), value(&d2)), (0, 1, 2));
    d0.ack().unwrap();
    d1.nack(Duration::ZERO).unwrap();
    d2.reject().unwrap();

    let again = c.next().await.unwrap().unwrap();
    assert_eq!(value(&again), 1);
    assert_eq!(again.delivery_count(), 2);
    again.ack().unwrap();
    c.flush();
    common::eventually("settlements applied", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == 2 && s.dead_lettered == 1 && s.ready == 0 && s.unacked == 0
    })
    .await;
    assert!(client.inspect("q").await.unwrap().stats.is_balanced());

    let mut dl = common::consumer(&client, "dlq", Credit::Fixed(1), false).await;
    let d = dl.next().await.unwrap().unwrap();
    assert_eq!(value(&d), 2);
    assert!(
        d.message()
            .headers
            .iter()
            .any(|(k, _)| k == "x-death-reason"),
        "{:?}",
        d.message().headers
    );
    d.ack().unwrap();
    // Settlements are batched: far fewer frames than settlements.
    assert!(client.stats().settle_frames <= 4, "{:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_delay_redelivers_later() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    fill(&client, "q", 1).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(4), false).await;
    let d = c.next().await.unwrap().unwrap();
    let t0 = std::time::Instant::now();
    d.nack(Duration::from_millis(300)).unwrap();
    let again = c.next().await.unwrap().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(again.delivery_count(), 2);
    again.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_delivery_is_requeued_and_credit_not_leaked() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    fill(&client, "q", 1).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(1), false).await;
    for expected_count in 1..=3 {
        let d = c.next().await.unwrap().unwrap();
        assert_eq!(d.delivery_count(), expected_count);
        drop(d);
    }
    let d = c.next().await.unwrap().unwrap();
    d.ack().unwrap();
    c.flush();
    common::eventually("acked", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == 1 && s.ready == 0 && s.unacked == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_ack_needs_no_settlement() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    fill(&client, "q", 20).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(4), true).await;
    let mut values = Vec::new();
    for i in 0..20 {
        let d = c.next().await.unwrap().unwrap();
        values.push(value(&d));
        if i == 0 {
            assert_eq!(d.nack(Duration::ZERO), Err(ClientError::AutoAcked));
        } else if i == 1 {
            d.ack().unwrap();
        } // others: dropped, which is fine with auto-ack
        assert!(c.credit().held() <= 4);
        assert_eq!(c.credit().in_flight, 0);
    }
    assert_eq!(values, (0..20).collect::<Vec<_>>());
    common::eventually("all acked by the broker", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.acked == 20 && s.unacked == 0 && s.ready == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_unsubscribes_and_requeues_unsettled() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    fill(&client, "q", 5).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(3), false).await;
    let d0 = c.next().await.unwrap().unwrap();
    let d1 = c.next().await.unwrap().unwrap();
    d0.ack().unwrap();
    c.close().await.unwrap();
    assert_eq!(d1.ack(), Err(ClientError::Closed));
    common::eventually("unsubscribed, unsettled requeued", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.consumers.is_empty() && s.acked == 1 && s.ready == 4 && s.unacked == 0
    })
    .await;
    // Dropping a consumer unsubscribes too.
    let c2 = common::consumer(&client, "q", Credit::Fixed(3), false).await;
    common::eventually("subscribed", || async {
        client.inspect("q").await.unwrap().stats.consumers.len() == 1
    })
    .await;
    drop(c2);
    common::eventually("unsubscribed on drop", || async {
        let s = client.inspect("q").await.unwrap().stats;
        s.consumers.is_empty() && s.ready == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_ends_consumer_streams() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 100))
        .await
        .unwrap();
    fill(&client, "q", 1).await;
    let mut c = common::consumer(&client, "q", Credit::Fixed(4), false).await;
    let d = c.next().await.unwrap().unwrap();
    client.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .unwrap();
    assert!(end.is_none(), "{end:?}");
    assert!(d.ack().is_err());
    // The broker requeued the unsettled delivery when the connection closed.
    let other = common::client(b.addr).await;
    common::eventually("requeued", || async {
        let s = other.inspect("q").await.unwrap().stats;
        s.ready == 1 && s.unacked == 0 && s.consumers.is_empty()
    })
    .await;
}
