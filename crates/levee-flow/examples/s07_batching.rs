//! Scenario 7: batch processing. Receive up to N messages or until a timeout, whichever comes
//! first; the final partial batch is delivered when the producer closes; publish in batches too.

use std::time::Duration;

use levee_flow::{Config, Stats, channel};

#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub messages: u32,
    pub produce_every: Duration,
    /// Publish in batches of this size (1 = one by one).
    pub publish_batch: usize,
    pub batch: usize,
    pub batch_timeout: Duration,
    pub process_batch: Duration,
    pub print_every: Option<Duration>,
}

impl Params {
    pub(crate) fn source() -> Self {
        Params {
            messages: 100,
            produce_every: Duration::from_millis(10),
            publish_batch: 1,
            batch: 10,
            batch_timeout: Duration::from_millis(200),
            process_batch: Duration::from_millis(500),
            print_every: Some(Duration::from_secs(1)),
        }
    }
    #[allow(dead_code)] // Used by tests/scenarios.rs, which includes this file.
    pub(crate) fn quick() -> Self {
        Params {
            messages: 95,
            process_batch: Duration::from_millis(50),
            publish_batch: 5,
            ..Self::source()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub batches: Vec<Vec<u32>>,
    pub stats: Stats,
}

pub(crate) async fn run(p: Params) -> Report {
    let (tx, rx) = channel(Config::<u32>::bounded(1_000)).expect("valid config");
    let mon = tx.monitor();
    let printer = p.print_every.map(|e| mon.spawn_printer("s07", e));
    let (n, every, pb) = (p.messages, p.produce_every, p.publish_batch.max(1));
    tokio::spawn(async move {
        let all: Vec<u32> = (0..n).collect();
        for chunk in all.chunks(pb) {
            tx.send_batch(chunk.iter().copied())
                .await
                .expect("receiver alive");
            tokio::time::sleep(every * chunk.len() as u32).await;
        }
    });
    let mut batches = Vec::new();
    while let Some(b) = rx.recv_batch(p.batch, p.batch_timeout).await {
        if b.is_empty() {
            continue;
        }
        if p.print_every.is_some() {
            println!("Batch processing: {b:?}");
        }
        batches.push(b);
        tokio::time::sleep(p.process_batch).await;
    }
    if let Some(h) = printer {
        h.abort();
    }
    Report {
        batches,
        stats: mon.stats(),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let r = run(Params::source()).await;
    println!("{}", r.stats);
    println!(
        "=> {} batches, sizes {:?}",
        r.batches.len(),
        r.batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
}
