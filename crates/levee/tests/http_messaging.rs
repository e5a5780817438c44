//! Messaging over HTTP against the real binary: publish (one or a batch, text or base64,
//! dedup), long-poll receive, ack / nack / reject / extend by receipt, leases that end, `block`
//! queues answering 429, JSON errors for 405 / 413, and the health probes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Server, wait_until};
use serde_json::{Value, json};

/// One HTTP/1.1 request: (status, raw headers, JSON body).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http_raw(addr, method, path, body.as_bytes())
}

fn http_raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer (413) before reading a large body: ignore a reset write.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line in {resp:?}"));
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let json = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {body:?}"));
    (status, head.to_string(), json)
}

fn declare(server: &Server, q: &str, config: Value) {
    let (st, _, b) = http(
        server.http,
        "PUT",
        &format!("/api/queues/{q}"),
        Some(&config),
    );
    assert!(st == 201 || st == 200, "{st} {b}");
}

fn stats(server: &Server, q: &str) -> Value {
    let (st, _, b) = http(server.http, "GET", &format!("/api/queues/{q}"), None);
    assert_eq!(st, 200, "{b}");
    b["stats"].clone()
}

fn receive(server: &Server, q: &str, max: u32, wait: u64) -> Vec<Value> {
    let (st, _, b) = http(
        server.http,
        "POST",
        &format!("/api/queues/{q}/receive?max={max}&wait={wait}"),
        None,
    );
    assert_eq!(st, 200, "{b}");
    b["messages"].as_array().unwrap().clone()
}

fn settle(server: &Server, q: &str, action: &str, body: Value) -> Value {
    let (st, _, b) = http(
        server.http,
        "POST",
        &format!("/api/queues/{q}/{action}"),
        Some(&body),
    );
    assert_eq!(st, 200, "{b}");
    b
}

#[test]
fn publish_receive_and_ack_over_http() {
    let server = Server::start();
    declare(&server, "jobs", json!({}));
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/jobs/messages",
        Some(&json!({"payload": "hello"})),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["outcomes"][0]["outcome"], "stored", "{b}");
    let batch = json!({"messages": [
        {"payload_base64": "AAEC/w==", "key": "k", "priority": 5, "ttl_ms": 60000,
         "headers": {"a": "b"}, "message_id": "m-1"},
        {"payload": "again", "message_id": "m-1"},
    ]});
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/jobs/messages",
        Some(&batch),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["outcomes"][0]["outcome"], "stored", "{b}");
    assert_eq!(b["outcomes"][1]["outcome"], "duplicate", "{b}");
    assert_eq!(b["outcomes"][1]["seq"], b["outcomes"][0]["seq"]);

    let got = receive(&server, "jobs", 10, 0);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["delivery_count"], 1);
    assert_eq!(
        got[1]["payload_base64"], "AAEC/w==",
        "binary payloads as base64"
    );
    assert_eq!(got[1]["headers"]["a"], "b");
    assert_eq!(got[1]["message_id"], "m-1");
    assert_eq!(got[1]["key"], "k");
    assert!(
        receive(&server, "jobs", 10, 0).is_empty(),
        "both are leased"
    );
    let receipts: Vec<Value> = got.iter().map(|m| m["receipt"].clone()).collect();
    let b = settle(&server, "jobs", "ack", json!({ "receipts": receipts }));
    assert_eq!(b["settled"], 2, "{b}");
    let b = settle(&server, "jobs", "ack", json!({ "receipts": receipts }));
    assert_eq!(b["settled"], 0, "a settled receipt is refused: {b}");
    assert_eq!(b["refused"].as_array().unwrap().len(), 2);
    let s = stats(&server, "jobs");
    assert_eq!(
        (s["acked"].as_u64(), s["ready"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(s["duplicates"], 1);
    assert_eq!(s["balanced"], true);
    let (_, metrics) = common::http_get(server.http, "/metrics");
    assert!(
        metrics.contains("levee_queue_duplicates_total{queue=\"jobs\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_long_poll_returns_as_soon_as_a_message_arrives() {
    let server = Server::start();
    declare(&server, "slow", json!({}));
    let http_addr = server.http;
    let poller = std::thread::spawn(move || {
        let start = Instant::now();
        let (st, _, b) = http(
            http_addr,
            "POST",
            "/api/queues/slow/receive?max=5&wait=20",
            None,
        );
        (st, b, start.elapsed())
    });
    // Publish once the poll is waiting (its session holds credit).
    wait_until("the poll is waiting", || {
        stats(&server, "slow")["consumers"][0]["credit"] == 5
    });
    http(
        server.http,
        "POST",
        "/api/queues/slow/messages",
        Some(&json!({"payload": "late"})),
    );
    let (st, b, took) = poller.join().unwrap();
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["messages"][0]["payload"], "late");
    assert!(
        took < Duration::from_secs(20),
        "answered before the wait ran out"
    );
    // Credit is taken back when the poll ends: nothing more is pushed to the session.
    assert_eq!(stats(&server, "slow")["consumers"][0]["credit"], 0);
    // An empty poll answers an empty list after its wait.
    assert!(receive(&server, "slow", 1, 1).is_empty());
}

#[test]
fn a_receipt_is_refused_once_its_lease_ended_and_extend_renews_it() {
    let server = Server::start();
    declare(&server, "leased", json!({"ack_timeout_ms": 1000}));
    http(
        server.http,
        "POST",
        "/api/queues/leased/messages",
        Some(&json!({"messages": [{"payload": "a"}, {"payload": "b"}]})),
    );
    let got = receive(&server, "leased", 2, 0);
    let (a, b) = (got[0]["receipt"].clone(), got[1]["receipt"].clone());
    // Renew b's lease for a minute; a's runs out.
    let r = settle(
        &server,
        "leased",
        "extend",
        json!({"receipts": [b], "extend_ms": 60000}),
    );
    assert_eq!(r["settled"], 1, "{r}");
    wait_until("a returned to the queue", || {
        stats(&server, "leased")["ready"] == 1
    });
    let r = settle(&server, "leased", "ack", json!({"receipts": [a]}));
    assert_eq!(r["settled"], 0, "{r}");
    assert_eq!(r["refused"][0]["error"], "receipt-not-outstanding");
    let again = receive(&server, "leased", 1, 0);
    assert_eq!(again[0]["payload"], "a");
    assert_eq!(
        again[0]["delivery_count"], 2,
        "redelivered as for TCP consumers"
    );
    assert_eq!(stats(&server, "leased")["unacked"], 2, "b kept its lease");
    let r = settle(&server, "leased", "ack", json!({"receipts": [b]}));
    assert_eq!(r["settled"], 1, "{r}");
}

#[test]
fn nack_with_delay_and_reject_to_the_dead_letter_queue() {
    let server = Server::start();
    declare(&server, "dlq", json!({}));
    declare(&server, "work", json!({"dead_letter": "dlq"}));
    http(
        server.http,
        "POST",
        "/api/queues/work/messages",
        Some(&json!({"messages": [{"payload": "retry"}, {"payload": "poison"}]})),
    );
    let got = receive(&server, "work", 2, 0);
    settle(
        &server,
        "work",
        "nack",
        json!({"receipts": [got[0]["receipt"]], "delay_ms": 300}),
    );
    settle(
        &server,
        "work",
        "reject",
        json!({"receipts": [got[1]["receipt"]]}),
    );
    let dead = receive(&server, "dlq", 1, 5);
    assert_eq!(dead[0]["payload"], "poison");
    assert_eq!(dead[0]["headers"]["x-death-reason"], "rejected");
    let back = receive(&server, "work", 1, 5);
    assert_eq!(back[0]["payload"], "retry");
    assert_eq!(back[0]["delivery_count"], 2);
    // A misplaced field is a clear error.
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/work/ack",
        Some(&json!({"receipts": [], "delay_ms": 5})),
    );
    assert_eq!((st, b["error"].as_str()), (400, Some("bad-request")), "{b}");
}

#[test]
fn a_full_block_queue_answers_429_with_retry_after() {
    let server = Server::start();
    declare(
        &server,
        "tight",
        json!({"max_messages": 2, "overflow": "block"}),
    );
    let batch = json!({"messages": [{"payload": "1"}, {"payload": "2"}]});
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/tight/messages",
        Some(&batch),
    );
    assert_eq!(st, 200, "{b}");
    let (st, head, b) = http(
        server.http,
        "POST",
        "/api/queues/tight/messages",
        Some(&json!({"payload": "3"})),
    );
    assert_eq!(st, 429, "{b}");
    assert_eq!(b["error"], "queue-full");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let s = stats(&server, "tight");
    assert_eq!(
        (s["ready"].as_u64(), s["published"].as_u64()),
        (Some(2), Some(2))
    );
}

#[test]
fn every_error_is_json_with_a_stable_code() {
    let server = Server::start();
    declare(&server, "q", json!({}));
    let (st, head, b) = http(server.http, "GET", "/api/queues/q/receive", None);
    assert_eq!(
        (st, b["error"].as_str()),
        (405, Some("method-not-allowed")),
        "{b}"
    );
    assert!(head.to_ascii_lowercase().contains("allow:"), "{head}");
    let big = vec![b' '; 100 * 1024];
    let (st, _, b) = http_raw(server.http, "PUT", "/api/queues/q", &big);
    assert_eq!(
        (st, b["error"].as_str()),
        (413, Some("payload-too-large")),
        "{b}"
    );
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/q/messages",
        Some(&json!({"payload": "x", "payload_base64": "eA=="})),
    );
    assert_eq!((st, b["error"].as_str()), (400, Some("bad-request")), "{b}");
    let (st, _, b) = http(server.http, "POST", "/api/queues/q/receive?max=abc", None);
    assert_eq!((st, b["error"].as_str()), (400, Some("bad-request")), "{b}");
    let (st, _, b) = http(
        server.http,
        "POST",
        "/api/queues/nope/messages",
        Some(&json!({"payload": "x"})),
    );
    assert_eq!(
        (st, b["error"].as_str()),
        (404, Some("unknown-queue")),
        "{b}"
    );
    let (st, _, b) = http(server.http, "GET", "/healthz", None);
    assert_eq!((st, b["status"].as_str()), (200, Some("alive")));
    let (st, _, b) = http(server.http, "GET", "/readyz", None);
    assert_eq!((st, b["status"].as_str()), (200, Some("ready")), "{b}");
}
