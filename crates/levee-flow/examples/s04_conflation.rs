//! Scenario 4: conflation, latest value only. (a) A capacity-1 "latest wins" channel: a fast
//! producer (1..=100 every 10 ms) and a slow consumer (500 ms) see only recent values, and the
//! last value is always delivered. (b) Beyond the source: three sensors on one global slot lose
//! two of the three sensors' readings; per-key conflation keeps the latest reading of every one.

use std::collections::BTreeMap;
use std::time::Duration;

use levee_flow::{Config, DropReason, Overflow, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub values: u32,
    pub produce_every: Duration,
    pub consume_every: Duration,
    pub sensors: usize,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            values: 100,
            produce_every: Duration::from_millis(10),
            consume_every: Duration::from_millis(500),
            sensors: 3,
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            consume_every: Duration::from_millis(100),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// (a): values the consumer saw, and the stats.
    pub latest_received: Vec<u32>,
    pub latest_stats: Stats,
    /// (b): last reading received per sensor with one global slot, and with per-key slots.
    pub global_last: BTreeMap<String, u32>,
    pub per_key_last: BTreeMap<String, u32>,
    /// The last reading each sensor sent.
    pub sent_last: BTreeMap<String, u32>,
    pub per_key_stats: Stats,
}

type Reading = (String, u32);

async fn sensors(
    global: bool,
    p: &Params,
) -> (BTreeMap<String, u32>, BTreeMap<String, u32>, Stats) {
    let cfg = if global {
        Config::<Reading>::bounded(1).overflow(Overflow::Conflate)
    } else {
        Config::<Reading>::bounded(p.sensors).conflate_by(|r: &Reading| r.0.clone())
    };
    let (tx, rx) = channel(cfg).expect("valid config");
    let mon = tx.monitor();
    let (n, k, every) = (p.values, p.sensors, p.produce_every);
    let producer = tokio::spawn(async move {
        let mut last = BTreeMap::new();
        for i in 1..=n {
            for s in 0..k {
                let id = format!("TEMP_{:02}", s + 1);
                last.insert(id.clone(), i);
                tx.send((id, i)).await.expect("receiver alive");
            }
            tokio::time::sleep(every).await;
        }
        last
    });
    let mut got = BTreeMap::new();
    while let Some((id, v)) = rx.recv().await {
        got.insert(id, v);
        tokio::time::sleep(p.consume_every).await;
    }
    (got, producer.await.expect("producer"), mon.stats())
}

pub(crate) async fn run(p: Params) -> Report {
    // (a) capacity-1 latest wins.
    let (tx, rx) = channel(Config::<u32>::bounded(1).overflow(Overflow::Conflate)).expect("valid");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s04 latest", e));
    let (n, every) = (p.values, p.produce_every);
    tokio::spawn(async move {
        for i in 1..=n {
            tx.send(i).await.expect("receiver alive");
            tokio::time::sleep(every).await;
        }
    });
    let mut latest_received = Vec::new();
    while let Some(v) = rx.recv().await {
        latest_received.push(v);
        tokio::time::sleep(p.consume_every).await;
    }
    if let Some(h) = printer {
        h.abort();
    }
    let latest_stats = mon.stats();
    // (b) three sensors: one global slot vs per-key.
    let (global_last, _, _) = sensors(true, &p).await;
    let (per_key_last, sent_last, per_key_stats) = sensors(false, &p).await;
    Report {
        latest_received,
        latest_stats,
        global_last,
        per_key_last,
        sent_last,
        per_key_stats,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("latest-wins: received {:?}", r.latest_received);
    println!("latest-wins: {}", r.latest_stats);
    println!(
        "one global slot: last reading per sensor {:?} (sensors whose final reading was lost: {})",
        r.global_last,
        r.sent_last
            .iter()
            .filter(|(k, v)| r.global_last.get(*k) != Some(v))
            .count()
    );
    println!(
        "per-key slots:   last reading per sensor {:?} (sent {:?})",
        r.per_key_last, r.sent_last
    );
    println!(
        "per-key: {} ({} conflated)",
        r.per_key_stats,
        r.per_key_stats.dropped_by.get(DropReason::Conflated)
    );
}
