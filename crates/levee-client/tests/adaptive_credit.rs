//! Adaptive credit against a real broker: a slow consumer's target stays at its minimum (no
//! hoarding), a fast consumer's target grows to keep the pipe full. The assertions are on the
//! measured target, not on timing. The fast case runs behind a proxy adding 20 ms of latency, so
//! its round trip dwarfs its processing time even on a loaded machine.

mod common;

use std::time::Duration;

use futures::StreamExt;
use levee_client::{Client, ConsumerOptions, Credit, Message, Overflow, ProducerOptions};

async fn fill(client: &Client, n: u32) {
    let producer = client
        .producer("q", ProducerOptions::default())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_holds_at_most_its_minimum() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 1000))
        .await
        .unwrap();
    fill(&client, 200).await;
    let mut c = client
        .consumer(
            "q",
            ConsumerOptions {
                credit: Credit::Adaptive { min: 2, max: 256 },
                ..ConsumerOptions::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..12 {
        let d = c.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // "processing"
        d.ack().unwrap();
        let cs = c.credit();
        assert_eq!(cs.target, 2, "{cs:?}");
        assert!(cs.held() <= 2, "{cs:?}");
    }
    let cs = c.credit();
    assert!(
        cs.processing_time.unwrap() >= Duration::from_millis(40),
        "{cs:?}"
    );
    assert!(cs.rtt.unwrap() < cs.processing_time.unwrap(), "{cs:?}");
    // The broker agrees: it holds at most 2 for this consumer; the rest stays ready for others.
    let s = client.inspect("q").await.unwrap().stats;
    assert!(s.consumers[0].credit + s.consumers[0].unacked <= 2, "{s:?}");
    assert!(s.ready >= 200 - 12 - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_consumer_target_grows() {
    let b = common::broker().await;
    // 20 ms of network latency: processing (an immediate ack) is far shorter than the round trip
    // even on a loaded machine, so the target must grow well past its minimum.
    let proxy = common::Proxy::with_latency(b.addr, Duration::from_millis(20)).await;
    let client = common::client(proxy.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 10_000))
        .await
        .unwrap();
    fill(&client, 3000).await;
    let mut c = client
        .consumer(
            "q",
            ConsumerOptions {
                credit: Credit::Adaptive { min: 1, max: 512 },
                ..ConsumerOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(c.credit().target, 1, "starts at min");
    let mut max_held_over_target = 0i64;
    for i in 0..3000u32 {
        let d = c.next().await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(d.payload()[..].try_into().unwrap()), i);
        d.ack().unwrap();
        let cs = c.credit();
        max_held_over_target = max_held_over_target.max(cs.held() as i64 - 512);
    }
    let cs = c.credit();
    eprintln!("fast consumer: {cs:?}");
    assert!(cs.rtt.unwrap() >= Duration::from_millis(20), "{cs:?}");
    assert!(cs.target >= 8, "a fast consumer's target must grow: {cs:?}");
    // The target follows the formula from the measured figures (within the smoothing).
    let raw = (cs.rtt.unwrap().as_secs_f64() / cs.processing_time.unwrap().as_secs_f64()).ceil()
        as u32
        + 1;
    let expected = raw.clamp(1, 512);
    assert!(
        cs.target as f64 >= expected as f64 * 0.5
            && cs.target as f64 <= expected as f64 * 1.5 + 2.0,
        "target {} vs ceil(rtt / processing) + 1 = {expected}: {cs:?}",
        cs.target
    );
    assert!(cs.processing_time.unwrap() < cs.rtt.unwrap(), "{cs:?}");
    assert!(max_held_over_target <= 0, "held more than max");
}
