//! The AMQP 0-9-1 connection state machine: every protocol decision of one connection, with no
//! I/O, no clock and no async (quinn-proto's shape). The shell (`shell`) feeds it the bytes it
//! reads ([`Connection::handle_input`]), the frames queue actors send
//! ([`Connection::handle_server_frame`]), the results of the broker operations it asked for
//! ([`Connection::op_result`]) and the time ([`Connection::handle_timeout`]); it takes out the
//! bytes to write ([`Connection::take_output`]) and the broker operations to run
//! ([`Connection::poll_op`]), in order.
//!
//! This module owns the connection level: the protocol header, Start/StartOk (authentication
//! through `auth`), Tune/TuneOk, Open, Close/CloseOk, heartbeats, connection exceptions,
//! Blocked/Unblocked, and the dispatch of frames to channels. The channel level (queues,
//! publishing, consuming, confirms) is `channel`.
//!
//! # Invariants
//! - Nothing is buffered beyond a bound: the read buffer holds at most one frame of `frame_max`
//!   bytes (checked from the frame header, `codec`), a message body being assembled at most
//!   `max_message` bytes, publishes held for queue credit at most `max_held_bytes` (past it the
//!   connection is blocked and not read), channels at most `channel_max`, consumers per channel
//!   at most [`MAX_CONSUMERS_PER_CHANNEL`]; [`Connection::wants_read`] turns false when the
//!   output not yet written or the unconfirmed publishes reach their bounds.
//! - After a connection exception or a Close, no further frame is acted on (only Close/CloseOk).
//! - A channel exception closes only its channel; its consumers end (their unacked messages
//!   return to their queues) and its pending confirms are forgotten.

use std::collections::{HashMap, VecDeque};

use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use levee_proto::{Message, QueueConfig, ServerFrame};

use super::auth::Credentials;
use super::channel::Channel;
use super::codec::{self, FRAME_MIN_SIZE, Inbound, Out, PROTOCOL_HEADER};
use super::mapping::Declared;

/// Most messages [`Connection::poll_op`] merges into one publish (levee-proto's batch limit).
pub(crate) const MAX_PUBLISH_BATCH: usize = levee_proto::MAX_BATCH;
/// Most payload bytes it merges into one publish.
pub(crate) const MAX_PUBLISH_BATCH_BYTES: usize = 4 << 20;
/// Most delivery tags it merges into one ack.
pub(crate) const MAX_ACK_BATCH: usize = levee_proto::MAX_TAGS;
/// Most consumers one channel may have.
pub(crate) const MAX_CONSUMERS_PER_CHANNEL: usize = 4096;
/// The output not yet written past which the connection stops reading (its socket and its
/// outbox) until the peer takes what it was sent.
pub(crate) const MAX_PENDING_OUTPUT: usize = 1 << 20;
/// How long the handshake may take, from accept to `connection.open`.
pub(crate) const HANDSHAKE_MS: u64 = 10_000;
/// How long a `basic.get` waits for a message the queue said it has.
pub(crate) const GET_WAIT_MS: u64 = 1_000;
/// How long to wait for `close-ok` after sending `connection.close`.
const CLOSE_WAIT_MS: u64 = 5_000;

/// AMQP reply codes (0-9-1 section 1.2, constants).
pub(crate) mod code {
    pub(crate) const CONNECTION_FORCED: u16 = 320;
    pub(crate) const NO_ROUTE: u16 = 312;
    pub(crate) const ACCESS_REFUSED: u16 = 403;
    pub(crate) const NOT_FOUND: u16 = 404;
    pub(crate) const RESOURCE_LOCKED: u16 = 405;
    pub(crate) const PRECONDITION_FAILED: u16 = 406;
    pub(crate) const FRAME_ERROR: u16 = 501;
    pub(crate) const SYNTAX_ERROR: u16 = 502;
    pub(crate) const COMMAND_INVALID: u16 = 503;
    pub(crate) const CHANNEL_ERROR: u16 = 504;
    pub(crate) const UNEXPECTED_FRAME: u16 = 505;
    pub(crate) const NOT_ALLOWED: u16 = 530;
    pub(crate) const NOT_IMPLEMENTED: u16 = 540;
    pub(crate) const INTERNAL_ERROR: u16 = 541;
}

/// A protocol exception: its reply code and text, and the method that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exception {
    pub(crate) code: u16,
    pub(crate) text: String,
    pub(crate) class_id: u16,
    pub(crate) method_id: u16,
}

impl Exception {
    pub(crate) fn new(code: u16, text: impl Into<String>) -> Self {
        Exception {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    pub(crate) fn on(mut self, method: &AMQPClass) -> Self {
        self.class_id = method.get_amqp_class_id();
        self.method_id = method.get_amqp_method_id();
        self
    }
}

/// What the state machine needs to know of the broker, synchronously (in-memory lookups).
pub(crate) trait Env {
    /// The config of queue `name`, if it exists.
    fn queue_config(&self, name: &str) -> Option<QueueConfig>;
    /// The connection owning exclusive queue `name`, if it is exclusive.
    fn exclusive_owner(&self, name: &str) -> Option<u64>;
    /// A broker-unique id (subscriptions, publish requests).
    fn next_id(&self) -> u64;
    /// The queues a message published to the default exchange (`exchange` = `""`) with
    /// `routing_key` goes to (named exchanges are routed by the broker: `Op::PublishRouted`);
    /// `Err` with a channel exception for another exchange.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, Exception>;
    /// Whether exchange `name` exists (for publishes and passive declares).
    fn exchange_exists(&self, name: &str) -> bool;
    /// AMQP consumers of `queue` now, and whether one of them is exclusive.
    fn consumers(&self, queue: &str) -> (usize, bool);
    /// `Some` when `queue` is a replicated queue another node of the cluster serves now (with
    /// its native wire address, if known): it exists, but this node does not proxy consumers
    /// to it (publishes, see [`Env::forwards`]).
    fn served_elsewhere(&self, queue: &str) -> Option<Option<String>>;
    /// Whether publishes to `queue`, a replicated queue another node serves now, are forwarded
    /// to that node by the broker (a cluster node): a publish to the default exchange then goes
    /// the routed way (`Op::PublishRouted`) and is confirmed with the serving node's outcome.
    fn forwards(&self, queue: &str) -> bool;
}

/// The channel exception for a queue another node serves ([`Env::served_elsewhere`]): 405,
/// not 404 (the queue exists; a client that declares it again would find the same).
pub(crate) fn served_elsewhere(queue: &str, serving: Option<&str>) -> Exception {
    Exception::new(
        code::RESOURCE_LOCKED,
        format!(
            "RESOURCE_LOCKED - queue '{queue}' in vhost '/' is replicated and served by another \
             node of the cluster{}; this node does not proxy AMQP: connect to that node",
            serving
                .map(|a| format!(" (its native address: {a})"))
                .unwrap_or_default()
        ),
    )
}

/// A broker operation for the shell to run, in order. Those marked (reply) are answered with
/// [`Connection::op_result`] before the next frame is handled.
#[derive(Debug)]
pub(crate) enum Op {
    /// (reply) Declare (or check, when `passive`) a queue.
    Declare {
        channel: u16,
        queue: String,
        declared: Box<Declared>,
        passive: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
    },
    /// (reply) Delete a queue.
    DeleteQueue {
        channel: u16,
        queue: String,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },
    /// (reply) Purge a queue.
    Purge {
        channel: u16,
        queue: String,
        nowait: bool,
    },
    /// (reply) Declare an exchange; `ok` is the reply to send (`None`: nowait).
    ExchangeDeclare {
        channel: u16,
        name: String,
        config: levee_proto::ExchangeConfig,
        ok: Option<AMQPClass>,
    },
    /// (reply) Delete an exchange.
    ExchangeDelete {
        channel: u16,
        name: String,
        if_unused: bool,
        ok: Option<AMQPClass>,
    },
    /// (reply) Add (or, with `unbind`, remove) a binding.
    Bind {
        channel: u16,
        binding: levee_proto::Binding,
        unbind: bool,
        ok: Option<AMQPClass>,
    },
    /// Publish one message through a named exchange (request `req`, answered by a routed
    /// confirm; a refusal before routing comes back as [`OpResult::Failed`]).
    PublishRouted {
        channel: u16,
        exchange: String,
        routing_key: String,
        req: u64,
        message: Message,
    },
    /// (reply) How many messages `queue` has ready, for `basic.get` on subscription `sub`.
    Inspect { sub: u64, queue: String },
    /// Register as a producer of a `block` queue (it grants publish credit).
    AddProducer { queue: String },
    /// Stop being a producer of `queue` (its held publishes are discarded).
    RemoveProducer { queue: String },
    /// Publish messages to one queue as one command: message `i` is publish request `reqs[i]`;
    /// the queue answers with one `PublishConfirm` for request `reqs[0]` (one outcome per
    /// message, in order).
    Publish {
        queue: String,
        reqs: Vec<u64>,
        messages: Vec<Message>,
    },
    /// Subscribe `sub` to `queue`.
    Subscribe {
        queue: String,
        sub: u64,
        credit: u32,
        auto_ack: bool,
        /// A consumer (counted for `auto-delete` and `if-unused`), not a `basic.get`.
        consumer: bool,
        exclusive: bool,
        /// Consumer priority (`x-priority`).
        priority: i32,
    },
    /// End subscription `sub` (its unacked messages return).
    Unsubscribe {
        queue: String,
        sub: u64,
        consumer: bool,
    },
    /// More credit for `sub`.
    Credit { queue: String, sub: u64, n: u32 },
    /// Settle deliveries of `sub`.
    Ack {
        queue: String,
        sub: u64,
        tags: Vec<u64>,
    },
    /// Requeue deliveries of `sub`.
    Requeue {
        queue: String,
        sub: u64,
        tags: Vec<u64>,
    },
    /// Reject (dead-letter or drop) deliveries of `sub`.
    Reject {
        queue: String,
        sub: u64,
        tags: Vec<u64>,
    },
}

/// The answer to an (reply) [`Op`].
#[derive(Debug)]
pub(crate) enum OpResult {
    /// A declare succeeded: the queue name, its ready messages and consumers.
    Declared {
        channel: u16,
        queue: String,
        messages: u64,
        consumers: u32,
        nowait: bool,
    },
    /// A delete or purge succeeded with this many messages.
    Deleted {
        channel: u16,
        messages: u64,
        nowait: bool,
    },
    /// See [`OpResult::Deleted`].
    Purged {
        channel: u16,
        messages: u64,
        nowait: bool,
    },
    /// An exchange or binding operation succeeded: send `ok` (if any) on `channel`.
    Done { channel: u16, ok: Option<AMQPClass> },
    /// The ready count for a `basic.get`.
    Inspected { sub: u64, ready: Option<u64> },
    /// The operation failed with a channel exception.
    Failed { channel: u16, exception: Exception },
}

/// Connection settings, from the broker config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Largest frame offered in Tune.
    pub(crate) frame_max: u32,
    /// Most channels offered in Tune.
    pub(crate) channel_max: u16,
    /// Heartbeat offered in Tune, seconds.
    pub(crate) heartbeat_s: u16,
    /// Largest message body accepted.
    pub(crate) max_message: u64,
    /// Most bytes of publishes held for queue credit before the connection is blocked.
    pub(crate) max_held_bytes: u64,
    /// Most unconfirmed publish bytes and messages in queues before reading pauses.
    pub(crate) max_in_flight_bytes: u64,
    pub(crate) max_in_flight_messages: u64,
    /// Defaults of a declared queue.
    pub(crate) queue_defaults: QueueConfig,
    /// Name announced as `product`.
    pub(crate) server_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    StartOk,
    /// Credentials taken from `start-ok`; the shell is checking them ([`Connection::take_login`]).
    Login,
    TuneOk,
    Open,
    Running,
    /// We sent `connection.close`; waiting for close-ok until the deadline.
    Closing {
        until: u64,
    },
    Closed,
}

/// Client capabilities that change what the server may send.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caps {
    pub(crate) blocked: bool,
    pub(crate) cancel_notify: bool,
    pub(crate) auth_failure_close: bool,
}

/// One message publish waiting for queue credit.
#[derive(Debug)]
pub(crate) struct HeldPublish {
    pub(crate) req: u64,
    pub(crate) message: Message,
}

/// This connection as a producer of one queue.
#[derive(Debug, Default)]
pub(crate) struct Producer {
    /// A `block` queue: publishes need credit.
    pub(crate) block: bool,
    pub(crate) registered: bool,
    pub(crate) credit: u32,
    pub(crate) held: VecDeque<HeldPublish>,
}

/// A subscription of this connection.
#[derive(Debug)]
pub(crate) struct Sub {
    pub(crate) channel: u16,
    pub(crate) queue: String,
    pub(crate) kind: SubKind,
    /// Deliveries the client holds unacked.
    pub(crate) unacked: u32,
}

#[derive(Debug)]
pub(crate) enum SubKind {
    Consumer {
        tag: String,
        no_ack: bool,
        /// 0 = unlimited (credit given in chunks, bounded by the outbox).
        prefetch: u16,
        /// Credit used since the last top-up (unlimited consumers).
        used: u32,
        /// Cancelled while the client still held deliveries: it ends when they are settled.
        cancelled: bool,
    },
    Get {
        no_ack: bool,
        /// Waiting for the delivery until this time (`None`: not waiting any more).
        until: Option<u64>,
        ready: u64,
    },
}

/// A publish confirm not sent yet: the message's targets still to answer.
#[derive(Debug)]
pub(crate) struct PendingConfirm {
    pub(crate) channel: u16,
    pub(crate) seq: u64,
    pub(crate) remaining: usize,
    pub(crate) nack: bool,
}

/// One AMQP connection's state.
pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) settings: Settings,
    loopback: bool,
    /// Credentials of `start-ok`, until the shell takes them to log in.
    pending_login: Option<Credentials>,
    phase: Phase,
    pub(crate) frame_max: u32,
    channel_max: u16,
    heartbeat_ms: u64,
    pub(crate) caps: Caps,
    pub(crate) user: Option<String>,
    pub(crate) out: Out,
    pub(crate) ops: VecDeque<Op>,
    pub(crate) channels: HashMap<u16, Channel>,
    pub(crate) subs: HashMap<u64, Sub>,
    /// `basic.get`s the queue said it had nothing for, answered by `settle_empty_gets`.
    pub(crate) empty_gets: Vec<u64>,
    /// Publish request -> confirm key.
    pub(crate) reqs: HashMap<u64, (Option<u64>, u64)>,
    /// Routed publish requests waiting for their confirm.
    pub(crate) routed: HashMap<u64, super::channel::RoutedReq>,
    /// Payload bytes of routed publishes not confirmed yet.
    pub(crate) routed_bytes: u64,
    pub(crate) confirms: HashMap<u64, PendingConfirm>,
    /// Publish batches in queues: the first request → every request of the batch.
    pub(crate) batches: HashMap<u64, Vec<u64>>,
    /// Confirms decided but not yet written: (channel, sequence number, ack), sent together by
    /// [`Connection::take_output`] so runs become one `multiple` ack.
    pub(crate) pending_confirms: Vec<(u16, u64, bool)>,
    pub(crate) producers: HashMap<String, Producer>,
    pub(crate) held_bytes: u64,
    pub(crate) in_flight_bytes: u64,
    pub(crate) in_flight_messages: u64,
    /// `Some(reason)` while blocked (held publishes over the bound).
    pub(crate) blocked: Option<String>,
    /// Deliveries put into the output: (subscription, tag), for the queues' written reports.
    pub(crate) written: Vec<(u64, u64)>,
    last_recv: u64,
    last_send: u64,
    started: u64,
    next_sweep: u64,
}

impl Connection {
    /// A connection accepted at `now` from a peer on loopback or not.
    pub(crate) fn new(id: u64, settings: Settings, loopback: bool, now: u64) -> Self {
        Connection {
            id,
            frame_max: FRAME_MIN_SIZE.max(settings.frame_max),
            channel_max: settings.channel_max,
            heartbeat_ms: 0,
            settings,
            loopback,
            pending_login: None,
            phase: Phase::Header,
            caps: Caps::default(),
            user: None,
            out: Out::default(),
            ops: VecDeque::new(),
            channels: HashMap::new(),
            subs: HashMap::new(),
            empty_gets: Vec::new(),
            reqs: HashMap::new(),
            routed: HashMap::new(),
            routed_bytes: 0,
            confirms: HashMap::new(),
            batches: HashMap::new(),
            pending_confirms: Vec::new(),
            producers: HashMap::new(),
            held_bytes: 0,
            in_flight_bytes: 0,
            in_flight_messages: 0,
            blocked: None,
            written: Vec::new(),
            last_recv: now,
            last_send: now,
            started: now,
            next_sweep: now + 1_000,
        }
    }

    /// Whether the connection is over: the shell flushes the output and closes the socket.
    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the shell should read more from the socket now.
    pub(crate) fn wants_read(&self) -> bool {
        !self.is_closed()
            && self.phase != Phase::Login
            && self.blocked.is_none()
            && self.out.buf.len() < MAX_PENDING_OUTPUT
            && self.in_flight_bytes < self.settings.max_in_flight_bytes
            && self.in_flight_messages < self.settings.max_in_flight_messages
    }

    /// Whether the shell should take frames from the outbox now.
    pub(crate) fn wants_server_frames(&self) -> bool {
        self.out.buf.len() < MAX_PENDING_OUTPUT
    }

    /// The largest frame this connection reads now.
    pub(crate) fn read_frame_max(&self) -> u32 {
        match self.phase {
            Phase::Header | Phase::StartOk | Phase::Login | Phase::TuneOk => FRAME_MIN_SIZE,
            _ => self.frame_max,
        }
    }

    /// The bytes to write.
    pub(crate) fn take_output(&mut self) -> BytesMut {
        self.flush_confirms();
        std::mem::take(&mut self.out.buf)
    }

    /// The next broker operation. Runs of publishes to one queue become one [`Op::Publish`]
    /// (at most [`MAX_PUBLISH_BATCH`] messages, [`MAX_PUBLISH_BATCH_BYTES`] bytes), and the acks
    /// and credit a consumer's channel sends one by one become one ack and one credit: a queue
    /// actor then stores a batch with one write and settles it with one command, instead of one
    /// command per message. Only ops already queued are merged (nothing waits to fill a batch),
    /// and order within each queue and subscription is kept.
    pub(crate) fn poll_op(&mut self) -> Option<Op> {
        let mut op = self.ops.pop_front()?;
        match &mut op {
            Op::Publish {
                queue,
                reqs,
                messages,
            } => {
                let mut bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
                while let Some(Op::Publish {
                    queue: next,
                    messages: more,
                    ..
                }) = self.ops.front()
                {
                    let more_bytes: usize = more.iter().map(|m| m.payload.len()).sum();
                    if next != queue
                        || messages.len() + more.len() > MAX_PUBLISH_BATCH
                        || bytes + more_bytes > MAX_PUBLISH_BATCH_BYTES
                    {
                        break;
                    }
                    let Some(Op::Publish {
                        reqs: r,
                        messages: m,
                        ..
                    }) = self.ops.pop_front()
                    else {
                        unreachable!("the front op is a publish");
                    };
                    reqs.extend(r);
                    messages.extend(m);
                    bytes += more_bytes;
                }
                if reqs.len() > 1 {
                    self.batches.insert(reqs[0], reqs.clone());
                }
            }
            Op::Ack { queue, sub, tags } => {
                let mut credit: u32 = 0;
                loop {
                    match self.ops.front() {
                        Some(Op::Ack { sub: s, .. }) if s == sub && tags.len() < MAX_ACK_BATCH => {
                            if let Some(Op::Ack { tags: t, .. }) = self.ops.pop_front() {
                                tags.extend(t);
                            }
                        }
                        Some(Op::Credit { sub: s, .. }) if s == sub => {
                            if let Some(Op::Credit { n, .. }) = self.ops.pop_front() {
                                credit = credit.saturating_add(n);
                            }
                        }
                        _ => break,
                    }
                }
                if credit > 0 {
                    self.ops.push_front(Op::Credit {
                        queue: queue.clone(),
                        sub: *sub,
                        n: credit,
                    });
                }
            }
            _ => {}
        }
        Some(op)
    }

    /// The requests of the publish batch whose confirm names `req` (just `req` when it went
    /// alone); forgets the batch.
    pub(crate) fn take_batch(&mut self, req: u64) -> Vec<u64> {
        self.batches.remove(&req).unwrap_or_else(|| vec![req])
    }

    /// Deliveries written since the last call: (subscription, highest tag).
    pub(crate) fn take_written(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.written)
    }

    pub(crate) fn sent(&mut self, now: u64) {
        self.last_send = now;
    }

    /// When [`Connection::handle_timeout`] must run next.
    pub(crate) fn poll_timeout(&self) -> u64 {
        let mut at = self.next_sweep;
        match self.phase {
            Phase::Header | Phase::StartOk | Phase::Login | Phase::TuneOk | Phase::Open => {
                at = at.min(self.started + HANDSHAKE_MS);
            }
            Phase::Closing { until } => at = at.min(until),
            Phase::Running | Phase::Closed => {}
        }
        if self.heartbeat_ms > 0 && self.phase == Phase::Running {
            at = at.min(self.last_send + self.heartbeat_ms / 2);
            at = at.min(self.last_recv + self.heartbeat_ms * 2);
        }
        for s in self.subs.values() {
            if let SubKind::Get {
                until: Some(until), ..
            } = s.kind
            {
                at = at.min(until);
            }
        }
        at
    }

    /// Runs the timers: handshake deadline, heartbeats (sending, and dropping a peer silent for
    /// two intervals), `basic.get` waits, and the sweep for deleted queues.
    pub(crate) fn handle_timeout(&mut self, env: &dyn Env, now: u64) {
        match self.phase {
            Phase::Header | Phase::StartOk | Phase::Login | Phase::TuneOk | Phase::Open
                if now >= self.started + HANDSHAKE_MS =>
            {
                tracing::debug!(conn = self.id, "AMQP handshake timed out");
                self.phase = Phase::Closed;
                return;
            }
            Phase::Closing { until } if now >= until => {
                self.phase = Phase::Closed;
                return;
            }
            _ => {}
        }
        if self.phase == Phase::Running && self.heartbeat_ms > 0 {
            if !self.wants_read() {
                // Its frames are unread, not missing: the deadline is suspended.
                self.last_recv = now;
            }
            if now >= self.last_recv + self.heartbeat_ms * 2 {
                tracing::info!(conn = self.id, "AMQP peer silent for 2 heartbeat intervals");
                self.phase = Phase::Closed;
                return;
            }
            if now >= self.last_send + self.heartbeat_ms / 2 {
                self.out.heartbeat();
                self.last_send = now;
            }
        }
        let expired: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| matches!(s.kind, SubKind::Get { until: Some(u), .. } if now >= u))
            .map(|(id, _)| *id)
            .collect();
        for sub in expired {
            self.get_empty(sub);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + 1_000;
            self.sweep(env);
        }
    }

    /// Feeds bytes read from the socket: handles every complete frame in `buf`.
    pub(crate) fn handle_input(&mut self, env: &dyn Env, buf: &mut BytesMut, now: u64) {
        self.last_recv = now;
        while !self.is_closed() {
            if self.phase == Phase::Header {
                if buf.len() < PROTOCOL_HEADER.len() {
                    if !PROTOCOL_HEADER.starts_with(buf) {
                        self.bad_header();
                    }
                    return;
                }
                if buf[..8] != PROTOCOL_HEADER {
                    self.bad_header();
                    return;
                }
                let _ = buf.split_to(8);
                self.send_start();
                self.phase = Phase::StartOk;
                continue;
            }
            // Stop at a reply operation: the shell answers it before the next frame.
            if self.ops.iter().any(needs_reply) {
                return;
            }
            match codec::decode(buf, self.read_frame_max()) {
                Ok(Some(frame)) => self.handle_frame(env, frame, now),
                Ok(None) => return,
                Err(e) => {
                    let c = match e {
                        codec::FrameError::Syntax(_) => code::SYNTAX_ERROR,
                        _ => code::FRAME_ERROR,
                    };
                    buf.clear();
                    self.connection_exception(Exception::new(c, e.to_string()), now);
                    // Nothing more can be parsed from a broken stream.
                    self.phase = Phase::Closing {
                        until: now + CLOSE_WAIT_MS,
                    };
                    return;
                }
            }
            if !self.wants_read() {
                return;
            }
        }
    }

    fn bad_header(&mut self) {
        self.out.buf.extend_from_slice(&PROTOCOL_HEADER);
        self.phase = Phase::Closed;
    }

    fn send_start(&mut self) {
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "per_consumer_qos",
            "authentication_failure_close",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        caps.insert(
            "exchange_exchange_bindings".into(),
            AMQPValue::Boolean(false),
        );
        let mut props = FieldTable::default();
        let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        props.insert("product".into(), long("Levee"));
        props.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), long("Rust"));
        props.insert("cluster_name".into(), long(&self.settings.server_name));
        props.insert(
            "information".into(),
            long("Levee: bounded queues with declared overflow; see docs/amqp.md"),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send0(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        }));
    }

    fn send0(&mut self, m: connection::AMQPMethod) {
        self.out.method(0, AMQPClass::Connection(m));
    }

    pub(crate) fn send(&mut self, channel: u16, m: AMQPClass) {
        self.out.method(channel, m);
    }

    /// Sends `connection.close` with this exception; the connection ends at close-ok (or after
    /// a deadline).
    pub(crate) fn connection_exception(&mut self, e: Exception, now: u64) {
        tracing::info!(conn = self.id, code = e.code, text = %e.text, "AMQP connection exception");
        if matches!(self.phase, Phase::Closing { .. } | Phase::Closed) {
            return;
        }
        self.send0(connection::AMQPMethod::Close(connection::Close {
            reply_code: e.code,
            reply_text: short(&e.text),
            class_id: e.class_id,
            method_id: e.method_id,
        }));
        self.end_channels();
        self.phase = Phase::Closing {
            until: now + CLOSE_WAIT_MS,
        };
    }

    /// The broker is shutting down: close with 320 CONNECTION_FORCED.
    pub(crate) fn shutdown(&mut self, now: u64) {
        if self.phase == Phase::Running {
            self.connection_exception(
                Exception::new(code::CONNECTION_FORCED, "broker is shutting down"),
                now,
            );
        } else {
            self.phase = Phase::Closed;
        }
    }

    fn handle_frame(&mut self, env: &dyn Env, frame: Inbound, now: u64) {
        if let Phase::Closing { .. } = self.phase {
            // Only close and close-ok are acted on now.
            if let Inbound::Method {
                channel: 0, method, ..
            } = frame
            {
                match *method {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        self.phase = Phase::Closed;
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.send0(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                        self.phase = Phase::Closed;
                    }
                    _ => {}
                }
            }
            return;
        }
        match frame {
            Inbound::Heartbeat { channel: 0 } => {}
            Inbound::Heartbeat { channel } => self.connection_exception(
                Exception::new(
                    code::FRAME_ERROR,
                    format!("heartbeat on channel {channel}: heartbeats go on channel 0"),
                ),
                now,
            ),
            Inbound::Method {
                channel: 0, method, ..
            } => self.connection_method(*method, now),
            Inbound::Method { .. } | Inbound::Header { .. } | Inbound::Body { .. }
                if self.phase != Phase::Running =>
            {
                self.connection_exception(
                    Exception::new(
                        code::CHANNEL_ERROR,
                        "channel frame before the connection is open",
                    ),
                    now,
                );
            }
            Inbound::Method {
                channel,
                method,
                raw,
            } => self.channel_method(env, channel, *method, &raw, now),
            Inbound::Header {
                channel,
                class_id,
                body_size,
                properties,
            } => self.content_header(env, channel, class_id, body_size, properties, now),
            Inbound::Body { channel, data } => self.content_body(env, channel, data, now),
        }
    }

    fn connection_method(&mut self, method: AMQPClass, now: u64) {
        let AMQPClass::Connection(m) = method else {
            let e = Exception::new(
                code::COMMAND_INVALID,
                "only connection methods may use channel 0",
            )
            .on(&method);
            return self.connection_exception(e, now);
        };
        let unexpected = |m: &connection::AMQPMethod| {
            Exception::new(
                code::COMMAND_INVALID,
                format!("unexpected connection method {m:?} here"),
            )
            .on(&AMQPClass::Connection(m.clone()))
        };
        match (self.phase, m) {
            (Phase::StartOk, connection::AMQPMethod::StartOk(ok)) => self.start_ok(ok, now),
            (Phase::TuneOk, connection::AMQPMethod::TuneOk(t)) => {
                if t.frame_max != 0 && t.frame_max < FRAME_MIN_SIZE {
                    return self.connection_exception(
                        Exception::new(
                            code::NOT_ALLOWED,
                            format!(
                                "frame_max {} is below the minimum {FRAME_MIN_SIZE}",
                                t.frame_max
                            ),
                        ),
                        now,
                    );
                }
                if t.frame_max != 0 {
                    self.frame_max = self.frame_max.min(t.frame_max);
                }
                if t.channel_max != 0 {
                    self.channel_max = self.channel_max.min(t.channel_max);
                }
                self.heartbeat_ms = u64::from(t.heartbeat) * 1000;
                self.phase = Phase::Open;
            }
            (Phase::Open, connection::AMQPMethod::Open(o)) => {
                if o.virtual_host.as_str() != "/" {
                    return self.connection_exception(
                        Exception::new(
                            code::NOT_ALLOWED,
                            format!(
                                "vhost {:?} not found: Levee has the one vhost \"/\"",
                                o.virtual_host.as_str()
                            ),
                        ),
                        now,
                    );
                }
                self.send0(connection::AMQPMethod::OpenOk(connection::OpenOk {}));
                self.phase = Phase::Running;
            }
            (_, connection::AMQPMethod::Close(c)) => {
                tracing::debug!(conn = self.id, code = c.reply_code, "AMQP client closed");
                self.end_channels();
                self.send0(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.phase = Phase::Closed;
            }
            (
                Phase::Running,
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => {
                // Clients may tell us they are blocked: nothing to do.
            }
            (Phase::Running, connection::AMQPMethod::UpdateSecret(_)) => {
                let e = Exception::new(code::NOT_IMPLEMENTED, "connection.update-secret");
                self.connection_exception(e, now);
            }
            (_, m) => {
                let e = unexpected(&m);
                self.connection_exception(e, now);
            }
        }
    }

    fn start_ok(&mut self, ok: connection::StartOk, now: u64) {
        if let Some(AMQPValue::FieldTable(caps)) = ok.client_properties.inner().get("capabilities")
        {
            let on = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
            self.caps = Caps {
                blocked: on("connection.blocked"),
                cancel_notify: on("consumer_cancel_notify"),
                auth_failure_close: on("authentication_failure_close"),
            };
        }
        let creds = match Credentials::parse(ok.mechanism.as_str(), ok.response.as_bytes()) {
            Ok(c) => c,
            Err(e) => {
                return self.refuse_login(&e.to_string(), now);
            }
        };
        let _ = self.loopback;
        // The login itself (a password check, slowed after failures) is the shell's: it takes
        // the credentials and answers with `login_done`. Nothing is read meanwhile.
        self.pending_login = Some(creds);
        self.phase = Phase::Login;
    }

    /// The credentials of `start-ok`, for the shell to log in with (once).
    pub(crate) fn take_login(&mut self) -> Option<Credentials> {
        self.pending_login.take()
    }

    /// The shell's answer to [`Connection::take_login`]: the user the connection acts as, or why
    /// the login was refused (403 ACCESS_REFUSED, or a silent close for clients without
    /// `authentication_failure_close`, as the spec says).
    pub(crate) fn login_done(&mut self, result: Result<String, String>, now: u64) {
        if self.phase != Phase::Login {
            return;
        }
        match result {
            Ok(user) => {
                self.user = Some(user);
                self.send0(connection::AMQPMethod::Tune(connection::Tune {
                    channel_max: self.settings.channel_max,
                    frame_max: self.frame_max,
                    heartbeat: self.settings.heartbeat_s,
                }));
                self.phase = Phase::TuneOk;
            }
            Err(why) => self.refuse_login(&why, now),
        }
    }

    /// Closes the connection because its user was removed (320 CONNECTION_FORCED).
    pub(crate) fn revoke(&mut self, now: u64) {
        if self.phase == Phase::Running {
            self.connection_exception(
                Exception::new(code::CONNECTION_FORCED, "CONNECTION_FORCED - user removed"),
                now,
            );
        } else {
            self.phase = Phase::Closed;
        }
    }

    fn refuse_login(&mut self, why: &str, now: u64) {
        tracing::info!(conn = self.id, reason = why, "AMQP login refused");
        if self.caps.auth_failure_close {
            self.connection_exception(
                Exception::new(code::ACCESS_REFUSED, format!("ACCESS_REFUSED - {why}")),
                now,
            );
        } else {
            // The spec's way: close the socket without a word.
            self.phase = Phase::Closed;
        }
    }

    fn channel_method(&mut self, env: &dyn Env, id: u16, method: AMQPClass, raw: &[u8], now: u64) {
        match &method {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                if id > self.channel_max {
                    let e = Exception::new(
                        code::CHANNEL_ERROR,
                        format!("channel {id} is above channel_max {}", self.channel_max),
                    )
                    .on(&method);
                    return self.connection_exception(e, now);
                }
                if self.channels.contains_key(&id) {
                    let e = Exception::new(
                        code::CHANNEL_ERROR,
                        format!("channel {id} is already open"),
                    )
                    .on(&method);
                    return self.connection_exception(e, now);
                }
                self.channels.insert(id, Channel::new());
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                return;
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                if self.channels.get(&id).is_some_and(|c| c.closing) {
                    self.channels.remove(&id);
                }
                return;
            }
            _ => {}
        }
        let Some(ch) = self.channels.get(&id) else {
            let e = Exception::new(code::CHANNEL_ERROR, format!("channel {id} is not open"))
                .on(&method);
            return self.connection_exception(e, now);
        };
        if ch.closing {
            // After channel.close we wait for close-ok; a crossing close is answered.
            if let AMQPClass::Channel(channel::AMQPMethod::Close(_)) = method {
                self.channels.remove(&id);
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
            }
            return;
        }
        if ch.content.is_some() {
            let e = Exception::new(
                code::UNEXPECTED_FRAME,
                format!("method on channel {id} while a message's content was expected"),
            )
            .on(&method);
            return self.connection_exception(e, now);
        }
        if let Err(e) = self.channel_dispatch(env, id, method.clone(), raw, now) {
            if is_hard(e.code) {
                self.connection_exception(e, now);
            } else {
                self.channel_exception(id, e);
            }
        }
    }

    /// Closes channel `id` with an exception (a soft error): only this channel.
    pub(crate) fn channel_exception(&mut self, id: u16, e: Exception) {
        tracing::debug!(conn = self.id, channel = id, code = e.code, text = %e.text, "AMQP channel exception");
        self.end_channel(id);
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.closing = true;
            ch.content = None;
        }
        self.send(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Ends every channel (the connection closes).
    fn end_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.end_channel(id);
        }
        self.channels.clear();
        for (queue, p) in std::mem::take(&mut self.producers) {
            if p.registered {
                self.ops.push_back(Op::RemoveProducer { queue });
            }
        }
        self.held_bytes = 0;
    }

    /// Takes a closed or failed connection's remaining cleanup (the shell calls it at the end).
    pub(crate) fn finish(&mut self) {
        self.end_channels();
        self.phase = Phase::Closed;
    }

    /// A frame from a queue actor.
    pub(crate) fn handle_server_frame(&mut self, env: &dyn Env, frame: ServerFrame, now: u64) {
        match frame {
            ServerFrame::Deliver { deliveries } => {
                for d in deliveries {
                    self.deliver(d);
                }
            }
            ServerFrame::PublishConfirm { req, outcomes } => {
                let reqs = self.take_batch(req);
                let mut outcomes = outcomes.iter();
                for r in reqs {
                    // A confirm with fewer outcomes than messages is no promise for the rest.
                    let ok = outcomes.next().is_some_and(super::channel::outcome_ok);
                    self.confirmed(r, ok);
                }
            }
            ServerFrame::PublishCredit { queue, n } => self.credit(env, &queue, n, now),
            ServerFrame::QueueClosed { queue, .. } => self.queue_closed(&queue),
            ServerFrame::Error { req, code, message } => {
                if req != 0 && self.reqs.contains_key(&req) {
                    tracing::debug!(conn = self.id, %code, %message, "publish failed");
                    for r in self.take_batch(req) {
                        self.confirmed(r, false);
                    }
                } else {
                    tracing::debug!(conn = self.id, %code, %message, "queue error");
                }
            }
            // Other frames answer native requests this connection never makes.
            _ => {}
        }
    }
}

/// Whether a reply code is a connection exception (the rest close only their channel; 530 and
/// 540 are channel exceptions here, as RabbitMQ sends them).
fn is_hard(code: u16) -> bool {
    matches!(code, 320 | 501..=505 | 541)
}

fn needs_reply(op: &Op) -> bool {
    matches!(
        op,
        Op::Declare { .. }
            | Op::DeleteQueue { .. }
            | Op::Purge { .. }
            | Op::Inspect { .. }
            | Op::ExchangeDeclare { .. }
            | Op::ExchangeDelete { .. }
            | Op::Bind { .. }
            | Op::PublishRouted { .. }
    )
}

/// A short string, truncated to 255 bytes (at a char boundary) if longer.
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}
