//! The RabbitMQ target (AMQP 0-9-1 via `lapin`): a fresh durable quorum or classic queue on the
//! default exchange, persistent messages (`delivery_mode` 2), publisher confirms
//! (`confirm.select`) with a window of `--inflight` per producer, consumers with `basic.qos`
//! prefetch `--credit` and one manual ack per delivery. `--max-bytes` / `--max-messages` map to
//! `x-max-length-bytes` / `x-max-length`, the overflow policy to `x-overflow` (`block` and
//! `reject` to `reject-publish`, `drop-oldest` to `drop-head`). One connection per worker.
//! With `--queues N`, producer i publishes to queue i mod N and consumer j consumes from queue
//! j mod N.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, PublisherConfirm};
use levee_client::Overflow;

use super::queue_names;
use crate::bench::args::{BenchArgs, RabbitQueue};
use crate::bench::driver::{Ctx, Prepared, Worker};

/// Default AMQP URI.
pub(crate) const DEFAULT_URI: &str = "amqp://127.0.0.1:5672/%2f";

async fn connect(uri: &str) -> anyhow::Result<Connection> {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {uri}"))
}

/// The `queue.declare` arguments for these flags.
pub(crate) fn declare_args(args: &BenchArgs) -> FieldTable {
    let mut t = FieldTable::default();
    let kind = match args.rabbit_queue {
        RabbitQueue::Quorum => "quorum",
        RabbitQueue::Classic => "classic",
    };
    t.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    if let Some(b) = args.max_bytes {
        t.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(b.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(m) = args.max_messages {
        t.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(m.min(i64::MAX as u64) as i64),
        );
    }
    if args.max_bytes.is_some() || args.max_messages.is_some() {
        let o = match args.overflow {
            Overflow::DropOldest => "drop-head",
            _ => "reject-publish",
        };
        t.insert("x-overflow".into(), AMQPValue::LongString(o.into()));
    }
    t
}

/// Prepares a RabbitMQ run.
pub(crate) async fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    let uri = args.server.clone().unwrap_or_else(|| DEFAULT_URI.into());
    let queues = queue_names(args);
    let admin = connect(&uri).await?;
    // lapin does not expose the server's properties; scripts/peers.sh reports the version.
    let version = "rabbitmq".to_string();
    let ch = admin.create_channel().await?;
    for queue in &queues {
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            declare_args(args),
        )
        .await
        .with_context(|| format!("declaring queue {queue}"))?;
    }

    let mut consumers: Vec<Worker> = Vec::new();
    for i in 0..args.consumers {
        let (uri, queue, credit) = (uri.clone(), queues[i % queues.len()].clone(), args.credit);
        consumers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let conn = connect(&uri).await?;
                let ch = conn.create_channel().await?;
                ch.basic_qos(credit as u16, BasicQosOptions::default())
                    .await?;
                let mut consumer = ch
                    .basic_consume(
                        queue.as_str().into(),
                        format!("bench-consumer-{i}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let mut rec = ctx.recorder();
                let mut pacer = ctx.consumer_pacer();
                loop {
                    let next = tokio::select! {
                        d = consumer.next() => d,
                        _ = ctx.wait_stop() => break,
                    };
                    let Some(d) = next else { break };
                    let d = d?;
                    ctx.on_received(&mut rec, &d.data);
                    if pacer.tick(&ctx).await.is_none() {
                        break;
                    }
                    d.ack(BasicAckOptions::default()).await?;
                    ctx.on_acked();
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into()))
                    .await;
                Ok(Some(rec))
            })
        }));
    }
    let mut producers: Vec<Worker> = Vec::new();
    for i in 0..args.producers {
        let (uri, queue, inflight) = (uri.clone(), queues[i % queues.len()].clone(), args.inflight);
        producers.push(Box::new(move |ctx: Arc<Ctx>| {
            Box::pin(async move {
                let conn = connect(&uri).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let (tx, mut rx) =
                    tokio::sync::mpsc::channel::<PublisherConfirm>(inflight as usize);
                let c = ctx.clone();
                let confirmer = tokio::spawn(async move {
                    while let Some(f) = rx.recv().await {
                        c.on_confirm(f.await?.is_ack());
                    }
                    anyhow::Ok(())
                });
                let props = BasicProperties::default().with_delivery_mode(2);
                let mut pacer = ctx.producer_pacer();
                while let Some(t) = pacer.tick(&ctx).await {
                    let payload = ctx.payload(t);
                    let confirm = tokio::select! {
                        r = ch.basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &payload,
                            props.clone(),
                        ) => r?,
                        _ = ctx.wait_stop() => break,
                    };
                    ctx.on_published();
                    if tx.send(confirm).await.is_err() {
                        break;
                    }
                }
                drop(tx);
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(3), confirmer).await {
                    r??;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into()))
                    .await;
                Ok(None)
            })
        }));
    }
    let cleanup = Box::pin(async move {
        let mut r = Ok(());
        for queue in &queues {
            if let Err(e) = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                r = Err(anyhow::Error::from(e).context(format!("deleting queue {queue}")));
            }
        }
        let _ = admin.close(200, "bye".into()).await;
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
