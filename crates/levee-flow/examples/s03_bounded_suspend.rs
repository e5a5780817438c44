//! Scenario 3: a bounded buffer of 10. The producer suspends when it is full (`send` waits),
//! `try_send` returns `Full(msg)`, nothing is lost, and the producer's throughput equals the
//! consumer's.

use std::time::{Duration, Instant};

use levee_flow::{Config, SendError, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    pub capacity: usize,
    pub consume_every: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 100,
            capacity: 10,
            consume_every: Duration::from_millis(100),
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
    /// A `try_send` while full returned `Full` with the message.
    pub try_send_full: bool,
    /// What the consumer received, in order.
    pub received: Vec<u32>,
    pub producer_time: Duration,
    pub consumer_time: Duration,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(Config::<u32>::bounded(p.capacity)).expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s03", e));
    let n = p.messages;
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let mut probed = false;
        for i in 1..=n {
            if !probed && tx.stats().len == tx.stats().max_messages.unwrap_or(0) {
                match tx.try_send(i) {
                    Err(SendError::Full(back)) => {
                        assert_eq!(back, i);
                        probed = true;
                    }
                    Ok(_) => continue,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            tx.send(i).await.expect("receiver alive");
        }
        (start.elapsed(), probed)
    });
    let every = p.consume_every;
    let mut received = Vec::new();
    while let Some(v) = rx.recv().await {
        received.push(v);
        tokio::time::sleep(every).await;
    }
    let consumer_time = start.elapsed();
    let (producer_time, try_send_full) = producer.await.expect("producer");
    if let Some(h) = printer {
        h.abort();
    }
    Report {
        stats: mon.stats(),
        try_send_full,
        received,
        producer_time,
        consumer_time,
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    println!(
        "=> try_send on a full channel returned Full: {}; received {} of {} in order; producer took {:.1?}, consumer {:.1?} (the producer was paced by the consumer)",
        r.try_send_full,
        r.received.len(),
        r.stats.sent,
        r.producer_time,
        r.consumer_time
    );
}
