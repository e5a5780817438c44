//! Confirm aggregation for publishes routed to several queues: each target queue confirms its
//! part of a request on its own; the publisher gets one [`RoutedConfirm`] when every target has.
//!
//! [`combine`] is the combination rule of one message over its targets (docs/design.md,
//! "Routing"); [`Ledger`] is the pure bookkeeping of the requests still waiting (what each target
//! was sent, what each message has so far); [`Aggregator`] is the thread-safe shell queue actors
//! feed ([`Aggregator::target_confirmed`], [`Aggregator::target_failed`]) and that hands each
//! completed request to its owner's callback, after releasing the request's in-flight charge.
//!
//! # Invariants
//! - A request completes exactly once, when every target queue it was sent to has answered for
//!   every message sent to it; an answer for an unknown request or target is ignored.
//! - The combined outcome of a message does not depend on the order the targets answer in (the
//!   rule breaks ties by queue name).
//! - Memory: one entry per unconfirmed request, one accumulator per message: bounded by the
//!   publisher's in-flight limits.

use std::collections::HashMap;
use std::sync::Arc;

use levee_proto::{ErrorCode, PublishOutcome, RoutedOutcome};

use crate::actor::InFlight;

/// A routed publish request's confirm: one outcome per message, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedConfirm {
    /// The request id the publisher gave.
    pub req: u64,
    /// One outcome per message.
    pub outcomes: Vec<RoutedOutcome>,
}

/// Severity of an outcome in the combination: the highest wins.
fn rank(o: &PublishOutcome) -> u8 {
    match o {
        PublishOutcome::Stored { .. } => 0,
        PublishOutcome::Dropped { .. } => 1,
        PublishOutcome::Throttled { .. } => 2,
        PublishOutcome::Rejected { .. } => 3,
        // levee-proto's enum is non_exhaustive: an outcome this broker does not know is never
        // reported as stored.
        _ => 3,
    }
}

/// The running combination of one message's target outcomes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acc {
    targets: u32,
    answered: u32,
    /// The deciding outcome so far and the queue that gave it.
    best: Option<(String, PublishOutcome)>,
    /// Longest `retry_after_ms` of the targets that throttled it.
    retry: u32,
}

impl Acc {
    fn new(targets: u32) -> Self {
        Acc {
            targets,
            ..Acc::default()
        }
    }

    /// Folds in the outcome of target `queue`.
    pub(crate) fn add(&mut self, queue: &str, outcome: PublishOutcome) {
        self.answered += 1;
        if let PublishOutcome::Throttled { retry_after_ms } = outcome {
            self.retry = self.retry.max(retry_after_ms);
        }
        let replace = match &self.best {
            None => true,
            Some((q, o)) => {
                let (r, cur) = (rank(&outcome), rank(o));
                r > cur || (r == cur && queue < q.as_str())
            }
        };
        if replace {
            self.best = Some((queue.to_string(), outcome));
        }
    }

    /// The combined outcome (see [`combine`]).
    pub(crate) fn finish(self) -> RoutedOutcome {
        let Some((queue, best)) = self.best else {
            return RoutedOutcome::Unroutable;
        };
        let outcome = match best {
            PublishOutcome::Rejected { code, reason } => PublishOutcome::Rejected {
                code,
                reason: if reason.starts_with(&format!("queue {queue}")) {
                    reason
                } else {
                    format!("queue {queue}: {reason}")
                },
            },
            PublishOutcome::Throttled { .. } => PublishOutcome::Throttled {
                retry_after_ms: self.retry,
            },
            other => other,
        };
        RoutedOutcome::Routed {
            targets: self.targets,
            outcome,
        }
    }
}

/// The combination rule for one message over its targets' outcomes (in any order):
/// no targets: `Unroutable`; else `Rejected` if any target refused it (the first such target by
/// queue name, its reason prefixed with `queue <name>: `), else `Throttled` if any throttled it
/// (with the longest `retry_after_ms`), else `Dropped` if any target's overflow policy dropped it
/// (the first by name), else `Stored` with the sequence number of the first target by name.
pub fn combine<'a>(targets: impl IntoIterator<Item = (&'a str, PublishOutcome)>) -> RoutedOutcome {
    let mut acc = Acc::default();
    for (q, o) in targets {
        acc.targets += 1;
        acc.add(q, o);
    }
    acc.finish()
}

/// One request still waiting for some of its targets.
#[derive(Debug)]
struct Pending {
    req: u64,
    messages: Vec<Acc>,
    /// Target queue -> the message indices it was sent, in order.
    parts: HashMap<String, Vec<u32>>,
    /// Messages and payload bytes charged to the publisher's in-flight limits.
    charged: (u64, u64),
}

/// A request whose every target answered.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) confirm: RoutedConfirm,
    pub(crate) charged: (u64, u64),
}

/// The pure bookkeeping of unconfirmed routed requests, keyed by an id of the publisher's own.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pending: HashMap<u64, Pending>,
}

impl Ledger {
    /// Opens request `id` (the caller's `req`): `targets[i]` are message `i`'s target queues.
    /// Completes at once (returns it) when no message has a target.
    pub(crate) fn open(
        &mut self,
        id: u64,
        req: u64,
        targets: &[Vec<&str>],
        charged: (u64, u64),
    ) -> Option<Done> {
        let mut parts: HashMap<String, Vec<u32>> = HashMap::new();
        let mut messages = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            messages.push(Acc::new(t.len() as u32));
            for q in t {
                parts.entry((*q).to_string()).or_default().push(i as u32);
            }
        }
        let p = Pending {
            req,
            messages,
            parts,
            charged,
        };
        if p.parts.is_empty() {
            return Some(finish(p));
        }
        self.pending.insert(id, p);
        None
    }

    /// Target `queue` answered request `id`: `outcomes[j]` for the `j`-th message it was sent.
    pub(crate) fn answer(
        &mut self,
        id: u64,
        queue: &str,
        outcomes: impl IntoIterator<Item = PublishOutcome>,
    ) -> Option<Done> {
        let p = self.pending.get_mut(&id)?;
        let indices = p.parts.remove(queue)?;
        let mut outcomes = outcomes.into_iter();
        for i in indices {
            let o = outcomes.next().unwrap_or_else(|| PublishOutcome::Rejected {
                code: ErrorCode::Internal,
                reason: "no outcome reported for this message".into(),
            });
            p.messages[i as usize].add(queue, o);
        }
        if !p.parts.is_empty() {
            return None;
        }
        self.pending.remove(&id).map(finish)
    }

    /// The target queue's part of request `id`: how many messages it was sent.
    pub(crate) fn part_len(&self, id: u64, queue: &str) -> usize {
        self.pending
            .get(&id)
            .and_then(|p| p.parts.get(queue))
            .map_or(0, Vec::len)
    }

    /// Requests still waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

fn finish(p: Pending) -> Done {
    Done {
        confirm: RoutedConfirm {
            req: p.req,
            outcomes: p.messages.into_iter().map(Acc::finish).collect(),
        },
        charged: p.charged,
    }
}

/// Where a routed publisher's confirms go: called once per request, from whichever task
/// completed it (a queue actor, or the publisher itself for a request nothing was routed by).
pub type ConfirmCallback = Box<dyn Fn(RoutedConfirm) + Send + Sync>;

/// The thread-safe shell around a [`Ledger`]: see the module documentation.
pub(crate) struct Aggregator {
    ledger: parking_lot::Mutex<Ledger>,
    in_flight: Arc<InFlight>,
    on_confirm: ConfirmCallback,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("pending", &self.ledger.lock().len())
            .finish()
    }
}

impl Aggregator {
    pub(crate) fn new(in_flight: Arc<InFlight>, on_confirm: ConfirmCallback) -> Self {
        Aggregator {
            ledger: parking_lot::Mutex::new(Ledger::default()),
            in_flight,
            on_confirm,
        }
    }

    /// The publisher's in-flight charge (shared with its direct publishes).
    pub(crate) fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// Opens a request (see [`Ledger::open`]); the caller has charged `charged` to the in-flight
    /// limits already.
    pub(crate) fn open(&self, id: u64, req: u64, targets: &[Vec<&str>], charged: (u64, u64)) {
        let done = self.ledger.lock().open(id, req, targets, charged);
        self.complete(done);
    }

    /// A target queue's confirm for its part of request `id`.
    pub(crate) fn target_confirmed(&self, id: u64, queue: &str, outcomes: Vec<PublishOutcome>) {
        let done = self.ledger.lock().answer(id, queue, outcomes);
        self.complete(done);
    }

    /// A target queue could not take its part of request `id` (it was deleted or stopped):
    /// every message sent to it is rejected with `code`.
    pub(crate) fn target_failed(&self, id: u64, queue: &str, code: ErrorCode, reason: &str) {
        let mut ledger = self.ledger.lock();
        let n = ledger.part_len(id, queue);
        let outcomes = (0..n).map(|_| PublishOutcome::Rejected {
            code,
            reason: reason.to_string(),
        });
        let done = ledger.answer(id, queue, outcomes);
        drop(ledger);
        self.complete(done);
    }

    /// Hands a confirm decided without the ledger (a request refused before routing, nothing
    /// charged) to the callback.
    pub(crate) fn deliver(&self, confirm: RoutedConfirm) {
        (self.on_confirm)(confirm);
    }

    fn complete(&self, done: Option<Done>) {
        if let Some(d) = done {
            self.in_flight.release(d.charged.0, d.charged.1);
            (self.on_confirm)(d.confirm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::DropReason;

    fn stored(seq: u64) -> PublishOutcome {
        PublishOutcome::Stored { seq }
    }

    fn full() -> PublishOutcome {
        PublishOutcome::Rejected {
            code: ErrorCode::QueueFull,
            reason: "queue is full".into(),
        }
    }

    #[test]
    fn the_combination_rule() {
        assert_eq!(combine([]), RoutedOutcome::Unroutable);
        assert_eq!(
            combine([("b", stored(7)), ("a", stored(3))]),
            RoutedOutcome::Routed {
                targets: 2,
                outcome: stored(3)
            }
        );
        // One refusal makes the whole message refused, named after its queue.
        match combine([("a", stored(1)), ("full", full()), ("c", stored(2))]) {
            RoutedOutcome::Routed {
                targets: 3,
                outcome: PublishOutcome::Rejected { code, reason },
            } => {
                assert_eq!(code, ErrorCode::QueueFull);
                assert_eq!(reason, "queue full: queue is full");
            }
            other => panic!("{other:?}"),
        }
        let dropped = PublishOutcome::Dropped {
            reason: DropReason::OverflowNewest,
        };
        assert_eq!(
            combine([("a", stored(1)), ("b", dropped.clone())]),
            RoutedOutcome::Routed {
                targets: 2,
                outcome: dropped
            }
        );
        let t = |ms| PublishOutcome::Throttled { retry_after_ms: ms };
        assert_eq!(
            combine([("a", t(10)), ("b", t(50)), ("c", stored(1))]),
            RoutedOutcome::Routed {
                targets: 3,
                outcome: t(50)
            }
        );
    }

    #[test]
    fn the_order_of_answers_does_not_matter() {
        let outcomes = [
            ("q1", stored(1)),
            ("q2", full()),
            (
                "q3",
                PublishOutcome::Rejected {
                    code: ErrorCode::MessageTooLarge,
                    reason: "too large".into(),
                },
            ),
        ];
        let forward = combine(outcomes.iter().cloned());
        let backward = combine(outcomes.iter().rev().cloned());
        assert_eq!(forward, backward);
    }

    #[test]
    fn a_request_completes_once_every_target_answered() {
        let mut l = Ledger::default();
        // Message 0 goes to a and b, message 1 to b only, message 2 nowhere.
        let targets = vec![vec!["a", "b"], vec!["b"], vec![]];
        assert!(l.open(1, 42, &targets, (3, 30)).is_none());
        assert!(l.answer(1, "b", [stored(10), full()]).is_none());
        // A repeated or unknown answer changes nothing.
        assert!(l.answer(1, "b", [stored(0), stored(0)]).is_none());
        assert!(l.answer(9, "a", [stored(0)]).is_none());
        let done = l.answer(1, "a", [stored(5)]).expect("complete");
        assert_eq!(done.charged, (3, 30));
        assert_eq!(done.confirm.req, 42);
        assert_eq!(
            done.confirm.outcomes[0],
            RoutedOutcome::Routed {
                targets: 2,
                outcome: stored(5)
            }
        );
        assert!(matches!(
            &done.confirm.outcomes[1],
            RoutedOutcome::Routed {
                targets: 1,
                outcome: PublishOutcome::Rejected { .. }
            }
        ));
        assert_eq!(done.confirm.outcomes[2], RoutedOutcome::Unroutable);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn an_unroutable_request_completes_at_once() {
        let mut l = Ledger::default();
        let done = l.open(1, 7, &[vec![], vec![]], (2, 0)).expect("complete");
        assert_eq!(done.confirm.outcomes, vec![RoutedOutcome::Unroutable; 2]);
        assert_eq!(l.len(), 0);
    }
}
