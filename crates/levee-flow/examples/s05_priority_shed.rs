//! Scenario 5: priority-aware dropping. A channel of 5; 20 messages every 50 ms, every 5th one
//! high priority; a consumer at 300 ms. When full, the lowest-priority oldest message is evicted
//! for a higher-priority one; high-priority messages are never dropped while low-priority ones
//! are queued; drops are counted by reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_flow::{Config, DropReason, Overflow, Stats, channel};

pub(crate) const HIGH: u8 = 1;
pub(crate) const LOW: u8 = 0;

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    pub capacity: usize,
    pub produce_every: Duration,
    pub consume_every: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 20,
            capacity: 5,
            produce_every: Duration::from_millis(50),
            consume_every: Duration::from_millis(300),
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            messages: 40,
            produce_every: Duration::from_millis(10),
            consume_every: Duration::from_millis(60),
            ..Self::source()
        }
    }
}

/// Dropped messages (id, priority) with the reason.
type DropLog = Vec<((u32, u8), DropReason)>;

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub stats: Stats,
    pub received: Vec<(u32, u8)>,
    pub dropped: Vec<((u32, u8), DropReason)>,
    pub high_sent: usize,
}

pub(crate) async fn run(p: Params) -> Report {
    let dropped: Arc<Mutex<DropLog>> = Arc::default();
    let d = dropped.clone();
    let (tx, rx) = channel(
        Config::<(u32, u8)>::bounded(p.capacity)
            .overflow(Overflow::ShedPriority)
            .priority_by(|m| m.1)
            .on_drop(move |m, r| d.lock().expect("lock").push((m, r))),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s05", e));
    let (n, every) = (p.messages, p.produce_every);
    let producer = tokio::spawn(async move {
        let mut high = 0;
        for i in 0..n {
            let prio = if i % 5 == 0 { HIGH } else { LOW };
            high += usize::from(prio == HIGH);
            tx.send((i, prio)).await.expect("receiver alive");
            tokio::time::sleep(every).await;
        }
        high
    });
    let mut received = Vec::new();
    while let Some(m) = rx.recv().await {
        received.push(m);
        tokio::time::sleep(p.consume_every).await;
    }
    let high_sent = producer.await.expect("producer");
    if let Some(h) = printer {
        h.abort();
    }
    let dropped = dropped.lock().expect("lock").clone();
    Report {
        stats: mon.stats(),
        received,
        dropped,
        high_sent,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    for (m, why) in &r.dropped {
        println!(
            "dropped #{} (priority {}) : {}",
            m.0,
            if m.1 == HIGH { "high" } else { "low" },
            why.name()
        );
    }
    let high_recv = r.received.iter().filter(|m| m.1 == HIGH).count();
    println!(
        "=> high priority: {} sent, {} received, {} dropped; low dropped: {} (shed {}, outranked {})",
        r.high_sent,
        high_recv,
        r.dropped.iter().filter(|m| m.0.1 == HIGH).count(),
        r.dropped.iter().filter(|m| m.0.1 == LOW).count(),
        r.stats.dropped_by.get(DropReason::Shed),
        r.stats.dropped_by.get(DropReason::Outranked)
    );
}
