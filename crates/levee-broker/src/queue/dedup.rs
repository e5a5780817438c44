//! [`DedupWindow`]: a queue's window of recently stored message ids, the one deduplication
//! mechanism of the broker (every front end's publishes pass [`super::QueueState::publish`]).
//!
//! A publish carrying a [`levee_proto::Message::message_id`] the window holds is answered
//! [`levee_proto::PublishOutcome::Duplicate`] with the sequence number the first copy got, and is
//! not stored again. Messages without an id are never deduplicated. An id enters the window when
//! its message is stored (not when it is dropped on arrival or refused: a retry of those may
//! succeed) and leaves it when it is older than the window's time (`window_ms`) or when
//! `max_ids` newer ids entered, whichever comes first. Leaving the queue (ack, drop, expiry)
//! does not remove an id: the window is about what was published, not what is still queued.
//!
//! # Invariants
//! - At most `max_ids` ids are held; each id is a copy (never a slice of a received frame, which
//!   would keep the whole frame's buffer alive). Memory: at most `max_ids` × (id length + about
//!   100 bytes) per queue.
//! - Time is an argument (`now`, ms since the epoch); ids recovered after a restart carry their
//!   record's timestamp, so the window means the same before and after a crash.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use levee_proto::Dedup;

/// See the module documentation.
#[derive(Debug)]
pub struct DedupWindow {
    config: Dedup,
    /// id -> (stored at, seq).
    ids: HashMap<Bytes, (u64, u64)>,
    /// (stored at, seq, id) in insertion order; entries whose id was removed or re-inserted since
    /// are skipped when they reach the front.
    order: VecDeque<(u64, u64, Bytes)>,
}

impl DedupWindow {
    /// An empty window.
    pub fn new(config: Dedup) -> Self {
        DedupWindow {
            config,
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The window's settings.
    pub fn config(&self) -> Dedup {
        self.config
    }

    /// Changes the settings (a queue update); ids beyond the new bounds leave at once.
    pub fn set_config(&mut self, now: u64, config: Dedup) {
        self.config = config;
        self.prune(now);
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The sequence number of the stored message with this id, if it is within the window.
    pub fn check(&mut self, now: u64, id: &[u8]) -> Option<u64> {
        self.prune(now);
        self.ids.get(id).map(|&(_, seq)| seq)
    }

    /// Records that the message with this id was stored as `seq` at `at`.
    pub fn insert(&mut self, at: u64, id: &[u8], seq: u64) {
        let id = Bytes::copy_from_slice(id);
        self.ids.insert(id.clone(), (at, seq));
        self.order.push_back((at, seq, id));
        self.prune_count();
    }

    /// Forgets the id of `seq` (its store was undone: an append failed).
    pub fn remove(&mut self, id: &[u8], seq: u64) {
        if self.ids.get(id).is_some_and(|&(_, s)| s == seq) {
            self.ids.remove(id);
        }
    }

    fn expired(&self, at: u64, now: u64) -> bool {
        self.config
            .window_ms
            .is_some_and(|w| at.saturating_add(w) <= now)
    }

    fn prune(&mut self, now: u64) {
        while let Some((at, _, _)) = self.order.front() {
            if !self.expired(*at, now) {
                break;
            }
            self.pop_front();
        }
        self.prune_count();
    }

    fn prune_count(&mut self) {
        let max = self.config.max_ids as usize;
        while self.ids.len() > max || self.order.len() > 2 * max.max(1) {
            if !self.pop_front() {
                break;
            }
        }
    }

    fn pop_front(&mut self) -> bool {
        let Some((at, seq, id)) = self.order.pop_front() else {
            return false;
        };
        if self.ids.get(&id) == Some(&(at, seq)) {
            self.ids.remove(&id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn window(window_ms: Option<u64>, max_ids: u32) -> DedupWindow {
        DedupWindow::new(Dedup { window_ms, max_ids })
    }

    #[test]
    fn an_id_is_a_duplicate_within_the_window_only() {
        let mut w = window(Some(1_000), 10);
        w.insert(100, b"a", 7);
        assert_eq!(w.check(100, b"a"), Some(7));
        assert_eq!(w.check(1_099, b"a"), Some(7));
        assert_eq!(w.check(1_100, b"a"), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_count_bounds_the_window() {
        let mut w = window(None, 3);
        for (i, id) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            w.insert(0, *id, i as u64);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.check(u64::MAX, b"a"), None, "the oldest left");
        assert_eq!(w.check(u64::MAX, b"d"), Some(3));
    }

    #[test]
    fn a_removed_id_can_be_stored_again() {
        let mut w = window(Some(1_000), 10);
        w.insert(0, b"a", 1);
        w.remove(b"a", 1);
        assert_eq!(w.check(0, b"a"), None);
        w.insert(10, b"a", 2);
        assert_eq!(w.check(500, b"a"), Some(2));
    }

    proptest! {
        /// Against a model: an id is a duplicate exactly when it was inserted at most `max`
        /// inserts ago and less than `window` ms ago.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..8, 0u64..50), 1..200),
                           max in 1u32..6, window_ms in proptest::option::of(1u64..200)) {
            let mut w = window(window_ms, max);
            let mut now = 0u64;
            let mut log: Vec<(u64, u8, u64)> = Vec::new(); // (at, id, seq)
            for (seq, (id, dt)) in ops.into_iter().enumerate() {
                now += dt;
                let seq = seq as u64;
                // The model: the live inserts are the newest `max` that have not expired and
                // are the latest insert of their id.
                let live: Vec<&(u64, u8, u64)> = log
                    .iter()
                    .rev()
                    .take(max as usize)
                    .filter(|(at, _, _)| window_ms.is_none_or(|wm| at + wm > now))
                    .collect();
                let expect = live.iter().find(|(_, i, _)| *i == id).map(|(_, _, s)| *s);
                let got = w.check(now, &[id]);
                prop_assert_eq!(got, expect);
                if got.is_none() {
                    w.insert(now, &[id], seq);
                    log.push((now, id, seq));
                }
                prop_assert!(w.len() <= max as usize);
            }
        }
    }
}
