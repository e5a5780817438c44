//! The echo target: no broker. Each queue is a bounded in-process channel (`--credit` slots);
//! producer tasks send their stamped payloads into it and count each as confirmed at once,
//! consumer tasks take them out (consumers of one queue share its receiver) and count each as
//! acked. What it measures is the harness's own floor — the pacer, the tokio task wake-ups
//! between a producer and a consumer, the recording — so that a broker's figures can be read
//! against it (`--target echo`, or `--calibrate` before any target).
//!
//! Invariant: same pacing, stamps, counters and recorders as every other target; only the
//! transport differs.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

use crate::bench::args::BenchArgs;
use crate::bench::driver::{Ctx, Prepared, Worker};

/// Prepares an echo run.
pub(crate) async fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..args.queues {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(args.credit as usize);
        senders.push(tx);
        receivers.push(Arc::new(Mutex::new(rx)));
    }
    let mut consumers: Vec<Worker> = Vec::new();
    for i in 0..args.consumers {
        let rx = receivers[i % args.queues].clone();
        consumers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let mut rec = ctx.recorder();
                let mut pacer = ctx.consumer_pacer();
                loop {
                    let next = tokio::select! {
                        m = async { rx.lock().await.recv().await } => m,
                        _ = ctx.wait_stop() => break,
                    };
                    let Some(payload) = next else { break };
                    ctx.on_received(&mut rec, &payload);
                    if pacer.tick(&ctx).await.is_none() {
                        break;
                    }
                    ctx.on_acked();
                }
                Ok(Some(rec))
            })
        }));
    }
    let mut producers: Vec<Worker> = Vec::new();
    for i in 0..args.producers {
        let tx = senders[i % args.queues].clone();
        producers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let mut pacer = ctx.producer_pacer();
                while let Some(t) = pacer.tick(&ctx).await {
                    let payload = ctx.payload(t);
                    tokio::select! {
                        r = tx.send(payload) => if r.is_err() { break },
                        _ = ctx.wait_stop() => break,
                    }
                    ctx.on_published();
                    ctx.on_confirm(true);
                }
                Ok(None)
            })
        }));
    }
    drop(senders);
    Ok(Prepared {
        consumers,
        producers,
        cleanup: Box::pin(async { Ok(()) }),
        version: "echo (in-process, no broker)".into(),
        server_pid: None,
    })
}
