//! Scenario 15 (Reactive Streams `request(n)`): the broker never sends a consumer more than its
//! outstanding credit, credit is visible in stats, and work flows to consumers with credit.

mod common;

use std::time::Duration;

use common::{Raw, Server, client, id_of, memory_queue, numbered};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{ClientFrame, Overflow, ServerFrame};

/// Reads deliveries until `expected` have arrived (10 s at most), then keeps listening for
/// `quiet` more: returns how many arrived in all (raw socket, so the client library cannot mask
/// a broker that over-delivers).
fn deliveries_within(raw: &mut Raw, expected: usize, quiet: Duration) -> usize {
    let mut n = 0;
    let read = |raw: &mut Raw, timeout: Duration, n: &mut usize| -> bool {
        raw.sock.set_read_timeout(Some(timeout)).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.recv())) {
            Ok(Some(ServerFrame::Deliver { deliveries })) => {
                *n += deliveries.len();
                true
            }
            Ok(Some(_)) => true,
            // Read timeout or close: nothing more is coming.
            Ok(None) | Err(_) => false,
        }
    };
    while n < expected && read(raw, Duration::from_secs(10), &mut n) {}
    while read(raw, quiet, &mut n) {}
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_never_sends_more_than_the_requested_credit() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("demand", memory_queue(Overflow::Block, 1_000, 1 << 20))
        .await
        .unwrap();
    let p = c
        .producer("demand", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..100u32 {
        p.send(numbered(i, 8)).await.unwrap();
    }
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Subscribe {
        req: 1,
        queue: "demand".into(),
        credit: 5,
        auto_ack: false,
    });
    assert_eq!(
        deliveries_within(&mut raw, 5, Duration::from_millis(300)),
        5,
        "request(5)"
    );
    let s = c.inspect("demand").await.unwrap().stats;
    assert_eq!(
        (
            s.consumers.len(),
            s.consumers[0].credit,
            s.consumers[0].unacked
        ),
        (1, 0, 5)
    );
    let sub = s.consumers[0].subscription;
    raw.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    raw.send(&ClientFrame::Credit {
        subscription: sub,
        n: 3,
    });
    assert_eq!(
        deliveries_within(&mut raw, 3, Duration::from_millis(300)),
        3,
        "request(3)"
    );
    raw.send(&ClientFrame::Credit {
        subscription: sub,
        n: 1000,
    });
    assert_eq!(
        deliveries_within(&mut raw, 92, Duration::from_millis(300)),
        92,
        "the rest"
    );
    let s = c.inspect("demand").await.unwrap().stats;
    assert_eq!(
        (s.consumers[0].credit, s.unacked),
        (908, 100),
        "credit left is visible"
    );
}

/// Scenario 13's rule: a busy consumer (no credit) is skipped and an idle one gets the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_consumer_gets_nothing_and_an_idle_one_gets_the_work() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("work", memory_queue(Overflow::Block, 1_000, 1 << 20))
        .await
        .unwrap();
    let one = ConsumerOptions {
        credit: Credit::Fixed(1),
        ..Default::default()
    };
    let busy_client = client(&server).await;
    let mut busy = busy_client.consumer("work", one.clone()).await.unwrap();
    let idle_client = client(&server).await;
    let mut idle = idle_client.consumer("work", one).await.unwrap();
    let p = c
        .producer("work", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..20u32 {
        p.send(numbered(i, 8)).await.unwrap();
    }
    // The busy consumer takes one job and never finishes it.
    let held = busy.next().await.unwrap().unwrap();
    let mut done = 0;
    while done < 19 {
        let d = tokio::time::timeout(Duration::from_secs(5), idle.next())
            .await
            .expect("the idle consumer is served")
            .unwrap()
            .unwrap();
        assert_ne!(id_of(d.payload()), id_of(held.payload()));
        d.ack().unwrap();
        done += 1;
    }
    idle.flush();
    // Same connection as the acks, so the inspect is ordered after them.
    let s = idle_client.inspect("work").await.unwrap().stats;
    assert_eq!((s.acked, s.unacked, s.ready), (19, 1, 0));
    let busy_stats = s.consumers.iter().map(|c| c.unacked).max().unwrap();
    assert_eq!(
        busy_stats, 1,
        "the busy consumer never held more than its one job"
    );
}

/// Adaptive credit end to end: a consumer that takes long per message keeps its target small,
/// so a second consumer is not starved by hoarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_adaptive_consumer_does_not_hoard_messages() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("adaptive", memory_queue(Overflow::Block, 10_000, 1 << 24))
        .await
        .unwrap();
    let p = c
        .producer("adaptive", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..400u32 {
        drop(p.publish(numbered(i, 8)).await.unwrap());
    }
    p.flush().await;
    let slow_client = client(&server).await;
    let mut slow = slow_client
        .consumer(
            "adaptive",
            ConsumerOptions {
                credit: Credit::Adaptive { min: 1, max: 256 },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..10 {
        let d = slow.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        d.ack().unwrap();
    }
    let credit = slow.credit();
    assert!(credit.target <= 4, "slow consumer aims low: {credit:?}");
    let s = c.inspect("adaptive").await.unwrap().stats;
    assert!(s.unacked + s.consumers[0].credit <= 256, "{s:?}");
}
