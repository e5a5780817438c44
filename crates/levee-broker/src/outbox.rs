//! A connection's outbound queue: the frames waiting for its writer task, with a bound on the
//! bytes of deliveries and a bound on the number of other frames.
//!
//! Deliveries. Credit is what a consumer asked for, not a licence for the broker to buffer: a
//! queue actor hands deliveries to a connection only within the room its outbox has. Before
//! dispatching, the actor claims the free room ([`Outbox::claim`]); it hands over deliveries
//! charged at their encoded size ([`ConnTx::send_deliveries`]) and gives back what it did not use
//! ([`Outbox::settle_claim`]); the writer releases a frame's charge when it takes the frame. An
//! actor whose claim found no room registers for a wake-up ([`Outbox::wait_for_room`]); it is sent
//! woken ([`QueueAddr::outbox_room`]: the actor gets `Cmd::OutboxRoom`) once the charged bytes fall below half the bound.
//!
//! Written reports. The writer tells each queue which of its deliveries were written to the socket
//! ([`QueueAddr::written`]: the actor gets `Cmd::Written`, through the subscriptions registered
//! here), so a delivery's ack deadline
//! starts when it left the broker, and one that never left returns without a raised delivery
//! count when the connection closes.
//!
//! # Invariants and memory bound
//! - Charged delivery bytes stay at most `limit` plus one message per consumer of each
//!   concurrently dispatching queue (a queue splits its claim among its consumers on this
//!   connection, and a share of any room lets one delivery of any size through, so every message
//!   can pass).
//! - At most [`MAX_QUEUED_CONTROL`] other frames (replies, confirms, errors, credit, heartbeats)
//!   wait; one more marks the connection stalled and its reader closes it.
//! - A registered waiter is always woken once room is back: registration re-checks the room
//!   after publishing itself, and every release re-checks the waiters.
//!
//! Queue actors are reached through [`QueueAddr`] (implemented by the actor's weak command
//! sender in `actor`), so this module does not depend on the actor: `actor` -> `outbox`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicUsize, Ordering};

use levee_proto::ServerFrame;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Most frames other than deliveries that may wait for one connection's writer. A client that
/// keeps sending requests but never reads its socket is disconnected once its outbox holds this
/// many. Memory bound: this many small frames (a `QueueList` or `QueueStats` reply is at most
/// `MAX_LIST` entries).
pub(crate) const MAX_QUEUED_CONTROL: usize = 65_536;

/// Default bound on the delivery bytes waiting for one connection's writer.
pub(crate) const DEFAULT_OUTBOX_BYTES: u64 = 8 * 1024 * 1024;

/// A queue actor as an outbox sees it: held weakly (it must not keep the actor alive), told when
/// the outbox has room again and which of its deliveries were written. A gone actor is ignored.
pub(crate) trait QueueAddr: Send + Sync + std::fmt::Debug {
    /// The outbox this actor waited on has room again.
    fn outbox_room(&self);
    /// Every delivery of `subscription` up to `tag` was written to the socket.
    fn written(&self, subscription: u64, tag: u64);
}

/// Shared between a connection's senders (its reader, queue actors) and its writer.
#[derive(Debug)]
pub(crate) struct Outbox {
    control: AtomicUsize,
    /// Delivery bytes queued or claimed (signed: a writer may release a frame's charge before
    /// the actor that sent it settles its claim).
    bytes: AtomicI64,
    limit: i64,
    waiting: AtomicBool,
    /// Queue actors waiting for room, by actor id.
    waiters: Mutex<HashMap<u64, Box<dyn QueueAddr>>>,
    /// Subscription id -> its queue actor, for written reports.
    subs: Mutex<HashMap<u64, Box<dyn QueueAddr>>>,
    /// Woken when the connection must be closed: its control queue overflowed, or its writer
    /// could not write within the drain deadline.
    pub(crate) stalled: tokio::sync::Notify,
    /// The native protocol version the connection negotiated (0 until then, and for AMQP): the
    /// writer leaves out frames the peer's version does not know.
    protocol: AtomicU16,
}

impl Outbox {
    fn new(limit: u64) -> Self {
        Outbox {
            control: AtomicUsize::new(0),
            bytes: AtomicI64::new(0),
            limit: i64::try_from(limit).unwrap_or(i64::MAX).max(1),
            waiting: AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            stalled: tokio::sync::Notify::new(),
            protocol: AtomicU16::new(0),
        }
    }

    /// Records the negotiated native protocol version.
    pub(crate) fn set_protocol(&self, version: u16) {
        self.protocol.store(version, Ordering::Release);
    }

    /// Whether the peer's protocol version knows `frame` (a frame introduced by a later version
    /// is left out, not sent).
    pub(crate) fn peer_knows(&self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::QueueClosed { .. } => self.protocol.load(Ordering::Acquire) >= 3,
            _ => true,
        }
    }

    /// Claims all the free room for deliveries; returns how many bytes (0: full).
    pub(crate) fn claim(&self) -> u64 {
        let mut cur = self.bytes.load(Ordering::Acquire);
        loop {
            if cur >= self.limit {
                return 0;
            }
            match self.bytes.compare_exchange_weak(
                cur,
                self.limit,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (self.limit - cur) as u64,
                Err(now) => cur = now,
            }
        }
    }

    /// Settles a claim of `claimed` bytes of which `used` were charged to deliveries sent.
    pub(crate) fn settle_claim(&self, claimed: u64, used: u64) {
        let delta = used as i64 - claimed as i64;
        if delta != 0 {
            self.bytes.fetch_add(delta, Ordering::AcqRel);
        }
        if delta < 0 {
            self.freed();
        }
    }

    /// Registers queue actor `id` to be woken ([`QueueAddr::outbox_room`]) once there is room
    /// again.
    pub(crate) fn wait_for_room(&self, id: u64, addr: impl QueueAddr + 'static) {
        self.waiters.lock().insert(id, Box::new(addr));
        self.waiting.store(true, Ordering::Release);
        // The room may have come back before we were listed.
        self.freed();
    }

    fn release(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes as i64, Ordering::AcqRel);
        self.freed();
    }

    fn freed(&self) {
        if !self.waiting.load(Ordering::Acquire)
            || self.bytes.load(Ordering::Acquire) >= self.limit / 2
        {
            return;
        }
        let waiters = {
            let mut w = self.waiters.lock();
            self.waiting.store(false, Ordering::Release);
            std::mem::take(&mut *w)
        };
        for addr in waiters.into_values() {
            addr.outbox_room();
        }
    }

    /// Delivery bytes queued now (for tests and stats).
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> i64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Registers a subscription's queue actor for written reports.
    pub(crate) fn add_subscription(&self, subscription: u64, queue: impl QueueAddr + 'static) {
        self.subs.lock().insert(subscription, Box::new(queue));
    }

    /// Forgets a subscription.
    pub(crate) fn remove_subscription(&self, subscription: u64) {
        self.subs.lock().remove(&subscription);
    }

    /// Tells each subscription's queue the highest delivery tag just written.
    pub(crate) fn report_written(&self, written: &[(u64, u64)]) {
        if written.is_empty() {
            return;
        }
        let subs = self.subs.lock();
        for &(subscription, tag) in written {
            if let Some(addr) = subs.get(&subscription) {
                addr.written(subscription, tag);
            }
        }
    }
}

/// One queued frame and, for deliveries, the bytes it was charged.
pub(crate) struct Outgoing {
    pub(crate) frame: ServerFrame,
    /// `Some(bytes)` for a `Deliver` frame sent within a claim; `None` for control frames.
    pub(crate) charged: Option<u64>,
}

/// Where frames for one connection go (its writer task). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConnTx {
    tx: mpsc::UnboundedSender<Outgoing>,
    outbox: Arc<Outbox>,
}

/// The writer's end of a [`ConnTx`].
pub(crate) struct ConnRx {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Arc<Outbox>,
}

/// A connection's outgoing frame queue, with `limit` bytes of room for deliveries.
pub(crate) fn conn_channel(limit: u64) -> (ConnTx, ConnRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox::new(limit));
    (
        ConnTx {
            tx,
            outbox: outbox.clone(),
        },
        ConnRx { rx, outbox },
    )
}

impl ConnTx {
    /// Queues a frame other than a delivery. Fails if the connection is gone, or if
    /// [`MAX_QUEUED_CONTROL`] frames are already waiting: the client is not reading, and the
    /// connection is marked stalled so its reader closes it.
    pub(crate) fn send(&self, frame: ServerFrame) -> Result<(), ()> {
        debug_assert!(!matches!(frame, ServerFrame::Deliver { .. }));
        let before = self.outbox.control.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_QUEUED_CONTROL {
            self.outbox.control.fetch_sub(1, Ordering::AcqRel);
            self.outbox.stalled.notify_one();
            return Err(());
        }
        self.tx
            .send(Outgoing {
                frame,
                charged: None,
            })
            .map_err(|_| ())
    }

    /// Queues a `Deliver` frame charged `bytes` of a claim the caller holds
    /// ([`Outbox::claim`]). Fails only if the connection is gone.
    pub(crate) fn send_deliveries(&self, frame: ServerFrame, bytes: u64) -> Result<(), ()> {
        self.tx
            .send(Outgoing {
                frame,
                charged: Some(bytes),
            })
            .map_err(|_| ())
    }

    /// The shared outbox.
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl ConnRx {
    fn taken(&self, out: &Outgoing) {
        match out.charged {
            Some(bytes) => self.outbox.release(bytes),
            None => {
                self.outbox.control.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The next frame.
    ///
    /// # Cancel safety
    /// Cancel-safe: a frame is taken only when this returns it.
    pub(crate) async fn recv(&mut self) -> Option<ServerFrame> {
        let out = self.rx.recv().await?;
        self.taken(&out);
        Some(out.frame)
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<ServerFrame> {
        let out = self.rx.try_recv().ok()?;
        self.taken(&out);
        Some(out.frame)
    }

    /// The shared outbox.
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts wake-ups.
    #[derive(Debug, Clone, Default)]
    struct Wakes(Arc<AtomicUsize>);

    impl QueueAddr for Wakes {
        fn outbox_room(&self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
        fn written(&self, _: u64, _: u64) {}
    }

    impl Wakes {
        fn take(&self) -> usize {
            self.0.swap(0, Ordering::AcqRel)
        }
    }

    #[test]
    fn a_claim_takes_the_free_room_and_a_full_outbox_gives_none() {
        let o = Outbox::new(1000);
        assert_eq!(o.claim(), 1000);
        assert_eq!(o.claim(), 0, "all claimed");
        o.settle_claim(1000, 300);
        assert_eq!(o.queued_bytes(), 300);
        assert_eq!(o.claim(), 700);
        o.settle_claim(700, 900); // one large delivery overshoots
        assert_eq!(o.queued_bytes(), 1200);
        assert_eq!(o.claim(), 0);
        o.release(1200);
        assert_eq!(o.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_once_the_outbox_drains_below_half() {
        let o = Outbox::new(1000);
        let wakes = Wakes::default();
        assert_eq!(o.claim(), 1000);
        o.settle_claim(1000, 1000);
        o.wait_for_room(1, wakes.clone());
        o.wait_for_room(1, wakes.clone()); // listed once
        o.release(400);
        assert_eq!(wakes.take(), 0, "still above half");
        o.release(200);
        assert_eq!(wakes.take(), 1, "woken once");
    }

    #[tokio::test]
    async fn a_waiter_registering_after_the_room_came_back_is_woken_at_once() {
        let o = Outbox::new(1000);
        let wakes = Wakes::default();
        o.wait_for_room(7, wakes.clone());
        assert_eq!(wakes.take(), 1);
    }
}
