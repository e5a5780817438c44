//! [`Client`]: one connection to a broker shared by every producer and consumer made from it,
//! with request / reply operations and the reconnection supervisor.
//!
//! # Reconnection (exactly what happens)
//! With `ClientOptions::reconnect = Some(backoff)`, when the connection drops (socket error, EOF,
//! three silent heartbeat intervals, or a `Close` from the broker):
//! 1. every request waiting for a reply fails with [`ClientError::ConnectionLost`]; so does every
//!    unconfirmed publish (its confirm future resolves to `ConnectionLost`), including messages
//!    still in an open batch. The message may or may not have been stored: publishing it again
//!    is at-least-once delivery;
//! 2. deliveries received on the old connection can no longer be settled: `ack` / `nack` /
//!    `reject` return `ConnectionLost` (the broker requeued them when the connection ended, with
//!    their delivery count kept); deliveries still buffered in a consumer are discarded;
//! 3. the supervisor reconnects after `initial` (then x`multiplier` up to `max`, each delay
//!    scaled by a random factor in [0.5, 1]); on success it redeclares nothing, but registers
//!    every live producer again (`Produce`, so publish credit flows again) and subscribes every
//!    live consumer again with its current credit target; only then do waiting operations go on.
//!    A producer the broker refuses to register again (say, its queue was deleted meanwhile)
//!    gets no publish credit there: its publishes fail with the broker's reason; a consumer
//!    refused ends with it;
//! 4. operations started while disconnected wait for the new connection, at most
//!    `request_timeout` ([`ClientError::Timeout`]).
//!
//! With `reconnect = None`, a lost connection ends the client: operations fail with
//! `ConnectionLost` and consumer streams yield one `Err(ConnectionLost)` and end.
//!
//! # Following a replicated queue (clusters)
//! A replicated queue is served by one node at a time (its Raft leader); the others answer
//! `not-leader`, naming the serving node when they know it (`: try HOST:PORT`). A client with
//! reconnection follows its queues there, so its producers and consumers survive a failover:
//! - making a producer or consumer on a node that does not serve the queue moves the client's
//!   connection to the node named (at most three moves, then the error is returned);
//! - when the serving node stops serving a queue (`QueueClosed` with `not-leader`: it lost
//!   its leadership), or dies, the connection ends and the supervisor reconnects as above;
//! - after reconnecting, a registration answered `not-leader` moves the connection on to the
//!   node named (or, with no name yet, to the next address of the list), as long as nothing
//!   registered on it: a client whose queues are served by different nodes stays where the
//!   first ones are, and the others fail with `not-leader` (use one client per queue there).
//!
//! The node named is tried first on the next connection; the addresses given to
//! [`Client::connect_any`] follow. Publishes unconfirmed when the connection ended failed with
//! `ConnectionLost` (step 1): publish them again with the same message ids, and the queue's
//! deduplication window drops the copies that were stored.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use levee_proto::{ClientFrame, QueueConfig, QueueInfo, ServerFrame};
use parking_lot::Mutex;
use rand::Rng;
use tokio::net::ToSocketAddrs;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::{self, Conn, Counters, unexpected};
use crate::error::{ClientError, Result};
use crate::options::ClientOptions;
use crate::window::Window;

/// Reply to [`Client::declare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeclareOk {
    /// Whether the queue was created (false: it existed with the same config).
    pub created: bool,
    /// Messages it holds.
    pub messages: u64,
}

/// Counters of a client's traffic since it was created (all connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Frames sent, of every type.
    pub frames_sent: u64,
    /// `Publish` frames sent.
    pub publish_frames: u64,
    /// Messages sent in `Publish` frames.
    pub messages_published: u64,
    /// `Ack`, `Nack` and `Reject` frames sent.
    pub settle_frames: u64,
    /// `Credit` frames sent.
    pub credit_frames: u64,
    /// `Heartbeat` frames sent.
    pub heartbeats: u64,
    /// Socket writes (each carries one or more frames).
    pub writes: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Successful reconnections.
    pub reconnects: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    Connected(Arc<Conn>),
    Reconnecting,
    Lost,
    Closed,
}

/// A producer as the client's supervisor sees it: registered again on every new connection,
/// told when one is lost. Implemented by the producer module (so this module does not depend on it).
pub(crate) trait ProducerHandle: Send + Sync {
    /// The queue it publishes to.
    fn queue(&self) -> &str;
    /// The connection `epoch` died.
    fn on_disconnect(&self, epoch: u64);
}

/// A consumer as the client's supervisor sees it: subscribed again on every new connection, ended
/// when the client gives up. Implemented by the consumer module.
pub(crate) trait ConsumerHandle: Send + Sync {
    /// The queue it consumes from.
    fn queue(&self) -> &str;
    /// Whether it was closed (it is then dropped from the client's list).
    fn is_closed(&self) -> bool;
    /// Subscribes it on `conn` (no-op if already subscribed there).
    fn resubscribe_on<'a>(self: Arc<Self>, conn: &'a Arc<Conn>) -> BoxFuture<'a, Result<()>>;
    /// No more deliveries will come: its stream yields `e` (unless `Closed`) and ends.
    fn finish(&self, e: ClientError);
}

/// Most connection moves while making one producer or consumer (see the module docs).
pub(crate) const MAX_HOPS: usize = 3;

pub(crate) struct Inner {
    addrs: Vec<SocketAddr>,
    /// The node to try first on the next connection: where a `not-leader` said a queue is.
    prefer: Mutex<Option<SocketAddr>>,
    pub opts: ClientOptions,
    state: watch::Sender<State>,
    epoch: AtomicU64,
    pub counters: Arc<Counters>,
    pub window: Window,
    pub(crate) producers: Mutex<Vec<Weak<dyn ProducerHandle>>>,
    pub(crate) consumers: Mutex<Vec<Weak<dyn ConsumerHandle>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let State::Connected(c) = &*self.state.borrow() {
            let _ = c.send(ClientFrame::Close {
                code: None,
                reason: "client dropped".into(),
            });
        }
    }
}

impl Inner {
    /// The addresses in the order the next connection tries them: the preferred one first.
    fn connect_order(&self) -> Vec<SocketAddr> {
        let mut order = self.addrs.clone();
        if let Some(p) = *self.prefer.lock() {
            order.retain(|a| *a != p);
            order.insert(0, p);
        }
        order
    }

    /// After `e` from the node `conn` reached: if it is `not-leader` and this client follows
    /// queues (it reconnects), remembers where to go (the node named, else the address after
    /// `conn`'s) and ends `conn`, so the supervisor reconnects there. Whether it did.
    pub(crate) async fn follow(&self, conn: &Conn, e: &ClientError) -> bool {
        if self.opts.reconnect.is_none() || e.not_leader_text().is_none() {
            return false;
        }
        let named = match e.serving_node() {
            Some(at) => tokio::net::lookup_host(at)
                .await
                .ok()
                .and_then(|mut a| a.next()),
            None => None,
        };
        let next = named.or_else(|| {
            let i = self.addrs.iter().position(|a| *a == conn.peer)?;
            self.addrs.get((i + 1) % self.addrs.len()).copied()
        });
        if next.is_none_or(|n| n == conn.peer) {
            return false;
        }
        *self.prefer.lock() = next;
        tracing::info!(from = %conn.peer, to = ?next, "the queue is served by another node; moving there");
        conn.kill(e.clone());
        true
    }

    /// The live connection, waiting (at most `request_timeout`) while reconnecting.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        let mut rx = self.state.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    State::Connected(c) if !c.is_dead() => return Ok(c.clone()),
                    State::Lost => return Err(ClientError::ConnectionLost),
                    State::Closed => return Err(ClientError::Closed),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(self.opts.request_timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(self.opts.request_timeout))?
    }

    /// The live connection if there is one now.
    pub(crate) fn conn_now(&self) -> Result<Arc<Conn>> {
        match &*self.state.borrow() {
            State::Connected(c) if !c.is_dead() => Ok(c.clone()),
            State::Closed => Err(ClientError::Closed),
            _ => Err(ClientError::ConnectionLost),
        }
    }

    pub(crate) async fn request(
        &self,
        make: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<ServerFrame> {
        self.conn().await?.request(make).await
    }

    fn live_producers(&self) -> Vec<Arc<dyn ProducerHandle>> {
        let mut ps = self.producers.lock();
        ps.retain(|w| w.strong_count() > 0);
        ps.iter().filter_map(Weak::upgrade).collect()
    }

    fn live_consumers(&self) -> Vec<Arc<dyn ConsumerHandle>> {
        let mut cs = self.consumers.lock();
        cs.retain(|w| w.upgrade().is_some_and(|c| !c.is_closed()));
        cs.iter().filter_map(Weak::upgrade).collect()
    }

    /// Registers producers and consumers on a fresh connection. A registration answered
    /// `not-leader` before any succeeded moves the connection on ([`Inner::follow`]: `Err`, and
    /// the supervisor reconnects); after one succeeded, the connection stays (see the module docs).
    async fn reregister(&self, c: &Arc<Conn>) -> Result<()> {
        let mut queues = HashSet::new();
        let mut registered = false;
        for p in self.live_producers() {
            if queues.insert(p.queue().to_string()) {
                match register_producer(c, p.queue()).await {
                    Ok(()) => registered = true,
                    Err(e @ ClientError::Server { .. }) => {
                        if !registered && self.follow(c, &e).await {
                            return Err(e);
                        }
                        tracing::warn!(queue = p.queue(), error = %e, "producer not re-registered");
                        // Unregistered, it gets no publish credit here: its publishes fail with
                        // the reason instead of waiting for credit that never comes.
                        c.credit(p.queue()).close(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for s in self.live_consumers() {
            match s.clone().resubscribe_on(c).await {
                Ok(()) => registered = true,
                Err(e @ ClientError::Server { .. }) => {
                    if !registered && self.follow(c, &e).await {
                        return Err(e);
                    }
                    tracing::warn!(queue = s.queue(), error = %e, "consumer not resubscribed");
                    s.finish(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn disconnected(&self, c: &Conn) {
        for p in self.live_producers() {
            p.on_disconnect(c.epoch);
        }
    }

    fn finish(&self, e: ClientError) {
        for s in self.live_consumers() {
            s.finish(e.clone());
        }
    }
}

/// Registers a producer of `queue` on `c` (`Produce`), so publish credit flows on it.
pub(crate) async fn register_producer(c: &Conn, queue: &str) -> Result<()> {
    c.reopen_credit(queue);
    // The counter exists before the request: credit granted with the reply is not lost.
    c.credit(queue);
    match c
        .request(|req| ClientFrame::Produce {
            req,
            queue: queue.to_string(),
        })
        .await?
    {
        ServerFrame::QueueOk { .. } => Ok(()),
        other => Err(unexpected(&other)),
    }
}

async fn inspect_on(c: &Conn, queue: &str) -> Result<QueueInfo> {
    match c
        .request(|req| ClientFrame::Inspect {
            req,
            queue: queue.to_string(),
        })
        .await?
    {
        ServerFrame::QueueStats { info, .. } => Ok(*info),
        other => Err(unexpected(&other)),
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

async fn supervise(weak: Weak<Inner>, mut conn: Arc<Conn>, mut reader: JoinHandle<()>) {
    loop {
        let _ = (&mut reader).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.disconnected(&conn);
        let closed = matches!(*inner.state.borrow(), State::Closed);
        let backoff = match inner.opts.reconnect {
            Some(b) if !closed => b,
            _ => {
                if !closed {
                    inner.state.send_replace(State::Lost);
                }
                inner.finish(if closed {
                    ClientError::Closed
                } else {
                    ClientError::ConnectionLost
                });
                return;
            }
        };
        inner.state.send_replace(State::Reconnecting);
        tracing::info!(epoch = conn.epoch, "connection lost; reconnecting");
        drop(inner);
        let mut delay = backoff.initial;
        loop {
            tokio::time::sleep(jitter(delay)).await;
            delay = backoff.next(delay);
            let Some(inner) = weak.upgrade() else { return };
            if matches!(*inner.state.borrow(), State::Closed) {
                inner.finish(ClientError::Closed);
                return;
            }
            let epoch = inner.epoch.fetch_add(1, Ordering::Relaxed) + 1;
            let order = inner.connect_order();
            let (c, r) =
                match conn::connect(&order, &inner.opts, epoch, inner.counters.clone()).await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "reconnect attempt failed");
                        continue;
                    }
                };
            if let Err(e) = inner.reregister(&c).await {
                tracing::debug!(error = %e, "connection lost while re-registering");
                c.kill(e);
                continue;
            }
            let installed = inner.state.send_if_modified(|s| {
                if matches!(s, State::Closed) {
                    false
                } else {
                    *s = State::Connected(c.clone());
                    true
                }
            });
            if !installed {
                let _ = c.send(ClientFrame::Close {
                    code: None,
                    reason: "client closed".into(),
                });
                inner.finish(ClientError::Closed);
                return;
            }
            inner.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(epoch, "reconnected");
            conn = c;
            reader = r;
            break;
        }
    }
}

/// A connection to a Levee broker; cheap to clone, usable from many tasks at once.
///
/// Dropping the last clone (producers and consumers hold one) closes the connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.addrs)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and runs the handshake. Fails if the first connection cannot be made (no retry
    /// here: reconnection starts once a connection has existed).
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled connect leaves nothing behind.
    pub async fn connect(addr: impl ToSocketAddrs, opts: ClientOptions) -> Result<Client> {
        opts.validate()?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        Client::connect_resolved(addrs, opts).await
    }

    /// Connects to the first of several brokers (the nodes of a cluster, each `HOST:PORT`) that
    /// answers, trying them in order; later reconnections go through the same list, so a client
    /// whose node died moves on to the next one. An address that does not resolve is skipped
    /// (an error only if none resolves).
    ///
    /// A replicated queue is served by one node at a time: an operation on it through another
    /// node fails with `not-leader`, and [`ClientError::serving_node`] names the node to use.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled connect leaves nothing behind.
    pub async fn connect_any<S: AsRef<str>>(nodes: &[S], opts: ClientOptions) -> Result<Client> {
        opts.validate()?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut failed = Vec::new();
        for node in nodes {
            let node = node.as_ref().trim();
            match tokio::net::lookup_host(node).await {
                Ok(found) => {
                    for a in found {
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                }
                Err(e) => failed.push(format!("{node}: {e}")),
            }
        }
        if addrs.is_empty() && !failed.is_empty() {
            return Err(ClientError::Io(failed.join("; ")));
        }
        Client::connect_resolved(addrs, opts).await
    }

    async fn connect_resolved(addrs: Vec<SocketAddr>, opts: ClientOptions) -> Result<Client> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidOption(
                "the address resolves to nothing".into(),
            ));
        }
        let counters = Arc::new(Counters::default());
        let (conn, reader) = conn::connect(&addrs, &opts, 1, counters.clone()).await?;
        let window = Window::new(opts.max_in_flight_messages, opts.max_in_flight_bytes);
        let inner = Arc::new(Inner {
            addrs,
            prefer: Mutex::new(None),
            opts,
            state: watch::Sender::new(State::Connected(conn.clone())),
            epoch: AtomicU64::new(1),
            counters,
            window,
            producers: Mutex::new(Vec::new()),
            consumers: Mutex::new(Vec::new()),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), conn, reader));
        Ok(Client { inner })
    }

    /// Creates a queue, or checks that the existing one has this config (a different config is
    /// a [`ClientError::Server`] with code `queue-config-mismatch` listing the differences).
    ///
    /// # Cancel safety
    /// Cancel-safe in that nothing is left waiting (the reply is discarded when it arrives), but
    /// the request may already have been sent: the queue may or may not have been created.
    /// Declaring again is idempotent, so retry to find out.
    pub async fn declare(&self, queue: &str, config: QueueConfig) -> Result<DeclareOk> {
        match self
            .inner
            .request(|req| ClientFrame::Declare {
                req,
                queue: queue.to_string(),
                config,
            })
            .await?
        {
            ServerFrame::QueueOk {
                created, messages, ..
            } => Ok(DeclareOk { created, messages }),
            other => Err(unexpected(&other)),
        }
    }

    async fn queue_ok(&self, make: impl FnOnce(u64) -> ClientFrame) -> Result<u64> {
        match self.inner.request(make).await? {
            ServerFrame::QueueOk { messages, .. } => Ok(messages),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes a live queue's configuration to `config` (the complete new config: inspect, change
    /// fields, update). Durability and order cannot change; lowering limits drops nothing (the
    /// queue refuses new messages until drained below them). Returns the messages it holds.
    ///
    /// # Cancel safety
    /// As [`Client::declare`]: the change may or may not have been applied.
    pub async fn update(&self, queue: &str, config: QueueConfig) -> Result<u64> {
        let queue = queue.to_string();
        self.queue_ok(|req| ClientFrame::Update { req, queue, config })
            .await
    }

    /// The next `count` ready messages of `queue` (at most 1000), in delivery order, without
    /// consuming them (their `subscription` and `tag` are 0: they cannot be settled).
    pub async fn peek(&self, queue: &str, count: u32) -> Result<Vec<levee_proto::Delivery>> {
        let queue = queue.to_string();
        match self
            .inner
            .request(|req| ClientFrame::Peek { req, queue, count })
            .await?
        {
            ServerFrame::Peeked { messages, .. } => Ok(messages),
            other => Err(unexpected(&other)),
        }
    }

    /// Moves up to `max` (all if `None`) ready messages of `queue` to `to` (with `header`, only
    /// those whose header `name` has this value), each settled in `queue` only once `to` stored
    /// it; returns how many moved (fewer if `to` filled up).
    pub async fn move_messages(
        &self,
        queue: &str,
        to: &str,
        max: Option<u64>,
        header: Option<(&str, &[u8])>,
    ) -> Result<u64> {
        let (queue, to) = (queue.to_string(), to.to_string());
        let header = header.map(|(n, v)| (n.to_string(), bytes::Bytes::copy_from_slice(v)));
        self.queue_ok(|req| ClientFrame::Move {
            req,
            queue,
            to,
            max,
            header,
        })
        .await
    }

    /// Deletes a queue with its messages; returns how many it held.
    ///
    /// # Cancel safety
    /// As [`Client::declare`]: nothing is left waiting, but the queue may or may not have been
    /// deleted.
    pub async fn delete(&self, queue: &str) -> Result<u64> {
        let queue = queue.to_string();
        self.queue_ok(|req| ClientFrame::Delete { req, queue })
            .await
    }

    /// Drops every ready message of a queue; returns how many.
    ///
    /// # Cancel safety
    /// As [`Client::declare`]: nothing is left waiting, but the purge may or may not have
    /// happened (and its count is lost).
    pub async fn purge(&self, queue: &str) -> Result<u64> {
        let queue = queue.to_string();
        self.queue_ok(|req| ClientFrame::Purge { req, queue }).await
    }

    /// A queue's config and counters.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads; the reply is discarded when it arrives.
    pub async fn inspect(&self, queue: &str) -> Result<QueueInfo> {
        inspect_on(&*self.inner.conn().await?, queue).await
    }

    /// [`Client::inspect`], moving the connection to the node serving `queue` when this one
    /// answers `not-leader` (with reconnection: see "Following a replicated queue" in the
    /// module docs; at most [`MAX_HOPS`] moves). Used before making a producer or consumer.
    pub(crate) async fn inspect_following(&self, queue: &str) -> Result<QueueInfo> {
        let mut hops = 0;
        loop {
            let conn = self.inner.conn().await?;
            match inspect_on(&conn, queue).await {
                Err(e) if hops < MAX_HOPS && self.inner.follow(&conn, &e).await => hops += 1,
                r => return r,
            }
        }
    }

    /// Every queue's name.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads; the reply is discarded when it arrives.
    pub async fn list_queues(&self) -> Result<Vec<String>> {
        match self
            .inner
            .request(|req| ClientFrame::ListQueues { req })
            .await?
        {
            ServerFrame::QueueList { queues, .. } => Ok(queues),
            other => Err(unexpected(&other)),
        }
    }

    /// Traffic counters (frames, writes, reconnects).
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            frames_sent: l(&c.frames),
            publish_frames: l(&c.publish_frames),
            messages_published: l(&c.published),
            settle_frames: l(&c.settle_frames),
            credit_frames: l(&c.credit_frames),
            heartbeats: l(&c.heartbeats),
            writes: l(&c.writes),
            bytes_sent: l(&c.bytes),
            reconnects: l(&c.reconnects),
        }
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.conn_now().is_ok()
    }

    /// Closes the connection (sending `Close`) and stops reconnecting. Unconfirmed publishes fail
    /// with `ConnectionLost`; consumers end; later operations fail with [`ClientError::Closed`].
    ///
    /// # Cancel safety
    /// Cancel-safe: once called, the client is closed even if the wait for the socket to close
    /// is cancelled.
    pub async fn close(&self) -> Result<()> {
        let prev = self.inner.state.send_replace(State::Closed);
        if let State::Connected(c) = prev {
            let _ = c.send(ClientFrame::Close {
                code: None,
                reason: "client closed".into(),
            });
            let _ = tokio::time::timeout(Duration::from_secs(5), c.dead()).await;
            c.kill(ClientError::Closed);
        }
        Ok(())
    }
}
