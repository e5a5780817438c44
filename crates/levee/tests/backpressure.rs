//! Producer backpressure and every overflow policy through the broker, with exact accounting
//! (scenarios 1-5 and 9 of the source documents, against the real `levee` binary).

mod common;

use std::time::Duration;

use common::{Server, client, id_of, memory_queue, numbered, wait_for_stats};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions, PublishOutcome, TryPublishError};
use levee_proto::{DropReason, Order, Overflow};

/// Scenario 3: a bounded queue; the producer is suspended while it is full, nothing is lost, and
/// the queue never holds more than its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_queue_paces_the_producer_and_loses_nothing() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("bounded", memory_queue(Overflow::Block, 10, 1 << 20))
        .await
        .unwrap();
    let producer = c
        .producer("bounded", ProducerOptions::default())
        .await
        .unwrap();
    let p = producer.clone();
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for i in 0..200u32 {
            confirms.push(p.publish(numbered(i, 16)).await.unwrap());
        }
        for c in confirms {
            assert!(matches!(c.await.unwrap(), PublishOutcome::Stored { .. }));
        }
    });
    // Until a consumer appears, the producer is stuck at the limit.
    wait_for_stats(&c, "bounded", |s| s.ready == 10).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = c.inspect("bounded").await.unwrap().stats;
    assert_eq!(
        stats.ready, 10,
        "the queue filled to its limit and no further"
    );
    assert!(!publisher.is_finished(), "the producer waits");
    match producer.try_publish(numbered(999, 16)) {
        Err(TryPublishError::Full(_)) => {}
        other => panic!("try_publish on a full block queue: {other:?}"),
    }
    let mut consumer = c
        .consumer(
            "bounded",
            ConsumerOptions {
                credit: Credit::Fixed(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 200 {
        let d = consumer.next().await.unwrap().unwrap();
        got.push(id_of(d.payload()));
        d.ack().unwrap();
        if got.len() % 50 == 0 {
            let s = c.inspect("bounded").await.unwrap().stats;
            assert!(s.ready + s.unacked <= 10, "limit held: {s:?}");
        }
    }
    publisher.await.unwrap();
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "all, in order, once");
    consumer.flush();
    let s = c.inspect("bounded").await.unwrap().stats;
    assert_eq!((s.stored, s.acked, s.dropped_total()), (200, 200, 0));
    assert!(s.is_balanced());
}

/// Scenario 2: a byte limit bounds what is queued, not just a message count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_limit_bounds_a_queue_of_large_messages() {
    let server = Server::start();
    let c = client(&server).await;
    // 1,000 messages allowed, but only 1 MiB: at most 16 of these 64 KiB messages.
    c.declare("large", memory_queue(Overflow::Block, 1_000, 1 << 20))
        .await
        .unwrap();
    let producer = c
        .producer("large", ProducerOptions::default())
        .await
        .unwrap();
    let p = producer.clone();
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for i in 0..64u32 {
            confirms.push(p.publish(numbered(i, 64 * 1024)).await.unwrap());
        }
        for c in confirms {
            assert!(matches!(c.await.unwrap(), PublishOutcome::Stored { .. }));
        }
    });
    wait_for_stats(&c, "large", |s| s.ready == 16).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = c.inspect("large").await.unwrap().stats;
    assert!(s.bytes <= 1 << 20, "bytes bounded: {s:?}");
    assert_eq!(s.ready, 16, "exactly as many as fit in 1 MiB");
    let mut consumer = c
        .consumer(
            "large",
            ConsumerOptions {
                credit: Credit::Fixed(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 0..64u32 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(id_of(d.payload()), i);
        d.ack().unwrap();
        let s = c.inspect("large").await.unwrap().stats;
        assert!(s.bytes <= 1 << 20, "bytes bounded: {s:?}");
    }
    publisher.await.unwrap();
    assert!(c.inspect("large").await.unwrap().stats.is_balanced());
}

/// A full queue never blocks publishing to another queue on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_does_not_stall_other_queues_on_the_same_connection() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("full", memory_queue(Overflow::Block, 5, 1 << 20))
        .await
        .unwrap();
    c.declare("free", memory_queue(Overflow::Block, 1_000, 1 << 20))
        .await
        .unwrap();
    let full = c
        .producer("full", ProducerOptions::default())
        .await
        .unwrap();
    let blocked = tokio::spawn(async move {
        for i in 0..20u32 {
            let _confirm = full.publish(numbered(i, 8)).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished());
    let free = c
        .producer("free", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..100u32 {
        let o = tokio::time::timeout(Duration::from_secs(5), free.send(numbered(i, 8)))
            .await
            .expect("the other queue is not stalled")
            .unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }));
    }
    assert_eq!(c.inspect("free").await.unwrap().stats.ready, 100);
    blocked.abort();
}

/// `reject` hands the message back with an error when the queue is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_refuses_with_queue_full() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("rej", memory_queue(Overflow::Reject, 3, 1 << 20))
        .await
        .unwrap();
    let p = c.producer("rej", ProducerOptions::default()).await.unwrap();
    let mut rejected = 0;
    for i in 0..10u32 {
        match p.send(numbered(i, 8)).await {
            Ok(PublishOutcome::Stored { .. }) => {}
            Ok(PublishOutcome::Rejected { code, .. }) => {
                assert_eq!(code, levee_proto::ErrorCode::QueueFull);
                rejected += 1;
            }
            Err(levee_client::ClientError::Rejected { code, .. }) => {
                assert_eq!(code, levee_proto::ErrorCode::QueueFull);
                rejected += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rejected, 7);
    let s = c.inspect("rej").await.unwrap().stats;
    assert_eq!((s.published, s.stored, s.rejected), (10, 3, 7));
    assert!(s.is_balanced());
}

async fn publish_all(c: &levee_client::Client, queue: &str, msgs: Vec<levee_proto::Message>) {
    let p = c.producer(queue, ProducerOptions::default()).await.unwrap();
    for m in msgs {
        p.send(m).await.unwrap();
    }
}

async fn drain(c: &levee_client::Client, queue: &str, n: usize) -> Vec<levee_client::Delivery> {
    let mut consumer = c
        .consumer(
            queue,
            ConsumerOptions {
                credit: Credit::Fixed(64),
                auto_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        out.push(consumer.next().await.unwrap().unwrap());
    }
    out
}

/// `drop-newest` keeps the first messages, `drop-oldest` the last; every drop is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policies_keep_the_right_messages_and_count_the_rest() {
    let server = Server::start();
    let c = client(&server).await;
    for (queue, overflow, reason, kept) in [
        (
            "newest",
            Overflow::DropNewest,
            DropReason::OverflowNewest,
            0..10u32,
        ),
        (
            "oldest",
            Overflow::DropOldest,
            DropReason::EvictedOldest,
            90..100u32,
        ),
    ] {
        c.declare(queue, memory_queue(overflow, 10, 1 << 20))
            .await
            .unwrap();
        publish_all(&c, queue, (0..100).map(|i| numbered(i, 8)).collect()).await;
        let s = c.inspect(queue).await.unwrap().stats;
        assert_eq!((s.ready, s.dropped(reason)), (10, 90), "{queue}");
        assert!(s.is_balanced());
        let ids: Vec<u32> = drain(&c, queue, 10)
            .await
            .iter()
            .map(|d| id_of(d.payload()))
            .collect();
        assert_eq!(ids, kept.collect::<Vec<_>>(), "{queue}");
    }
}

/// Scenarios 4 and 10: conflation per key keeps the latest reading of every sensor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflation_keeps_the_latest_value_of_every_key() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare(
        "sensors",
        memory_queue(Overflow::ConflateByKey, 100, 1 << 20),
    )
    .await
    .unwrap();
    let mut msgs = Vec::new();
    for reading in 0..20u32 {
        for sensor in ["temperature", "humidity", "pressure"] {
            msgs.push(numbered(reading, 8).with_key(sensor));
        }
    }
    publish_all(&c, "sensors", msgs).await;
    let s = c.inspect("sensors").await.unwrap().stats;
    assert_eq!((s.ready, s.dropped(DropReason::Conflated)), (3, 57));
    let got = drain(&c, "sensors", 3).await;
    let mut keys: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.message().key.clone().unwrap().to_vec()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["humidity", "pressure", "temperature"]);
    assert!(
        got.iter().all(|d| id_of(d.payload()) == 19),
        "latest reading of each"
    );
}

/// Scenario 5: when full, the lowest-priority oldest message is evicted for a higher one; high
/// priority messages are never dropped while low ones are queued; delivered highest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_shedding_keeps_every_high_priority_message() {
    let server = Server::start();
    let c = client(&server).await;
    let mut cfg = memory_queue(Overflow::ShedPriority, 5, 1 << 20);
    cfg.order = Order::Priority;
    c.declare("prio", cfg).await.unwrap();
    let msgs = (0..20u32)
        .map(|i| numbered(i, 8).with_priority(if i % 5 == 0 { 9 } else { 1 }))
        .collect();
    publish_all(&c, "prio", msgs).await;
    let s = c.inspect("prio").await.unwrap().stats;
    assert_eq!((s.ready, s.dropped(DropReason::ShedPriority)), (5, 15));
    let ids: Vec<u32> = drain(&c, "prio", 5)
        .await
        .iter()
        .map(|d| id_of(d.payload()))
        .collect();
    assert_eq!(
        &ids[..4],
        &[0, 5, 10, 15],
        "every high-priority message, first"
    );
}

/// Scenario 9: 3 competing consumers share a drop-newest log queue; every line is either
/// received or counted as dropped: sent = received + dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_processing_accounts_for_every_line_across_competing_consumers() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("logs", memory_queue(Overflow::DropNewest, 100, 1 << 20))
        .await
        .unwrap();
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let wc = client(&server).await;
        workers.push(tokio::spawn(async move {
            let mut consumer = wc
                .consumer(
                    "logs",
                    ConsumerOptions {
                        credit: Credit::Fixed(8),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut n = 0u64;
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_millis(800), consumer.next()).await
            {
                let d = d.unwrap();
                // ERROR lines take longer than INFO lines.
                let slow = d.payload().ends_with(b"ERROR");
                tokio::time::sleep(Duration::from_micros(if slow { 400 + w * 100 } else { 50 }))
                    .await;
                d.ack().unwrap();
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = c
        .producer("logs", ProducerOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..3_000u32 {
        let level: &[u8] = if i % 10 == 0 { b"ERROR" } else { b"INFO" };
        let mut line = numbered(i, 4).payload.to_vec();
        line.extend_from_slice(level);
        confirms.push(p.publish(levee_proto::Message::new(line)).await.unwrap());
    }
    let mut dropped_confirms = 0;
    for cf in confirms {
        if matches!(cf.await.unwrap(), PublishOutcome::Dropped { .. }) {
            dropped_confirms += 1;
        }
    }
    let mut received = Vec::new();
    for w in workers {
        received.push(w.await.unwrap());
    }
    let s = c.inspect("logs").await.unwrap().stats;
    let total: u64 = received.iter().sum();
    assert_eq!(s.published, 3_000);
    assert_eq!(
        total + s.dropped_total(),
        3_000,
        "sent = received + dropped: {received:?} {s:?}"
    );
    assert_eq!(
        s.dropped_total(),
        dropped_confirms,
        "producers were told of every drop"
    );
    assert!(
        received.iter().all(|n| *n > 0),
        "all three consumers worked: {received:?}"
    );
    assert!(s.is_balanced());
}

/// Publishes held for room on a `block` queue (within credit, waiting for bytes) whose
/// publisher's connection dies are discarded, counted as `publisher-gone`: the publisher never got
/// their confirms, so storing them later would only duplicate what it publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_publishes_of_a_publisher_that_went_away_are_not_stored_later() {
    use levee_proto::{ClientFrame, ServerFrame};
    let server = Server::start();
    let c = client(&server).await;
    c.declare("tight", memory_queue(Overflow::Block, 100, 1000))
        .await
        .unwrap();
    let mut raw = common::Raw::handshake(server.wire);
    raw.send(&ClientFrame::Produce {
        req: 1,
        queue: "tight".into(),
    });
    let mut credit = 0;
    while credit < 10 {
        match raw.recv() {
            Some(ServerFrame::PublishCredit { n, .. }) => credit += n,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    // Ten messages of 400 bytes: two fit the 1000-byte limit, eight are held for room.
    raw.send(&ClientFrame::Publish {
        req: 2,
        queue: "tight".into(),
        messages: (0..10).map(|i| numbered(i, 400)).collect(),
    });
    wait_for_stats(&c, "tight", |s| s.stored == 2).await;
    drop(raw); // the publisher dies without its confirm
    let s = wait_for_stats(&c, "tight", |s| s.dropped(DropReason::PublisherGone) == 8).await;
    assert_eq!((s.published, s.stored, s.ready), (10, 10, 2), "{s:?}");
    assert!(s.is_balanced());

    // Room frees: nothing of the dead publisher is admitted any more.
    let mut consumer = c
        .consumer(
            "tight",
            ConsumerOptions {
                credit: Credit::Fixed(10),
                ..ConsumerOptions::default()
            },
        )
        .await
        .unwrap();
    for want in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(id_of(d.payload()), want);
        d.ack().unwrap();
    }
    consumer.flush();
    let s = wait_for_stats(&c, "tight", |s| s.acked == 2).await;
    assert_eq!((s.ready, s.unacked, s.stored), (0, 0, 10), "{s:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "a held publish of the dead publisher was stored after all"
    );
}

/// A producer waiting for publish credit and consumers waiting for deliveries learn at once
/// when their queue goes away (here: deleted; in a cluster: served by another node now). The
/// broker sends `QueueClosed`: the waiting publish fails with the reason instead of waiting for
/// credit that can never come, the consumers' streams end with it, and the same connection
/// keeps serving its other queues. Declared again, the queue takes a new producer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_ends_its_waiting_producer_and_consumers() {
    let server = Server::start();
    let c = client(&server).await;
    let other = client(&server).await;
    c.declare("gone", memory_queue(Overflow::Block, 2, 1 << 20))
        .await
        .unwrap();
    c.declare("kept", memory_queue(Overflow::Block, 100, 1 << 20))
        .await
        .unwrap();
    let producer = c
        .producer("gone", ProducerOptions::default())
        .await
        .unwrap();
    let kept = c
        .producer("kept", ProducerOptions::default())
        .await
        .unwrap();
    // Two consumers: one on the producer's connection, one on another; neither acks, so the
    // queue stays full (two unacked messages) and grants no more credit.
    let opts = ConsumerOptions {
        credit: Credit::Fixed(1),
        ..ConsumerOptions::default()
    };
    let mut near = c.consumer("gone", opts.clone()).await.unwrap();
    let mut far = other.consumer("gone", opts).await.unwrap();
    for i in 0..2 {
        producer.send(numbered(i, 8)).await.unwrap();
    }
    let mut held = Vec::new();
    for consumer in [&mut near, &mut far] {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .expect("stream open")
            .expect("delivery");
        held.push(d);
    }
    let p = producer.clone();
    let waiting = tokio::spawn(async move { p.publish(numbered(2, 8)).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a full block queue makes publish wait"
    );

    assert_eq!(other.delete("gone").await.unwrap(), 2);

    let unknown = |r: &Result<(), levee_client::ClientError>| {
        matches!(r, Err(levee_client::ClientError::Server { code, message })
            if *code == levee_proto::ErrorCode::UnknownQueue && message.contains("gone"))
    };
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting publish ends when the queue is deleted")
        .unwrap();
    assert!(unknown(&r), "{r:?}");
    // Later publishes fail at once, too.
    let r = tokio::time::timeout(Duration::from_secs(5), producer.publish(numbered(3, 8)))
        .await
        .expect("no wait")
        .map(|_| ());
    assert!(unknown(&r), "{r:?}");
    match producer.try_publish(numbered(4, 8)) {
        Err(TryPublishError::Failed(m, e)) => {
            assert_eq!(id_of(&m.payload), 4);
            assert!(unknown(&Err(e)));
        }
        r => panic!("expected Failed, got {:?}", r.map(|_| ())),
    }
    for consumer in [&mut near, &mut far] {
        let end = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("the consumer learns of the deletion");
        let r = end.expect("an error before the end").map(|_| ());
        assert!(unknown(&r), "{r:?}");
        let after = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("then the end");
        assert!(after.is_none(), "stream ended");
    }
    // A delivery of the deleted queue can no longer be acked.
    assert!(held.pop().unwrap().ack().is_err());

    // The connection goes on: its other queue, and the queue declared again.
    let o = kept.send(numbered(5, 8)).await.unwrap();
    assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    c.declare("gone", memory_queue(Overflow::Block, 2, 1 << 20))
        .await
        .unwrap();
    let again = c
        .producer("gone", ProducerOptions::default())
        .await
        .unwrap();
    let o = tokio::time::timeout(Duration::from_secs(5), again.send(numbered(6, 8)))
        .await
        .expect("credit for the new queue")
        .unwrap();
    assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
}

/// `QueueClosed` is protocol 3: a connection that negotiated 2 never receives it (it would not
/// decode it), and goes on as before.
#[test]
fn a_protocol_2_connection_is_not_sent_queue_closed() {
    use levee_proto::{ClientFrame, Hello, ServerFrame};
    let server = Server::start();
    let mut raw = common::Raw::connect(server.wire);
    raw.send(&ClientFrame::Hello(Hello {
        max_version: 2,
        ..Hello::new("v2-client")
    }));
    match raw.recv() {
        Some(ServerFrame::Welcome(w)) => assert_eq!(w.version, 2),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&server).await;
        c.declare("v2", memory_queue(Overflow::Block, 10, 1 << 20))
            .await
            .unwrap();
    });
    raw.send(&ClientFrame::Subscribe {
        req: 1,
        queue: "v2".into(),
        credit: 1,
        auto_ack: false,
    });
    assert!(matches!(
        raw.recv(),
        Some(ServerFrame::Subscribed { req: 1, .. })
    ));
    rt.block_on(async {
        let c = client(&server).await;
        c.delete("v2").await.unwrap();
    });
    raw.send(&ClientFrame::ListQueues { req: 2 });
    match raw.recv() {
        Some(ServerFrame::QueueList { req: 2, .. }) => {}
        other => panic!("expected the QueueList reply and nothing before it, got {other:?}"),
    }
}
