//! A queue's publish rate limit, driven by the state machine's clock.
//!
//! governor's GCRA limiters (messages/s and bytes/s, each with a burst) run on a
//! `FakeRelativeClock` that is moved forward to the `now` the state machine is given, so rate
//! limiting is as deterministic and testable as the rest of [`crate::queue`].
//!
//! Memory bound: two limiters of a few words each.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use levee_proto::RateLimit;

type Limiter =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// What the gate says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Within the rate: go.
    Pass,
    /// Over the rate: retry in this many ms.
    Wait(u64),
    /// Larger than the burst in bytes: it can never pass.
    Never,
}

pub(crate) struct RateGate {
    msgs: Option<Limiter>,
    bytes: Option<Limiter>,
    clock: FakeRelativeClock,
    /// `now` of the first check: the clock's zero.
    base: Option<u64>,
    /// Where the clock stands, in ms after `base`.
    at: u64,
}

fn nz(v: u64) -> NonZeroU32 {
    NonZeroU32::new(v.clamp(1, u64::from(u32::MAX)) as u32).expect("clamped to >= 1")
}

impl RateGate {
    /// A gate for `limit`, or `None` if it limits nothing.
    pub(crate) fn new(limit: &RateLimit) -> Option<RateGate> {
        let clock = FakeRelativeClock::default();
        let make = |rate: u64, burst: u64| {
            let quota = Quota::per_second(nz(rate)).allow_burst(nz(burst.max(1)));
            RateLimiter::direct_with_clock(quota, clock.clone())
        };
        let msgs = limit
            .msgs_per_sec
            .map(|r| make(u64::from(r), u64::from(limit.burst_msgs).max(u64::from(r))));
        let bytes = limit
            .bytes_per_sec
            .map(|r| make(r, limit.burst_bytes.max(r)));
        (msgs.is_some() || bytes.is_some()).then_some(RateGate {
            msgs,
            bytes,
            clock,
            base: None,
            at: 0,
        })
    }

    fn advance(&mut self, now: u64) {
        let base = *self.base.get_or_insert(now);
        let t = now.saturating_sub(base);
        if t > self.at {
            self.clock.advance(Duration::from_millis(t - self.at));
            self.at = t;
        }
    }

    /// Takes one message of `bytes` from the budget, or says how long to wait.
    pub(crate) fn check(&mut self, now: u64, bytes: u64) -> Gate {
        self.advance(now);
        if let Some(b) = &self.bytes
            && bytes > 0
        {
            match b.check_n(nz(bytes)) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Gate::Wait(ms_ceil(not_until.wait_time_from(self.clock.now())));
                }
                Err(_) => return Gate::Never,
            }
        }
        if let Some(m) = &self.msgs
            && let Err(not_until) = m.check()
        {
            return Gate::Wait(ms_ceil(not_until.wait_time_from(self.clock.now())));
        }
        Gate::Pass
    }
}

fn ms_ceil(d: Duration) -> u64 {
    (d.as_micros() as u64).div_ceil(1_000).max(1)
}
