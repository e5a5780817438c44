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
use std::time::{Duration, Instant};

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

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    sent: u64,
    received: u64,
    dropped: u64,
}

/// Samples of the counters at snapshot times, for rates over a sliding window.
pub(crate) struct RateWindow {
    window: Duration,
    samples: VecDeque<Sample>,
}

impl RateWindow {
    pub(crate) fn new(window: Duration, start: Instant) -> Self {
        let mut samples = VecDeque::new();
        samples.push_back(Sample {
            at: start,
            sent: 0,
            received: 0,
            dropped: 0,
        });
        RateWindow { window, samples }
    }

    /// Records the current counters and returns (send, recv, drop) rates per second.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        sent: u64,
        received: u64,
        dropped: u64,
    ) -> [f64; 3] {
        // Keep the newest sample older than the window start so the window is fully covered.
        while self.samples.len() >= 2 && now.duration_since(self.samples[1].at) >= self.window {
            self.samples.pop_front();
        }
        let base = self.samples[0];
        let dt = now.duration_since(base.at).as_secs_f64();
        let rates = if dt > 0.0 {
            [
                (sent - base.sent) as f64 / dt,
                (received - base.received) as f64 / dt,
                (dropped - base.dropped) as f64 / dt,
            ]
        } else {
            [0.0; 3]
        };
        if self
            .samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= Duration::from_millis(50))
        {
            self.samples.push_back(Sample {
                at: now,
                sent,
                received,
                dropped,
            });
        }
        if self.samples.len() > 1024 {
            self.samples.pop_front();
        }
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_sliding_window_only() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(2), t0);
        let s = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(w.observe(s(1), 100, 50, 10), [100.0, 50.0, 10.0]);
        assert_eq!(w.observe(s(2), 200, 100, 20), [100.0, 50.0, 10.0]);
        // Rate changes: only the last ~2 s count.
        let r = w.observe(s(3), 1200, 100, 20);
        assert_eq!(r, [550.0, 25.0, 5.0], "window starts at the 1 s sample");
        let r = w.observe(s(4), 2200, 100, 20);
        assert_eq!(r, [1000.0, 0.0, 0.0]);
    }
}
