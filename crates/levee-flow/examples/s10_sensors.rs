//! Scenario 10: sensor data. Three sensors report every 100 ms into a per-key conflated channel
//! (latest reading per sensor wins); an analyser (50 ms per reading) raises threshold alerts
//! (temperature > 28, humidity > 75), plus an alert rule on the channel's own stats (the analyser
//! is falling behind when more than half of the readings are conflated away).

use std::collections::BTreeMap;
use std::time::Duration;

use levee_flow::{Config, Stats, channel};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SensorData {
    pub sensor: String,
    pub round: u32,
    pub temperature: f64,
    pub humidity: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub rounds: u32,
    pub sensors: usize,
    pub report_every: Duration,
    pub analyse: Duration,
    pub seed: u64,
    pub print: bool,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            rounds: 100,
            sensors: 3,
            report_every: Duration::from_millis(100),
            analyse: Duration::from_millis(50),
            seed: 7,
            print: true,
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            rounds: 40,
            report_every: Duration::from_millis(20),
            analyse: Duration::from_millis(10),
            print: false,
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub stats: Stats,
    pub received: Vec<SensorData>,
    pub last_sent: BTreeMap<String, SensorData>,
    pub temperature_alerts: usize,
    pub humidity_alerts: usize,
    pub lagging_alerts: usize,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(
        Config::<SensorData>::bounded(p.sensors).conflate_by(|d: &SensorData| d.sensor.clone()),
    )
    .expect("valid config");
    let mon = tx.monitor();
    let q = p.clone();
    let producer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(q.seed);
        let mut last = BTreeMap::new();
        for round in 0..q.rounds {
            for s in 0..q.sensors {
                let d = SensorData {
                    sensor: format!("TEMP_{:02}", s + 1),
                    round,
                    temperature: 20.0 + rng.random::<f64>() * 10.0,
                    humidity: 50.0 + rng.random::<f64>() * 30.0,
                };
                last.insert(d.sensor.clone(), d.clone());
                tx.send(d).await.expect("analyser alive");
            }
            tokio::time::sleep(q.report_every).await;
        }
        last
    });
    let (mut temperature_alerts, mut humidity_alerts, mut lagging_alerts) = (0, 0, 0);
    let mut received = Vec::new();
    let mut next_check = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Some(d) = rx.recv().await {
        if d.temperature > 28.0 {
            temperature_alerts += 1;
            if p.print {
                println!("TEMPERATURE ALERT {} {:.1} C", d.sensor, d.temperature);
            }
        } else if d.humidity > 75.0 {
            humidity_alerts += 1;
            if p.print {
                println!("HUMIDITY ALERT {} {:.1} %", d.sensor, d.humidity);
            }
        } else if p.print {
            println!("ok {} {:.1} C {:.1} %", d.sensor, d.temperature, d.humidity);
        }
        received.push(d);
        if tokio::time::Instant::now() >= next_check {
            next_check += Duration::from_secs(1);
            let s = mon.stats();
            if s.loss_pct > 50.0 {
                lagging_alerts += 1;
                if p.print {
                    println!(
                        "STATS ALERT analyser lagging: {:.0}% of readings conflated",
                        s.loss_pct
                    );
                }
            }
            if p.print {
                println!("[s10] {s}");
            }
        }
        tokio::time::sleep(p.analyse).await;
    }
    let last_sent = producer.await.expect("producer");
    Report {
        stats: mon.stats(),
        received,
        last_sent,
        temperature_alerts,
        humidity_alerts,
        lagging_alerts,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    println!(
        "=> {} readings analysed, {} temperature alerts, {} humidity alerts, {} lagging alerts; latest reading of every sensor delivered: {}",
        r.received.len(),
        r.temperature_alerts,
        r.humidity_alerts,
        r.lagging_alerts,
        r.last_sent.values().all(|d| r.received.contains(d))
    );
}
