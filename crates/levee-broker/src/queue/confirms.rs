//! The confirm ledger of one queue: what each publish request is still waiting for before its
//! `PublishConfirm` may go out.
//!
//! A request gets a slot when it arrives; each message's outcome is known at once or, for a
//! message held for room, later (an [`Effect::Confirm`](super::Effect) with the token
//! [`token`] gives). A stored message of a disk queue under fsync `always` also waits for the
//! durability watermark to pass it. Requests are keyed by the publisher's session (a connection,
//! or later an AMQP channel), not by a channel handle: the caller maps sessions to where confirms
//! go.
//!
//! # Invariants
//! - A confirm is released only when every outcome is known and the watermark covers every
//!   message it reports `Stored`; a failed fsync turns those outcomes into `Rejected`, never into
//!   a confirm.
//! - Confirms of one queue are released in request (slot) order.
//! - Memory: one slot per unconfirmed request, bounded by each connection's in-flight limits.

use std::collections::BTreeMap;

use levee_proto::{ErrorCode, MAX_BATCH, PublishOutcome};

/// A publisher session: the connection id (an AMQP channel later).
pub type SessionId = u64;

/// The token of message `index` of the request in `slot` (what [`super::QueueState::publish`] is
/// given, and what a held message's later outcome names).
pub fn token(slot: u64, index: usize) -> u64 {
    slot * MAX_BATCH as u64 + index as u64
}

fn untoken(token: u64) -> (u64, usize) {
    (
        token / MAX_BATCH as u64,
        (token % MAX_BATCH as u64) as usize,
    )
}

/// A request whose confirm is ready (or void).
#[derive(Debug)]
pub struct Completed {
    /// The publisher.
    pub session: SessionId,
    /// Its request id.
    pub req: u64,
    /// One outcome per message, in order.
    pub outcomes: Vec<PublishOutcome>,
    /// Messages and payload bytes of the request (what the publisher's in-flight limit held).
    pub messages: u64,
    /// See `messages`.
    pub bytes: u64,
}

#[derive(Debug)]
struct Pending {
    session: SessionId,
    req: u64,
    outcomes: Vec<Option<PublishOutcome>>,
    missing: usize,
    /// One past the highest sequence number stored by this request: the durability watermark must
    /// reach it (0: nothing to wait for).
    needs_seq: u64,
    messages: u64,
    bytes: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Confirms {
    pending: BTreeMap<u64, Pending>,
    next_slot: u64,
}

impl Confirms {
    /// An empty ledger.
    pub fn new() -> Self {
        Confirms {
            pending: BTreeMap::new(),
            next_slot: 1,
        }
    }

    /// Opens a slot for a request of `messages` messages (`bytes` payload bytes).
    pub fn open(&mut self, session: SessionId, req: u64, messages: usize, bytes: u64) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.pending.insert(
            slot,
            Pending {
                session,
                req,
                outcomes: Vec::with_capacity(messages),
                missing: 0,
                needs_seq: 0,
                messages: messages as u64,
                bytes,
            },
        );
        slot
    }

    /// Records the next message's outcome (`None`: held, known later).
    pub fn push(&mut self, slot: u64, outcome: Option<PublishOutcome>) {
        if let Some(p) = self.pending.get_mut(&slot) {
            if outcome.is_none() {
                p.missing += 1;
            }
            p.outcomes.push(outcome);
        }
    }

    /// The outcomes recorded so far for `slot` (to turn stored ones into rejections when their
    /// append fails).
    pub fn outcomes_mut(&mut self, slot: u64) -> Option<&mut [Option<PublishOutcome>]> {
        self.pending.get_mut(&slot).map(|p| &mut p.outcomes[..])
    }

    /// The request in `slot` must wait for the watermark to reach `seq` (exclusive).
    pub fn wait_for(&mut self, slot: u64, seq: u64) {
        if let Some(p) = self.pending.get_mut(&slot) {
            p.needs_seq = p.needs_seq.max(seq);
        }
    }

    /// The outcome of a held message (by its token).
    pub fn resolve(&mut self, token: u64, outcome: PublishOutcome) {
        let (slot, index) = untoken(token);
        if let Some(p) = self.pending.get_mut(&slot)
            && let Some(o) = p.outcomes.get_mut(index)
            && o.is_none()
        {
            *o = Some(outcome);
            p.missing -= 1;
        }
    }

    /// The slot of a token.
    pub fn slot_of(token: u64) -> u64 {
        untoken(token).0
    }

    /// Every request waiting for the watermark to reach at most `seq` will not get it (an fsync
    /// failed): its stored outcomes become `Rejected`.
    pub fn fail_waiting_up_to(&mut self, seq: u64, code: ErrorCode, reason: &str) {
        for p in self.pending.values_mut() {
            if p.needs_seq != 0 && p.needs_seq <= seq {
                for o in p.outcomes.iter_mut() {
                    if matches!(o, Some(PublishOutcome::Stored { .. })) {
                        *o = Some(PublishOutcome::Rejected {
                            code,
                            reason: reason.to_string(),
                        });
                    }
                }
                p.needs_seq = 0;
            }
        }
    }

    /// Takes every request whose outcomes are all known and durable below `durable`, in
    /// request order.
    pub fn take_ready(&mut self, durable: u64) -> Vec<Completed> {
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.missing == 0 && p.needs_seq <= durable)
            .map(|(slot, _)| *slot)
            .collect();
        ready
            .into_iter()
            .map(|slot| {
                let p = self.pending.remove(&slot).expect("listed");
                Completed {
                    session: p.session,
                    req: p.req,
                    outcomes: p
                        .outcomes
                        .into_iter()
                        .map(|o| o.expect("complete"))
                        .collect(),
                    messages: p.messages,
                    bytes: p.bytes,
                }
            })
            .collect()
    }

    /// Takes every pending request (the queue stops): (session, req, messages, bytes).
    pub fn drain(&mut self) -> Vec<(SessionId, u64, u64, u64)> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| (p.session, p.req, p.messages, p.bytes))
            .collect()
    }

    /// Requests not yet confirmed.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirm_waits_for_held_outcomes_and_for_the_watermark() {
        let mut c = Confirms::new();
        let a = c.open(1, 10, 2, 8);
        c.push(a, Some(PublishOutcome::Stored { seq: 1 }));
        c.push(a, None); // held
        c.wait_for(a, 2);
        let b = c.open(1, 11, 1, 4);
        c.push(b, Some(PublishOutcome::Stored { seq: 2 }));
        c.wait_for(b, 3);
        assert!(
            c.take_ready(2).is_empty(),
            "b is not durable yet; a misses an outcome"
        );
        let ready = c.take_ready(3);
        assert_eq!(ready.iter().map(|r| r.req).collect::<Vec<_>>(), vec![11]);
        c.resolve(token(a, 1), PublishOutcome::Stored { seq: 3 });
        c.wait_for(a, 4);
        assert!(c.take_ready(3).is_empty());
        let ready = c.take_ready(4);
        assert_eq!(ready[0].outcomes.len(), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn a_failed_fsync_turns_waiting_stored_outcomes_into_rejections() {
        let mut c = Confirms::new();
        let a = c.open(7, 1, 1, 1);
        c.push(a, Some(PublishOutcome::Stored { seq: 5 }));
        c.wait_for(a, 6);
        c.fail_waiting_up_to(6, ErrorCode::Internal, "fsync failed");
        let ready = c.take_ready(0);
        assert!(matches!(
            ready[0].outcomes[0],
            PublishOutcome::Rejected { .. }
        ));
    }
}
