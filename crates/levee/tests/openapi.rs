//! `/openapi.json` describes the API as it answers: every endpoint of the document is called
//! on the real binary and each JSON response is validated (JSON Schema, `jsonschema` crate)
//! against the document's schema for its status; the document must list every endpoint.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use base64::Engine;
use common::Server;
use serde_json::{Value, json};

/// The endpoints the router serves (the document must describe each).
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/api/queues"),
    ("get", "/api/queues/{name}"),
    ("put", "/api/queues/{name}"),
    ("patch", "/api/queues/{name}"),
    ("delete", "/api/queues/{name}"),
    ("post", "/api/queues/{name}/purge"),
    ("post", "/api/queues/{name}/messages"),
    ("get", "/api/queues/{name}/messages"),
    ("post", "/api/queues/{name}/receive"),
    ("post", "/api/queues/{name}/ack"),
    ("post", "/api/queues/{name}/nack"),
    ("post", "/api/queues/{name}/reject"),
    ("post", "/api/queues/{name}/extend"),
    ("post", "/api/queues/{name}/move"),
    ("get", "/api/queues/{name}/history"),
    ("get", "/api/alerts"),
    ("put", "/api/alerts/{name}"),
    ("delete", "/api/alerts/{name}"),
    ("get", "/api/overview"),
    ("get", "/api/definitions"),
    ("post", "/api/definitions"),
    ("get", "/api/exchanges"),
    ("get", "/api/exchanges/{name}"),
    ("put", "/api/exchanges/{name}"),
    ("delete", "/api/exchanges/{name}"),
    ("get", "/api/exchanges/{name}/bindings"),
    ("put", "/api/exchanges/{name}/bindings/{queue}"),
    ("delete", "/api/exchanges/{name}/bindings/{queue}"),
    ("post", "/api/exchanges/{name}/publish"),
];

struct Checker {
    server: Server,
    doc: Value,
    covered: BTreeSet<(String, String)>,
    /// An `Authorization` header line, sent with every request when set.
    auth: String,
}

impl Checker {
    fn raw(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        let mut s = std::net::TcpStream::connect(self.server.http).unwrap();
        write!(
            s,
            "{} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{}\
             Content-Length: {}\r\n\r\n{body}",
            method.to_uppercase(),
            self.auth,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    /// Calls `path` (an instance of `template`) and validates the answer against the document.
    fn call(&mut self, method: &str, template: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, head, text) = self.raw(method, path, &body);
        self.covered.insert((method.into(), template.into()));
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} answered {status}, which the document does not list: {text}"
        );
        let content = resp["content"].as_object().expect("content");
        let (ctype, media) = content.iter().next().unwrap();
        assert!(
            head.contains(&format!("content-type: {ctype}")),
            "{method} {path}: {head}"
        );
        if ctype != "application/json" {
            return Value::Null;
        }
        let value: Value = serde_json::from_str(text.trim()).unwrap();
        let mut schema = self.doc.clone();
        schema["allOf"] = json!([media["schema"]]);
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} ({status}): {errors:?}\n{value:#}"
        );
        value
    }
}

#[test]
fn every_endpoint_answers_as_the_openapi_document_says() {
    let server = Server::start();
    let (st, text) = common::http_get(server.http, "/openapi.json");
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(text.trim()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (m, p) in ENDPOINTS {
        assert!(doc["paths"][p][m].is_object(), "the document lacks {m} {p}");
    }
    let mut c = Checker {
        server,
        doc,
        covered: BTreeSet::new(),
        auth: String::new(),
    };
    let q = "/api/queues/{name}";
    c.call("get", "/", "/", None);
    c.call("get", "/metrics", "/metrics", None);
    c.call("get", "/openapi.json", "/openapi.json", None);
    c.call("get", "/healthz", "/healthz", None);
    c.call("get", "/readyz", "/readyz", None);
    c.call("put", q, "/api/queues/dead", Some(json!({})));
    c.call(
        "put",
        q,
        "/api/queues/jobs",
        Some(json!({"dead_letter": "dead", "ack_timeout_ms": 60000})),
    );
    c.call("put", q, "/api/queues/jobs", Some(json!({})));
    c.call(
        "put",
        q,
        "/api/queues/jobs",
        Some(json!({"overflow": "nope"})),
    );
    c.call(
        "put",
        q,
        "/api/queues/mem",
        Some(json!({"durability": "memory", "rate_limit": {"msgs_per_sec": 100}})),
    );
    c.call("get", "/api/queues", "/api/queues", None);
    c.call("get", q, "/api/queues/jobs", None);
    c.call("get", q, "/api/queues/mem", None);
    c.call("get", q, "/api/queues/none", None);
    c.call(
        "patch",
        q,
        "/api/queues/jobs",
        Some(json!({"max_messages": 500})),
    );
    c.call(
        "patch",
        q,
        "/api/queues/jobs",
        Some(json!({"order": "priority"})),
    );
    c.call("patch", q, "/api/queues/none", Some(json!({})));
    let m = "/api/queues/{name}/messages";
    c.call(
        "post",
        m,
        "/api/queues/jobs/messages",
        Some(json!({"payload": "a", "message_id": "1"})),
    );
    c.call(
        "post",
        m,
        "/api/queues/jobs/messages",
        Some(json!({"messages": [
        {"payload_base64": "AP8=", "headers": {"h": "v"}, "key": "k", "ttl_ms": 60000},
        {"payload": "b", "message_id": "1"}, {"payload": "c"}, {"payload": "d"}]})),
    );
    c.call(
        "post",
        m,
        "/api/queues/jobs/messages",
        Some(json!({"messages": []})),
    );
    c.call(
        "post",
        m,
        "/api/queues/none/messages",
        Some(json!({"payload": "x"})),
    );
    c.call(
        "get",
        m,
        "/api/queues/jobs/messages?count=10&preview=1",
        None,
    );
    c.call("get", m, "/api/queues/none/messages", None);
    let got = c.call(
        "post",
        "/api/queues/{name}/receive",
        "/api/queues/jobs/receive?max=4",
        None,
    );
    let r: Vec<Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].clone())
        .collect();
    assert_eq!(r.len(), 4);
    c.call(
        "post",
        "/api/queues/{name}/receive",
        "/api/queues/jobs/receive?max=0",
        None,
    );
    c.call(
        "post",
        "/api/queues/{name}/extend",
        "/api/queues/jobs/extend",
        Some(json!({"receipts": [r[0]], "extend_ms": 1000})),
    );
    c.call(
        "post",
        "/api/queues/{name}/ack",
        "/api/queues/jobs/ack",
        Some(json!({"receipts": [r[0], "1.999"]})),
    );
    c.call(
        "post",
        "/api/queues/{name}/nack",
        "/api/queues/jobs/nack",
        Some(json!({"receipts": [r[1]], "delay_ms": 10})),
    );
    c.call(
        "post",
        "/api/queues/{name}/reject",
        "/api/queues/jobs/reject",
        Some(json!({"receipts": [r[2]]})),
    );
    c.call(
        "post",
        "/api/queues/{name}/reject",
        "/api/queues/jobs/reject",
        Some(json!({"nope": 1})),
    );
    c.call(
        "post",
        "/api/queues/{name}/move",
        "/api/queues/dead/move",
        Some(json!({"to": "jobs", "max": 5})),
    );
    c.call(
        "post",
        "/api/queues/{name}/move",
        "/api/queues/dead/move",
        Some(json!({"to": "none"})),
    );
    c.call(
        "post",
        "/api/queues/{name}/purge",
        "/api/queues/jobs/purge",
        None,
    );
    c.call(
        "post",
        "/api/queues/{name}/purge",
        "/api/queues/none/purge",
        None,
    );
    // Operations: history, alert rules, the overview.
    let a = "/api/alerts/{name}";
    c.call(
        "put",
        a,
        "/api/alerts/deep",
        Some(json!({"queue": "jobs", "depth_above": 0})),
    );
    c.call(
        "put",
        a,
        "/api/alerts/deep",
        Some(json!({"queue": "mem", "no_consumer_credit": true})),
    );
    c.call(
        "put",
        a,
        "/api/alerts/hot",
        Some(json!({"queue": "*", "key": "k", "field": "t", "above": 28.5, "webhook": "http://127.0.0.1:9/x"})),
    );
    c.call("put", a, "/api/alerts/bad", Some(json!({"queue": "jobs"})));
    c.call(
        "put",
        a,
        "/api/alerts/bad",
        Some(json!({"queue": "jobs", "nope": 1})),
    );
    let h = "/api/queues/{name}/history";
    common::wait_until("a history point and a firing alert", || {
        let (_, text) = common::http_get(c.server.http, "/api/queues/jobs/history");
        let (_, alerts) = common::http_get(c.server.http, "/api/alerts");
        text.contains("\"t\"") && alerts.contains("\"since\"")
    });
    c.call("get", h, "/api/queues/jobs/history", None);
    c.call("get", h, "/api/queues/jobs/history?since=1", None);
    c.call("get", h, "/api/queues/none/history", None);
    c.call("get", "/api/alerts", "/api/alerts", None);
    c.call("get", "/api/overview", "/api/overview", None);
    c.call("delete", a, "/api/alerts/hot", None);
    c.call("delete", a, "/api/alerts/hot", None);
    let al = c.call("get", "/api/alerts", "/api/alerts", None);
    assert!(!al["recent"].as_array().unwrap().is_empty(), "{al}");
    let defs = c.call("get", "/api/definitions", "/api/definitions", None);
    c.call("post", "/api/definitions", "/api/definitions", Some(defs));
    c.call(
        "post",
        "/api/definitions",
        "/api/definitions",
        Some(json!({"queues": 5})),
    );
    let x = "/api/exchanges/{name}";
    let xb = "/api/exchanges/{name}/bindings/{queue}";
    let xp = "/api/exchanges/{name}/publish";
    c.call(
        "put",
        x,
        "/api/exchanges/events",
        Some(json!({"type": "topic", "arguments": {"a": "b"}})),
    );
    c.call(
        "put",
        x,
        "/api/exchanges/events",
        Some(json!({"type": "topic"})),
    );
    c.call(
        "put",
        x,
        "/api/exchanges/events",
        Some(json!({"type": "fanout"})),
    );
    c.call(
        "put",
        x,
        "/api/exchanges/bad",
        Some(json!({"type": "nope"})),
    );
    c.call(
        "put",
        x,
        "/api/exchanges/amq.mine",
        Some(json!({"type": "direct"})),
    );
    c.call("get", "/api/exchanges", "/api/exchanges", None);
    c.call("get", x, "/api/exchanges/events", None);
    c.call("get", x, "/api/exchanges/amq.default", None);
    c.call("get", x, "/api/exchanges/none", None);
    c.call(
        "put",
        xb,
        "/api/exchanges/events/bindings/jobs",
        Some(json!({"key": "a.*"})),
    );
    c.call(
        "put",
        xb,
        "/api/exchanges/events/bindings/jobs",
        Some(json!({"key": "a.*"})),
    );
    c.call(
        "put",
        xb,
        "/api/exchanges/events/bindings/none",
        Some(json!({})),
    );
    c.call(
        "put",
        xb,
        "/api/exchanges/events/bindings/jobs",
        Some(json!({"k": 1})),
    );
    let bs = c.call(
        "get",
        "/api/exchanges/{name}/bindings",
        "/api/exchanges/events/bindings",
        None,
    );
    assert_eq!(bs.as_array().unwrap().len(), 1, "{bs}");
    // Definitions with exchanges and bindings, and an import refusing some of them.
    let d = "/api/definitions";
    let mut defs = c.call("get", d, d, None);
    assert_eq!(defs["bindings"].as_array().unwrap().len(), 1, "{defs}");
    c.call("post", d, d, Some(defs.clone()));
    defs["bindings"] = json!([{"exchange": "events", "queue": "none"}]);
    defs["exchanges"][0]["type"] = json!("direct");
    let r = c.call("post", d, d, Some(defs));
    assert_eq!(r["errors"].as_array().unwrap().len(), 2, "{r}");
    c.call(
        "get",
        "/api/exchanges/{name}/bindings",
        "/api/exchanges/none/bindings",
        None,
    );
    let o = c.call(
        "post",
        xp,
        "/api/exchanges/events/publish",
        Some(json!({"routing_key": "a.b", "payload": "x", "headers": {"h": "v"}})),
    );
    assert_eq!(o["outcome"], "stored", "{o}");
    let o = c.call(
        "post",
        xp,
        "/api/exchanges/events/publish",
        Some(json!({"routing_key": "z"})),
    );
    assert_eq!(o["outcome"], "unroutable", "{o}");
    c.call("post", xp, "/api/exchanges/none/publish", Some(json!({})));
    c.call(
        "post",
        xp,
        "/api/exchanges/events/publish",
        Some(json!({"nope": 1})),
    );
    c.call("delete", x, "/api/exchanges/events?if_unused=true", None);
    let u = c.call(
        "delete",
        xb,
        "/api/exchanges/events/bindings/jobs",
        Some(json!({"key": "a.*"})),
    );
    assert_eq!(u["existed"], true, "{u}");
    c.call("delete", xb, "/api/exchanges/none/bindings/jobs", None);
    c.call("delete", x, "/api/exchanges/events", None);
    c.call("delete", x, "/api/exchanges/events", None);
    c.call("delete", x, "/api/exchanges/amq.topic", None);
    c.call("delete", q, "/api/queues/mem", None);
    c.call("delete", q, "/api/queues/mem", None);
    let all: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(c.covered, all, "every endpoint was checked");
    let documented: usize = c.doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "patch", "delete"].contains(&k.as_str()))
                .count()
        })
        .sum();
    assert_eq!(
        documented,
        ENDPOINTS.len(),
        "the document lists no endpoint the router lacks"
    );
}

/// With users configured, the auth middleware's 401 (no login) and 403 (a right missing) are
/// answers the document lists, with the error body it describes.
#[test]
fn refusals_of_the_auth_middleware_are_documented() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    let config = common::pki::user("watcher", Some("pw"), &["{ actions = [\"monitor\"] }"]);
    std::fs::write(&path, config).unwrap();
    let server = Server::start_with(&["--config", path.to_str().unwrap()]);
    let (st, text) = common::http_get(server.http, "/openapi.json");
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(text.trim()).unwrap();
    let mut c = Checker {
        server,
        doc,
        covered: BTreeSet::new(),
        auth: String::new(),
    };
    for (m, t, p) in [
        ("get", "/api/queues", "/api/queues"),
        ("put", "/api/queues/{name}", "/api/queues/jobs"),
        ("get", "/api/exchanges", "/api/exchanges"),
        ("post", "/api/definitions", "/api/definitions"),
    ] {
        let (status, _, _) = c.raw(m, p, "{}");
        assert_eq!(status, 401, "{m} {p} without a login");
        c.call(m, t, p, Some(json!({})));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode("watcher:pw");
    c.auth = format!("Authorization: Basic {b64}\r\n");
    let v = c.call("get", "/api/queues", "/api/queues", None);
    assert!(v.is_array(), "{v}");
    for (m, t, p) in [
        ("put", "/api/queues/{name}", "/api/queues/jobs"),
        ("put", "/api/exchanges/{name}", "/api/exchanges/events"),
        (
            "post",
            "/api/exchanges/{name}/publish",
            "/api/exchanges/amq.topic/publish",
        ),
        ("post", "/api/definitions", "/api/definitions"),
    ] {
        let (status, _, _) = c.raw(m, p, "{}");
        assert_eq!(status, 403, "{m} {p} with monitor rights only");
        c.call(m, t, p, Some(json!({"type": "topic"})));
    }
}
