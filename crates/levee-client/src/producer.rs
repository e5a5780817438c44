//! [`Producer`]: batching, the in-flight window, publish credit, confirms, the circuit breaker.
//!
//! A publish goes through, in order: the circuit breaker (if configured; open = fail at once),
//! the producer's in-flight window then the client's (messages and payload bytes; wait), the
//! queue's publish credit on `block` queues (wait: this is the broker's backpressure), and
//! finally the open batch. A batch is sent as one `Publish` frame when it reaches `batch_size`
//! messages or `batch_bytes`, when `linger` has passed since its first message, with `adaptive`
//! also as soon as nothing the producer sent earlier is unconfirmed (at once if nothing was:
//! Nagle's rule, the confirms as the clock, so batching adapts to load and an idle producer never
//! waits for the timer), on [`Producer::flush`], or at once when `linger` is zero. Each message's confirm is a
//! [`ConfirmFuture`]; its window room is released when the confirm arrives (or fails).
//!
//! # Invariants
//! - Unconfirmed messages never exceed the windows: at most `max_in_flight_messages` messages and
//!   `max_in_flight_bytes` payload bytes per producer, and the client's limits across producers
//!   (a message larger than a whole byte window travels alone). This is the memory bound.
//! - On a `block` queue a message enters a batch only with one unit of the connection's publish
//!   credit for that queue, and the batch is sent on that same connection, so the broker never
//!   sees a publish beyond the credit it granted.
//! - Every message admitted gets exactly one outcome: the broker's, or an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use levee_flow::{BreakerState, BreakerStats, CircuitBreaker};
use levee_proto::{Message, Overflow, PublishOutcome};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::client::{Client, ProducerHandle, register_producer};
use crate::conn::{Conn, TrackGuard, Tracker, Waiter};
use crate::error::{ClientError, Result, TryPublishError};
use crate::options::ProducerOptions;
use crate::window::Window;

/// Bytes of a `Publish` frame besides its messages, without the queue name: length prefix 4,
/// type 1, request id 8, queue-name length 1, message count 4.
const PUBLISH_OVERHEAD: usize = 4 + 1 + 8 + 1 + 4;

/// The outcome of one published message, once the broker confirms it.
///
/// Resolves to `Ok(Stored { seq })` (durable per the queue's fsync policy), `Ok(Dropped {
/// reason })` (the queue's overflow policy discarded it, counted by the broker), `Ok(Throttled
/// { .. })`, `Err(ClientError::Rejected { .. })`, or `Err(ConnectionLost)` if the connection
/// dropped first (it may or may not have been stored).
///
/// Dropping it does not cancel the publish.
#[derive(Debug)]
#[must_use = "a confirm future does nothing unless awaited; dropping it does not cancel the publish"]
pub struct ConfirmFuture {
    rx: oneshot::Receiver<Result<PublishOutcome>>,
}

impl Future for ConfirmFuture {
    type Output = Result<PublishOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rx
            .poll_unpin(cx)
            .map(|r| r.unwrap_or(Err(ClientError::ConnectionLost)))
    }
}

#[derive(Default)]
struct Batch {
    conn: Option<Arc<Conn>>,
    messages: Vec<Message>,
    waiters: Vec<Waiter>,
    bytes: usize,
}

pub(crate) struct ProducerShared {
    client: Client,
    queue: String,
    opts: ProducerOptions,
    block: bool,
    window: Window,
    breaker: Option<CircuitBreaker>,
    batch: Mutex<Batch>,
    tracker: Arc<Tracker>,
    linger_wake: Arc<Notify>,
}

impl Drop for ProducerShared {
    fn drop(&mut self) {
        let mut b = std::mem::take(&mut *self.batch.lock());
        self.send_batch(&mut b);
        self.linger_wake.notify_one();
    }
}

/// Sends an open batch after `linger`, or earlier as soon as nothing sent before it is still
/// unconfirmed (Nagle's rule with the confirms as the ack clock: batches grow only while earlier
/// ones are in flight, so an idle producer never waits for the timer).
async fn linger_task(
    weak: Weak<ProducerShared>,
    wake: Arc<Notify>,
    linger: Duration,
    tracker: Arc<Tracker>,
) {
    let adaptive = weak.upgrade().is_some_and(|p| p.opts.adaptive);
    loop {
        wake.notified().await;
        if !adaptive {
            tokio::time::sleep(linger).await;
            match weak.upgrade() {
                Some(p) => p.flush_now(),
                None => return,
            }
            continue;
        }
        let deadline = tokio::time::sleep(linger);
        tokio::pin!(deadline);
        loop {
            let progressed = tracker.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let Some(p) = weak.upgrade() else { return };
            if p.sent_in_flight() == 0 {
                p.flush_now();
                break;
            }
            drop(p);
            tokio::select! {
                () = &mut deadline => {
                    match weak.upgrade() {
                        Some(p) => p.flush_now(),
                        None => return,
                    }
                    break;
                }
                () = &mut progressed => {}
            }
        }
    }
}

/// What a message needs before it can join a batch.
struct Admission {
    permits: [Option<tokio::sync::OwnedSemaphorePermit>; 4],
    breaker: Option<levee_flow::breaker::Permit>,
}

impl ProducerShared {
    pub(crate) fn new(
        client: Client,
        queue: &str,
        opts: ProducerOptions,
        block: bool,
    ) -> Result<Arc<ProducerShared>> {
        let breaker = opts
            .breaker
            .map(CircuitBreaker::new)
            .transpose()
            .map_err(|e| ClientError::InvalidOption(format!("breaker: {e}")))?;
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(ProducerShared {
            client,
            queue: queue.to_string(),
            window: Window::new(opts.max_in_flight_messages, opts.max_in_flight_bytes),
            block,
            breaker,
            batch: Mutex::new(Batch::default()),
            tracker: Arc::new(Tracker::default()),
            linger_wake: wake.clone(),
            opts,
        });
        if !shared.opts.linger.is_zero() {
            tokio::spawn(linger_task(
                Arc::downgrade(&shared),
                wake,
                shared.opts.linger,
                shared.tracker.clone(),
            ));
        }
        Ok(shared)
    }

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    fn overhead(&self) -> usize {
        PUBLISH_OVERHEAD + self.queue.len()
    }

    fn check_size(&self, m: &Message, conn: &Conn) -> Result<()> {
        let max = conn.max_frame.saturating_sub(self.overhead());
        let size = m.wire_len();
        if size > max {
            return Err(ClientError::MessageTooLarge { size, max });
        }
        Ok(())
    }

    fn breaker_permit(&self) -> Result<Option<levee_flow::breaker::Permit>> {
        match &self.breaker {
            Some(b) => b
                .try_acquire()
                .map(Some)
                .map_err(|_| ClientError::CircuitOpen),
            None => Ok(None),
        }
    }

    /// Sends a taken batch on its connection (or fails it if it has none).
    fn send_batch(&self, b: &mut Batch) {
        if b.messages.is_empty() {
            return;
        }
        let messages = std::mem::take(&mut b.messages);
        let waiters = std::mem::take(&mut b.waiters);
        b.bytes = 0;
        match b.conn.take() {
            Some(c) => c.publish(&self.queue, messages, waiters),
            None => waiters
                .into_iter()
                .for_each(|w| w.resolve(Err(ClientError::ConnectionLost))),
        }
    }

    /// Unconfirmed messages already sent (not in the open batch).
    fn sent_in_flight(&self) -> u64 {
        let open = self.batch.lock().messages.len() as u64;
        self.tracker.count().saturating_sub(open)
    }

    pub(crate) fn flush_now(&self) {
        let mut b = self.batch.lock();
        self.send_batch(&mut b);
    }

    /// Adds an admitted message to the batch of `conn` (its credit, if any, already taken).
    fn push(&self, b: &mut Batch, conn: &Arc<Conn>, m: Message, adm: Admission) -> ConfirmFuture {
        if b.conn.as_ref().is_some_and(|c| c.epoch != conn.epoch) {
            self.send_batch(b);
        }
        let size = m.wire_len();
        let budget = self
            .opts
            .batch_bytes
            .min(conn.max_frame.saturating_sub(self.overhead()));
        if !b.messages.is_empty() && b.bytes + size > budget {
            self.send_batch(b);
        }
        let (tx, rx) = oneshot::channel();
        let first = b.messages.is_empty();
        // Before this message's tracker slot: what this producer has unconfirmed, all of it sent
        // (the batch was empty). Nothing in flight: send at once (Nagle's rule).
        let idle = self.opts.adaptive && first && self.tracker.count() == 0;
        b.conn = Some(conn.clone());
        b.messages.push(m);
        b.bytes += size;
        b.waiters.push(Waiter {
            tx,
            permits: adm.permits,
            breaker: adm.breaker,
            guard: TrackGuard::new(&self.tracker),
        });
        if self.opts.linger.is_zero() || idle || b.messages.len() >= self.opts.batch_size {
            self.send_batch(b);
        } else if first {
            self.linger_wake.notify_one();
        }
        ConfirmFuture { rx }
    }

    async fn publish(&self, m: Message) -> Result<ConfirmFuture> {
        self.check_size(&m, &*self.client.inner.conn().await?)?;
        let breaker = self.breaker_permit()?;
        let bytes = m.payload.len();
        let [a, b] = self.window.acquire(bytes).await;
        let [c, d] = self.client.inner.window.acquire(bytes).await;
        let mut adm = Some(Admission {
            permits: [Some(a), Some(b), Some(c), Some(d)],
            breaker,
        });
        loop {
            let conn = self.client.inner.conn().await?;
            if !self.block {
                let mut batch = self.batch.lock();
                return Ok(self.push(&mut batch, &conn, m, adm.take().expect("once")));
            }
            let credit = conn.credit(&self.queue);
            let notified = credit.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut batch = self.batch.lock();
                if credit.try_take() {
                    return Ok(self.push(&mut batch, &conn, m, adm.take().expect("once")));
                }
            }
            if let Some(e) = credit.closed() {
                return Err(e);
            }
            // Woken by new credit, by the queue's closing or by the connection's death (then the
            // loop takes the next one).
            if conn.is_dead() {
                continue;
            }
            notified.await;
        }
    }

    fn try_publish(&self, m: Message) -> std::result::Result<ConfirmFuture, TryPublishError> {
        let conn = match self.client.inner.conn_now() {
            Ok(c) => c,
            Err(e) => return Err(TryPublishError::Failed(Box::new(m), e)),
        };
        if let Err(e) = self.check_size(&m, &conn) {
            return Err(TryPublishError::Failed(Box::new(m), e));
        }
        let breaker = match self.breaker_permit() {
            Ok(b) => b,
            Err(e) => return Err(TryPublishError::Failed(Box::new(m), e)),
        };
        let bytes = m.payload.len();
        let Some([a, b]) = self.window.try_acquire(bytes) else {
            return Err(TryPublishError::Full(Box::new(m)));
        };
        let Some([c, d]) = self.client.inner.window.try_acquire(bytes) else {
            return Err(TryPublishError::Full(Box::new(m)));
        };
        let adm = Admission {
            permits: [Some(a), Some(b), Some(c), Some(d)],
            breaker,
        };
        let mut batch = self.batch.lock();
        if self.block {
            let credit = conn.credit(&self.queue);
            if !credit.try_take() {
                return Err(match credit.closed() {
                    Some(e) => TryPublishError::Failed(Box::new(m), e),
                    None => TryPublishError::Full(Box::new(m)),
                });
            }
        }
        Ok(self.push(&mut batch, &conn, m, adm))
    }

    /// The connection `epoch` died: its open batch can no longer be sent.
    pub(crate) fn on_disconnect(&self, epoch: u64) {
        let mut b = self.batch.lock();
        if b.conn.as_ref().is_some_and(|c| c.epoch == epoch) {
            let waiters = std::mem::take(&mut b.waiters);
            *b = Batch::default();
            drop(b);
            waiters
                .into_iter()
                .for_each(|w| w.resolve(Err(ClientError::ConnectionLost)));
        }
    }
}

/// Publishes messages to one queue, in batches, with confirms. Cheap to clone (clones share the
/// batch, window and breaker). Dropping the last clone sends the open batch.
///
/// Messages of one producer reach the queue in the order `publish` returned for them, except
/// across a reconnection (the caller republishes what failed).
#[derive(Clone)]
pub struct Producer {
    shared: Arc<ProducerShared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("queue", &self.shared.queue)
            .field("block", &self.shared.block)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub(crate) fn new(shared: Arc<ProducerShared>) -> Self {
        Producer { shared }
    }

    /// The queue this producer publishes to.
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// Whether the queue's overflow policy is `block` (publishes wait for publish credit).
    pub fn is_block(&self) -> bool {
        self.shared.block
    }

    /// Queues `message` for publishing and returns once it is accepted into the in-flight window
    /// and the open batch, waiting for window room and, on a `block` queue, for publish credit
    /// (the broker's backpressure: a full queue stops granting it). The returned future resolves
    /// to the message's outcome.
    ///
    /// While the client is reconnecting it waits for the new connection (at most the client's
    /// `request_timeout`, then [`ClientError::Timeout`]); without reconnection a lost connection
    /// is [`ClientError::ConnectionLost`].
    ///
    /// Fails at once with [`ClientError::CircuitOpen`] when the breaker is open and with
    /// [`ClientError::MessageTooLarge`] when the message cannot fit in a frame. A failed publish
    /// drops the message (clone it first if you want to retry; payloads are `Bytes`, so clones are
    /// cheap).
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before it completes, the message was not
    /// published and any window room or credit it waited for is released. (Dropping the
    /// [`ConfirmFuture`] it returned does not withdraw the message: only its outcome is lost.)
    pub async fn publish(&self, message: Message) -> Result<ConfirmFuture> {
        self.shared.publish(message).await
    }

    /// [`Producer::publish`] waiting at most `timeout` for window room and publish credit;
    /// [`ClientError::Timeout`] after that (the message was not published).
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`Producer::publish`].
    pub async fn publish_timeout(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<ConfirmFuture> {
        tokio::time::timeout(timeout, self.shared.publish(message))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Like [`Producer::publish`] but never waits: [`TryPublishError::Full`] (with the message)
    /// when the window is full or there is no publish credit, [`TryPublishError::Failed`] when it
    /// cannot be published now (circuit open, disconnected, closed, too large).
    pub fn try_publish(
        &self,
        message: Message,
    ) -> std::result::Result<ConfirmFuture, TryPublishError> {
        self.shared.try_publish(message)
    }

    /// Publishes and waits for the confirm: `Ok(Stored | Dropped | Throttled)`, or an error (a
    /// `Rejected` outcome is [`ClientError::Rejected`]). The open batch is sent at once rather
    /// than after `linger`, since the caller waits for it.
    ///
    /// # Cancel safety
    /// Not cancel-safe in the sense that matters: once the message has entered a batch,
    /// dropping this future does not withdraw it (it will be published; only its outcome is
    /// lost). Dropped while still waiting for window room or credit, it was not published.
    pub async fn send(&self, message: Message) -> Result<PublishOutcome> {
        let confirm = self.shared.publish(message).await?;
        self.shared.flush_now();
        confirm.await
    }

    /// Publishes every message (in as few frames as the batch limits allow, sending the last
    /// batch at once) and waits for all confirms; one result per message, in order.
    ///
    /// # Cancel safety
    /// As [`Producer::send`]: messages already batched are published (their outcomes are lost),
    /// the rest are not.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Vec<Result<PublishOutcome>> {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            confirms.push(self.shared.publish(m).await);
        }
        self.shared.flush_now();
        let mut out = Vec::with_capacity(confirms.len());
        for c in confirms {
            out.push(match c {
                Ok(f) => f.await,
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Sends the open batch now and waits until every message published so far is confirmed
    /// (or failed).
    ///
    /// # Cancel safety
    /// Cancel-safe: the open batch is sent on the first poll; cancelling only stops the wait.
    pub async fn flush(&self) {
        self.shared.flush_now();
        loop {
            let idle = self.shared.tracker.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.tracker.count() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Messages published and not yet confirmed (including the open batch).
    pub fn in_flight(&self) -> u64 {
        self.shared.tracker.count()
    }

    /// Publish credit available on the current connection (`block` queues; 0 otherwise).
    pub fn publish_credit(&self) -> u64 {
        match self.shared.client.inner.conn_now() {
            Ok(c) if self.shared.block => c.credit(&self.shared.queue).available(),
            _ => 0,
        }
    }

    /// The circuit breaker's state, if the producer has one.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.shared.breaker.as_ref().map(CircuitBreaker::state)
    }

    /// The circuit breaker's counters, if the producer has one.
    pub fn breaker_stats(&self) -> Option<BreakerStats> {
        self.shared.breaker.as_ref().map(CircuitBreaker::stats)
    }
}

impl ProducerHandle for ProducerShared {
    fn queue(&self) -> &str {
        ProducerShared::queue(self)
    }

    fn on_disconnect(&self, epoch: u64) {
        ProducerShared::on_disconnect(self, epoch);
    }
}

/// Making producers (here, not in `client`, so that `client` does not depend on this module).
impl Client {
    /// A producer of `queue` (which must exist). It learns the queue's overflow policy (on a
    /// `block` queue it waits for publish credit) and registers with `Produce`.
    ///
    /// # Cancel safety
    /// Cancel-safe: no producer is created. A `Produce` registration the server already
    /// received stays with the connection, as any producer's does.
    pub async fn producer(&self, queue: &str, opts: ProducerOptions) -> Result<Producer> {
        opts.validate()?;
        let info = self.inspect_following(queue).await?;
        let block = info.config.overflow == Overflow::Block;
        let shared = ProducerShared::new(self.clone(), queue, opts, block)?;
        let handle: Weak<dyn ProducerHandle> = Arc::downgrade(&shared) as Weak<dyn ProducerHandle>;
        self.inner.producers.lock().push(handle);
        let conn = self.inner.conn().await?;
        register_producer(&conn, queue).await?;
        Ok(Producer::new(shared))
    }
}
