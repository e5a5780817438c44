//! A consumer that asks for a lot and never reads: the broker buffers a bounded amount for it,
//! never counts as delivered what it never sent, and disconnects it once it stops draining.
//! (Credit is what a consumer may be sent, not a licence for the broker to buffer.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Raw, Server, client, memory_queue, wait_for_stats};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{ClientFrame, Message, Overflow, PublishOutcome, QueueConfig};

const MESSAGES: usize = 2_000;
const SIZE: usize = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_bounded_then_disconnected_and_loses_nothing() {
    // Heartbeats every 500 ms: a peer that does not take its bytes for 1.5 s is cut off.
    let server = Server::start_with(&["--heartbeat-ms", "500"]);
    let c = client(&server).await;
    let config = QueueConfig {
        ack_timeout_ms: 300,
        max_deliveries: Some(2),
        ..memory_queue(Overflow::Reject, 10_000, 256 << 20)
    };
    c.declare("work", config).await.unwrap();
    let p = c
        .producer("work", ProducerOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..MESSAGES as u32 {
        let mut body = vec![0u8; SIZE];
        body[..4].copy_from_slice(&i.to_le_bytes());
        confirms.push(p.publish(Message::new(body)).await.unwrap());
    }
    for f in confirms {
        assert!(matches!(f.await.unwrap(), PublishOutcome::Stored { .. }));
    }

    // The hostile consumer: huge credit, heartbeats, never reads its socket.
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Subscribe {
        req: 1,
        queue: "work".into(),
        credit: 1_000_000,
        auto_ack: false,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let beat = {
        let mut sock = raw.sock.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut frame = bytes::BytesMut::new();
            ClientFrame::Heartbeat.encode(&mut frame).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if std::io::Write::write_all(&mut sock, &frame).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // While it is connected, what the broker hands it stays bounded (its outbox of 8 MiB plus
    // what the kernel's socket buffers hold), far below what its credit allows.
    let mut most_unacked = 0;
    let gone = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = c.inspect("work").await.unwrap().stats;
        most_unacked = most_unacked.max(s.unacked);
        if s.consumers.is_empty() && most_unacked > 0 {
            break; // disconnected by the broker
        }
        assert!(
            tokio::time::Instant::now() < gone,
            "the broker never disconnected a consumer that does not read: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    beat.join().unwrap();
    assert!(
        most_unacked < (MESSAGES as u64) / 2,
        "the broker buffered {most_unacked} of {MESSAGES} messages for a consumer that never read"
    );

    // Nothing was lost to ack timeouts or max-deliveries: a real consumer gets every message,
    // and those that never left the broker come with a delivery count of 1.
    let mut consumer = c
        .consumer(
            "work",
            ConsumerOptions {
                credit: Credit::Fixed(200),
                ..ConsumerOptions::default()
            },
        )
        .await
        .unwrap();
    let mut seen = vec![false; MESSAGES];
    let mut first_time = 0;
    for _ in 0..MESSAGES {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("every message is still there")
            .unwrap()
            .unwrap();
        let id = u32::from_le_bytes(d.payload()[..4].try_into().unwrap()) as usize;
        assert!(
            !seen[id],
            "message {id} delivered twice to the real consumer"
        );
        seen[id] = true;
        if d.delivery_count() == 1 {
            first_time += 1;
        }
        d.ack().unwrap();
    }
    assert!(
        first_time as u64 >= MESSAGES as u64 - most_unacked,
        "only {first_time} came with a delivery count of 1; at most {most_unacked} ever left the broker"
    );
    let s = wait_for_stats(&c, "work", |s| s.acked == MESSAGES as u64).await;
    assert_eq!(s.dropped_total(), 0, "{s:?}");
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    assert!(s.is_balanced());
}
