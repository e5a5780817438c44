//! The in-memory index: one [`Entry`] per unsettled message, keyed by seq in `State::index`
//! (a [`SeqIndex`]).
//!
//! Owns the entry (the value the log's code passes around), its compact stored form (a 24-byte
//! `Slot`, asserted at compile time: the per-message memory figure in `docs/design.md` depends on
//! it), its conversion to the public [`MessageMeta`], the map from seq to entry, and the look-ups
//! that turn a missing seq into the right error.
//!
//! Seqs are assigned densely and mostly settled in order, so the map is a B-tree of chunks of
//! [`CHUNK`] consecutive seqs rather than of single entries: a full chunk stores its slots in one
//! array (24 bytes each plus the chunk's share of one B-tree slot, against ~107 bytes per entry in a
//! `BTreeMap<u64, Entry>`), a chunk left with few entries (out-of-order settlement) becomes a small
//! sorted vector, so a scattered survivor does not pin a whole array. A message's expiry and key
//! hash are kept aside, in a map holding only the messages that have one: most have neither.
//!
//! Invariants (kept by the writer and recovery, which insert and remove entries):
//! - an entry exists only for a message record whose bytes were written (`read` never reads unwritten
//!   bytes), and only while the message is unsettled;
//! - `State::unsettled_bytes` is the sum of the entries' `payload_len`, and each segment's `live` is the
//!   number of entries pointing into it (reclamation deletes a segment only when it reaches 0);
//! - `expires_at_ms == u64::MAX` means no TTL, `key_hash == 0` means no key; a slot's `extra` flag is
//!   set exactly when its seq is in `SeqIndex::extras`;
//! - a segment index fits in 32 bits (checked where segments are created and recovered).

use std::collections::BTreeMap;

use super::{MessageMeta, State};
use crate::error::StoreError;
use crate::format::{self, NewMessage};

/// An index entry, as the log's code reads and writes it (stored as a [`Slot`] plus, for a message
/// with a TTL or a key, an [`Extra`]).
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

/// The stored form of an entry: 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    segment: u32,
    offset: u32,
    len: u32,
    payload_len: u32,
    delivery_count: u32,
    priority: u8,
    /// The seq has an [`Extra`].
    extra: bool,
}

/// What only some messages have.
#[derive(Debug, Clone, Copy)]
struct Extra {
    expires_at_ms: u64,
    key_hash: u64,
}

// Keep the documented per-message figure honest.
const _: () = assert!(std::mem::size_of::<Slot>() == 24);

/// The largest segment index the index can point into.
pub(crate) const MAX_SEGMENT: u64 = u32::MAX as u64;

impl Slot {
    fn of(e: &Entry) -> Slot {
        debug_assert!(
            e.segment <= MAX_SEGMENT,
            "segment indexes are checked at creation"
        );
        Slot {
            segment: e.segment as u32,
            offset: e.offset,
            len: e.len,
            payload_len: e.payload_len,
            delivery_count: e.delivery_count,
            priority: e.priority,
            extra: e.expires_at_ms != u64::MAX || e.key_hash != 0,
        }
    }
    fn entry(&self, extra: Option<&Extra>) -> Entry {
        Entry {
            segment: u64::from(self.segment),
            offset: self.offset,
            len: self.len,
            payload_len: self.payload_len,
            delivery_count: self.delivery_count,
            priority: self.priority,
            expires_at_ms: extra.map_or(u64::MAX, |x| x.expires_at_ms),
            key_hash: extra.map_or(0, |x| x.key_hash),
        }
    }
}

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

/// Something a chunk holds: copyable, with a filler value for the unused places of an array.
trait Value: Copy + std::fmt::Debug {
    const FILLER: Self;
}

impl Value for Slot {
    const FILLER: Slot = Slot {
        segment: 0,
        offset: 0,
        len: 0,
        payload_len: 0,
        delivery_count: 0,
        priority: 0,
        extra: false,
    };
}

impl Value for Extra {
    const FILLER: Extra = Extra {
        expires_at_ms: u64::MAX,
        key_hash: 0,
    };
}

/// The values of one chunk (seqs `n * CHUNK ..= n * CHUNK + CHUNK - 1`), by offset in the chunk.
#[derive(Debug)]
enum Chunk<V> {
    /// Bit `i` of `present` set: `values[i]` holds the value of offset `i`.
    Dense {
        present: u32,
        values: Box<[V; CHUNK as usize]>,
    },
    /// Few values, sorted by offset.
    Sparse(Vec<(u8, V)>),
}

const _: () = assert!(CHUNK == u32::BITS as u64);

impl<V: Value> Chunk<V> {
    fn len(&self) -> usize {
        match self {
            Chunk::Dense { present, .. } => present.count_ones() as usize,
            Chunk::Sparse(v) => v.len(),
        }
    }
    fn get(&self, off: u8) -> Option<&V> {
        match self {
            Chunk::Dense { present, values } => {
                (present & (1 << off) != 0).then(|| &values[off as usize])
            }
            Chunk::Sparse(v) => v
                .binary_search_by_key(&off, |(o, _)| *o)
                .ok()
                .map(|i| &v[i].1),
        }
    }
    fn get_mut(&mut self, off: u8) -> Option<&mut V> {
        match self {
            Chunk::Dense { present, values } => {
                (*present & (1 << off) != 0).then(|| &mut values[off as usize])
            }
            Chunk::Sparse(v) => match v.binary_search_by_key(&off, |(o, _)| *o) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
        }
    }
    fn insert(&mut self, off: u8, value: V) -> Option<V> {
        match self {
            Chunk::Dense { present, values } => {
                let old = (*present & (1 << off) != 0).then(|| values[off as usize]);
                *present |= 1 << off;
                values[off as usize] = value;
                old
            }
            Chunk::Sparse(v) => match v.binary_search_by_key(&off, |(o, _)| *o) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) => {
                    v.insert(i, (off, value));
                    if v.len() > TO_DENSE {
                        *self = Chunk::dense_from(v);
                    }
                    None
                }
            },
        }
    }
    fn remove(&mut self, off: u8) -> Option<V> {
        match self {
            Chunk::Dense { present, values } => {
                if *present & (1 << off) == 0 {
                    return None;
                }
                *present &= !(1 << off);
                let value = values[off as usize];
                if present.count_ones() as usize <= TO_SPARSE && *present != 0 {
                    let v = (0..CHUNK as u8)
                        .filter(|i| *present & (1 << i) != 0)
                        .map(|i| (i, values[i as usize]))
                        .collect();
                    *self = Chunk::Sparse(v);
                }
                Some(value)
            }
            Chunk::Sparse(v) => {
                let i = v.binary_search_by_key(&off, |(o, _)| *o).ok()?;
                let value = v.remove(i).1;
                if v.len() <= v.capacity() / 2 {
                    v.shrink_to_fit();
                }
                Some(value)
            }
        }
    }
    fn dense_from(v: &[(u8, V)]) -> Chunk<V> {
        let mut values = Box::new([V::FILLER; CHUNK as usize]);
        let mut present = 0u32;
        for &(o, value) in v {
            values[o as usize] = value;
            present |= 1 << o;
        }
        Chunk::Dense { present, values }
    }
    fn iter(&self) -> Box<dyn Iterator<Item = (u8, &V)> + '_> {
        match self {
            Chunk::Dense { present, values } => {
                let present = *present;
                Box::new(
                    (0..CHUNK as u8)
                        .filter(move |i| present & (1 << i) != 0)
                        .map(move |i| (i, &values[i as usize])),
                )
            }
            Chunk::Sparse(v) => Box::new(v.iter().map(|(o, value)| (*o, value))),
        }
    }
}

fn split(seq: u64) -> (u64, u8) {
    (seq / CHUNK, (seq % CHUNK) as u8)
}

/// A map from seq to `V` over a B-tree of chunks of [`CHUNK`] consecutive seqs.
#[derive(Debug)]
struct ChunkMap<V> {
    chunks: BTreeMap<u64, Chunk<V>>,
    len: usize,
}

impl<V> Default for ChunkMap<V> {
    fn default() -> Self {
        ChunkMap {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V: Value> ChunkMap<V> {
    fn get(&self, seq: u64) -> Option<&V> {
        let (n, off) = split(seq);
        self.chunks.get(&n)?.get(off)
    }
    fn get_mut(&mut self, seq: u64) -> Option<&mut V> {
        let (n, off) = split(seq);
        self.chunks.get_mut(&n)?.get_mut(off)
    }
    fn insert(&mut self, seq: u64, value: V) -> Option<V> {
        let (n, off) = split(seq);
        let chunk = self.chunks.entry(n).or_insert_with(|| {
            // A chunk starts dense: appends fill it in order.
            Chunk::Dense {
                present: 0,
                values: Box::new([V::FILLER; CHUNK as usize]),
            }
        });
        let old = chunk.insert(off, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }
    fn remove(&mut self, seq: u64) -> Option<V> {
        let (n, off) = split(seq);
        let chunk = self.chunks.get_mut(&n)?;
        let value = chunk.remove(off)?;
        self.len -= 1;
        if chunk.len() == 0 {
            self.chunks.remove(&n);
        }
        Some(value)
    }
    fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.chunks
            .range(from / CHUNK..)
            .flat_map(|(&n, c)| {
                c.iter()
                    .map(move |(off, value)| (n * CHUNK + u64::from(off), value))
            })
            .filter(move |(seq, _)| *seq >= from)
    }
}

/// The unsettled messages' entries by seq: the subset of a `BTreeMap<u64, Entry>`'s API the log
/// uses, over chunks of [`CHUNK`] consecutive seqs (see the module docs).
#[derive(Debug, Default)]
pub(super) struct SeqIndex {
    slots: ChunkMap<Slot>,
    /// Expiry and key hash of the messages that have either.
    extras: ChunkMap<Extra>,
}

impl SeqIndex {
    pub(super) fn new() -> Self {
        SeqIndex::default()
    }
    /// Entries.
    pub(super) fn len(&self) -> usize {
        self.slots.len
    }
    fn entry(&self, seq: u64, slot: &Slot) -> Entry {
        let extra = if slot.extra {
            self.extras.get(seq)
        } else {
            None
        };
        debug_assert_eq!(slot.extra, extra.is_some(), "an extra exactly when flagged");
        slot.entry(extra)
    }
    pub(super) fn get(&self, seq: &u64) -> Option<Entry> {
        let slot = self.slots.get(*seq)?;
        Some(self.entry(*seq, slot))
    }
    /// Sets an unsettled message's delivery count; `false` if `seq` is not in the index.
    pub(super) fn set_delivery_count(&mut self, seq: &u64, count: u32) -> bool {
        match self.slots.get_mut(*seq) {
            Some(slot) => {
                slot.delivery_count = count;
                true
            }
            None => false,
        }
    }
    pub(super) fn contains_key(&self, seq: &u64) -> bool {
        self.slots.get(*seq).is_some()
    }
    /// Inserts or replaces `seq`'s entry; returns the replaced one.
    pub(super) fn insert(&mut self, seq: u64, e: Entry) -> Option<Entry> {
        let slot = Slot::of(&e);
        let old_extra = if slot.extra {
            self.extras.insert(
                seq,
                Extra {
                    expires_at_ms: e.expires_at_ms,
                    key_hash: e.key_hash,
                },
            )
        } else {
            self.extras.remove(seq)
        };
        self.slots
            .insert(seq, slot)
            .map(|old| old.entry(old_extra.as_ref()))
    }
    pub(super) fn remove(&mut self, seq: &u64) -> Option<Entry> {
        let slot = self.slots.remove(*seq)?;
        let extra = if slot.extra {
            self.extras.remove(*seq)
        } else {
            None
        };
        Some(slot.entry(extra.as_ref()))
    }
    /// Entries in seq order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.iter_from(0)
    }
    /// Entries from `from` on, in seq order.
    pub(super) fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.slots
            .iter_from(from)
            .map(move |(seq, slot)| (seq, self.entry(seq, slot)))
    }
    /// Record lengths, in seq order (no expiry look-ups).
    pub(super) fn record_lens(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter_from(0).map(|(_, slot)| slot.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(x: u64) -> Entry {
        // A third without expiry or key, a third with an expiry only, a third with a key only.
        Entry {
            segment: x,
            offset: x as u32,
            len: x as u32,
            payload_len: 2,
            delivery_count: 3,
            priority: 4,
            expires_at_ms: if x % 3 == 1 { x } else { u64::MAX },
            key_hash: if x % 3 == 2 { x ^ 7 } else { 0 },
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
                        let b = index.get(&s).map(|e| e.delivery_count + 1);
                        if let Some(n) = b {
                            prop_assert!(index.set_delivery_count(&s, n));
                        } else {
                            prop_assert!(!index.set_delivery_count(&s, 7));
                        }
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert_eq!(model.len(), index.len());
            }
            let a: Vec<_> = model
                .iter()
                .map(|(&s, e)| (s, e.segment, e.delivery_count, e.expires_at_ms, e.key_hash, e.len))
                .collect();
            let b: Vec<_> = index
                .iter()
                .map(|(s, e)| (s, e.segment, e.delivery_count, e.expires_at_ms, e.key_hash, e.len))
                .collect();
            prop_assert_eq!(a, b);
            for from in [0u64, 1, 31, 32, 33, 100, 199, 500] {
                let a: Vec<u64> = model.range(from..).map(|(&s, _)| s).collect();
                let b: Vec<u64> = index.iter_from(from).map(|(s, _)| s).collect();
                prop_assert_eq!(a, b);
            }
            for s in 0..200 {
                prop_assert_eq!(model.contains_key(&s), index.contains_key(&s));
                prop_assert_eq!(model.get(&s).map(|e| e.segment), index.get(&s).map(|e| e.segment));
            }
            // Nothing empty is kept, and an extra exists exactly for an entry that has one.
            prop_assert!(index.slots.chunks.values().all(|c| c.len() > 0));
            prop_assert!(index.extras.chunks.values().all(|c| c.len() > 0));
            let with_extra: Vec<u64> = model
                .iter()
                .filter(|(_, e)| e.expires_at_ms != u64::MAX || e.key_hash != 0)
                .map(|(&s, _)| s)
                .collect();
            prop_assert_eq!(with_extra, index.extras.iter_from(0).map(|(s, _)| s).collect::<Vec<_>>());
            let lens: Vec<u32> = model.values().map(|e| e.len).collect();
            prop_assert_eq!(lens, index.record_lens().collect::<Vec<_>>());
        }
    }
}
