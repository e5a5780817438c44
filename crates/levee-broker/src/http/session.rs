//! HTTP publishers and consumers as in-process connections of the queue actors: the same queue
//! core, commands and outputs as a TCP connection's, so HTTP messaging has the same limits,
//! overflow policies, confirms, leases and redelivery.
//!
//! - A publish ([`publish`]) is one short-lived producer: it registers (on a `block` queue,
//!   to be granted publish credit: too little credit for the batch answers
//!   [`PublishError::Full`], i.e. 429, since HTTP cannot hold credit), sends the batch, waits for
//!   the `PublishConfirm` (sent only once durable under the queue's fsync policy) and
//!   unregisters.
//! - A receive ([`Sessions::receive`]) borrows an idle session of the queue (a subscription
//!   of its own, with no credit between receives), grants it `max` credit, waits up to `wait` for
//!   a first delivery, takes the credit back (`SetCredit 0`), and starts the deliveries' ack
//!   deadlines (`Written`) as it hands them out. A receipt names the session's subscription and
//!   the delivery tag; settling it is checked by the queue core, which refuses a tag whose lease
//!   ended (returned to the queue at its ack deadline) or that was settled.
//!
//! # Bounds
//! - At most [`MAX_SESSIONS`] sessions per queue (concurrent receives beyond that answer
//!   [`ReceiveError::Busy`], 503); a session holds no message between receives: deliveries it
//!   could not hand out go back to the queue unchanged (`Unsent`). One receive holds at most
//!   `max` ≤ [`MAX_RECEIVE`] messages and its outbox at most [`SESSION_OUTBOX`] bytes (plus one
//!   message). Leases themselves are the queue core's unacked deliveries (bounded by the queue's
//!   limits, ended by its ack timeout).
//! - A publish holds one batch (bounded by the request body limit) until its confirm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_proto::{Delivery, Message, Overflow, PublishOutcome, ServerFrame};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::actor::{Cmd, ConfirmTo, InFlight};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::outbox::{ConnRx, ConnTx, conn_channel};
use crate::queue::core::SettleKind;

/// Most receive sessions per queue.
pub const MAX_SESSIONS: usize = 16;
/// Most messages one receive returns.
pub const MAX_RECEIVE: u32 = 1_000;
/// Longest long poll, in seconds (as SQS's `WaitTimeSeconds`).
pub const MAX_WAIT_S: u64 = 20;
/// Bytes of deliveries a session's outbox takes at once.
pub const SESSION_OUTBOX: u64 = 8 << 20;
/// How long a publish waits for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a publish over HTTP failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A `block` queue has too little room (publish credit) for the batch now.
    #[error("queue {queue} is full: retry later")]
    Full {
        /// The queue.
        queue: String,
    },
    /// The queue failed or refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Every session of the queue is busy with a long poll.
    #[error("queue {queue}: {MAX_SESSIONS} receives are already waiting; retry later")]
    Busy {
        /// The queue.
        queue: String,
    },
    /// The queue is gone or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Waits until the actor handled every command sent before (and flushed).
async fn barrier(qtx: &mpsc::UnboundedSender<Cmd>, queue: &str) -> Result<(), BrokerError> {
    let (tx, rx) = oneshot::channel();
    qtx.send(Cmd::Barrier(tx))
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
    rx.await
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))
}

/// Publishes a batch and returns its outcomes, in order (see the module documentation).
pub async fn publish(
    broker: &Broker,
    queue: &str,
    messages: Vec<Message>,
) -> Result<Vec<PublishOutcome>, PublishError> {
    let qtx = broker.sender(queue)?;
    let overflow = broker.inspect(queue).await?.config.overflow;
    let producer = broker.next_id();
    let (tx, mut rx) = conn_channel(SESSION_OUTBOX);
    let gone = || BrokerError::UnknownQueue(queue.into());
    let n = messages.len() as u64;
    let result = async {
        if overflow == Overflow::Block {
            qtx.send(Cmd::AddProducer {
                producer,
                conn: tx.clone(),
            })
            .map_err(|_| gone())?;
            barrier(&qtx, queue).await?;
            let mut credit = 0u64;
            while let Some(f) = rx.try_recv() {
                if let ServerFrame::PublishCredit { n, .. } = f {
                    credit += u64::from(n);
                }
            }
            if credit < n {
                return Err(PublishError::Full {
                    queue: queue.into(),
                });
            }
        }
        let bytes = messages.iter().map(|m| m.payload.len() as u64).sum();
        let in_flight = Arc::new(InFlight::default());
        in_flight
            .messages
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel);
        in_flight
            .bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
        qtx.send(Cmd::Publish {
            producer,
            req: 1,
            messages,
            confirm_to: ConfirmTo::Conn {
                conn: tx.clone(),
                in_flight,
            },
            credited: true,
        })
        .map_err(|_| gone())?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, crate::actor::confirm_of(&mut rx, 1)).await {
            Ok(Some(r)) => Ok(r.map_err(BrokerError::Internal)?),
            Ok(None) => Err(gone().into()),
            Err(_) => Err(PublishError::Broker(BrokerError::Internal(format!(
                "queue {queue}: no confirm within {} s",
                CONFIRM_TIMEOUT.as_secs()
            )))),
        }
    }
    .await;
    // Releases unused credit and the actor's bookkeeping of this producer.
    let _ = qtx.send(Cmd::RemoveProducer(producer));
    result
}

/// One receive session: a subscription of its own on one queue.
struct Session {
    subscription: u64,
    qtx: mpsc::UnboundedSender<Cmd>,
    /// Held by the receive using the session.
    rx: Arc<Mutex<ConnRx>>,
    _tx: ConnTx,
}

/// One delivery handed out by a receive, with its receipt.
#[derive(Debug)]
pub struct Received {
    /// `"{subscription}.{tag}"`: what ack / nack / reject / extend take.
    pub receipt: String,
    /// The delivery.
    pub delivery: Delivery,
}

/// Every queue's receive sessions. See the module documentation.
#[derive(Default)]
pub struct Sessions {
    queues: parking_lot::Mutex<HashMap<String, Vec<Arc<Session>>>>,
}

impl Sessions {
    /// An idle session of `queue` (locked for the caller), a new one, or `Busy`.
    async fn acquire(
        &self,
        broker: &Broker,
        queue: &str,
    ) -> Result<(Arc<Session>, tokio::sync::OwnedMutexGuard<ConnRx>), ReceiveError> {
        let qtx = broker.sender(queue)?;
        let mut queues = self.queues.lock();
        // Sessions of deleted queues go (their actor is gone): the map holds live queues only.
        queues.retain(|_, l| {
            l.retain(|s| !s.qtx.is_closed());
            !l.is_empty()
        });
        let list = queues.entry(queue.to_string()).or_default();
        // A queue deleted and declared again has a new actor: its old sessions are void.
        list.retain(|s| s.qtx.same_channel(&qtx));
        for s in list.iter() {
            if let Ok(guard) = s.rx.clone().try_lock_owned() {
                return Ok((s.clone(), guard));
            }
        }
        if list.len() >= MAX_SESSIONS {
            return Err(ReceiveError::Busy {
                queue: queue.into(),
            });
        }
        let subscription = broker.next_id();
        let (tx, rx) = conn_channel(SESSION_OUTBOX);
        qtx.send(Cmd::Subscribe {
            consumer: subscription,
            auto_ack: false,
            credit: 0,
            priority: 0,
            conn: tx.clone(),
        })
        .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
        let s = Arc::new(Session {
            subscription,
            qtx,
            rx: Arc::new(Mutex::new(rx)),
            _tx: tx,
        });
        let guard =
            s.rx.clone()
                .try_lock_owned()
                .expect("a new session is free");
        list.push(s.clone());
        Ok((s, guard))
    }

    /// Receives up to `max` messages, waiting up to `wait` for the first.
    pub async fn receive(
        &self,
        broker: &Broker,
        queue: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Received>, ReceiveError> {
        let max = max.clamp(1, MAX_RECEIVE);
        let wait = wait.min(Duration::from_secs(MAX_WAIT_S));
        let (s, mut rx) = self.acquire(broker, queue).await?;
        let sub = s.subscription;
        let gone = || BrokerError::UnknownQueue(queue.into());
        let mut got: Vec<Delivery> = Vec::new();
        let take = |f: ServerFrame, got: &mut Vec<Delivery>| {
            if let ServerFrame::Deliver { deliveries } = f {
                got.extend(deliveries);
            }
        };
        s.qtx.send(Cmd::Credit(sub, max)).map_err(|_| gone())?;
        barrier(&s.qtx, queue).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(f) = rx.try_recv() {
                take(f, &mut got);
            }
            if !got.is_empty() {
                break;
            }
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => take(f, &mut got),
                    None => return Err(gone().into()),
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // No more deliveries to this session until the next receive.
        s.qtx.send(Cmd::SetCredit(sub, 0)).map_err(|_| gone())?;
        barrier(&s.qtx, queue).await?;
        while let Some(f) = rx.try_recv() {
            take(f, &mut got);
        }
        let extra: Vec<u64> = got.iter().skip(max as usize).map(|d| d.tag).collect();
        got.truncate(max as usize);
        if !extra.is_empty() {
            let _ = s.qtx.send(Cmd::Unsent(sub, extra));
        }
        if let Some(last) = got.iter().map(|d| d.tag).max() {
            // Handed out now: their ack deadlines start.
            let _ = s.qtx.send(Cmd::Written(sub, last));
        }
        Ok(got
            .into_iter()
            .map(|d| Received {
                receipt: format!("{sub}.{}", d.tag),
                delivery: d,
            })
            .collect())
    }

    /// Settles (or extends) by receipt; returns, per refused receipt, why. A receipt of another
    /// queue, an unknown session, or a tag the core does not hold (lease ended, settled) is
    /// refused; the others are carried out.
    pub async fn settle(
        &self,
        queue: &str,
        how: SettleKind,
        receipts: &[String],
    ) -> Result<Vec<(String, &'static str)>, BrokerError> {
        let mut refused = Vec::new();
        let mut by_session: HashMap<u64, Vec<(u64, &String)>> = HashMap::new();
        for r in receipts {
            match parse_receipt(r) {
                Some((sub, tag)) => by_session.entry(sub).or_default().push((tag, r)),
                None => refused.push((r.clone(), "malformed receipt")),
            }
        }
        for (sub, items) in by_session {
            let session = {
                let queues = self.queues.lock();
                queues
                    .get(queue)
                    .and_then(|l| l.iter().find(|s| s.subscription == sub).cloned())
            };
            let Some(s) = session else {
                refused.extend(
                    items
                        .into_iter()
                        .map(|(_, r)| (r.clone(), "not a receipt of this queue")),
                );
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let tags: Vec<u64> = items.iter().map(|(t, _)| *t).collect();
            s.qtx
                .send(Cmd::SettleChecked {
                    consumer: sub,
                    how,
                    tags,
                    reply: tx,
                })
                .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
            let unknown = rx
                .await
                .map_err(|_| BrokerError::UnknownQueue(queue.into()))?;
            for (tag, r) in items {
                if unknown.contains(&tag) {
                    refused.push((
                        r.clone(),
                        "not outstanding: its lease ended (the message went back to the queue) \
                         or it was settled",
                    ));
                }
            }
        }
        Ok(refused)
    }
}

fn parse_receipt(r: &str) -> Option<(u64, u64)> {
    let (a, b) = r.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
