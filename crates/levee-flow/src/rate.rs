//! Rate limiting and concurrency limiting for producers.
//!
//! [`Paced`] wraps a [`Sender`] and slows it to a message rate and/or a byte rate, each with a
//! burst, using `governor`'s GCRA limiters (we do not implement GCRA ourselves), plus an
//! optional concurrency limit ([`ConcurrencyLimit`], a tokio semaphore) on sends in flight.
//! Pacing only ever *waits*: a paced producer is slowed, never failed; whether a full channel
//! then waits, rejects or drops is the channel's own overflow policy.
//!
//! Memory bound: a limiter holds a fixed few words of state; waiting senders each hold their
//! own message until admitted.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::channel::{Sender, Sent};
use crate::error::{ConfigError, SendError};

/// Pacing parameters. Unset fields are not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateConfig {
    /// Messages per second, and the burst allowed above it (defaults to the rate).
    pub msgs_per_sec: Option<(u32, u32)>,
    /// Bytes per second (by the channel's weigher), and the burst in bytes.
    pub bytes_per_sec: Option<(u32, u32)>,
    /// At most this many sends in flight at once.
    pub max_in_flight: Option<usize>,
}

impl RateConfig {
    /// `n` messages per second with a burst of `burst`.
    pub fn msgs(mut self, n: u32, burst: u32) -> Self {
        self.msgs_per_sec = Some((n, burst));
        self
    }
    /// `n` bytes per second with a burst of `burst` bytes.
    pub fn bytes(mut self, n: u32, burst: u32) -> Self {
        self.bytes_per_sec = Some((n, burst));
        self
    }
    /// At most `n` sends in flight.
    pub fn in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }
}

fn limiter(
    (rate, burst): (u32, u32),
    what: &'static str,
) -> Result<DefaultDirectRateLimiter, ConfigError> {
    let rate = NonZeroU32::new(rate).ok_or(ConfigError::Zero(what))?;
    let burst = NonZeroU32::new(burst).ok_or(ConfigError::Zero(what))?;
    Ok(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// A limit on concurrent operations (a tokio semaphore with accounting).
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    sem: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyLimit {
    /// At most `max` at once (error if 0).
    pub fn new(max: usize) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::Zero("max_in_flight"));
        }
        Ok(ConcurrencyLimit {
            sem: Arc::new(Semaphore::new(max)),
            max,
        })
    }
    /// Waits for a slot; the slot is released when the permit is dropped.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled wait holds no slot (it does lose its place in the FIFO queue
    /// of waiters).
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
    /// Runs `f` while holding a slot.
    ///
    /// # Cancel safety
    /// Dropping the future drops `f` with it (cancelling it wherever it was) and releases the
    /// slot; before `f` started, it is cancel-safe as [`ConcurrencyLimit::acquire`].
    pub async fn run<F: Future>(&self, f: F) -> F::Output {
        let _p = self.acquire().await;
        f.await
    }
    /// Operations in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.sem.available_permits()
    }
    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// A sender paced by message rate, byte rate and in-flight limit. Cloning shares the limits.
pub struct Paced<T> {
    tx: Sender<T>,
    msgs: Option<Arc<DefaultDirectRateLimiter>>,
    bytes: Option<(Arc<DefaultDirectRateLimiter>, u32)>,
    conc: Option<ConcurrencyLimit>,
}

impl<T> Clone for Paced<T> {
    fn clone(&self) -> Self {
        Paced {
            tx: self.tx.clone(),
            msgs: self.msgs.clone(),
            bytes: self.bytes.clone(),
            conc: self.conc.clone(),
        }
    }
}

impl<T> Paced<T> {
    /// Wraps `tx` with the limits in `cfg` (error on a zero rate, burst or in-flight limit).
    pub fn new(tx: Sender<T>, cfg: RateConfig) -> Result<Self, ConfigError> {
        Ok(Paced {
            tx,
            msgs: cfg
                .msgs_per_sec
                .map(|q| limiter(q, "msgs_per_sec").map(Arc::new))
                .transpose()?,
            bytes: cfg
                .bytes_per_sec
                .map(|q| limiter(q, "bytes_per_sec").map(|l| (Arc::new(l), q.1)))
                .transpose()?,
            conc: cfg.max_in_flight.map(ConcurrencyLimit::new).transpose()?,
        })
    }

    /// Waits for the rate and in-flight limits, then sends through the channel (which may still
    /// wait, reject or drop by its policy). A message heavier than the byte burst is admitted in
    /// burst-sized installments, so it is paced, never refused.
    ///
    /// # Cancel safety
    /// If cancelled, the message was not sent (it is dropped with the future); rate tokens
    /// already taken are spent (the next send is not delayed further than the configured rate
    /// allows).
    pub async fn send(&self, msg: T) -> Result<Sent, SendError<T>> {
        let _permit = match &self.conc {
            Some(c) => Some(c.acquire().await),
            None => None,
        };
        if let Some(l) = &self.msgs {
            l.until_ready().await;
        }
        if let Some((l, burst)) = &self.bytes {
            let mut left = self.tx.weigh(&msg);
            while left > 0 {
                let n = left.min(u64::from(*burst)) as u32;
                let n = NonZeroU32::new(n).expect("n > 0");
                // Cannot fail: n <= burst.
                let _ = l.until_n_ready(n).await;
                left -= u64::from(n.get());
            }
        }
        self.tx.send(msg).await
    }

    /// The wrapped sender.
    pub fn inner(&self) -> &Sender<T> {
        &self.tx
    }

    /// Sends in flight now (0 without an in-flight limit).
    pub fn in_flight(&self) -> usize {
        self.conc.as_ref().map_or(0, |c| c.in_flight())
    }
}
