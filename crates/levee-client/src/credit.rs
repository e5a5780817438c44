//! Consumer credit: the bookkeeping of how many messages a consumer holds ([`Ledger`]) and the
//! adaptive controller that decides how many it should hold ([`AdaptiveCredit`]).
//!
//! # What "held" means
//! A consumer holds `outstanding` (credit granted to the broker, not yet used by a delivery) +
//! `buffered` (delivered, not yet taken by the application) + `in_flight` (taken, not yet
//! settled; always 0 with `auto_ack`). The client only grants credit so that, right after a grant,
//! `held <= target`: a consumer never asks for more than its target, so it never holds more than
//! the largest target it has had (the invariant tested by the `ledger` proptest).
//! Credit is granted when `target - held >= max(1, target / 2)`: half a window at a time, so a
//! consumer sends about two `Credit` frames per `target` messages, not one per message.
//!
//! # Adaptive credit (the algorithm)
//! The goal: a consumer should hold just enough messages to never wait for the network, and no
//! more, because every message it holds is one that another (idle) consumer cannot take.
//! Little's law gives the number: while one credit round trip is under way (`rtt`), a consumer
//! that needs `service` time per message finishes `rtt / service` messages, so
//!
//! ```text
//! target = ceil(rtt / service) + 1          clamped to [min, max]
//! ```
//!
//! keeps exactly one message in hand whatever the latency. A slow consumer (service >> rtt)
//! gets `1 + 1 = 2`: no hoarding, the rest of the queue stays with the other consumers. A fast one
//! (service << rtt) gets enough to keep the pipe full.
//!
//! Measurements:
//! - `service`: for each settled delivery, the time from handing it to the application (the
//!   stream yielding it) to its ack / nack / reject, divided by the number of deliveries being
//!   processed at that moment (Little's law again: an application that works on 8 messages in
//!   parallel, each for 80 ms, serves one per 10 ms). With `auto_ack` the sample is the time from
//!   yielding a delivery to the application polling for the next one. Smoothed by an EWMA
//!   (weight 0.2 for the new sample).
//! - `rtt`: the minimum, over the last 10 s, of (a) every request / reply round trip of the
//!   connection (handshake, subscribe, ...) and (b) the time from sending `Credit` while the
//!   consumer was starved (nothing outstanding or buffered) to the first delivery it produced.
//!   (b) includes the broker's delivery path; it is inflated when the queue was empty, which is
//!   why the estimate is a windowed minimum (as in BBR's min-RTT filter): an inflated sample can
//!   never raise it, a real rise is picked up once the older samples leave the window.
//! - The target itself moves a quarter of the way towards the computed value at each sample
//!   (EWMA), and is rounded up, so one odd sample does not flip it.
//!
//! None of RabbitMQ (fixed `basic.qos` prefetch), NATS JetStream (fixed `MaxAckPending` / pull
//! batch) or Kafka (`max.poll.records`, byte-based fetch sizes) adapts the prefetch this way.
//!
//! Memory bound: the RTT window holds at most 64 samples; everything else is a few numbers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an RTT sample counts towards the windowed minimum.
pub const RTT_WINDOW: Duration = Duration::from_secs(10);
const RTT_SAMPLES: usize = 64;
const SERVICE_WEIGHT: f64 = 0.2;
const TARGET_WEIGHT: f64 = 0.25;

/// Windowed minimum of round-trip samples.
#[derive(Debug, Clone, Default)]
pub struct RttFilter {
    samples: VecDeque<(Instant, Duration)>,
}

impl RttFilter {
    /// Records a sample taken at `now`.
    pub fn sample(&mut self, now: Instant, rtt: Duration) {
        if self.samples.len() == RTT_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, rtt));
    }

    /// The minimum of the samples of the last [`RTT_WINDOW`] before `now`; if all are older, the
    /// newest sample; `None` before any sample.
    pub fn get(&self, now: Instant) -> Option<Duration> {
        self.samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= RTT_WINDOW)
            .map(|(_, d)| *d)
            .min()
            .or_else(|| self.samples.back().map(|(_, d)| *d))
    }
}

/// The adaptive credit controller (pure: time is an argument). See the module docs.
#[derive(Debug, Clone)]
pub struct AdaptiveCredit {
    min: u32,
    max: u32,
    rtt: RttFilter,
    service: Option<f64>,
    target: f64,
}

impl AdaptiveCredit {
    /// A controller starting at `min` (callers ensure `1 <= min <= max`).
    pub fn new(min: u32, max: u32) -> Self {
        let min = min.max(1);
        AdaptiveCredit {
            min,
            max: max.max(min),
            rtt: RttFilter::default(),
            service: None,
            target: f64::from(min),
        }
    }

    /// A round-trip sample.
    pub fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        self.rtt.sample(now, rtt);
    }

    /// A processed message: `latency` from hand-out to settlement while `concurrency` messages
    /// (this one included) were being processed.
    pub fn on_processed(&mut self, now: Instant, latency: Duration, concurrency: u64) {
        let sample = (latency.as_secs_f64() / concurrency.max(1) as f64).max(1e-7);
        self.service = Some(match self.service {
            None => sample,
            Some(s) => s + SERVICE_WEIGHT * (sample - s),
        });
        if let (Some(rtt), Some(service)) = (self.rtt.get(now), self.service) {
            let raw = ((rtt.as_secs_f64() / service).ceil() + 1.0)
                .clamp(f64::from(self.min), f64::from(self.max));
            self.target += TARGET_WEIGHT * (raw - self.target);
        }
    }

    /// The current target number of held messages, in `[min, max]`.
    pub fn target(&self) -> u32 {
        // Within [min, max] by construction; the cast cannot truncate.
        (self.target.ceil() as u32).clamp(self.min, self.max)
    }

    /// The smoothed per-message service time, once measured.
    pub fn service_time(&self) -> Option<Duration> {
        self.service.map(Duration::from_secs_f64)
    }

    /// The round-trip estimate at `now`, once measured.
    pub fn rtt(&self, now: Instant) -> Option<Duration> {
        self.rtt.get(now)
    }
}

/// What a consumer holds; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Credit granted to the broker and not yet used by a delivery.
    pub outstanding: u64,
    /// Delivered, not yet taken by the application.
    pub buffered: u64,
    /// Taken by the application, not yet settled.
    pub in_flight: u64,
}

impl Ledger {
    /// Everything the consumer holds or may be sent without asking again.
    pub fn held(&self) -> u64 {
        self.outstanding + self.buffered + self.in_flight
    }

    /// The credit to grant now for `target`, if any (and records it as outstanding). After a
    /// grant, `held() <= target`.
    pub fn refill(&mut self, target: u32) -> Option<u32> {
        let target = u64::from(target);
        let deficit = target.saturating_sub(self.held());
        if deficit == 0 || deficit < (target / 2).max(1) {
            return None;
        }
        self.outstanding += deficit;
        // deficit <= target <= u32::MAX.
        Some(deficit as u32)
    }

    /// A delivery arrived (it used one unit of credit).
    pub fn on_delivery(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.buffered += 1;
    }

    /// The application took a delivery; with `auto_ack` it is settled already.
    pub fn on_take(&mut self, auto_ack: bool) {
        self.buffered = self.buffered.saturating_sub(1);
        if !auto_ack {
            self.in_flight += 1;
        }
    }

    /// The application settled a delivery.
    pub fn on_settle(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_consumer_converges_to_two() {
        let t0 = Instant::now();
        let mut a = AdaptiveCredit::new(1, 1000);
        a.on_rtt(t0, Duration::from_millis(1));
        for _ in 0..50 {
            a.on_processed(t0, Duration::from_millis(100), 1);
        }
        assert_eq!(a.target(), 2);
    }

    #[test]
    fn fast_consumer_fills_the_pipe() {
        let t0 = Instant::now();
        let mut a = AdaptiveCredit::new(1, 1000);
        a.on_rtt(t0, Duration::from_millis(1));
        for _ in 0..100 {
            a.on_processed(t0, Duration::from_micros(10), 1);
        }
        // rtt / service = 100, + 1.
        assert!((95..=101).contains(&a.target()), "{}", a.target());
    }

    #[test]
    fn concurrency_divides_latency() {
        let t0 = Instant::now();
        let mut a = AdaptiveCredit::new(1, 1000);
        a.on_rtt(t0, Duration::from_millis(10));
        for _ in 0..100 {
            a.on_processed(t0, Duration::from_millis(80), 8);
        }
        assert_eq!(a.service_time().map(|d| d.as_millis()), Some(10));
        assert_eq!(a.target(), 2);
    }

    #[test]
    fn clamped_to_bounds() {
        let t0 = Instant::now();
        let mut a = AdaptiveCredit::new(4, 16);
        a.on_rtt(t0, Duration::from_secs(1));
        for _ in 0..200 {
            a.on_processed(t0, Duration::from_nanos(1), 1);
        }
        assert_eq!(a.target(), 16);
        let mut b = AdaptiveCredit::new(4, 16);
        b.on_rtt(t0, Duration::from_nanos(1));
        b.on_processed(t0, Duration::from_secs(1), 1);
        assert_eq!(b.target(), 4);
    }

    #[test]
    fn rtt_is_a_windowed_minimum() {
        let t0 = Instant::now();
        let mut f = RttFilter::default();
        assert_eq!(f.get(t0), None);
        f.sample(t0, Duration::from_millis(5));
        f.sample(t0, Duration::from_millis(500));
        assert_eq!(f.get(t0), Some(Duration::from_millis(5)));
        let later = t0 + RTT_WINDOW + Duration::from_secs(1);
        f.sample(later, Duration::from_millis(50));
        assert_eq!(f.get(later), Some(Duration::from_millis(50)));
        // Only stale samples: the newest one stands.
        assert_eq!(
            f.get(later + RTT_WINDOW * 2),
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn refill_waits_for_half_a_window() {
        let mut l = Ledger::default();
        assert_eq!(l.refill(8), Some(8));
        for _ in 0..3 {
            l.on_delivery();
            l.on_take(false);
            l.on_settle();
        }
        assert_eq!(l.refill(8), None);
        l.on_delivery();
        l.on_take(false);
        l.on_settle();
        assert_eq!(l.refill(8), Some(4));
        assert_eq!(l.held(), 8);
    }
}
