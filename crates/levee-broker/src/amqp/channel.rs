//! The channel level of the AMQP state machine ([`Connection`]'s methods for channels): queue
//! methods, publishing (content assembly, routing, queue credit, held publishes, blocking),
//! consuming (credit from `basic.qos`, delivery tags, acks), `basic.get` and publisher confirms.
//!
//! # Invariants
//! - A `block` queue is published to only within the publish credit it granted this connection;
//!   publishes beyond it are held here, in order, and counted in `held_bytes` (bounded: past
//!   `max_held_bytes` the connection is blocked and not read until they fall to half of it).
//! - A consumer with prefetch N never holds more than N unacked deliveries: its queue credit is
//!   N and grows only by what the client settles.
//! - Delivery tags are per channel, increasing from 1; each maps to one (subscription, queue tag).
//! - With confirms on, every publish gets exactly one basic.ack or basic.nack, in any order,
//!   `multiple` covering a run of acks when the oldest unconfirmed ones complete together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, exchange, queue};
use bytes::{Bytes, BytesMut};
use levee_proto::{
    Delivery, DropReason, Overflow, PublishOutcome, RoutedOutcome, validate_queue_name,
};

use super::codec::CLASS_BASIC;
use super::connection::{
    Connection, Env, Exception, HeldPublish, MAX_CONSUMERS_PER_CHANNEL, Op, OpResult,
    PendingConfirm, Sub, SubKind, code, short,
};
use super::mapping::{self, ArgError};

/// Credit given at a time to consumers without a prefetch limit (and no-ack ones); what the
/// broker buffers for them is bounded by the connection's outbox, not by this.
const UNLIMITED_CHUNK: u32 = 1024;

/// A routed publish waiting for its confirm.
#[derive(Debug)]
pub(crate) struct RoutedReq {
    channel: u16,
    /// Its publish seq, with confirms on.
    seq: Option<u64>,
    bytes: u64,
    /// With `mandatory`: what a `basic.return` sends back.
    returnable: Option<(String, String, Bytes, Bytes)>,
}

/// A message whose content is being received.
#[derive(Debug)]
pub(crate) struct Content {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<(u64, Bytes)>,
    body: BytesMut,
}

/// One open channel.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    /// We sent channel.close and wait for close-ok.
    pub(crate) closing: bool,
    pub(crate) content: Option<Content>,
    confirm: bool,
    publish_seq: u64,
    next_tag: u64,
    /// Delivery tag -> (subscription, queue tag).
    unacked: BTreeMap<u64, (u64, u64)>,
    /// Consumer tag -> subscription.
    consumers: HashMap<String, u64>,
    prefetch: u16,
    /// Publish seqs not confirmed yet.
    unconfirmed: BTreeSet<u64>,
}

impl Channel {
    pub(crate) fn new() -> Self {
        Channel::default()
    }
}

/// Whether a publish outcome is a basic.ack (stored, or dropped by the queue's declared policy)
/// rather than a basic.nack (refused).
pub(crate) fn outcome_ok(o: &PublishOutcome) -> bool {
    match o {
        // A duplicate's first copy was stored (durably) within the queue's dedup window.
        PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. } => true,
        PublishOutcome::Dropped { reason } => *reason != DropReason::PublisherGone,
        PublishOutcome::Rejected { .. } | PublishOutcome::Throttled { .. } => false,
        // levee-proto's enum is non_exhaustive: an outcome this front end does not know is not a
        // promise that the message is kept.
        _ => false,
    }
}

fn arg_exception(e: ArgError) -> Exception {
    match e {
        ArgError::Invalid { .. } => Exception::new(code::PRECONDITION_FAILED, e.to_string()),
        ArgError::NotImplemented { .. } => Exception::new(code::NOT_IMPLEMENTED, e.to_string()),
    }
}

fn not_found(queue: &str) -> Exception {
    Exception::new(
        code::NOT_FOUND,
        format!("NOT_FOUND - no queue '{queue}' in vhost '/'"),
    )
}

impl Connection {
    fn ch(&mut self, id: u16) -> &mut Channel {
        self.channels.get_mut(&id).expect("channel checked open")
    }

    /// The queue a method names, checked: it exists and this connection may use it (exclusive
    /// queues belong to one connection).
    fn usable_queue(
        &self,
        env: &dyn Env,
        queue: &str,
    ) -> Result<levee_proto::QueueConfig, Exception> {
        let Some(config) = env.queue_config(queue) else {
            return Err(match env.served_elsewhere(queue) {
                Some(at) => super::connection::served_elsewhere(queue, at.as_deref()),
                None => not_found(queue),
            });
        };
        if let Some(owner) = env.exclusive_owner(queue)
            && owner != self.id
        {
            return Err(Exception::new(
                code::RESOURCE_LOCKED,
                format!(
                    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' \
                     in vhost '/'"
                ),
            ));
        }
        Ok(config)
    }

    /// Handles a method on open channel `id`; `Err` is its exception (a connection exception for
    /// 501-505, a channel exception otherwise).
    pub(crate) fn channel_dispatch(
        &mut self,
        env: &dyn Env,
        id: u16,
        method: AMQPClass,
        raw: &[u8],
        now: u64,
    ) -> Result<(), Exception> {
        let m = method.clone();
        let fail = |c: u16, t: String| Err(Exception::new(c, t).on(&m));
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.end_channel(id);
                self.channels.remove(&id);
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return fail(
                        code::NOT_IMPLEMENTED,
                        "channel.flow active=false: use basic.qos to limit deliveries".into(),
                    );
                }
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => {}
            AMQPClass::Access(_) => {
                return fail(code::NOT_IMPLEMENTED, "access.request is obsolete".into());
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                self.ch(id).confirm = true;
                if !s.nowait {
                    self.send(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(_) => {
                return fail(
                    code::NOT_IMPLEMENTED,
                    "transactions (tx.*) are not supported: use publisher confirms".into(),
                );
            }
            AMQPClass::Exchange(x) => return self.exchange_method(env, id, x, &m),
            AMQPClass::Queue(q) => return self.queue_method(env, id, q, &m),
            AMQPClass::Basic(b) => return self.basic_method(env, id, b, raw, &m, now),
            AMQPClass::Connection(_) => {
                return fail(
                    code::COMMAND_INVALID,
                    "connection methods go on channel 0".into(),
                );
            }
            AMQPClass::Channel(_) | AMQPClass::Confirm(_) => {
                return fail(code::COMMAND_INVALID, "a server-side method".into());
            }
        }
        Ok(())
    }

    fn exchange_method(
        &mut self,
        env: &dyn Env,
        id: u16,
        x: exchange::AMQPMethod,
        m: &AMQPClass,
    ) -> Result<(), Exception> {
        let reply =
            |nowait: bool, ok: exchange::AMQPMethod| (!nowait).then_some(AMQPClass::Exchange(ok));
        match x {
            exchange::AMQPMethod::Declare(d) if d.passive => {
                if !env.exchange_exists(d.exchange.as_str()) {
                    return Err(Exception::new(
                        code::NOT_FOUND,
                        format!("NOT_FOUND - no exchange '{}' in vhost '/'", d.exchange),
                    )
                    .on(m));
                }
                if let Some(ok) = reply(
                    d.nowait,
                    exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                ) {
                    self.send(id, ok);
                }
                Ok(())
            }
            exchange::AMQPMethod::Declare(d) => {
                let kind = d
                    .kind
                    .as_str()
                    .parse::<levee_proto::ExchangeKind>()
                    .map_err(|_| {
                        // RabbitMQ: an unknown type is a connection error.
                        Exception::new(
                        code::COMMAND_INVALID,
                        format!(
                            "COMMAND_INVALID - unknown exchange type '{}': direct, fanout, topic \
                             or headers",
                            d.kind
                        ),
                    )
                    .on(m)
                    })?;
                let mut config = levee_proto::ExchangeConfig::new(kind)
                    .durable(d.durable)
                    .auto_delete(d.auto_delete)
                    .internal(d.internal);
                config.arguments = mapping::table_bytes(&d.arguments);
                self.ops.push_back(Op::ExchangeDeclare {
                    channel: id,
                    name: d.exchange.as_str().to_string(),
                    config,
                    ok: reply(
                        d.nowait,
                        exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                    ),
                });
                Ok(())
            }
            exchange::AMQPMethod::Delete(d) => {
                self.ops.push_back(Op::ExchangeDelete {
                    channel: id,
                    name: d.exchange.as_str().to_string(),
                    if_unused: d.if_unused,
                    ok: reply(
                        d.nowait,
                        exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
                    ),
                });
                Ok(())
            }
            exchange::AMQPMethod::Bind(_) | exchange::AMQPMethod::Unbind(_) => Err(Exception::new(
                code::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - exchange-to-exchange bindings are not supported",
            )
            .on(m)),
            _ => Err(Exception::new(code::COMMAND_INVALID, "a server-side method").on(m)),
        }
    }

    fn bind_op(
        &mut self,
        env: &dyn Env,
        id: u16,
        b: (&str, &str, &str, &amq_protocol::types::FieldTable),
        unbind: bool,
        ok: Option<AMQPClass>,
        m: &AMQPClass,
    ) -> Result<(), Exception> {
        let (queue, exchange, key, args) = b;
        self.usable_queue(env, queue).map_err(|e| e.on(m))?;
        let mut binding = levee_proto::Binding::new(exchange, queue, key);
        binding.arguments = mapping::table_bytes(args);
        self.ops.push_back(Op::Bind {
            channel: id,
            binding,
            unbind,
            ok,
        });
        Ok(())
    }

    fn queue_method(
        &mut self,
        env: &dyn Env,
        id: u16,
        q: queue::AMQPMethod,
        m: &AMQPClass,
    ) -> Result<(), Exception> {
        match q {
            queue::AMQPMethod::Declare(d) => {
                let mut name = d.queue.as_str().to_string();
                if name.is_empty() {
                    if d.passive {
                        return Err(Exception::new(
                            code::NOT_FOUND,
                            "NOT_FOUND - a passive declare needs a queue name",
                        )
                        .on(m));
                    }
                    name = mapping::generated_name(env.next_id());
                } else if name.starts_with("amq.") && !d.passive {
                    return Err(Exception::new(
                        code::ACCESS_REFUSED,
                        format!(
                            "ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"
                        ),
                    )
                    .on(m));
                }
                if let Err(e) = validate_queue_name(&name) {
                    return Err(Exception::new(code::PRECONDITION_FAILED, e.to_string()).on(m));
                }
                if let Some(owner) = env.exclusive_owner(&name)
                    && owner != self.id
                {
                    return Err(Exception::new(
                        code::RESOURCE_LOCKED,
                        format!(
                            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue \
                             '{name}' in vhost '/'"
                        ),
                    )
                    .on(m));
                }
                let declared =
                    mapping::declare_args(d.durable, &d.arguments, &self.settings.queue_defaults)
                        .map_err(|e| arg_exception(e).on(m))?;
                self.ops.push_back(Op::Declare {
                    channel: id,
                    queue: name,
                    declared: Box::new(declared),
                    passive: d.passive,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    nowait: d.nowait,
                });
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let name = d.queue.as_str().to_string();
                self.usable_queue(env, &name).map_err(|e| e.on(m))?;
                // Our own consumers of it are cancelled first (the others by the sweep).
                self.cancel_consumers_of(&name, false);
                self.ops.push_back(Op::DeleteQueue {
                    channel: id,
                    queue: name,
                    if_unused: d.if_unused,
                    if_empty: d.if_empty,
                    nowait: d.nowait,
                });
                Ok(())
            }
            queue::AMQPMethod::Purge(p) => {
                let name = p.queue.as_str().to_string();
                self.usable_queue(env, &name).map_err(|e| e.on(m))?;
                self.ops.push_back(Op::Purge {
                    channel: id,
                    queue: name,
                    nowait: p.nowait,
                });
                Ok(())
            }
            queue::AMQPMethod::Bind(b) => {
                let ok = (!b.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                    queue::BindOk {},
                )));
                self.bind_op(
                    env,
                    id,
                    (
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                    ),
                    false,
                    ok,
                    m,
                )
            }
            queue::AMQPMethod::Unbind(b) => {
                let ok = Some(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                    queue::UnbindOk {},
                )));
                self.bind_op(
                    env,
                    id,
                    (
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                    ),
                    true,
                    ok,
                    m,
                )
            }
            _ => Err(Exception::new(code::COMMAND_INVALID, "a server-side method").on(m)),
        }
    }

    fn basic_method(
        &mut self,
        env: &dyn Env,
        id: u16,
        b: basic::AMQPMethod,
        raw: &[u8],
        m: &AMQPClass,
        now: u64,
    ) -> Result<(), Exception> {
        let err = |c: u16, t: String| Err(Exception::new(c, t).on(m));
        match b {
            basic::AMQPMethod::Qos(q) => {
                // amq-protocol drops prefetch-size: it is the 4 bytes after the method ids.
                let size = raw
                    .get(4..8)
                    .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
                if size != 0 {
                    return err(
                        code::NOT_IMPLEMENTED,
                        "basic.qos prefetch_size is not supported: use prefetch_count".into(),
                    );
                }
                // Per consumer (RabbitMQ >= 3.3 semantics of global=false); global=true applies
                // the same count to each consumer of the channel (Levee credit is per consumer).
                self.ch(id).prefetch = q.prefetch_count;
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.consume(env, id, c, m),
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str().to_string();
                if let Some(sub) = self.ch(id).consumers.remove(&tag) {
                    self.cancel_sub(sub);
                }
                if !c.nowait {
                    self.send(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return err(
                        code::NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - immediate=true".into(),
                    );
                }
                let exchange = p.exchange.as_str().to_string();
                if !env.exchange_exists(&exchange) {
                    return err(
                        code::NOT_FOUND,
                        format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
                    );
                }
                self.ch(id).content = Some(Content {
                    exchange,
                    routing_key: p.routing_key.as_str().to_string(),
                    mandatory: p.mandatory,
                    header: None,
                    body: BytesMut::new(),
                });
                Ok(())
            }
            basic::AMQPMethod::Get(g) => {
                let queue = g.queue.as_str().to_string();
                self.usable_queue(env, &queue).map_err(|e| e.on(m))?;
                let sub = env.next_id();
                self.subs.insert(
                    sub,
                    Sub {
                        channel: id,
                        queue: queue.clone(),
                        kind: SubKind::Get {
                            no_ack: g.no_ack,
                            until: Some(now + super::connection::GET_WAIT_MS),
                            ready: 0,
                        },
                        unacked: 0,
                    },
                );
                // Never auto-acked by the queue, even for `no-ack`: this connection acks the
                // message once it has answered with it (`deliver`). A delivery that comes after
                // the get was answered empty then goes back to the queue with the unsubscribe,
                // instead of being settled and lost.
                self.ops.push_back(Op::Subscribe {
                    queue: queue.clone(),
                    sub,
                    credit: 1,
                    auto_ack: false,
                    consumer: false,
                    exclusive: false,
                    priority: 0,
                });
                self.ops.push_back(Op::Inspect { sub, queue });
                Ok(())
            }
            basic::AMQPMethod::Ack(a) => {
                let tags = self.take_tags(id, a.delivery_tag, a.multiple, m)?;
                self.settle(tags, Settle::Ack);
                Ok(())
            }
            basic::AMQPMethod::Nack(n) => {
                let tags = self.take_tags(id, n.delivery_tag, n.multiple, m)?;
                self.settle(
                    tags,
                    if n.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    },
                );
                Ok(())
            }
            basic::AMQPMethod::Reject(r) => {
                let tags = self.take_tags(id, r.delivery_tag, false, m)?;
                self.settle(
                    tags,
                    if r.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    },
                );
                Ok(())
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(id, r.requeue);
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                self.recover(id, r.requeue);
                Ok(())
            }
            _ => err(code::COMMAND_INVALID, "a server-side method".into()),
        }
    }

    fn consume(
        &mut self,
        env: &dyn Env,
        id: u16,
        c: basic::Consume,
        m: &AMQPClass,
    ) -> Result<(), Exception> {
        let queue = c.queue.as_str().to_string();
        self.usable_queue(env, &queue).map_err(|e| e.on(m))?;
        let priority =
            mapping::consumer_priority(&c.arguments).map_err(|e| arg_exception(e).on(m))?;
        let (consumers, exclusive) = env.consumers(&queue);
        if exclusive || (c.exclusive && consumers > 0) {
            return Err(Exception::new(
                code::ACCESS_REFUSED,
                format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"),
            )
            .on(m));
        }
        let sub = env.next_id();
        let tag = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{sub}")
        } else {
            c.consumer_tag.as_str().to_string()
        };
        let ch = self.ch(id);
        if ch.consumers.contains_key(&tag) {
            return Err(Exception::new(
                code::NOT_ALLOWED,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            )
            .on(m));
        }
        if ch.consumers.len() >= MAX_CONSUMERS_PER_CHANNEL {
            return Err(Exception::new(
                code::NOT_ALLOWED,
                format!("at most {MAX_CONSUMERS_PER_CHANNEL} consumers per channel"),
            )
            .on(m));
        }
        let prefetch = if c.no_ack { 0 } else { ch.prefetch };
        ch.consumers.insert(tag.clone(), sub);
        self.subs.insert(
            sub,
            Sub {
                channel: id,
                queue: queue.clone(),
                kind: SubKind::Consumer {
                    tag: tag.clone(),
                    no_ack: c.no_ack,
                    prefetch,
                    used: 0,
                    cancelled: false,
                },
                unacked: 0,
            },
        );
        // consume-ok goes out before any delivery can.
        if !c.nowait {
            self.send(
                id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(&tag),
                })),
            );
        }
        self.ops.push_back(Op::Subscribe {
            queue,
            sub,
            credit: if prefetch == 0 {
                UNLIMITED_CHUNK
            } else {
                u32::from(prefetch)
            },
            auto_ack: c.no_ack,
            consumer: true,
            exclusive: c.exclusive,
            priority,
        });
        Ok(())
    }

    /// Takes the delivery tags an ack/nack/reject names off the channel.
    fn take_tags(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        m: &AMQPClass,
    ) -> Result<Vec<(u64, u64)>, Exception> {
        let ch = self.ch(id);
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let keep = ch.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut ch.unacked, keep);
            return Ok(taken.into_values().collect());
        }
        match ch.unacked.remove(&tag) {
            Some(t) => Ok(vec![t]),
            None => Err(Exception::new(
                code::PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            )
            .on(m)),
        }
    }

    /// Settles (subscription, queue tag) pairs: one op per subscription, then credit back.
    fn settle(&mut self, tags: Vec<(u64, u64)>, how: Settle) {
        let mut by_sub: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (sub, tag) in tags {
            by_sub.entry(sub).or_default().push(tag);
        }
        for (sub, tags) in by_sub {
            let Some(s) = self.subs.get_mut(&sub) else {
                continue;
            };
            let n = tags.len() as u32;
            s.unacked = s.unacked.saturating_sub(n);
            let queue = s.queue.clone();
            self.ops.push_back(match how {
                Settle::Ack => Op::Ack {
                    queue: queue.clone(),
                    sub,
                    tags,
                },
                Settle::Requeue => Op::Requeue {
                    queue: queue.clone(),
                    sub,
                    tags,
                },
                Settle::Reject => Op::Reject {
                    queue: queue.clone(),
                    sub,
                    tags,
                },
            });
            let unacked = s.unacked;
            match &s.kind {
                SubKind::Consumer {
                    cancelled: true, ..
                } if unacked == 0 => {
                    self.subs.remove(&sub);
                    self.ops.push_back(Op::Unsubscribe {
                        queue,
                        sub,
                        consumer: true,
                    });
                }
                SubKind::Consumer {
                    cancelled: false,
                    prefetch,
                    ..
                } if *prefetch > 0 => {
                    self.ops.push_back(Op::Credit { queue, sub, n });
                }
                SubKind::Get { until: None, .. } if unacked == 0 => {
                    self.subs.remove(&sub);
                    self.ops.push_back(Op::Unsubscribe {
                        queue,
                        sub,
                        consumer: false,
                    });
                }
                _ => {}
            }
        }
    }

    fn recover(&mut self, id: u16, _requeue: bool) {
        // Levee redelivers through the queue: requeue=false (redeliver to the same consumer) is
        // served as requeue=true, as RabbitMQ does.
        let tags: Vec<(u64, u64)> = std::mem::take(&mut self.ch(id).unacked)
            .into_values()
            .collect();
        self.settle(tags, Settle::Requeue);
    }

    /// Cancels a consumer: it ends now, or once the client settled what it holds.
    fn cancel_sub(&mut self, sub: u64) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        if s.unacked == 0 {
            let queue = s.queue.clone();
            self.subs.remove(&sub);
            self.ops.push_back(Op::Unsubscribe {
                queue,
                sub,
                consumer: true,
            });
        } else if let SubKind::Consumer { cancelled, .. } = &mut s.kind {
            *cancelled = true;
        }
    }

    /// Cancels every consumer of `queue` on this connection (it is being deleted); with
    /// `notify`, the client is told with a server-sent basic.cancel.
    pub(crate) fn cancel_consumers_of(&mut self, queue: &str, notify: bool) {
        let subs: Vec<(u64, u16, String)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.queue == queue)
            .filter_map(|(id, s)| match &s.kind {
                SubKind::Consumer { tag, .. } => Some((*id, s.channel, tag.clone())),
                SubKind::Get { .. } => None,
            })
            .collect();
        for (sub, channel, tag) in subs {
            self.subs.remove(&sub);
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.consumers.remove(&tag);
                ch.unacked.retain(|_, (s, _)| *s != sub);
            }
            self.ops.push_back(Op::Unsubscribe {
                queue: queue.to_string(),
                sub,
                consumer: true,
            });
            if notify && self.caps.cancel_notify {
                self.send(
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: short(&tag),
                        nowait: true,
                    })),
                );
            }
        }
    }

    /// Periodic checks: consumers of deleted queues are cancelled, publishes held for deleted
    /// queues are nacked.
    pub(crate) fn sweep(&mut self, env: &dyn Env) {
        let gone: BTreeSet<String> = self
            .subs
            .values()
            .map(|s| s.queue.clone())
            .filter(|q| env.queue_config(q).is_none())
            .collect();
        for q in gone {
            self.cancel_consumers_of(&q, true);
        }
        let dead: Vec<String> = self
            .producers
            .keys()
            .filter(|q| env.queue_config(q).is_none())
            .cloned()
            .collect();
        for q in dead {
            self.drop_producer(&q);
        }
        self.maybe_unblock();
    }

    /// Forgets this connection's publishing to `queue` (gone): its held publishes are nacked.
    fn drop_producer(&mut self, queue: &str) {
        if let Some(p) = self.producers.remove(queue) {
            for h in p.held {
                self.held_bytes -= h.message.payload.len() as u64;
                self.confirmed(h.req, false);
            }
        }
    }

    /// The queue actor said it stopped (`QueueClosed`): what `sweep` would find later, now.
    /// Its consumers are cancelled (basic.cancel to clients that take it), its held publishes
    /// nacked.
    pub(crate) fn queue_closed(&mut self, queue: &str) {
        self.cancel_consumers_of(queue, true);
        self.drop_producer(queue);
        self.maybe_unblock();
    }

    /// Ends channel `id`'s consumers and gets (their unacked messages return to their queues)
    /// and forgets its confirms.
    pub(crate) fn end_channel(&mut self, id: u16) {
        let subs: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.channel == id)
            .map(|(sub, _)| *sub)
            .collect();
        for sub in subs {
            if let Some(s) = self.subs.remove(&sub) {
                self.ops.push_back(Op::Unsubscribe {
                    queue: s.queue,
                    sub,
                    consumer: matches!(s.kind, SubKind::Consumer { .. }),
                });
            }
        }
        self.confirms.retain(|_, c| c.channel != id);
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.unacked.clear();
            ch.consumers.clear();
            ch.unconfirmed.clear();
        }
    }

    pub(crate) fn content_header(
        &mut self,
        env: &dyn Env,
        id: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
        now: u64,
    ) {
        let max = self.settings.max_message;
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.connection_exception(
                Exception::new(code::CHANNEL_ERROR, format!("channel {id} is not open")),
                now,
            );
        };
        if ch.closing {
            return;
        }
        let Some(content) = ch.content.as_mut().filter(|c| c.header.is_none()) else {
            return self.connection_exception(
                Exception::new(
                    code::UNEXPECTED_FRAME,
                    format!("content header on channel {id} without a basic.publish"),
                ),
                now,
            );
        };
        if class_id != CLASS_BASIC {
            return self.connection_exception(
                Exception::new(code::FRAME_ERROR, format!("content class {class_id}")),
                now,
            );
        }
        if body_size > max {
            ch.content = None;
            // The body frames still come: they are skipped while the channel closes.
            return self.channel_exception(
                id,
                Exception {
                    code: code::PRECONDITION_FAILED,
                    text: format!(
                        "PRECONDITION_FAILED - message size {body_size} is larger than \
                         configured max size {max}"
                    ),
                    class_id: 60,
                    method_id: 40,
                },
            );
        }
        content.header = Some((body_size, properties));
        content.body.reserve(body_size as usize);
        if body_size == 0 {
            self.publish_content(env, id, now);
        }
    }

    pub(crate) fn content_body(&mut self, env: &dyn Env, id: u16, data: Bytes, now: u64) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.connection_exception(
                Exception::new(code::CHANNEL_ERROR, format!("channel {id} is not open")),
                now,
            );
        };
        if ch.closing {
            return;
        }
        let Some(content) = ch.content.as_mut() else {
            return self.connection_exception(
                Exception::new(
                    code::UNEXPECTED_FRAME,
                    format!("content body on channel {id} without a basic.publish"),
                ),
                now,
            );
        };
        let Some((size, _)) = content.header else {
            return self.connection_exception(
                Exception::new(
                    code::UNEXPECTED_FRAME,
                    format!("content body on channel {id} before its header"),
                ),
                now,
            );
        };
        if content.body.len() as u64 + data.len() as u64 > size {
            return self.connection_exception(
                Exception::new(
                    code::FRAME_ERROR,
                    format!("content body on channel {id} longer than its header's {size} bytes"),
                ),
                now,
            );
        }
        content.body.extend_from_slice(&data);
        if content.body.len() as u64 == size {
            self.publish_content(env, id, now);
        }
    }

    /// A complete message: route it, hold or publish it to each target, and set up its confirm.
    fn publish_content(&mut self, env: &dyn Env, id: u16, now: u64) {
        let ch = self.ch(id);
        let Some(content) = ch.content.take() else {
            return;
        };
        let seq = if ch.confirm {
            ch.publish_seq += 1;
            ch.unconfirmed.insert(ch.publish_seq);
            Some(ch.publish_seq)
        } else {
            None
        };
        let (_, props) = content.header.clone().unwrap_or_default();
        let body = content.body.freeze();
        let fail = |e: Exception| Exception {
            class_id: 60,
            method_id: 40,
            ..e
        };
        // A named exchange, or a replicated queue another node serves (forwarded there by the
        // broker): routed by the broker, confirmed once every target answered.
        if !content.exchange.is_empty()
            || (env.queue_config(&content.routing_key).is_none()
                && env.forwards(&content.routing_key))
        {
            let target = (content.exchange, content.routing_key, content.mandatory);
            return self.publish_routed(env, id, seq, target, props, body);
        }
        let targets = match env.route(&content.exchange, &content.routing_key) {
            Ok(t) => t,
            Err(e) => return self.channel_exception(id, fail(e)),
        };
        let mut usable = Vec::with_capacity(targets.len());
        for q in targets {
            match self.usable_queue(env, &q) {
                Ok(config) => usable.push((q, config)),
                Err(e) if e.code == code::NOT_FOUND => {}
                Err(e) => return self.channel_exception(id, fail(e)),
            }
        }
        if usable.is_empty() {
            if content.mandatory {
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: code::NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: short(&content.exchange),
                        routing_key: short(&content.routing_key),
                    })),
                );
                self.out.content(id, &props, &body, self.frame_max);
            }
            if let Some(seq) = seq {
                // An unroutable message is confirmed once it is known to be unroutable.
                self.send_confirm(id, seq, true);
            }
            return;
        }
        let message =
            match mapping::to_native(&content.exchange, &content.routing_key, &props, body) {
                Ok(m) => m,
                Err(e) => {
                    return self.channel_exception(
                        id,
                        fail(Exception::new(
                            code::PRECONDITION_FAILED,
                            format!("PRECONDITION_FAILED - {e}"),
                        )),
                    );
                }
            };
        let key = seq.map(|seq| {
            let key = self.confirms.len() as u64 ^ (u64::from(id) << 48) ^ seq;
            let key = self.unique_confirm_key(key);
            self.confirms.insert(
                key,
                PendingConfirm {
                    channel: id,
                    seq,
                    remaining: usable.len(),
                    nack: false,
                },
            );
            key
        });
        for (queue, config) in usable {
            let req = env.next_id();
            self.reqs.insert(req, (key, message.payload.len() as u64));
            let p = self.producers.entry(queue.clone()).or_default();
            p.block = config.overflow == Overflow::Block;
            if p.block && !p.registered {
                p.registered = true;
                self.ops.push_back(Op::AddProducer {
                    queue: queue.clone(),
                });
            }
            let p = self.producers.get_mut(&queue).expect("just inserted");
            if !p.block || (p.credit > 0 && p.held.is_empty()) {
                if p.block {
                    p.credit -= 1;
                }
                self.start_publish(queue, req, message.clone());
            } else {
                self.held_bytes += message.payload.len() as u64;
                p.held.push_back(HeldPublish {
                    req,
                    message: message.clone(),
                });
                if self.held_bytes > self.settings.max_held_bytes && self.blocked.is_none() {
                    let reason = format!(
                        "queue '{queue}' is full (overflow block): {} bytes of publishes held \
                         for it on this connection",
                        self.held_bytes
                    );
                    self.block(reason);
                }
            }
        }
        let _ = now;
    }

    /// A message to a named exchange: routed by the broker (every matching queue stores it; a
    /// full `block` queue holds it until room frees), confirmed once every target answered.
    fn publish_routed(
        &mut self,
        env: &dyn Env,
        id: u16,
        seq: Option<u64>,
        (exchange, routing_key, mandatory): (String, String, bool),
        props: Bytes,
        body: Bytes,
    ) {
        let message = match mapping::to_native(&exchange, &routing_key, &props, body.clone()) {
            Ok(m) => m,
            Err(e) => {
                return self.channel_exception(
                    id,
                    Exception {
                        code: code::PRECONDITION_FAILED,
                        text: format!("PRECONDITION_FAILED - {e}"),
                        class_id: 60,
                        method_id: 40,
                    },
                );
            }
        };
        let req = env.next_id();
        let bytes = message.payload.len() as u64;
        self.routed.insert(
            req,
            RoutedReq {
                channel: id,
                seq,
                bytes,
                returnable: mandatory
                    .then(|| (exchange.clone(), routing_key.clone(), props.clone(), body)),
            },
        );
        self.routed_bytes += bytes;
        self.in_flight_bytes += bytes;
        self.in_flight_messages += 1;
        if self.routed_bytes > self.settings.max_held_bytes && self.blocked.is_none() {
            let reason = format!(
                "publishes through exchange '{}' wait for room in a full queue: {} bytes \
                 unconfirmed on this connection",
                exchange, self.routed_bytes
            );
            self.block(reason);
        }
        self.ops.push_back(Op::PublishRouted {
            channel: id,
            exchange,
            routing_key,
            req,
            message,
        });
    }

    /// The confirm of routed request `req`: `None` when it was refused before routing (the
    /// channel is closed by the failure that comes with it).
    pub(crate) fn routed_confirmed(&mut self, req: u64, outcome: Option<&RoutedOutcome>) {
        let Some(r) = self.routed.remove(&req) else {
            return;
        };
        self.routed_bytes -= r.bytes;
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(r.bytes);
        self.in_flight_messages = self.in_flight_messages.saturating_sub(1);
        let ok = match outcome {
            Some(RoutedOutcome::Unroutable) => {
                if let Some((x, rk, props, body)) = &r.returnable
                    && self.channels.get(&r.channel).is_some_and(|c| !c.closing)
                {
                    self.send(
                        r.channel,
                        AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                            reply_code: code::NO_ROUTE,
                            reply_text: "NO_ROUTE".into(),
                            exchange: short(x),
                            routing_key: short(rk),
                        })),
                    );
                    self.out.content(r.channel, props, body, self.frame_max);
                }
                true
            }
            Some(RoutedOutcome::Routed { outcome, .. }) => outcome_ok(outcome),
            // levee-proto's enum is non_exhaustive: an unknown outcome is no promise.
            Some(_) | None => false,
        };
        if let Some(seq) = r.seq {
            self.send_confirm(r.channel, seq, ok);
        }
        self.maybe_unblock();
    }

    fn unique_confirm_key(&self, mut key: u64) -> u64 {
        while self.confirms.contains_key(&key) {
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        }
        key
    }

    fn start_publish(&mut self, queue: String, req: u64, message: levee_proto::Message) {
        self.in_flight_bytes += message.payload.len() as u64;
        self.in_flight_messages += 1;
        self.ops.push_back(Op::Publish {
            queue,
            reqs: vec![req],
            messages: vec![message],
        });
    }

    fn block(&mut self, reason: String) {
        tracing::info!(conn = self.id, %reason, "AMQP connection blocked");
        if self.caps.blocked {
            self.send(
                0,
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Blocked(
                    amq_protocol::protocol::connection::Blocked {
                        reason: short(&reason),
                    },
                )),
            );
        }
        self.blocked = Some(reason);
    }

    fn maybe_unblock(&mut self) {
        let half = self.settings.max_held_bytes / 2;
        if self.blocked.is_some() && self.held_bytes <= half && self.routed_bytes <= half {
            tracing::info!(conn = self.id, "AMQP connection unblocked");
            self.blocked = None;
            if self.caps.blocked {
                self.send(
                    0,
                    AMQPClass::Connection(
                        amq_protocol::protocol::connection::AMQPMethod::Unblocked(
                            amq_protocol::protocol::connection::Unblocked {},
                        ),
                    ),
                );
            }
        }
    }

    /// Publish credit from a `block` queue: held publishes go out in order.
    pub(crate) fn credit(&mut self, _env: &dyn Env, queue: &str, n: u32, _now: u64) {
        let Some(p) = self.producers.get_mut(queue) else {
            return;
        };
        p.credit = p.credit.saturating_add(n);
        let mut out = Vec::new();
        while p.credit > 0 {
            let Some(h) = p.held.pop_front() else {
                break;
            };
            p.credit -= 1;
            out.push(h);
        }
        for h in out {
            self.held_bytes -= h.message.payload.len() as u64;
            self.start_publish(queue.to_string(), h.req, h.message);
        }
        self.maybe_unblock();
    }

    /// The outcome of publish request `req` for one target.
    pub(crate) fn confirmed(&mut self, req: u64, ok: bool) {
        let Some((key, bytes)) = self.reqs.remove(&req) else {
            return;
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
        self.in_flight_messages = self.in_flight_messages.saturating_sub(1);
        let Some(key) = key else {
            return;
        };
        let Some(c) = self.confirms.get_mut(&key) else {
            return;
        };
        c.remaining -= 1;
        c.nack |= !ok;
        if c.remaining == 0 {
            let c = self.confirms.remove(&key).expect("present");
            self.send_confirm(c.channel, c.seq, !c.nack);
        }
    }

    /// Decides the confirm of publish `seq` on channel `id`; [`Connection::take_output`] sends
    /// it ([`Connection::flush_confirms`]).
    fn send_confirm(&mut self, id: u16, seq: u64, ack: bool) {
        self.pending_confirms.push((id, seq, ack));
    }

    /// Sends the confirms decided since the last call. Acks that complete a run from a channel's
    /// oldest unconfirmed publish go out as one `basic.ack` with `multiple`; the others (and every
    /// nack) one by one. A confirm for a channel that closed meanwhile is dropped.
    pub(crate) fn flush_confirms(&mut self) {
        if self.pending_confirms.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending_confirms);
        pending.sort_unstable();
        let mut i = 0;
        while i < pending.len() {
            let id = pending[i].0;
            let end = i + pending[i..].iter().take_while(|p| p.0 == id).count();
            let run = &pending[i..end];
            i = end;
            // A closing channel sent its close: nothing more goes out on it.
            let Some(ch) = self.channels.get_mut(&id).filter(|c| !c.closing) else {
                continue;
            };
            let mut acks: BTreeSet<u64> = BTreeSet::new();
            let mut frames: Vec<(u64, bool, bool)> = Vec::new();
            for &(_, seq, ack) in run {
                if !ch.unconfirmed.contains(&seq) {
                    continue;
                }
                if ack {
                    acks.insert(seq);
                } else {
                    ch.unconfirmed.remove(&seq);
                    frames.push((seq, false, false));
                }
            }
            // Nacks first: a `multiple` ack would also cover an older nacked publish.
            // Then the run of acks from the oldest unconfirmed publish, as one frame.
            let mut run_len = 0;
            let mut upto = 0;
            while let Some(&oldest) = ch.unconfirmed.first() {
                if !acks.remove(&oldest) {
                    break;
                }
                ch.unconfirmed.remove(&oldest);
                upto = oldest;
                run_len += 1;
            }
            if run_len > 0 {
                frames.push((upto, true, run_len > 1));
            }
            for seq in acks {
                ch.unconfirmed.remove(&seq);
                frames.push((seq, true, false));
            }
            for (seq, ack, multiple) in frames {
                let method = if ack {
                    basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: seq,
                        multiple,
                    })
                } else {
                    basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    })
                };
                self.send(id, AMQPClass::Basic(method));
            }
        }
    }

    /// One delivery from a queue.
    pub(crate) fn deliver(&mut self, d: Delivery) {
        let Some(s) = self.subs.get_mut(&d.subscription) else {
            // A subscription that ended: the queue takes the message back.
            return;
        };
        let channel = s.channel;
        let queue = s.queue.clone();
        let redelivered = d.delivery_count > 1;
        let out = mapping::outgoing(&queue, &d.message);
        let (method, no_ack, credit) = match &mut s.kind {
            SubKind::Consumer {
                cancelled: true, ..
            } => return,
            SubKind::Consumer {
                tag,
                no_ack,
                prefetch,
                used,
                ..
            } => {
                let mut credit = None;
                if *prefetch == 0 {
                    *used += 1;
                    if *used >= UNLIMITED_CHUNK / 2 {
                        credit = Some(*used);
                        *used = 0;
                    }
                }
                (Some((tag.clone(), *no_ack)), *no_ack, credit)
            }
            SubKind::Get {
                no_ack,
                until,
                ready,
            } => {
                if until.is_none() {
                    return;
                }
                *until = None;
                let r = ready.saturating_sub(1);
                *ready = r;
                (None, *no_ack, None)
            }
        };
        if !no_ack {
            s.unacked += 1;
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        ch.next_tag += 1;
        let tag = ch.next_tag;
        if !no_ack {
            ch.unacked.insert(tag, (d.subscription, d.tag));
        }
        let exchange = short(&out.exchange);
        let routing_key = short(&out.routing_key);
        match method {
            Some((consumer_tag, _)) => self.send(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: short(&consumer_tag),
                    delivery_tag: tag,
                    redelivered,
                    exchange,
                    routing_key,
                })),
            ),
            None => {
                let ready = match self.subs.get(&d.subscription).map(|s| &s.kind) {
                    Some(SubKind::Get { ready, .. }) => *ready,
                    _ => 0,
                };
                self.send(
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag: tag,
                        redelivered,
                        exchange,
                        routing_key,
                        message_count: u32::try_from(ready).unwrap_or(u32::MAX),
                    })),
                );
                if no_ack {
                    self.subs.remove(&d.subscription);
                    self.ops.push_back(Op::Ack {
                        queue: queue.clone(),
                        sub: d.subscription,
                        tags: vec![d.tag],
                    });
                    self.ops.push_back(Op::Unsubscribe {
                        queue: queue.clone(),
                        sub: d.subscription,
                        consumer: false,
                    });
                }
            }
        }
        self.out
            .content(channel, &out.properties, &d.message.payload, self.frame_max);
        match self.written.iter_mut().find(|(s, _)| *s == d.subscription) {
            Some(w) => w.1 = w.1.max(d.tag),
            None => self.written.push((d.subscription, d.tag)),
        }
        if let Some(n) = credit {
            self.ops.push_back(Op::Credit {
                queue,
                sub: d.subscription,
                n,
            });
        }
    }

    /// The gets the queue said it had nothing for, once the server frames queued before that
    /// answer are taken: those that got no delivery meanwhile are answered `get-empty`.
    pub(crate) fn settle_empty_gets(&mut self) {
        for sub in std::mem::take(&mut self.empty_gets) {
            if matches!(
                self.subs.get(&sub).map(|s| &s.kind),
                Some(SubKind::Get { until: Some(_), .. })
            ) {
                self.get_empty(sub);
            }
        }
    }

    /// A `basic.get` found nothing.
    pub(crate) fn get_empty(&mut self, sub: u64) {
        let Some(s) = self.subs.remove(&sub) else {
            return;
        };
        self.ops.push_back(Op::Unsubscribe {
            queue: s.queue,
            sub,
            consumer: false,
        });
        if self.channels.get(&s.channel).is_some_and(|c| !c.closing) {
            self.send(
                s.channel,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
        }
    }

    /// The answer to a (reply) op.
    pub(crate) fn op_result(&mut self, r: OpResult, now: u64) {
        match r {
            OpResult::Declared {
                channel,
                queue,
                messages,
                consumers,
                nowait,
            } => {
                if !nowait && self.channels.get(&channel).is_some_and(|c| !c.closing) {
                    self.send(
                        channel,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(&queue),
                            message_count: u32::try_from(messages).unwrap_or(u32::MAX),
                            consumer_count: consumers,
                        })),
                    );
                }
            }
            OpResult::Deleted {
                channel,
                messages,
                nowait,
            } => {
                if !nowait && self.channels.contains_key(&channel) {
                    self.send(
                        channel,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: u32::try_from(messages).unwrap_or(u32::MAX),
                        })),
                    );
                }
            }
            OpResult::Purged {
                channel,
                messages,
                nowait,
            } => {
                if !nowait && self.channels.contains_key(&channel) {
                    self.send(
                        channel,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: u32::try_from(messages).unwrap_or(u32::MAX),
                        })),
                    );
                }
            }
            OpResult::Inspected { sub, .. }
                if matches!(
                    self.subs.get(&sub).map(|s| &s.kind),
                    Some(SubKind::Get { until: None, .. })
                ) => {}
            OpResult::Inspected { sub, ready } => match ready {
                // Not answered yet: the queue may have delivered to this get just before it
                // counted (the delivery then waits in the outbox, behind this answer). The
                // shell takes the frames already queued, then calls `settle_empty_gets`.
                Some(0) | None => self.empty_gets.push(sub),
                Some(n) => {
                    if let Some(Sub {
                        kind: SubKind::Get { ready, until, .. },
                        ..
                    }) = self.subs.get_mut(&sub)
                    {
                        *ready = n;
                        // The queue said it has messages: its delivery is on the way. The wait
                        // starts now, not at the `basic.get` (the answer itself may have taken
                        // long on a busy broker).
                        *until = Some(now + super::connection::GET_WAIT_MS);
                    }
                }
            },
            OpResult::Done { channel, ok } => {
                if let Some(ok) = ok
                    && self.channels.get(&channel).is_some_and(|c| !c.closing)
                {
                    self.send(channel, ok);
                }
            }
            OpResult::Failed { channel, exception } => {
                if self.channels.get(&channel).is_some_and(|c| !c.closing) {
                    self.channel_exception(channel, exception);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

#[cfg(test)]
mod tests {
    //! `basic.get` against the queue's answers in the orders they can come in.

    use std::sync::atomic::{AtomicU64, Ordering};

    use amq_protocol::protocol::connection;
    use amq_protocol::types::FieldTable;
    use levee_proto::{Delivery, ServerFrame};

    use super::*;
    use crate::amqp::codec::{Inbound, Out, PROTOCOL_HEADER, decode};
    use crate::amqp::connection::Settings;

    struct OneQueue(AtomicU64);

    impl Env for OneQueue {
        fn queue_config(&self, name: &str) -> Option<levee_proto::QueueConfig> {
            (name == "q").then(levee_proto::QueueConfig::default)
        }
        fn exclusive_owner(&self, _: &str) -> Option<u64> {
            None
        }
        fn next_id(&self) -> u64 {
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        }
        fn route(&self, _: &str, routing_key: &str) -> Result<Vec<String>, Exception> {
            Ok(vec![routing_key.to_string()])
        }
        fn exchange_exists(&self, name: &str) -> bool {
            name.is_empty()
        }
        fn consumers(&self, _: &str) -> (usize, bool) {
            (0, false)
        }
        fn served_elsewhere(&self, _: &str) -> Option<Option<String>> {
            None
        }
        fn forwards(&self, _: &str) -> bool {
            false
        }
    }

    fn feed(c: &mut Connection, env: &OneQueue, methods: Vec<(u16, AMQPClass)>) {
        let mut out = Out::default();
        for (ch, m) in methods {
            out.method(ch, m);
        }
        let mut buf = out.buf;
        c.handle_input(env, &mut buf, 0);
    }

    /// A logged-in connection with channel 1 open, its output so far dropped.
    fn open(env: &OneQueue) -> Connection {
        let settings = Settings {
            frame_max: 131_072,
            channel_max: 16,
            heartbeat_s: 0,
            max_message: 1 << 20,
            max_held_bytes: 1 << 20,
            max_in_flight_bytes: 1 << 20,
            max_in_flight_messages: 1000,
            queue_defaults: levee_proto::QueueConfig::default(),
            server_name: "test".into(),
        };
        let mut c = Connection::new(1, settings, true, 0);
        let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
        c.handle_input(env, &mut buf, 0);
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        };
        feed(
            &mut c,
            env,
            vec![(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
            )],
        );
        c.take_login().expect("credentials");
        c.login_done(Ok("guest".into()), 0);
        let tune_ok = connection::TuneOk {
            channel_max: 16,
            frame_max: 131_072,
            heartbeat: 0,
        };
        feed(
            &mut c,
            env,
            vec![
                (
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
                ),
                (
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                        virtual_host: "/".into(),
                    })),
                ),
                (
                    1,
                    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                ),
            ],
        );
        let _ = c.take_output();
        c
    }

    /// A `basic.get` with `no-ack`: its subscription id, after checking it is not auto-acked.
    fn get(c: &mut Connection, env: &OneQueue) -> u64 {
        let g = basic::Get {
            queue: "q".into(),
            no_ack: true,
        };
        feed(
            c,
            env,
            vec![(1, AMQPClass::Basic(basic::AMQPMethod::Get(g)))],
        );
        let Some(Op::Subscribe { sub, auto_ack, .. }) = c.poll_op() else {
            panic!("a subscribe")
        };
        assert!(
            !auto_ack,
            "the queue must not settle a get's message on its own"
        );
        assert!(matches!(c.poll_op(), Some(Op::Inspect { sub: s, .. }) if s == sub));
        sub
    }

    fn delivery(sub: u64) -> ServerFrame {
        ServerFrame::Deliver {
            deliveries: vec![Delivery {
                subscription: sub,
                tag: 7,
                seq: 1,
                delivery_count: 1,
                timestamp_ms: 0,
                message: levee_proto::Message::new("m"),
            }],
        }
    }

    /// The methods in the connection's output.
    fn methods(c: &mut Connection) -> Vec<AMQPClass> {
        let mut buf = c.take_output();
        let mut out = Vec::new();
        while let Some(f) = decode(&mut buf, 131_072).unwrap() {
            if let Inbound::Method { method, .. } = f {
                out.push(*method);
            }
        }
        out
    }

    /// A `no-ack` get on a fresh connection that the queue answered "0 ready".
    fn get_counted_empty(env: &OneQueue) -> (Connection, u64) {
        let mut c = open(env);
        let sub = get(&mut c, env);
        c.op_result(
            OpResult::Inspected {
                sub,
                ready: Some(0),
            },
            0,
        );
        (c, sub)
    }

    #[test]
    fn a_get_whose_message_was_sent_before_the_queue_counted_none_gets_it() {
        let env = OneQueue(AtomicU64::new(0));
        // The queue delivered to the get, then counted nothing ready: its answer comes back
        // before the delivery, which waits in the outbox behind it.
        let (mut c, sub) = get_counted_empty(&env);
        assert!(methods(&mut c).is_empty(), "not answered empty yet");
        c.handle_server_frame(&env, delivery(sub), 0);
        c.settle_empty_gets();
        let out = methods(&mut c);
        assert!(
            matches!(out[..], [AMQPClass::Basic(basic::AMQPMethod::GetOk(_))]),
            "{out:?}"
        );
        // Acked by the connection (no-ack), then unsubscribed.
        assert!(matches!(c.poll_op(), Some(Op::Ack { tags, .. }) if tags == vec![7]));
        assert!(matches!(c.poll_op(), Some(Op::Unsubscribe { .. })));
    }

    #[test]
    fn a_get_answered_empty_leaves_a_late_delivery_to_the_queue() {
        let env = OneQueue(AtomicU64::new(0));
        let (mut c, sub) = get_counted_empty(&env);
        c.settle_empty_gets();
        let out = methods(&mut c);
        assert!(
            matches!(out[..], [AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))]),
            "{out:?}"
        );
        assert!(matches!(c.poll_op(), Some(Op::Unsubscribe { .. })));
        // A delivery after that (a message published meanwhile): not acked here, so the
        // unsubscribe gives it back to the queue (it was never auto-acked).
        c.handle_server_frame(&env, delivery(sub), 0);
        assert!(methods(&mut c).is_empty());
        assert!(c.poll_op().is_none());
    }
}
