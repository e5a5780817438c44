//! Failed-login slowdown: per source address, how long the answer to a failed login is held back.
//!
//! The n-th failure in a row from one address is answered after `min(BASE × 2^(n-1), MAX)`
//! (100 ms, 200 ms, 400 ms, ... at most 3.2 s), so guessing passwords from one address costs
//! seconds per guess while a user who mistypes once waits a tenth of a second. A success from the
//! address, or [`FORGET_AFTER`] without failures, resets its count.
//!
//! # Invariants
//! - Memory is bounded: at most [`MAX_TRACKED`] addresses are remembered. When the table is full,
//!   stale entries are dropped; if none is stale, an address not in the table gets the largest
//!   delay (a flood from many addresses is slowed, never remembered without bound).
//! - Pure: time is an argument; the caller sleeps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Delay after the first failure.
pub(crate) const BASE: Duration = Duration::from_millis(100);
/// Largest delay.
pub(crate) const MAX: Duration = Duration::from_millis(3200);
/// A source without failures for this long starts again from [`BASE`].
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most source addresses remembered.
pub(crate) const MAX_TRACKED: usize = 65_536;

#[derive(Default)]
pub(crate) struct FailedLogins {
    by_source: HashMap<IpAddr, (u32, Instant)>,
}

impl FailedLogins {
    /// Records a failure from `source` at `now`; returns how long to hold back the answer.
    pub(crate) fn failed(&mut self, source: IpAddr, now: Instant) -> Duration {
        if !self.by_source.contains_key(&source) && self.by_source.len() >= MAX_TRACKED {
            self.by_source
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < FORGET_AFTER);
            if self.by_source.len() >= MAX_TRACKED {
                return MAX;
            }
        }
        let entry = self.by_source.entry(source).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay(entry.0)
    }

    /// A successful login from `source`: its count starts again.
    pub(crate) fn succeeded(&mut self, source: IpAddr) {
        self.by_source.remove(&source);
    }
}

/// The delay after `n` failures in a row (n >= 1).
pub(crate) fn delay(n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(16);
    BASE.saturating_mul(1 << shift).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_per_source_and_is_bounded() {
        let mut f = FailedLogins::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(f.failed(a, t), BASE);
        assert_eq!(f.failed(a, t), BASE * 2);
        assert_eq!(f.failed(a, t), BASE * 4);
        assert_eq!(f.failed(b, t), BASE, "another source has its own count");
        for _ in 0..40 {
            assert!(f.failed(a, t) <= MAX);
        }
        assert_eq!(f.failed(a, t), MAX);
        f.succeeded(a);
        assert_eq!(f.failed(a, t), BASE);
        assert_eq!(
            f.failed(b, t + FORGET_AFTER),
            BASE,
            "old failures are forgotten"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut f = FailedLogins::default();
        let t = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            f.failed(IpAddr::from(i.to_be_bytes()), t);
        }
        let new: IpAddr = "255.255.255.255".parse().unwrap();
        assert_eq!(
            f.failed(new, t),
            MAX,
            "a full table slows new sources the most"
        );
        assert_eq!(f.by_source.len(), MAX_TRACKED);
        // Once the entries are stale, they make room.
        assert_eq!(f.failed(new, t + FORGET_AFTER), BASE);
        assert_eq!(f.by_source.len(), 1);
    }
}
