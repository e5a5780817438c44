//! The in-memory index: one [`Entry`] per unsettled message, keyed by seq in `State::index`.
//!
//! Owns the entry's compact layout (48 bytes, asserted at compile time: the per-message memory figure in
//! `docs/design.md` depends on it), its conversion to the public [`MessageMeta`], and the look-ups that
//! turn a missing seq into the right error.
//!
//! Invariants (kept by the writer and recovery, which insert and remove entries):
//! - an entry exists only for a message record whose bytes were written (`read` never reads unwritten
//!   bytes), and only while the message is unsettled;
//! - `State::unsettled_bytes` is the sum of the entries' `payload_len`, and each segment's `live` is the
//!   number of entries pointing into it (reclamation deletes a segment only when it reaches 0);
//! - `expires_at_ms == u64::MAX` means no TTL, `key_hash == 0` means no key.

use super::{MessageMeta, State};
use crate::error::StoreError;
use crate::format::{self, NewMessage};

/// The in-memory index entry: 48 bytes (plus the 8-byte key in the map).
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) segment: u64,
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) payload_len: u32,
    pub(super) delivery_count: u32,
    pub(super) priority: u8,
    /// `u64::MAX` = no TTL.
    pub(super) expires_at_ms: u64,
    /// 0 = no key.
    pub(super) key_hash: u64,
}

// Keep the documented per-message figure honest.
const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    pub(super) fn meta(&self, seq: u64) -> MessageMeta {
        MessageMeta {
            seq,
            payload_len: self.payload_len,
            record_len: self.len,
            priority: self.priority,
            delivery_count: self.delivery_count,
            expires_at_ms: (self.expires_at_ms != u64::MAX).then_some(self.expires_at_ms),
            key_hash: (self.key_hash != 0).then_some(self.key_hash),
        }
    }
    pub(super) fn from_message(segment: u64, offset: u64, len: u64, m: &NewMessage) -> Self {
        Entry {
            segment,
            offset: offset as u32,
            len: len as u32,
            payload_len: m.payload.len() as u32,
            delivery_count: 0,
            priority: m.priority,
            expires_at_ms: m.ttl_ms.map_or(u64::MAX, |t| {
                m.timestamp_ms.saturating_add(t).min(u64::MAX - 1)
            }),
            key_hash: m.key.as_deref().map_or(0, format::key_hash),
        }
    }
    pub(super) fn new(segment: u64, offset: u64, len: u64, p: &format::MessageParts<'_>) -> Self {
        Entry {
            segment,
            offset: offset as u32,
            len: len as u32,
            payload_len: p.payload.len() as u32,
            delivery_count: 0,
            priority: p.priority,
            expires_at_ms: p.ttl_ms.map_or(u64::MAX, |t| {
                p.timestamp_ms.saturating_add(t).min(u64::MAX - 1)
            }),
            key_hash: p.key.map_or(0, format::key_hash),
        }
    }
}

impl State {
    /// The error for a seq not in the index: never assigned yet, or already settled.
    pub(super) fn missing(&self, seq: u64) -> StoreError {
        if seq >= self.next_seq {
            StoreError::UnknownSeq { seq }
        } else {
            StoreError::Settled { seq }
        }
    }
    /// Every unsettled message's metadata, in sequence order.
    pub(super) fn unsettled_metas(&self) -> Vec<MessageMeta> {
        self.index.iter().map(|(&seq, e)| e.meta(seq)).collect()
    }
}
