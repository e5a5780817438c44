//! Scenario 14: unacked messages are redelivered after a consumer dies or its ack deadline
//! passes; past `max_deliveries` they are dead-lettered with the reason in headers.

mod common;

use std::time::Duration;

use common::{Server, client, id_of, memory_queue, numbered};
use futures::StreamExt;
use levee_client::{Client, ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{Overflow, QueueConfig};

fn one() -> ConsumerOptions {
    ConsumerOptions {
        credit: Credit::Fixed(1),
        ..Default::default()
    }
}

async fn next(c: &mut levee_client::Consumer) -> levee_client::Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_message_has_its_message_redelivered_to_another() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("jobs", QueueConfig::default()).await.unwrap();
    c.producer("jobs", ProducerOptions::default())
        .await
        .unwrap()
        .send(numbered(7, 8))
        .await
        .unwrap();
    // A separate `levee consume` process takes the job and "works" on it for a minute...
    let mut worker = common::stuck_worker(&server, "jobs");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.inspect("jobs").await.unwrap().stats.unacked == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never took the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and dies with SIGKILL.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut other = c.consumer("jobs", one()).await.unwrap();
    let d = next(&mut other).await;
    assert_eq!(id_of(d.payload()), 7);
    assert_eq!(d.delivery_count(), 2, "its second delivery");
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_returns_after_its_ack_timeout() {
    let server = Server::start();
    let c = client(&server).await;
    let mut cfg = memory_queue(Overflow::Block, 100, 1 << 20);
    cfg.ack_timeout_ms = 300;
    c.declare("slow", cfg).await.unwrap();
    c.producer("slow", ProducerOptions::default())
        .await
        .unwrap()
        .send(numbered(1, 8))
        .await
        .unwrap();
    let mut first = c.consumer("slow", one()).await.unwrap();
    let held = next(&mut first).await;
    let started = std::time::Instant::now();
    let other_client = client(&server).await;
    let mut second = other_client.consumer("slow", one()).await.unwrap();
    let d = next(&mut second).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the deadline"
    );
    assert_eq!((id_of(d.payload()), d.delivery_count()), (1, 2));
    d.ack().unwrap();
    // The first consumer's late ack is refused (the message was someone else's): not double-counted.
    let _ = held.ack();
    second.flush();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = c.inspect("slow").await.unwrap().stats;
    assert_eq!((s.acked, s.ready, s.unacked), (1, 0, 0));
    assert!(s.is_balanced());
}

async fn dead_letters(c: &Client) -> Vec<levee_client::Delivery> {
    let mut dlq = c
        .consumer(
            "dlq",
            ConsumerOptions {
                credit: Credit::Fixed(10),
                auto_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), dlq.next()).await {
        out.push(d);
    }
    out
}

fn header<'a>(d: &'a levee_client::Delivery, name: &str) -> Option<&'a [u8]> {
    d.message()
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| &v[..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_and_reject_dead_letter_with_the_reason() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("dlq", memory_queue(Overflow::Block, 100, 1 << 20))
        .await
        .unwrap();
    let mut cfg = memory_queue(Overflow::Block, 100, 1 << 20);
    cfg.max_deliveries = Some(3);
    cfg.dead_letter = Some("dlq".into());
    c.declare("work", cfg).await.unwrap();
    let p = c
        .producer("work", ProducerOptions::default())
        .await
        .unwrap();
    p.send(numbered(1, 8)).await.unwrap();
    p.send(numbered(2, 8)).await.unwrap();
    let mut consumer = c.consumer("work", one()).await.unwrap();
    // Message 1 fails three times; message 2 is rejected outright.
    let mut nacks = 0;
    let mut rejected = false;
    while nacks < 3 || !rejected {
        let d = next(&mut consumer).await;
        if id_of(d.payload()) == 1 {
            d.nack(Duration::ZERO).unwrap();
            nacks += 1;
        } else {
            d.reject().unwrap();
            rejected = true;
        }
    }
    consumer.flush();
    let dead = dead_letters(&c).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let want: &[u8] = if id_of(d.payload()) == 1 {
            b"max-deliveries"
        } else {
            b"rejected"
        };
        assert_eq!(header(d, "x-death-reason"), Some(want));
        assert_eq!(header(d, "x-death-queue"), Some(&b"work"[..]));
    }
    let s = c.inspect("work").await.unwrap().stats;
    assert_eq!((s.dead_lettered, s.ready, s.unacked), (2, 0, 0));
    assert!(s.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_delay_redelivers_later_and_ttl_expires_waiting_messages() {
    let server = Server::start();
    let c = client(&server).await;
    let mut cfg = memory_queue(Overflow::Block, 100, 1 << 20);
    cfg.message_ttl_ms = Some(400);
    c.declare("t", cfg).await.unwrap();
    let p = c.producer("t", ProducerOptions::default()).await.unwrap();
    p.send(numbered(1, 8)).await.unwrap();
    let mut consumer = c.consumer("t", one()).await.unwrap();
    let d = next(&mut consumer).await;
    let nacked_at = std::time::Instant::now();
    d.nack(Duration::from_millis(200)).unwrap();
    let again = next(&mut consumer).await;
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(150),
        "held for its delay"
    );
    assert_eq!(again.delivery_count(), 2);
    again.ack().unwrap();
    // A message nobody takes expires after its TTL and is counted.
    consumer.close().await.unwrap();
    p.send(numbered(2, 8)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = c.inspect("t").await.unwrap().stats;
    assert_eq!((s.expired, s.ready), (1, 0));
    assert!(s.is_balanced());
}

/// Dead-lettering adds three `x-death-*` headers and routing two `x-levee-*` ones: a published
/// message may carry at most 59 others, a message with more is refused at publish with a clear
/// reason, and a message dead-lettered twice has its `x-death-*` headers replaced, not repeated,
/// so its delivery always encodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_always_has_room_for_its_headers() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("last", memory_queue(Overflow::Block, 100, 1 << 20))
        .await
        .unwrap();
    let mut dlq = memory_queue(Overflow::Block, 100, 1 << 20);
    dlq.dead_letter = Some("last".into());
    c.declare("dlq", dlq).await.unwrap();
    let mut cfg = memory_queue(Overflow::Block, 100, 1 << 20);
    cfg.dead_letter = Some("dlq".into());
    c.declare("work", cfg).await.unwrap();
    let p = c
        .producer("work", ProducerOptions::default())
        .await
        .unwrap();
    let with_headers = |id: u32, n: usize| {
        (0..n).fold(numbered(id, 8), |m, i| {
            m.with_header(format!("h{i}"), b"v".to_vec())
        })
    };
    match p.send(with_headers(1, 60)).await {
        Err(levee_client::ClientError::Rejected { code, reason }) => {
            assert_eq!(code, levee_proto::ErrorCode::MessageTooLarge);
            assert!(reason.contains("60 headers"), "{reason}");
        }
        other => panic!("60 headers must be refused at publish, got {other:?}"),
    }
    p.send(with_headers(2, 59)).await.unwrap();

    // Rejected in "work", then again in "dlq": it reaches "last" with 62 headers.
    for queue in ["work", "dlq"] {
        let mut consumer = c.consumer(queue, one()).await.unwrap();
        let d = next(&mut consumer).await;
        assert_eq!(id_of(d.payload()), 2);
        d.reject().unwrap();
        consumer.flush();
    }
    let mut last = c.consumer("last", one()).await.unwrap();
    let d = next(&mut last).await;
    assert_eq!(id_of(d.payload()), 2);
    assert_eq!(d.message().headers.len(), 62);
    assert_eq!(header(&d, "x-death-queue"), Some(&b"dlq"[..]));
    assert_eq!(header(&d, "x-death-reason"), Some(&b"rejected"[..]));
    let s = c.inspect("work").await.unwrap().stats;
    assert_eq!((s.published, s.rejected, s.dead_lettered), (2, 1, 1));
}
