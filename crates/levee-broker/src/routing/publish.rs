//! [`RoutedPublisher`]: publishing to an exchange, for any front end (a native connection, an
//! AMQP channel, the HTTP API).
//!
//! One publisher is one publisher session: a broker-unique id the target queues know it by, an
//! [`Aggregator`] its confirms are combined in, and the queues it published to (told when it is
//! dropped that the session is gone, so publishes they still hold for room are discarded, counted
//! as `publisher-gone`, as for a closed native connection).
//!
//! A request is routed once, under the table's read lock; each message is then sent to every
//! target queue (one `Publish` command per target queue, with the messages of the request routed
//! there). Messages are stored in each target (payloads are shared `Bytes` until each queue's log
//! writes its own copy). Routed publishes need no publish credit: on a full `block` queue they
//! are held until room frees, bounded by the publisher's in-flight limits (checked here before
//! routing: a request over them is refused whole, with `no-publish-credit`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use levee_proto::{ErrorCode, Message, PublishOutcome, RoutedOutcome, validate_exchange_name};
use tokio::sync::mpsc;

use super::confirm::{Aggregator, ConfirmCallback, RoutedConfirm};
use super::set_routing_headers;
use crate::actor::{Cmd, ConfirmTo, InFlight};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::queue::confirms::SessionId;

/// See the module documentation.
pub struct RoutedPublisher {
    broker: Broker,
    session: SessionId,
    aggregator: Arc<Aggregator>,
    next_id: u64,
    /// Queues published to (bounded by the number of queues).
    touched: HashMap<String, mpsc::UnboundedSender<Cmd>>,
}

impl std::fmt::Debug for RoutedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedPublisher")
            .field("session", &self.session)
            .field("aggregator", &self.aggregator)
            .finish_non_exhaustive()
    }
}

impl RoutedPublisher {
    pub(crate) fn new(
        broker: &Broker,
        in_flight: Arc<InFlight>,
        on_confirm: ConfirmCallback,
    ) -> Self {
        RoutedPublisher {
            session: broker.next_id(),
            broker: broker.clone(),
            aggregator: Arc::new(Aggregator::new(in_flight, on_confirm)),
            next_id: 1,
            touched: HashMap::new(),
        }
    }

    /// Publishes `messages` to `exchange` (`""`: the default exchange) with `routing_key`.
    ///
    /// `Err`: nothing was published (unknown exchange, internal exchange, bad routing key) and no
    /// confirm follows. `Ok`: the confirm callback is called exactly once for `req`, with one
    /// [`RoutedOutcome`] per message: at once if nothing was routed or the in-flight limits
    /// refused the request, else when the last target queue has answered.
    pub fn publish(
        &mut self,
        req: u64,
        exchange: &str,
        routing_key: &str,
        mut messages: Vec<Message>,
    ) -> Result<(), BrokerError> {
        if !exchange.is_empty() {
            validate_exchange_name(exchange)?;
        }
        let n = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        if let Some(reason) = self
            .aggregator
            .in_flight()
            .refusal(self.broker.config(), n, bytes)
        {
            let outcomes = (0..n)
                .map(|_| RoutedOutcome::Routed {
                    targets: 0,
                    outcome: PublishOutcome::Rejected {
                        code: ErrorCode::NoPublishCredit,
                        reason: reason.clone(),
                    },
                })
                .collect();
            self.aggregator.deliver(RoutedConfirm { req, outcomes });
            return Ok(());
        }
        let inner = self.broker.inner.clone();
        // Route: target queue -> indices of the messages it gets.
        let (parts, targets) = {
            let table = inner.exchanges.table.read();
            let route = table.route(
                exchange,
                routing_key,
                messages.len(),
                |i| &messages[i].headers,
                // A replicated queue another node serves is a target: the publish is forwarded
                // there (a cluster node's forwarder) or fails `not-leader`, never counted
                // unroutable and confirmed.
                |q| inner.queue_exists(q),
            )?;
            let mut parts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            let mut routed = 0;
            for (i, t) in route.targets.iter().enumerate() {
                if !t.is_empty() {
                    routed += 1;
                }
                for q in t {
                    parts.entry((*q).to_string()).or_default().push(i);
                }
            }
            route.counters.routed.fetch_add(routed, Ordering::Relaxed);
            route
                .counters
                .unroutable
                .fetch_add(n - routed, Ordering::Relaxed);
            let targets: Vec<Vec<String>> = route
                .targets
                .iter()
                .map(|t| t.iter().map(|q| (*q).to_string()).collect())
                .collect();
            (parts, targets)
        };
        for m in &mut messages {
            set_routing_headers(m, exchange, routing_key);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.aggregator.in_flight().charge(n, bytes);
        let target_refs: Vec<Vec<&str>> = targets
            .iter()
            .map(|t| t.iter().map(String::as_str).collect())
            .collect();
        // Opened before anything is sent: a target may confirm at once, from its own task.
        self.aggregator.open(id, req, &target_refs, (n, bytes));
        for (queue, indices) in parts {
            let batch: Vec<Message> = indices.iter().map(|&i| messages[i].clone()).collect();
            let cmd = Cmd::Publish {
                producer: self.session,
                req: id,
                messages: batch,
                confirm_to: ConfirmTo::Routed(self.aggregator.clone()),
                credited: false,
            };
            let sent = match inner.publish_sender(&queue) {
                Some(tx) => {
                    let ok = tx.send(cmd).is_ok();
                    self.touched.insert(queue.clone(), tx);
                    ok
                }
                None => false,
            };
            if !sent {
                let (code, reason) = match inner.served_elsewhere(&queue) {
                    Some(serving) => (
                        ErrorCode::NotLeader,
                        BrokerError::NotLeader {
                            queue: queue.clone(),
                            serving,
                        }
                        .to_string(),
                    ),
                    None => (
                        ErrorCode::UnknownQueue,
                        format!("queue {queue} was deleted"),
                    ),
                };
                self.aggregator.target_failed(id, &queue, code, &reason);
            }
        }
        Ok(())
    }
}

impl Drop for RoutedPublisher {
    fn drop(&mut self) {
        for (_, tx) in self.touched.drain() {
            let _ = tx.send(Cmd::RemoveProducer(self.session));
        }
    }
}
