//! Adaptive capacity: a controller that resizes a channel's `max_messages` from measured
//! utilisation.
//!
//! [`AdaptiveSizer`] is pure (no clock, no async): feed it samples of `len / capacity`; over a
//! window of samples it grows capacity x`grow` when the mean is above `high` and shrinks it
//! x`shrink` when below `low`, clamped to `[min, max]`; after a resize the window restarts so
//! one burst does not cause a cascade. [`spawn_adaptive`] drives it on a tokio task from a
//! channel's real `len`, and applies decisions with [`Monitor::set_limits`], which never drops,
//! duplicates or reorders a message (shrinking below the current length only stops new
//! messages until receivers drain).
//!
//! Memory bound: the channel never holds more than `max` messages (plus any content left from
//! before a shrink, which only drains).

use std::collections::VecDeque;
use std::time::Duration;

use crate::channel::Monitor;
use crate::error::ConfigError;
use crate::policy::Limits;

/// Parameters of the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// Smallest capacity.
    pub min: usize,
    /// Largest capacity.
    pub max: usize,
    /// Grow factor (> 1), default 1.5.
    pub grow: f64,
    /// Shrink factor (in (0, 1)), default 0.7.
    pub shrink: f64,
    /// Grow when mean utilisation is above this, default 0.8.
    pub high: f64,
    /// Shrink when mean utilisation is below this, default 0.3.
    pub low: f64,
    /// Samples per decision window, default 5.
    pub window: usize,
}

impl AdaptiveConfig {
    /// The source document's controller: x1.5 above 80 %, x0.7 below 30 %, 5 samples.
    pub fn new(min: usize, max: usize) -> Self {
        AdaptiveConfig {
            min,
            max,
            grow: 1.5,
            shrink: 0.7,
            high: 0.8,
            low: 0.3,
            window: 5,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::Zero("adaptive min"));
        }
        if self.min > self.max {
            return Err(ConfigError::Invalid("adaptive min must be <= max"));
        }
        if self.grow.is_nan() || self.grow <= 1.0 {
            return Err(ConfigError::Invalid("adaptive grow factor must be > 1"));
        }
        if self.shrink.is_nan() || self.shrink <= 0.0 || self.shrink >= 1.0 {
            return Err(ConfigError::Invalid(
                "adaptive shrink factor must be in (0, 1)",
            ));
        }
        if self.low.is_nan() || self.high.is_nan() || !(0.0 <= self.low && self.low < self.high) {
            return Err(ConfigError::Invalid(
                "adaptive thresholds need 0 <= low < high",
            ));
        }
        if self.window == 0 {
            return Err(ConfigError::Zero("adaptive window"));
        }
        Ok(())
    }
}

/// A resize decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// Capacity before.
    pub from: usize,
    /// Capacity after.
    pub to: usize,
}

/// The pure controller: utilisation samples in, resize decisions out.
#[derive(Debug, Clone)]
pub struct AdaptiveSizer {
    cfg: AdaptiveConfig,
    capacity: usize,
    samples: VecDeque<f64>,
}

impl AdaptiveSizer {
    /// A controller starting at `initial` (clamped to `[min, max]`).
    pub fn new(cfg: AdaptiveConfig, initial: usize) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(AdaptiveSizer {
            cfg,
            capacity: initial.clamp(cfg.min, cfg.max),
            samples: VecDeque::with_capacity(cfg.window),
        })
    }

    /// Current capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records the queue length observed now; returns a resize when the window's mean
    /// utilisation crosses a threshold and the bounds allow a change.
    pub fn sample(&mut self, len: usize) -> Option<Resize> {
        let u = len as f64 / self.capacity as f64;
        if self.samples.len() == self.cfg.window {
            self.samples.pop_front();
        }
        self.samples.push_back(u);
        if self.samples.len() < self.cfg.window {
            return None;
        }
        let mean = self.samples.iter().sum::<f64>() / self.samples.len() as f64;
        let target = if mean > self.cfg.high {
            ((self.capacity as f64 * self.cfg.grow) as usize).max(self.capacity + 1)
        } else if mean < self.cfg.low {
            ((self.capacity as f64 * self.cfg.shrink) as usize).min(self.capacity - 1)
        } else {
            return None;
        };
        let to = target.clamp(self.cfg.min, self.cfg.max);
        if to == self.capacity {
            return None;
        }
        let r = Resize {
            from: self.capacity,
            to,
        };
        self.capacity = to;
        self.samples.clear();
        Some(r)
    }
}

/// Runs an [`AdaptiveSizer`] against `mon`'s channel: samples its length every `every`, applies
/// resizes with [`Monitor::set_limits`] (keeping `max_bytes`), and calls `on_resize` for each. Ends when the
/// channel is closed. The channel's current `max_messages` is the starting capacity.
pub fn spawn_adaptive<T: Send + 'static>(
    mon: &Monitor<T>,
    cfg: AdaptiveConfig,
    every: Duration,
    on_resize: impl Fn(Resize) + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, ConfigError> {
    if every.is_zero() {
        return Err(ConfigError::Zero("adaptive sampling interval"));
    }
    let s = mon.stats();
    let mut sizer = AdaptiveSizer::new(cfg, s.max_messages.unwrap_or(cfg.min))?;
    let tx = mon.clone();
    if s.max_messages != Some(sizer.capacity()) {
        tx.set_limits(Limits {
            max_messages: Some(sizer.capacity()),
            max_bytes: s.max_bytes,
        })?;
    }
    // A Monitor does not keep the channel open: the task ends when the senders are gone.
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let s = tx.stats();
            if s.closed {
                return;
            }
            if let Some(r) = sizer.sample(s.len) {
                let limits = Limits {
                    max_messages: Some(r.to),
                    max_bytes: s.max_bytes,
                };
                if tx.set_limits(limits).is_ok() {
                    on_resize(r);
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_above_high_and_shrinks_below_low_within_bounds() {
        let mut s = AdaptiveSizer::new(AdaptiveConfig::new(10, 1000), 10).unwrap();
        for _ in 0..4 {
            assert_eq!(s.sample(10), None);
        }
        assert_eq!(s.sample(10), Some(Resize { from: 10, to: 15 }));
        for _ in 0..4 {
            assert_eq!(s.sample(0), None);
        }
        assert_eq!(s.sample(0), Some(Resize { from: 15, to: 10 }));
        for _ in 0..5 {
            assert_eq!(s.sample(0), None, "already at min");
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(AdaptiveSizer::new(AdaptiveConfig::new(0, 10), 5).is_err());
        assert!(AdaptiveSizer::new(AdaptiveConfig::new(20, 10), 5).is_err());
    }
}
