//! The in-memory index: one [`Entry`] per unsettled message, keyed by seq in `State::index`
//! (a [`SeqIndex`]).
//!
//! Owns the entry's compact layout (48 bytes, asserted at compile time: the per-message memory figure in
//! `docs/design.md` depends on it), its conversion to the public [`MessageMeta`], the map from seq
//! to entry, and the look-ups that turn a missing seq into the right error.
//!
//! Seqs are assigned densely and mostly settled in order, so the map is a B-tree of chunks of
//! [`CHUNK`] consecutive seqs rather than of single entries: a full chunk stores its entries in one
//! array (48 bytes each plus the chunk's share of one B-tree slot, against ~107 bytes per entry in a
//! `BTreeMap<u64, Entry>`), a chunk left with few entries (out-of-order settlement) becomes a small
//! sorted vector, so a scattered survivor does not pin a whole array.
//!
//! Invariants (kept by the writer and recovery, which insert and remove entries):
//! - an entry exists only for a message record whose bytes were written (`read` never reads unwritten
//!   bytes), and only while the message is unsettled;
//! - `State::unsettled_bytes` is the sum of the entries' `payload_len`, and each segment's `live` is the
//!   number of entries pointing into it (reclamation deletes a segment only when it reaches 0);
//! - `expires_at_ms == u64::MAX` means no TTL, `key_hash == 0` means no key.

use std::collections::BTreeMap;

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
        self.index.iter().map(|(seq, e)| e.meta(seq)).collect()
    }
}

/// Consecutive seqs per chunk.
pub(super) const CHUNK: u64 = 32;
/// A dense chunk left with this many entries or fewer becomes sparse.
const TO_SPARSE: usize = 6;
/// A sparse chunk grown past this many entries becomes dense again (the gap to [`TO_SPARSE`]
/// keeps a chunk from flipping on every insert and remove).
const TO_DENSE: usize = 12;

const EMPTY: Entry = Entry {
    segment: 0,
    offset: 0,
    len: 0,
    payload_len: 0,
    delivery_count: 0,
    priority: 0,
    expires_at_ms: u64::MAX,
    key_hash: 0,
};

/// The entries of one chunk (seqs `n * CHUNK ..= n * CHUNK + CHUNK - 1`), by offset in the chunk.
#[derive(Debug)]
enum Chunk {
    /// Bit `i` of `present` set: `entries[i]` holds the entry of offset `i`.
    Dense {
        present: u32,
        entries: Box<[Entry; CHUNK as usize]>,
    },
    /// Few entries, sorted by offset.
    Sparse(Vec<(u8, Entry)>),
}

const _: () = assert!(CHUNK == u32::BITS as u64);

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Dense { present, .. } => present.count_ones() as usize,
            Chunk::Sparse(v) => v.len(),
        }
    }
    fn get(&self, off: u8) -> Option<&Entry> {
        match self {
            Chunk::Dense { present, entries } => {
                (present & (1 << off) != 0).then(|| &entries[off as usize])
            }
            Chunk::Sparse(v) => v
                .binary_search_by_key(&off, |(o, _)| *o)
                .ok()
                .map(|i| &v[i].1),
        }
    }
    fn get_mut(&mut self, off: u8) -> Option<&mut Entry> {
        match self {
            Chunk::Dense { present, entries } => {
                (*present & (1 << off) != 0).then(|| &mut entries[off as usize])
            }
            Chunk::Sparse(v) => match v.binary_search_by_key(&off, |(o, _)| *o) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
        }
    }
    fn insert(&mut self, off: u8, e: Entry) -> Option<Entry> {
        match self {
            Chunk::Dense { present, entries } => {
                let old = (*present & (1 << off) != 0).then(|| entries[off as usize]);
                *present |= 1 << off;
                entries[off as usize] = e;
                old
            }
            Chunk::Sparse(v) => match v.binary_search_by_key(&off, |(o, _)| *o) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, e)),
                Err(i) => {
                    v.insert(i, (off, e));
                    if v.len() > TO_DENSE {
                        *self = Chunk::dense_from(v);
                    }
                    None
                }
            },
        }
    }
    fn remove(&mut self, off: u8) -> Option<Entry> {
        match self {
            Chunk::Dense { present, entries } => {
                if *present & (1 << off) == 0 {
                    return None;
                }
                *present &= !(1 << off);
                let e = entries[off as usize];
                if present.count_ones() as usize <= TO_SPARSE && *present != 0 {
                    let v = (0..CHUNK as u8)
                        .filter(|i| *present & (1 << i) != 0)
                        .map(|i| (i, entries[i as usize]))
                        .collect();
                    *self = Chunk::Sparse(v);
                }
                Some(e)
            }
            Chunk::Sparse(v) => {
                let i = v.binary_search_by_key(&off, |(o, _)| *o).ok()?;
                let e = v.remove(i).1;
                if v.len() <= v.capacity() / 2 {
                    v.shrink_to_fit();
                }
                Some(e)
            }
        }
    }
    fn dense_from(v: &[(u8, Entry)]) -> Chunk {
        let mut entries = Box::new([EMPTY; CHUNK as usize]);
        let mut present = 0u32;
        for &(o, e) in v {
            entries[o as usize] = e;
            present |= 1 << o;
        }
        Chunk::Dense { present, entries }
    }
    fn iter(&self) -> Box<dyn Iterator<Item = (u8, &Entry)> + '_> {
        match self {
            Chunk::Dense { present, entries } => {
                let present = *present;
                Box::new(
                    (0..CHUNK as u8)
                        .filter(move |i| present & (1 << i) != 0)
                        .map(move |i| (i, &entries[i as usize])),
                )
            }
            Chunk::Sparse(v) => Box::new(v.iter().map(|(o, e)| (*o, e))),
        }
    }
}

/// The unsettled messages' entries by seq: the subset of a `BTreeMap<u64, Entry>`'s API the log
/// uses, over chunks of [`CHUNK`] consecutive seqs (see the module docs).
#[derive(Debug, Default)]
pub(super) struct SeqIndex {
    chunks: BTreeMap<u64, Chunk>,
    len: usize,
}

fn split(seq: u64) -> (u64, u8) {
    (seq / CHUNK, (seq % CHUNK) as u8)
}

impl SeqIndex {
    pub(super) fn new() -> Self {
        SeqIndex::default()
    }
    /// Entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }
    pub(super) fn get(&self, seq: &u64) -> Option<&Entry> {
        let (n, off) = split(*seq);
        self.chunks.get(&n)?.get(off)
    }
    pub(super) fn get_mut(&mut self, seq: &u64) -> Option<&mut Entry> {
        let (n, off) = split(*seq);
        self.chunks.get_mut(&n)?.get_mut(off)
    }
    pub(super) fn contains_key(&self, seq: &u64) -> bool {
        self.get(seq).is_some()
    }
    /// Inserts or replaces `seq`'s entry; returns the replaced one.
    pub(super) fn insert(&mut self, seq: u64, e: Entry) -> Option<Entry> {
        let (n, off) = split(seq);
        let chunk = self.chunks.entry(n).or_insert_with(|| {
            // A chunk starts dense: appends fill it in order.
            Chunk::Dense {
                present: 0,
                entries: Box::new([EMPTY; CHUNK as usize]),
            }
        });
        let old = chunk.insert(off, e);
        if old.is_none() {
            self.len += 1;
        }
        old
    }
    pub(super) fn remove(&mut self, seq: &u64) -> Option<Entry> {
        let (n, off) = split(*seq);
        let chunk = self.chunks.get_mut(&n)?;
        let e = chunk.remove(off)?;
        self.len -= 1;
        if chunk.len() == 0 {
            self.chunks.remove(&n);
        }
        Some(e)
    }
    /// Entries in seq order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.chunks.iter().flat_map(|(&n, c)| {
            c.iter()
                .map(move |(off, e)| (n * CHUNK + u64::from(off), e))
        })
    }
    /// Entries in seq order, without their seqs.
    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.iter().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(x: u64) -> Entry {
        Entry {
            segment: x,
            offset: x as u32,
            len: 1,
            payload_len: 2,
            delivery_count: 3,
            priority: 4,
            expires_at_ms: x,
            key_hash: x ^ 7,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Bump(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Seqs over a few chunks, so chunks fill, thin out, flip between dense and sparse.
        prop_oneof![
            (0..200u64).prop_map(Op::Insert),
            (0..200u64).prop_map(Op::Remove),
            (0..200u64).prop_map(Op::Bump),
        ]
    }

    proptest! {
        /// The chunked index behaves exactly as a `BTreeMap<u64, Entry>`.
        #[test]
        fn seq_index_agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 0..600)) {
            let mut model: BTreeMap<u64, Entry> = BTreeMap::new();
            let mut index = SeqIndex::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(s) => {
                        let e = entry(i as u64);
                        let a = model.insert(s, e).map(|e| e.segment);
                        let b = index.insert(s, e).map(|e| e.segment);
                        prop_assert_eq!(a, b);
                    }
                    Op::Remove(s) => {
                        let a = model.remove(&s).map(|e| e.segment);
                        let b = index.remove(&s).map(|e| e.segment);
                        prop_assert_eq!(a, b);
                    }
                    Op::Bump(s) => {
                        let a = model.get_mut(&s).map(|e| { e.delivery_count += 1; e.delivery_count });
                        let b = index.get_mut(&s).map(|e| { e.delivery_count += 1; e.delivery_count });
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert_eq!(model.len(), index.len());
            }
            let a: Vec<(u64, u64, u32)> =
                model.iter().map(|(&s, e)| (s, e.segment, e.delivery_count)).collect();
            let b: Vec<(u64, u64, u32)> =
                index.iter().map(|(s, e)| (s, e.segment, e.delivery_count)).collect();
            prop_assert_eq!(a, b);
            for s in 0..200 {
                prop_assert_eq!(model.contains_key(&s), index.contains_key(&s));
                prop_assert_eq!(model.get(&s).map(|e| e.segment), index.get(&s).map(|e| e.segment));
            }
            // Nothing empty is kept.
            prop_assert!(index.chunks.values().all(|c| c.len() > 0));
        }
    }
}
