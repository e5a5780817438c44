//! Channel statistics: the counters, their snapshot, and rates over a sliding window.
//!
//! # Accounting definitions
//! - `sent`: messages accepted into the channel's accounting (queued, or dropped by a drop
//!   policy). A message handed back to the caller (`SendError`) is **not** sent.
//! - `received`: messages handed to a receiver.
//! - `dropped`: sent messages discarded afterwards, by reason (`dropped_by`); each one reached
//!   the `on_drop` hook if there is one.
//! - `rejected`: send attempts whose message was handed back because of the limits (`Full`,
//!   `Rejected`, `TooLarge`, `Timeout`); not part of `sent`.
//! - `len` / `bytes`: what is queued now.
//!
//! Invariant, exact at every snapshot because the snapshot is taken under the lock that mutates
//! the counters: `sent == received + dropped + len`.
//!
//! Rates are computed from the counters at the previous snapshots that fall in the rate window
//! (no clock read on the send/receive path): the rate is the counter delta divided by the time
//! since the oldest sample still inside the window (or since creation).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::policy::DropReason;

/// Dropped counts per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts(pub [u64; 6]);

impl DropCounts {
    /// Count for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    /// Sum over every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub(crate) fn add(&mut self, r: DropReason, n: u64) {
        self.0[r.index()] += n;
    }
}

/// A consistent snapshot of a channel's counters and derived figures.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages accepted into the accounting.
    pub sent: u64,
    /// Messages handed to receivers.
    pub received: u64,
    /// Sent messages discarded (total of `dropped_by`).
    pub dropped: u64,
    /// Dropped messages by reason.
    pub dropped_by: DropCounts,
    /// Messages handed back to the sender because of the limits (not in `sent`).
    pub rejected: u64,
    /// Messages queued now.
    pub len: usize,
    /// Bytes queued now (by the weigher).
    pub bytes: u64,
    /// Current `max_messages` (`None`: unbounded).
    pub max_messages: Option<usize>,
    /// Current `max_bytes` (`None`: unbounded).
    pub max_bytes: Option<u64>,
    /// Highest `len` ever observed.
    pub high_water_len: usize,
    /// Highest `bytes` ever observed.
    pub high_water_bytes: u64,
    /// Number of limit changes (adaptive resizes).
    pub resizes: u64,
    /// Whether the channel is closed for sending.
    pub closed: bool,
    /// Sent per second over the rate window.
    pub send_rate: f64,
    /// Received per second over the rate window.
    pub recv_rate: f64,
    /// Dropped per second over the rate window.
    pub drop_rate: f64,
    /// `dropped / sent` in percent (0 when nothing was sent).
    pub loss_pct: f64,
    /// Time since the channel was created.
    pub uptime: Duration,
}

impl Stats {
    /// `len / max_messages` (None when unbounded in messages).
    pub fn utilisation(&self) -> Option<f64> {
        self.max_messages.map(|m| self.len as f64 / m as f64)
    }
    /// Whether `sent == received + dropped + len` holds.
    pub fn balanced(&self) -> bool {
        self.sent == self.received + self.dropped + self.len as u64
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} ({:.1}/s) | received {} ({:.1}/s) | dropped {} ({:.1}/s) | rejected {} | queued {}",
            self.sent,
            self.send_rate,
            self.received,
            self.recv_rate,
            self.dropped,
            self.drop_rate,
            self.rejected,
            self.len
        )?;
        if let Some(m) = self.max_messages {
            write!(f, "/{m}")?;
        }
        write!(f, " ({} B", self.bytes)?;
        if let Some(b) = self.max_bytes {
            write!(f, "/{b}")?;
        }
        write!(
            f,
            ") | peak {} | loss {:.2}%",
            self.high_water_len, self.loss_pct
        )?;
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| self.dropped_by.get(**r) > 0)
            .map(|r| format!("{}={}", r.name(), self.dropped_by.get(*r)))
            .collect();
        if !reasons.is_empty() {
            write!(f, " [{}]", reasons.join(" "))?;
        }
        Ok(())
    }
}

/// Raw counters, mutated under the channel lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub sent: u64,
    pub received: u64,
    pub rejected: u64,
    pub dropped: DropCounts,
    pub high_water_len: usize,
    pub high_water_bytes: u64,
    pub resizes: u64,
}

/// Counter samples over a sliding window, for per-second rates: the one rate window of Levee (the
/// channels' [`Stats`] and the broker's queue stats both use it). Time is milliseconds on any
/// monotonic clock of the caller's (no clock is read here).
///
/// A sample is recorded at most every `every_ms`, and only while the counters move, so an idle
/// owner need not be woken: when [`RateWindow::next_due`] is `None` the counters equal the last
/// sample, so their value at any time since is known exactly. A rate is the counter delta since
/// the newest sample at or before the window's start, divided by the time since it — never over a
/// few milliseconds between two looks (0 until `every_ms` of history exist).
///
/// Memory bound: at most `window_ms / every_ms + 2` samples, and never more than 1,024.
#[derive(Debug, Clone)]
pub struct RateWindow<const N: usize> {
    window_ms: u64,
    every_ms: u64,
    samples: VecDeque<(u64, [u64; N])>,
}

impl<const N: usize> RateWindow<N> {
    /// Most samples kept, whatever the window.
    const MAX_SAMPLES: usize = 1024;

    /// A window of `window_ms`, sampled at most every `every_ms` (both at least 1).
    pub fn new(window_ms: u64, every_ms: u64) -> Self {
        RateWindow {
            window_ms: window_ms.max(1),
            every_ms: every_ms.max(1),
            samples: VecDeque::new(),
        }
    }

    /// The same, with a first sample (`counters` at `at_ms`, e.g. zeros at creation).
    pub fn starting_at(mut self, at_ms: u64, counters: [u64; N]) -> Self {
        self.samples.push_back((at_ms, counters));
        self
    }

    /// When the next sample must be taken: `None` while the counters have not moved since the
    /// last one.
    pub fn next_due(&self, c: [u64; N]) -> Option<u64> {
        match self.samples.back() {
            None => Some(0),
            Some((_, last)) if *last == c => None,
            Some((t, _)) => Some(t + self.every_ms),
        }
    }

    /// Takes a sample if one is due; keeps one sample at or before the window's start.
    pub fn record(&mut self, now_ms: u64, c: [u64; N]) {
        if self.next_due(c).is_some_and(|due| now_ms >= due) {
            self.samples.push_back((now_ms, c));
        }
        let start = now_ms.saturating_sub(self.window_ms);
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(t, _)| *t <= start) {
            self.samples.pop_front();
        }
        while self.samples.len() > Self::MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Records, then gives the per-second rates over the window as whole numbers.
    pub fn rates(&mut self, now_ms: u64, c: [u64; N]) -> [u64; N] {
        self.rates_f64(now_ms, c).map(|r| r as u64)
    }

    /// Records, then gives the per-second rates over the window.
    pub fn rates_f64(&mut self, now_ms: u64, c: [u64; N]) -> [f64; N] {
        self.record(now_ms, c);
        let Some(&(t0, c0)) = self.samples.front() else {
            return [0.0; N];
        };
        let dt = now_ms.saturating_sub(t0);
        if dt < self.every_ms {
            return [0.0; N];
        }
        std::array::from_fn(|i| c[i].saturating_sub(c0[i]) as f64 * 1_000.0 / dt as f64)
    }

    /// Samples held now.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_sliding_window_only() {
        let mut w = RateWindow::new(2_000, 50).starting_at(0, [0; 3]);
        let s = |n: u64| n * 1_000;
        assert_eq!(w.rates_f64(s(1), [100, 50, 10]), [100.0, 50.0, 10.0]);
        assert_eq!(w.rates_f64(s(2), [200, 100, 20]), [100.0, 50.0, 10.0]);
        // Rate changes: only the last ~2 s count.
        let r = w.rates_f64(s(3), [1200, 100, 20]);
        assert_eq!(r, [550.0, 25.0, 5.0], "window starts at the 1 s sample");
        let r = w.rates_f64(s(4), [2200, 100, 20]);
        assert_eq!(r, [1000.0, 0.0, 0.0]);
    }

    #[test]
    fn two_events_a_few_ms_apart_are_not_a_rate_of_hundreds() {
        let mut r = RateWindow::new(5_000, 1_000);
        r.record(10_000, [0, 0, 0]);
        r.record(10_003, [1, 0, 0]);
        assert_eq!(r.rates(10_006, [2, 0, 0]), [0, 0, 0]);
        // Sampled by the owner's own clock, not by the looks: a second later it is 2/s.
        r.record(11_000, [2, 0, 0]);
        assert_eq!(r.rates(11_000, [2, 0, 0]), [2, 0, 0]);
    }

    #[test]
    fn a_steady_flow_is_averaged_and_an_idle_owner_is_not_woken() {
        let mut r = RateWindow::new(5_000, 1_000);
        let mut c = 0;
        for s in 0..=20u64 {
            r.record(s * 1_000, [c, c, c]);
            c += 100;
        }
        let c = c - 100;
        assert_eq!(r.rates(20_000, [c, c, c]), [100, 100, 100]);
        assert!(r.samples() <= 7, "bounded: {}", r.samples());
        assert_eq!(r.next_due([c, c, c]), None);
        assert_eq!(r.rates(40_000, [c, c, c]), [0, 0, 0]);
    }
}
