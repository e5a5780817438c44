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
//! - Points are stored as runs: consecutive points whose figures are all equal (an idle queue's,
//!   second after second) are one `Run` (the figures, the first and last `t`, the count). A
//!   run's inner points are given back with `t` spread evenly between its first and last (the
//!   sampler ticks once a second, so this is off by the sampler's jitter at most); the first and
//!   last are exact.
//! - Memory: a run is about 130 B. An idle queue costs one run, whatever the window; a queue
//!   whose figures change every second costs one run per point: `capacity` runs, ≈ 115 KiB per
//!   queue at 900 points. A ring is dropped when its queue is (the sampler calls
//!   [`History::retain`]).
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

/// Consecutive points with equal figures: `first` (with the first point's `t`), the last
/// point's `t` and how many points there are (at least 1).
#[derive(Debug, Clone, Copy)]
struct Run {
    first: Point,
    last_t: u64,
    n: u32,
}

impl Run {
    /// The `t` of the run's `i`-th point (`i < n`): exact for the first and the last.
    fn t(&self, i: u32) -> u64 {
        if self.n <= 1 {
            return self.first.t;
        }
        let span = u128::from(self.last_t - self.first.t);
        self.first.t + (span * u128::from(i) / u128::from(self.n - 1)) as u64
    }

    fn point(&self, i: u32) -> Point {
        Point {
            t: self.t(i),
            ..self.first
        }
    }
}

/// Whether two points have the same figures (`t` aside).
fn same_figures(a: &Point, b: &Point) -> bool {
    Point { t: 0, ..*a } == Point { t: 0, ..*b }
}

/// One queue's runs and the number of points they hold.
#[derive(Debug, Default)]
struct Ring {
    runs: VecDeque<Run>,
    points: usize,
}

/// Every queue's ring of points.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    queues: HashMap<String, Ring>,
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
            None => self.queues.entry(queue.to_string()).or_default(),
        };
        match ring.runs.back_mut() {
            Some(last) if last.last_t >= p.t => return,
            // A run holds at most `capacity` + 1 points for a moment (a u32, by
            // `MAX_HISTORY_SECONDS`).
            Some(last) if same_figures(&last.first, &p) => {
                last.last_t = p.t;
                last.n += 1;
            }
            _ => ring.runs.push_back(Run {
                first: p,
                last_t: p.t,
                n: 1,
            }),
        }
        ring.points += 1;
        if ring.points > self.capacity {
            let front = ring
                .runs
                .front_mut()
                .expect("a ring over capacity has runs");
            if front.n == 1 {
                ring.runs.pop_front();
            } else {
                front.first.t = front.t(1);
                front.n -= 1;
            }
            ring.points -= 1;
        }
    }

    /// Forgets every queue `keep` refuses (deleted queues).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.queues.retain(|q, _| keep(q));
    }

    /// `queue`'s points, oldest first, those with `t >= since` only (`None` for an unknown queue).
    pub fn points(&self, queue: &str, since: u64) -> Option<Vec<Point>> {
        let ring = self.queues.get(queue)?;
        let start = ring.runs.partition_point(|r| r.last_t < since);
        let mut out = Vec::new();
        for run in ring.runs.range(start..) {
            out.extend((0..run.n).map(|i| run.point(i)).filter(|p| p.t >= since));
        }
        Some(out)
    }

    /// `queue`'s newest point.
    pub fn latest(&self, queue: &str) -> Option<Point> {
        let run = self.queues.get(queue)?.runs.back()?;
        Some(run.point(run.n - 1))
    }

    /// Runs stored for `queue` (memory: each is one [`Run`]).
    #[cfg(test)]
    fn runs(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |r| r.runs.len())
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

    #[test]
    fn an_idle_queue_costs_one_run_and_keeps_exact_ends() {
        let mut h = History::new(900);
        for t in 0..2000u64 {
            h.record("idle", at(1000 + t * 1000 + t % 7, 5));
        }
        assert_eq!(h.runs("idle"), 1);
        let p = h.points("idle", 0).unwrap();
        assert_eq!(p.len(), 900);
        assert!(p.windows(2).all(|w| w[0].t < w[1].t));
        assert_eq!(p.last().unwrap().t, 1000 + 1999 * 1000 + 1999 % 7);
        assert_eq!(h.latest("idle").unwrap().t, p.last().unwrap().t);
        assert!(p.iter().all(|q| q.ready == 5));
        // A change starts a new run; the idle stretch before it stays one.
        h.record("idle", at(3_000_000, 6));
        assert_eq!(h.runs("idle"), 2);
        assert_eq!(h.points("idle", 2_999_999).unwrap().len(), 1);
    }

    proptest! {
        /// The runs give back exactly the points a plain ring of `cap` points would keep: same
        /// figures, the same count, increasing `t` within the original first and last.
        #[test]
        fn runs_match_a_plain_ring(
            steps in proptest::collection::vec((1u64..3000, 0u64..3), 0..400),
            cap in 1usize..60,
            since in 0u64..200_000,
        ) {
            let mut h = History::new(cap);
            let mut plain: VecDeque<Point> = VecDeque::new();
            let mut t = 0;
            let first_t = steps.first().map_or(0, |s| s.0);
            for (dt, ready) in steps {
                t += dt;
                h.record("q", at(t, ready));
                plain.push_back(at(t, ready));
                if plain.len() > cap {
                    plain.pop_front();
                }
            }
            let got = h.points("q", 0).unwrap_or_default();
            prop_assert_eq!(got.len(), plain.len());
            prop_assert!(got.iter().zip(&plain).all(|(a, b)| a.ready == b.ready));
            prop_assert!(got.windows(2).all(|w| w[0].t < w[1].t));
            if let (Some(a), Some(b)) = (got.last(), plain.back()) {
                prop_assert_eq!(a.t, b.t);
            }
            // An inner point's `t` is spread over its run: never before the run began.
            if let Some(a) = got.first() {
                prop_assert!(a.t >= first_t);
            }
            let after = h.points("q", since).unwrap_or_default();
            prop_assert!(after.iter().all(|p| p.t >= since));
            prop_assert_eq!(&after[..], &got[got.len() - after.len()..]);
        }


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
