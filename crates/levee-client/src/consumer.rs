//! [`Consumer`]: a `futures::Stream` of [`Delivery`]s with credit management (fixed or adaptive)
//! and batched settlements.
//!
//! The reader task pushes each delivery into the consumer's channel (bounded by the credit the
//! consumer granted, never by anything else). Taking a delivery from the stream, settling one
//! (`ack` / `nack` / `reject`), or finding the channel empty lets the consumer top its credit up
//! to its target (see [`crate::credit`] for the accounting and the adaptive algorithm).
//!
//! Settlements are queued and sent together: when the stream is polled and has nothing ready,
//! when credit is about to be granted (acks always go out before the credit they free, so the
//! broker never sees more outstanding than the target), when 1024 are queued, or at the latest
//! `settle_linger` after the first one.
//!
//! # Invariants
//! - Right after any credit grant, credit outstanding + buffered + unsettled <= target: a consumer
//!   never holds more than its (largest) target. This is its memory bound.
//! - A delivery is settled at most once (the settle methods consume it). A delivery dropped without
//!   being settled is nacked (requeued at once), so credit is never leaked.
//! - Deliveries of a previous connection are never yielded after a reconnection, and settling one
//!   returns `ConnectionLost` (the broker has already requeued it).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use levee_proto::{ClientFrame, MAX_TAGS, Message, ServerFrame};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::client::{Client, ConsumerHandle, MAX_HOPS};
use crate::conn::{Conn, Subscriber, unexpected};
use crate::credit::{AdaptiveCredit, Ledger};
use crate::error::{ClientError, Result};
use crate::options::{ConsumerOptions, Credit};

/// Settlements queued beyond this many are sent at once.
const SETTLE_BATCH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Nack(u64),
    Reject,
}

enum Event {
    Delivery(u64, levee_proto::Delivery),
    Error(ClientError),
}

struct State {
    conn: Option<Arc<Conn>>,
    epoch: u64,
    subscription: u64,
    ledger: Ledger,
    adaptive: Option<AdaptiveCredit>,
    /// When `Credit` was sent to a starved subscription, for an RTT sample.
    probe: Option<Instant>,
    /// Auto-ack: when the last delivery was handed out.
    last_handed: Option<Instant>,
    settles: Vec<(Settle, u64)>,
    delivered: u64,
    settled: u64,
}

/// A snapshot of a consumer's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CreditStats {
    /// Subscription id on the current connection (0 while not subscribed).
    pub subscription: u64,
    /// Credit granted to the broker and not used yet.
    pub outstanding: u64,
    /// Delivered and not yet taken from the stream.
    pub buffered: u64,
    /// Taken and not yet settled.
    pub in_flight: u64,
    /// The number of messages the consumer aims to hold.
    pub target: u32,
    /// Adaptive mode: the round-trip estimate.
    pub rtt: Option<Duration>,
    /// Adaptive mode: the smoothed per-message processing time.
    pub processing_time: Option<Duration>,
    /// Deliveries received (all connections).
    pub delivered: u64,
    /// Deliveries settled by the application (all connections).
    pub settled: u64,
}

impl CreditStats {
    /// outstanding + buffered + in_flight.
    pub fn held(&self) -> u64 {
        self.outstanding + self.buffered + self.in_flight
    }
}

pub(crate) struct ConsumerShared {
    queue: String,
    opts: ConsumerOptions,
    st: Mutex<State>,
    tx: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    sub_lock: tokio::sync::Mutex<()>,
    settle_wake: Arc<Notify>,
    closed: AtomicBool,
}

impl Drop for ConsumerShared {
    fn drop(&mut self) {
        self.settle_wake.notify_one();
    }
}

async fn settle_task(weak: Weak<ConsumerShared>, wake: Arc<Notify>, linger: Duration) {
    loop {
        wake.notified().await;
        tokio::time::sleep(linger).await;
        match weak.upgrade() {
            Some(s) => {
                let mut st = s.st.lock();
                s.flush(&mut st);
            }
            None => return,
        }
    }
}

impl ConsumerShared {
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn is_subscribed(&self) -> bool {
        let st = self.st.lock();
        st.subscription != 0 && st.conn.as_ref().is_some_and(|c| !c.is_dead())
    }

    fn target(&self, st: &State) -> u32 {
        match (self.opts.credit, &st.adaptive) {
            (_, Some(a)) => a.target(),
            (Credit::Fixed(n), None) => n,
            (Credit::Adaptive { min, .. }, None) => min,
        }
    }

    /// Subscribes on `conn` with the current target as initial credit (no-op if already
    /// subscribed there).
    pub(crate) async fn resubscribe(self: &Arc<Self>, conn: &Arc<Conn>) -> Result<()> {
        let _g = self.sub_lock.lock().await;
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let credit = {
            let mut st = self.st.lock();
            if st.epoch == conn.epoch && st.subscription != 0 {
                return Ok(());
            }
            let target = self.target(&st);
            st.epoch = conn.epoch;
            st.conn = Some(conn.clone());
            st.subscription = 0;
            st.settles.clear();
            st.ledger = Ledger {
                outstanding: u64::from(target),
                ..Ledger::default()
            };
            st.probe = Some(Instant::now());
            target
        };
        let r = conn
            .subscribe(self.clone(), &self.queue, credit, self.opts.auto_ack)
            .await;
        if let Err(e) = &r {
            let mut st = self.st.lock();
            if st.epoch == conn.epoch {
                st.epoch = 0;
                st.conn = None;
                st.ledger = Ledger::default();
            }
            tracing::debug!(queue = %self.queue, error = %e, "subscribe failed");
        }
        r.map(|_| ())
    }

    /// The reader read `Subscribed` (before any delivery of it).
    pub(crate) fn on_subscribed(&self, epoch: u64, subscription: u64, rtt: Option<Duration>) {
        let mut st = self.st.lock();
        if st.epoch == epoch {
            st.subscription = subscription;
        }
        if let (Some(a), Some(rtt)) = (st.adaptive.as_mut(), rtt) {
            a.on_rtt(Instant::now(), rtt);
        }
    }

    /// The reader read a delivery for this consumer.
    pub(crate) fn on_delivery(&self, epoch: u64, d: levee_proto::Delivery) {
        let mut st = self.st.lock();
        if st.epoch != epoch {
            return;
        }
        st.ledger.on_delivery();
        st.delivered += 1;
        if let Some(t) = st.probe.take()
            && let Some(a) = st.adaptive.as_mut()
        {
            let now = Instant::now();
            a.on_rtt(now, now - t);
        }
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Event::Delivery(epoch, d));
        }
    }

    /// The connection `epoch` died: what it held is gone (the broker requeues it).
    pub(crate) fn on_conn_lost(&self, epoch: u64) {
        let mut st = self.st.lock();
        if st.epoch == epoch {
            st.epoch = 0;
            st.conn = None;
            st.subscription = 0;
            st.ledger = Ledger::default();
            st.settles.clear();
            st.probe = None;
            st.last_handed = None;
        }
    }

    /// No more deliveries will come: the stream yields `e` (unless it is `Closed`) and ends.
    pub(crate) fn finish(&self, e: ClientError) {
        if let Some(tx) = self.tx.lock().take()
            && e != ClientError::Closed
        {
            let _ = tx.send(Event::Error(e));
        }
    }

    /// Queues a settlement.
    fn settle(&self, epoch: u64, tag: u64, how: Settle, handed: Instant) -> Result<()> {
        let mut st = self.st.lock();
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if epoch != st.epoch || st.conn.is_none() {
            return Err(ClientError::ConnectionLost);
        }
        let now = Instant::now();
        let concurrency = st.ledger.in_flight.max(1);
        if let Some(a) = st.adaptive.as_mut() {
            a.on_processed(now, now - handed, concurrency);
        }
        st.ledger.on_settle();
        st.settled += 1;
        st.settles.push((how, tag));
        if st.settles.len() >= SETTLE_BATCH {
            self.flush(&mut st);
        } else if st.settles.len() == 1 {
            self.settle_wake.notify_one();
        }
        Ok(())
    }

    /// Sends an `Extend` for one delivery at once (a lease renewal is not batched: it is
    /// usually sent close to the deadline).
    fn extend(&self, epoch: u64, tag: u64, extend_ms: u64) -> Result<()> {
        let st = self.st.lock();
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let (Some(conn), true) = (&st.conn, epoch == st.epoch) else {
            return Err(ClientError::ConnectionLost);
        };
        let _ = conn.send(ClientFrame::Extend {
            subscription: st.subscription,
            tags: vec![tag],
            extend_ms,
        });
        Ok(())
    }

    fn send_settles(&self, st: &mut State) {
        if st.settles.is_empty() {
            return;
        }
        let settles = std::mem::take(&mut st.settles);
        let (Some(conn), sub) = (&st.conn, st.subscription) else {
            return;
        };
        let mut acks = Vec::new();
        let mut rejects = Vec::new();
        let mut nacks: Vec<(u64, Vec<u64>)> = Vec::new();
        for (how, tag) in settles {
            match how {
                Settle::Ack => acks.push(tag),
                Settle::Reject => rejects.push(tag),
                Settle::Nack(delay) => match nacks.iter_mut().find(|(d, _)| *d == delay) {
                    Some((_, tags)) => tags.push(tag),
                    None => nacks.push((delay, vec![tag])),
                },
            }
        }
        for tags in acks.chunks(MAX_TAGS) {
            let _ = conn.send(ClientFrame::Ack {
                subscription: sub,
                tags: tags.to_vec(),
            });
        }
        for tags in rejects.chunks(MAX_TAGS) {
            let _ = conn.send(ClientFrame::Reject {
                subscription: sub,
                tags: tags.to_vec(),
            });
        }
        for (delay_ms, tags) in nacks {
            for tags in tags.chunks(MAX_TAGS) {
                let _ = conn.send(ClientFrame::Nack {
                    subscription: sub,
                    tags: tags.to_vec(),
                    delay_ms,
                });
            }
        }
    }

    /// Grants credit if due, sending queued settlements first.
    fn refill(&self, st: &mut State) {
        if st.subscription == 0 || self.is_closed() {
            return;
        }
        let target = self.target(st);
        let starved = st.ledger.outstanding == 0 && st.ledger.buffered == 0;
        let mut ledger = st.ledger;
        let Some(n) = ledger.refill(target) else {
            return;
        };
        self.send_settles(st);
        let Some(conn) = &st.conn else { return };
        // Taken before sending: a delivery can only make the sample longer than the truth, never
        // shorter (the reader may be waiting for this lock while we finish).
        let sent_at = Instant::now();
        if conn
            .send(ClientFrame::Credit {
                subscription: st.subscription,
                n,
            })
            .is_ok()
        {
            st.ledger = ledger;
            if starved && st.probe.is_none() {
                st.probe = Some(sent_at);
            }
        }
    }

    /// Sends queued settlements, then grants credit if due.
    fn flush(&self, st: &mut State) {
        self.send_settles(st);
        self.refill(st);
    }

    fn stats(&self) -> CreditStats {
        let st = self.st.lock();
        let now = Instant::now();
        CreditStats {
            subscription: st.subscription,
            outstanding: st.ledger.outstanding,
            buffered: st.ledger.buffered,
            in_flight: st.ledger.in_flight,
            target: self.target(&st),
            rtt: st.adaptive.as_ref().and_then(|a| a.rtt(now)),
            processing_time: st.adaptive.as_ref().and_then(AdaptiveCredit::service_time),
            delivered: st.delivered,
            settled: st.settled,
        }
    }
}

/// A stream of deliveries from one queue.
///
/// Poll it (`StreamExt::next`) to receive; each item is `Ok(Delivery)` or, when the connection is
/// lost for good (no reconnection), one `Err(ConnectionLost)` before the end. With reconnection,
/// the stream simply goes on after the client reconnects. [`Consumer::close`] unsubscribes;
/// dropping the consumer unsubscribes too, without waiting for the reply.
///
/// # Cancel safety
/// `StreamExt::next` is cancel-safe (use it in `select!`): a delivery leaves the consumer's
/// channel only in the poll that returns it, so a dropped `next()` future loses nothing.
pub struct Consumer {
    shared: Arc<ConsumerShared>,
    /// Keeps the connection (and its reconnection supervisor) alive while the consumer lives.
    _client: Client,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.shared.queue)
            .field("credit", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) fn new(
        client: &Client,
        queue: &str,
        opts: ConsumerOptions,
    ) -> (Consumer, Arc<ConsumerShared>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let adaptive = match opts.credit {
            Credit::Adaptive { min, max } => Some(AdaptiveCredit::new(min, max)),
            Credit::Fixed(_) => None,
        };
        let wake = Arc::new(Notify::new());
        let linger = opts.settle_linger;
        let shared = Arc::new(ConsumerShared {
            queue: queue.to_string(),
            opts,
            st: Mutex::new(State {
                conn: None,
                epoch: 0,
                subscription: 0,
                ledger: Ledger::default(),
                adaptive,
                probe: None,
                last_handed: None,
                settles: Vec::new(),
                delivered: 0,
                settled: 0,
            }),
            tx: Mutex::new(Some(tx)),
            sub_lock: tokio::sync::Mutex::new(()),
            settle_wake: wake.clone(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(settle_task(Arc::downgrade(&shared), wake, linger));
        (
            Consumer {
                shared: shared.clone(),
                _client: client.clone(),
                rx,
            },
            shared,
        )
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// A snapshot of the consumer's credit (outstanding, buffered, in flight, target, and in
    /// adaptive mode the measured round trip and processing time).
    pub fn credit(&self) -> CreditStats {
        self.shared.stats()
    }

    /// Sends queued settlements (and any credit due) now rather than after `settle_linger`.
    pub fn flush(&self) {
        let mut st = self.shared.st.lock();
        self.shared.flush(&mut st);
    }

    /// Sends queued settlements, unsubscribes and waits for the broker's reply. Deliveries not
    /// settled by then are requeued by the broker; settling them afterwards returns
    /// [`ClientError::Closed`].
    ///
    /// # Cancel safety
    /// Cancel-safe: the consumer is closed once this is called; cancelling only skips the wait.
    pub async fn close(mut self) -> Result<()> {
        let (conn, sub) = self.begin_close();
        self.rx.close();
        let (Some(conn), sub) = (conn, sub) else {
            return Ok(());
        };
        let r = conn
            .request(|req| ClientFrame::Unsubscribe {
                req,
                subscription: sub,
            })
            .await;
        conn.remove_route(sub);
        match r {
            Ok(ServerFrame::Unsubscribed { .. }) => Ok(()),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::ConnectionLost) => Ok(()), // the broker unsubscribes a dead connection
            Err(e) => Err(e),
        }
    }

    /// Marks the consumer closed, flushes settlements; returns the subscription to end.
    fn begin_close(&self) -> (Option<Arc<Conn>>, u64) {
        let mut st = self.shared.st.lock();
        self.shared.send_settles(&mut st);
        self.shared.closed.store(true, Ordering::Release);
        self.shared.tx.lock().take();
        let sub = st.subscription;
        (st.conn.take().filter(|_| sub != 0), sub)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.shared.is_closed() {
            return;
        }
        let (conn, sub) = self.begin_close();
        if let Some(conn) = conn {
            let _ = conn.send_untracked(|req| ClientFrame::Unsubscribe {
                req,
                subscription: sub,
            });
            conn.remove_route(sub);
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let auto_ack = this.shared.opts.auto_ack;
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Event::Delivery(epoch, d))) => {
                    let mut st = this.shared.st.lock();
                    if epoch != st.epoch {
                        continue; // from a dead connection: the broker requeued it
                    }
                    let now = Instant::now();
                    if auto_ack {
                        if let (Some(t), Some(a)) = (st.last_handed, st.adaptive.as_mut()) {
                            a.on_processed(now, now - t, 1);
                        }
                        st.last_handed = Some(now);
                    }
                    st.ledger.on_take(auto_ack);
                    this.shared.refill(&mut st);
                    return Poll::Ready(Some(Ok(Delivery {
                        inner: d,
                        shared: this.shared.clone(),
                        epoch,
                        handed: now,
                        settled: auto_ack,
                    })));
                }
                Poll::Ready(Some(Event::Error(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let mut st = this.shared.st.lock();
                    if auto_ack
                        && let Some(t) = st.last_handed.take()
                        && let Some(a) = st.adaptive.as_mut()
                    {
                        let now = Instant::now();
                        a.on_processed(now, now - t, 1);
                    }
                    this.shared.flush(&mut st);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// One message delivered to a consumer. Settle it with [`Delivery::ack`], [`Delivery::nack`] or
/// [`Delivery::reject`]; dropping it unsettled nacks it (requeue now).
///
/// Settling only queues the settlement (it is sent batched, see the module docs), so the methods
/// are synchronous; their error says the settlement cannot be sent:
/// [`ClientError::ConnectionLost`] for a delivery of a previous connection (the broker already
/// requeued it), [`ClientError::Closed`] after [`Consumer::close`].
pub struct Delivery {
    inner: levee_proto::Delivery,
    shared: Arc<ConsumerShared>,
    epoch: u64,
    handed: Instant,
    settled: bool,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("tag", &self.inner.tag)
            .field("seq", &self.inner.seq)
            .field("delivery_count", &self.inner.delivery_count)
            .field("payload_len", &self.inner.message.payload.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.inner.message
    }

    /// The payload (a zero-copy slice of the received frame).
    pub fn payload(&self) -> &Bytes {
        &self.inner.message.payload
    }

    /// How many times this message has been delivered, this time included (1 the first time).
    pub fn delivery_count(&self) -> u32 {
        self.inner.delivery_count
    }

    /// The message's sequence number in its queue.
    pub fn seq(&self) -> u64 {
        self.inner.seq
    }

    /// The delivery tag (unique per subscription and delivery).
    pub fn tag(&self) -> u64 {
        self.inner.tag
    }

    /// When the message was published (ms since the Unix epoch).
    pub fn timestamp_ms(&self) -> u64 {
        self.inner.timestamp_ms
    }

    /// The wire delivery.
    pub fn as_proto(&self) -> &levee_proto::Delivery {
        &self.inner
    }

    fn settle(mut self, how: Settle) -> Result<()> {
        if self.settled {
            return if how == Settle::Ack {
                Ok(())
            } else {
                Err(ClientError::AutoAcked)
            };
        }
        self.settled = true;
        self.shared
            .settle(self.epoch, self.inner.tag, how, self.handed)
    }

    /// Acknowledges: the message is done and leaves the queue. A no-op on an auto-acked delivery.
    pub fn ack(self) -> Result<()> {
        self.settle(Settle::Ack)
    }

    /// Returns the message to the queue, available again after `delay` (zero: at once). Its
    /// delivery count is kept; past the queue's `max_deliveries` it is dead-lettered.
    pub fn nack(self, delay: Duration) -> Result<()> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.settle(Settle::Nack(ms))
    }

    /// Rejects: the message goes to the queue's dead-letter queue (dropped if it has none).
    pub fn reject(self) -> Result<()> {
        self.settle(Settle::Reject)
    }

    /// Renews the lease: the broker's ack deadline of this delivery becomes now + `lease`
    /// (zero: now + the queue's ack timeout), for a consumer working on a long job. Does nothing
    /// on an auto-acked delivery. A delivery whose lease already ended was returned to the queue
    /// and cannot be renewed (the broker reports the unknown tag).
    pub fn extend(&self, lease: Duration) -> Result<()> {
        if self.settled {
            return Ok(());
        }
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self.shared.extend(self.epoch, self.inner.tag, ms)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            let _ = self
                .shared
                .settle(self.epoch, self.inner.tag, Settle::Nack(0), self.handed);
        }
    }
}

impl ConsumerHandle for ConsumerShared {
    fn queue(&self) -> &str {
        ConsumerShared::queue(self)
    }

    fn is_closed(&self) -> bool {
        ConsumerShared::is_closed(self)
    }

    fn resubscribe_on<'a>(self: Arc<Self>, conn: &'a Arc<Conn>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.resubscribe(conn).await })
    }

    fn finish(&self, e: ClientError) {
        ConsumerShared::finish(self, e);
    }
}

impl Subscriber for ConsumerShared {
    fn on_subscribed(&self, epoch: u64, subscription: u64, rtt: Option<Duration>) {
        ConsumerShared::on_subscribed(self, epoch, subscription, rtt);
    }

    fn on_delivery(&self, epoch: u64, d: levee_proto::Delivery) {
        ConsumerShared::on_delivery(self, epoch, d);
    }

    fn on_conn_lost(&self, epoch: u64) {
        ConsumerShared::on_conn_lost(self, epoch);
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn on_queue_closed(&self, epoch: u64, e: ClientError) {
        if self.st.lock().epoch != epoch {
            return;
        }
        ConsumerShared::on_conn_lost(self, epoch);
        // Over for good: a later reconnection does not subscribe it again.
        self.closed.store(true, Ordering::Release);
        ConsumerShared::finish(self, e);
    }
}

/// Making consumers (here, not in `client`, so that `client` does not depend on this module).
impl Client {
    /// A consumer of `queue`: subscribes with the initial credit of `opts.credit`.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled subscribe is undone when its reply arrives and the consumer is
    /// dropped.
    pub async fn consumer(&self, queue: &str, opts: ConsumerOptions) -> Result<Consumer> {
        opts.validate()?;
        let (consumer, shared) = Consumer::new(self, queue, opts);
        let handle: Weak<dyn ConsumerHandle> = Arc::downgrade(&shared) as Weak<dyn ConsumerHandle>;
        self.inner.consumers.lock().push(handle);
        let mut hops = 0;
        loop {
            let conn = self.inner.conn().await?;
            match shared.resubscribe(&conn).await {
                Ok(()) => return Ok(consumer),
                // The supervisor may have subscribed it on a newer connection already.
                Err(ClientError::ConnectionLost) if shared.is_subscribed() => {
                    return Ok(consumer);
                }
                Err(ClientError::ConnectionLost) if self.inner.opts.reconnect.is_some() => {}
                // A cluster node that does not serve the queue: move to the one that does.
                Err(e) if hops < MAX_HOPS && self.inner.follow(&conn, &e).await => hops += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
