//! Failover time of a replicated queue (issue 18's benchmark, run by
//! `scripts/bench-failover.sh`): one producer publishes with confirms at a fixed rate to a
//! `replicas = 3` queue of a running cluster, the queue's leader is killed (by a shell command),
//! and the producer goes on through the same client, which follows the queue to the new leader,
//! sending again, with the same message id, what was not confirmed.
//!
//! Prints one JSON object: `failover_ms` (the gap between the last confirm before the kill
//! command returned — the leader was alive until then — and the first confirm after it: how
//! long confirms stopped), `longest_gap_ms` (between any two confirms), confirm latency p50/p99 before the kill and after recovery
//! (from 2 s after the first confirm past the kill), and the counts.
//!
//! ```sh
//! failover WIRE1,WIRE2,WIRE3 CLUSTER1,CLUSTER2,CLUSTER3 'scripts/cluster.sh kill {node}' \
//!     [RATE=500] [KILL_AFTER_S=5] [RUN_S=15]
//! ```

use std::time::{Duration, Instant};

use levee_client::{Backoff, Client, ClientOptions, Message, ProducerOptions};
use levee_proto::{Durability, Fsync, PublishOutcome, QueueConfig};

const QUEUE: &str = "failover-bench";

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: failover WIRE,.. CLUSTER,.. KILL_CMD [RATE] [KILL_AFTER_S] [RUN_S] \
             (KILL_CMD with {{node}} for the leader's id)"
        );
        std::process::exit(2);
    }
    let wire: Vec<String> = args[1].split(',').map(str::to_string).collect();
    let cluster: Vec<String> = args[2].split(',').map(str::to_string).collect();
    let kill_cmd = args[3].clone();
    let rate = arg(&args, 4, 500).max(1);
    let kill_after = Duration::from_secs(arg(&args, 5, 5));
    let run = Duration::from_secs(arg(&args, 6, 15));

    let opts = ClientOptions {
        reconnect: Some(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
        }),
        ..ClientOptions::default()
    };
    let client = Client::connect_any(&wire, opts).await?;
    let config = QueueConfig {
        durability: Durability::Disk(Fsync::Always),
        replicas: u8::try_from(wire.len())?,
        ..QueueConfig::default()
    };
    client.declare(QUEUE, config).await?;
    let leader = loop {
        if let Some((id, _)) = levee_cluster::admin::serving_node(&cluster, QUEUE).await {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let producer = client.producer(QUEUE, ProducerOptions::default()).await?;

    let start = Instant::now();
    let killed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let k = killed_at.clone();
    let cmd = kill_cmd.replace("{node}", &leader.to_string());
    let killer = tokio::spawn(async move {
        tokio::time::sleep(kill_after).await;
        let ran = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .args(["-c", &cmd])
                .status()
                .map(|s| s.success())
        })
        .await;
        // The command returns once the node is dead (scripts/cluster.sh kill waits for it).
        *k.lock().unwrap() = Some(Instant::now());
        ran
    });

    // (first send, confirm) per message, in µs since `start`.
    let mut done: Vec<(u64, u64)> = Vec::new();
    let (mut resent, mut i) = (0u64, 0u64);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    while start.elapsed() < run {
        let due = start + period * u32::try_from(i)?;
        tokio::time::sleep_until(due.into()).await;
        let sent = start.elapsed().as_micros() as u64;
        loop {
            let m = Message::new(vec![0u8; 1024]).with_message_id(format!("m{i}"));
            match producer.send(m).await {
                Ok(PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. }) => break,
                Ok(other) => return Err(format!("message {i}: {other:?}").into()),
                Err(_) => {
                    resent += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            if start.elapsed() > run + Duration::from_secs(30) {
                return Err(format!("message {i} not confirmed 30 s after the run").into());
            }
        }
        done.push((sent, start.elapsed().as_micros() as u64));
        i += 1;
    }
    let killed = killer.await??.unwrap_or(false);
    let kill = killed_at
        .lock()
        .unwrap()
        .map(|t| t.duration_since(start).as_micros() as u64)
        .ok_or("the kill did not run")?;
    let first_after = done
        .iter()
        .map(|d| d.1)
        .find(|c| *c > kill)
        .ok_or("no confirm after the kill")?;
    let last_before = done
        .iter()
        .map(|d| d.1)
        .filter(|c| *c <= kill)
        .max()
        .ok_or("no confirm before the kill")?;
    let longest_gap = done.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or(0);
    let mut before: Vec<u64> = done
        .iter()
        .filter(|d| d.1 < kill)
        .map(|d| d.1 - d.0)
        .collect();
    let recovered = first_after + 2_000_000;
    let mut after: Vec<u64> = done
        .iter()
        .filter(|d| d.0 > recovered)
        .map(|d| d.1 - d.0)
        .collect();
    let now_serving = levee_cluster::admin::serving_node(&cluster, QUEUE)
        .await
        .map(|s| s.0);
    println!(
        "{}",
        serde_json::json!({
            "rate": rate,
            "killed_leader": leader,
            "kill_ok": killed,
            "new_leader": now_serving,
            "failover_ms": (first_after - last_before) as f64 / 1000.0,
            "longest_gap_ms": longest_gap as f64 / 1000.0,
            "confirmed": done.len(),
            "resent": resent,
            "before_p50_ms": percentile(&mut before, 0.5),
            "before_p99_ms": percentile(&mut before, 0.99),
            "after_p50_ms": percentile(&mut after, 0.5),
            "after_p99_ms": percentile(&mut after, 0.99),
        })
    );
    Ok(())
}
