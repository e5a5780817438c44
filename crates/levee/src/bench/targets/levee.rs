//! The Levee target: connects to `--server`, or starts `levee serve` (this very binary) on a
//! temporary data directory and loopback ports, reading the bound address from its stdout
//! (`levee: wire listening on ADDR`), and stops it (SIGTERM, then SIGKILL) after the run.
//!
//! One client connection per producer and per consumer. Producers publish through
//! `Producer::publish` (batches of `--batch`, linger `--linger`, window `--inflight`); consumers
//! use `Credit::Fixed(--credit)` and ack every delivery. With `--queues N`, producer i publishes
//! to queue i mod N and consumer j consumes from queue j mod N.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use levee_client::{
    Client, ClientError, ClientOptions, ConfirmFuture, ConsumerOptions, Credit, Message,
    ProducerOptions, PublishOutcome,
};

use super::queue_names;
use crate::bench::args::BenchArgs;
use crate::bench::driver::{Ctx, Prepared, Worker};

/// A `levee serve` child process on a temporary data directory; killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// The wire protocol address it listens on.
    pub addr: String,
    _data: tempfile::TempDir,
}

/// Parses `levee: wire listening on ADDR` out of one stdout line of `levee serve`.
pub(crate) fn parse_listen_line(line: &str) -> Option<&str> {
    line.trim().strip_prefix("levee: wire listening on ")
}

impl Server {
    /// Starts `levee serve` with a fresh data dir on 127.0.0.1, waiting up to 30 s for its
    /// address.
    pub(crate) fn start() -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("locating the levee binary")?;
        let data = tempfile::Builder::new()
            .prefix("levee-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--amqp",
                "off",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .env(
                "LEVEE_LOG",
                std::env::var("LEVEE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `levee serve`")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(a) = parse_listen_line(&line) {
                    let _ = tx.send(a.to_string());
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Server {
                child,
                addr,
                _data: data,
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("`levee serve` did not report its address within 30 s (exit: {status:?})")
            }
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub(crate) fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A client of `addr` (`HOST:PORT`, or for a cluster the nodes comma-separated). Without
/// reconnection (a reconnect would distort the run), except on a cluster (`follow`): there a
/// client follows its queue to the node serving it, which takes reconnecting.
async fn connect(
    addr: &str,
    inflight: u32,
    name: &str,
    access: &crate::cli::Access,
    follow: bool,
) -> anyhow::Result<Client> {
    let opts = access.apply(ClientOptions {
        name: name.into(),
        reconnect: follow.then(levee_client::Backoff::default),
        max_in_flight_messages: inflight.max(16_384),
        ..ClientOptions::default()
    });
    let nodes: Vec<&str> = addr.split(',').map(str::trim).collect();
    Client::connect_any(&nodes, opts)
        .await
        .with_context(|| format!("connecting to levee at {addr}"))
}

/// Prepares a Levee run.
pub(crate) async fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    let server = match &args.server {
        Some(_) => None,
        None => Some(tokio::task::spawn_blocking(Server::start).await??),
    };
    let addr = args
        .server
        .clone()
        .unwrap_or_else(|| server.as_ref().expect("started").addr.clone());
    let server_pid = args.server_pid.or(server.as_ref().map(Server::pid));
    let queues = queue_names(args);
    let follow = args.replicas > 1;
    let admin = connect(
        &addr,
        args.inflight,
        "levee-bench-admin",
        &args.access,
        follow,
    )
    .await?;
    let config = args.levee_config()?;
    for queue in &queues {
        admin
            .declare(queue, config.clone())
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
    }

    let mut consumers: Vec<Worker> = Vec::new();
    for i in 0..args.consumers {
        let (addr, queue, credit, inflight) = (
            addr.clone(),
            queues[i % queues.len()].clone(),
            args.credit,
            args.inflight,
        );
        let access = args.access.clone();
        consumers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let client = connect(
                    &addr,
                    inflight,
                    &format!("bench-consumer-{i}"),
                    &access,
                    follow,
                )
                .await?;
                let opts = ConsumerOptions {
                    credit: Credit::Fixed(credit),
                    ..ConsumerOptions::default()
                };
                let mut consumer = client.consumer(&queue, opts).await?;
                let mut rec = ctx.recorder();
                let mut pacer = ctx.consumer_pacer();
                loop {
                    let next = tokio::select! {
                        d = consumer.next() => d,
                        _ = ctx.wait_stop() => break,
                    };
                    let Some(d) = next else { break };
                    let d = d?;
                    ctx.on_received(&mut rec, d.payload());
                    if pacer.tick(&ctx).await.is_none() {
                        break;
                    }
                    d.ack()?;
                    ctx.on_acked();
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
                Ok(Some(rec))
            })
        }));
    }
    let mut producers: Vec<Worker> = Vec::new();
    for i in 0..args.producers {
        let (addr, queue) = (addr.clone(), queues[i % queues.len()].clone());
        let (batch, inflight, size, linger) = (args.batch, args.inflight, args.size, args.linger());
        let access = args.access.clone();
        producers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let client = connect(
                    &addr,
                    inflight,
                    &format!("bench-producer-{i}"),
                    &access,
                    follow,
                )
                .await?;
                let window_bytes = (u64::from(inflight) * (size + 64)).clamp(64 << 10, 32 << 20);
                let opts = ProducerOptions {
                    batch_size: batch,
                    linger,
                    // As measured for issue 13 (docs/BENCHMARKS.md, shared write-ahead log).
                    adaptive: true,
                    max_in_flight_messages: inflight,
                    max_in_flight_bytes: window_bytes as u32,
                    ..ProducerOptions::default()
                };
                let producer = client.producer(&queue, opts).await?;
                let (tx, mut rx) = tokio::sync::mpsc::channel::<ConfirmFuture>(inflight as usize);
                let c = ctx.clone();
                let confirmer = tokio::spawn(async move {
                    while let Some(f) = rx.recv().await {
                        match f.await {
                            Ok(
                                PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. },
                            ) => {
                                c.on_confirm(true);
                            }
                            Ok(_) | Err(ClientError::Rejected { .. }) => c.on_confirm(false),
                            Err(e) => return Err(anyhow::Error::from(e)),
                        }
                    }
                    Ok(())
                });
                let mut pacer = ctx.producer_pacer();
                while let Some(t) = pacer.tick(&ctx).await {
                    let msg = Message::new(ctx.payload(t));
                    let confirm = tokio::select! {
                        r = producer.publish(msg) => r?,
                        _ = ctx.wait_stop() => break,
                    };
                    ctx.on_published();
                    if tx.send(confirm).await.is_err() {
                        break;
                    }
                }
                drop(tx);
                // Confirms still pending 3 s after the end do not count.
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(3), confirmer).await {
                    r??;
                }
                Ok(None)
            })
        }));
    }
    let cleanup = Box::pin(async move {
        let mut r = Ok(());
        // A replicated queue stays: its deletion would reach only the leader's broker.
        if !follow {
            for q in &queues {
                if let Err(e) = admin.delete(q).await {
                    r = Err(anyhow::Error::from(e).context(format!("deleting queue {q}")));
                }
            }
        }
        let _ = admin.close().await;
        if let Some(s) = server {
            tokio::task::spawn_blocking(move || s.stop()).await?;
        }
        r
    });
    Ok(Prepared {
        consumers,
        producers,
        cleanup,
        version: format!("levee {}", env!("CARGO_PKG_VERSION")),
        server_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_line() {
        assert_eq!(
            parse_listen_line("levee: wire listening on 127.0.0.1:40123\n"),
            Some("127.0.0.1:40123")
        );
        assert_eq!(
            parse_listen_line("levee: http listening on 127.0.0.1:1"),
            None
        );
    }
}
