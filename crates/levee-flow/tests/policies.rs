//! Every overflow policy and delivery order, through the channel, with drop reasons and hooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_flow::{Config, DropReason, Order, Overflow, SendError, Sent, channel};

type Log<T> = Arc<Mutex<Vec<(T, DropReason)>>>;

fn hooked<T: Send + 'static>(cfg: Config<T>) -> (Config<T>, Log<T>) {
    let log: Log<T> = Arc::default();
    let l = log.clone();
    (cfg.on_drop(move |m, r| l.lock().unwrap().push((m, r))), log)
}

fn drain<T>(rx: &levee_flow::Receiver<T>) -> Vec<T> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test]
async fn block_waits_for_room_and_try_send_hands_back_full() {
    let (tx, rx) = channel(Config::<u32>::bounded(2)).unwrap();
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    assert!(matches!(tx.try_send(3), Err(SendError::Full(3))));
    let tx2 = tx.clone();
    let h = tokio::spawn(async move { tx2.send(3).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!h.is_finished(), "send must wait while full");
    assert_eq!(rx.recv().await, Some(1));
    assert_eq!(h.await.unwrap().unwrap(), Sent::Queued { evicted: 0 });
    assert_eq!(drain(&rx), vec![2, 3]);
    let s = rx.stats();
    assert_eq!((s.sent, s.received, s.dropped, s.rejected), (3, 3, 0, 1));
}

#[tokio::test]
async fn block_send_timeout_hands_back_the_message() {
    let (tx, _rx) = channel(Config::<u32>::bounded(1)).unwrap();
    tx.send(1).await.unwrap();
    let e = tx.send_timeout(2, Duration::from_millis(20)).await;
    assert!(matches!(e, Err(SendError::Timeout(2))));
    assert_eq!(tx.stats().rejected, 1);
}

#[tokio::test]
async fn reject_returns_an_error_holding_the_message() {
    let (tx, rx) = channel(Config::<u32>::bounded(1).overflow(Overflow::Reject)).unwrap();
    tx.send(1).await.unwrap();
    let e = tx.send(2).await.unwrap_err();
    assert_eq!(e.into_inner(), 2);
    let s = rx.stats();
    assert_eq!(
        (s.sent, s.rejected, s.dropped),
        (1, 1, 0),
        "rejected is not sent"
    );
}

#[tokio::test]
async fn drop_newest_discards_and_counts_the_incoming() {
    let (cfg, log) = hooked(Config::<u32>::bounded(2).overflow(Overflow::DropNewest));
    let (tx, rx) = channel(cfg).unwrap();
    for i in 0..5 {
        tx.send(i).await.unwrap();
    }
    assert_eq!(drain(&rx), vec![0, 1]);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (2, DropReason::Newest),
            (3, DropReason::Newest),
            (4, DropReason::Newest)
        ]
    );
    let s = rx.stats();
    assert_eq!(s.dropped_by.get(DropReason::Newest), 3);
    assert!(s.balanced());
}

#[tokio::test]
async fn drop_oldest_evicts_to_the_hook() {
    let (cfg, log) = hooked(Config::<u32>::bounded(3).overflow(Overflow::DropOldest));
    let (tx, rx) = channel(cfg).unwrap();
    for i in 0..6 {
        tx.send(i).await.unwrap();
    }
    assert_eq!(drain(&rx), vec![3, 4, 5]);
    let dropped: Vec<u32> = log.lock().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(dropped, vec![0, 1, 2]);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|x| x.1 == DropReason::Oldest)
    );
}

#[tokio::test]
async fn conflate_single_slot_is_latest_wins() {
    let (tx, rx) = channel(Config::<u32>::bounded(1).overflow(Overflow::Conflate)).unwrap();
    for i in 0..10 {
        tx.send(i).await.unwrap();
    }
    assert_eq!(drain(&rx), vec![9]);
    assert_eq!(rx.stats().dropped_by.get(DropReason::Conflated), 9);
}

#[tokio::test]
async fn conflate_per_key_keeps_the_latest_of_every_key() {
    let (cfg, log) = hooked(Config::<(String, u32)>::bounded(8).conflate_by(|m| m.0.clone()));
    let (tx, rx) = channel(cfg).unwrap();
    for round in 0..5 {
        for k in ["a", "b", "c"] {
            tx.send((k.to_string(), round)).await.unwrap();
        }
    }
    let mut got = drain(&rx);
    got.sort();
    assert_eq!(got, vec![("a".into(), 4), ("b".into(), 4), ("c".into(), 4)]);
    assert_eq!(log.lock().unwrap().len(), 12);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|x| x.1 == DropReason::Conflated)
    );
}

#[tokio::test]
async fn conflate_capacity_counts_keys_and_a_new_key_evicts_the_oldest() {
    let (cfg, log) = hooked(Config::<(u8, u32)>::bounded(2).conflate_by(|m| vec![m.0]));
    let (tx, rx) = channel(cfg).unwrap();
    tx.send((1, 0)).await.unwrap();
    tx.send((2, 0)).await.unwrap();
    tx.send((3, 0)).await.unwrap();
    assert_eq!(drain(&rx), vec![(2, 0), (3, 0)]);
    assert_eq!(*log.lock().unwrap(), vec![((1, 0), DropReason::Oldest)]);
}

#[tokio::test]
async fn shed_priority_evicts_lowest_oldest_for_a_higher_one() {
    let (cfg, log) = hooked(
        Config::<(u8, u32)>::bounded(3)
            .overflow(Overflow::ShedPriority)
            .priority_by(|m| m.0),
    );
    let (tx, rx) = channel(cfg).unwrap();
    tx.send((1, 0)).await.unwrap();
    tx.send((0, 1)).await.unwrap();
    tx.send((0, 2)).await.unwrap();
    // Outranks the lowest (priority 0): evicts the oldest of them, (0, 1).
    assert_eq!(tx.send((5, 3)).await.unwrap(), Sent::Queued { evicted: 1 });
    // Does not outrank anything (lowest queued is 0, incoming 0): dropped.
    assert_eq!(
        tx.send((0, 4)).await.unwrap(),
        Sent::Dropped(DropReason::Outranked)
    );
    assert_eq!(drain(&rx), vec![(1, 0), (0, 2), (5, 3)], "FIFO delivery");
    assert_eq!(
        *log.lock().unwrap(),
        vec![((0, 1), DropReason::Shed), ((0, 4), DropReason::Outranked)]
    );
}

#[tokio::test]
async fn priority_order_delivers_highest_first_fifo_within() {
    let (tx, rx) = channel(
        Config::<(u8, u32)>::bounded(10)
            .order(Order::Priority)
            .priority_by(|m| m.0),
    )
    .unwrap();
    for (i, p) in [1u8, 3, 1, 3, 2].into_iter().enumerate() {
        tx.send((p, i as u32)).await.unwrap();
    }
    assert_eq!(drain(&rx), vec![(3, 1), (3, 3), (2, 4), (1, 0), (1, 2)]);
}

#[tokio::test]
async fn receivers_gone_drops_queued_as_disconnected_and_sends_fail_closed() {
    let (cfg, log) = hooked(Config::<u32>::bounded(4));
    let (tx, rx) = channel(cfg).unwrap();
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    let mon = tx.monitor();
    drop(rx);
    assert!(matches!(tx.send(3).await, Err(SendError::Closed(3))));
    assert_eq!(log.lock().unwrap().len(), 2);
    let s = mon.stats();
    assert_eq!(s.dropped_by.get(DropReason::Disconnected), 2);
    assert!(s.balanced());
}
