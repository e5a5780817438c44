//! Scenario 1: unbounded buffer leak. A producer (1 msg/ms) and a consumer (1 msg/100 ms) for
//! 5 s: an explicitly unbounded channel grows ~5,000 deep and its stats say so; the default
//! bounded channel stays at its limit while the producer is slowed to the consumer's pace.

use std::time::Duration;

use levee_flow::{Config, Receiver, Sender, Stats, channel};

/// Timings and sizes.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub produce_every: Duration,
    pub consume_every: Duration,
    pub duration: Duration,
    pub bounded_capacity: usize,
    pub print_every: Option<Duration>,
}

impl Params {
    /// The source's timings.
    pub(crate) fn source() -> Self {
        Params {
            produce_every: Duration::from_millis(1),
            consume_every: Duration::from_millis(100),
            duration: Duration::from_secs(5),
            bounded_capacity: 64,
            print_every: Some(Duration::from_secs(1)),
        }
    }
    /// Shortened for the scenario tour.
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            duration: Duration::from_secs(2),
            ..Self::source()
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub unbounded: Stats,
    pub bounded: Stats,
}

async fn drive(tx: Sender<u64>, rx: Receiver<u64>, p: &Params, label: &str) -> Stats {
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer(label, e));
    let producer = tokio::spawn({
        let every = p.produce_every;
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            loop {
                tick.tick().await;
                if tx.send(i).await.is_err() {
                    return;
                }
                i += 1;
            }
        }
    });
    let consumer = tokio::spawn({
        let every = p.consume_every;
        async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(every).await;
            }
        }
    });
    tokio::time::sleep(p.duration).await;
    let stats = mon.stats();
    producer.abort();
    consumer.abort();
    if let Some(h) = printer {
        h.abort();
    }
    stats
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = levee_flow::unbounded::<u64>();
    let unbounded = drive(tx, rx, &p, "s01 unbounded").await;
    let (tx, rx) = channel(Config::bounded(p.bounded_capacity)).expect("valid config");
    let bounded = drive(tx, rx, &p, "s01 bounded").await;
    Report { unbounded, bounded }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("unbounded: {}", r.unbounded);
    println!("bounded:   {}", r.bounded);
    println!(
        "=> unbounded queue grew to {} messages; bounded stayed <= {} (peak {}) and the producer was slowed to {:.1} msg/s",
        r.unbounded.len,
        r.bounded.max_messages.unwrap_or(0),
        r.bounded.high_water_len,
        r.bounded.sent as f64 / r.bounded.uptime.as_secs_f64()
    );
}
