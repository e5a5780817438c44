//! The in-process MPMC channel: [`channel`] builds a ([`Sender`], [`Receiver`]) pair from a
//! [`Config`]; both halves are `Clone`.
//!
//! It owns a [`PolicyQueue`] behind a `parking_lot::Mutex` (never held across an `.await`, never
//! held while user hooks or wakers run) plus two queues of waiting tasks kept under the same
//! lock: receivers waiting for a message, and `Block`-policy senders waiting for room. A waiter
//! registers in the critical section that saw the channel empty (or full), and a notifier picks
//! whom to wake in the critical section that changed it, so no wake-up can be missed. A queued
//! message wakes one receiver; a dequeued message wakes one waiting sender (each taken out of
//! its queue, so one event never wakes the same waiter twice); a woken waiter that is
//! cancelled before acting passes its wake-up on, so wake-ups are precise and none is lost.
//!
//! # Invariants
//! - Stats snapshots are taken under the mutating lock, so `sent == received + dropped + len`
//!   holds exactly in every snapshot (see [`crate::stats`] for the definitions).
//! - Every dropped message (drop policies, conflation, shedding, receivers gone) reaches the
//!   `on_drop` hook with its reason, outside the lock, exactly once.
//! - Closing: once every sender is dropped or `close()` is called, sends fail with
//!   [`SendError::Closed`], receivers drain what is queued and then get `None`. Once every
//!   receiver is dropped, the queued messages are dropped as [`DropReason::Disconnected`].
//!
//! # Memory bound
//! The queue holds at most `max_messages` messages and `max_bytes` bytes (by the weigher), plus
//! per-message overhead; an unbounded channel (only by [`Config::unbounded`]) has no bound.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{ConfigError, RecvError, SendError};
use crate::key::Key;

/// How many waiting senders a batch receive picks in one critical section.
const WAKE_BATCH: usize = 8;

/// How many times an empty receiver yields to the scheduler before it parks.
const SPINS: u32 = 1;
use crate::policy::{DropReason, Limits, Meta, Offer, Order, Overflow, PolicyQueue};
use crate::stats::{Counters, RateWindow, Stats};

/// Channel rates are sampled at most this often (at stats snapshots).
const RATE_SAMPLE_MS: u64 = 50;

/// How many bytes a message weighs, for `max_bytes`.
pub trait Weigh {
    /// The message's size in bytes.
    fn weigh(&self) -> u64;
}

impl Weigh for Bytes {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}
impl Weigh for Vec<u8> {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}
impl Weigh for String {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}
impl Weigh for Box<[u8]> {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}
impl Weigh for &'static str {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}

type WeighFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;
type PrioFn<T> = Arc<dyn Fn(&T) -> u8 + Send + Sync>;
type KeyFn<T> = Arc<dyn Fn(&T) -> Key + Send + Sync>;
type DropFn<T> = Arc<dyn Fn(T, DropReason) + Send + Sync>;

/// Channel configuration: limits, overflow policy, delivery order, and how to read a message's
/// weight, priority and conflation key. Build with [`Config::bounded`] or
/// [`Config::unbounded`], then chain setters ([`Config::max_bytes`] for a byte limit).
pub struct Config<T> {
    limits: Limits,
    unbounded: bool,
    overflow: Overflow,
    order: Order,
    weigher: Option<WeighFn<T>>,
    priority: Option<PrioFn<T>>,
    key: Option<KeyFn<T>>,
    on_drop: Option<DropFn<T>>,
    rate_window: Duration,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Config {
            limits: self.limits,
            unbounded: self.unbounded,
            overflow: self.overflow,
            order: self.order,
            weigher: self.weigher.clone(),
            priority: self.priority.clone(),
            key: self.key.clone(),
            on_drop: self.on_drop.clone(),
            rate_window: self.rate_window,
        }
    }
}

impl<T> Config<T> {
    fn base(limits: Limits, unbounded: bool) -> Self {
        Config {
            limits,
            unbounded,
            overflow: Overflow::Block,
            order: Order::Fifo,
            weigher: None,
            priority: None,
            key: None,
            on_drop: None,
            rate_window: Duration::from_secs(5),
        }
    }
    /// At most `max_messages` queued; `Block` policy, FIFO.
    pub fn bounded(max_messages: usize) -> Self {
        Self::base(Limits::messages(max_messages), false)
    }
    /// No limit at all. Memory is unbounded: use only when the producer is known to be slower.
    pub fn unbounded() -> Self {
        Self::base(Limits::unbounded(), true)
    }
    /// Sets `max_messages`.
    pub fn max_messages(mut self, n: usize) -> Self {
        self.limits.max_messages = Some(n);
        self
    }
    /// Sets `max_bytes` (needs a weigher: [`Config::weigh`] or [`Config::weigh_with`]).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.limits.max_bytes = Some(n);
        self
    }
    /// Sets the overflow policy (default `Block`).
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }
    /// Sets the delivery order (default FIFO).
    pub fn order(mut self, o: Order) -> Self {
        self.order = o;
        self
    }
    /// Weighs messages with their [`Weigh`] impl.
    pub fn weigh(self) -> Self
    where
        T: Weigh,
    {
        self.weigh_with(|m: &T| m.weigh())
    }
    /// Weighs messages with a closure.
    pub fn weigh_with(mut self, f: impl Fn(&T) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(f));
        self
    }
    /// Reads a message's priority (higher is more important; default 0).
    pub fn priority_by(mut self, f: impl Fn(&T) -> u8 + Send + Sync + 'static) -> Self {
        self.priority = Some(Arc::new(f));
        self
    }
    /// Conflates per key: sets the `Conflate` policy and the key extractor. A newer message
    /// replaces the queued one with the same key in place (newest value, oldest position).
    /// Return an integer, a `&'static str`, a byte array or `Bytes` (or anything short) to keep
    /// the send path free of allocation: see [`Key`].
    pub fn conflate_by<K: Into<Key>>(
        mut self,
        f: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> Self {
        self.overflow = Overflow::Conflate;
        self.key = Some(Arc::new(move |m: &T| f(m).into()));
        self
    }
    /// Called with every message the channel drops, and why (outside the channel lock).
    pub fn on_drop(mut self, f: impl Fn(T, DropReason) + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Arc::new(f));
        self
    }
    /// Width of the sliding window for the rates in [`Stats`] (default 5 s).
    pub fn rate_window(mut self, d: Duration) -> Self {
        self.rate_window = d;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_limits(self.limits, self.unbounded)?;
        if self.limits.max_bytes.is_some() && self.weigher.is_none() {
            return Err(ConfigError::NoWeigher);
        }
        if self.rate_window.is_zero() {
            return Err(ConfigError::Zero("rate_window"));
        }
        Ok(())
    }
}

fn validate_limits(l: Limits, unbounded_ok: bool) -> Result<(), ConfigError> {
    if l.max_messages == Some(0) {
        return Err(ConfigError::Zero("max_messages"));
    }
    if l.max_bytes == Some(0) {
        return Err(ConfigError::Zero("max_bytes"));
    }
    if !unbounded_ok && l.max_messages.is_none() && l.max_bytes.is_none() {
        return Err(ConfigError::NoLimit);
    }
    Ok(())
}

/// What happened to a message that a send accepted into the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sent {
    /// Queued; `evicted` queued messages were dropped to make room (0 usually).
    Queued {
        /// How many queued messages were evicted (each went to `on_drop`).
        evicted: usize,
    },
    /// Accepted then discarded at once (`DropNewest`, or `ShedPriority` when it did not outrank).
    Dropped(DropReason),
}

struct State<T> {
    q: Queue<T>,
    next_seq: u64,
    closed: bool,
    c: Counters,
    /// Receivers waiting for a message.
    recv_w: Waiters,
    /// `Block`-policy senders waiting for room.
    send_w: Waiters,
}

#[derive(Clone, Copy)]
enum Side {
    Recv,
    Send,
}

/// The tasks waiting on one side, in arrival order, under the state lock (so registering, and
/// picking whom to wake, happen atomically with the queue change they are about).
///
/// Each registration gets a fresh, increasing id, so the queue is sorted by id and a waiter
/// finds its entry by binary search. A notifier *removes* the entry it wakes: a waiter whose
/// entry is gone was notified, and a woken waiter is never woken twice for one event. Waking
/// happens after the lock is released. Nothing here allocates once the deque has grown to the
/// largest number of concurrent waiters (a `Waker` clone is a reference count).
struct Waiters {
    next_id: u64,
    q: VecDeque<(u64, Waker)>,
}

impl Waiters {
    fn new() -> Self {
        Waiters {
            next_id: 0,
            q: VecDeque::new(),
        }
    }
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.q.binary_search_by_key(&id, |e| e.0)
    }
    /// Takes the oldest waiter, to be woken once the lock is released.
    fn pop(&mut self) -> Option<Waker> {
        self.q.pop_front().map(|e| e.1)
    }
    fn take_all(&mut self) -> VecDeque<(u64, Waker)> {
        std::mem::take(&mut self.q)
    }
}

/// A waiting future's place in [`Waiters`]: `id` is the entry it registered, if it may still
/// be queued. Checked and updated under the state lock; on drop (cancellation) the entry is
/// removed, or, if a notifier already took it, the wake-up is passed on to the next waiter.
struct Slot<'a, T> {
    shared: &'a Shared<T>,
    side: Side,
    id: Option<u64>,
}

impl<'a, T> Slot<'a, T> {
    fn new(shared: &'a Shared<T>, side: Side) -> Self {
        Slot {
            shared,
            side,
            id: None,
        }
    }
    fn waiters<'s>(&self, st: &'s mut State<T>) -> &'s mut Waiters {
        match self.side {
            Side::Recv => &mut st.recv_w,
            Side::Send => &mut st.send_w,
        }
    }
    /// The attempt succeeded (or the wait is over): leave the queue if still in it.
    fn done(&mut self, st: &mut State<T>) {
        if let Some(id) = self.id.take() {
            let w = self.waiters(st);
            if let Ok(i) = w.find(id) {
                w.q.remove(i);
            }
        }
    }
    /// The attempt failed: wait (stay queued with an up-to-date waker, or queue again at the
    /// back if a notifier took the entry).
    fn wait(&mut self, st: &mut State<T>, waker: &Waker) {
        let prev = self.id;
        let w = self.waiters(st);
        if let Some(id) = prev
            && let Ok(i) = w.find(id)
        {
            if !w.q[i].1.will_wake(waker) {
                w.q[i].1 = waker.clone();
            }
            return;
        }
        let id = w.next_id;
        w.next_id += 1;
        w.q.push_back((id, waker.clone()));
        self.id = Some(id);
    }
}

impl<T> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let pass_on = {
            let mut st = self.shared.state.lock();
            let w = self.waiters(&mut st);
            match w.find(id) {
                Ok(i) => {
                    w.q.remove(i);
                    None
                }
                // Notified, then cancelled before acting on it: pass the wake-up on.
                Err(_) => w.pop(),
            }
        };
        if let Some(w) = pass_on {
            w.wake();
        }
    }
}

fn wake_all(q: VecDeque<(u64, Waker)>) {
    for (_, w) in q {
        w.wake();
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Futures waiting for the channel to close (`Sender::closed`, `Monitor::closed`).
    closed_wait: Notify,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    weigher: Option<WeighFn<T>>,
    priority: Option<PrioFn<T>>,
    key: Option<KeyFn<T>>,
    on_drop: Option<DropFn<T>>,
    unbounded_ok: bool,
    /// Rates of (sent, received, dropped), time in ms since `created`.
    rates: Mutex<RateWindow<3>>,
    created: Instant,
}

/// Dropped messages collected under the lock, delivered to the hook after it is released. The
/// first is held inline: an offer drops at most one message on the hot path, and allocating
/// for it would put an allocation on every send of a drop policy under overload.
struct Dropped<T> {
    first: Option<(T, DropReason)>,
    rest: Vec<(T, DropReason)>,
}

impl<T> Dropped<T> {
    fn new() -> Self {
        Dropped {
            first: None,
            rest: Vec::new(),
        }
    }
    fn push(&mut self, m: T, r: DropReason) {
        if self.first.is_none() {
            self.first = Some((m, r));
        } else {
            self.rest.push((m, r));
        }
    }
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<T> IntoIterator for Dropped<T> {
    type Item = (T, DropReason);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(T, DropReason)>,
        std::vec::IntoIter<(T, DropReason)>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

enum Attempt<T> {
    Done(Result<Sent, SendError<T>>),
    Full(T, Meta<Key>),
}

/// The channel's policy core. Keyed only under `Conflate`: the other policies keep entries
/// without a key slot (40 instead of 80 bytes per queued `u64`), which halves the memory
/// traffic between producer and consumer cores.
enum Queue<T> {
    Plain(PolicyQueue<T, ()>),
    Keyed(PolicyQueue<T, Key, foldhash::fast::RandomState>),
}

macro_rules! on_queue {
    ($q:expr, |$x:ident| $e:expr) => {
        match $q {
            Queue::Plain($x) => $e,
            Queue::Keyed($x) => $e,
        }
    };
}

impl<T> Queue<T> {
    fn new(limits: Limits, overflow: Overflow, order: Order) -> Self {
        if overflow == Overflow::Conflate {
            Queue::Keyed(PolicyQueue::new(limits, overflow, order))
        } else {
            Queue::Plain(PolicyQueue::new(limits, overflow, order))
        }
    }
    fn len(&self) -> usize {
        on_queue!(self, |q| q.len())
    }
    fn bytes(&self) -> u64 {
        on_queue!(self, |q| q.bytes())
    }
    fn is_empty(&self) -> bool {
        on_queue!(self, |q| q.is_empty())
    }
    fn limits(&self) -> Limits {
        on_queue!(self, |q| q.limits())
    }
    fn set_limits(&mut self, l: Limits) {
        on_queue!(self, |q| q.set_limits(l));
    }
    fn fits(&self, weight: u64) -> bool {
        on_queue!(self, |q| q.fits(weight))
    }
    fn pop(&mut self) -> Option<T> {
        on_queue!(self, |q| q.pop().map(|i| i.item))
    }
    fn drain(&mut self) -> Vec<T> {
        on_queue!(self, |q| q.drain().into_iter().map(|i| i.item).collect())
    }
}

/// Books the outcome of one offer in the counters (under the lock) and collects what it
/// dropped for the hook.
fn settle<T, K>(
    c: &mut Counters,
    len: usize,
    bytes: u64,
    o: Offer<T, K>,
    dropped: &mut Dropped<T>,
    back: impl FnOnce(Meta<K>) -> Meta<Key>,
) -> Attempt<T> {
    match o {
        Offer::Accepted { evicted } => {
            c.sent += 1;
            let n = evicted.len();
            for e in evicted {
                c.dropped.add(e.reason, 1);
                dropped.push(e.entry.item, e.reason);
            }
            if len > c.high_water_len {
                c.high_water_len = len;
            }
            if bytes > c.high_water_bytes {
                c.high_water_bytes = bytes;
            }
            Attempt::Done(Ok(Sent::Queued { evicted: n }))
        }
        Offer::Dropped { entry, reason } => {
            c.sent += 1;
            c.dropped.add(reason, 1);
            dropped.push(entry.item, reason);
            Attempt::Done(Ok(Sent::Dropped(reason)))
        }
        Offer::Full(i) => Attempt::Full(i.item, back(i.meta)),
        Offer::Rejected(i) => {
            c.rejected += 1;
            Attempt::Done(Err(SendError::Rejected(i.item)))
        }
        Offer::TooLarge(i) => {
            c.rejected += 1;
            Attempt::Done(Err(SendError::TooLarge(i.item)))
        }
    }
}

impl<T> Shared<T> {
    fn meta(&self, m: &T) -> Meta<Key> {
        Meta {
            weight: self.weigher.as_ref().map_or(0, |f| f(m)),
            priority: self.priority.as_ref().map_or(0, |f| f(m)),
            key: self.key.as_ref().map(|f| f(m)),
        }
    }

    fn deliver_drops(&self, dropped: impl IntoIterator<Item = (T, DropReason)>) {
        if let Some(h) = &self.on_drop {
            for (m, r) in dropped {
                h(m, r);
            }
        }
    }

    /// One offer under the lock. `Full` is returned only for the Block policy.
    fn offer_locked(
        &self,
        st: &mut State<T>,
        msg: T,
        meta: Meta<Key>,
        dropped: &mut Dropped<T>,
    ) -> Attempt<T> {
        if st.closed {
            return Attempt::Done(Err(SendError::Closed(msg)));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let State { q, c, .. } = st;
        match q {
            Queue::Plain(q) => {
                let meta = Meta {
                    weight: meta.weight,
                    priority: meta.priority,
                    key: None,
                };
                let o = q.offer(seq, msg, meta);
                settle(c, q.len(), q.bytes(), o, dropped, |m| Meta {
                    weight: m.weight,
                    priority: m.priority,
                    key: None,
                })
            }
            Queue::Keyed(q) => {
                let o = q.offer(seq, msg, meta);
                settle(c, q.len(), q.bytes(), o, dropped, |m| m)
            }
        }
    }

    /// Fast path: one offer, no waiting.
    fn try_offer(&self, msg: T, meta: Meta<Key>) -> Attempt<T> {
        if self.receivers.load(Ordering::Acquire) == 0 {
            return Attempt::Done(Err(SendError::Closed(msg)));
        }
        let mut dropped = Dropped::new();
        let (r, wake) = {
            let mut st = self.state.lock();
            let r = self.offer_locked(&mut st, msg, meta, &mut dropped);
            let wake = if matches!(r, Attempt::Done(Ok(Sent::Queued { .. }))) {
                st.recv_w.pop()
            } else {
                None
            };
            (r, wake)
        };
        if let Some(w) = wake {
            w.wake();
        }
        if !dropped.is_empty() {
            self.deliver_drops(dropped);
        }
        r
    }

    fn count_rejected(&self) {
        self.state.lock().c.rejected += 1;
    }

    /// One attempt of a waiting sender, under the lock: offer, and on `Full` wait in `slot`.
    /// Returns the attempt and whom to wake (a receiver for the queued message; another sender
    /// if room is left, since the wake-up this one consumed may have signalled more room).
    fn send_attempt(
        &self,
        slot: &mut Slot<'_, T>,
        waker: &Waker,
        msg: T,
        meta: Meta<Key>,
        dropped: &mut Dropped<T>,
    ) -> (Attempt<T>, Option<Waker>, Option<Waker>) {
        let mut st = self.state.lock();
        if self.receivers.load(Ordering::Acquire) == 0 {
            slot.done(&mut st);
            return (Attempt::Done(Err(SendError::Closed(msg))), None, None);
        }
        let r = self.offer_locked(&mut st, msg, meta, dropped);
        if matches!(r, Attempt::Full(..)) {
            slot.wait(&mut st, waker);
            return (r, None, None);
        }
        slot.done(&mut st);
        let wake_recv = if matches!(r, Attempt::Done(Ok(Sent::Queued { .. }))) {
            st.recv_w.pop()
        } else {
            None
        };
        let wake_send = if matches!(r, Attempt::Done(Ok(_))) && st.q.fits(0) {
            st.send_w.pop()
        } else {
            None
        };
        (r, wake_recv, wake_send)
    }

    /// `send`: the fast path, then, while full, waits as a registered sender (registered under
    /// the lock that saw the channel full, so no wake-up can be missed) and retries when woken.
    async fn send(
        &self,
        msg: T,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Sent, SendError<T>> {
        let meta = self.meta(&msg);
        let pending = match self.try_offer(msg, meta) {
            Attempt::Done(r) => return r,
            Attempt::Full(m, mt) => (m, mt),
        };
        let mut pending = Some(pending);
        let mut slot = Slot::new(self, Side::Send);
        let wait = poll_fn(|cx| {
            let (msg, meta) = pending.take().expect("polled after completion");
            let mut dropped = Dropped::new();
            let (r, wake_recv, wake_send) =
                self.send_attempt(&mut slot, cx.waker(), msg, meta, &mut dropped);
            for w in [wake_recv, wake_send].into_iter().flatten() {
                w.wake();
            }
            if !dropped.is_empty() {
                self.deliver_drops(dropped);
            }
            match r {
                Attempt::Done(r) => Poll::Ready(r),
                Attempt::Full(m, mt) => {
                    pending = Some((m, mt));
                    Poll::Pending
                }
            }
        });
        let Some(d) = deadline else {
            return wait.await;
        };
        match tokio::time::timeout_at(d, wait).await {
            Ok(r) => r,
            Err(_) => {
                drop(slot);
                self.count_rejected();
                let (msg, _) = pending
                    .take()
                    .expect("a timed-out send still holds its message");
                Err(SendError::Timeout(msg))
            }
        }
    }

    /// Sends the message at the front of `msgs`, waiting for room. The message leaves `msgs`
    /// only in the critical section that accepts it (or in the error that hands it back), so
    /// when this future is dropped every unsent message is still in `msgs`.
    async fn send_front(&self, msgs: &mut VecDeque<T>) -> Result<Sent, SendError<T>> {
        let mut slot = Slot::new(self, Side::Send);
        poll_fn(|cx| {
            let msg = msgs.pop_front().expect("send_front on an empty deque");
            let meta = self.meta(&msg);
            let mut dropped = Dropped::new();
            let (r, wake_recv, wake_send) =
                self.send_attempt(&mut slot, cx.waker(), msg, meta, &mut dropped);
            for w in [wake_recv, wake_send].into_iter().flatten() {
                w.wake();
            }
            if !dropped.is_empty() {
                self.deliver_drops(dropped);
            }
            match r {
                Attempt::Done(r) => Poll::Ready(r),
                Attempt::Full(m, _) => {
                    msgs.push_front(m);
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn pop_locked(&self, st: &mut State<T>) -> Option<T> {
        let m = st.q.pop()?;
        st.c.received += 1;
        Some(m)
    }

    /// Pops up to `max - out.len()` into `out` under `st`; returns how many were popped.
    fn pop_into(&self, st: &mut State<T>, out: &mut Vec<T>, max: usize) -> usize {
        let before = out.len();
        while out.len() < max {
            match self.pop_locked(st) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out.len() - before
    }

    fn try_recv(&self) -> Result<T, RecvError> {
        let (r, wake) = {
            let mut st = self.state.lock();
            match self.pop_locked(&mut st) {
                Some(m) => (Ok(m), st.send_w.pop()),
                None if st.closed => (Err(RecvError::Closed), None),
                None => (Err(RecvError::Empty), None),
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
        r
    }

    async fn recv(&self, deadline: Option<tokio::time::Instant>) -> Result<T, RecvError> {
        // On an empty channel, yield once before parking: with producers on other workers a
        // message usually arrives within one scheduler turn, and a yield costs far less than a
        // park/wake round trip (this halves the SPSC cost; see docs/BENCHMARKS.md).
        for _ in 0..SPINS {
            match self.try_recv() {
                Err(RecvError::Empty) => tokio::task::yield_now().await,
                r => return r,
            }
        }
        let mut slot = Slot::new(self, Side::Recv);
        let wait = poll_fn(|cx| {
            let (r, wake) = {
                let mut st = self.state.lock();
                match self.pop_locked(&mut st) {
                    Some(m) => {
                        slot.done(&mut st);
                        (Poll::Ready(Ok(m)), st.send_w.pop())
                    }
                    None if st.closed => {
                        slot.done(&mut st);
                        (Poll::Ready(Err(RecvError::Closed)), None)
                    }
                    None => {
                        slot.wait(&mut st, cx.waker());
                        (Poll::Pending, None)
                    }
                }
            };
            if let Some(w) = wake {
                w.wake();
            }
            r
        });
        let Some(d) = deadline else {
            return wait.await;
        };
        match tokio::time::timeout_at(d, wait).await {
            Ok(r) => r,
            Err(_) => {
                drop(slot);
                match self.try_recv() {
                    Err(RecvError::Empty) => Err(RecvError::Timeout),
                    r => r,
                }
            }
        }
    }

    /// Collects into `out` until its length is `max`, the deadline passes, or the channel is closed
    /// and drained. Messages are moved into `out` under the lock, so whatever is in `out` when
    /// this future is dropped stays there: cancel-safe. Returns whether the channel is closed
    /// and drained.
    async fn recv_into(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> bool {
        let mut slot = Slot::new(self, Side::Recv);
        // Wake as many waiting senders as messages were taken (each has room now): the first
        // few are picked in the same critical section, the rest (if ever) by `wake_senders`.
        let collect = |st: &mut State<T>, out: &mut Vec<T>| {
            let n = self.pop_into(st, out, max);
            let mut wake: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut k = 0;
            while k < n.min(WAKE_BATCH) {
                match st.send_w.pop() {
                    Some(w) => wake[k] = Some(w),
                    None => break,
                }
                k += 1;
            }
            let more = if k == WAKE_BATCH { n - k } else { 0 };
            (wake, more)
        };
        let wait = poll_fn(|cx| {
            let (r, wake) = {
                let mut st = self.state.lock();
                let wake = collect(&mut st, out);
                let done = st.closed && st.q.is_empty();
                if out.len() >= max || done {
                    slot.done(&mut st);
                    (Poll::Ready(done), wake)
                } else {
                    slot.wait(&mut st, cx.waker());
                    (Poll::Pending, wake)
                }
            };
            self.wake_batch(wake);
            r
        });
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(done) => done,
            Err(_) => {
                drop(slot);
                let (wake, done) = {
                    let mut st = self.state.lock();
                    let wake = collect(&mut st, out);
                    (wake, st.closed && st.q.is_empty())
                };
                self.wake_batch(wake);
                done
            }
        }
    }

    /// Wakes the senders picked under the lock, then up to `more` further ones.
    fn wake_batch(&self, (wake, mut more): ([Option<Waker>; WAKE_BATCH], usize)) {
        for w in wake.into_iter().flatten() {
            w.wake();
        }
        while more > 0 {
            let mut batch: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut k = 0;
            {
                let mut st = self.state.lock();
                while k < more.min(WAKE_BATCH) {
                    match st.send_w.pop() {
                        Some(w) => batch[k] = Some(w),
                        None => break,
                    }
                    k += 1;
                }
            }
            for w in batch.into_iter().flatten() {
                w.wake();
            }
            if k < WAKE_BATCH {
                return;
            }
            more -= k;
        }
    }

    async fn recv_batch(&self, max: usize, timeout: Duration) -> Option<Vec<T>> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        // `max` is the target length of `out`, which starts empty.
        let done = self.recv_into(&mut out, max, deadline).await;
        if done && out.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    fn close(&self) {
        let (was, recv, send) = {
            let mut st = self.state.lock();
            let was = std::mem::replace(&mut st.closed, true);
            (was, st.recv_w.take_all(), st.send_w.take_all())
        };
        wake_all(recv);
        wake_all(send);
        if !was {
            self.closed_wait.notify_waiters();
        }
    }

    fn stats(&self) -> Stats {
        let (c, len, bytes, limits, closed) = {
            let st = self.state.lock();
            (
                st.c.clone(),
                st.q.len(),
                st.q.bytes(),
                st.q.limits(),
                st.closed,
            )
        };
        let now = Instant::now();
        let dropped = c.dropped.total();
        let at = now.duration_since(self.created).as_millis() as u64;
        let [send_rate, recv_rate, drop_rate] = self
            .rates
            .lock()
            .rates_f64(at, [c.sent, c.received, dropped]);
        Stats {
            sent: c.sent,
            received: c.received,
            dropped,
            dropped_by: c.dropped,
            rejected: c.rejected,
            len,
            bytes,
            max_messages: limits.max_messages,
            max_bytes: limits.max_bytes,
            high_water_len: c.high_water_len,
            high_water_bytes: c.high_water_bytes,
            resizes: c.resizes,
            closed,
            send_rate,
            recv_rate,
            drop_rate,
            loss_pct: if c.sent == 0 {
                0.0
            } else {
                dropped as f64 * 100.0 / c.sent as f64
            },
            uptime: now.duration_since(self.created),
        }
    }

    fn set_limits(&self, limits: Limits) -> Result<(), ConfigError> {
        validate_limits(limits, self.unbounded_ok)?;
        if limits.max_bytes.is_some() && self.weigher.is_none() {
            return Err(ConfigError::NoWeigher);
        }
        let send = {
            let mut st = self.state.lock();
            if st.q.limits() != limits {
                st.q.set_limits(limits);
                st.c.resizes += 1;
            }
            st.send_w.take_all()
        };
        wake_all(send);
        Ok(())
    }
}

/// Builds a channel from `config`. Fails on an invalid configuration (zero limit, no limit
/// without [`Config::unbounded`], `max_bytes` without a weigher).
pub fn channel<T>(config: Config<T>) -> Result<(Sender<T>, Receiver<T>), ConfigError> {
    config.validate()?;
    let now = Instant::now();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            q: Queue::new(config.limits, config.overflow, config.order),
            next_seq: 0,
            closed: false,
            c: Counters::default(),
            recv_w: Waiters::new(),
            send_w: Waiters::new(),
        }),
        closed_wait: Notify::new(),
        senders: AtomicUsize::new(1),
        receivers: AtomicUsize::new(1),
        weigher: config.weigher,
        priority: config.priority,
        key: config.key,
        on_drop: config.on_drop,
        unbounded_ok: config.unbounded,
        rates: Mutex::new(
            RateWindow::new(config.rate_window.as_millis() as u64, RATE_SAMPLE_MS)
                .starting_at(0, [0; 3]),
        ),
        created: now,
    });
    Ok((
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    ))
}

/// A `Block`-policy FIFO channel holding at most `max_messages` (error if 0).
pub fn bounded<T>(max_messages: usize) -> Result<(Sender<T>, Receiver<T>), ConfigError> {
    channel(Config::bounded(max_messages))
}

/// An explicitly unbounded FIFO channel: memory grows without limit if receivers fall behind.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    channel(Config::unbounded()).expect("the unbounded configuration is always valid")
}

/// The sending half. Cloning adds a sender; the channel closes when the last one is dropped.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<T> Sender<T> {
    /// Sends a message, waiting for room under the `Block` policy; other policies never wait.
    ///
    /// `Ok` says the message was accepted into the accounting ([`Sent`] tells whether it was
    /// queued or dropped by the policy). `Err` hands it back: `Rejected`, `TooLarge`, `Closed`.
    ///
    /// # Cancel safety
    /// If the future is dropped before completing, the message was not sent (and is dropped
    /// with the future); no other message is affected and no wake-up is lost. To keep the
    /// message on cancellation, use [`Sender::send_batch_from`] with a one-element queue.
    pub async fn send(&self, msg: T) -> Result<Sent, SendError<T>> {
        self.shared.send(msg, None).await
    }

    /// Like [`Sender::send`] but gives up after `timeout`, handing the message back as
    /// [`SendError::Timeout`]. Needs a tokio runtime with time enabled.
    ///
    /// # Cancel safety
    /// As [`Sender::send`]: if dropped, the message was not sent and is dropped with the future.
    pub async fn send_timeout(&self, msg: T, timeout: Duration) -> Result<Sent, SendError<T>> {
        self.shared
            .send(msg, Some(tokio::time::Instant::now() + timeout))
            .await
    }

    /// Sends without waiting: under `Block`, a full channel hands the message back as
    /// [`SendError::Full`].
    pub fn try_send(&self, msg: T) -> Result<Sent, SendError<T>> {
        let meta = self.shared.meta(&msg);
        match self.shared.try_offer(msg, meta) {
            Attempt::Done(r) => r,
            Attempt::Full(m, _) => {
                self.shared.count_rejected();
                Err(SendError::Full(m))
            }
        }
    }

    /// Sends every message in order (each waits for room as [`Sender::send`] does). Returns how
    /// many were accepted; on the first failure, returns the error for that message and the
    /// messages after it are handed back unsent in the `Vec`.
    ///
    /// # Cancel safety
    /// Not cancel-safe as a whole: if dropped midway, the messages before the current one were
    /// sent and the rest are dropped unsent. [`Sender::send_batch_from`] is the cancel-safe
    /// form.
    pub async fn send_batch(
        &self,
        msgs: impl IntoIterator<Item = T>,
    ) -> Result<usize, (SendError<T>, Vec<T>)> {
        let mut it = msgs.into_iter();
        let mut n = 0;
        while let Some(m) = it.next() {
            match self.send(m).await {
                Ok(_) => n += 1,
                Err(e) => return Err((e, it.collect())),
            }
        }
        Ok(n)
    }

    /// Sends the messages of `msgs` in order, from the front, each waiting for room as
    /// [`Sender::send`] does; a message leaves `msgs` only once the channel has accepted it.
    /// Returns how many were accepted; on the first failure, that message is handed back in the
    /// error and the ones after it stay in `msgs`.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped, every message not yet accepted is still in
    /// `msgs`, in order (the one that was waiting for room included), and no wake-up is lost.
    /// Use this instead of [`Sender::send_batch`] in `select!` or under a timeout.
    pub async fn send_batch_from(&self, msgs: &mut VecDeque<T>) -> Result<usize, SendError<T>> {
        let mut n = 0;
        while !msgs.is_empty() {
            self.shared.send_front(msgs).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Blocking send for synchronous code. Do not call it from inside an async task.
    pub fn blocking_send(&self, msg: T) -> Result<Sent, SendError<T>> {
        futures::executor::block_on(self.send(msg))
    }

    /// Closes the channel for sending (for every sender); receivers drain then get `None`.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether the channel is closed (explicitly, all senders gone, or all receivers gone).
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().closed || self.shared.receivers.load(Ordering::Acquire) == 0
    }

    /// A consistent snapshot of the counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Changes the limits at run time (adaptive sizing). Never drops or reorders anything.
    pub fn set_limits(&self, limits: Limits) -> Result<(), ConfigError> {
        self.shared.set_limits(limits)
    }

    /// The weight the channel's weigher gives `msg` (0 without a weigher).
    pub fn weigh(&self, msg: &T) -> u64 {
        self.shared.weigher.as_ref().map_or(0, |f| f(msg))
    }

    /// Resolves when the channel is closed for sending.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits; dropping it changes nothing.
    pub async fn closed(&self) {
        loop {
            let n = self.shared.closed_wait.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// The receiving half. Cloning adds a competing receiver (each message goes to one receiver).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::Relaxed);
        Receiver {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if self.shared.receivers.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (drained, recv, send) = {
                let mut st = self.shared.state.lock();
                st.closed = true;
                let items = st.q.drain();
                st.c.dropped
                    .add(DropReason::Disconnected, items.len() as u64);
                (items, st.recv_w.take_all(), st.send_w.take_all())
            };
            wake_all(send);
            wake_all(recv);
            self.shared.closed_wait.notify_waiters();
            self.shared
                .deliver_drops(drained.into_iter().map(|m| (m, DropReason::Disconnected)));
        }
    }
}

impl<T> Receiver<T> {
    /// Receives the next message; `None` once the channel is closed and drained.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped, no message was taken, and a wake-up it had
    /// received is passed to another waiting receiver.
    pub async fn recv(&self) -> Option<T> {
        self.shared.recv(None).await.ok()
    }

    /// Receives without waiting: [`RecvError::Empty`] or [`RecvError::Closed`].
    pub fn try_recv(&self) -> Result<T, RecvError> {
        self.shared.try_recv()
    }

    /// Receives, waiting at most `timeout`: [`RecvError::Timeout`] or [`RecvError::Closed`].
    ///
    /// # Cancel safety
    /// Cancel-safe, like [`Receiver::recv`]: if dropped, no message was taken.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        self.shared
            .recv(Some(tokio::time::Instant::now() + timeout))
            .await
    }

    /// Receives up to `max` messages: returns as soon as `max` are collected, or with whatever
    /// arrived when `timeout` expires (possibly an empty `Vec`). Returns `None` only when the
    /// channel is closed and drained and nothing was collected; a final partial batch is
    /// returned before that. `max = 0` is treated as 1.
    ///
    /// # Cancel safety
    /// Not cancel-safe: messages collected before cancellation are lost (counted as received).
    /// Use it as the only branch, or use the cancel-safe [`Receiver::recv_batch_into`] in
    /// `select!`.
    pub async fn recv_batch(&self, max: usize, timeout: Duration) -> Option<Vec<T>> {
        self.shared.recv_batch(max, timeout).await
    }

    /// Receives up to `max` messages into `buf` (appended): returns as soon as `max` were
    /// added, or with however many arrived when `timeout` expires (possibly 0). Returns `None`
    /// only when the channel is closed and drained and nothing was added. `max = 0` is
    /// treated as 1.
    ///
    /// # Cancel safety
    /// Cancel-safe: each message is moved into `buf` in the critical section that takes it
    /// from the channel, so if the future is dropped every message it received is in `buf`,
    /// in order, and none is lost; a wake-up it had received is passed on.
    pub async fn recv_batch_into(
        &self,
        buf: &mut Vec<T>,
        max: usize,
        timeout: Duration,
    ) -> Option<usize> {
        let before = buf.len();
        let target = before + max.max(1);
        let deadline = tokio::time::Instant::now() + timeout;
        let done = self.shared.recv_into(buf, target, deadline).await;
        let n = buf.len() - before;
        if done && n == 0 { None } else { Some(n) }
    }

    /// Blocking receive for synchronous code. Do not call it from inside an async task.
    pub fn blocking_recv(&self) -> Option<T> {
        futures::executor::block_on(self.recv())
    }

    /// Closes the channel for sending; what is queued can still be received.
    pub fn close(&self) {
        self.shared.close();
    }

    /// A consistent snapshot of the counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Changes the limits at run time (adaptive sizing). Never drops or reorders anything.
    pub fn set_limits(&self, limits: Limits) -> Result<(), ConfigError> {
        self.shared.set_limits(limits)
    }

    /// Whether the channel is closed for sending (messages may remain queued).
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().closed
    }
}

/// A handle that observes and resizes a channel without being a sender or a receiver: it does
/// not keep the channel open (for monitors and the adaptive controller).
pub struct Monitor<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Monitor<T> {
    fn clone(&self) -> Self {
        Monitor {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Monitor<T> {
    /// A consistent snapshot of the counters (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
    /// Changes the limits at run time. Never drops or reorders anything.
    pub fn set_limits(&self, limits: Limits) -> Result<(), ConfigError> {
        self.shared.set_limits(limits)
    }
    /// Whether the channel is closed for sending.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().closed
    }
    /// Resolves when the channel is closed for sending.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits; dropping it changes nothing.
    pub async fn closed(&self) {
        loop {
            let n = self.shared.closed_wait.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

impl<T> Sender<T> {
    /// A [`Monitor`] for this channel.
    pub fn monitor(&self) -> Monitor<T> {
        Monitor {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Receiver<T> {
    /// A [`Monitor`] for this channel.
    pub fn monitor(&self) -> Monitor<T> {
        Monitor {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send + 'static> Monitor<T> {
    /// Live stats: prints `[label] <stats>` every `every` (see [`Stats`]'s `Display`) on a tokio
    /// task, until the channel is closed and drained (then prints once more and ends). Abort the
    /// handle to stop earlier.
    pub fn spawn_printer(
        &self,
        label: impl Into<String>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let mon = self.clone();
        let label = label.into();
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = mon.stats();
                println!("[{label}] {s}");
                if s.closed && s.len == 0 {
                    return;
                }
            }
        })
    }
}
