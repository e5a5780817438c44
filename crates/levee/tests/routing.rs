//! Exchanges and routing against the real `levee` binary: fanout, topic, headers and the default
//! exchange over the wire protocol; one full target refusing (reject) or storing (drop-oldest)
//! a routed message; durable exchanges and bindings across a kill -9 restart; passive declare and
//! delete if-unused; dead-lettering through an exchange; the CLI commands and the HTTP
//! endpoints.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Server, client, levee, memory_queue, ok};
use futures::StreamExt;
use levee_client::{Client, ClientError, ConsumerOptions, Credit};
use levee_proto::{
    Binding, ErrorCode, ExchangeConfig, ExchangeKind, Message, Overflow, PublishOutcome,
    QueueConfig, RoutedOutcome,
};
use serde_json::Value;

async fn ready(c: &Client, q: &str) -> u64 {
    c.inspect(q).await.expect("inspect").stats.ready
}

async fn declare_memory(c: &Client, q: &str, max: u64, overflow: Overflow) {
    c.declare(q, memory_queue(overflow, max, 1 << 20))
        .await
        .expect("declare");
}

fn server_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_topic_headers_and_the_default_exchange_route_to_the_right_queues() {
    let server = Server::start();
    let c = client(&server).await;
    for q in ["a", "b", "c", "eu", "all", "pdf"] {
        declare_memory(&c, q, 100, Overflow::Reject).await;
    }
    // Fanout to three queues: one copy each.
    c.declare_exchange("fan", ExchangeConfig::new(ExchangeKind::Fanout))
        .await
        .unwrap();
    for q in ["a", "b", "c"] {
        assert!(c.bind(Binding::new("fan", q, "")).await.unwrap());
    }
    let o = c
        .publish_to_exchange("fan", "whatever", vec![Message::new("hello")])
        .await
        .unwrap();
    assert_eq!(
        o,
        vec![RoutedOutcome::Routed {
            targets: 3,
            outcome: PublishOutcome::Stored { seq: 1 }
        }]
    );
    for q in ["a", "b", "c"] {
        assert_eq!(ready(&c, q).await, 1, "{q}");
    }
    // Topic patterns.
    c.declare_exchange("orders", ExchangeConfig::new(ExchangeKind::Topic))
        .await
        .unwrap();
    c.bind(Binding::new("orders", "eu", "*.eu.#"))
        .await
        .unwrap();
    c.bind(Binding::new("orders", "all", "#")).await.unwrap();
    let o = c
        .publish_to_exchange("orders", "order.eu.paris", vec![Message::new("1")])
        .await
        .unwrap();
    assert!(matches!(o[0], RoutedOutcome::Routed { targets: 2, .. }));
    let o = c
        .publish_to_exchange("orders", "order.us", vec![Message::new("2")])
        .await
        .unwrap();
    assert!(matches!(o[0], RoutedOutcome::Routed { targets: 1, .. }));
    assert_eq!(ready(&c, "eu").await, 1);
    assert_eq!(ready(&c, "all").await, 2);
    // Headers matching (x-match any), one decision per message of the batch.
    c.bind(
        Binding::new("amq.headers", "pdf", "")
            .with_argument("x-match", "any")
            .with_argument("format", "pdf")
            .with_argument("kind", "report"),
    )
    .await
    .unwrap();
    let o = c
        .publish_to_exchange(
            "amq.headers",
            "",
            vec![
                Message::new("yes").with_header("format", "pdf"),
                Message::new("no").with_header("format", "png"),
            ],
        )
        .await
        .unwrap();
    assert!(o[0].is_stored());
    assert_eq!(o[1], RoutedOutcome::Unroutable);
    assert_eq!(ready(&c, "pdf").await, 1);
    // The default exchange: the routing key is the queue name.
    let o = c
        .publish_to_exchange("", "c", vec![Message::new("direct")])
        .await
        .unwrap();
    assert!(o[0].is_stored());
    assert_eq!(ready(&c, "c").await, 2);
    let o = c
        .publish_to_exchange("", "no-such-queue", vec![Message::new("lost")])
        .await
        .unwrap();
    assert_eq!(o, vec![RoutedOutcome::Unroutable]);
    // Unroutable messages are counted per exchange.
    let list = c.list_exchanges().await.unwrap();
    let count = |name: &str| {
        list.iter()
            .find(|i| i.name == name)
            .map(|i| i.unroutable)
            .unwrap()
    };
    assert_eq!(count(""), 1);
    assert_eq!(count("amq.headers"), 1);
    assert_eq!(count("fan"), 0);
    // A delivered routed message carries its exchange and routing key.
    let mut consumer = c
        .consumer(
            "eu",
            ConsumerOptions {
                credit: Credit::Fixed(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("delivery in time")
        .unwrap()
        .unwrap();
    let header = |n: &str| {
        d.message()
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-levee-exchange").as_deref(), Some(&b"orders"[..]));
    assert_eq!(
        header("x-levee-routing-key").as_deref(),
        Some(&b"order.eu.paris"[..])
    );
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_target_refuses_under_reject_and_stores_under_drop_oldest() {
    let server = Server::start();
    let c = client(&server).await;
    declare_memory(&c, "roomy", 100, Overflow::Reject).await;
    declare_memory(&c, "full", 1, Overflow::Reject).await;
    declare_memory(&c, "ring", 1, Overflow::DropOldest).await;
    c.declare_exchange("pair", ExchangeConfig::new(ExchangeKind::Direct))
        .await
        .unwrap();
    c.bind(Binding::new("pair", "roomy", "k")).await.unwrap();
    c.bind(Binding::new("pair", "full", "k")).await.unwrap();
    let first = c
        .publish_to_exchange("pair", "k", vec![Message::new("1")])
        .await
        .unwrap();
    assert!(first[0].is_stored(), "{first:?}");
    let second = c
        .publish_to_exchange("pair", "k", vec![Message::new("2")])
        .await
        .unwrap();
    match &second[0] {
        RoutedOutcome::Routed {
            targets: 2,
            outcome: PublishOutcome::Rejected { code, reason },
        } => {
            assert_eq!(*code, ErrorCode::QueueFull);
            assert!(reason.contains("queue full"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(ready(&c, "roomy").await, 2);
    assert_eq!(ready(&c, "full").await, 1);
    // Under drop-oldest the full target makes room: stored everywhere.
    c.unbind(Binding::new("pair", "full", "k")).await.unwrap();
    c.bind(Binding::new("pair", "ring", "k")).await.unwrap();
    for p in ["3", "4"] {
        let o = c
            .publish_to_exchange("pair", "k", vec![Message::new(p)])
            .await
            .unwrap();
        assert!(o[0].is_stored(), "{o:?}");
    }
    let ring = c.inspect("ring").await.unwrap().stats;
    assert_eq!(ring.ready, 1);
    assert_eq!(ring.dropped_total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_exchanges_and_bindings_survive_a_kill9_restart_and_transient_ones_do_not() {
    let mut server = Server::start();
    {
        let c = client(&server).await;
        c.declare("orders", QueueConfig::default()).await.unwrap();
        c.declare_exchange("keep", ExchangeConfig::new(ExchangeKind::Topic))
            .await
            .unwrap();
        c.declare_exchange(
            "temp",
            ExchangeConfig::new(ExchangeKind::Fanout).durable(false),
        )
        .await
        .unwrap();
        c.bind(Binding::new("keep", "orders", "orders.*"))
            .await
            .unwrap();
        c.bind(Binding::new("temp", "orders", "")).await.unwrap();
        // Passive declare of a missing exchange, delete if-unused while bound: refused.
        let e = c.check_exchange("nope").await.unwrap_err();
        assert_eq!(server_code(&e), Some(ErrorCode::UnknownExchange), "{e}");
        let e = c.delete_exchange("keep", true).await.unwrap_err();
        assert_eq!(server_code(&e), Some(ErrorCode::ExchangeInUse), "{e}");
        // A redeclare with another type names the difference.
        let e = c
            .declare_exchange("keep", ExchangeConfig::new(ExchangeKind::Direct))
            .await
            .unwrap_err();
        assert_eq!(
            server_code(&e),
            Some(ErrorCode::ExchangeConfigMismatch),
            "{e}"
        );
        assert!(e.to_string().contains("type: existing topic"), "{e}");
    }
    server.restart_after_kill9();
    let c = client(&server).await;
    c.check_exchange("keep").await.unwrap();
    let e = c.check_exchange("temp").await.unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::UnknownExchange), "{e}");
    let bindings = c.list_bindings(None).await.unwrap();
    assert_eq!(bindings, vec![Binding::new("keep", "orders", "orders.*")]);
    let o = c
        .publish_to_exchange("keep", "orders.new", vec![Message::new("after")])
        .await
        .unwrap();
    assert!(o[0].is_stored(), "{o:?}");
    // Now unused: delete if-unused succeeds once the binding is gone.
    c.unbind(Binding::new("keep", "orders", "orders.*"))
        .await
        .unwrap();
    c.delete_exchange("keep", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_through_an_exchange() {
    let server = Server::start();
    let c = client(&server).await;
    c.declare_exchange(
        "dlx",
        ExchangeConfig::new(ExchangeKind::Topic).internal(true),
    )
    .await
    .unwrap();
    declare_memory(&c, "dead", 10, Overflow::Reject).await;
    c.bind(Binding::new("dlx", "dead", "task.#")).await.unwrap();
    let mut work = memory_queue(Overflow::Reject, 10, 1 << 20);
    work.dead_letter_exchange = Some("dlx".into());
    c.declare("work", work).await.unwrap();
    c.bind(Binding::new("amq.direct", "work", "task.video"))
        .await
        .unwrap();
    // Internal: not publishable directly.
    let e = c
        .publish_to_exchange("dlx", "task.x", vec![Message::new("x")])
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some(ErrorCode::AccessDenied), "{e}");
    let o = c
        .publish_to_exchange("amq.direct", "task.video", vec![Message::new("encode")])
        .await
        .unwrap();
    assert!(o[0].is_stored());
    let one = || ConsumerOptions {
        credit: Credit::Fixed(1),
        ..Default::default()
    };
    let mut worker = c.consumer("work", one()).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), worker.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    d.reject().unwrap();
    let mut dead = c.consumer("dead", one()).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("the dead letter arrives")
        .unwrap()
        .unwrap();
    let header = |n: &str| {
        d.message()
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(d.payload().as_ref(), b"encode");
    assert_eq!(header("x-death-reason").as_deref(), Some("rejected"));
    assert_eq!(header("x-death-queue").as_deref(), Some("work"));
    // Routed with its original routing key.
    assert_eq!(header("x-levee-routing-key").as_deref(), Some("task.video"));
    assert_eq!(header("x-levee-exchange").as_deref(), Some("dlx"));
    d.ack().unwrap();
}

#[test]
fn exchange_commands_from_the_command_line() {
    let server = Server::start();
    for q in ["audit", "billing"] {
        ok(levee(
            &server,
            &["queue", "declare", q, "--durability", "memory"],
        ));
    }
    let out = ok(levee(
        &server,
        &["exchange", "declare", "events", "--type", "topic"],
    ));
    assert_eq!(out.trim(), "created events");
    ok(levee(&server, &["bind", "events", "audit", "--key", "#"]));
    let out = ok(levee(
        &server,
        &["bind", "events", "billing", "--key", "invoice.*"],
    ));
    assert!(out.starts_with("bound events -> billing"), "{out}");
    let out = ok(levee(
        &server,
        &[
            "publish",
            "--exchange",
            "events",
            "--routing-key",
            "invoice.paid",
            "one",
            "two",
        ],
    ));
    assert!(
        out.contains("published 2") && out.contains("stored=2") && out.contains("unroutable=0"),
        "{out}"
    );
    // Not every message stored: exit status 3, counted as unroutable.
    let out = levee(&server, &["publish", "--exchange", "amq.fanout", "lost"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unroutable=1"),
        "{out:?}"
    );
    let list = ok(levee(&server, &["exchange", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("events\ttopic\tdurable\tbindings=2 routed=2")),
        "{list}"
    );
    let json: Value =
        serde_json::from_str(&ok(levee(&server, &["exchange", "list", "--json"]))).unwrap();
    let fanout = json
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "amq.fanout")
        .unwrap();
    assert_eq!(fanout["unroutable"], 1);
    let bindings = ok(levee(&server, &["exchange", "bindings", "events"]));
    assert_eq!(bindings.lines().count(), 2, "{bindings}");
    // Deleting a bound exchange with --if-unused is refused, with a clear error.
    let out = levee(&server, &["exchange", "delete", "events", "--if-unused"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );
    ok(levee(&server, &["unbind", "events", "audit", "--key", "#"]));
    ok(levee(
        &server,
        &["unbind", "events", "billing", "--key", "invoice.*"],
    ));
    let out = ok(levee(
        &server,
        &["exchange", "delete", "events", "--if-unused"],
    ));
    assert_eq!(out.trim(), "deleted events");
    assert_eq!(
        ok(levee(&server, &["queue", "inspect", "billing", "--json"]))
            .parse::<Value>()
            .unwrap()["stats"]["ready"],
        2
    );
}

/// One HTTP/1.1 request: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, resp) = common::http_request(
        addr,
        method,
        path,
        "Content-Type: application/json\r\n",
        body,
    );
    (status, common::http_body(&resp).to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[test]
fn exchange_endpoints_over_http() {
    let server = Server::start();
    let h = server.http;
    let (s, b) = http(
        h,
        "PUT",
        "/api/queues/inbox",
        r#"{"durability": "memory", "max_messages": 10, "overflow": "reject"}"#,
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = http(h, "PUT", "/api/exchanges/mail", r#"{"type": "headers"}"#);
    assert_eq!(s, 201, "{b}");
    let (s, _) = http(h, "PUT", "/api/exchanges/mail", r#"{"type": "headers"}"#);
    assert_eq!(s, 200);
    let (s, b) = http(h, "PUT", "/api/exchanges/mail", r#"{"type": "fanout"}"#);
    assert_eq!(s, 409, "{b}");
    let v = json(&b);
    assert_eq!(v["error"], "exchange-config-mismatch");
    assert_eq!(v["differences"][0]["field"], "type");
    let (s, b) = http(h, "PUT", "/api/exchanges/mail", r#"{"type": "nope"}"#);
    assert_eq!(s, 400, "{b}");
    let (s, b) = http(h, "PUT", "/api/exchanges/amq.mine", r#"{"type": "direct"}"#);
    assert_eq!((s, json(&b)["error"].clone()), (403, "forbidden".into()));
    let (s, b) = http(
        h,
        "PUT",
        "/api/exchanges/mail/bindings/inbox",
        r#"{"arguments": {"x-match": "all", "to": "ops"}}"#,
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = http(h, "PUT", "/api/exchanges/mail/bindings/nobody", "{}");
    assert_eq!(
        (s, json(&b)["error"].clone()),
        (404, "unknown-queue".into())
    );
    let (s, b) = http(
        h,
        "POST",
        "/api/exchanges/mail/publish",
        r#"{"payload": "hi", "headers": {"to": "ops"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["outcome"], "stored");
    let (s, b) = http(
        h,
        "POST",
        "/api/exchanges/mail/publish",
        r#"{"payload": "hi", "headers": {"to": "dev"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["outcome"], "unroutable");
    let (s, b) = http(h, "GET", "/api/exchanges/mail", "");
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(
        (v["routed"].clone(), v["unroutable"].clone()),
        (1.into(), 1.into())
    );
    let (s, b) = http(h, "GET", "/api/exchanges/mail/bindings", "");
    assert_eq!(s, 200);
    assert_eq!(json(&b)[0]["queue"], "inbox");
    let (_, b) = http(h, "GET", "/metrics", "");
    assert!(
        b.contains("levee_exchange_unroutable_total{exchange=\"mail\"} 1"),
        "{b}"
    );
    let (s, b) = http(h, "DELETE", "/api/exchanges/mail?if_unused=true", "");
    assert_eq!(
        (s, json(&b)["error"].clone()),
        (409, "exchange-in-use".into())
    );
    let (s, b) = http(
        h,
        "DELETE",
        "/api/exchanges/mail/bindings/inbox",
        r#"{"arguments": {"x-match": "all", "to": "ops"}}"#,
    );
    assert_eq!((s, json(&b)["existed"].clone()), (200, true.into()), "{b}");
    let (s, _) = http(h, "DELETE", "/api/exchanges/mail?if_unused=true", "");
    assert_eq!(s, 200);
    let (s, b) = http(h, "GET", "/api/exchanges/mail", "");
    assert_eq!(
        (s, json(&b)["error"].clone()),
        (404, "unknown-exchange".into())
    );
    let (s, b) = http(h, "GET", "/api/exchanges", "");
    assert_eq!(s, 200);
    assert_eq!(json(&b).as_array().unwrap().len(), 5, "{b}");
}
