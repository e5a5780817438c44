//! Durability handles and the group-commit rendezvous between appenders and the sync thread.
//!
//! Every append returns a [`Durability`]. It resolves to a [`Durable`] proof, which only this crate can
//! construct: under [`crate::FsyncPolicy::Always`] the sync thread creates it after an fsync covering
//! the record's bytes has returned; under `Interval`/`Never` the handle is resolved when created, with
//! [`DurabilityLevel::Written`] (the bytes are in the OS page cache: they survive a process crash, not
//! a power loss before the next sync).
//!
//! Invariant: `SyncState::synced` only grows, and is only raised by the sync thread after every file and
//! directory holding bytes below it was synced. A handle with `target <= synced` is durable.
//!
//! Memory bound: one waker per pending (polled, unresolved) handle; resolved handles hold nothing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;

/// How durable a [`Durable`] proof says the records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityLevel {
    /// An fsync covering the records returned: they survive power loss (as far as the media honours
    /// fsync).
    Fsynced,
    /// The records were written to the OS (page cache): they survive a crash of this process, not a
    /// power loss before the next sync.
    Written,
}

/// Proof that records reached a durability level. Only levee-store can create one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    level: DurabilityLevel,
    position: u64,
}

impl Durable {
    /// The level reached.
    pub fn level(&self) -> DurabilityLevel {
        self.level
    }
    /// The log position (bytes appended since open) covered by this proof.
    pub fn position(&self) -> u64 {
        self.position
    }
}

#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// Log position covered by the last successful sync cycle.
    pub synced: u64,
    /// Highest position some appender or waiter asked to be synced.
    pub requested: u64,
    /// Highest position written so far (the sync thread's "dirty" indicator for `Interval`).
    pub written: u64,
    /// Set when segments wait to be sealed or reclaimed.
    pub maintenance: bool,
    /// Set by close/drop: the sync thread makes a final sync and exits.
    pub shutdown: bool,
    /// Set when the sync thread has exited.
    pub stopped: bool,
    /// The failure that stopped the log, if any.
    pub failed: Option<StoreError>,
    wakers: HashMap<u64, (u64, Waker)>,
}

/// Shared between the log, its sync thread and every pending handle.
#[derive(Debug, Default)]
pub(crate) struct SyncShared {
    pub state: Mutex<SyncState>,
    /// Waiters blocked in [`Durability::wait`].
    pub waiters: Condvar,
    /// The sync thread waits here for work.
    pub work: Condvar,
    next_id: AtomicU64,
    /// A copy of `SyncState::synced` readable without the lock (for counters on hot paths; it
    /// may lag the locked value by one publication, never lead it).
    synced_hint: AtomicU64,
}

impl SyncShared {
    /// Publishes a completed sync cycle and wakes every handle it covers.
    pub(crate) fn publish(&self, position: u64) {
        let mut wake = Vec::new();
        {
            let mut st = self.state.lock();
            if position > st.synced {
                st.synced = position;
            }
            let synced = st.synced;
            self.synced_hint.store(synced, Ordering::Release);
            st.wakers.retain(|_, (target, w)| {
                if *target <= synced {
                    wake.push(w.clone());
                    false
                } else {
                    true
                }
            });
        }
        self.waiters.notify_all();
        wake.into_iter().for_each(Waker::wake);
    }

    /// Wakes everyone after a failure or shutdown.
    pub(crate) fn wake_all(&self) {
        let wake: Vec<Waker> = {
            let mut st = self.state.lock();
            st.wakers.drain().map(|(_, (_, w))| w).collect()
        };
        self.waiters.notify_all();
        wake.into_iter().for_each(Waker::wake);
    }

    /// The synced position without taking the lock (see `synced_hint`).
    pub(crate) fn synced_hint(&self) -> u64 {
        self.synced_hint.load(Ordering::Acquire)
    }

    /// Asks the sync thread to cover `target`.
    pub(crate) fn request(&self, target: u64) {
        let mut st = self.state.lock();
        if target > st.requested {
            st.requested = target;
            self.work.notify_one();
        }
    }
}

#[derive(Debug)]
enum Inner {
    Ready(Durable),
    Pending {
        shared: Arc<SyncShared>,
        target: u64,
        id: u64,
        requested: bool,
    },
    Done,
}

/// Resolves when the records of one append (or settlement, or [`crate::QueueLog::sync`]) are durable.
///
/// Await it (it implements [`Future`], no runtime needed; **cancel-safe**: dropping it never affects
/// the write, which stays queued for the next sync) or call the blocking [`Durability::wait`] from a
/// non-async thread. A handle for settlements or delivery counts does not wake the sync thread until
/// it is first polled or waited on: unawaited, those records ride along with the next group commit.
#[derive(Debug)]
#[must_use = "a Durability handle says when the records survive a crash; drop it explicitly if unused"]
pub struct Durability(Inner);

impl Durability {
    pub(crate) fn ready(level: DurabilityLevel, position: u64) -> Self {
        Durability(Inner::Ready(Durable { level, position }))
    }

    pub(crate) fn pending(shared: Arc<SyncShared>, target: u64, already_requested: bool) -> Self {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        Durability(Inner::Pending {
            shared,
            target,
            id,
            requested: already_requested,
        })
    }

    /// The result if it is already known, without blocking or registering a waker. Requests a sync
    /// for a lazy (settlement) handle.
    pub fn try_now(&mut self) -> Option<Result<Durable, StoreError>> {
        match &mut self.0 {
            Inner::Ready(d) => Some(Ok(*d)),
            Inner::Done => Some(Err(StoreError::Closed)),
            Inner::Pending {
                shared,
                target,
                requested,
                ..
            } => {
                if !*requested {
                    shared.request(*target);
                    *requested = true;
                }
                let st = shared.state.lock();
                check(&st, *target)
            }
        }
    }

    /// Blocks the calling thread until the records are durable or the log failed. Do not call it on
    /// an async executor thread; `.await` the handle there.
    pub fn wait(self) -> Result<Durable, StoreError> {
        self.wait_timeout(None)
            .expect("an unbounded wait always returns a result")
    }

    /// Like [`Durability::wait`] but gives up after `timeout`, returning `None` (the write is unaffected).
    pub fn wait_timeout(
        mut self,
        timeout: Option<Duration>,
    ) -> Option<Result<Durable, StoreError>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        match std::mem::replace(&mut self.0, Inner::Done) {
            Inner::Ready(d) => Some(Ok(d)),
            Inner::Done => Some(Err(StoreError::Closed)),
            Inner::Pending {
                shared,
                target,
                requested,
                id,
            } => {
                if !requested {
                    shared.request(target);
                }
                let mut st = shared.state.lock();
                st.wakers.remove(&id);
                loop {
                    if let Some(r) = check(&st, target) {
                        return Some(r);
                    }
                    match deadline {
                        None => shared.waiters.wait(&mut st),
                        Some(d) => {
                            if shared.waiters.wait_until(&mut st, d).timed_out() {
                                return check(&st, target);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn check(st: &SyncState, target: u64) -> Option<Result<Durable, StoreError>> {
    if st.synced >= target {
        return Some(Ok(Durable {
            level: DurabilityLevel::Fsynced,
            position: target,
        }));
    }
    if let Some(e) = &st.failed {
        return Some(Err(StoreError::Failed {
            cause: Arc::new(e.clone()),
        }));
    }
    if st.stopped {
        return Some(Err(StoreError::Closed));
    }
    None
}

impl Future for Durability {
    type Output = Result<Durable, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.0 {
            Inner::Ready(d) => {
                let d = *d;
                this.0 = Inner::Done;
                Poll::Ready(Ok(d))
            }
            Inner::Done => Poll::Ready(Err(StoreError::Closed)),
            Inner::Pending {
                shared,
                target,
                id,
                requested,
            } => {
                if !*requested {
                    shared.request(*target);
                    *requested = true;
                }
                let mut st = shared.state.lock();
                if let Some(r) = check(&st, *target) {
                    st.wakers.remove(id);
                    drop(st);
                    this.0 = Inner::Done;
                    return Poll::Ready(r);
                }
                st.wakers.insert(*id, (*target, cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

impl Drop for Durability {
    fn drop(&mut self) {
        if let Inner::Pending { shared, id, .. } = &self.0 {
            shared.state.lock().wakers.remove(id);
        }
    }
}
