//! A Prometheus histogram of durations with fixed buckets, lock-free (one atomic add per
//! observation and bucket hit), shared by every queue of the broker.
//!
//! # Invariants
//! - Buckets are cumulative when rendered (`le` is an upper bound, `+Inf` equals `_count`);
//!   `_sum` is kept in microseconds and rendered in seconds.
//! - Memory: [`BUCKETS_US`]`.len() + 3` atomics per histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds in µs: 100 µs to 10 s.
pub const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 10_000_000,
];

/// A histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram (usable in a `static`).
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_US.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one duration, in µs.
    pub fn observe_us(&self, us: u64) {
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the family `name` (HELP, TYPE, buckets, sum, count) to `out`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        // Read count first: buckets read after it are never behind by more than the
        // observations made meanwhile, and +Inf is rendered as the largest of the two.
        let count = self.count();
        let mut cumulative = 0u64;
        for (b, n) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = count.max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe_us(50);
        h.observe_us(300);
        h.observe_us(20_000_000);
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "X.");
        assert!(s.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.0005\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_count 3\n"), "{s}");
    }
}
