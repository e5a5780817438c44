//! Looking into a queue without consuming (peek: HTTP and `levee queue peek`) and moving dead
//! letters back (redrive: `POST /api/queues/{q}/move`, `levee queue move`), against the binary.

mod common;

use common::{Server, client, http_json, id_of, levee_ok, numbered};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{Overflow, QueueConfig};
use serde_json::{Value, json};

/// Five messages rejected into `work.dead`.
async fn dead_letters(server: &Server) -> levee_client::Client {
    let c = client(server).await;
    c.declare("work.dead", QueueConfig::default())
        .await
        .unwrap();
    c.declare(
        "work",
        QueueConfig {
            dead_letter: Some("work.dead".into()),
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let p = c
        .producer("work", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        p.send(numbered(i, 8).with_header("trace", format!("t{i}")))
            .await
            .unwrap();
    }
    let mut consumer = c
        .consumer(
            "work",
            ConsumerOptions {
                credit: Credit::Fixed(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..5 {
        consumer.next().await.unwrap().unwrap().reject().unwrap();
    }
    consumer.close().await.unwrap();
    common::wait_for_stats(&c, "work.dead", |s| s.ready == 5).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_dead_letters_without_consuming_and_move_redrives_them() {
    let server = Server::start();
    let c = dead_letters(&server).await;
    let (st, b) = http(
        &server,
        "GET",
        "/api/queues/work.dead/messages?count=3",
        None,
    );
    assert_eq!(st, 200, "{b}");
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["headers"]["x-death-reason"], "rejected");
    assert_eq!(msgs[0]["headers"]["x-death-queue"], "work");
    assert_eq!(msgs[0]["headers"]["trace"], "t0");
    assert!(msgs[0].get("receipt").is_none(), "a peek is not a delivery");
    let text = levee_ok(&server, &["queue", "peek", "work.dead", "--count", "10"]);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.contains("x-death-reason=rejected"), "{text}");
    let s = c.inspect("work.dead").await.unwrap().stats;
    assert_eq!((s.ready, s.unacked, s.acked), (5, 0, 0), "nothing consumed");

    // Redrive two over HTTP, the rest with the CLI.
    let (st, b) = http(
        &server,
        "POST",
        "/api/queues/work.dead/move",
        Some(json!({"to": "work", "max": 2})),
    );
    assert_eq!((st, b["moved"].as_u64()), (200, Some(2)), "{b}");
    let text = levee_ok(&server, &["queue", "move", "work.dead", "--to", "work"]);
    assert!(text.contains("moved 3 messages"), "{text}");
    let dead = c.inspect("work.dead").await.unwrap().stats;
    let work = c.inspect("work").await.unwrap().stats;
    assert_eq!((dead.ready, dead.acked), (0, 5));
    assert_eq!(work.ready, 5);
    assert!(dead.is_balanced() && work.is_balanced());
    // Each message once, in order, with its headers.
    let got = c.peek("work", 10).await.unwrap();
    let ids: Vec<u32> = got.iter().map(|d| id_of(&d.message.payload)).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    let (st, b) = http(
        &server,
        "POST",
        "/api/queues/work.dead/move",
        Some(json!({"to": "nowhere"})),
    );
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("unknown-queue")),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_into_a_full_queue_stops_and_loses_nothing() {
    let server = Server::start();
    let c = dead_letters(&server).await;
    c.declare(
        "small",
        QueueConfig {
            max_messages: 2,
            overflow: Overflow::Block,
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let (st, b) = http(
        &server,
        "POST",
        "/api/queues/work.dead/move",
        Some(json!({"to": "small"})),
    );
    assert_eq!(st, 200, "{b}");
    assert!(b["moved"].as_u64().unwrap() <= 2, "{b}");
    assert!(b["stopped"].is_string(), "{b}");
    let dead = c.inspect("work.dead").await.unwrap().stats;
    let small = c.inspect("small").await.unwrap().stats;
    assert_eq!(
        dead.ready + small.ready,
        5,
        "every message is in one of the two"
    );
    assert_eq!(dead.unacked, 0);
    // Returned messages kept their delivery count.
    let back = c.peek("work.dead", 10).await.unwrap();
    assert!(back.iter().all(|d| d.delivery_count == 0), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_matching_a_header_takes_only_those_and_leaves_the_rest_in_place() {
    let server = Server::start();
    let c = dead_letters(&server).await; // headers trace=t0..t4
    let (st, b) = http(
        &server,
        "POST",
        "/api/queues/work.dead/move",
        Some(json!({"to": "work", "header": {"name": "trace", "value": "t3"}})),
    );
    assert_eq!((st, b["moved"].as_u64()), (200, Some(1)), "{b}");
    let text = levee_ok(
        &server,
        &[
            "queue",
            "move",
            "work.dead",
            "--to",
            "work",
            "--header",
            "trace=t1",
        ],
    );
    assert!(text.contains("moved 1 messages"), "{text}");
    let left = c.peek("work.dead", 10).await.unwrap();
    let ids: Vec<u32> = left.iter().map(|d| id_of(&d.message.payload)).collect();
    assert_eq!(ids, vec![0, 2, 4], "the others stay, in order");
    assert!(left.iter().all(|d| d.delivery_count == 0), "{left:?}");
    let dead = c.inspect("work.dead").await.unwrap().stats;
    assert_eq!((dead.ready, dead.unacked), (3, 0));
    let moved = c.peek("work", 10).await.unwrap();
    let ids: Vec<u32> = moved.iter().map(|d| id_of(&d.message.payload)).collect();
    assert_eq!(ids, vec![3, 1]);
}

/// A move repeated after a crash between the target's store and the source's ack (simulated:
/// the target already holds the copy under the id the mover gives it) stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_move_is_a_duplicate_in_the_target() {
    let server = Server::start();
    let c = dead_letters(&server).await;
    let first = c.peek("work.dead", 1).await.unwrap().remove(0);
    let copy = first
        .message
        .clone()
        .with_message_id(format!("levee-move:work.dead:{}", first.seq));
    c.producer("work", ProducerOptions::default())
        .await
        .unwrap()
        .send(copy)
        .await
        .unwrap();
    assert_eq!(
        c.move_messages("work.dead", "work", None, None)
            .await
            .unwrap(),
        5
    );
    let work = c.inspect("work").await.unwrap().stats;
    assert_eq!((work.ready, work.duplicates), (5, 1), "{work:?}");
    assert_eq!(c.inspect("work.dead").await.unwrap().stats.ready, 0);
}

fn http(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http_json(server, method, path, body.as_ref())
}
