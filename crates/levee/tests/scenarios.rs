//! The source documents' scenarios against the broker (those not covered by the behaviour files
//! `backpressure.rs`, `credit.rs`, `redelivery.rs`, `durability.rs`, `video_encoding.rs`).

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, http_get, id_of, memory_queue, numbered};
use futures::StreamExt;
use levee_client::{
    BreakerConfig, BreakerState, ClientError, ConsumerOptions, Credit, ProducerOptions,
    PublishOutcome,
};
use levee_proto::{Overflow, RateLimit};

/// Scenario 1: a fast producer and a slow consumer (1 msg/100 ms). An explicitly unbounded queue
/// grows with everything sent and its stats say so; the default bounded queue stays at its limit
/// while the producer is slowed to the consumer's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_grows_bounded_holds_its_limit_and_slows_the_producer() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare(
        "unbounded",
        memory_queue(Overflow::Block, u64::MAX, u64::MAX),
    )
    .await
    .unwrap();
    c.declare("bounded", memory_queue(Overflow::Block, 50, 1 << 20))
        .await
        .unwrap();
    let window = Duration::from_millis(1_000);
    let mut published = Vec::new();
    for queue in ["unbounded", "bounded"] {
        let pc = client(&server).await;
        let q = queue.to_string();
        // As fast as the broker lets it, 500 messages at most, for one second.
        published.push(tokio::spawn(async move {
            let p = pc.producer(&q, ProducerOptions::default()).await.unwrap();
            let deadline = Instant::now() + window;
            let mut n = 0u32;
            while n < 500 {
                let Ok(Ok(confirm)) =
                    tokio::time::timeout_at(deadline.into(), p.publish(numbered(n, 8))).await
                else {
                    break;
                };
                drop(confirm);
                n += 1;
            }
            p.flush().await;
            n
        }));
        let cc = client(&server).await;
        let q = queue.to_string();
        tokio::spawn(async move {
            let mut consumer = cc
                .consumer(
                    &q,
                    ConsumerOptions {
                        credit: Credit::Fixed(1),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            while let Some(Ok(d)) = consumer.next().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = d.ack();
            }
        });
    }
    let unbounded_sent = published.remove(0).await.unwrap();
    let bounded_sent = published.remove(0).await.unwrap();
    let u = c.inspect("unbounded").await.unwrap().stats;
    let b = c.inspect("bounded").await.unwrap().stats;
    assert_eq!(
        unbounded_sent, 500,
        "nothing slows a producer into an unbounded queue"
    );
    assert_eq!(u.published, 500);
    assert!(u.ready >= 500 - 20, "the unbounded queue piles up: {u:?}");
    assert!(
        b.ready + b.unacked <= 50,
        "the bounded queue holds its limit: {b:?}"
    );
    // At most the limit plus what the consumer finished (one per 100 ms) got through.
    let consumed_at_most = (window.as_millis() / 100) as u32 + 2;
    assert!(
        bounded_sent <= 50 + consumed_at_most,
        "the bounded producer was slowed to the consumer's pace: {bounded_sent}"
    );
}

/// Scenario 6: a publish rate limit slows producers (not fails them) on a block queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_slows_producers_without_failing_them() {
    let server = Server::start();
    let c = client(&server).await;
    let mut cfg = memory_queue(Overflow::Block, 10_000, 1 << 24);
    cfg.rate_limit = Some(RateLimit::msgs(100));
    c.declare("paced", cfg).await.unwrap();
    let p = c
        .producer("paced", ProducerOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let mut confirms = Vec::new();
    for i in 0..150u32 {
        confirms.push(p.publish(numbered(i, 8)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // An upper bound only (the limiter may not be faster than its quota; slowness cannot fail it).
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let stored = c.inspect("paced").await.unwrap().stats.stored;
    assert!(
        stored <= 100 + elapsed_ms / 10 + 2,
        "{stored} stored after {elapsed_ms} ms at 100/s"
    );
    for cf in confirms {
        assert!(
            matches!(cf.await.unwrap(), PublishOutcome::Stored { .. }),
            "slowed, never failed"
        );
    }
    assert_eq!(c.inspect("paced").await.unwrap().stats.stored, 150);
}

/// Scenario 7: publish in batches (a linger coalesces messages into few frames) and consume in
/// batches of up to N with the final partial batch delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_coalesce_publishes_and_the_last_partial_batch_arrives() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("batch", memory_queue(Overflow::Block, 10_000, 1 << 24))
        .await
        .unwrap();
    let opts = ProducerOptions {
        batch_size: 10,
        linger: Duration::from_millis(20),
        ..ProducerOptions::default()
    };
    let p = c.producer("batch", opts).await.unwrap();
    let before = c.stats().publish_frames;
    let outcomes = p
        .send_batch((0..105u32).map(|i| numbered(i, 8)).collect())
        .await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(PublishOutcome::Stored { .. })))
    );
    let frames = c.stats().publish_frames - before;
    assert!(
        frames <= 11,
        "105 messages in batches of 10 took {frames} frames"
    );
    let consumer = c
        .consumer(
            "batch",
            ConsumerOptions {
                credit: Credit::Fixed(64),
                auto_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let batches: Vec<Vec<u32>> = consumer
        .map(|d| id_of(d.unwrap().payload()))
        .take(105)
        .chunks(10)
        .collect()
        .await;
    assert_eq!(batches.len(), 11);
    assert_eq!(
        batches.last().unwrap(),
        &(100..105).collect::<Vec<_>>(),
        "leftover flushed"
    );
}

/// Scenario 8: a circuit breaker around publishing opens after 5 failures, fails fast while open,
/// and its state is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_after_repeated_failures_and_fails_fast() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("tiny", memory_queue(Overflow::Reject, 1, 1 << 20))
        .await
        .unwrap();
    let opts = ProducerOptions {
        breaker: Some(BreakerConfig::new(5, Duration::from_secs(5))),
        linger: Duration::ZERO,
        ..ProducerOptions::default()
    };
    let p = c.producer("tiny", opts).await.unwrap();
    assert!(matches!(
        p.send(numbered(0, 8)).await,
        Ok(PublishOutcome::Stored { .. })
    ));
    let mut failures = 0;
    let mut fast_fail = false;
    for i in 1..20u32 {
        match p.send(numbered(i, 8)).await {
            Err(ClientError::CircuitOpen) => {
                fast_fail = true;
                break;
            }
            Ok(PublishOutcome::Rejected { .. }) | Err(ClientError::Rejected { .. }) => {
                failures += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(fast_fail, "the breaker opened");
    assert_eq!(failures, 5, "after exactly 5 consecutive failures");
    assert_eq!(p.breaker_state(), Some(BreakerState::Open));
    let s = c.inspect("tiny").await.unwrap().stats;
    assert_eq!(s.rejected, 5, "while open, nothing reached the broker");
}

/// Scenario 10: sensors publish every tick into a conflating queue; the monitor reads the latest
/// value of every sensor and raises threshold alerts (temperature > 28, humidity > 75).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_monitor_sees_latest_values_and_raises_alerts() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare(
        "sensors",
        memory_queue(Overflow::ConflateByKey, 16, 1 << 20),
    )
    .await
    .unwrap();
    let p = c
        .producer("sensors", ProducerOptions::default())
        .await
        .unwrap();
    let readings = [
        ("temperature", [25.0, 27.5, 29.1]),
        ("humidity", [60.0, 80.2, 70.0]),
        ("pressure", [1010.0, 1012.0, 1013.5]),
    ];
    for tick in 0..3 {
        for (sensor, values) in &readings {
            let m = levee_proto::Message::new(values[tick].to_string()).with_key(*sensor);
            p.send(m).await.unwrap();
        }
    }
    let mut consumer = c
        .consumer(
            "sensors",
            ConsumerOptions {
                credit: Credit::Fixed(16),
                auto_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut alerts = Vec::new();
    for _ in 0..3 {
        let d = consumer.next().await.unwrap().unwrap();
        let sensor = String::from_utf8(d.message().key.clone().unwrap().to_vec()).unwrap();
        let value: f64 = std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
        let latest = readings.iter().find(|(s, _)| *s == sensor).unwrap().1[2];
        assert_eq!(
            value, latest,
            "{sensor}: only the latest reading is delivered"
        );
        if (sensor == "temperature" && value > 28.0) || (sensor == "humidity" && value > 75.0) {
            alerts.push(sensor);
        }
    }
    assert_eq!(
        alerts,
        vec!["temperature"],
        "humidity's 80.2 was superseded by 70.0"
    );
    let s = c.inspect("sensors").await.unwrap().stats;
    assert_eq!(s.dropped(levee_proto::DropReason::Conflated), 6);
}

/// Scenario 11: live stats over HTTP: JSON per queue and Prometheus metrics with sent /
/// received / dropped counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_exposes_queue_stats_over_http_and_prometheus() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare("monitored", memory_queue(Overflow::DropNewest, 5, 1 << 20))
        .await
        .unwrap();
    let p = c
        .producer("monitored", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..8u32 {
        p.send(numbered(i, 8)).await.unwrap();
    }
    let addr = server.http;
    let (status, metrics) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("queue=\"monitored\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    assert_eq!(sample("levee_queue_published_total"), 8.0);
    assert_eq!(sample("levee_queue_dropped_total"), 3.0);
    assert_eq!(sample("levee_queue_ready"), 5.0);
    let (status, json) =
        tokio::task::spawn_blocking(move || http_get(addr, "/api/queues/monitored"))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(json.contains("\"monitored\""), "{json}");
    let (status, page) = tokio::task::spawn_blocking(move || http_get(addr, "/"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") || page.contains("<!DOCTYPE"),
        "a dashboard page"
    );
}
