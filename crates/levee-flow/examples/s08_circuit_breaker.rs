//! Scenario 8: circuit breaker. Producers send through a breaker; from message 11 on the
//! downstream "overloads" (fails). 5 consecutive failures open the breaker, calls are refused
//! without running; after the open timeout it half-opens and lets a probe through; once the
//! downstream has recovered, a successful probe closes it. The breaker is shared by two
//! producer tasks on a multi-threaded runtime (the source's breaker is not thread-safe), and
//! its state is visible in its stats.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use levee_flow::{
    BreakerConfig, BreakerError, BreakerState, BreakerStats, CircuitBreaker, Config, Stats, channel,
};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    /// Sends with an index above this fail until `recover_after` has elapsed since the first
    /// failure (the downstream recovers).
    pub fail_above: u32,
    pub recover_after: Duration,
    pub send_every: Duration,
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub print: bool,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 60,
            fail_above: 10,
            recover_after: Duration::from_secs(4),
            send_every: Duration::from_millis(200),
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            print: true,
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            recover_after: Duration::from_millis(800),
            send_every: Duration::from_millis(50),
            open_for: Duration::from_millis(1000),
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub breaker: BreakerStats,
    pub channel: Stats,
    /// Distinct breaker states in the order they were observed.
    pub transitions: Vec<BreakerState>,
    pub refused: u32,
    pub failed: u32,
}

pub(crate) async fn run(p: Params) -> Report {
    let breaker = CircuitBreaker::new(BreakerConfig::new(p.failure_threshold, p.open_for))
        .expect("valid breaker config");
    let (tx, rx) = channel(Config::<u32>::bounded(10)).expect("valid config");
    let mon = tx.monitor();
    let consumer = tokio::spawn(async move {
        let mut n = 0u32;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let first_failure: Arc<OnceLock<Instant>> = Arc::default();
    let transitions = Arc::new(parking_lot::Mutex::new(vec![BreakerState::Closed]));
    let mut producers = Vec::new();
    for w in 0..2u32 {
        let (breaker, tx, first_failure, transitions) = (
            breaker.clone(),
            tx.clone(),
            first_failure.clone(),
            transitions.clone(),
        );
        let p = p.clone();
        producers.push(tokio::spawn(async move {
            let (mut refused, mut failed) = (0u32, 0u32);
            for i in (w..p.messages).step_by(2) {
                let r = breaker
                    .call(async {
                        if i > p.fail_above {
                            let t0 = *first_failure.get_or_init(Instant::now);
                            if t0.elapsed() < p.recover_after {
                                return Err("system overloaded");
                            }
                        }
                        tx.send(i).await.map_err(|_| "channel closed")?;
                        Ok(())
                    })
                    .await;
                match r {
                    Ok(()) => {}
                    Err(BreakerError::Open) => refused += 1,
                    Err(_) => failed += 1,
                }
                let st = breaker.state();
                {
                    let mut t = transitions.lock();
                    if t.last() != Some(&st) {
                        if p.print {
                            println!("Circuit breaker: {st} (after message {i})");
                        }
                        t.push(st);
                    }
                }
                tokio::time::sleep(p.send_every * 2).await;
            }
            (refused, failed)
        }));
        tokio::time::sleep(p.send_every).await;
    }
    drop(tx);
    let (mut refused, mut failed) = (0, 0);
    for h in producers {
        let (r, f) = h.await.expect("producer");
        refused += r;
        failed += f;
    }
    consumer.await.expect("consumer");
    let report = Report {
        breaker: breaker.stats(),
        channel: mon.stats(),
        transitions: transitions.lock().clone(),
        refused,
        failed,
    };
    if p.print {
        println!("breaker: {:?}", report.breaker);
    }
    report
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.channel);
    println!(
        "=> transitions {:?}; failed {}, refused while open {}, opened {} time(s), closed again {} time(s)",
        r.transitions, r.failed, r.refused, r.breaker.opened, r.breaker.closed_again
    );
}
