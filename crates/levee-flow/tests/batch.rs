//! recv_batch / send_batch.

use std::time::{Duration, Instant};

use levee_flow::{Config, SendError, channel};

#[tokio::test]
async fn recv_batch_returns_as_soon_as_max_is_reached() {
    let (tx, rx) = channel(Config::<u32>::bounded(100)).unwrap();
    tx.send_batch(0..25).await.unwrap();
    let t = Instant::now();
    let b = rx.recv_batch(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(b, (0..10).collect::<Vec<_>>());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn recv_batch_returns_what_arrived_at_the_timeout() {
    let (tx, rx) = channel(Config::<u32>::bounded(100)).unwrap();
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    let b = rx.recv_batch(10, Duration::from_millis(30)).await.unwrap();
    assert_eq!(b, vec![1, 2]);
    let empty = rx.recv_batch(10, Duration::from_millis(10)).await.unwrap();
    assert!(
        empty.is_empty(),
        "timeout with nothing: empty batch, not None"
    );
}

#[tokio::test]
async fn recv_batch_collects_messages_that_arrive_while_waiting() {
    let (tx, rx) = channel(Config::<u32>::bounded(100)).unwrap();
    let h = tokio::spawn(async move {
        for i in 0..5 {
            tx.send(i).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let b = rx.recv_batch(5, Duration::from_secs(5)).await.unwrap();
    assert_eq!(b, vec![0, 1, 2, 3, 4]);
    h.await.unwrap();
}

#[tokio::test]
async fn final_partial_batch_is_delivered_then_none() {
    let (tx, rx) = channel(Config::<u32>::bounded(100)).unwrap();
    tx.send_batch(0..23).await.unwrap();
    drop(tx);
    let mut sizes = vec![];
    while let Some(b) = rx.recv_batch(10, Duration::from_secs(5)).await {
        sizes.push(b.len());
    }
    assert_eq!(sizes, vec![10, 10, 3]);
}

#[tokio::test]
async fn send_batch_waits_for_room_and_reports_the_rest_on_failure() {
    let (tx, rx) = channel(Config::<u32>::bounded(4)).unwrap();
    let r = tokio::spawn(async move {
        let mut got = vec![];
        while let Some(b) = rx.recv_batch(3, Duration::from_millis(50)).await {
            got.extend(b);
        }
        got
    });
    assert_eq!(tx.send_batch(0..50).await.unwrap(), 50);
    drop(tx);
    assert_eq!(r.await.unwrap(), (0..50).collect::<Vec<_>>());

    let (tx, rx) =
        channel(Config::<u32>::bounded(2).overflow(levee_flow::Overflow::Reject)).unwrap();
    let (e, rest) = tx.send_batch(0..5).await.unwrap_err();
    assert!(matches!(e, SendError::Rejected(2)));
    assert_eq!(rest, vec![3, 4]);
    assert_eq!(rx.stats().sent, 2);
}
