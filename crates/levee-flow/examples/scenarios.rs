//! The scenario tour: runs scenarios 1-12 of SCENARIOS.md in sequence with shortened timings
//! and prints a one-line outcome for each. `cargo run --release -p levee-flow --example scenarios`

#![allow(dead_code)]

use std::time::{Duration, Instant};

#[path = "s01_unbounded_leak.rs"]
mod s01;
#[path = "s02_large_payloads.rs"]
mod s02;
#[path = "s03_bounded_suspend.rs"]
mod s03;
#[path = "s04_conflation.rs"]
mod s04;
#[path = "s05_priority_shed.rs"]
mod s05;
#[path = "s06_rate_limit.rs"]
mod s06;
#[path = "s07_batching.rs"]
mod s07;
#[path = "s08_circuit_breaker.rs"]
mod s08;
#[path = "s09_log_processing.rs"]
mod s09;
#[path = "s10_sensors.rs"]
mod s10;
#[path = "s11_monitoring.rs"]
mod s11;
#[path = "s12_adaptive.rs"]
mod s12;

fn header(n: u32, title: &str) -> Instant {
    println!("\n=== Scenario {n}: {title}");
    Instant::now()
}

fn outcome(t: Instant, ok: bool, line: String) -> bool {
    println!(
        "--> {} {line} ({:.1?})",
        if ok { "OK  " } else { "FAIL" },
        t.elapsed()
    );
    ok
}

#[tokio::main]
async fn main() {
    let every = Some(Duration::from_secs(1));
    let mut results = Vec::new();

    let t = header(1, "unbounded buffer leak vs the default bounded buffer");
    let p = s01::Params {
        print_every: every,
        ..s01::Params::quick()
    };
    let r = s01::run(p).await;
    results.push(outcome(
        t,
        r.unbounded.len > 1000 && r.bounded.high_water_len <= r.bounded.max_messages.unwrap_or(0),
        format!(
            "unbounded grew to {} queued; bounded peaked at {}/{} while its producer was slowed to {:.0} msg/s",
            r.unbounded.len,
            r.bounded.high_water_len,
            r.bounded.max_messages.unwrap_or(0),
            r.bounded.sent as f64 / r.bounded.uptime.as_secs_f64()
        ),
    ));

    let t = header(2, "1 MiB payloads: max_bytes bounds memory");
    let p = s02::Params {
        print_every: every,
        ..s02::Params::quick()
    };
    let max_bytes = p.max_bytes;
    let r = s02::run(p).await;
    results.push(outcome(
        t,
        r.stats.high_water_bytes <= max_bytes && r.checksums_ok,
        format!(
            "{} MiB produced, peak queued {:.1} MiB <= max_bytes {} MiB (max_messages 1000); RSS {} MiB; checksums ok: {}",
            r.stats.sent,
            r.stats.high_water_bytes as f64 / (1 << 20) as f64,
            max_bytes >> 20,
            r.rss_bytes.map_or("?".to_string(), |b| (b >> 20).to_string()),
            r.checksums_ok
        ),
    ));

    let t = header(3, "bounded buffer of 10: the producer suspends");
    let r = s03::run(s03::Params {
        print_every: every,
        ..s03::Params::quick()
    })
    .await;
    let n = r.received.len();
    results.push(outcome(
        t,
        r.try_send_full && r.received.windows(2).all(|w| w[0] < w[1]) && r.stats.dropped == 0,
        format!(
            "try_send gave Full: {}; {n} received in order, none lost; producer {:.1?} vs consumer {:.1?}",
            r.try_send_full, r.producer_time, r.consumer_time
        ),
    ));

    let t = header(4, "conflation: latest value, and per key");
    let r = s04::run(s04::Params {
        print_every: None,
        ..s04::Params::quick()
    })
    .await;
    let per_key_ok = r.per_key_last == r.sent_last;
    results.push(outcome(
        t,
        per_key_ok && r.latest_received.last() == Some(&100),
        format!(
            "latest-wins saw {} of 100 values ending at {:?}; global slot kept the final reading of {}/3 sensors, per-key kept {}/3",
            r.latest_received.len(),
            r.latest_received.last(),
            r.sent_last.iter().filter(|(k, v)| r.global_last.get(*k) == Some(v)).count(),
            r.sent_last.iter().filter(|(k, v)| r.per_key_last.get(*k) == Some(v)).count()
        ),
    ));

    let t = header(5, "priority-aware dropping");
    let r = s05::run(s05::Params {
        print_every: every,
        ..s05::Params::quick()
    })
    .await;
    let high_dropped = r.dropped.iter().filter(|m| m.0.1 == s05::HIGH).count();
    results.push(outcome(
        t,
        high_dropped == 0 && r.stats.dropped > 0,
        format!(
            "{} high-priority sent, 0 expected dropped, {high_dropped} dropped; low dropped {} ({} shed, {} outranked)",
            r.high_sent,
            r.dropped.len() - high_dropped,
            r.stats.dropped_by.get(levee_flow::DropReason::Shed),
            r.stats.dropped_by.get(levee_flow::DropReason::Outranked)
        ),
    ));

    let t = header(6, "rate limiting and at most 10 in flight");
    let p = s06::Params {
        print_every: every,
        ..s06::Params::quick()
    };
    let limit = p.max_in_flight;
    let r = s06::run(p).await;
    results.push(outcome(
        t,
        r.failed_sends == 0 && r.peak_in_flight <= limit && r.received == 100,
        format!(
            "{} sent in {:.1?}, peak in flight {} (limit {limit}), failed {}",
            r.stats.sent, r.produce_time, r.peak_in_flight, r.failed_sends
        ),
    ));

    let t = header(7, "batch processing");
    let r = s07::run(s07::Params {
        print_every: None,
        ..s07::Params::quick()
    })
    .await;
    let sizes: Vec<usize> = r.batches.iter().map(Vec::len).collect();
    results.push(outcome(
        t,
        sizes.iter().sum::<usize>() == 95,
        format!("batch sizes {sizes:?} (final partial batch delivered)"),
    ));

    let t = header(8, "circuit breaker");
    let r = s08::run(s08::Params::quick()).await;
    results.push(outcome(
        t,
        r.breaker.opened >= 1 && r.breaker.closed_again >= 1,
        format!(
            "transitions {:?}; {} failed, {} refused while open",
            r.transitions, r.failed, r.refused
        ),
    ));

    let t = header(9, "real-time log processing, 3 consumers, drop when full");
    let r = s09::run(s09::Params {
        print_every: every,
        ..s09::Params::quick()
    })
    .await;
    results.push(outcome(
        t,
        r.stats.sent == r.stats.received + r.stats.dropped && r.per_consumer.iter().all(|n| *n > 0),
        format!(
            "sent {} = received {} + dropped {}; per consumer {:?}",
            r.stats.sent, r.stats.received, r.stats.dropped, r.per_consumer
        ),
    ));

    let t = header(10, "sensor data with alerts");
    let r = s10::run(s10::Params::quick()).await;
    results.push(outcome(
        t,
        r.last_sent.values().all(|d| r.received.contains(d)),
        format!(
            "{} readings analysed ({} conflated), {} temperature / {} humidity alerts; latest of every sensor delivered",
            r.received.len(),
            r.stats.dropped,
            r.temperature_alerts,
            r.humidity_alerts
        ),
    ));

    let t = header(11, "channel monitoring");
    let r = s11::run(s11::Params::quick()).await;
    results.push(outcome(
        t,
        r.snapshots.iter().all(|s| s.balanced()),
        format!("final: {}", r.last),
    ));

    let t = header(12, "adaptive buffer sizing");
    let r = s12::run(s12::Params {
        print: true,
        ..s12::Params::quick()
    })
    .await;
    let in_order = r.received.windows(2).all(|w| w[0] + 1 == w[1]);
    results.push(outcome(
        t,
        in_order && r.peak_capacity > 10,
        format!(
            "{} resizes, capacity 10 -> peak {} -> {}; {} received in order without loss: {in_order}",
            r.resizes.len(),
            r.peak_capacity,
            r.final_capacity,
            r.received.len()
        ),
    ));

    let ok = results.iter().filter(|x| **x).count();
    println!("\n{ok}/{} scenarios OK", results.len());
    if ok != results.len() {
        std::process::exit(1);
    }
}
