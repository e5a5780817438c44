//! Scenarios 1-12 of SCENARIOS.md: each test runs the example's `run` with short timings and
//! asserts the scenario's outcome on its report.

#![allow(dead_code)]

use std::time::Duration;

use levee_flow::{BreakerState, DropReason};

#[path = "../examples/s01_unbounded_leak.rs"]
mod s01;
#[path = "../examples/s02_large_payloads.rs"]
mod s02;
#[path = "../examples/s03_bounded_suspend.rs"]
mod s03;
#[path = "../examples/s04_conflation.rs"]
mod s04;
#[path = "../examples/s05_priority_shed.rs"]
mod s05;
#[path = "../examples/s06_rate_limit.rs"]
mod s06;
#[path = "../examples/s07_batching.rs"]
mod s07;
#[path = "../examples/s08_circuit_breaker.rs"]
mod s08;
#[path = "../examples/s09_log_processing.rs"]
mod s09;
#[path = "../examples/s10_sensors.rs"]
mod s10;
#[path = "../examples/s11_monitoring.rs"]
mod s11;
#[path = "../examples/s12_adaptive.rs"]
mod s12;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn s01_unbounded_grows_while_bounded_stays_at_its_limit_and_slows_the_producer() {
    let r = s01::run(s01::Params {
        produce_every: ms(1),
        consume_every: ms(10),
        duration: ms(400),
        bounded_capacity: 10,
        print_every: None,
    })
    .await;
    assert_eq!(r.unbounded.max_messages, None);
    assert!(
        r.unbounded.len >= 50,
        "unbounded should pile up: {}",
        r.unbounded
    );
    assert_eq!(
        r.unbounded.len as u64,
        r.unbounded.sent - r.unbounded.received
    );
    assert!(r.bounded.high_water_len <= 10, "{}", r.bounded);
    assert_eq!(r.bounded.dropped, 0);
    assert!(
        r.bounded.sent <= r.bounded.received + 10,
        "producer slowed to the consumer's pace"
    );
    assert!(r.bounded.sent * 2 < r.unbounded.sent);
}

#[tokio::test]
async fn s02_byte_limit_bounds_what_is_queued_not_the_message_count() {
    let max_bytes = 1 << 20;
    let r = s02::run(s02::Params {
        messages: 300,
        payload: 64 * 1024,
        max_messages: 1_000,
        max_bytes,
        consume_every: ms(1),
        duration: Duration::from_secs(20),
        print_every: None,
    })
    .await;
    assert!(r.finished && r.checksums_ok);
    assert_eq!(r.consumed, 300);
    assert!(r.stats.high_water_bytes <= max_bytes, "{}", r.stats);
    assert!(
        r.stats.high_water_len <= 16,
        "bounded by bytes, not by max_messages = 1000"
    );
    assert!(
        r.stats.high_water_bytes >= max_bytes / 2,
        "the byte limit was what held it"
    );
}

#[tokio::test]
async fn s03_send_waits_try_send_is_full_nothing_lost_producer_paced() {
    let consume = ms(5);
    let r = s03::run(s03::Params {
        messages: 30,
        capacity: 10,
        consume_every: consume,
        print_every: None,
    })
    .await;
    assert!(r.try_send_full);
    assert_eq!(r.received, (1..=30).collect::<Vec<_>>());
    assert_eq!((r.stats.dropped, r.stats.sent), (0, 30));
    // The producer cannot finish before the consumer took ~19 messages.
    assert!(r.producer_time >= consume * 15, "{:?}", r.producer_time);
}

#[tokio::test]
async fn s04_latest_wins_and_per_key_keeps_every_sensors_latest() {
    let r = s04::run(s04::Params {
        values: 50,
        produce_every: ms(2),
        consume_every: ms(20),
        sensors: 3,
        print_every: None,
    })
    .await;
    assert_eq!(
        r.latest_received.last(),
        Some(&50),
        "the last value is delivered"
    );
    assert!(r.latest_received.windows(2).all(|w| w[0] < w[1]));
    assert!(
        r.latest_received.len() < 50,
        "intermediate values were conflated"
    );
    assert_eq!(
        r.latest_stats.dropped_by.get(DropReason::Conflated) + r.latest_stats.received,
        50
    );
    assert_eq!(
        r.per_key_last, r.sent_last,
        "per key: latest reading of every sensor"
    );
    assert_ne!(
        r.global_last, r.sent_last,
        "one global slot loses sensors' final readings"
    );
}

#[tokio::test]
async fn s05_high_priority_never_dropped_while_low_priority_is_queued() {
    let r = s05::run(s05::Params {
        messages: 40,
        capacity: 5,
        produce_every: ms(2),
        consume_every: ms(12),
        print_every: None,
    })
    .await;
    assert!(r.dropped.iter().all(|(m, _)| m.1 == s05::LOW));
    assert_eq!(
        r.received.iter().filter(|m| m.1 == s05::HIGH).count(),
        r.high_sent
    );
    assert!(!r.dropped.is_empty());
    assert_eq!(
        r.stats.dropped_by.get(DropReason::Shed) + r.stats.dropped_by.get(DropReason::Outranked),
        r.dropped.len() as u64
    );
    assert!(
        r.stats.dropped_by.get(DropReason::Shed) > 0,
        "low ones evicted for high ones"
    );
    assert!(r.stats.balanced());
}

#[tokio::test]
async fn s06_paced_and_concurrency_limited_producers_are_slowed_not_failed() {
    let r = s06::run(s06::Params {
        messages: 60,
        capacity: 50,
        max_in_flight: 10,
        msgs_per_sec: 200,
        msg_burst: 10,
        bytes_per_sec: 64 * 1024,
        byte_burst: 8 * 1024,
        payload: 512,
        consume_every: ms(2),
        print_every: None,
    })
    .await;
    assert_eq!(r.failed_sends, 0);
    assert_eq!(r.received, 60);
    assert!(r.peak_in_flight <= 10);
    // 50 messages beyond the burst at 200/s: at least ~250 ms.
    assert!(r.produce_time >= ms(200), "{:?}", r.produce_time);
}

#[tokio::test]
async fn s07_batches_of_n_or_timeout_and_the_final_partial_batch() {
    let r = s07::run(s07::Params {
        messages: 45,
        produce_every: ms(1),
        publish_batch: 5,
        batch: 10,
        batch_timeout: ms(50),
        process_batch: ms(2),
        print_every: None,
    })
    .await;
    let flat: Vec<u32> = r.batches.iter().flatten().copied().collect();
    assert_eq!(flat, (0..45).collect::<Vec<_>>());
    assert!(r.batches.iter().all(|b| !b.is_empty() && b.len() <= 10));
    assert!(r.batches.iter().any(|b| b.len() == 10));
    assert!(
        r.batches.last().unwrap().len() < 10,
        "final partial batch delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_breaker_opens_refuses_half_opens_and_closes_on_success() {
    let r = s08::run(s08::Params {
        messages: 100,
        fail_above: 10,
        recover_after: ms(150),
        send_every: ms(5),
        failure_threshold: 5,
        open_for: ms(100),
        print: false,
    })
    .await;
    assert!(r.breaker.opened >= 1);
    assert!(r.breaker.closed_again >= 1);
    assert!(r.failed >= 5);
    assert!(r.refused > 0, "calls refused while open");
    assert_eq!(r.breaker.state, BreakerState::Closed);
    assert_eq!(r.transitions.first(), Some(&BreakerState::Closed));
    assert!(r.transitions.contains(&BreakerState::Open));
    assert_eq!(r.channel.received, r.breaker.successes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_every_log_line_received_or_counted_dropped_and_consumers_share() {
    let r = s09::run(s09::Params {
        lines: 10_000,
        line_every: Duration::ZERO,
        buffer: 1_000,
        consumers: 3,
        info_cost: ms(1),
        error_cost: ms(5),
        print_every: None,
    })
    .await;
    assert_eq!(r.stats.sent, 10_000);
    assert_eq!(r.stats.received + r.stats.dropped, 10_000);
    assert_eq!(r.dropped_reported, r.stats.dropped);
    assert_eq!(r.stats.dropped_by.get(DropReason::Newest), r.stats.dropped);
    assert!(
        r.per_consumer.iter().all(|n| *n > 0),
        "{:?}",
        r.per_consumer
    );
    assert_eq!(r.per_consumer.iter().sum::<u64>(), r.stats.received);
}

#[tokio::test]
async fn s10_per_key_latest_readings_and_threshold_alerts() {
    let r = s10::run(s10::Params {
        rounds: 20,
        sensors: 3,
        report_every: ms(10),
        analyse: ms(5),
        seed: 1,
        print: false,
    })
    .await;
    assert!(r.last_sent.values().all(|d| r.received.contains(d)));
    assert_eq!(
        r.temperature_alerts,
        r.received.iter().filter(|d| d.temperature > 28.0).count()
    );
    assert_eq!(
        r.humidity_alerts,
        r.received
            .iter()
            .filter(|d| d.temperature <= 28.0 && d.humidity > 75.0)
            .count()
    );
    assert_eq!(r.stats.sent, 60);
    assert_eq!(r.stats.received + r.stats.dropped, 60);
}

#[tokio::test]
async fn s11_live_stats_with_rates_and_loss() {
    let r = s11::run(s11::Params {
        messages: 150,
        capacity: 10,
        produce_every: ms(2),
        consume_every: ms(10),
        sample_every: ms(100),
        print: false,
    })
    .await;
    assert!(!r.snapshots.is_empty());
    assert!(r.snapshots.iter().all(|s| s.balanced()));
    assert!(
        r.snapshots
            .iter()
            .any(|s| s.send_rate > 0.0 && s.recv_rate > 0.0)
    );
    let l = &r.last;
    assert_eq!(l.sent, 150);
    assert_eq!(l.received + l.dropped, 150);
    assert!(l.dropped > 0);
    assert!((l.loss_pct - l.dropped as f64 * 100.0 / 150.0).abs() < 1e-9);
}

#[tokio::test]
async fn s12_capacity_follows_real_utilisation_without_losing_or_reordering() {
    let r = s12::run(s12::Params {
        burst_messages: 300,
        calm_messages: 150,
        calm_every: ms(10),
        consume_every: ms(1),
        sample_every: ms(10),
        min: 10,
        max: 1_000,
        print: false,
    })
    .await;
    assert_eq!(r.received, (0..450).collect::<Vec<_>>());
    assert!(r.peak_capacity > 10);
    assert!(
        r.resizes.iter().any(|x| x.to > x.from),
        "grew under the burst"
    );
    assert!(r.resizes.iter().any(|x| x.to < x.from), "shrank when calm");
    assert!(r.resizes.iter().all(|x| (10..=1_000).contains(&x.to)));
    assert_eq!((r.stats.sent, r.stats.dropped), (450, 0));
}
