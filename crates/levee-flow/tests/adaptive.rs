//! Adaptive capacity driven by the channel's measured utilisation: grows under sustained
//! pressure, shrinks when idle, never loses, duplicates or reorders a message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_flow::{AdaptiveConfig, Config, Resize, channel, spawn_adaptive};

#[tokio::test]
async fn grows_under_pressure_and_shrinks_when_idle_without_losing_order() {
    let (tx, rx) = channel(Config::<u32>::bounded(10)).unwrap();
    let resizes: Arc<Mutex<Vec<Resize>>> = Arc::default();
    let r = resizes.clone();
    let mut cfg = AdaptiveConfig::new(10, 100);
    cfg.window = 3;
    let task = spawn_adaptive(&tx.monitor(), cfg, Duration::from_millis(5), move |x| {
        r.lock().unwrap().push(x);
    })
    .unwrap();

    // Keeps the channel open (the controller stops when it closes).
    let keep_open = tx.clone();
    // A producer that keeps the queue full while the consumer is slow.
    let producer = tokio::spawn(async move {
        for i in 0..400u32 {
            tx.send(i).await.unwrap();
        }
    });
    let mut got = Vec::new();
    for _ in 0..200 {
        got.push(rx.recv().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let grown = rx.stats().max_messages.unwrap();
    assert!(grown > 10, "should have grown, capacity {grown}");
    // Consumer catches up fast: the queue empties and the controller shrinks.
    while let Some(v) = rx.recv().await {
        got.push(v);
        if got.len() == 400 {
            break;
        }
    }
    producer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = rx.stats();
    assert!(
        s.max_messages.unwrap() < grown,
        "should have shrunk from {grown}"
    );
    assert_eq!(
        got,
        (0..400).collect::<Vec<_>>(),
        "no loss, duplicate or reorder"
    );
    assert_eq!((s.sent, s.received, s.dropped), (400, 400, 0));
    let rs = resizes.lock().unwrap();
    assert!(rs.iter().all(|r| (10..=100).contains(&r.to)));
    assert_eq!(s.resizes as usize, rs.len());
    drop(rs);
    drop(keep_open);
    task.abort();
}

#[tokio::test]
async fn controller_task_ends_when_the_channel_closes() {
    let (tx, _rx) = channel(Config::<u32>::bounded(10)).unwrap();
    let task = spawn_adaptive(
        &tx.monitor(),
        AdaptiveConfig::new(5, 50),
        Duration::from_millis(5),
        |_| {},
    )
    .unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}
