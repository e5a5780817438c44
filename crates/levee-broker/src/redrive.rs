//! Redrive: moving ready messages from one queue to another ([`move_messages`]), as SQS's
//! dead-letter redrive or a RabbitMQ shovel do, without loss and without duplicates across a
//! crash.
//!
//! The mover is an in-process consumer of the source (a subscription of its own, fed like any
//! consumer by the queue core) and an in-process producer of the target. Per batch (at most
//! [`BATCH`] messages): take the batch from the source (credit, then credit taken back), publish
//! it to the target and wait for its confirms (durable under the target's fsync policy), then
//! ack in the source exactly the messages the target stored. A message the target did not store
//! (full, refused) goes back to the source unchanged (its delivery count restored) and the move
//! stops there. The next batch starts only when the previous one is settled: the move is paced
//! by the target's confirms. The pass ends when a batch comes back empty while the source has
//! no ready message left; ready messages still waiting for their fsync (which no consumer gets
//! before it) are waited for, up to `DURABLE_WAIT` in all, so a move right after messages
//! arrived (just dead-lettered, say) does not end before them.
//!
//! # Crash safety
//! A message is settled in the source only after the target stored it, so a crash loses
//! nothing; a crash between the target's store and the source's ack would leave it in both, so
//! every moved message carries a message id (its own, or `levee-move:{source}:{seq}` if it had
//! none) and a repeated move is answered `Duplicate` by the target's dedup window (on by
//! default) and only settled in the source.
//!
//! # Matching a header
//! With a header filter, messages without that header value are passed over: the mover keeps
//! them (leased to it, not delivered anywhere, no ack deadline) until its single pass over the
//! ready messages ends, then hands them all back unchanged, in their places. Meanwhile no other
//! consumer sees them; a pass over a large queue holds that many leases (their tags only).

use std::time::Duration;

use bytes::Bytes;
use levee_proto::{Delivery, PublishOutcome, ServerFrame};

use crate::actor::Cmd;
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::outbox::conn_channel;
use crate::queue::core::SettleKind;

/// Most messages moved per batch.
pub const BATCH: u32 = 256;

/// How long in all a move waits for ready messages that are not yet durable (the source hands a
/// message to no consumer, the mover included, before its fsync), before it ends the pass.
const DURABLE_WAIT: Duration = Duration::from_secs(2);

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Messages now in the target and settled in the source.
    pub moved: u64,
    /// Why the move stopped before `max` or the end of the source's ready messages, if it did.
    pub stopped: Option<String>,
}

/// Moves up to `max` (all when `None`) ready messages of `from` to `to`. See the module
/// documentation.
pub async fn move_messages(
    broker: &Broker,
    from: &str,
    to: &str,
    max: Option<u64>,
) -> Result<Moved, BrokerError> {
    move_matching(broker, from, to, max, None).await
}

/// [`move_messages`], only the messages whose header `name` has value `value` (the others stay,
/// in their places).
pub async fn move_matching(
    broker: &Broker,
    from: &str,
    to: &str,
    max: Option<u64>,
    header: Option<(&str, &[u8])>,
) -> Result<Moved, BrokerError> {
    if from == to {
        return Err(BrokerError::Proto(levee_proto::ProtoError::InvalidConfig {
            field: "to",
            reason: "a queue cannot move messages to itself".into(),
        }));
    }
    let src = broker.sender(from)?;
    broker.sender(to)?;
    let gone = || BrokerError::UnknownQueue(from.to_string());
    let sub = broker.next_id();
    let (tx, mut rx) = conn_channel(crate::http::session::SESSION_OUTBOX);
    src.send(Cmd::Subscribe {
        consumer: sub,
        auto_ack: false,
        credit: 0,
        priority: 0,
        conn: tx.clone(),
    })
    .map_err(|_| gone())?;
    let mut moved = 0u64;
    let mut stopped = None;
    // Passed over (not matching the header), handed back when the pass ends.
    let mut skipped: Vec<u64> = Vec::new();
    let mut waited = Duration::ZERO;
    let result = async {
        loop {
            let want = max.map_or(u64::from(BATCH), |m| (m - moved).min(u64::from(BATCH)));
            if want == 0 {
                break;
            }
            src.send(Cmd::Credit(sub, want as u32))
                .map_err(|_| gone())?;
            barrier(&src, from).await?;
            src.send(Cmd::SetCredit(sub, 0)).map_err(|_| gone())?;
            barrier(&src, from).await?;
            let mut batch: Vec<Delivery> = Vec::new();
            while let Some(f) = rx.try_recv() {
                if let ServerFrame::Deliver { deliveries } = f {
                    batch.extend(deliveries);
                }
            }
            if batch.is_empty() {
                // Ready messages that were not handed out are waiting for their fsync (a
                // message just dead-lettered into the source, say): wait for them, bounded.
                if waited < DURABLE_WAIT && ready(&src, from).await? > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    waited += Duration::from_millis(2);
                    continue;
                }
                break; // nothing ready
            }
            if let Some((name, value)) = header {
                let (keep, pass): (Vec<Delivery>, Vec<Delivery>) =
                    batch.into_iter().partition(|d| {
                        d.message
                            .headers
                            .iter()
                            .any(|(n, v)| n == name && v.as_ref() == value)
                    });
                skipped.extend(pass.iter().map(|d| d.tag));
                batch = keep;
                if batch.is_empty() {
                    continue;
                }
            }
            let messages = batch
                .iter()
                .map(|d| {
                    let mut m = d.message.clone();
                    if m.message_id.is_none() {
                        m.message_id = Some(Bytes::from(format!("levee-move:{from}:{}", d.seq)));
                    }
                    m
                })
                .collect();
            let outcomes = match crate::http::session::publish(broker, to, messages).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = src.send(Cmd::Unsent(sub, batch.iter().map(|d| d.tag).collect()));
                    stopped = Some(e.to_string());
                    break;
                }
            };
            let mut acks = Vec::new();
            let mut back = Vec::new();
            for (d, o) in batch.iter().zip(&outcomes) {
                match o {
                    PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. } => {
                        acks.push(d.tag);
                    }
                    other => {
                        if stopped.is_none() {
                            stopped =
                                Some(format!("target {to} did not store a message: {other:?}"));
                        }
                        back.push(d.tag);
                    }
                }
            }
            if !back.is_empty() {
                let _ = src.send(Cmd::Unsent(sub, back));
            }
            let (reply, done) = tokio::sync::oneshot::channel();
            src.send(Cmd::SettleChecked {
                consumer: sub,
                how: SettleKind::Ack,
                tags: acks.clone(),
                reply,
            })
            .map_err(|_| gone())?;
            let unknown = done.await.map_err(|_| gone())?;
            moved += (acks.len() - unknown.len()) as u64;
            if stopped.is_some() {
                break;
            }
            // Yield between batches: other work on both queues goes on.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<(), BrokerError>(())
    }
    .await;
    if !skipped.is_empty() {
        let _ = src.send(Cmd::Unsent(sub, skipped));
    }
    let _ = src.send(Cmd::Unsubscribe(sub));
    result?;
    Ok(Moved { moved, stopped })
}

/// The source's ready messages now.
async fn ready(
    qtx: &tokio::sync::mpsc::UnboundedSender<Cmd>,
    queue: &str,
) -> Result<u64, BrokerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    qtx.send(Cmd::Inspect(tx))
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
    rx.await
        .map(|info| info.stats.ready)
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))
}

async fn barrier(
    qtx: &tokio::sync::mpsc::UnboundedSender<Cmd>,
    queue: &str,
) -> Result<(), BrokerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    qtx.send(Cmd::Barrier(tx))
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
    rx.await
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))
}
