//! A thread-safe circuit breaker usable around any async operation.
//!
//! Closed -> Open after `failure_threshold` consecutive failures, or when the failure rate over
//! the last `window` calls reaches `rate` (once at least `min_calls` were seen) -> HalfOpen once
//! `open_for` has elapsed, letting at most `half_open_probes` probe calls through -> Closed when
//! all of them succeed, Open again on any probe failure.
//!
//! All state sits behind one mutex (held only for a few field updates, never across an await).
//! Each state change bumps a generation number; the outcome of a call admitted under an older
//! generation still counts in the stats but cannot move the state (a late success from before
//! the breaker opened does not close it). The clock is `tokio::time::Instant`, so tests can run
//! with paused time.
//!
//! We do not use the `failsafe` crate: its half-open state admits every call rather than a
//! configured number of probes, its state is not observable (only "is a call permitted"), it
//! has no generation guard for late outcomes, and it drives async calls through its own future
//! wrappers; what we need is about 200 lines on top of a mutex.
//!
//! Memory bound: fixed, plus the failure-rate window (`window` booleans).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::{BreakerError, ConfigError};

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until `open_for` has elapsed.
    Open,
    /// A limited number of probe calls go through.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        })
    }
}

/// Trip on failure rate: over the last `window` calls, at least `min_calls` seen, failure
/// fraction >= `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Fraction in (0, 1].
    pub rate: f64,
    /// Calls considered.
    pub window: usize,
    /// Minimum calls before the rate is judged.
    pub min_calls: usize,
}

/// Breaker parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 disables this trigger).
    pub failure_threshold: u32,
    /// Optional failure-rate trigger.
    pub failure_rate: Option<FailureRate>,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probe calls admitted in half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// The source's breaker: 5 consecutive failures, 5 s open, 1 probe.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        BreakerConfig {
            failure_threshold,
            failure_rate: None,
            open_for,
            half_open_probes: 1,
        }
    }
    /// Sets the failure-rate trigger.
    pub fn failure_rate(mut self, rate: f64, window: usize, min_calls: usize) -> Self {
        self.failure_rate = Some(FailureRate {
            rate,
            window,
            min_calls,
        });
        self
    }
    /// Sets the number of half-open probes.
    pub fn probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.half_open_probes == 0 {
            return Err(ConfigError::Zero("half_open_probes"));
        }
        if self.failure_threshold == 0 && self.failure_rate.is_none() {
            return Err(ConfigError::Invalid(
                "breaker needs failure_threshold > 0 or a failure rate",
            ));
        }
        if let Some(r) = self.failure_rate {
            if r.rate.is_nan() || r.rate <= 0.0 || r.rate > 1.0 {
                return Err(ConfigError::Invalid("failure rate must be in (0, 1]"));
            }
            if r.window == 0 || r.min_calls == 0 || r.min_calls > r.window {
                return Err(ConfigError::Invalid(
                    "failure-rate window needs 0 < min_calls <= window",
                ));
            }
        }
        Ok(())
    }
}

/// A snapshot of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// Current state.
    pub state: BreakerState,
    /// Current run of consecutive failures.
    pub consecutive_failures: u32,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls refused because the breaker was open (or half-open and out of probes).
    pub refused: u64,
    /// Times the breaker opened.
    pub opened: u64,
    /// Times it closed again after probing.
    pub closed_again: u64,
}

struct Inner {
    state: BreakerState,
    generation: u64,
    consecutive: u32,
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    window: VecDeque<bool>,
    stats: BreakerStats,
}

/// A thread-safe circuit breaker; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
}

/// Admission to make one call; report the outcome with [`Permit::success`] or
/// [`Permit::failure`]. Dropping it without reporting counts as neither (a half-open probe slot
/// is released).
#[must_use = "report the outcome with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.report(self.generation, self.probe, true);
    }
    /// The call failed.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.report(self.generation, self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            let mut g = self.breaker.inner.lock();
            if g.generation == self.generation && g.probes_in_flight > 0 {
                g.probes_in_flight -= 1;
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker (error on an invalid configuration).
    pub fn new(cfg: BreakerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(CircuitBreaker {
            cfg,
            inner: Arc::new(Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                consecutive: 0,
                opened_at: Instant::now(),
                probes_in_flight: 0,
                probe_successes: 0,
                window: VecDeque::new(),
                stats: BreakerStats {
                    state: BreakerState::Closed,
                    consecutive_failures: 0,
                    successes: 0,
                    failures: 0,
                    refused: 0,
                    opened: 0,
                    closed_again: 0,
                },
            })),
        })
    }

    fn refresh(&self, g: &mut Inner) {
        if g.state == BreakerState::Open && g.opened_at.elapsed() >= self.cfg.open_for {
            g.state = BreakerState::HalfOpen;
            g.generation += 1;
            g.probes_in_flight = 0;
            g.probe_successes = 0;
        }
    }

    fn open(&self, g: &mut Inner) {
        g.state = BreakerState::Open;
        g.generation += 1;
        g.opened_at = Instant::now();
        g.stats.opened += 1;
        g.window.clear();
    }

    /// Current state (an open breaker whose timeout has passed reads as half-open).
    pub fn state(&self) -> BreakerState {
        let mut g = self.inner.lock();
        self.refresh(&mut g);
        g.state
    }

    /// A snapshot of the counters and state.
    pub fn stats(&self) -> BreakerStats {
        let mut g = self.inner.lock();
        self.refresh(&mut g);
        let mut s = g.stats;
        s.state = g.state;
        s.consecutive_failures = g.consecutive;
        s
    }

    /// Asks to make one call: `Err(Open)` if refused.
    pub fn try_acquire(&self) -> Result<Permit, BreakerError<std::convert::Infallible>> {
        let mut g = self.inner.lock();
        self.refresh(&mut g);
        let probe = match g.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                g.stats.refused += 1;
                return Err(BreakerError::Open);
            }
            BreakerState::HalfOpen => {
                if g.probes_in_flight + g.probe_successes >= self.cfg.half_open_probes {
                    g.stats.refused += 1;
                    return Err(BreakerError::Open);
                }
                g.probes_in_flight += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            generation: g.generation,
            probe,
            reported: false,
        })
    }

    fn report(&self, generation: u64, probe: bool, ok: bool) {
        let mut g = self.inner.lock();
        if ok {
            g.stats.successes += 1;
        } else {
            g.stats.failures += 1;
        }
        if g.generation != generation {
            return;
        }
        match g.state {
            BreakerState::Closed => {
                if ok {
                    g.consecutive = 0;
                } else {
                    g.consecutive += 1;
                }
                let mut trip =
                    self.cfg.failure_threshold > 0 && g.consecutive >= self.cfg.failure_threshold;
                if let Some(r) = self.cfg.failure_rate {
                    if g.window.len() == r.window {
                        g.window.pop_front();
                    }
                    g.window.push_back(!ok);
                    let fails = g.window.iter().filter(|f| **f).count();
                    if g.window.len() >= r.min_calls
                        && fails as f64 >= r.rate * g.window.len() as f64
                    {
                        trip = true;
                    }
                }
                if trip {
                    self.open(&mut g);
                }
            }
            BreakerState::HalfOpen if probe => {
                g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
                if ok {
                    g.probe_successes += 1;
                    if g.probe_successes >= self.cfg.half_open_probes {
                        g.state = BreakerState::Closed;
                        g.generation += 1;
                        g.consecutive = 0;
                        g.window.clear();
                        g.stats.closed_again += 1;
                    }
                } else {
                    self.open(&mut g);
                }
            }
            _ => {}
        }
    }

    /// Runs `op` through the breaker: refused with [`BreakerError::Open`] without running it if
    /// the breaker is open; otherwise its `Err` counts as a failure and is returned as
    /// [`BreakerError::Inner`].
    ///
    /// # Cancel safety
    /// Dropping the future drops `op` with it and records no outcome (a probe slot it held is
    /// freed), so cancellation neither trips nor closes the breaker.
    pub async fn call<T, E, F>(&self, op: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(|_| BreakerError::Open)?;
        match op.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.failure();
                Err(BreakerError::Inner(e))
            }
        }
    }
}
