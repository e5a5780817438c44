//! Scenario 11: channel monitoring. A channel of 10 (drop newest when full), 1,000 messages every
//! 10 ms, a consumer at 50 ms, and live stats every second: sent / received / dropped with
//! per-second rates over a sliding window and the loss %.

use std::time::Duration;

use levee_flow::{Config, Overflow, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    pub capacity: usize,
    pub produce_every: Duration,
    pub consume_every: Duration,
    pub sample_every: Duration,
    pub print: bool,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 1_000,
            capacity: 10,
            produce_every: Duration::from_millis(10),
            consume_every: Duration::from_millis(50),
            sample_every: Duration::from_secs(1),
            print: true,
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            messages: 300,
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)] // Fields read by tests/scenarios.rs, which includes this file.
pub(crate) struct Report {
    /// One snapshot per sampling period.
    pub snapshots: Vec<Stats>,
    pub last: Stats,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(
        Config::<u32>::bounded(p.capacity)
            .overflow(Overflow::DropNewest)
            .rate_window(p.sample_every * 3),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let (n, every) = (p.messages, p.produce_every);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for i in 0..n {
            tick.tick().await;
            tx.send(i).await.expect("consumer alive");
        }
    });
    let ce = p.consume_every;
    let consumer = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(ce).await;
        }
    });
    let mut snapshots = Vec::new();
    let mut tick = tokio::time::interval(p.sample_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = mon.stats();
                if p.print {
                    println!(
                        "sent {} ({:.2}/s) | received {} ({:.2}/s) | dropped {} ({:.2}/s) | loss {:.2}% | queued {}",
                        s.sent, s.send_rate, s.received, s.recv_rate, s.dropped, s.drop_rate, s.loss_pct, s.len
                    );
                }
                snapshots.push(s);
            }
            _ = mon.closed() => break,
        }
    }
    consumer.await.expect("consumer");
    Report {
        snapshots,
        last: mon.stats(),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("final: {}", r.last);
}
