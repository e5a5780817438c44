//! The accounting invariant `sent = received + dropped + len`, and "every message is received
//! exactly once, dropped (and reported) exactly once, or handed back exactly once", checked by
//! proptest for every policy and order against the pure core and the channel, and by a
//! multi-threaded stress test under real concurrency.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_flow::{
    Config, DropReason, Limits, Meta, Offer, Order, Overflow, PolicyQueue, SendError, channel,
};
use proptest::prelude::*;

const POLICIES: [Overflow; 6] = [
    Overflow::Block,
    Overflow::Reject,
    Overflow::DropNewest,
    Overflow::DropOldest,
    Overflow::Conflate,
    Overflow::ShedPriority,
];

#[derive(Debug, Clone)]
enum Op {
    Offer { weight: u64, prio: u8, key: u8 },
    Pop,
    Remove(usize),
    Reinsert(usize),
    Limits(usize, u64),
    External(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..40, 0u8..4, 0u8..4).prop_map(|(weight, prio, key)| Op::Offer { weight, prio, key }),
        3 => Just(Op::Pop),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::Reinsert),
        1 => (1usize..8, 20u64..200).prop_map(|(m, b)| Op::Limits(m, b)),
        1 => (0usize..3, 0u64..40).prop_map(|(c, b)| Op::External(c, b)),
    ]
}

/// Where each item is, from the model's point of view.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Fate {
    Queued,
    Popped,
    Dropped,
    HandedBack,
}

fn check_core(policy: Overflow, order: Order, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut q: PolicyQueue<u64, u8> = PolicyQueue::new(Limits::new(4, 100), policy, order);
    let mut fate: BTreeMap<u64, Fate> = BTreeMap::new();
    let mut weights: HashMap<u64, u64> = HashMap::new();
    let mut popped: Vec<(u64, u64, Meta<u8>)> = Vec::new();
    let (mut sent, mut received, mut dropped) = (0u64, 0u64, 0u64);
    let mut next = 0u64;
    let mut ext = (0usize, 0u64);
    // The model of delivery positions: an item's sequence number, except that under `Conflate` a
    // replacement takes over the replaced item's position, and the item popped last goes back
    // to the position it held.
    let mut pos: HashMap<u64, u64> = HashMap::new();
    let mut keyof: HashMap<u64, u8> = HashMap::new();
    let mut last_pop: Option<u64> = None;
    for op in ops {
        match op {
            Op::Offer { weight, prio, key } => {
                let id = next;
                next += 1;
                weights.insert(id, weight);
                let (len0, bytes0) = (q.len(), q.bytes());
                let lim = q.limits();
                let meta = Meta {
                    weight,
                    priority: prio,
                    key: Some(key),
                };
                keyof.insert(id, key);
                match q.offer(id, id, meta) {
                    Offer::Accepted { evicted } => {
                        sent += 1;
                        fate.insert(id, Fate::Queued);
                        pos.insert(id, id);
                        for e in evicted {
                            if e.reason == DropReason::Conflated {
                                prop_assert_eq!(keyof[&e.entry.item], key);
                                pos.insert(id, pos[&e.entry.item]);
                            }
                            prop_assert_eq!(fate.get(&e.entry.item), Some(&Fate::Queued));
                            fate.insert(e.entry.item, Fate::Dropped);
                            dropped += 1;
                            match e.reason {
                                DropReason::Oldest => prop_assert!(matches!(
                                    policy,
                                    Overflow::DropOldest | Overflow::Conflate
                                )),
                                DropReason::Conflated => {
                                    prop_assert_eq!(policy, Overflow::Conflate);
                                }
                                DropReason::Shed => {
                                    prop_assert_eq!(policy, Overflow::ShedPriority);
                                    prop_assert!(
                                        e.entry.meta.priority < prio,
                                        "shed only lower priorities"
                                    );
                                }
                                r => prop_assert!(false, "unexpected eviction reason {:?}", r),
                            }
                        }
                        // Per dimension: never beyond the limit, except by not growing when
                        // the limits were lowered below the content (swap only).
                        let msgs_ok = lim.max_messages.is_none_or(|m| q.len() + ext.0 <= m)
                            || q.len() <= len0;
                        let bytes_ok = lim.max_bytes.is_none_or(|m| q.bytes() + ext.1 <= m)
                            || q.bytes() <= bytes0;
                        prop_assert!(
                            msgs_ok && bytes_ok,
                            "limits exceeded: {:?} len {}->{} bytes {}->{} ext {:?} {:?}",
                            policy,
                            len0,
                            q.len(),
                            bytes0,
                            q.bytes(),
                            ext,
                            lim
                        );
                    }
                    Offer::Dropped { entry, reason } => {
                        prop_assert_eq!(entry.item, id);
                        prop_assert!(matches!(reason, DropReason::Newest | DropReason::Outranked));
                        sent += 1;
                        dropped += 1;
                        fate.insert(id, Fate::Dropped);
                    }
                    Offer::Full(i) => {
                        prop_assert_eq!(policy, Overflow::Block);
                        prop_assert_eq!(i.item, id);
                        fate.insert(id, Fate::HandedBack);
                    }
                    Offer::Rejected(i) => {
                        prop_assert_eq!(policy, Overflow::Reject);
                        prop_assert_eq!(i.item, id);
                        fate.insert(id, Fate::HandedBack);
                    }
                    Offer::TooLarge(i) => {
                        prop_assert!(weight > lim.max_bytes.unwrap());
                        prop_assert_eq!(i.item, id);
                        fate.insert(id, Fate::HandedBack);
                    }
                }
            }
            Op::Pop => {
                if let Some(i) = q.pop() {
                    prop_assert_eq!(fate.get(&i.item), Some(&Fate::Queued));
                    fate.insert(i.item, Fate::Popped);
                    received += 1;
                    last_pop = Some(i.item);
                    popped.push((i.seq, i.item, i.meta));
                }
            }
            Op::Remove(k) => {
                let queued: Vec<u64> = fate
                    .iter()
                    .filter(|(_, f)| **f == Fate::Queued)
                    .map(|(i, _)| *i)
                    .collect();
                if !queued.is_empty() {
                    let id = queued[k % queued.len()];
                    let i = q.remove(id);
                    prop_assert!(i.is_some(), "queued id {} not found", id);
                    // Removal (TTL/purge) counts as a drop for the accounting.
                    fate.insert(id, Fate::Dropped);
                    dropped += 1;
                }
            }
            Op::Reinsert(k) => {
                if !popped.is_empty() {
                    let (seq, item, meta) = popped.swap_remove(k % popped.len());
                    prop_assert_eq!(fate.get(&item), Some(&Fate::Popped));
                    received -= 1;
                    fate.insert(item, Fate::Queued);
                    let mut p = item;
                    if policy == Overflow::Conflate && last_pop == Some(item) {
                        p = pos[&item];
                        last_pop = None;
                    }
                    pos.insert(item, p);
                    let other = fate.iter().find(|(i, f)| {
                        **f == Fate::Queued && **i != item && keyof[*i] == keyof[&item]
                    });
                    let other = other.map(|(i, _)| *i);
                    if let Some(e) = q.reinsert(seq, item, meta) {
                        prop_assert_eq!(policy, Overflow::Conflate);
                        prop_assert_eq!(e.reason, DropReason::Conflated);
                        let other = other.expect("superseded only by a same-key item");
                        let (newer, older) = if other > item {
                            (other, item)
                        } else {
                            (item, other)
                        };
                        prop_assert_eq!(e.entry.item, older);
                        pos.insert(newer, pos[&newer].min(pos[&older]));
                        fate.insert(e.entry.item, Fate::Dropped);
                        dropped += 1;
                    }
                }
            }
            Op::Limits(m, b) => q.set_limits(Limits::new(m, b)),
            Op::External(c, b) => {
                ext = (c, b);
                q.set_external(c, b);
            }
        }
        // The invariant, and the container's own view of what it holds.
        prop_assert_eq!(sent, received + dropped + q.len() as u64);
        let queued: Vec<u64> = fate
            .iter()
            .filter(|(_, f)| **f == Fate::Queued)
            .map(|(i, _)| *i)
            .collect();
        prop_assert_eq!(queued.len(), q.len());
        prop_assert_eq!(queued.iter().map(|i| weights[i]).sum::<u64>(), q.bytes());
    }
    // Drain: delivery order must respect the declared order, by position.
    let rest = q.drain();
    for w in rest.windows(2) {
        let (a, b) = (pos[&w[0].item], pos[&w[1].item]);
        match order {
            Order::Fifo => prop_assert!(a < b, "position order {} then {}", a, b),
            _ => prop_assert!(
                w[0].meta.priority > w[1].meta.priority
                    || (w[0].meta.priority == w[1].meta.priority && a < b)
            ),
        }
    }
    for i in &rest {
        prop_assert_eq!(fate.insert(i.item, Fate::Popped), Some(Fate::Queued));
    }
    prop_assert!(fate.values().all(|f| *f != Fate::Queued));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn core_accounting_holds_for_every_policy_and_order(
        ops in proptest::collection::vec(op(), 1..120),
        p in 0usize..6,
        prio_order in any::<bool>(),
    ) {
        let order = if prio_order { Order::Priority } else { Order::Fifo };
        check_core(POLICIES[p], order, ops)?;
    }
}

#[derive(Debug, Clone)]
enum ChOp {
    Send { weight: u8, prio: u8, key: u8 },
    Recv,
    Close,
    Resize(usize),
}

fn ch_op() -> impl Strategy<Value = ChOp> {
    prop_oneof![
        6 => (0u8..30, 0u8..4, 0u8..3).prop_map(|(weight, prio, key)| ChOp::Send { weight, prio, key }),
        4 => Just(ChOp::Recv),
        1 => Just(ChOp::Close),
        1 => (1usize..8).prop_map(ChOp::Resize),
    ]
}

type Msg = (u64, u8, u8, u8); // id, weight, prio, key

fn check_channel(policy: Overflow, order: Order, ops: Vec<ChOp>) -> Result<(), TestCaseError> {
    let dropped_log: Arc<Mutex<Vec<(u64, DropReason)>>> = Arc::default();
    let d = dropped_log.clone();
    let cfg = Config::<Msg>::bounded(4)
        .max_bytes(80)
        .weigh_with(|m| m.1 as u64)
        .priority_by(|m| m.2)
        .order(order)
        .overflow(policy)
        .on_drop(move |m, r| d.lock().unwrap().push((m.0, r)));
    let cfg = if policy == Overflow::Conflate {
        cfg.conflate_by(|m: &Msg| vec![m.3])
    } else {
        cfg
    };
    let (tx, rx) = channel(cfg).unwrap();
    let mut received = Vec::new();
    let mut handed_back = Vec::new();
    let mut next = 0u64;
    for op in ops {
        match op {
            ChOp::Send { weight, prio, key } => {
                let id = next;
                next += 1;
                match tx.try_send((id, weight, prio, key)) {
                    Ok(_) => {}
                    Err(e) => {
                        let blocked = matches!(
                            e,
                            SendError::Full(_) | SendError::Rejected(_) | SendError::Closed(_)
                        );
                        prop_assert!(blocked, "unexpected {:?}", e);
                        handed_back.push(e.into_inner().0);
                    }
                }
            }
            ChOp::Recv => {
                if let Ok(m) = rx.try_recv() {
                    received.push(m.0);
                }
            }
            ChOp::Close => tx.close(),
            ChOp::Resize(n) => tx.set_limits(Limits::new(n, 80)).unwrap(),
        }
        let s = rx.stats();
        prop_assert!(s.balanced(), "{:?}", s);
        prop_assert_eq!(s.received, received.len() as u64);
        prop_assert_eq!(s.dropped, dropped_log.lock().unwrap().len() as u64);
    }
    tx.close();
    while let Ok(m) = rx.try_recv() {
        received.push(m.0);
    }
    let mut seen = vec![0u8; next as usize];
    for id in received
        .iter()
        .chain(handed_back.iter())
        .chain(dropped_log.lock().unwrap().iter().map(|x| &x.0))
    {
        seen[*id as usize] += 1;
    }
    prop_assert!(
        seen.iter().all(|n| *n == 1),
        "every id exactly once: {:?}",
        seen
    );
    let s = rx.stats();
    prop_assert_eq!(s.sent + handed_back.len() as u64, next);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn channel_accounting_holds_for_every_policy_and_order(
        ops in proptest::collection::vec(ch_op(), 1..100),
        p in 0usize..6,
        prio_order in any::<bool>(),
    ) {
        let order = if prio_order { Order::Priority } else { Order::Fifo };
        check_channel(POLICIES[p], order, ops)?;
    }
}

/// Real concurrency: several producers and consumers on a multi-threaded runtime, every policy;
/// a monitor checks the invariant on live snapshots; at the end each id was received, dropped
/// (reported to on_drop) or handed back exactly once.
#[test]
fn stress_every_policy_under_real_concurrency() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    for (pi, policy) in POLICIES.into_iter().enumerate() {
        for order in [Order::Fifo, Order::Priority] {
            rt.block_on(stress(policy, order, pi as u64));
        }
    }
}

async fn stress(policy: Overflow, order: Order, salt: u64) {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 5_000;
    let dropped_log: Arc<Mutex<Vec<u64>>> = Arc::default();
    let d = dropped_log.clone();
    let cfg = Config::<Msg>::bounded(16)
        .max_bytes(16 * 20)
        .weigh_with(|m| m.1 as u64)
        .priority_by(|m| m.2)
        .order(order)
        .overflow(policy)
        .on_drop(move |m, _| d.lock().unwrap().push(m.0));
    let cfg = if policy == Overflow::Conflate {
        cfg.conflate_by(|m: &Msg| vec![m.3])
    } else {
        cfg
    };
    let (tx, rx) = channel(cfg).unwrap();
    let mon = tx.monitor();
    let watcher = tokio::spawn(async move {
        let mut checks = 0;
        loop {
            let s = mon.stats();
            assert!(s.balanced(), "live snapshot unbalanced: {s:?}");
            checks += 1;
            if s.closed {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        checks
    });
    let consumers: Vec<_> = (0..3)
        .map(|c| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    if c == 0 {
                        match rx.recv_batch(7, Duration::from_millis(5)).await {
                            Some(b) => got.extend(b.into_iter().map(|m| m.0)),
                            None => break,
                        }
                    } else {
                        match rx.recv().await {
                            Some(m) => got.push(m.0),
                            None => break,
                        }
                    }
                    if got.len() % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                got
            })
        })
        .collect();
    drop(rx);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut back = Vec::new();
                for i in 0..PER {
                    let id = p * PER + i;
                    let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(salt);
                    let m = (
                        id,
                        (h % 20) as u8,
                        ((h >> 8) % 4) as u8,
                        ((h >> 16) % 5) as u8,
                    );
                    let r = if h.is_multiple_of(3) {
                        tx.try_send(m)
                    } else {
                        tx.send(m).await
                    };
                    if let Err(e) = r {
                        back.push(e.into_inner().0);
                    }
                }
                back
            })
        })
        .collect();
    drop(tx);
    let mut seen = vec![0u8; (PRODUCERS * PER) as usize];
    let mut handed = 0u64;
    for p in producers {
        for id in p.await.unwrap() {
            seen[id as usize] += 1;
            handed += 1;
        }
    }
    let mut got = Vec::new();
    for c in consumers {
        got.extend(c.await.unwrap());
    }
    assert!(watcher.await.unwrap() > 0);
    for id in got.iter().chain(dropped_log.lock().unwrap().iter()) {
        seen[*id as usize] += 1;
    }
    assert!(
        seen.iter().all(|n| *n == 1),
        "{policy:?}/{order:?}: an id was lost or duplicated"
    );
    assert_eq!(
        got.len() as u64 + dropped_log.lock().unwrap().len() as u64 + handed,
        PRODUCERS * PER
    );
}
