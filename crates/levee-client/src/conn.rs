//! One connection to the broker (plain TCP or TLS, see `tls`): the handshake, a reader task and a writer task.
//!
//! The reader routes every server frame: replies by request id to their waiter (a oneshot for
//! requests, the per-message confirm waiters for publishes), `Deliver` to the consumer owning the
//! subscription, `PublishCredit` to the queue's credit counter, `Heartbeat` to nothing. The writer
//! encodes whatever frames are queued into one buffer and writes it with one `write_all` (TCP
//! nodelay is on, so coalescing is what keeps the packet count down); when the connection has been
//! idle for half the heartbeat interval it sends a `Heartbeat`.
//!
//! # Invariants
//! - Every pending reply is resolved exactly once: by its reply, by a timeout (requests), or with
//!   [`ClientError::ConnectionLost`] when the connection dies. `kill` marks the connection dead and
//!   drains the pending map under one lock, and nothing is added to a dead connection's map, so no
//!   waiter is left behind.
//! - A subscription's route is installed by the reader when it reads `Subscribed`, before it reads
//!   any later frame, so no delivery can arrive for a subscription the reader does not know yet.
//! - The publish-credit counter of a queue exists before `Produce` is sent, so no `PublishCredit`
//!   is lost.
//!
//! Memory bound: one incoming frame of at most `max_incoming_frame` bytes; the outgoing queue is
//! unbounded but fed only by bounded sources (publishes within the in-flight windows, settlements
//! within consumer credit, and requests awaited by their callers); the write buffer is flushed at
//! 1 MiB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use levee_proto::{
    ClientFrame, ErrorCode, FrameHeader, Hello, PublishOutcome, ServerFrame, Welcome,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connection's read half (plain or TLS).
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// The connection's write half (plain or TLS).
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::credit::RttFilter;
use crate::error::ClientError;
use crate::options::ClientOptions;

/// Counters of one client (across its connections).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames: AtomicU64,
    pub publish_frames: AtomicU64,
    pub published: AtomicU64,
    pub settle_frames: AtomicU64,
    pub credit_frames: AtomicU64,
    pub heartbeats: AtomicU64,
    pub writes: AtomicU64,
    pub bytes: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Counts a producer's unconfirmed messages so `flush` can wait for zero.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    n: AtomicU64,
    pub idle: Notify,
    /// Notified at every confirm (the producer's ack clock: an open batch is sent as soon as
    /// nothing it sent earlier is still unconfirmed).
    pub progress: Notify,
}

impl Tracker {
    pub(crate) fn count(&self) -> u64 {
        self.n.load(Ordering::Acquire)
    }
}

/// One unconfirmed message: held by a tracker while it exists.
pub(crate) struct TrackGuard(Arc<Tracker>);

impl TrackGuard {
    pub(crate) fn new(t: &Arc<Tracker>) -> Self {
        t.n.fetch_add(1, Ordering::AcqRel);
        TrackGuard(t.clone())
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
        self.0.progress.notify_waiters();
    }
}

/// Everything a published message holds until its confirm: the waiter, its window permits
/// (released on drop), its breaker permit and its tracker slot.
pub(crate) struct Waiter {
    pub tx: oneshot::Sender<Result<PublishOutcome, ClientError>>,
    pub permits: [Option<OwnedSemaphorePermit>; 4],
    pub breaker: Option<levee_flow::breaker::Permit>,
    pub guard: TrackGuard,
}

impl Waiter {
    /// Resolves the confirm: `Rejected` becomes [`ClientError::Rejected`]; the breaker counts
    /// `Stored`, `Dropped` and `Duplicate` as successes, anything else as a failure.
    pub(crate) fn resolve(self, r: Result<PublishOutcome, ClientError>) {
        let r = match r {
            Ok(PublishOutcome::Rejected { code, reason }) => {
                Err(ClientError::Rejected { code, reason })
            }
            other => other,
        };
        if let Some(p) = self.breaker {
            match r {
                Ok(
                    PublishOutcome::Stored { .. }
                    | PublishOutcome::Dropped { .. }
                    | PublishOutcome::Duplicate { .. },
                ) => p.success(),
                _ => p.failure(),
            }
        }
        // Window room and the tracker slot are released before the confirm is visible, so a
        // caller that saw its confirm also sees the room.
        drop(self.permits);
        drop(self.guard);
        let _ = self.tx.send(r);
    }
}

/// A subscription's receiver, as the reader sees it: told of its `Subscribed`, of each delivery
/// and of the connection's end. Implemented by the consumer module (so this module does not
/// depend on it).
pub(crate) trait Subscriber: Send + Sync {
    /// The reader read `Subscribed` (before any delivery of it).
    fn on_subscribed(&self, epoch: u64, subscription: u64, rtt: Option<Duration>);
    /// The reader read a delivery for this subscription.
    fn on_delivery(&self, epoch: u64, d: levee_proto::Delivery);
    /// The connection `epoch` died: what it held is gone (the broker requeues it).
    fn on_conn_lost(&self, epoch: u64);
    /// The subscribed queue.
    fn queue(&self) -> &str;
    /// The broker said the queue closed (`QueueClosed` on connection `epoch`): the subscription
    /// is over and ends with `e`; what it held goes back to the queue.
    fn on_queue_closed(&self, epoch: u64, e: ClientError);
}

type Reply = Result<ServerFrame, ClientError>;

enum Pending {
    Request(oneshot::Sender<Reply>, Instant),
    Subscribe(Arc<dyn Subscriber>, oneshot::Sender<Reply>, Instant),
    Publish(Vec<Waiter>),
}

impl Pending {
    fn fail(self, e: ClientError) {
        match self {
            Pending::Request(tx, _) | Pending::Subscribe(_, tx, _) => {
                let _ = tx.send(Err(e));
            }
            Pending::Publish(ws) => ws.into_iter().for_each(|w| w.resolve(Err(e.clone()))),
        }
    }
}

/// Publish credit of one queue on one connection (`block` queues): granted minus used; closed
/// for good once the broker says the queue closed (`QueueClosed`).
#[derive(Debug, Default)]
pub(crate) struct PublishCredit {
    avail: Mutex<u64>,
    closed: Mutex<Option<ClientError>>,
    pub notify: Notify,
}

impl PublishCredit {
    /// Why no credit will ever come on this connection, once the queue closed.
    pub(crate) fn closed(&self) -> Option<ClientError> {
        self.closed.lock().clone()
    }

    /// No credit will come on this connection (the queue closed, or registering the producer
    /// failed): waiting publishes fail with `e`, and so do later ones.
    pub(crate) fn close(&self, e: ClientError) {
        *self.avail.lock() = 0;
        *self.closed.lock() = Some(e);
        self.notify.notify_waiters();
    }

    /// Takes one unit if there is one.
    pub(crate) fn try_take(&self) -> bool {
        let mut a = self.avail.lock();
        if *a > 0 {
            *a -= 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn available(&self) -> u64 {
        *self.avail.lock()
    }

    fn add(&self, n: u32) {
        *self.avail.lock() += u64::from(n);
        self.notify.notify_waiters();
    }
}

#[derive(Default)]
struct Routes {
    dead: bool,
    pending: HashMap<u64, Pending>,
    subs: HashMap<u64, Arc<dyn Subscriber>>,
    credits: HashMap<String, Arc<PublishCredit>>,
}

/// A live (or dead) connection.
pub(crate) struct Conn {
    /// Connection generation of this client (1, 2, ... per reconnect).
    pub epoch: u64,
    /// The broker address this connection reached.
    pub peer: SocketAddr,
    /// The client reconnects: a queue moving to another node (`QueueClosed` with `not-leader`)
    /// ends this connection, so the supervisor follows the queue, instead of ending its
    /// producers and consumers.
    follow: bool,
    /// The broker's `max_frame`.
    pub max_frame: usize,
    tx: mpsc::UnboundedSender<ClientFrame>,
    routes: Mutex<Routes>,
    dead_tx: watch::Sender<bool>,
    rtt: Mutex<RttFilter>,
    counters: Arc<Counters>,
    next_req: AtomicU64,
    request_timeout: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("epoch", &self.epoch)
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl Conn {
    pub(crate) fn is_dead(&self) -> bool {
        *self.dead_tx.borrow()
    }

    /// Resolves when the connection is dead.
    pub(crate) async fn dead(&self) {
        let mut rx = self.dead_tx.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// The smallest recent round trip of this connection.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt.lock().get(Instant::now())
    }

    fn rtt_sample(&self, since: Instant) {
        let now = Instant::now();
        self.rtt.lock().sample(now, now - since);
    }

    /// Queues a frame for the writer.
    pub(crate) fn send(&self, frame: ClientFrame) -> Result<(), ClientError> {
        if self.is_dead() {
            return Err(ClientError::ConnectionLost);
        }
        self.tx.send(frame).map_err(|_| ClientError::ConnectionLost)
    }

    fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, req: u64, p: Pending) -> Result<(), ClientError> {
        let mut r = self.routes.lock();
        if r.dead {
            drop(r);
            p.fail(ClientError::ConnectionLost);
            return Err(ClientError::ConnectionLost);
        }
        r.pending.insert(req, p);
        Ok(())
    }

    fn unregister(&self, req: u64) -> Option<Pending> {
        self.routes.lock().pending.remove(&req)
    }

    async fn await_reply(&self, req: u64, rx: oneshot::Receiver<Reply>) -> Reply {
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::ConnectionLost),
            Err(_) => {
                self.unregister(req);
                Err(ClientError::Timeout(self.request_timeout))
            }
        }
    }

    /// Sends a request and waits for its reply (an `Error` reply becomes
    /// [`ClientError::Server`]).
    ///
    /// Cancel-safe: dropping the future abandons the reply (it is discarded when it arrives); the
    /// request itself may or may not have been sent.
    pub(crate) async fn request(&self, make: impl FnOnce(u64) -> ClientFrame) -> Reply {
        let req = self.next_req();
        let (tx, rx) = oneshot::channel();
        self.register(req, Pending::Request(tx, Instant::now()))?;
        if let Err(e) = self.send(make(req)) {
            self.unregister(req);
            return Err(e);
        }
        self.await_reply(req, rx).await
    }

    /// Subscribes `shared` to `queue`; the reader installs its route when `Subscribed` arrives.
    /// Returns the subscription id. Cancel-safe like [`Conn::request`].
    pub(crate) async fn subscribe(
        &self,
        shared: Arc<dyn Subscriber>,
        queue: &str,
        credit: u32,
        auto_ack: bool,
    ) -> Result<u64, ClientError> {
        let req = self.next_req();
        let (tx, rx) = oneshot::channel();
        self.register(req, Pending::Subscribe(shared, tx, Instant::now()))?;
        let frame = ClientFrame::Subscribe {
            req,
            queue: queue.to_string(),
            credit,
            auto_ack,
        };
        if let Err(e) = self.send(frame) {
            self.unregister(req);
            return Err(e);
        }
        match self.await_reply(req, rx).await? {
            ServerFrame::Subscribed { subscription, .. } => Ok(subscription),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a request whose reply nobody waits for (it is discarded when it arrives).
    pub(crate) fn send_untracked(
        &self,
        make: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<(), ClientError> {
        self.send(make(self.next_req()))
    }

    /// Forgets a subscription's route (after unsubscribing).
    pub(crate) fn remove_route(&self, subscription: u64) {
        self.routes.lock().subs.remove(&subscription);
    }

    /// The publish-credit counter of `queue`, created if needed.
    pub(crate) fn credit(&self, queue: &str) -> Arc<PublishCredit> {
        let mut r = self.routes.lock();
        if let Some(c) = r.credits.get(queue) {
            return c.clone();
        }
        let c = Arc::new(PublishCredit::default());
        r.credits.insert(queue.to_string(), c.clone());
        c
    }

    /// Before a `Produce` registration: forgets `queue`'s counter if it was closed (the queue
    /// closed and came back), so the new registration's credit goes to a fresh one.
    pub(crate) fn reopen_credit(&self, queue: &str) {
        let mut r = self.routes.lock();
        if r.credits.get(queue).is_some_and(|c| c.closed().is_some()) {
            r.credits.remove(queue);
        }
    }

    /// Sends one `Publish` frame; each waiter is resolved by its outcome (or by the connection's
    /// death). Never blocks.
    pub(crate) fn publish(
        &self,
        queue: &str,
        messages: Vec<levee_proto::Message>,
        waiters: Vec<Waiter>,
    ) {
        let req = self.next_req();
        let n = messages.len() as u64;
        if self.register(req, Pending::Publish(waiters)).is_err() {
            return;
        }
        let frame = ClientFrame::Publish {
            req,
            queue: queue.to_string(),
            messages,
        };
        if let Err(e) = self.send(frame) {
            if let Some(p) = self.unregister(req) {
                p.fail(e);
            }
            return;
        }
        self.counters.published.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks the connection dead and fails everything waiting on it.
    pub(crate) fn kill(&self, why: ClientError) {
        let routes = {
            let mut r = self.routes.lock();
            if r.dead {
                return;
            }
            r.dead = true;
            // Inside the lock: whoever registers a credit counter or pending entry after this
            // sees `is_dead()`, whoever registered before is drained below.
            self.dead_tx.send_replace(true);
            std::mem::take(&mut *r)
        };
        tracing::debug!(epoch = self.epoch, error = %why, "connection ended");
        for (_, p) in routes.pending {
            p.fail(ClientError::ConnectionLost);
        }
        for (_, c) in routes.credits {
            c.notify.notify_waiters();
        }
        for (_, s) in routes.subs {
            s.on_conn_lost(self.epoch);
        }
    }

    /// Handles one server frame; `Err` ends the connection.
    fn dispatch(&self, frame: ServerFrame) -> Result<(), ClientError> {
        match frame {
            ServerFrame::Heartbeat | ServerFrame::Welcome(_) => {}
            ServerFrame::Close { code, reason } => {
                return Err(match code {
                    Some(code) => ClientError::Server {
                        code,
                        message: reason,
                    },
                    None => ClientError::ConnectionLost,
                });
            }
            ServerFrame::Error {
                req: 0,
                code,
                message,
            } => {
                tracing::warn!(%code, %message, "broker reported an error");
            }
            ServerFrame::Deliver { deliveries } => {
                let r = self.routes.lock();
                for d in deliveries {
                    match r.subs.get(&d.subscription) {
                        Some(s) => s.on_delivery(self.epoch, d),
                        None => tracing::debug!(
                            subscription = d.subscription,
                            "delivery for a closed subscription (the broker requeues it)"
                        ),
                    }
                }
            }
            ServerFrame::PublishCredit { queue, n } => {
                let c = self.routes.lock().credits.get(&queue).cloned();
                match c {
                    Some(c) => c.add(n),
                    None => tracing::debug!(%queue, n, "publish credit for an unknown queue"),
                }
            }
            ServerFrame::QueueClosed {
                queue,
                code,
                message,
            } => {
                tracing::debug!(%queue, %code, %message, "the broker closed a queue");
                let e = ClientError::Server { code, message };
                if self.follow && code == ErrorCode::NotLeader {
                    // Served by another node now: reconnect and follow it (the supervisor
                    // registers the producers and consumers again where it is served).
                    return Err(e);
                }
                let (credit, subs): (_, Vec<_>) = {
                    let mut r = self.routes.lock();
                    let credit = r.credits.get(&queue).cloned();
                    let subs = r.subs.extract_if(|_, s| s.queue() == queue).collect();
                    (credit, subs)
                };
                if let Some(c) = credit {
                    c.close(e.clone());
                }
                for (id, s) in subs {
                    s.on_queue_closed(self.epoch, e.clone());
                    // The broker keeps the subscription's entry until told: end it there too.
                    let _ = self.send_untracked(|req| ClientFrame::Unsubscribe {
                        req,
                        subscription: id,
                    });
                }
            }
            other => {
                let Some(req) = other.request_id() else {
                    return Ok(());
                };
                let Some(pending) = self.unregister(req) else {
                    return Ok(()); // abandoned (timed out, cancelled, or fire-and-forget)
                };
                self.complete(pending, other);
            }
        }
        Ok(())
    }

    fn complete(&self, pending: Pending, frame: ServerFrame) {
        let error = match &frame {
            ServerFrame::Error { code, message, .. } => Some(ClientError::Server {
                code: *code,
                message: message.clone(),
            }),
            _ => None,
        };
        match pending {
            Pending::Request(tx, t0) => {
                self.rtt_sample(t0);
                let _ = tx.send(error.map_or(Ok(frame), Err));
            }
            Pending::Subscribe(shared, tx, t0) => {
                self.rtt_sample(t0);
                if let ServerFrame::Subscribed { subscription, .. } = &frame {
                    shared.on_subscribed(self.epoch, *subscription, self.rtt());
                    self.routes.lock().subs.insert(*subscription, shared);
                }
                let _ = tx.send(error.map_or(Ok(frame), Err));
            }
            Pending::Publish(waiters) => match frame {
                ServerFrame::PublishConfirm { outcomes, .. } => {
                    let mut outcomes = outcomes.into_iter();
                    for w in waiters {
                        match outcomes.next() {
                            Some(o) => w.resolve(Ok(o)),
                            None => w.resolve(Err(ClientError::Server {
                                code: ErrorCode::Internal,
                                message: "publish confirm lacks an outcome".into(),
                            })),
                        }
                    }
                }
                other => {
                    let e = error.unwrap_or_else(|| unexpected(&other));
                    waiters.into_iter().for_each(|w| w.resolve(Err(e.clone())));
                }
            },
        }
    }
}

pub(crate) fn unexpected(frame: &ServerFrame) -> ClientError {
    ClientError::Server {
        code: ErrorCode::ProtocolViolation,
        message: format!("unexpected reply frame type 0x{:02x}", frame.frame_type()),
    }
}

/// Connects, runs the handshake and starts the reader and writer. The returned handle completes
/// when the connection is dead.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    opts: &ClientOptions,
    epoch: u64,
    counters: Arc<Counters>,
) -> Result<(Arc<Conn>, JoinHandle<()>), ClientError> {
    let t0 = Instant::now();
    let (rd, wr, buf, welcome, peer) =
        tokio::time::timeout(opts.connect_timeout, handshake(addrs, opts))
            .await
            .map_err(|_| ClientError::Timeout(opts.connect_timeout))??;
    let (tx, rx) = mpsc::unbounded_channel();
    let (dead_tx, dead_rx) = watch::channel(false);
    let mut rtt = RttFilter::default();
    rtt.sample(Instant::now(), t0.elapsed());
    let conn = Arc::new(Conn {
        epoch,
        peer,
        follow: opts.reconnect.is_some(),
        max_frame: welcome.max_frame as usize,
        tx,
        routes: Mutex::new(Routes::default()),
        dead_tx,
        rtt: Mutex::new(rtt),
        counters: counters.clone(),
        next_req: AtomicU64::new(1),
        request_timeout: opts.request_timeout,
    });
    let heartbeat =
        (welcome.heartbeat_ms > 0).then(|| Duration::from_millis(welcome.heartbeat_ms.into()));
    let wconn = conn.clone();
    let wdead = dead_rx.clone();
    tokio::spawn(async move {
        let why = writer(rx, wr, wdead, heartbeat, &counters).await;
        wconn.kill(why);
    });
    let rconn = conn.clone();
    let max_in = opts.max_incoming_frame;
    let handle = tokio::spawn(async move {
        let why = reader(&rconn, rd, buf, max_in, heartbeat, dead_rx).await;
        rconn.kill(why);
    });
    Ok((conn, handle))
}

async fn handshake(
    addrs: &[SocketAddr],
    opts: &ClientOptions,
) -> Result<(ReadHalf, WriteHalf, BytesMut, Welcome, SocketAddr), ClientError> {
    let stream = TcpStream::connect(addrs).await?;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = match &opts.tls {
        None => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        Some(tls) => {
            let ip = stream.peer_addr()?.ip().to_string();
            let (r, w) = tokio::io::split(tls.connect(stream, &ip).await?);
            (Box::new(r), Box::new(w))
        }
    };
    let mut out = BytesMut::new();
    let mut hello = Hello::new(opts.name.clone());
    hello.credentials = opts.credentials.clone();
    ClientFrame::Hello(hello).encode(&mut out)?;
    wr.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut checked = false;
    loop {
        // Before decoding the first frame (length prefix and type: 5 bytes), make sure it is
        // not another protocol's answer, which would read as an absurd frame length.
        if !checked {
            if buf.len() < 5 {
                if rd.read_buf(&mut buf).await? == 0 {
                    return Err(ClientError::ConnectionLost);
                }
                continue;
            }
            if let Some(protocol) = crate::error::foreign_protocol(&buf) {
                return Err(ClientError::WrongProtocol { protocol });
            }
            checked = true;
        }
        match ServerFrame::decode(&mut buf, opts.max_incoming_frame)? {
            Some(ServerFrame::Welcome(w)) => return Ok((rd, wr, buf, w, peer)),
            Some(ServerFrame::Error { code, message, .. }) => {
                return Err(ClientError::Server { code, message });
            }
            Some(ServerFrame::Close { code, reason }) => {
                return Err(ClientError::Server {
                    code: code.unwrap_or(ErrorCode::ProtocolViolation),
                    message: reason,
                });
            }
            Some(_) => {}
            None => {
                if rd.read_buf(&mut buf).await? == 0 {
                    return Err(ClientError::ConnectionLost);
                }
            }
        }
    }
}

async fn writer(
    mut rx: mpsc::UnboundedReceiver<ClientFrame>,
    mut sock: WriteHalf,
    mut dead: watch::Receiver<bool>,
    heartbeat: Option<Duration>,
    counters: &Counters,
) -> ClientError {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let idle = heartbeat.map_or(Duration::from_secs(3600), |h| h / 2);
    loop {
        let first = tokio::select! {
            biased;
            _ = dead.wait_for(|d| *d) => return ClientError::ConnectionLost,
            f = rx.recv() => match f {
                Some(f) => f,
                None => return ClientError::Closed,
            },
            _ = tokio::time::sleep(idle), if heartbeat.is_some() => ClientFrame::Heartbeat,
        };
        let mut next = Some(first);
        let mut close = false;
        while let Some(f) = next.take() {
            close = matches!(f, ClientFrame::Close { .. });
            let c = match &f {
                ClientFrame::Publish { .. } => Some(&counters.publish_frames),
                ClientFrame::Ack { .. } | ClientFrame::Nack { .. } | ClientFrame::Reject { .. } => {
                    Some(&counters.settle_frames)
                }
                ClientFrame::Credit { .. } => Some(&counters.credit_frames),
                ClientFrame::Heartbeat => Some(&counters.heartbeats),
                _ => None,
            };
            match f.encode(&mut buf) {
                Ok(()) => {
                    counters.frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = c {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Sizes are checked before frames are queued; this is a bug, not bad input.
                Err(e) => tracing::error!(error = %e, "could not encode a frame"),
            }
            if !close && buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = sock.write_all(&buf).await {
            return e.into();
        }
        counters.writes.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.clear();
        if buf.capacity() > 8 << 20 {
            buf = BytesMut::with_capacity(64 * 1024);
        }
        if close {
            let _ = sock.shutdown().await;
            return ClientError::Closed;
        }
    }
}

async fn reader(
    conn: &Conn,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    max_in: usize,
    heartbeat: Option<Duration>,
    mut dead: watch::Receiver<bool>,
) -> ClientError {
    // The broker sends a heartbeat every interval; three silent intervals mean it is gone.
    let idle = heartbeat.map_or(Duration::from_secs(u64::from(u32::MAX)), |h| h * 3);
    loop {
        loop {
            match ServerFrame::decode(&mut buf, max_in) {
                Ok(Some(f)) => {
                    if let Err(e) = conn.dispatch(f) {
                        return e;
                    }
                }
                Ok(None) => break,
                Err(e) => return e.into(),
            }
        }
        if let Some(h) = FrameHeader::peek(&buf)
            && buf.len() < h.total_len()
        {
            buf.reserve(h.total_len() - buf.len());
        }
        tokio::select! {
            biased;
            _ = dead.wait_for(|d| *d) => return ClientError::ConnectionLost,
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => match r {
                Ok(Ok(0)) => return ClientError::ConnectionLost,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return e.into(),
                Err(_) => return ClientError::Timeout(idle),
            },
        }
    }
}
