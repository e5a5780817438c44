//! Exchanges and routing through the broker's own API (in-process): fan-out stores a message in
//! every target, the combined outcome follows the documented rule, dead letters go through an
//! exchange, durable exchanges and bindings come back after a restart.

use std::time::Duration;

use levee_broker::{Broker, BrokerConfig, BrokerError};
use levee_proto::{
    Binding, Durability, ErrorCode, ExchangeConfig, ExchangeKind, Message, Overflow,
    PublishOutcome, QueueConfig, RoutedOutcome,
};

async fn open(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

fn memory(max: u64, overflow: Overflow) -> QueueConfig {
    QueueConfig {
        max_messages: max,
        overflow,
        durability: Durability::Memory,
        ..QueueConfig::default()
    }
}

async fn ready(b: &Broker, q: &str) -> u64 {
    b.inspect(q).await.unwrap().stats.ready
}

#[tokio::test]
async fn a_full_reject_target_refuses_the_message_and_drop_oldest_stores_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    b.declare("ok", memory(100, Overflow::Reject))
        .await
        .unwrap();
    b.declare("tiny", memory(1, Overflow::Reject))
        .await
        .unwrap();
    b.declare("ring", memory(1, Overflow::DropOldest))
        .await
        .unwrap();
    b.declare_exchange("fan", ExchangeConfig::new(ExchangeKind::Fanout))
        .await
        .unwrap();
    for q in ["ok", "tiny"] {
        assert!(b.add_binding(&Binding::new("fan", q, "")).await.unwrap());
    }
    let first = b
        .publish_to_exchange("fan", "k", vec![Message::new("1")])
        .await
        .unwrap();
    assert!(first[0].is_stored(), "{first:?}");
    let second = b
        .publish_to_exchange("fan", "k", vec![Message::new("2")])
        .await
        .unwrap();
    match &second[0] {
        RoutedOutcome::Routed {
            targets: 2,
            outcome: PublishOutcome::Rejected { code, reason },
        } => {
            assert_eq!(*code, ErrorCode::QueueFull);
            assert!(reason.starts_with("queue tiny"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The other target kept it: stored in each target that took it.
    assert_eq!(ready(&b, "ok").await, 2);
    assert_eq!(ready(&b, "tiny").await, 1);

    b.remove_binding(&Binding::new("fan", "tiny", ""))
        .await
        .unwrap();
    b.add_binding(&Binding::new("fan", "ring", ""))
        .await
        .unwrap();
    for i in 0..2 {
        let o = b
            .publish_to_exchange("fan", "k", vec![Message::new(format!("r{i}"))])
            .await
            .unwrap();
        assert!(o[0].is_stored(), "{o:?}");
    }
    assert_eq!(ready(&b, "ring").await, 1);
}

#[tokio::test]
async fn unroutable_messages_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let o = b
        .publish_to_exchange("amq.direct", "nobody", vec![Message::new("x"); 3])
        .await
        .unwrap();
    assert_eq!(o, vec![RoutedOutcome::Unroutable; 3]);
    assert_eq!(b.exchange("amq.direct").unwrap().unroutable, 3);
    // The default exchange routes by queue name.
    b.declare("jobs", memory(10, Overflow::Reject))
        .await
        .unwrap();
    let o = b
        .publish_to_exchange("", "jobs", vec![Message::new("x")])
        .await
        .unwrap();
    assert!(o[0].is_stored());
    assert!(matches!(
        b.publish_to_exchange("missing", "k", vec![Message::new("x")])
            .await,
        Err(BrokerError::UnknownExchange(_))
    ));
}

#[tokio::test]
async fn dead_letters_go_through_the_exchange_with_the_original_routing_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    b.declare_exchange(
        "dlx",
        ExchangeConfig::new(ExchangeKind::Direct).internal(true),
    )
    .await
    .unwrap();
    b.declare("dead-orders", memory(10, Overflow::Reject))
        .await
        .unwrap();
    b.add_binding(&Binding::new("dlx", "dead-orders", "orders.eu"))
        .await
        .unwrap();
    let mut work = memory(10, Overflow::Reject);
    work.message_ttl_ms = Some(1);
    work.dead_letter_exchange = Some("dlx".into());
    b.declare("work", work).await.unwrap();
    b.add_binding(&Binding::new("amq.topic", "work", "orders.#"))
        .await
        .unwrap();
    let o = b
        .publish_to_exchange("amq.topic", "orders.eu", vec![Message::new("late")])
        .await
        .unwrap();
    assert!(o[0].is_stored());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ready(&b, "dead-orders").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn durable_exchanges_and_bindings_survive_a_restart_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        b.declare("disk", QueueConfig::default()).await.unwrap();
        b.declare(
            "gone",
            QueueConfig {
                durability: Durability::Transient,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
        b.declare_exchange("keep", ExchangeConfig::new(ExchangeKind::Topic))
            .await
            .unwrap();
        b.declare_exchange(
            "temp",
            ExchangeConfig::new(ExchangeKind::Fanout).durable(false),
        )
        .await
        .unwrap();
        b.add_binding(&Binding::new("keep", "disk", "a.*"))
            .await
            .unwrap();
        b.add_binding(&Binding::new("keep", "gone", "#"))
            .await
            .unwrap();
        b.add_binding(&Binding::new("amq.fanout", "disk", ""))
            .await
            .unwrap();
        b.shutdown().await;
    }
    let b = open(dir.path()).await;
    assert!(b.exchange("keep").is_some());
    assert!(b.exchange("temp").is_none());
    let bindings: Vec<(String, String)> = b
        .bindings(None)
        .unwrap()
        .into_iter()
        .map(|x| (x.exchange, x.queue))
        .collect();
    assert_eq!(
        bindings,
        [
            ("amq.fanout".to_string(), "disk".to_string()),
            ("keep".to_string(), "disk".to_string())
        ]
    );
    // Deleting the queue removes its bindings, durably.
    b.delete("disk").await.unwrap();
    assert!(b.bindings(None).unwrap().is_empty());
    b.shutdown().await;
    drop(b);
    let b = open(dir.path()).await;
    assert!(b.bindings(None).unwrap().is_empty());
}

#[tokio::test]
async fn routed_publishes_held_by_a_full_block_queue_are_bounded_by_the_in_flight_limit() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        max_in_flight_messages: 2,
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    b.declare("one", memory(1, Overflow::Block)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut p = b.routed_publisher(move |c| {
        let _ = tx.send(c);
    });
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<levee_broker::RoutedConfirm>| {
        let c = rx.try_recv();
        c.ok()
    };
    p.publish(1, "", "one", vec![Message::new("stored")])
        .unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.req, 1);
    assert!(c.outcomes[0].is_stored());
    // The queue is full: the next two are held (no confirm), within the limit of 2.
    p.publish(2, "", "one", vec![Message::new("held-1")])
        .unwrap();
    p.publish(3, "", "one", vec![Message::new("held-2")])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(next(&mut rx).is_none());
    // One more is over the limit: refused at once, nothing held for it.
    p.publish(4, "", "one", vec![Message::new("refused")])
        .unwrap();
    let c = next(&mut rx).expect("refused at once");
    assert_eq!(c.req, 4);
    assert!(matches!(
        &c.outcomes[0],
        RoutedOutcome::Routed {
            targets: 0,
            outcome: PublishOutcome::Rejected {
                code: ErrorCode::NoPublishCredit,
                ..
            }
        }
    ));
    // Room frees: the first held one is stored and confirmed.
    assert_eq!(b.purge("one").await.unwrap(), 1);
    let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.req, 2);
    assert!(c.outcomes[0].is_stored());
    // The publisher goes: what is still held is discarded and counted.
    drop(p);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = b.inspect("one").await.unwrap().stats;
        if s.dropped_total() == 2 {
            // purged + publisher-gone
            assert_eq!(s.ready, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
