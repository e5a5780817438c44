//! Scenario 6: rate limiting. At most 10 sends in flight and a paced producer (msgs/s and
//! bytes/s, each with a burst, via `governor`) into a channel of 50 with a slow consumer:
//! producers are slowed, never failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use levee_flow::{Config, Paced, RateConfig, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    pub capacity: usize,
    pub max_in_flight: usize,
    pub msgs_per_sec: u32,
    pub msg_burst: u32,
    pub bytes_per_sec: u32,
    pub byte_burst: u32,
    pub payload: usize,
    pub consume_every: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 100,
            capacity: 50,
            max_in_flight: 10,
            msgs_per_sec: 100,
            msg_burst: 10,
            bytes_per_sec: 64 * 1024,
            byte_burst: 8 * 1024,
            payload: 512,
            consume_every: Duration::from_millis(200),
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            consume_every: Duration::from_millis(20),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub stats: Stats,
    pub failed_sends: usize,
    pub peak_in_flight: usize,
    pub produce_time: Duration,
    pub received: usize,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(
        Config::<Vec<u8>>::bounded(p.capacity)
            .max_bytes(p.capacity as u64 * p.payload as u64)
            .weigh(),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s06", e));
    let paced = Paced::new(
        tx,
        RateConfig::default()
            .msgs(p.msgs_per_sec, p.msg_burst)
            .bytes(p.bytes_per_sec, p.byte_burst)
            .in_flight(p.max_in_flight),
    )
    .expect("valid rate config");
    let peak = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let every = p.consume_every;
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
            tokio::time::sleep(every).await;
        }
        n
    });
    // Samples the in-flight count while the producer runs.
    let sampler = tokio::spawn({
        let (paced, peak) = (paced.clone(), peak.clone());
        async move {
            loop {
                peak.fetch_max(paced.in_flight(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..p.messages {
        // Like the source: one task per message, holding an in-flight slot while it sends.
        let (paced, failed) = (paced.clone(), failed.clone());
        let payload = vec![7u8; p.payload];
        tasks.push(tokio::spawn(async move {
            let r = paced.send(payload).await;
            if r.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.expect("send task");
    }
    let produce_time = start.elapsed();
    sampler.abort();
    let _ = sampler.await;
    drop(paced);
    let received = consumer.await.expect("consumer");
    if let Some(h) = printer {
        h.abort();
    }
    Report {
        stats: mon.stats(),
        failed_sends: failed.load(Ordering::Relaxed),
        peak_in_flight: peak.load(Ordering::Relaxed),
        produce_time,
        received,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let p = Params::source();
    let r = run(p.clone()).await;
    println!("{}", r.stats);
    println!(
        "=> {} sent in {:.1?} ({:.1} msg/s, limit {}/s), peak in flight {} (limit {}), failed {}, received {}",
        r.stats.sent,
        r.produce_time,
        r.stats.sent as f64 / r.produce_time.as_secs_f64(),
        p.msgs_per_sec,
        r.peak_in_flight,
        p.max_in_flight,
        r.failed_sends,
        r.received
    );
}
