//! Measurement: end-to-end latency histograms (HDR, microseconds) per consumer and per second,
//! per-second counters shared by all workers, and the [`Summary`] of one run.
//!
//! Every received message gives one [`Sample`] in three bases: latency from its scheduled send
//! time (coordinated-omission corrected), latency from its actual send time, and the pacer's
//! send-time error (actual - scheduled).
//!
//! Invariants: only events inside the measurement window (after the warm-up, before its end)
//! count towards the summary; per-second series cover the whole run (warm-up included) for the
//! plot. Memory: per consumer and base, one histogram of ~200 KiB plus one 2-significant-digit
//! histogram per second of the run (~25 KiB each); counters are one `AtomicU64` per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly (60 s, in µs); longer ones are clamped to it.
pub(crate) const MAX_LATENCY_US: u64 = 60_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

/// One latency sample: end-to-end from the scheduled and from the actual send time, and the
/// pacer's error (actual - scheduled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    /// Receipt - scheduled send time (coordinated-omission corrected).
    pub scheduled: Duration,
    /// Receipt - actual send time.
    pub actual: Duration,
    /// Actual - scheduled send time.
    pub send_error: Duration,
}

/// Per-second percentiles of one latency base (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SecondPercentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// One base: a window histogram and one per second of the run.
#[derive(Debug, Clone)]
struct Base {
    window: Histogram<u64>,
    per_sec: Vec<Option<Histogram<u64>>>,
    /// Smallest value recorded (latencies are clamped to 1 µs; send errors may be 0).
    floor: u64,
}

impl Base {
    fn new(seconds: usize, floor: u64) -> Base {
        Base {
            window: histogram(3),
            per_sec: vec![None; seconds.max(1)],
            floor,
        }
    }

    fn record(&mut self, second: usize, d: Duration, in_window: bool) {
        let us = (d.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(self.floor);
        if in_window {
            self.window.saturating_record(us);
        }
        let i = second.min(self.per_sec.len() - 1);
        self.per_sec[i]
            .get_or_insert_with(|| histogram(2))
            .saturating_record(us);
    }

    fn merge(&mut self, other: &Base) {
        self.window.add(&other.window).expect("same bounds");
        if self.per_sec.len() < other.per_sec.len() {
            self.per_sec.resize(other.per_sec.len(), None);
        }
        for (mine, theirs) in self.per_sec.iter_mut().zip(&other.per_sec) {
            if let Some(t) = theirs {
                mine.get_or_insert_with(|| histogram(2))
                    .add(t)
                    .expect("same bounds");
            }
        }
    }

    fn per_second(&self) -> Vec<Option<SecondPercentiles>> {
        self.per_sec
            .iter()
            .map(|h| {
                h.as_ref().map(|h| SecondPercentiles {
                    p50: h.value_at_quantile(0.5),
                    p99: h.value_at_quantile(0.99),
                })
            })
            .collect()
    }
}

/// Latencies seen by one consumer, for both bases and the send-time error: the whole window and
/// one histogram per second of the run for each.
#[derive(Debug, Clone)]
pub(crate) struct LatencyRecorder {
    scheduled: Base,
    actual: Base,
    send_error: Base,
}

impl LatencyRecorder {
    /// A recorder for a run of `seconds` seconds (later seconds go to the last slot).
    pub(crate) fn new(seconds: usize) -> Self {
        LatencyRecorder {
            scheduled: Base::new(seconds, 1),
            actual: Base::new(seconds, 1),
            send_error: Base::new(seconds, 0),
        }
    }

    /// Records `s`, received `second` seconds into the run; counted in the window histograms
    /// when `in_window`.
    pub(crate) fn record(&mut self, second: usize, s: Sample, in_window: bool) {
        self.scheduled.record(second, s.scheduled, in_window);
        self.actual.record(second, s.actual, in_window);
        self.send_error.record(second, s.send_error, in_window);
    }

    /// Adds another recorder's samples to this one.
    pub(crate) fn merge(&mut self, other: &LatencyRecorder) {
        self.scheduled.merge(&other.scheduled);
        self.actual.merge(&other.actual);
        self.send_error.merge(&other.send_error);
    }

    /// Percentiles of the measurement window, from the scheduled send time.
    pub(crate) fn window(&self) -> Latency {
        Latency::of(&self.scheduled.window)
    }

    /// Percentiles of the measurement window, from the actual send time.
    pub(crate) fn window_actual(&self) -> Latency {
        Latency::of(&self.actual.window)
    }

    /// Percentiles of the send-time error (actual - scheduled) in the measurement window.
    pub(crate) fn window_send_error(&self) -> Latency {
        Latency::of(&self.send_error.window)
    }

    /// p50 / p99 from the scheduled send time per second of the run (`None` for a second
    /// without deliveries).
    pub(crate) fn per_second(&self) -> Vec<Option<SecondPercentiles>> {
        self.scheduled.per_second()
    }

    /// p50 / p99 from the actual send time per second of the run.
    pub(crate) fn per_second_actual(&self) -> Vec<Option<SecondPercentiles>> {
        self.actual.per_second()
    }

    /// p50 / p99 of the send-time error per second of the run.
    pub(crate) fn per_second_send_error(&self) -> Vec<Option<SecondPercentiles>> {
        self.send_error.per_second()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub(crate) struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean (rounded).
    pub mean: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean().round() as u64,
        }
    }
}

/// Counters per second of the run, shared by all workers (relaxed atomics: each is a plain
/// count).
#[derive(Debug)]
pub(crate) struct Series {
    slots: Vec<AtomicU64>,
}

impl Series {
    /// `seconds` slots; events after the last second are counted in the last slot.
    pub(crate) fn new(seconds: usize) -> Self {
        Series {
            slots: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one event `second` seconds into the run.
    pub(crate) fn add(&self, second: usize) {
        let i = second.min(self.slots.len() - 1);
        self.slots[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts.
    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }
}

/// What one run measured, as printed in the table and the JSON line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// `levee`, `rabbitmq` or `nats`.
    pub target: &'static str,
    /// Storage guarantee (`fsync=always`, `quorum`, `jetstream-file`, ...).
    pub variant: String,
    /// The user's `--label`.
    pub label: Option<String>,
    /// Server version as reported by the server (or the levee build).
    pub server_version: String,
    /// Producers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Payload bytes.
    pub size: u64,
    /// Requested aggregate rate (msg/s), if fixed.
    pub rate: Option<u64>,
    /// Per-consumer ack rate, if limited.
    pub consumer_rate: Option<u64>,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Messages handed to the client in the window.
    pub published: u64,
    /// Messages confirmed as stored in the window.
    pub confirmed: u64,
    /// Publishes the server refused or dropped (overflow) in the window.
    pub rejected: u64,
    /// Messages consumed and acked in the window.
    pub consumed: u64,
    /// `consumed / duration`: the sustained end-to-end rate.
    pub msgs_per_sec: f64,
    /// `msgs_per_sec * size` in MB/s (10^6 bytes).
    pub mb_per_sec: f64,
    /// `confirmed / duration`.
    pub confirmed_per_sec: f64,
    /// `(confirmed - consumed) / duration`: > 0 means a backlog grew during the window.
    pub backlog_growth_per_sec: f64,
    /// Queues (streams) the producers and consumers were spread over.
    pub queues: usize,
    /// The levee producer's linger in µs (levee target only).
    pub linger_us: Option<u64>,
    /// End-to-end latency, µs, from each message's *scheduled* send time to its receipt by a
    /// consumer (coordinated-omission corrected: a late send counts as latency). Unpaced runs:
    /// scheduled = actual.
    pub latency_us: Latency,
    /// End-to-end latency, µs, from each message's *actual* send time (when it was handed to the
    /// client) to its receipt.
    pub latency_actual_us: Latency,
    /// The pacer's send-time error, µs: actual - scheduled send time (0 for unpaced runs).
    pub send_error_us: Latency,
    /// The harness's own floor (`--calibrate`): the same flags against the in-process echo.
    pub calibration: Option<Calibration>,
    /// Highest sampled server RSS in bytes (None: server process unknown).
    pub peak_rss_bytes: Option<u64>,
    /// Server CPU time (the process tree of `--server-pid` or of the server the bench started)
    /// per consumed message over the window, µs (None: server process unknown).
    pub server_cpu_us_per_msg: Option<f64>,
    /// This bench process's CPU time (the client library and the harness) per consumed
    /// message, µs: what shows a client-bound run.
    pub client_cpu_us_per_msg: Option<f64>,
    /// Per second of the run (warm-up included): confirmed, consumed, latency p50 / p99 (µs),
    /// server RSS (bytes).
    pub timeline: Timeline,
}

/// The harness floor measured by `--calibrate`: the same producers, consumers, rate and size
/// through the in-process echo target (no broker, no socket).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Calibration {
    /// Always `echo`.
    pub target: &'static str,
    /// Sustained consumed rate of the echo run.
    pub msgs_per_sec: f64,
    /// From the scheduled send time.
    pub latency_us: Latency,
    /// From the actual send time.
    pub latency_actual_us: Latency,
    /// Actual - scheduled send time.
    pub send_error_us: Latency,
}

/// Per-second series of a run.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Timeline {
    /// Seconds of warm-up at the start of the series.
    pub warmup_s: f64,
    /// Messages confirmed per second.
    pub confirmed: Vec<u64>,
    /// Messages consumed per second.
    pub consumed: Vec<u64>,
    /// Median latency from the scheduled send time per second (µs; 0 when nothing was
    /// received).
    pub p50_us: Vec<u64>,
    /// p99 latency from the scheduled send time per second (µs; 0 when nothing was received).
    pub p99_us: Vec<u64>,
    /// Median latency from the actual send time per second (µs; 0 when nothing was received).
    pub actual_p50_us: Vec<u64>,
    /// p99 latency from the actual send time per second (µs; 0 when nothing was received).
    pub actual_p99_us: Vec<u64>,
    /// p99 send-time error (actual - scheduled) per second (µs; 0 when nothing was received).
    pub send_error_p99_us: Vec<u64>,
    /// Largest server RSS sampled in each second (bytes; 0 when unknown).
    pub rss_bytes: Vec<u64>,
}

/// Window counts of a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Messages handed to the client.
    pub published: u64,
    /// Messages confirmed as stored.
    pub confirmed: u64,
    /// Publishes refused or dropped.
    pub rejected: u64,
    /// Messages consumed and acked.
    pub consumed: u64,
}

/// Rates derived from window counts: (msgs/s consumed, MB/s, confirmed/s, backlog growth/s).
pub(crate) fn rates(c: Counts, size: u64, window: Duration) -> (f64, f64, f64, f64) {
    let secs = window.as_secs_f64().max(1e-9);
    let consumed = c.consumed as f64 / secs;
    let confirmed = c.confirmed as f64 / secs;
    (
        consumed,
        consumed * size as f64 / 1e6,
        confirmed,
        (c.confirmed as f64 - c.consumed as f64) / secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(us: u64) -> Sample {
        let d = Duration::from_micros(us);
        Sample {
            scheduled: d,
            actual: d,
            send_error: Duration::ZERO,
        }
    }

    #[test]
    fn window_percentiles_of_known_samples() {
        let mut r = LatencyRecorder::new(3);
        for us in 1..=1000u64 {
            r.record(1, at(us), true);
        }
        // Outside the window: only in the per-second series.
        r.record(0, at(5_000_000), false);
        let l = r.window();
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50), "{l:?}");
        assert!((989..=991).contains(&l.p99), "{l:?}");
        assert!((998..=1000).contains(&l.p999), "{l:?}");
        assert_eq!(l.max, 1000);
        let per = r.per_second();
        assert_eq!(per.len(), 3);
        assert!(per[0].unwrap().p99 >= 4_900_000);
        assert!(per[2].is_none());
    }

    #[test]
    fn empty_window_is_zero() {
        let r = LatencyRecorder::new(1);
        assert_eq!(r.window(), Latency::default());
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut r = LatencyRecorder::new(1);
        r.record(7, at(3_600_000_000), true);
        assert_eq!(r.window().count, 1);
        assert!(r.window().max >= MAX_LATENCY_US * 99 / 100);
    }

    #[test]
    fn both_bases_and_the_send_error_are_kept_apart() {
        let mut r = LatencyRecorder::new(2);
        for i in 0..100u64 {
            r.record(
                1,
                Sample {
                    scheduled: Duration::from_micros(1500 + i),
                    actual: Duration::from_micros(500 + i),
                    send_error: Duration::from_nanos(i * 100),
                },
                true,
            );
        }
        let (s, a, e) = (r.window(), r.window_actual(), r.window_send_error());
        assert_eq!((s.count, a.count, e.count), (100, 100, 100));
        assert!((1540..=1560).contains(&s.p50), "{s:?}");
        assert!((540..=560).contains(&a.p50), "{a:?}");
        // Errors of 0-9.9 µs; sub-microsecond ones are 0 µs, not clamped up to 1.
        assert!(e.p50 <= 5 && e.max <= 10, "{e:?}");
        let mut z = LatencyRecorder::new(1);
        z.record(0, Sample::default(), true);
        assert_eq!(z.window_send_error().max, 0);
        assert_eq!(z.window().max, 1);
        assert!(r.per_second_actual()[1].unwrap().p99 < r.per_second()[1].unwrap().p50);
        assert!(r.per_second_send_error()[0].is_none());
    }

    #[test]
    fn series_counts_and_clamps() {
        let s = Series::new(2);
        s.add(0);
        s.add(1);
        s.add(9);
        assert_eq!(s.snapshot(), vec![1, 2]);
    }

    #[test]
    fn rates_from_counts() {
        let c = Counts {
            published: 1200,
            confirmed: 1100,
            rejected: 0,
            consumed: 1000,
        };
        let (m, mb, conf, growth) = rates(c, 1000, Duration::from_secs(2));
        assert_eq!(m, 500.0);
        assert_eq!(mb, 0.5);
        assert_eq!(conf, 550.0);
        assert_eq!(growth, 50.0);
    }

    proptest! {
        #[test]
        fn merged_percentiles_are_ordered_and_counted(
            a in proptest::collection::vec(1u64..10_000_000, 1..300),
            b in proptest::collection::vec(1u64..10_000_000, 0..300),
        ) {
            let mut ra = LatencyRecorder::new(2);
            let mut rb = LatencyRecorder::new(4);
            for &us in &a { ra.record(0, at(us), true); }
            for &us in &b { rb.record(3, at(us), true); }
            ra.merge(&rb);
            let l = ra.window();
            prop_assert_eq!(l.count, (a.len() + b.len()) as u64);
            prop_assert!(l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
            let true_max = a.iter().chain(&b).copied().max().unwrap();
            // HDR keeps 3 significant digits.
            prop_assert!(l.max.abs_diff(true_max) <= true_max / 500 + 1);
            prop_assert_eq!(ra.per_second().len(), 4);
        }
    }
}
