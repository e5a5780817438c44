//! Exchanges and routing, a broker feature shared by every front end (native protocol, HTTP, CLI,
//! AMQP).
//!
//! - [`table`] (pure): the exchanges, their bindings and counters, and the routing decision
//!   (exchange + routing key + headers -> the sorted, deduplicated set of target queues);
//!   [`matching`] (pure): the topic and headers matching rules.
//! - [`confirm`]: the confirm aggregation of a publish routed to several queues (the
//!   combination rule, [`confirm::Ledger`] and its thread-safe shell [`Aggregator`]).
//! - [`publish`]: [`RoutedPublisher`], what a connection (or an AMQP channel) publishes through:
//!   routes each batch, stores each message in every target queue (each applying its own limits
//!   and overflow policy) and gets one combined confirm per request.
//! - [`api`]: the `Broker` methods (declare, delete, bind, unbind, list, publish) and the
//!   catalog writes; [`catalog`]: the `exchanges.meta` codec.
//!
//! # Invariants
//! - Every change to the table is made under [`Exchanges::writer`]; a change to something
//!   durable is written (and fsynced) to `exchanges.meta` before it is applied and announced.
//! - Lock order: the table's lock before the queue registry's, never the reverse; neither is held
//!   across an `await`.
//! - A message routed through an exchange carries the reserved headers
//!   [`crate::queue::ROUTING_HEADERS`] (`x-levee-exchange`, `x-levee-routing-key`), replacing any
//!   the publisher set; dead-lettering through an exchange reuses the routing key from them.

pub(crate) mod api;
pub(crate) mod catalog;
pub(crate) mod confirm;
pub(crate) mod matching;
pub(crate) mod publish;
pub(crate) mod table;

use bytes::Bytes;
use levee_proto::Message;

pub(crate) use confirm::Aggregator;
pub use confirm::{ConfirmCallback, RoutedConfirm, combine};
pub use publish::RoutedPublisher;

use crate::actor::Cmd;
use crate::queue::ROUTING_HEADERS;

/// The broker's exchange state.
#[derive(Debug)]
pub(crate) struct Exchanges {
    /// The table; read by every routed publish.
    pub(crate) table: parking_lot::RwLock<table::Table>,
    /// Serialises changes (and their catalog writes).
    pub(crate) writer: tokio::sync::Mutex<()>,
}

impl Exchanges {
    pub(crate) fn new() -> Self {
        Exchanges {
            table: parking_lot::RwLock::new(table::Table::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

/// The routing key a message was published with through an exchange (its
/// `x-levee-routing-key` header), if it was.
pub(crate) fn original_routing_key(m: &Message) -> Option<String> {
    m.headers
        .iter()
        .find(|(k, _)| k == ROUTING_HEADERS[1])
        .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string))
}

/// Sets the reserved routing headers (replacing any the publisher set).
pub(crate) fn set_routing_headers(m: &mut Message, exchange: &str, routing_key: &str) {
    m.headers
        .retain(|(k, _)| !ROUTING_HEADERS.contains(&k.as_str()));
    m.headers.push((
        ROUTING_HEADERS[0].to_string(),
        Bytes::copy_from_slice(exchange.as_bytes()),
    ));
    m.headers.push((
        ROUTING_HEADERS[1].to_string(),
        Bytes::copy_from_slice(routing_key.as_bytes()),
    ));
}

/// Routes a dead letter of queue `from` through `exchange` (see `actor::Router`).
pub(crate) fn dead_letter_via(
    inner: &crate::broker::Inner,
    from: &str,
    exchange: &str,
    routing_key: &str,
    mut message: Message,
) {
    set_routing_headers(&mut message, exchange, routing_key);
    let senders = {
        let table = inner.exchanges.table.read();
        let Some((targets, counters)) =
            table.route_dead_letter(exchange, routing_key, &message.headers, |q| {
                inner.queue_sender(q).is_some() || inner.forwards(q)
            })
        else {
            tracing::warn!(queue = %from, %exchange,
                "dead-letter exchange missing: message dropped");
            return;
        };
        let senders: Vec<_> = targets
            .iter()
            .filter(|q| **q != from)
            .filter_map(|q| inner.publish_sender(q))
            .collect();
        let c = if senders.is_empty() {
            &counters.unroutable
        } else {
            &counters.routed
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        senders
    };
    if senders.is_empty() {
        tracing::debug!(queue = %from, %exchange, %routing_key,
            "dead letter matched no queue: dropped");
    }
    for tx in senders {
        let _ = tx.send(Cmd::DeadLetter(Box::new(message.clone())));
    }
}
