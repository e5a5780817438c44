//! Per-key conflation replaces in place: the newest value takes the oldest position, so a key
//! updated faster than the consumer drains is still delivered once per pass over the keys (it
//! used to be moved to the back on every update and could be overtaken for ever).

use std::time::Duration;

use levee_flow::{Config, DropReason, Limits, Meta, Offer, Order, PolicyQueue, channel};

const COLD: u64 = 100;
const HOT: u64 = 1_000;

/// Largest gap (in deliveries) between two deliveries of the hot key, counting from the start.
fn worst_gap(delivered: &[u64]) -> usize {
    let mut last = None;
    let mut worst = 0;
    for (i, k) in delivered.iter().enumerate() {
        if *k == HOT {
            worst = worst.max(i - last.map_or(0, |l: usize| l + 1));
            last = Some(i);
        }
    }
    worst.max(delivered.len() - last.map_or(0, |l| l + 1))
}

#[test]
fn core_a_hot_key_keeps_its_place_while_cold_keys_keep_arriving() {
    for order in [Order::Fifo, Order::Priority] {
        let mut q: PolicyQueue<(u64, u64), u64> = PolicyQueue::new(
            Limits::messages(COLD as usize + 1),
            levee_flow::Overflow::Conflate,
            order,
        );
        let mut seq = 0u64;
        let mut offer = |q: &mut PolicyQueue<(u64, u64), u64>, key: u64| {
            seq += 1;
            let meta = Meta {
                weight: 1,
                priority: 0,
                key: Some(key),
            };
            match q.offer(seq, (key, seq), meta) {
                Offer::Accepted { evicted } => {
                    assert!(evicted.iter().all(|e| e.reason == DropReason::Conflated));
                }
                o => panic!("unexpected {o:?}"),
            }
            seq
        };
        for k in 0..COLD {
            let _ = offer(&mut q, k);
        }
        let mut delivered = Vec::new();
        // Each step: the hot key is updated, a cold key is updated (all stay queued), and the
        // consumer takes one message: it is slower than the updates.
        for step in 0..20 * (COLD + 1) {
            let newest_hot = offer(&mut q, HOT);
            let _ = offer(&mut q, step % COLD);
            let (key, s) = q.pop().expect("never empty").item;
            if key == HOT {
                assert_eq!(
                    s, newest_hot,
                    "the hot key is delivered with its newest value"
                );
            }
            delivered.push(key);
        }
        let gap = worst_gap(&delivered);
        assert!(
            gap <= COLD as usize,
            "{order:?}: the hot key waited {gap} deliveries (more than one round of {COLD} keys)"
        );
        let hot = delivered.iter().filter(|k| **k == HOT).count();
        assert!(hot >= 20, "{order:?}: hot key delivered only {hot} times");
    }
}

/// The case from the issue, in (paused) real time: one hot key updated every 1 ms, 100 cold
/// keys updated continuously, a consumer that needs 2 ms per message. The hot key is delivered
/// at least once per round of keys.
#[tokio::test(start_paused = true)]
async fn channel_hot_key_updated_every_ms_is_delivered_once_per_round_of_keys() {
    let (tx, rx) =
        channel(Config::<(u64, u64)>::bounded(COLD as usize + 1).conflate_by(|m: &(u64, u64)| m.0))
            .unwrap();
    let hot_tx = tx.clone();
    let hot = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for v in 0.. {
            tick.tick().await;
            if hot_tx.send((HOT, v)).await.is_err() {
                return;
            }
        }
    });
    let cold = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(100));
        for v in 0.. {
            tick.tick().await;
            if tx.send((v % COLD, v)).await.is_err() {
                return;
            }
        }
    });
    // Let every cold key be queued before the hot key gets its first place.
    tokio::time::sleep(Duration::from_millis(15)).await;
    let mut delivered = Vec::new();
    while delivered.len() < 10 * (COLD as usize + 1) {
        let (k, _) = rx.recv().await.expect("open");
        delivered.push(k);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = rx.stats();
    assert!(s.balanced(), "{s:?}");
    assert!(
        s.dropped_by.get(DropReason::Conflated) > 0,
        "updates were conflated"
    );
    drop(rx);
    hot.await.unwrap();
    cold.await.unwrap();
    let gap = worst_gap(&delivered);
    assert!(
        gap <= COLD as usize,
        "the hot key waited {gap} deliveries (more than one round of {COLD} cold keys)"
    );
}

#[tokio::test]
async fn a_replacement_keeps_the_position_of_the_value_it_replaces() {
    let (tx, rx) =
        channel(Config::<(&str, u32)>::bounded(8).conflate_by(|m: &(&str, u32)| m.0)).unwrap();
    for m in [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2), ("a", 3)] {
        tx.send(m).await.unwrap();
    }
    let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got, vec![("a", 3), ("b", 2), ("c", 1)]);
    assert_eq!(rx.stats().dropped_by.get(DropReason::Conflated), 3);
}

#[test]
fn an_item_popped_and_put_straight_back_keeps_its_place() {
    let mut q: PolicyQueue<u32, u8> = PolicyQueue::new(
        Limits::messages(8),
        levee_flow::Overflow::Conflate,
        Order::Fifo,
    );
    let meta = |k| Meta {
        weight: 1,
        priority: 0,
        key: Some(k),
    };
    let _ = q.offer(1, 10, meta(1));
    let _ = q.offer(2, 20, meta(2));
    let _ = q.offer(3, 11, meta(1)); // replaces 10 in place: seq 3 at position 1
    let head = q.pop().unwrap();
    assert_eq!((head.seq, head.item), (3, 11));
    // The broker pops a message it may not deliver yet and puts it back: it keeps position 1.
    assert!(q.reinsert(head.seq, head.item, head.meta).is_none());
    assert_eq!(q.pop().unwrap().item, 11);
    assert_eq!(q.pop().unwrap().item, 20);
}

#[test]
fn a_redelivered_older_value_is_superseded_and_the_newer_takes_the_earlier_place() {
    let mut q: PolicyQueue<u32, u8> = PolicyQueue::new(
        Limits::messages(8),
        levee_flow::Overflow::Conflate,
        Order::Fifo,
    );
    let meta = |k| Meta {
        weight: 1,
        priority: 0,
        key: Some(k),
    };
    let _ = q.offer(1, 10, meta(1));
    let first = q.pop().unwrap(); // delivered, not yet acknowledged
    let _ = q.offer(2, 20, meta(2));
    let _ = q.offer(3, 11, meta(1)); // a newer value of key 1, queued at position 3
    let _ = q.pop().unwrap(); // something else popped last
    let _ = q.offer(4, 30, meta(3));
    // Key 1's delivery is nacked: the queued newer value wins and takes position 1.
    let sup = q
        .reinsert(first.seq, first.item, first.meta)
        .expect("superseded");
    assert_eq!((sup.entry.item, sup.reason), (10, DropReason::Conflated));
    let rest: Vec<u32> = std::iter::from_fn(|| q.pop().map(|i| i.item)).collect();
    assert_eq!(rest, vec![11, 30]);
}
