//! Definitions export / import (`GET|POST /api/definitions`, `levee definitions`), against two
//! real brokers: what one exports, the other imports to the same queues.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::Server;
use serde_json::{Value, json};

fn http(server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(server.http).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
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

fn levee(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .args(["--addr", &server.wire.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn definitions_exported_from_one_broker_recreate_its_queues_in_another() {
    let a = Server::start();
    // Declared in an order an import could not use as is: the dead-letter queue last.
    http(&a, "PUT", "/api/queues/z.dead", Some(&json!({})));
    http(
        &a,
        "PUT",
        "/api/queues/orders",
        Some(
            &json!({"max_messages": 7, "dead_letter": "z.dead", "dedup": null,
                     "overflow": "reject"}),
        ),
    );
    let (st, exported) = http(&a, "GET", "/api/definitions", None);
    assert_eq!(st, 200, "{exported}");
    assert_eq!(exported["levee_definitions"], 1);
    assert_eq!(exported["queues"].as_array().unwrap().len(), 2);
    assert_eq!(
        exported["exchanges"],
        json!([]),
        "reserved sections are present and empty"
    );
    let cli: Value = serde_json::from_str(&levee(&a, &["definitions", "export"])).unwrap();
    assert_eq!(
        cli, exported,
        "the CLI and the API export the same document"
    );

    let b = Server::start();
    let file = b.data_dir.parent().unwrap().join("defs.json");
    std::fs::write(&file, exported.to_string()).unwrap();
    let text = levee(&b, &["definitions", "import", file.to_str().unwrap()]);
    assert!(text.contains("2 created"), "{text}");
    let (_, orders) = http(&b, "GET", "/api/queues/orders", None);
    assert_eq!(
        orders["config"], exported["queues"][0]["config"],
        "{orders}"
    );
    let (st, r) = http(&b, "POST", "/api/definitions", Some(&exported));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["unchanged"].as_array().unwrap().len(), 2, "{r}");
    // A changed limit is applied live; a non-empty section this build lacks is refused.
    let mut changed = exported.clone();
    changed["queues"][0]["config"]["max_messages"] = json!(70);
    let (st, r) = http(&b, "POST", "/api/definitions", Some(&changed));
    assert_eq!((st, r["updated"][0].as_str()), (200, Some("orders")), "{r}");
    let mut unsupported = exported.clone();
    unsupported["exchanges"] = json!([{"name": "x"}]);
    let (st, r) = http(&b, "POST", "/api/definitions", Some(&unsupported));
    assert_eq!((st, r["error"].as_str()), (400, Some("bad-request")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("exchanges"), "{r}");
}

#[test]
fn a_publish_body_may_be_larger_than_a_config_body() {
    let server = Server::start();
    http(&server, "PUT", "/api/queues/big", Some(&json!({})));
    let payload = "x".repeat(200 * 1024);
    let (st, b) = http(
        &server,
        "POST",
        "/api/queues/big/messages",
        Some(&json!({ "payload": payload })),
    );
    assert_eq!(
        (st, b["outcomes"][0]["outcome"].as_str()),
        (200, Some("stored")),
        "{b}"
    );
}
