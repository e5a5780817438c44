//! Server-side history: each queue's figures at 1 s resolution over a bounded window (15 min by
//! default), so a chart drawn from `GET /api/queues/{name}/history` starts full.
//!
//! I/O-free: the sampler task (`ops::monitor`) hands in one [`Point`] per queue per second with
//! the time it took it at; this module only stores them.
//!
//! # Invariants
//! - A queue's ring holds at most `capacity` points (the oldest is dropped first) and its points
//!   are in increasing `t`; a point at or before the newest one is ignored (a clock step back
//!   never reorders a chart).
//! - Memory: `capacity × size_of::<Point>()` (about 120 B) per queue: 900 points ≈ 108 KiB per
//!   queue, and a ring is dropped when its queue is (the sampler calls [`History::retain`]).
//! - Counters in a point are cumulative (as in `/metrics`): a rate is the difference of two
//!   points divided by their `t` difference, computed by the reader.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Default number of points kept per queue: 15 min at 1 s.
pub const DEFAULT_HISTORY_SECONDS: u32 = 900;
/// Largest accepted `[history] seconds` (24 h: ≈ 10 MiB per queue).
pub const MAX_HISTORY_SECONDS: u32 = 86_400;

/// One queue's figures at one instant (`t`: ms since the Unix epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Point {
    /// When the sample was taken, ms since the Unix epoch.
    pub t: u64,
    /// Ready messages.
    pub ready: u64,
    /// Delivered, unsettled messages.
    pub unacked: u64,
    /// Payload bytes of ready and unacked messages.
    pub bytes: u64,
    /// Subscriptions.
    pub consumers: u64,
    /// Age of the next ready message, ms (0 when none).
    pub oldest_ms: u64,
    /// Cumulative: messages published to the queue.
    pub published: u64,
    /// Cumulative: deliveries (redeliveries included).
    pub delivered: u64,
    /// Cumulative: acks.
    pub acked: u64,
    /// Cumulative: dropped messages, conflation excluded (that is `replaced`).
    pub dropped: u64,
    /// Cumulative: messages replaced by a newer one of the same key (conflation: not loss).
    pub replaced: u64,
    /// Cumulative: publishes refused (rejected or throttled).
    pub rejected: u64,
    /// Cumulative: expired messages.
    pub expired: u64,
    /// Cumulative: dead-lettered messages.
    pub dead_lettered: u64,
}

/// Every queue's ring of points.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    queues: HashMap<String, VecDeque<Point>>,
}

impl History {
    /// Keeps at most `capacity` points per queue (at least 1).
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            queues: HashMap::new(),
        }
    }

    /// Points kept per queue at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `p` to `queue`'s ring (dropping the oldest point when full). Ignored when `p.t`
    /// is not after the newest point's.
    pub fn record(&mut self, queue: &str, p: Point) {
        let ring = match self.queues.get_mut(queue) {
            Some(r) => r,
            None => self
                .queues
                .entry(queue.to_string())
                .or_insert_with(|| VecDeque::with_capacity(self.capacity.min(64))),
        };
        if ring.back().is_some_and(|last| last.t >= p.t) {
            return;
        }
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(p);
    }

    /// Forgets every queue `keep` refuses (deleted queues).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.queues.retain(|q, _| keep(q));
    }

    /// `queue`'s points, oldest first, those with `t >= since` only (`None` for an unknown queue).
    pub fn points(&self, queue: &str, since: u64) -> Option<Vec<Point>> {
        let ring = self.queues.get(queue)?;
        let start = ring.partition_point(|p| p.t < since);
        Some(ring.range(start..).copied().collect())
    }

    /// `queue`'s newest point.
    pub fn latest(&self, queue: &str) -> Option<Point> {
        self.queues.get(queue)?.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(t: u64, ready: u64) -> Point {
        Point {
            t,
            ready,
            ..Point::default()
        }
    }

    #[test]
    fn keeps_the_newest_capacity_points_in_order() {
        let mut h = History::new(3);
        for t in 1..=5 {
            h.record("q", at(t * 1000, t));
        }
        let p = h.points("q", 0).unwrap();
        assert_eq!(p.iter().map(|p| p.ready).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(h.points("q", 4500).unwrap().len(), 1);
        assert!(h.points("other", 0).is_none());
        h.record("q", at(2000, 99));
        assert_eq!(
            h.latest("q").unwrap().ready,
            5,
            "a point from the past is ignored"
        );
        h.retain(|q| q != "q");
        assert!(h.latest("q").is_none());
    }

    proptest! {
        #[test]
        fn bounded_and_increasing(ts in proptest::collection::vec(0u64..10_000, 0..300), cap in 1usize..50) {
            let mut h = History::new(cap);
            for (i, t) in ts.iter().enumerate() {
                h.record("q", at(*t, i as u64));
            }
            let p = h.points("q", 0).unwrap_or_default();
            prop_assert!(p.len() <= cap);
            prop_assert!(p.windows(2).all(|w| w[0].t < w[1].t));
        }
    }
}
