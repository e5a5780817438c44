//! Changing a live queue (`PATCH /api/queues/{q}`, `levee queue update`): limits, overflow,
//! ack timeout... change without losing a message, lowered limits drop nothing, the change is in
//! the catalog after a `kill -9`, and durability / order changes are refused.

mod common;

use std::process::Command;

use common::{Server, client, numbered};
use levee_client::ProducerOptions;
use levee_proto::{Overflow, PublishOutcome, QueueConfig};
use serde_json::{Value, json};

fn patch(server: &Server, q: &str, body: Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http).unwrap();
    let body = body.to_string();
    write!(
        s,
        "PATCH /api/queues/{q} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1.trim()).unwrap();
    (status, json)
}

fn levee(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .args(["--addr", &server.wire.to_string()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_queue_changes_without_losing_a_message_and_keeps_the_change() {
    let mut server = Server::start();
    {
        let c = client(&server).await;
        c.declare(
            "orders",
            QueueConfig {
                overflow: Overflow::Reject,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
        let p = c
            .producer("orders", ProducerOptions::default())
            .await
            .unwrap();
        for i in 0..10 {
            p.send(numbered(i, 8)).await.unwrap();
        }
        // Below what it holds: nothing is dropped, new messages are refused.
        let (st, b) = patch(
            &server,
            "orders",
            json!({"max_messages": 5, "ack_timeout_ms": 5000}),
        );
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["config"]["max_messages"], 5);
        assert_eq!(b["previous"]["max_messages"], 100000);
        let o = p.send(numbered(99, 8)).await;
        assert!(
            matches!(&o, Err(levee_client::ClientError::Rejected { .. })),
            "{o:?}"
        );
        let info = c.inspect("orders").await.unwrap();
        assert_eq!(info.stats.ready, 10);
        assert_eq!(info.config.ack_timeout_ms, 5000);
        // The CLI changes it back up (only the flags given).
        let out = levee(
            &server,
            &["queue", "update", "orders", "--max-messages", "20"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("updated orders (10 messages)"), "{text}");
        assert!(matches!(
            p.send(numbered(11, 8)).await.unwrap(),
            PublishOutcome::Stored { .. }
        ));
        // Refused: durability and order cannot change on a live queue.
        let (st, b) = patch(&server, "orders", json!({"durability": "memory"}));
        assert_eq!(
            (st, b["error"].as_str()),
            (400, Some("invalid-config")),
            "{b}"
        );
        let out = levee(
            &server,
            &["queue", "update", "orders", "--order", "priority"],
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("order cannot be changed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (st, b) = patch(&server, "nope", json!({"max_messages": 5}));
        assert_eq!(
            (st, b["error"].as_str()),
            (404, Some("unknown-queue")),
            "{b}"
        );
        let (st, b) = patch(&server, "orders", json!({"dead_letter": "missing"}));
        assert_eq!(
            (st, b["error"].as_str()),
            (400, Some("unknown-queue")),
            "{b}"
        );
    }
    server.restart_after_kill9();
    let c = client(&server).await;
    let info = c.inspect("orders").await.unwrap();
    assert_eq!(
        (info.config.max_messages, info.config.ack_timeout_ms),
        (20, 5000),
        "the change is in the catalog"
    );
    assert_eq!(info.stats.ready, 11, "every message kept");
}
