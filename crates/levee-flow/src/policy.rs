//! The policy core: a pure, synchronous container that owns queued items and makes every
//! overflow decision (what to accept, evict, drop, reject or hold back).
//!
//! Nothing in this module is async, takes a lock, reads a clock or knows about wakers, so the
//! broker reuses it unchanged for its queues' ready sets (with `T` a small index entry and `K` a
//! byte-string key), and the in-process channel wraps it in a mutex.
//!
//! # Invariants
//! - `len()` / `bytes()` are exactly the count and summed weight of the items held.
//! - Every item that leaves the container leaves through exactly one of: [`PolicyQueue::pop`],
//!   [`PolicyQueue::remove`], an eviction reported in [`Offer::Accepted`], or the reinsertion
//!   supersession returned by [`PolicyQueue::reinsert`]. Nothing is discarded silently.
//! - An offer never makes the container exceed its limits (counting the external load set with
//!   [`PolicyQueue::set_external`]). If the limits were lowered below the current content, an
//!   eviction policy only *swaps* (the container never grows) and the other policies refuse; the
//!   content shrinks as items are popped. Lowering limits never drops anything by itself.
//! - Within one priority level (and in FIFO order overall) items are kept in ascending
//!   *position* order. An item's position is its sequence number, except under `Conflate`: a
//!   message that replaces a queued one with the same key takes over that message's position
//!   (the newest value at the oldest position), so a key updated faster than it is drained is
//!   still delivered once per pass over the queue instead of being pushed back for ever.
//!   Sequence numbers are supplied by the caller: offers must use increasing numbers;
//!   [`PolicyQueue::reinsert`] puts an older number back at the position it gives (or, for the
//!   item popped last under `Conflate`, at the position it held).
//! - No offer or pop allocates once the deques have grown to the working size: evictions are
//!   returned in [`Evictions`] (the first one inline), and a conflated replacement is swapped
//!   into the queued entry in place (a key is cloned only when a new key enters).
//!
//! # Memory bound
//! With `max_messages = n` and `max_bytes = b` the container holds at most `n` items and at most
//! `b` bytes of declared weight, plus a fixed per-item overhead (`Entry`: sequence number,
//! position, weight, priority and key) and, for [`Order::Priority`] or
//! [`Overflow::ShedPriority`], 256 empty deque headers (about 8 KiB). An unbounded limit
//! (`None`) has no bound: ask for it explicitly.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// What to do with an incoming message when the container is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// Hand the message back as [`Offer::Full`] so the caller can wait for room.
    Block,
    /// Hand the message back as [`Offer::Rejected`]: the caller gets an error holding it.
    Reject,
    /// Discard the incoming message (counted, reported with [`DropReason::Newest`]).
    DropNewest,
    /// Evict the oldest queued message(s) to make room ([`DropReason::Oldest`]).
    DropOldest,
    /// One slot per key: a newer message replaces the queued one with the same key
    /// ([`DropReason::Conflated`]); capacity counts keys. A message without a key uses the single
    /// "no key" slot, so with no keys at all this is a latest-value-wins slot (Kotlin's CONFLATED
    /// when `max_messages = 1`). A new key that does not fit evicts the oldest ([`DropReason::Oldest`]).
    Conflate,
    /// When full, the lowest-priority, oldest message is evicted ([`DropReason::Shed`]) if the
    /// incoming one outranks it; otherwise the incoming one is dropped ([`DropReason::Outranked`]).
    ShedPriority,
}

/// The order in which [`PolicyQueue::pop`] hands out items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Order {
    /// First in, first out (by sequence number).
    #[default]
    Fifo,
    /// Highest priority first, FIFO within a priority.
    Priority,
}

/// Why a message was discarded after it was accepted into the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The incoming message was discarded because there was no room (`DropNewest`, or an
    /// eviction policy that could not make room because the load is held outside the container).
    Newest,
    /// The oldest queued message was evicted to make room (`DropOldest`, or a new key under `Conflate`).
    Oldest,
    /// A queued message was replaced by a newer one with the same key (`Conflate`).
    Conflated,
    /// A queued message was evicted for a higher-priority incoming one (`ShedPriority`).
    Shed,
    /// The incoming message was discarded because it did not outrank anything queued (`ShedPriority`).
    Outranked,
    /// The message was still queued when every receiver went away.
    Disconnected,
}

impl DropReason {
    /// Every reason, in the order used by [`DropReason::index`].
    pub const ALL: [DropReason; 6] = [
        DropReason::Newest,
        DropReason::Oldest,
        DropReason::Conflated,
        DropReason::Shed,
        DropReason::Outranked,
        DropReason::Disconnected,
    ];

    /// A dense index (0..6) for per-reason counters.
    pub fn index(self) -> usize {
        match self {
            DropReason::Newest => 0,
            DropReason::Oldest => 1,
            DropReason::Conflated => 2,
            DropReason::Shed => 3,
            DropReason::Outranked => 4,
            DropReason::Disconnected => 5,
        }
    }

    /// A short stable name (`"newest"`, `"oldest"`, ...), for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Newest => "newest",
            DropReason::Oldest => "oldest",
            DropReason::Conflated => "conflated",
            DropReason::Shed => "shed",
            DropReason::Outranked => "outranked",
            DropReason::Disconnected => "disconnected",
        }
    }
}

/// Hard limits. `None` means unbounded in that dimension.
///
/// Memory bound: at most `max_messages` items and `max_bytes` bytes of declared weight are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Maximum number of messages (for `Conflate`: of keys, which is the same thing since each
    /// key holds one message). `Some(0)` is invalid.
    pub max_messages: Option<usize>,
    /// Maximum summed weight in bytes. `Some(0)` is invalid.
    pub max_bytes: Option<u64>,
}

impl Limits {
    /// Limits on both dimensions.
    pub fn new(max_messages: usize, max_bytes: u64) -> Self {
        Limits {
            max_messages: Some(max_messages),
            max_bytes: Some(max_bytes),
        }
    }
    /// A message-count limit only.
    pub fn messages(max_messages: usize) -> Self {
        Limits {
            max_messages: Some(max_messages),
            max_bytes: None,
        }
    }
    /// No limit at all (explicitly unbounded).
    pub fn unbounded() -> Self {
        Limits::default()
    }
}

/// Per-message metadata the policies use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta<K> {
    /// Size in bytes counted against `max_bytes`.
    pub weight: u64,
    /// Priority, higher is more important (used by [`Order::Priority`] and `ShedPriority`).
    pub priority: u8,
    /// Key for `Conflate` (`None` = the single "no key" slot).
    pub key: Option<K>,
}

impl<K> Meta<K> {
    /// Metadata with a weight only (priority 0, no key).
    pub fn weight(weight: u64) -> Self {
        Meta {
            weight,
            priority: 0,
            key: None,
        }
    }
}

impl<K> Default for Meta<K> {
    fn default() -> Self {
        Meta::weight(0)
    }
}

/// An item leaving the container, with its sequence number and metadata.
#[derive(Debug)]
pub struct Item<T, K> {
    /// The caller-supplied sequence number.
    pub seq: u64,
    /// The item.
    pub item: T,
    /// Its metadata.
    pub meta: Meta<K>,
}

/// A queued item discarded to make room (or superseded), with the reason.
#[derive(Debug)]
pub struct Evicted<T, K> {
    /// The discarded item.
    pub entry: Item<T, K>,
    /// Why it was discarded.
    pub reason: DropReason,
}

/// The outcome of [`PolicyQueue::offer`]: exactly what happened to the incoming item and to
/// anything that was queued.
#[derive(Debug)]
#[must_use]
pub enum Offer<T, K> {
    /// The item is queued; `evicted` lists queued items discarded to make room or replaced
    /// (usually none or one, and then nothing is allocated).
    Accepted {
        /// Items evicted, oldest first, each with its reason.
        evicted: Evictions<T, K>,
    },
    /// The incoming item was accepted into the accounting and discarded at once.
    Dropped {
        /// The discarded item.
        entry: Item<T, K>,
        /// `Newest` or `Outranked`.
        reason: DropReason,
    },
    /// `Reject` policy and no room: the item is handed back (not accounted as sent).
    Rejected(Item<T, K>),
    /// `Block` policy and no room: the item is handed back so the caller can wait and retry.
    Full(Item<T, K>),
    /// The item weighs more than `max_bytes`: it could never fit, whatever the policy.
    TooLarge(Item<T, K>),
}

struct Entry<T, K> {
    seq: u64,
    /// Delivery position: the entry's place in the order. Equal to `seq` except under
    /// `Conflate`, where a replacement keeps the position of the message it replaced.
    pos: u64,
    item: T,
    weight: u64,
    priority: u8,
    key: Option<K>,
}

impl<T, K> Entry<T, K> {
    fn into_item(self) -> Item<T, K> {
        Item {
            seq: self.seq,
            item: self.item,
            meta: Meta {
                weight: self.weight,
                priority: self.priority,
                key: self.key,
            },
        }
    }
}

/// Storage: one deque in sequence order, or one deque per priority level plus a bitmap of the
/// non-empty levels.
enum Store<T, K> {
    Fifo(VecDeque<Entry<T, K>>),
    Levels {
        levels: Vec<VecDeque<Entry<T, K>>>,
        bitmap: [u64; 4],
        /// Pop order: highest priority first (true) or oldest first (false).
        by_priority: bool,
    },
}

fn insert_sorted<T, K>(dq: &mut VecDeque<Entry<T, K>>, e: Entry<T, K>) {
    if dq.back().is_none_or(|b| b.pos < e.pos) {
        dq.push_back(e);
    } else {
        let i = dq.partition_point(|x| x.pos < e.pos);
        dq.insert(i, e);
    }
}

impl<T, K> Store<T, K> {
    fn new(order: Order, overflow: Overflow) -> Self {
        if order == Order::Priority || overflow == Overflow::ShedPriority {
            Store::Levels {
                levels: (0..256).map(|_| VecDeque::new()).collect(),
                bitmap: [0; 4],
                by_priority: order == Order::Priority,
            }
        } else {
            Store::Fifo(VecDeque::new())
        }
    }

    fn push(&mut self, e: Entry<T, K>) {
        match self {
            Store::Fifo(dq) => insert_sorted(dq, e),
            Store::Levels { levels, bitmap, .. } => {
                let p = e.priority as usize;
                bitmap[p / 64] |= 1 << (p % 64);
                insert_sorted(&mut levels[p], e);
            }
        }
    }

    fn highest_level(bitmap: &[u64; 4]) -> Option<usize> {
        (0..4)
            .rev()
            .find(|&w| bitmap[w] != 0)
            .map(|w| w * 64 + 63 - bitmap[w].leading_zeros() as usize)
    }

    fn lowest_level(bitmap: &[u64; 4]) -> Option<usize> {
        (0..4)
            .find(|&w| bitmap[w] != 0)
            .map(|w| w * 64 + bitmap[w].trailing_zeros() as usize)
    }

    fn levels_iter(bitmap: &[u64; 4]) -> impl Iterator<Item = usize> + '_ {
        (0..4).flat_map(move |w| {
            let mut bits = bitmap[w];
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }

    /// Level holding the oldest item (smallest front position).
    fn oldest_level(levels: &[VecDeque<Entry<T, K>>], bitmap: &[u64; 4]) -> Option<usize> {
        Self::levels_iter(bitmap).min_by_key(|&l| levels[l].front().map_or(u64::MAX, |e| e.pos))
    }

    fn take_front(
        levels: &mut [VecDeque<Entry<T, K>>],
        bitmap: &mut [u64; 4],
        l: usize,
    ) -> Option<Entry<T, K>> {
        let e = levels[l].pop_front();
        if levels[l].is_empty() {
            bitmap[l / 64] &= !(1 << (l % 64));
        }
        e
    }

    fn pop(&mut self) -> Option<Entry<T, K>> {
        match self {
            Store::Fifo(dq) => dq.pop_front(),
            Store::Levels {
                levels,
                bitmap,
                by_priority,
            } => {
                let l = if *by_priority {
                    Self::highest_level(bitmap)?
                } else {
                    Self::oldest_level(levels, bitmap)?
                };
                Self::take_front(levels, bitmap, l)
            }
        }
    }

    fn pop_oldest(&mut self) -> Option<Entry<T, K>> {
        match self {
            Store::Fifo(dq) => dq.pop_front(),
            Store::Levels { levels, bitmap, .. } => {
                let l = Self::oldest_level(levels, bitmap)?;
                Self::take_front(levels, bitmap, l)
            }
        }
    }

    /// Priority of the lowest-priority, oldest item.
    fn lowest_priority(&self) -> Option<u8> {
        match self {
            Store::Fifo(dq) => dq.iter().map(|e| e.priority).min(),
            Store::Levels { bitmap, .. } => Self::lowest_level(bitmap).map(|l| l as u8),
        }
    }

    fn pop_lowest(&mut self) -> Option<Entry<T, K>> {
        match self {
            Store::Fifo(dq) => {
                let min = dq.iter().map(|e| e.priority).min()?;
                let i = dq.iter().position(|e| e.priority == min)?;
                dq.remove(i)
            }
            Store::Levels { levels, bitmap, .. } => {
                let l = Self::lowest_level(bitmap)?;
                Self::take_front(levels, bitmap, l)
            }
        }
    }

    /// Weight of the `n` lowest-priority (oldest first) items with priority below `below`,
    /// walking until `need` bytes and `need_n` items are covered. Returns whether enough exist.
    fn can_shed(&self, below: u8, need_n: usize, need_bytes: u64) -> bool {
        let mut n = 0usize;
        let mut b = 0u64;
        let enough = |n: usize, b: u64| n >= need_n && b >= need_bytes;
        if enough(n, b) {
            return true;
        }
        match self {
            Store::Fifo(dq) => {
                let mut v: Vec<(u8, u64)> = dq
                    .iter()
                    .filter(|e| e.priority < below)
                    .map(|e| (e.priority, e.weight))
                    .collect();
                v.sort_by_key(|x| x.0);
                for (_, w) in v {
                    n += 1;
                    b += w;
                    if enough(n, b) {
                        return true;
                    }
                }
            }
            Store::Levels { levels, bitmap, .. } => {
                for l in Self::levels_iter(bitmap) {
                    if l >= below as usize {
                        break;
                    }
                    for e in &levels[l] {
                        n += 1;
                        b += e.weight;
                        if enough(n, b) {
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    /// The entry at position `pos` (in level `priority` if known), for an in-place update.
    fn get_mut(&mut self, pos: u64, priority: u8) -> Option<&mut Entry<T, K>> {
        let dq = match self {
            Store::Fifo(dq) => dq,
            Store::Levels { levels, .. } => &mut levels[priority as usize],
        };
        let i = dq.binary_search_by_key(&pos, |e| e.pos).ok()?;
        dq.get_mut(i)
    }

    /// Removes the entry at position `pos` (in level `priority` if known).
    fn remove(&mut self, pos: u64, priority: Option<u8>) -> Option<Entry<T, K>> {
        fn rm<T, K>(dq: &mut VecDeque<Entry<T, K>>, pos: u64) -> Option<Entry<T, K>> {
            let i = dq.binary_search_by_key(&pos, |e| e.pos).ok()?;
            dq.remove(i)
        }
        match self {
            Store::Fifo(dq) => rm(dq, pos),
            Store::Levels { levels, bitmap, .. } => {
                let l = match priority {
                    Some(p) => p as usize,
                    None => Self::levels_iter(bitmap)
                        .find(|&l| levels[l].binary_search_by_key(&pos, |e| e.pos).is_ok())?,
                };
                let e = rm(&mut levels[l], pos)?;
                if levels[l].is_empty() {
                    bitmap[l / 64] &= !(1 << (l % 64));
                }
                Some(e)
            }
        }
    }
}

/// A short list that holds its first element inline: the evictions of one offer (almost always
/// zero or one), so the hot path of every policy allocates nothing. More than one element (an
/// offer that had to evict several messages to make room by bytes) spills into a `Vec`.
#[derive(Debug)]
pub struct Evictions<T, K> {
    first: Option<Evicted<T, K>>,
    rest: Vec<Evicted<T, K>>,
}

impl<T, K> Default for Evictions<T, K> {
    fn default() -> Self {
        Evictions {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<T, K> Evictions<T, K> {
    fn push(&mut self, e: Evicted<T, K>) {
        if self.first.is_none() {
            self.first = Some(e);
        } else {
            self.rest.push(e);
        }
    }
    /// How many items were evicted.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
    /// Whether nothing was evicted.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
    /// The evicted items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Evicted<T, K>> {
        self.first.iter().chain(self.rest.iter())
    }
}

impl<T, K> IntoIterator for Evictions<T, K> {
    type Item = Evicted<T, K>;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<Evicted<T, K>>, std::vec::IntoIter<Evicted<T, K>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// Entries taken out during one offer, kept with their positions until the offer is settled
/// (so an offer that turns out impossible can put them back exactly where they were).
struct Taken<T, K> {
    first: Option<(Entry<T, K>, DropReason)>,
    rest: Vec<(Entry<T, K>, DropReason)>,
}

impl<T, K> Taken<T, K> {
    fn new() -> Self {
        Taken {
            first: None,
            rest: Vec::new(),
        }
    }
    fn push(&mut self, e: Entry<T, K>, reason: DropReason) {
        if self.first.is_none() {
            self.first = Some((e, reason));
        } else {
            self.rest.push((e, reason));
        }
    }
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
    fn weight(&self) -> u64 {
        self.first
            .iter()
            .chain(&self.rest)
            .map(|(e, _)| e.weight)
            .sum()
    }
    fn into_evictions(self) -> Evictions<T, K> {
        let conv = |(e, reason): (Entry<T, K>, DropReason)| Evicted {
            entry: e.into_item(),
            reason,
        };
        Evictions {
            first: self.first.map(conv),
            rest: self.rest.into_iter().map(conv).collect(),
        }
    }
    fn into_entries(self) -> impl Iterator<Item = Entry<T, K>> {
        self.first.into_iter().chain(self.rest).map(|(e, _)| e)
    }
}

/// Where a `Conflate` key's queued message is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    pos: u64,
    priority: u8,
}

/// A bounded container with a declared overflow policy and delivery order.
///
/// `K` is the conflation key type (use `()` if unused); `S` hashes keys for `Conflate` (the
/// default, std's SipHash, resists flooding by keys an outside client chooses, as the broker's
/// are; the in-process channel uses a faster one). See the module docs for the invariants.
pub struct PolicyQueue<T, K = (), S = RandomState> {
    store: Store<T, K>,
    /// For `Conflate`: key -> where the queued message holding that key is.
    keys: HashMap<Option<K>, Slot, S>,
    /// For `Conflate`: (seq, position) of the item popped last, so that putting it straight back
    /// ([`PolicyQueue::reinsert`]) restores the position it held rather than its sequence's.
    last_pop: Option<(u64, u64)>,
    overflow: Overflow,
    order: Order,
    limits: Limits,
    len: usize,
    bytes: u64,
    ext_count: usize,
    ext_bytes: u64,
}

impl<T, K: Hash + Eq + Clone, S: BuildHasher + Default> PolicyQueue<T, K, S> {
    /// An empty container. Limits are validated by the caller (see `Config`); a zero limit
    /// simply never accepts anything.
    pub fn new(limits: Limits, overflow: Overflow, order: Order) -> Self {
        PolicyQueue {
            store: Store::new(order, overflow),
            keys: HashMap::default(),
            last_pop: None,
            overflow,
            order,
            limits,
            len: 0,
            bytes: 0,
            ext_count: 0,
            ext_bytes: 0,
        }
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Summed weight of the items held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Current limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }
    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }
    /// The delivery order.
    pub fn order(&self) -> Order {
        self.order
    }

    /// Changes the limits (adaptive resizing). Never drops anything: if the content exceeds the
    /// new limits, offers are refused (or only swap, for eviction policies) until it is drained.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Declares load held outside the container that the limits must include (for the broker:
    /// messages delivered but not yet acknowledged). Replaces the previous value.
    pub fn set_external(&mut self, count: usize, bytes: u64) {
        self.ext_count = count;
        self.ext_bytes = bytes;
    }

    /// Whether an item of `weight` bytes would be accepted without evicting anything.
    pub fn fits(&self, weight: u64) -> bool {
        self.fits_with(self.len, self.bytes, weight)
    }

    fn fits_with(&self, len: usize, bytes: u64, weight: u64) -> bool {
        self.limits
            .max_messages
            .is_none_or(|m| len + self.ext_count < m)
            && self
                .limits
                .max_bytes
                .is_none_or(|m| bytes.saturating_add(self.ext_bytes).saturating_add(weight) <= m)
    }

    /// Whether an item of `weight` could ever fit (it is not heavier than `max_bytes`).
    pub fn could_ever_fit(&self, weight: u64) -> bool {
        self.limits.max_bytes.is_none_or(|m| weight <= m)
            && self.limits.max_messages.is_none_or(|m| m > 0)
    }

    fn push_entry(&mut self, e: Entry<T, K>) {
        self.len += 1;
        self.bytes += e.weight;
        if self.overflow == Overflow::Conflate {
            let slot = Slot {
                seq: e.seq,
                pos: e.pos,
                priority: e.priority,
            };
            match self.keys.get_mut(&e.key) {
                // No clone (for a heap key: no allocation) when the key's entry already exists.
                Some(s) => *s = slot,
                None => {
                    self.keys.insert(e.key.clone(), slot);
                }
            }
        }
        self.store.push(e);
    }

    fn account_out(&mut self, e: &Entry<T, K>) {
        self.len -= 1;
        self.bytes -= e.weight;
        if self.overflow == Overflow::Conflate
            && self.keys.get(&e.key).is_some_and(|s| s.seq == e.seq)
        {
            self.keys.remove(&e.key);
        }
    }

    /// Offers an item with sequence number `seq` (greater than any offered before). See
    /// [`Offer`] for the possible outcomes; the container decides everything here.
    pub fn offer(&mut self, seq: u64, item: T, meta: Meta<K>) -> Offer<T, K> {
        let entry = Entry {
            seq,
            pos: seq,
            item,
            weight: meta.weight,
            priority: meta.priority,
            key: meta.key,
        };
        if !self.could_ever_fit(entry.weight) {
            return Offer::TooLarge(entry.into_item());
        }
        if self.overflow == Overflow::Conflate {
            return self.offer_conflate(entry);
        }
        if self.fits(entry.weight) {
            self.push_entry(entry);
            return Offer::Accepted {
                evicted: Evictions::default(),
            };
        }
        match self.overflow {
            Overflow::Block => Offer::Full(entry.into_item()),
            Overflow::Reject => Offer::Rejected(entry.into_item()),
            Overflow::DropNewest => Offer::Dropped {
                entry: entry.into_item(),
                reason: DropReason::Newest,
            },
            Overflow::DropOldest => self.evict_then_push(entry, Taken::new(), DropReason::Oldest),
            Overflow::Conflate => unreachable!("handled above"),
            Overflow::ShedPriority => self.offer_shed(entry),
        }
    }

    /// `Conflate`: a message whose key is queued replaces that message in place (the newest
    /// value at the oldest position); a new key is queued at the back, evicting the oldest
    /// position if there is no room.
    fn offer_conflate(&mut self, mut entry: Entry<T, K>) -> Offer<T, K> {
        let Some(slot_ref) = self.keys.get_mut(&entry.key) else {
            if self.fits(entry.weight) {
                self.push_entry(entry);
                return Offer::Accepted {
                    evicted: Evictions::default(),
                };
            }
            return self.evict_then_push(entry, Taken::new(), DropReason::Oldest);
        };
        let slot = *slot_ref;
        // Fast path: same level and the swap fits the byte limit (or does not grow the
        // content): swap the value into the queued entry, no memory moved, nothing allocated,
        // one hash lookup.
        let (bytes, ext_bytes, limit) = (self.bytes, self.ext_bytes, self.limits.max_bytes);
        if slot.priority == entry.priority
            && let Some(old) = self.store.get_mut(slot.pos, slot.priority)
        {
            let after = bytes - old.weight + entry.weight;
            if limit.is_none_or(|m| after.saturating_add(ext_bytes) <= m) || after <= bytes {
                std::mem::swap(&mut old.seq, &mut entry.seq);
                std::mem::swap(&mut old.item, &mut entry.item);
                std::mem::swap(&mut old.weight, &mut entry.weight);
                std::mem::swap(&mut old.key, &mut entry.key);
                slot_ref.seq = old.seq;
                self.bytes = after;
                // `entry` now holds the replaced message (with the position it had).
                let mut evicted = Evictions::default();
                evicted.push(Evicted {
                    entry: entry.into_item(),
                    reason: DropReason::Conflated,
                });
                return Offer::Accepted { evicted };
            }
        }
        // Slow path: take the predecessor out, then place the newcomer at its position,
        // evicting the oldest positions if the newcomer is heavier than the room left.
        let mut taken = Taken::new();
        if let Some(old) = self.store.remove(slot.pos, Some(slot.priority)) {
            self.account_out(&old);
            entry.pos = old.pos;
            taken.push(old, DropReason::Conflated);
        }
        self.evict_then_push(entry, taken, DropReason::Oldest)
    }

    fn offer_shed(&mut self, entry: Entry<T, K>) -> Offer<T, K> {
        let (len0, bytes0) = (self.len, self.bytes);
        // Per dimension, what must go: one message if the count is at its limit; enough
        // bytes to fit, or (over a lowered limit) to not grow.
        let need_n = match self.limits.max_messages {
            Some(m) if len0 + self.ext_count >= m => 1,
            _ => 0,
        };
        let need_bytes = match self.limits.max_bytes {
            Some(m) => (bytes0 + self.ext_bytes + entry.weight)
                .saturating_sub(m)
                .min(entry.weight),
            None => 0,
        };
        if need_n > len0 || !self.store.can_shed(entry.priority, need_n, need_bytes) {
            let reason = if self.store.lowest_priority().is_some() {
                DropReason::Outranked
            } else {
                DropReason::Newest
            };
            return Offer::Dropped {
                entry: entry.into_item(),
                reason,
            };
        }
        let mut taken = Taken::new();
        while !self.room_after_evictions(len0, bytes0, entry.weight) {
            if self
                .store
                .lowest_priority()
                .is_none_or(|p| p >= entry.priority)
            {
                break;
            }
            let Some(e) = self.store.pop_lowest() else {
                break;
            };
            self.account_out(&e);
            taken.push(e, DropReason::Shed);
        }
        if !self.room_after_evictions(len0, bytes0, entry.weight) {
            // Not reachable when can_shed said yes; never exceed the limits regardless.
            self.restore(taken);
            return Offer::Dropped {
                entry: entry.into_item(),
                reason: DropReason::Outranked,
            };
        }
        self.push_entry(entry);
        Offer::Accepted {
            evicted: taken.into_evictions(),
        }
    }

    /// Room for `weight` now: it fits the limits, or the container will not grow past what it
    /// held before this offer (over-limit after a shrink: swap only).
    fn room_after_evictions(&self, len0: usize, bytes0: u64, weight: u64) -> bool {
        self.room_at(self.len, self.bytes, len0, bytes0, weight)
    }

    /// Per dimension: adding `weight` to (`len`, `bytes`) stays within the limit, or does not
    /// grow beyond what was held before the offer (`len0`, `bytes0`).
    fn room_at(&self, len: usize, bytes: u64, len0: usize, bytes0: u64, weight: u64) -> bool {
        let msgs = self
            .limits
            .max_messages
            .is_none_or(|m| len + self.ext_count < m || len < len0);
        let by = self.limits.max_bytes.is_none_or(|m| {
            bytes.saturating_add(self.ext_bytes).saturating_add(weight) <= m
                || bytes + weight <= bytes0
        });
        msgs && by
    }

    /// Puts taken entries back where they were (an offer that turned out impossible must not
    /// lose them).
    fn restore(&mut self, taken: Taken<T, K>) {
        for e in taken.into_entries() {
            self.push_entry(e);
        }
    }

    fn evict_then_push(
        &mut self,
        entry: Entry<T, K>,
        mut taken: Taken<T, K>,
        reason: DropReason,
    ) -> Offer<T, K> {
        let len0 = self.len + taken.len();
        let bytes0 = self.bytes + taken.weight();
        // If even an empty container has no room (the load is held outside it) and swapping is
        // impossible, evicting would only lose more: drop the incoming message instead. A
        // conflated predecessor (already removed above) stays reported as replaced.
        if !self.room_at(0, 0, len0, bytes0, entry.weight) {
            if taken.is_empty() {
                return Offer::Dropped {
                    entry: entry.into_item(),
                    reason: DropReason::Newest,
                };
            }
            // Only a same-key predecessor was removed: the newer value takes its place if that
            // does not grow the content; otherwise the predecessor goes back and the newer drops.
            if entry.weight <= bytes0 - self.bytes {
                self.push_entry(entry);
                return Offer::Accepted {
                    evicted: taken.into_evictions(),
                };
            }
            self.restore(taken);
            return Offer::Dropped {
                entry: entry.into_item(),
                reason: DropReason::Newest,
            };
        }
        while !self.room_after_evictions(len0, bytes0, entry.weight) {
            match self.store.pop_oldest() {
                Some(e) => {
                    self.account_out(&e);
                    taken.push(e, reason);
                }
                // Unreachable after the pre-check above; stop rather than loop.
                None => break,
            }
        }
        self.push_entry(entry);
        Offer::Accepted {
            evicted: taken.into_evictions(),
        }
    }

    /// Takes the next item in delivery order.
    pub fn pop(&mut self) -> Option<Item<T, K>> {
        let e = self.store.pop()?;
        self.account_out(&e);
        if self.overflow == Overflow::Conflate {
            self.last_pop = Some((e.seq, e.pos));
        }
        Some(e.into_item())
    }

    /// Visits the queued items from the newest position back, one priority level after another,
    /// until `f` returns `false` (which ends that level's walk). `f` may change an item in place
    /// but not what its weight or position depend on. Costs only the items visited: for a caller
    /// that updates the items it queued last (the broker lets go of the bodies of messages that
    /// just became durable).
    pub fn visit_newest(&mut self, mut f: impl FnMut(u64, &mut T) -> bool) {
        let mut walk = |dq: &mut VecDeque<Entry<T, K>>| {
            for e in dq.iter_mut().rev() {
                if !f(e.seq, &mut e.item) {
                    break;
                }
            }
        };
        match &mut self.store {
            Store::Fifo(dq) => walk(dq),
            Store::Levels { levels, .. } => {
                for dq in levels.iter_mut().filter(|d| !d.is_empty()) {
                    walk(dq);
                }
            }
        }
    }

    /// Removes the item with sequence number `seq` (TTL expiry, purge). `None` if absent.
    pub fn remove(&mut self, seq: u64) -> Option<Item<T, K>> {
        let (pos, prio) = if self.overflow == Overflow::Conflate {
            let s = self.keys.values().find(|s| s.seq == seq)?;
            (s.pos, Some(s.priority))
        } else {
            (seq, None)
        };
        let e = self.store.remove(pos, prio)?;
        self.account_out(&e);
        Some(e.into_item())
    }

    /// Puts back an item that was already admitted (nacked, timed out, recovered) without
    /// applying the overflow policy or limits, at the position its sequence number gives, or,
    /// under `Conflate`, at the position it held if it is the item popped last (an item popped
    /// and put straight back keeps its place). Under `Conflate`, if another message with the
    /// same key is queued, the older of the two (by sequence number) is returned as superseded
    /// ([`DropReason::Conflated`]; the caller must account for it) and the newer one keeps the
    /// older (earlier) of the two positions.
    pub fn reinsert(&mut self, seq: u64, item: T, meta: Meta<K>) -> Option<Evicted<T, K>> {
        let mut entry = Entry {
            seq,
            pos: seq,
            item,
            weight: meta.weight,
            priority: meta.priority,
            key: meta.key,
        };
        if self.overflow != Overflow::Conflate {
            self.push_entry(entry);
            return None;
        }
        if let Some((s, p)) = self.last_pop
            && s == seq
        {
            entry.pos = p;
            self.last_pop = None;
        }
        let Some(&other) = self.keys.get(&entry.key) else {
            self.push_entry(entry);
            return None;
        };
        let Some(old) = self.store.remove(other.pos, Some(other.priority)) else {
            // Not reachable (the key map tracks the store); never lose the item regardless.
            self.push_entry(entry);
            return None;
        };
        self.account_out(&old);
        let (mut newer, older) = if other.seq > seq {
            (old, entry)
        } else {
            (entry, old)
        };
        newer.pos = newer.pos.min(older.pos);
        self.push_entry(newer);
        Some(Evicted {
            entry: older.into_item(),
            reason: DropReason::Conflated,
        })
    }

    /// The first `n` items in delivery order (sequence number and item), without taking them:
    /// what [`PolicyQueue::pop`] would return next. O(n) in FIFO order, O(len log len) for a
    /// `ShedPriority` container in FIFO order (its levels are merged by position).
    pub fn peek(&self, n: usize) -> Vec<(u64, &T)> {
        match &self.store {
            Store::Fifo(dq) => dq.iter().take(n).map(|e| (e.seq, &e.item)).collect(),
            Store::Levels {
                levels,
                by_priority: true,
                ..
            } => levels
                .iter()
                .rev()
                .flat_map(|l| l.iter())
                .take(n)
                .map(|e| (e.seq, &e.item))
                .collect(),
            Store::Levels { levels, .. } => {
                let mut all: Vec<&Entry<T, K>> = levels.iter().flat_map(|l| l.iter()).collect();
                all.sort_by_key(|e| e.pos);
                all.into_iter().take(n).map(|e| (e.seq, &e.item)).collect()
            }
        }
    }

    /// Removes and returns every item, in delivery order.
    pub fn drain(&mut self) -> Vec<Item<T, K>> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(i) = self.pop() {
            out.push(i);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limits: Limits, o: Overflow, ord: Order) -> PolicyQueue<u32, u32> {
        PolicyQueue::new(limits, o, ord)
    }

    fn m(p: u8) -> Meta<u32> {
        Meta {
            weight: 1,
            priority: p,
            key: None,
        }
    }

    #[test]
    fn fifo_block_hands_back_when_full() {
        let mut c = q(Limits::messages(2), Overflow::Block, Order::Fifo);
        assert!(matches!(c.offer(1, 1, m(0)), Offer::Accepted { .. }));
        assert!(matches!(c.offer(2, 2, m(0)), Offer::Accepted { .. }));
        assert!(matches!(c.offer(3, 3, m(0)), Offer::Full(i) if i.item == 3));
        assert_eq!(c.pop().unwrap().item, 1);
    }

    #[test]
    fn priority_order_highest_first_fifo_within() {
        let mut c = q(Limits::unbounded(), Overflow::Block, Order::Priority);
        for (s, p) in [(1, 1), (2, 5), (3, 1), (4, 5), (5, 3)] {
            let _ = c.offer(s, s as u32, m(p));
        }
        let order: Vec<u32> = std::iter::from_fn(|| c.pop().map(|i| i.item)).collect();
        assert_eq!(order, vec![2, 4, 5, 1, 3]);
    }

    #[test]
    fn reinsert_goes_back_to_its_position() {
        let mut c = q(Limits::messages(3), Overflow::Block, Order::Fifo);
        for s in 1..=3 {
            let _ = c.offer(s, s as u32, m(0));
        }
        let first = c.pop().unwrap();
        let _ = c.offer(4, 4, m(0));
        assert!(c.reinsert(first.seq, first.item, first.meta).is_none());
        assert_eq!(c.len(), 4, "reinsert bypasses limits");
        let order: Vec<u32> = std::iter::from_fn(|| c.pop().map(|i| i.item)).collect();
        assert_eq!(order, vec![1, 2, 3, 4]);
    }

    #[test]
    fn remove_by_seq() {
        let mut c = q(Limits::unbounded(), Overflow::Block, Order::Priority);
        let _ = c.offer(1, 10, m(2));
        let _ = c.offer(2, 20, m(7));
        assert_eq!(c.remove(1).unwrap().item, 10);
        assert!(c.remove(1).is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn external_load_counts_against_limits() {
        let mut c = q(Limits::new(3, 100), Overflow::Block, Order::Fifo);
        c.set_external(2, 0);
        assert!(matches!(c.offer(1, 1, m(0)), Offer::Accepted { .. }));
        assert!(matches!(c.offer(2, 2, m(0)), Offer::Full(_)));
        let mut d = q(Limits::new(3, 100), Overflow::DropOldest, Order::Fifo);
        d.set_external(3, 0);
        assert!(
            matches!(
                d.offer(1, 1, m(0)),
                Offer::Dropped {
                    reason: DropReason::Newest,
                    ..
                }
            ),
            "nothing to evict inside: the incoming one is dropped"
        );
    }

    #[test]
    fn shrink_never_drops_and_eviction_only_swaps() {
        let mut c = q(Limits::messages(4), Overflow::DropOldest, Order::Fifo);
        for s in 1..=4 {
            let _ = c.offer(s, s as u32, m(0));
        }
        c.set_limits(Limits::messages(2));
        assert_eq!(c.len(), 4);
        match c.offer(5, 5, m(0)) {
            Offer::Accepted { evicted } => assert_eq!(evicted.len(), 1),
            o => panic!("unexpected {o:?}"),
        }
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn too_large_is_handed_back() {
        let mut c = q(Limits::new(10, 5), Overflow::DropOldest, Order::Fifo);
        let meta = Meta {
            weight: 6,
            priority: 0,
            key: None,
        };
        assert!(matches!(c.offer(1, 1, meta), Offer::TooLarge(_)));
    }
}
