//! The HTTP API, metrics and dashboard, against a real broker served in-process: requests go
//! over TCP as raw HTTP/1.1, traffic is generated with raw protocol frames.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use levee_broker::http::{QueueSnapshot, config_from_json, config_to_json, render_metrics};
use levee_broker::{Broker, BrokerConfig, serve_http};
use levee_proto::{
    ClientFrame, ConsumerStats, DEFAULT_MAX_FRAME, DropReason, Durability, Fsync, Hello, Message,
    Order, Overflow, PublishOutcome, QueueConfig, QueueInfo, QueueStats, RateLimit, ServerFrame,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    _dir: tempfile::TempDir,
    broker: Broker,
    http: SocketAddr,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(serve_http(broker.clone(), listener));
    Server {
        _dir: dir,
        broker,
        http,
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        raw = &rest[size + 2..];
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, rest) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// A raw protocol connection, to generate traffic without the client crate.
struct Proto {
    s: TcpStream,
    buf: BytesMut,
}

impl Proto {
    async fn connect(broker: &Broker) -> Proto {
        let (addr, _) = broker.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut p = Proto {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        };
        p.send(ClientFrame::Hello(Hello::new("http-test"))).await;
        assert!(matches!(p.recv().await, ServerFrame::Welcome(_)));
        p
    }

    async fn send(&mut self, f: ClientFrame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.s.write_all(&b).await.unwrap();
    }

    /// The next frame other than a heartbeat.
    async fn recv(&mut self) -> ServerFrame {
        loop {
            if let Some(f) = ServerFrame::decode(&mut self.buf, DEFAULT_MAX_FRAME).unwrap() {
                if f != ServerFrame::Heartbeat {
                    return f;
                }
                continue;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
                .expect("frame within 10 s")
                .unwrap();
            assert!(n > 0, "broker closed the connection");
        }
    }

    async fn publish(&mut self, queue: &str, n: usize, payload: &[u8]) -> Vec<PublishOutcome> {
        let messages = (0..n).map(|_| Message::new(payload.to_vec())).collect();
        self.send(ClientFrame::Publish {
            req: 7,
            queue: queue.into(),
            messages,
        })
        .await;
        match self.recv().await {
            ServerFrame::PublishConfirm { outcomes, .. } => outcomes,
            other => panic!("expected a confirm, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, queue: &str, credit: u32) -> u64 {
        self.send(ClientFrame::Subscribe {
            req: 8,
            queue: queue.into(),
            credit,
            auto_ack: false,
        })
        .await;
        match self.recv().await {
            ServerFrame::Subscribed { subscription, .. } => subscription,
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = request(addr, "GET", path, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

/// Polls `GET /api/queues/{name}` until `pred` holds (at most 5 s).
async fn wait_for(addr: SocketAddr, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let q = get_json(addr, &format!("/api/queues/{name}")).await;
        if pred(&q) {
            return q;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held: {q:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn put_declares_a_queue_then_reports_it_exists() {
    let srv = start().await;
    let body = r#"{"max_messages": 50, "overflow": "drop-oldest", "durability": "memory"}"#;
    let r = request(srv.http, "PUT", "/api/queues/orders", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"queue": "orders", "created": true, "messages": 0})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    let again = request(srv.http, "PUT", "/api/queues/orders", Some(body)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["created"], json!(false));

    // The broker has it, with the defaults for every field not given.
    let info = srv.broker.inspect("orders").await.unwrap();
    assert_eq!(
        info.config,
        QueueConfig {
            max_messages: 50,
            overflow: Overflow::DropOldest,
            durability: Durability::Memory,
            ..QueueConfig::default()
        }
    );

    // What GET says about the config can be PUT back unchanged.
    let q = get_json(srv.http, "/api/queues/orders").await;
    assert_eq!(q["name"], json!("orders"));
    assert_eq!(q["config"]["overflow"], json!("drop-oldest"));
    assert_eq!(q["config"]["max_deliveries"], json!(20));
    let back = request(
        srv.http,
        "PUT",
        "/api/queues/orders",
        Some(&q["config"].to_string()),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
}

#[tokio::test]
async fn redeclare_with_another_config_is_409_with_the_differences() {
    let srv = start().await;
    let r = request(
        srv.http,
        "PUT",
        "/api/queues/jobs",
        Some(r#"{"max_messages": 10, "durability": "memory"}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = request(
        srv.http,
        "PUT",
        "/api/queues/jobs",
        Some(r#"{"max_messages": 20, "overflow": "reject", "durability": "memory"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let body = r.json();
    assert_eq!(body["error"], json!("queue-config-mismatch"));
    assert!(
        body["message"].as_str().unwrap().contains("max_messages"),
        "{body}"
    );
    assert_eq!(
        body["differences"],
        json!([
            {"field": "max_messages", "existing": "10", "requested": "20"},
            {"field": "overflow", "existing": "block", "requested": "reject"},
        ])
    );
    // Nothing changed.
    let info = srv.broker.inspect("jobs").await.unwrap();
    assert_eq!(info.config.max_messages, 10);
}

#[tokio::test]
async fn bad_declarations_are_400_with_a_clear_message() {
    let srv = start().await;
    let cases: [(&str, &str, &str); 9] = [
        ("q", r#"{"max_messages": "#, "bad-json"),
        ("q", r#"{"max_mesages": 5}"#, "max_mesages"),
        ("q", r#"{"overflow": "drop-everything"}"#, "drop-everything"),
        ("q", r#"{"max_messages": 0}"#, "max_messages"),
        ("q", r#"{"max_messages": -1}"#, "-1"),
        (
            "q",
            r#"{"durability": "memory", "fsync": "always"}"#,
            "fsync",
        ),
        ("q", r#"{"fsync": {"interval_ms": 0}}"#, "interval"),
        ("q", r#"{"dead_letter": "nowhere"}"#, "nowhere"),
        ("bad%20name", "{}", "bad name"),
    ];
    for (name, body, expect) in cases {
        let r = request(srv.http, "PUT", &format!("/api/queues/{name}"), Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let e = r.json();
        let text = format!("{} {}", e["error"], e["message"]);
        assert!(text.contains(expect), "{body}: {text}");
    }
    assert!(srv.broker.list().is_empty());
}

#[tokio::test]
async fn unknown_queues_and_paths_are_404_json() {
    let srv = start().await;
    for (method, path) in [
        ("GET", "/api/queues/ghost"),
        ("DELETE", "/api/queues/ghost"),
        ("POST", "/api/queues/ghost/purge"),
        ("GET", "/api/nothing-here"),
    ] {
        let r = request(srv.http, method, path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        let e = r.json();
        assert!(e["error"].is_string() && e["message"].is_string(), "{e}");
    }
    let r = request(srv.http, "GET", "/api/queues/ghost", None).await;
    assert_eq!(r.json()["error"], json!("unknown-queue"));
}

#[tokio::test]
async fn stats_show_traffic_drops_by_reason_loss_and_consumers() {
    let srv = start().await;
    srv.broker
        .declare(
            "ticks",
            QueueConfig {
                max_messages: 10,
                overflow: Overflow::DropOldest,
                durability: Durability::Memory,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    let mut p = Proto::connect(&srv.broker).await;
    let outcomes = p.publish("ticks", 25, b"0123456789").await;
    assert_eq!(outcomes.len(), 25);

    let list = get_json(srv.http, "/api/queues").await;
    let q = &list.as_array().unwrap()[0];
    assert_eq!(q["name"], json!("ticks"));
    let s = &q["stats"];
    assert_eq!(s["published"], json!(25));
    assert_eq!(s["stored"], json!(25));
    assert_eq!(s["ready"], json!(10));
    assert_eq!(s["bytes"], json!(100));
    assert_eq!(s["dropped"]["evicted-oldest"], json!(15));
    assert_eq!(s["dropped"]["overflow-newest"], json!(0));
    assert_eq!(s["dropped_total"], json!(15));
    assert_eq!(s["balanced"], json!(true));
    assert_eq!(q["loss_pct"], json!(60.0));
    assert_eq!(q["storage"], Value::Null, "a memory queue has no log");

    // A consumer with credit 3 gets 3 deliveries: its credit is used up, 3 are unacked.
    let sub = p.subscribe("ticks", 3).await;
    let q = wait_for(srv.http, "ticks", |q| q["stats"]["unacked"] == json!(3)).await;
    assert_eq!(
        q["stats"]["consumers"],
        json!([{"subscription": sub, "credit": 0, "unacked": 3}])
    );
    assert_eq!(q["stats"]["ready"], json!(7));
}

#[tokio::test]
async fn disk_queues_report_storage_figures() {
    let srv = start().await;
    let r = request(
        srv.http,
        "PUT",
        "/api/queues/ledger",
        Some(r#"{"overflow": "reject", "fsync": {"interval_ms": 5}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut p = Proto::connect(&srv.broker).await;
    p.publish("ledger", 20, &[7u8; 100]).await;
    let q = wait_for(srv.http, "ledger", |q| {
        q["storage"]["fsyncs"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(q["config"]["durability"], json!("disk"));
    assert_eq!(q["config"]["fsync"], json!({"interval_ms": 5}));
    let st = &q["storage"];
    assert!(st["bytes_on_disk"].as_u64().unwrap() >= 2_000, "{st}");
    assert!(st["segments"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["unsettled"], json!(20));
}

/// One parsed sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Checks the text exposition format line by line; returns the samples as
/// `(name, labels, value)`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut typed: Vec<String> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(is_name(name), "{line}");
            assert!(!helped.contains(&name.to_string()), "HELP twice: {line}");
            helped.push(name.into());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(!typed.contains(&name.to_string()), "TYPE twice: {line}");
            assert!(
                samples.iter().all(|(n, _, _): &Sample| n != name),
                "TYPE after samples: {line}"
            );
            typed.push(name.into());
            continue;
        }
        assert!(!line.starts_with('#') || line.starts_with("# "), "{line}");
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // name{label="value",...} value
        let name_end = line.find(['{', ' ']).expect("a value");
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (lname, r) = rest.split_once("=\"").expect("label=\"value\"");
                assert!(is_name(lname) && !lname.contains(':'), "{line}");
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (_, '\\') => match chars.next().unwrap().1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (i, '"') => break i,
                        (_, '\n') => panic!("raw line feed in {line}"),
                        (_, c) => value.push(c),
                    }
                };
                labels.push((lname.to_string(), value));
                rest = &r[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("space before the value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        // A histogram's samples are its family's name with `_bucket`, `_sum` or `_count`.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_prefix(typed.last()?.as_str())?
                    .eq(*s)
                    .then_some(())
            })
            .map_or(name, |()| typed.last().unwrap().as_str());
        assert!(
            typed.last().map(String::as_str) == Some(family),
            "sample outside its family: {line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_queue_counter() {
    let srv = start().await;
    srv.broker
        .declare(
            "mem",
            QueueConfig {
                max_messages: 5,
                overflow: Overflow::DropNewest,
                durability: Durability::Memory,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    srv.broker
        .declare(
            "disk",
            QueueConfig {
                // Not `block`: a block queue only takes publishes within granted credit.
                overflow: Overflow::Reject,
                durability: Durability::Disk(Fsync::Always),
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    let mut p = Proto::connect(&srv.broker).await;
    let o = p.publish("mem", 8, b"abcd").await;
    assert_eq!(
        o.iter()
            .filter(|o| matches!(o, PublishOutcome::Stored { .. }))
            .count(),
        5
    );
    let o = p.publish("disk", 4, b"abcdefgh").await;
    assert!(
        o.iter().all(|o| matches!(o, PublishOutcome::Stored { .. })),
        "{o:?}"
    );
    let sub = p.subscribe("mem", 2).await.to_string();
    wait_for(srv.http, "mem", |q| q["stats"]["unacked"] == json!(2)).await;

    let r = request(srv.http, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse_prometheus(&r.body);
    let q = |n: &str, queue: &str| sample(&samples, n, &[("queue", queue)]);

    assert_eq!(sample(&samples, "levee_queues", &[]), Some(2.0));
    assert_eq!(q("levee_queue_published_total", "mem"), Some(8.0));
    assert_eq!(q("levee_queue_stored_total", "mem"), Some(8.0));
    assert_eq!(q("levee_queue_rejected_total", "mem"), Some(0.0));
    assert_eq!(q("levee_queue_acked_total", "mem"), Some(0.0));
    assert_eq!(q("levee_queue_expired_total", "mem"), Some(0.0));
    assert_eq!(q("levee_queue_dead_lettered_total", "mem"), Some(0.0));
    assert_eq!(q("levee_queue_ready", "mem"), Some(3.0));
    assert_eq!(q("levee_queue_unacked", "mem"), Some(2.0));
    assert_eq!(q("levee_queue_bytes", "mem"), Some(20.0));
    assert_eq!(q("levee_queue_max_messages", "mem"), Some(5.0));
    assert_eq!(q("levee_queue_consumers", "mem"), Some(1.0));
    assert_eq!(
        q("levee_queue_publish_credit_outstanding", "mem"),
        Some(0.0)
    );
    assert_eq!(q("levee_queue_available", "mem"), Some(1.0));
    assert_eq!(
        sample(
            &samples,
            "levee_queue_dropped_total",
            &[("queue", "mem"), ("reason", "overflow-newest")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &samples,
            "levee_queue_dropped_total",
            &[("queue", "mem"), ("reason", "evicted-oldest")]
        ),
        Some(0.0),
        "every reason is exported, zeros included, so rate() works from the start"
    );
    assert_eq!(q("levee_queue_loss_ratio", "mem"), Some(3.0 / 8.0));
    assert_eq!(
        sample(
            &samples,
            "levee_consumer_credit",
            &[("queue", "mem"), ("subscription", &sub)]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "levee_consumer_unacked",
            &[("queue", "mem"), ("subscription", &sub)]
        ),
        Some(2.0)
    );
    // Storage gauges exist for the disk queue only.
    assert_eq!(q("levee_queue_stored_total", "disk"), Some(4.0));
    assert!(q("levee_queue_disk_bytes", "disk").unwrap() >= 32.0);
    assert!(q("levee_queue_segments", "disk").unwrap() >= 1.0);
    assert!(q("levee_queue_fsyncs_total", "disk").unwrap() >= 1.0);
    assert_eq!(q("levee_queue_disk_bytes", "mem"), None);
}

fn snapshot(name: &str) -> QueueSnapshot {
    QueueSnapshot {
        info: QueueInfo {
            queue: name.into(),
            config: QueueConfig::default(),
            stats: QueueStats {
                published: 3,
                stored: 3,
                dropped: vec![(DropReason::Conflated, 1)],
                ready: 2,
                consumers: vec![ConsumerStats {
                    subscription: 9,
                    credit: 4,
                    unacked: 0,
                }],
                ..QueueStats::default()
            },
        },
        storage: None,
    }
}

#[test]
fn metric_label_values_are_escaped() {
    // Queue names cannot hold these characters today; the exporter must not depend on that.
    let odd = "a\"b\\c\nd";
    let text = render_metrics(&[snapshot(odd)], &["down".to_string()]);
    assert!(
        text.contains(r#"levee_queue_published_total{queue="a\"b\\c\nd"} 3"#),
        "{text}"
    );
    let samples = parse_prometheus(&text);
    assert_eq!(
        sample(&samples, "levee_queue_published_total", &[("queue", odd)]),
        Some(3.0)
    );
    assert_eq!(
        sample(&samples, "levee_queue_available", &[("queue", "down")]),
        Some(0.0)
    );
    assert_eq!(sample(&samples, "levee_queues", &[]), Some(2.0));
    assert_eq!(
        sample(
            &samples,
            "levee_queue_dropped_total",
            &[("queue", odd), ("reason", "conflated")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn purge_and_delete_over_http() {
    let srv = start().await;
    let r = request(
        srv.http,
        "PUT",
        "/api/queues/work",
        Some(r#"{"fsync": "never", "overflow": "reject"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let dir = srv.broker.config().data_dir.join("queues").join("q-work");
    assert!(dir.exists(), "a disk queue has a directory");
    let mut p = Proto::connect(&srv.broker).await;
    let o = p.publish("work", 5, b"x").await;
    assert!(
        o.iter().all(|o| matches!(o, PublishOutcome::Stored { .. })),
        "{o:?}"
    );
    let r = request(srv.http, "POST", "/api/queues/work/purge", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"queue": "work", "purged": 5}));
    let q = get_json(srv.http, "/api/queues/work").await;
    assert_eq!(q["stats"]["ready"], json!(0));
    assert_eq!(q["stats"]["dropped"]["purged"], json!(5));

    let r = request(srv.http, "DELETE", "/api/queues/work", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["deleted"], json!(true));
    assert_eq!(
        request(srv.http, "GET", "/api/queues/work", None)
            .await
            .status,
        404
    );
    assert_eq!(get_json(srv.http, "/api/queues").await, json!([]));
    assert!(!dir.exists(), "its files are gone");
}

#[tokio::test]
async fn dashboard_is_one_self_contained_page() {
    let srv = start().await;
    let r = request(srv.http, "GET", "/", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.body.to_lowercase();
    assert!(html.contains("/api/queues"), "it polls the API");
    assert!(html.contains("<canvas"), "it draws a throughput chart");
    for external in [
        "http://",
        "https://",
        "<script src",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}

fn arb_config() -> impl Strategy<Value = QueueConfig> {
    let fsync = prop_oneof![
        Just(Fsync::Always),
        Just(Fsync::Never),
        (1u32..=60_000).prop_map(Fsync::Interval)
    ];
    let durability = prop_oneof![Just(Durability::Memory), fsync.prop_map(Durability::Disk)];
    let rate = (
        proptest::option::of(1u32..),
        proptest::option::of(1u64..),
        1u32..,
        1u64..,
    )
        .prop_filter("some rate", |(m, b, _, _)| m.is_some() || b.is_some())
        .prop_map(|(m, b, bm, bb)| RateLimit {
            msgs_per_sec: m,
            bytes_per_sec: b,
            burst_msgs: bm,
            burst_bytes: bb,
        });
    (
        (
            1u64..,
            1u64..,
            proptest::sample::select(Overflow::ALL.to_vec()),
        ),
        (
            prop_oneof![Just(Order::Fifo), Just(Order::Priority)],
            durability,
            1u64..=86_400_000,
        ),
        (
            proptest::option::of(1u32..),
            proptest::option::of("[a-z]{1,8}"),
            proptest::option::of(1u64..=1_000_000),
            proptest::option::of(rate),
            proptest::option::of((proptest::option::of(1u64..), 1u32..)),
        ),
        (
            proptest::option::of("[a-z.]{1,8}"),
            proptest::option::of("[a-z.#*]{0,8}"),
            any::<bool>(),
            proptest::option::of(1u64..=86_400_000),
            1u8..=levee_proto::MAX_REPLICAS,
        ),
    )
        .prop_map(
            |(
                (max_messages, max_bytes, overflow),
                (order, durability, ack_timeout_ms),
                (max_deliveries, dead_letter, message_ttl_ms, rate_limit, dedup),
                (
                    dead_letter_exchange,
                    dead_letter_routing_key,
                    single_active_consumer,
                    expires_ms,
                    replicas,
                ),
            )| QueueConfig {
                max_messages,
                max_bytes,
                overflow,
                order,
                durability,
                ack_timeout_ms,
                max_deliveries,
                dead_letter,
                message_ttl_ms,
                rate_limit,
                dead_letter_exchange,
                dead_letter_routing_key,
                single_active_consumer,
                expires_ms,
                dedup: dedup.map(|(window_ms, max_ids)| levee_proto::Dedup { window_ms, max_ids }),
                replicas,
            },
        )
}

proptest! {
    /// The JSON form round-trips: what `GET` shows can be `PUT` back as the same config.
    #[test]
    fn config_json_round_trips(c in arb_config()) {
        let text = config_to_json(&c).to_string();
        prop_assert_eq!(config_from_json(text.as_bytes()).unwrap(), c);
    }

    /// Arbitrary bytes as a config body never panic: either a config or an error.
    #[test]
    fn config_json_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = config_from_json(&body);
    }
}

#[test]
fn empty_body_is_the_default_config() {
    assert_eq!(config_from_json(b"").unwrap(), QueueConfig::default());
    assert_eq!(config_from_json(b" {} ").unwrap(), QueueConfig::default());
    assert_eq!(
        config_from_json(br#"{"max_deliveries": null}"#)
            .unwrap()
            .max_deliveries,
        None,
        "null means unlimited, missing means the default"
    );
}
