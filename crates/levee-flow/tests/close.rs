//! Close semantics: receivers drain what is queued then get None; sends fail with Closed.

use std::time::Duration;

use levee_flow::{Config, RecvError, SendError, channel};

#[tokio::test]
async fn dropping_all_senders_lets_receivers_drain_then_end() {
    let (tx, rx) = channel(Config::<u32>::bounded(10)).unwrap();
    let tx2 = tx.clone();
    tx.send(1).await.unwrap();
    tx2.send(2).await.unwrap();
    drop(tx);
    assert!(!rx.is_closed(), "one sender remains");
    drop(tx2);
    assert_eq!(rx.recv().await, Some(1));
    assert_eq!(rx.recv().await, Some(2));
    assert_eq!(rx.recv().await, None);
    assert_eq!(rx.try_recv(), Err(RecvError::Closed));
}

#[tokio::test]
async fn close_wakes_waiting_receivers() {
    let (tx, rx) = channel(Config::<u32>::bounded(10)).unwrap();
    let rs: Vec<_> = (0..3)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move { rx.recv().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.close();
    for r in rs {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(2), r)
                .await
                .unwrap()
                .unwrap(),
            None
        );
    }
    assert!(matches!(tx.send(1).await, Err(SendError::Closed(1))));
}

#[tokio::test]
async fn close_wakes_blocked_senders_with_closed() {
    let (tx, rx) = channel(Config::<u32>::bounded(1)).unwrap();
    tx.send(0).await.unwrap();
    let t2 = tx.clone();
    let h = tokio::spawn(async move { t2.send(1).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    rx.close();
    let r = tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(SendError::Closed(1))));
    assert_eq!(rx.recv().await, Some(0), "queued messages still drain");
    assert_eq!(rx.recv().await, None);
}

#[tokio::test]
async fn recv_timeout_times_out_then_closed() {
    let (tx, rx) = channel(Config::<u32>::bounded(1)).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(10)).await,
        Err(RecvError::Timeout)
    );
    drop(tx);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(10)).await,
        Err(RecvError::Closed)
    );
}

#[tokio::test]
async fn cancelled_recv_does_not_lose_a_wakeup() {
    let (tx, rx) = channel(Config::<u32>::bounded(10)).unwrap();
    let rx2 = rx.clone();
    let waiter = tokio::spawn(async move { rx2.recv().await });
    // A receiver that gives up: its registration must not swallow the notification.
    let _ = tokio::time::timeout(Duration::from_millis(5), rx.recv()).await;
    tx.send(7).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(7));
}

#[test]
fn blocking_variants_work_from_threads() {
    let (tx, rx) = channel(Config::<u32>::bounded(2)).unwrap();
    let p = std::thread::spawn(move || {
        for i in 0..100 {
            tx.blocking_send(i).unwrap();
        }
    });
    let mut got = vec![];
    while let Some(v) = rx.blocking_recv() {
        got.push(v);
    }
    p.join().unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn cancelled_waiting_sender_does_not_strand_the_others() {
    let (tx, rx) = channel(Config::<u32>::bounded(1)).unwrap();
    tx.send(0).await.unwrap();
    // A sender that gives up while waiting for room.
    assert!(matches!(
        tx.send_timeout(99, Duration::from_millis(5)).await,
        Err(SendError::Timeout(99))
    ));
    let t2 = tx.clone();
    let waiting = tokio::spawn(async move { t2.send(1).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(rx.recv().await, Some(0));
    tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the remaining sender must be woken")
        .unwrap()
        .unwrap();
    assert_eq!(rx.recv().await, Some(1));
}

#[tokio::test]
async fn closed_watchers_do_not_steal_sender_wakeups() {
    let (tx, rx) = channel(Config::<u32>::bounded(1)).unwrap();
    let mon = tx.monitor();
    let watcher = tokio::spawn(async move { mon.closed().await });
    tx.send(0).await.unwrap();
    let t2 = tx.clone();
    let waiting = tokio::spawn(async move { t2.send(1).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(rx.recv().await, Some(0));
    tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("sender woken, not the closed() watcher")
        .unwrap()
        .unwrap();
    assert!(!watcher.is_finished());
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .unwrap()
        .unwrap();
}
