//! Publishing through this node to a replicated queue that another node of the cluster serves:
//! the publish half of the *remote queue actor* (docs/cluster.md, "Publishing on any node").
//!
//! A cluster node installs a [`Forwarder`] ([`crate::Broker::set_forwarder`]): it carries a batch
//! of messages to the node serving a queue and brings back one [`PublishOutcome`] per message.
//! Per queue served elsewhere that publishes on this node reach, a `RemoteQueue` task takes the
//! same `Cmd`s as a local queue actor, so the routed publisher (every exchange, AMQP's default
//! exchange) and dead-lettering send to it exactly as to a local queue, and confirm only what the
//! serving node confirmed (stored on a majority of the queue's replicas, fsynced).
//!
//! What it does not do: subscriptions, settlements and management (inspect, purge, peek...) of a
//! queue served elsewhere are not proxied. The front ends refuse them before they reach a queue
//! (`not-leader`, AMQP 405): only publishes and dead letters are sent here.
//!
//! # Invariants
//! - A publish is confirmed with the serving node's outcomes, or failed: `not-leader` when the
//!   forwarder knows nothing was stored, else with the forwarder's code (the outcome is
//!   unknown, as a lost connection's: the publisher sends it again). Never confirmed from here.
//! - At most [`MAX_FORWARDS`] batches are in flight per queue; further commands wait in the
//!   channel, whose content is bounded by the publishers' in-flight limits (charged before a
//!   publish is routed here); dead letters wait there as they would in a local target's
//!   channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use levee_proto::{ErrorCode, Message, PublishOutcome, ServerFrame};
use tokio::sync::{Semaphore, mpsc};

use crate::actor::{Cmd, ConfirmTo};

/// Most batches one `RemoteQueue` (per queue and node) has in flight at once.
pub const MAX_FORWARDS: usize = 256;

/// Why a forwarded batch has no outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ForwardError {
    /// `NotLeader`: nothing was stored (no node serves the queue now, or the one asked did
    /// not take the batch). Any other code: the batch may or may not have been stored.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

/// The future of one forwarded batch: its outcomes, one per message, in order.
pub type Forwarding =
    Pin<Box<dyn Future<Output = Result<Vec<PublishOutcome>, ForwardError>> + Send>>;

/// Carries publishes to the node that serves a replicated queue (installed by the cluster
/// node, see [`crate::Broker::set_forwarder`]).
pub trait Forwarder: Send + Sync + 'static {
    /// Publishes `messages` to `queue` on the node serving it; resolves with their outcomes
    /// once that node confirmed them (or failed). Must not forward again from the serving
    /// node (it publishes only to a queue it serves itself).
    fn forward(&self, queue: &str, messages: Vec<Message>) -> Forwarding;
}

/// The stand-in for a queue served elsewhere, see the module documentation.
pub(crate) struct RemoteQueue {
    name: String,
    forwarder: Arc<dyn Forwarder>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    slots: Arc<Semaphore>,
}

impl RemoteQueue {
    /// Starts the task; its channel is the returned sender (the task ends on `Stop`, `Delete`
    /// or `Unload`, or when every sender is gone; forwards in flight still complete).
    pub(crate) fn spawn(name: &str, forwarder: Arc<dyn Forwarder>) -> mpsc::UnboundedSender<Cmd> {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = RemoteQueue {
            name: name.to_string(),
            forwarder,
            rx,
            slots: Arc::new(Semaphore::new(MAX_FORWARDS)),
        };
        tokio::spawn(q.run());
        tx
    }

    async fn run(mut self) {
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Cmd::Publish {
                    req,
                    messages,
                    confirm_to,
                    ..
                } => self.publish(req, messages, confirm_to).await,
                Cmd::DeadLetter(message) => self.dead_letter(*message).await,
                Cmd::AddProducer { conn, .. } | Cmd::Subscribe { conn, .. } => {
                    // Front ends refuse these for a queue served elsewhere before sending; if
                    // one gets here all the same, its connection learns at once.
                    let _ = conn.send(ServerFrame::QueueClosed {
                        queue: self.name.clone(),
                        code: ErrorCode::NotLeader,
                        message: format!("queue {} is served by another node", self.name),
                    });
                }
                Cmd::SettleChecked { tags, reply, .. } => {
                    // No delivery of this queue is outstanding here.
                    let _ = reply.send(tags);
                }
                Cmd::Barrier(reply) => {
                    let _ = reply.send(());
                }
                Cmd::Stop | Cmd::Unload => break,
                Cmd::Delete(reply) => {
                    let _ = reply.send(0);
                    break;
                }
                // Settlements and credit of subscriptions this stand-in never has, and queries
                // it cannot answer (their reply channels are dropped: the caller sees the queue
                // as gone).
                Cmd::RemoveProducer(_)
                | Cmd::Touch
                | Cmd::Unsubscribe(_)
                | Cmd::Credit(..)
                | Cmd::Ack(..)
                | Cmd::Nack(..)
                | Cmd::Reject(..)
                | Cmd::Extend(..)
                | Cmd::SetCredit(..)
                | Cmd::Unsent(..)
                | Cmd::Written(..)
                | Cmd::OutboxRoom
                | Cmd::Peek(..)
                | Cmd::Reconfigure(..)
                | Cmd::Inspect(_)
                | Cmd::Observe { .. }
                | Cmd::Purge(_) => {}
            }
        }
    }

    /// Forwards one request and answers its confirm when the serving node did.
    async fn publish(&self, req: u64, messages: Vec<Message>, confirm_to: ConfirmTo) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let n = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        let forwarding = self.forwarder.forward(&self.name, messages);
        let name = self.name.clone();
        tokio::spawn(async move {
            let result = forwarding.await;
            drop(slot);
            match (confirm_to, result) {
                (ConfirmTo::Conn { conn, in_flight }, Ok(outcomes)) => {
                    in_flight.release(n, bytes);
                    let _ = conn.send(ServerFrame::PublishConfirm { req, outcomes });
                }
                (ConfirmTo::Conn { conn, in_flight }, Err(e)) => {
                    in_flight.release(n, bytes);
                    let _ = conn.send(ServerFrame::Error {
                        req,
                        code: e.code,
                        message: format!("queue {name}: {e}"),
                    });
                }
                (ConfirmTo::Routed(agg), Ok(outcomes)) => {
                    agg.target_confirmed(req, &name, outcomes);
                }
                (ConfirmTo::Routed(agg), Err(e)) => {
                    agg.target_failed(req, &name, e.code, &format!("queue {name}: {e}"));
                }
            }
        });
    }

    /// Forwards a dead letter of a queue on this node; one that the serving node did not store
    /// is dropped with a warning (as a dead letter whose target queue is missing).
    async fn dead_letter(&self, message: Message) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let forwarding = self.forwarder.forward(&self.name, vec![message]);
        let name = self.name.clone();
        tokio::spawn(async move {
            let result = forwarding.await;
            drop(slot);
            let failure = match result {
                Ok(outcomes) => match outcomes.first() {
                    Some(PublishOutcome::Stored { .. }) => None,
                    other => Some(format!("{other:?}")),
                },
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                tracing::warn!(queue = %name, %why,
                    "dead letter for a queue served on another node not stored: dropped");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::actor::InFlight;
    use crate::outbox::conn_channel;

    /// Counts the batches it was given and answers them only when told to (`release`).
    struct Held {
        calls: AtomicUsize,
        release: tokio::sync::watch::Receiver<bool>,
    }

    impl Forwarder for Arc<Held> {
        fn forward(&self, _: &str, messages: Vec<Message>) -> Forwarding {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut release = self.release.clone();
            Box::pin(async move {
                let _ = release.wait_for(|r| *r).await;
                Ok(messages
                    .iter()
                    .enumerate()
                    .map(|(i, _)| PublishOutcome::Stored { seq: i as u64 })
                    .collect())
            })
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// At most `MAX_FORWARDS` batches are in flight: the next waits in the channel until one is
    /// answered; every publish is confirmed once its batch is, and the in-flight charge is
    /// released.
    #[tokio::test]
    async fn at_most_max_forwards_batches_are_in_flight() {
        let (go, release) = tokio::sync::watch::channel(false);
        let held = Arc::new(Held {
            calls: AtomicUsize::new(0),
            release,
        });
        let tx = RemoteQueue::spawn("q", Arc::new(held.clone()));
        let (conn, mut rx) = conn_channel(0);
        let in_flight = Arc::new(InFlight::default());
        let total = MAX_FORWARDS as u64 + 10;
        for req in 0..total {
            in_flight.charge(1, 1);
            tx.send(Cmd::Publish {
                producer: 1,
                req,
                messages: vec![Message::new("m")],
                confirm_to: ConfirmTo::Conn {
                    conn: conn.clone(),
                    in_flight: in_flight.clone(),
                },
                credited: false,
            })
            .map_err(|_| ())
            .unwrap();
        }
        settle().await;
        assert_eq!(held.calls.load(Ordering::SeqCst), MAX_FORWARDS);
        go.send(true).unwrap();
        let mut confirmed = 0;
        while confirmed < total {
            match rx.recv().await {
                Some(ServerFrame::PublishConfirm { outcomes, .. }) => {
                    assert!(matches!(outcomes[..], [PublishOutcome::Stored { .. }]));
                    confirmed += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(held.calls.load(Ordering::SeqCst), total as usize);
        assert_eq!(in_flight.messages.load(Ordering::SeqCst), 0);
    }
}
