//! Changing a live queue's configuration ([`QueueState::reconfigure`]) without losing a message.
//!
//! # Rules
//! - Durability and delivery order cannot change (a queue's storage and its ready set's layout
//!   are built for them); neither can the overflow policy to or from `conflate-by-key` (queued
//!   messages carry no conflation key unless the queue conflated when they arrived). The caller
//!   ([`ReconfigureError`]) refuses those before anything changes.
//! - Lowering `max_messages` / `max_bytes` below what the queue holds drops nothing: as in
//!   levee-flow (`PolicyQueue::set_limits`), a `block` or `reject` queue refuses new messages
//!   (grants no publish credit) until consumers drained it below the new limits, and an eviction
//!   policy (`drop-oldest`, `shed-priority`) only swaps (the queue never grows) meanwhile.
//! - A changed ack timeout, max deliveries, dead-letter queue or TTL applies to what happens
//!   from now on (deliveries already out keep their deadline; queued messages keep the expiry
//!   they were given); a changed rate limit starts with a full bucket; a changed dedup window
//!   keeps the ids within its new bounds.

use levee_flow::policy::{Limits, PolicyQueue};
use levee_proto::{Overflow, QueueConfig};

use super::{QueueState, dedup::DedupWindow, flow_overflow};

/// Why a configuration change is refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconfigureError {
    /// This field cannot change on a live queue.
    #[error(
        "{field} cannot be changed on a live queue ({reason}); declare a new queue and move the messages"
    )]
    Immutable {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Checks that `new` may replace `old` on a live queue.
pub fn check_change(old: &QueueConfig, new: &QueueConfig) -> Result<(), ReconfigureError> {
    if old.durability != new.durability {
        return Err(ReconfigureError::Immutable {
            field: "durability",
            reason: "the messages are stored for it",
        });
    }
    if old.replicas != new.replicas {
        return Err(ReconfigureError::Immutable {
            field: "replicas",
            reason: "a local queue and a replicated one are stored differently",
        });
    }
    if old.order != new.order {
        return Err(ReconfigureError::Immutable {
            field: "order",
            reason: "the ready set is laid out for it",
        });
    }
    let conflates = |c: &QueueConfig| c.overflow == Overflow::ConflateByKey;
    if conflates(old) != conflates(new) {
        return Err(ReconfigureError::Immutable {
            field: "overflow",
            reason: "queued messages carry conflation keys only on a conflate-by-key queue",
        });
    }
    Ok(())
}

impl QueueState {
    /// Applies a new configuration (already checked with [`check_change`]) at `now`.
    pub fn reconfigure(&mut self, now: u64, config: QueueConfig) -> Result<(), ReconfigureError> {
        check_change(&self.config, &config)?;
        let limits = Limits {
            max_messages: usize::try_from(config.max_messages).ok(),
            max_bytes: Some(config.max_bytes),
        };
        if config.overflow != self.config.overflow {
            // A new ready set under the new policy, holding the same entries at their positions.
            let mut ready =
                PolicyQueue::new(limits, flow_overflow(config.overflow), self.ready.order());
            for item in self.ready.drain() {
                if let Some(superseded) = ready.reinsert(item.seq, item.item, item.meta) {
                    // Cannot happen without conflation (checked above); never lose it silently.
                    self.account_evicted(superseded);
                }
            }
            self.ready = ready;
        } else {
            self.ready.set_limits(limits);
        }
        if config.rate_limit != self.config.rate_limit {
            self.rate = config
                .rate_limit
                .as_ref()
                .and_then(crate::rate::RateGate::new);
            self.rate_retry_at = None;
        }
        match (&mut self.dedup, config.dedup) {
            (Some(w), Some(d)) => w.set_config(now, d),
            (w @ None, Some(d)) => *w = Some(DedupWindow::new(d)),
            (w, None) => *w = None,
        }
        self.config = config;
        self.make_room(now);
        Ok(())
    }
}
