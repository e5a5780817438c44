//! The producer's circuit breaker opens after repeated rejections and then fails publishes fast,
//! without sending them.

mod common;

use std::time::Duration;

use levee_client::{
    BreakerConfig, BreakerState, ClientError, ErrorCode, Message, Overflow, ProducerOptions,
    PublishOutcome, TryPublishError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_repeated_rejections() {
    let b = common::broker().await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Reject, 2))
        .await
        .unwrap();
    let producer = client
        .producer(
            "q",
            ProducerOptions {
                breaker: Some(BreakerConfig::new(3, Duration::from_secs(60))),
                ..ProducerOptions::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            producer.send(Message::new("ok")).await,
            Ok(PublishOutcome::Stored { .. })
        ));
    }
    for _ in 0..3 {
        match producer.send(Message::new("full")).await {
            Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::QueueFull),
            r => panic!("expected a queue-full rejection, got {r:?}"),
        }
    }
    assert_eq!(producer.breaker_state(), Some(BreakerState::Open));
    let frames = client.stats().publish_frames;
    assert_eq!(
        producer.publish(Message::new("x")).await.map(|_| ()),
        Err(ClientError::CircuitOpen)
    );
    assert!(matches!(
        producer.try_publish(Message::new("y")),
        Err(TryPublishError::Failed(_, ClientError::CircuitOpen))
    ));
    assert_eq!(
        client.stats().publish_frames,
        frames,
        "nothing sent while open"
    );
    let s = client.inspect("q").await.unwrap().stats;
    assert_eq!((s.published, s.stored, s.rejected), (5, 2, 3));
    let bs = producer.breaker_stats().unwrap();
    assert_eq!((bs.successes, bs.failures, bs.opened), (2, 3, 1));
    assert!(bs.refused >= 2);
}
