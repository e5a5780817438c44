//! lapin (Rust's AMQP 0-9-1 client) against the real `levee` binary: publish with confirms and
//! consume with acks, confirms held while a `block` queue is full and sent when room frees,
//! `connection.blocked` past the per-connection bound on held publishes while other connections
//! go on, and messages crossing between AMQP and the native protocol.

mod common;

use std::time::Duration;

use common::{Server, client, wait_for_stats};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, Event};

const WAIT: Duration = Duration::from_secs(20);

async fn connect(server: &Server) -> Connection {
    let uri = format!("amqp://guest:guest@{}/%2f", server.amqp);
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("AMQP connect")
}

fn max_length(n: i64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    t
}

async fn declare(ch: &lapin::Channel, queue: &str, args: FieldTable) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .expect("queue.declare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_confirms_then_consume_with_acks() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "lq", FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..100u32 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "lq".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let rx = conn.create_channel().await.unwrap();
    rx.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = rx
        .basic_consume(
            "lq".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..100u32 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, i.to_be_bytes(), "publish order");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let native = client(&server).await;
    let s = wait_for_stats(&native, "lq", |s| s.acked == 100).await;
    assert_eq!((s.ready, s.unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_wait_while_a_block_queue_is_full_and_come_when_room_frees() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "full", max_length(2)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    async fn publish(ch: &lapin::Channel, body: &'static [u8]) -> lapin::PublisherConfirm {
        ch.basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
    }
    assert!(publish(&ch, b"1").await.await.unwrap().is_ack());
    assert!(publish(&ch, b"2").await.await.unwrap().is_ack());
    let mut third = Box::pin(publish(&ch, b"3").await);
    // Held, not refused: no confirm while the queue is full.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a publish into a full block queue was confirmed before room freed"
    );
    let got = ch
        .basic_get("full".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"1");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let confirm = tokio::time::timeout(WAIT, third)
        .await
        .expect("the held publish is confirmed once room frees")
        .unwrap();
    assert!(confirm.is_ack());
    let native = client(&server).await;
    let s = wait_for_stats(&native, "full", |s| s.ready == 2).await;
    assert_eq!(s.rejected, 0, "nothing refused: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_held_bound_the_connection_is_blocked_and_others_are_not() {
    let server = Server::start_with(&["--amqp-max-held-bytes", "4096"]);
    let blocked_conn = connect(&server).await;
    let mut events = blocked_conn.events_listener();
    let ch = blocked_conn.create_channel().await.unwrap();
    declare(&ch, "jam", max_length(1)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Published from a task: lapin itself stops sending while the connection is blocked, so
    // the publishes after the block wait (in the client) until it is lifted.
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for i in 0..11u8 {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "jam".into(),
                    BasicPublishOptions::default(),
                    &[i; 1000],
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            );
        }
        let mut acks = Vec::new();
        for c in confirms {
            acks.push(c.await.unwrap().is_ack());
        }
        acks
    });
    let reason = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.next().await {
            if let Event::ConnectionBlocked(reason) = e {
                return reason;
            }
        }
        panic!("events ended")
    })
    .await
    .expect("connection.blocked past the held bound");
    assert!(
        reason.contains("'jam'"),
        "the reason names the queue: {reason}"
    );

    // Another connection publishing elsewhere is not slowed.
    let other = connect(&server).await;
    let och = other.create_channel().await.unwrap();
    declare(&och, "free", FieldTable::default()).await;
    och.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..5 {
        let c = och
            .basic_publish(
                "".into(),
                "free".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(WAIT, c)
                .await
                .unwrap()
                .unwrap()
                .is_ack(),
            "a connection publishing to another queue waits"
        );
    }

    // Drain the full queue from the other connection: the blocked one is unblocked and every
    // publish is confirmed, in order, none lost.
    let rx = other.create_channel().await.unwrap();
    rx.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = rx
        .basic_consume(
            "jam".into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..11u8 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, vec![i; 1000]);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    tokio::time::timeout(WAIT, async {
        while let Some(e) = events.next().await {
            if matches!(e, Event::ConnectionUnblocked) {
                return;
            }
        }
    })
    .await
    .expect("connection.unblocked once room freed");
    let acks = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("every publish confirmed")
        .unwrap();
    assert_eq!(acks, vec![true; 11], "every publish acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_between_amqp_and_the_native_protocol() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x-proto", FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("job".into(), AMQPValue::LongString(LongString::from("17")));
    headers.insert("attempt".into(), AMQPValue::LongInt(2));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_headers(headers);
    let c = ch
        .basic_publish(
            "".into(),
            "x-proto".into(),
            BasicPublishOptions::default(),
            b"{\"from\":\"amqp\"}",
            props,
        )
        .await
        .unwrap();
    assert!(c.await.unwrap().is_ack());

    // AMQP -> native: properties and headers become native headers.
    let native = client(&server).await;
    let mut consumer = native
        .consumer("x-proto", levee_client::ConsumerOptions::default())
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload()[..], b"{\"from\":\"amqp\"}");
    let h = |name: &str| {
        d.message()
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("correlation-id").as_deref(), Some("c-1"));
    assert_eq!(h("job").as_deref(), Some("17"));
    assert_eq!(h("attempt").as_deref(), Some("2"));
    d.ack().unwrap();
    // Gone before the next message, so that basic.get below is its only taker.
    consumer.close().await.unwrap();

    // native -> AMQP: native headers arrive as a headers table of long strings.
    let producer = native
        .producer("x-proto", levee_client::ProducerOptions::default())
        .await
        .unwrap();
    producer
        .send(
            levee_proto::Message::new(&b"from native"[..])
                .with_header("content-type", &b"text/plain"[..])
                .with_header("trace", &b"t-9"[..]),
        )
        .await
        .unwrap();
    let got = loop {
        if let Some(m) = ch
            .basic_get("x-proto".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.delivery.data, b"from native");
    let props = &got.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    let table = props.headers().clone().unwrap();
    assert_eq!(
        table.inner().get("trace"),
        Some(&AMQPValue::LongString(LongString::from("t-9")))
    );
}

/// `basic.get` with `no-ack` from several connections at once, while a producer keeps the
/// queue at about one message, takes every message exactly once: none is lost when the queue
/// hands a get its message just before counting what is ready (a get answered "empty" then
/// must not have had its message settled), and none is given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_no_ack_gets_take_every_message_once() {
    const N: u32 = 3000;
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "gets", FieldTable::default()).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let c = connect(&server).await;
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let ch = c.create_channel().await.unwrap();
            let mut got = Vec::new();
            // Until the producer is done and the queue answers empty a few times in a row.
            let mut empties = 0;
            while empties < 5 {
                let m = ch
                    .basic_get("gets".into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap();
                match m {
                    Some(m) => {
                        empties = 0;
                        got.push(u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap()));
                    }
                    None if done.load(std::sync::atomic::Ordering::Acquire) => empties += 1,
                    None => {}
                }
            }
            got
        }));
    }
    // Three producers with confirms, each with a window of 8: the queue's actor takes its
    // commands in many small batches, so a get's subscribe and its count often fall apart.
    let mut producers = Vec::new();
    for p in 0..3u32 {
        let c = connect(&server).await;
        producers.push(tokio::spawn(async move {
            let ch = c.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut window = std::collections::VecDeque::new();
            for i in (p..N).step_by(3) {
                window.push_back(
                    ch.basic_publish(
                        "".into(),
                        "gets".into(),
                        BasicPublishOptions::default(),
                        &i.to_be_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap(),
                );
                if window.len() >= 8 {
                    assert!(window.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            for c in window {
                assert!(c.await.unwrap().is_ack());
            }
            c
        }));
    }
    let mut keep = Vec::new();
    for p in producers {
        keep.push(p.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let left = ch
        .queue_declare(
            "gets".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    let taken = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), taken, "a message was given to two gets");
    assert_eq!(
        taken as u32 + left,
        N,
        "{taken} taken, {left} left of {N}: lost"
    );
}
