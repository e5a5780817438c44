//! Message and byte limits, both enforced; explicit unbounded; bad configurations are errors.

use std::time::Duration;

use bytes::Bytes;
use levee_flow::{Config, ConfigError, Limits, Overflow, SendError, Weigh, channel};

#[tokio::test]
async fn byte_limit_blocks_even_with_message_room() {
    let (tx, rx) = channel(Config::<Vec<u8>>::bounded(100).max_bytes(1000).weigh()).unwrap();
    tx.send(vec![0; 600]).await.unwrap();
    assert!(matches!(tx.try_send(vec![0; 600]), Err(SendError::Full(_))));
    tx.send(vec![0; 400]).await.unwrap();
    assert_eq!(rx.stats().bytes, 1000);
    assert_eq!(rx.recv().await.unwrap().len(), 600);
    tx.send(vec![0; 600]).await.unwrap();
    assert!(rx.stats().high_water_bytes <= 1000);
}

#[tokio::test]
async fn message_heavier_than_max_bytes_is_too_large_for_every_policy() {
    for p in [
        Overflow::Block,
        Overflow::Reject,
        Overflow::DropNewest,
        Overflow::DropOldest,
        Overflow::Conflate,
        Overflow::ShedPriority,
    ] {
        let (tx, _rx) = channel(
            Config::<String>::bounded(4)
                .max_bytes(10)
                .weigh()
                .overflow(p),
        )
        .unwrap();
        let e = tx.send("x".repeat(11)).await.unwrap_err();
        assert!(matches!(e, SendError::TooLarge(_)), "{p:?}");
    }
}

#[tokio::test]
async fn drop_oldest_evicts_as_many_as_needed_for_bytes() {
    let (tx, rx) = channel(
        Config::<Bytes>::bounded(100)
            .max_bytes(10)
            .weigh()
            .overflow(Overflow::DropOldest),
    )
    .unwrap();
    for _ in 0..5 {
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
    }
    tx.send(Bytes::from_static(b"123456")).await.unwrap();
    let s = rx.stats();
    assert_eq!((s.len, s.bytes, s.dropped), (3, 10, 3));
}

#[test]
fn weigh_impls_measure_length() {
    assert_eq!(Bytes::from_static(b"abc").weigh(), 3);
    assert_eq!(vec![1u8; 7].weigh(), 7);
    assert_eq!(String::from("hello").weigh(), 5);
}

#[tokio::test]
async fn custom_weigher_closure() {
    let (tx, rx) = channel(Config::<u64>::bounded(100).max_bytes(10).weigh_with(|m| *m)).unwrap();
    tx.send(7).await.unwrap();
    assert!(tx.try_send(4).is_err());
    tx.send(3).await.unwrap();
    assert_eq!(rx.stats().bytes, 10);
}

#[test]
fn invalid_configurations_are_errors_not_panics() {
    assert_eq!(
        channel(Config::<u8>::bounded(0)).err(),
        Some(ConfigError::Zero("max_messages"))
    );
    assert_eq!(
        channel(Config::<u8>::bounded(5).max_bytes(100)).err(),
        Some(ConfigError::NoWeigher)
    );
    assert_eq!(
        channel(Config::<Vec<u8>>::bounded(5).max_bytes(0).weigh()).err(),
        Some(ConfigError::Zero("max_bytes"))
    );
    let (tx, _rx) = channel(Config::<u8>::bounded(5)).unwrap();
    assert_eq!(
        tx.set_limits(Limits::unbounded()),
        Err(ConfigError::NoLimit)
    );
    assert_eq!(
        tx.set_limits(Limits::messages(0)),
        Err(ConfigError::Zero("max_messages"))
    );
}

#[tokio::test]
async fn unbounded_only_when_asked_and_it_grows() {
    let (tx, rx) = levee_flow::unbounded::<u32>();
    for i in 0..10_000 {
        tx.try_send(i).unwrap();
    }
    let s = rx.stats();
    assert_eq!((s.len, s.max_messages), (10_000, None));
}

#[tokio::test]
async fn growing_limits_wakes_blocked_senders() {
    let (tx, rx) = channel(Config::<u32>::bounded(1)).unwrap();
    tx.send(0).await.unwrap();
    let t2 = tx.clone();
    let h = tokio::spawn(async move {
        t2.send(1).await.unwrap();
        t2.send(2).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.set_limits(Limits::messages(3)).unwrap();
    tokio::time::timeout(Duration::from_secs(2), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.stats().len, 3);
}

#[tokio::test]
async fn shrinking_limits_drops_nothing() {
    let (tx, rx) = channel(Config::<u32>::bounded(10).overflow(Overflow::DropOldest)).unwrap();
    for i in 0..10 {
        tx.send(i).await.unwrap();
    }
    tx.set_limits(Limits::messages(2)).unwrap();
    let s = rx.stats();
    assert_eq!((s.len, s.dropped, s.resizes), (10, 0, 1));
    let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}
