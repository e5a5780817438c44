//! Scenario 12: adaptive buffer sizing. Capacity grows x1.5 when measured utilisation is above
//! 80 % and shrinks x0.7 below 30 %, within 10..1000, from the channel's real length (not a
//! random number as in the source), and a resize never loses, duplicates or reorders a message.
//! Load: a burst phase (producer faster than the consumer), then a calm phase.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_flow::{AdaptiveConfig, Config, Resize, Stats, channel, spawn_adaptive};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub burst_messages: u32,
    pub calm_messages: u32,
    /// Producer pause in the calm phase.
    pub calm_every: Duration,
    pub consume_every: Duration,
    pub sample_every: Duration,
    pub min: usize,
    pub max: usize,
    pub print: bool,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            burst_messages: 3_000,
            calm_messages: 100,
            calm_every: Duration::from_millis(50),
            consume_every: Duration::from_millis(1),
            sample_every: Duration::from_millis(50),
            min: 10,
            max: 1_000,
            print: true,
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            burst_messages: 1_500,
            calm_messages: 80,
            calm_every: Duration::from_millis(25),
            sample_every: Duration::from_millis(20),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub resizes: Vec<Resize>,
    pub received: Vec<u32>,
    pub peak_capacity: usize,
    pub final_capacity: usize,
    pub stats: Stats,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(Config::<u32>::bounded(p.min)).expect("valid config");
    let mon = tx.monitor();
    let resizes = Arc::new(Mutex::new(Vec::new()));
    let r = resizes.clone();
    let print = p.print;
    let controller = spawn_adaptive(
        &mon,
        AdaptiveConfig::new(p.min, p.max),
        p.sample_every,
        move |x: Resize| {
            if print {
                let dir = if x.to > x.from { "grow" } else { "shrink" };
                println!("buffer {dir}: {} -> {}", x.from, x.to);
            }
            r.lock().expect("lock").push(x);
        },
    )
    .expect("valid adaptive config");
    let q = p.clone();
    let producer = tokio::spawn(async move {
        // Burst: as fast as the channel lets us (Block policy: we wait when full).
        for i in 0..q.burst_messages {
            tx.send(i).await.expect("consumer alive");
        }
        // Calm: far slower than the consumer.
        for i in q.burst_messages..q.burst_messages + q.calm_messages {
            tx.send(i).await.expect("consumer alive");
            tokio::time::sleep(q.calm_every).await;
        }
    });
    let mut received = Vec::new();
    let mut peak_capacity = p.min;
    while let Some(v) = rx.recv().await {
        received.push(v);
        if let Some(c) = mon.stats().max_messages {
            peak_capacity = peak_capacity.max(c);
        }
        // The consumer is slow only during the burst.
        if v < p.burst_messages {
            tokio::time::sleep(p.consume_every).await;
        }
    }
    producer.await.expect("producer");
    let _ = controller.await;
    let stats = mon.stats();
    let resizes = resizes.lock().expect("lock").clone();
    Report {
        final_capacity: stats.max_messages.unwrap_or(0),
        peak_capacity,
        resizes,
        received,
        stats,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    let in_order = r.received.windows(2).all(|w| w[0] + 1 == w[1]);
    println!(
        "=> {} resizes, capacity peaked at {} and ended at {}; {} messages received, in order without gaps or duplicates: {}",
        r.resizes.len(),
        r.peak_capacity,
        r.final_capacity,
        r.received.len(),
        in_order
    );
}
