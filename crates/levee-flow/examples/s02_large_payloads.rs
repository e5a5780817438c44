//! Scenario 2: overload with large payloads. 10,000 x 1 MiB into a 1,000-message buffer with a
//! consumer at 1/s: a byte limit (`max_bytes`) bounds memory, not just the message count, so
//! what is queued stays near `max_bytes`, never ~1 GiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use levee_flow::{Config, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: usize,
    pub payload: usize,
    pub max_messages: usize,
    pub max_bytes: u64,
    pub consume_every: Duration,
    /// Stop after this long even if not everything was consumed.
    pub duration: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 10_000,
            payload: 1 << 20,
            max_messages: 1_000,
            max_bytes: 32 << 20,
            consume_every: Duration::from_secs(1),
            duration: Duration::from_secs(30),
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            messages: 2_000,
            consume_every: Duration::from_millis(2),
            duration: Duration::from_secs(3),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)] // Fields read by tests/scenarios.rs, which includes this file.
pub(crate) struct Report {
    pub stats: Stats,
    /// Checksums computed by the consumer match the producer's.
    pub checksums_ok: bool,
    pub consumed: usize,
    /// Everything was produced and consumed within `duration`.
    pub finished: bool,
    /// Resident memory of the process at the end (Linux; None elsewhere).
    pub rss_bytes: Option<u64>,
}

fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(
        Config::<Bytes>::bounded(p.max_messages)
            .max_bytes(p.max_bytes)
            .weigh(),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s02", e));
    let (n, size) = (p.messages, p.payload);
    let producer = tokio::spawn(async move {
        for i in 0..n {
            let data = Bytes::from(vec![(i % 256) as u8; size]);
            if tx.send(data).await.is_err() {
                return;
            }
        }
    });
    let every = p.consume_every;
    let bad = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let consumer = tokio::spawn({
        let (bad, consumed) = (bad.clone(), consumed.clone());
        async move {
            while let Some(data) = rx.recv().await {
                let i = consumed.fetch_add(1, Ordering::Relaxed);
                let sum: u64 = data.iter().map(|b| *b as u64).sum();
                if sum != (i % 256) as u64 * data.len() as u64 {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
        }
    });
    let (pa, ca) = (producer.abort_handle(), consumer.abort_handle());
    let finished = tokio::time::timeout(p.duration, async move {
        let _ = producer.await;
        let _ = consumer.await;
    })
    .await
    .is_ok();
    let rss_bytes = rss();
    if !finished {
        // Stopped before the end (the source's consumer alone needs 10,000 s).
        pa.abort();
        ca.abort();
    }
    if let Some(h) = printer {
        h.abort();
    }
    Report {
        stats: mon.stats(),
        checksums_ok: bad.load(Ordering::Relaxed) == 0,
        consumed: consumed.load(Ordering::Relaxed),
        finished,
        rss_bytes,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let p = Params::source();
    let r = run(p.clone()).await;
    println!("{}", r.stats);
    println!(
        "=> peak queued {:.1} MiB (max_bytes {:.1} MiB) although max_messages is {}; RSS at end {} MiB (without the byte limit the source queues up to ~1 GiB)",
        r.stats.high_water_bytes as f64 / (1 << 20) as f64,
        p.max_bytes as f64 / (1 << 20) as f64,
        p.max_messages,
        r.rss_bytes.map_or("?".into(), |b| (b >> 20).to_string())
    );
}
