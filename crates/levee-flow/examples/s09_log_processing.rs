//! Scenario 9: real-time log processing. 10,000 log lines at 1 ms into a buffer of 1,000 that
//! drops when full (counted exactly), three competing consumers, ERROR lines slower to process
//! than INFO lines. At the end `sent = received + dropped`, and the consumers shared the work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use levee_flow::{Config, DropReason, Overflow, Stats, channel};

#[derive(Debug, Clone)]
#[allow(dead_code)] // Fields read by tests/scenarios.rs, which includes this file.
pub(crate) struct LogEntry {
    pub seq: u32,
    pub level: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub lines: u32,
    /// Pause between lines (zero: just yield every 10 lines).
    pub line_every: Duration,
    pub buffer: usize,
    pub consumers: usize,
    pub info_cost: Duration,
    pub error_cost: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            lines: 10_000,
            line_every: Duration::from_millis(1),
            buffer: 1_000,
            consumers: 3,
            info_cost: Duration::from_millis(10),
            error_cost: Duration::from_millis(50),
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            line_every: Duration::ZERO,
            info_cost: Duration::from_millis(1),
            error_cost: Duration::from_millis(5),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub stats: Stats,
    pub per_consumer: Vec<u64>,
    pub errors_processed: u64,
    /// Lines reported to the on_drop hook.
    pub dropped_reported: u64,
}

pub(crate) async fn run(p: Params) -> Report {
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let (tx, rx) = channel(
        Config::<LogEntry>::bounded(p.buffer)
            .overflow(Overflow::DropNewest)
            .on_drop(move |_line, reason| {
                debug_assert_eq!(reason, DropReason::Newest);
                d.fetch_add(1, Ordering::Relaxed);
            }),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s09", e));
    let errors = Arc::new(AtomicU64::new(0));
    let consumers: Vec<_> = (0..p.consumers)
        .map(|_| {
            let (rx, errors) = (rx.clone(), errors.clone());
            let (info, error) = (p.info_cost, p.error_cost);
            tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(line) = rx.recv().await {
                    n += 1;
                    if line.level == "ERROR" {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(error).await;
                    } else {
                        tokio::time::sleep(info).await;
                    }
                }
                n
            })
        })
        .collect();
    drop(rx);
    for i in 0..p.lines {
        let level = if i % 10 == 0 { "ERROR" } else { "INFO" };
        let line = LogEntry {
            seq: i,
            level,
            message: format!("Request {i} processed"),
        };
        tx.send(line).await.expect("consumers alive");
        if p.line_every.is_zero() {
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        } else {
            tokio::time::sleep(p.line_every).await;
        }
    }
    drop(tx);
    let mut per_consumer = Vec::new();
    for c in consumers {
        per_consumer.push(c.await.expect("consumer"));
    }
    if let Some(h) = printer {
        h.abort();
    }
    Report {
        stats: mon.stats(),
        per_consumer,
        errors_processed: errors.load(Ordering::Relaxed),
        dropped_reported: dropped.load(Ordering::Relaxed),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    println!(
        "=> sent {} = received {} + dropped {} (reported to on_drop: {}); per consumer {:?}; ERROR lines processed {}",
        r.stats.sent,
        r.stats.received,
        r.stats.dropped,
        r.dropped_reported,
        r.per_consumer,
        r.errors_processed
    );
}
