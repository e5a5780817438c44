//! Definitions export / import (`GET|POST /api/definitions`, `levee definitions`), against two
//! real brokers: what one exports, the other imports to the same queues.

mod common;

use common::{Server, http_json, levee_ok};
use serde_json::{Value, json};

#[test]
fn definitions_exported_from_one_broker_recreate_its_queues_in_another() {
    let a = Server::start();
    // Declared in an order an import could not use as is: the dead-letter queue last.
    http_json(&a, "PUT", "/api/queues/z.dead", Some(&json!({})));
    http_json(
        &a,
        "PUT",
        "/api/queues/orders",
        Some(
            &json!({"max_messages": 7, "dead_letter": "z.dead", "dedup": null,
                     "overflow": "reject"}),
        ),
    );
    let (st, exported) = http_json(&a, "GET", "/api/definitions", None);
    assert_eq!(st, 200, "{exported}");
    assert_eq!(exported["levee_definitions"], 1);
    assert_eq!(exported["queues"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            &exported["exchanges"],
            &exported["bindings"],
            &exported["users"]
        ),
        (&json!([]), &json!([]), &json!([])),
        "no declared exchange, no binding, and the reserved users section is empty"
    );
    let cli: Value = serde_json::from_str(&levee_ok(&a, &["definitions", "export"])).unwrap();
    assert_eq!(
        cli, exported,
        "the CLI and the API export the same document"
    );

    let b = Server::start();
    let file = b.data_dir.parent().unwrap().join("defs.json");
    std::fs::write(&file, exported.to_string()).unwrap();
    let text = levee_ok(&b, &["definitions", "import", file.to_str().unwrap()]);
    assert!(text.contains("2 created"), "{text}");
    let (_, orders) = http_json(&b, "GET", "/api/queues/orders", None);
    assert_eq!(
        orders["config"], exported["queues"][0]["config"],
        "{orders}"
    );
    let (st, r) = http_json(&b, "POST", "/api/definitions", Some(&exported));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["unchanged"].as_array().unwrap().len(), 2, "{r}");
    // A changed limit is applied live; a non-empty section this build lacks is refused.
    let mut changed = exported.clone();
    changed["queues"][0]["config"]["max_messages"] = json!(70);
    let (st, r) = http_json(&b, "POST", "/api/definitions", Some(&changed));
    assert_eq!((st, r["updated"][0].as_str()), (200, Some("orders")), "{r}");
    let mut unsupported = exported.clone();
    unsupported["users"] = json!([{"name": "x"}]);
    let (st, r) = http_json(&b, "POST", "/api/definitions", Some(&unsupported));
    assert_eq!((st, r["error"].as_str()), (400, Some("bad-request")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("users"), "{r}");
}

#[test]
fn exchanges_and_bindings_survive_an_export_and_an_import_into_a_fresh_broker() {
    let a = Server::start();
    for q in ["jobs", "audit"] {
        http_json(&a, "PUT", &format!("/api/queues/{q}"), Some(&json!({})));
    }
    // A queue dead-lettering through an exchange declared after it: import must not mind.
    http_json(
        &a,
        "PUT",
        "/api/queues/work",
        Some(&json!({"dead_letter_exchange": "events", "dead_letter_routing_key": "a.dead"})),
    );
    for (x, body) in [
        (
            "events",
            json!({"type": "topic", "arguments": {"owner": "ops"}}),
        ),
        (
            "fan",
            json!({"type": "fanout", "durable": false, "internal": true}),
        ),
        ("by-header", json!({"type": "headers", "auto_delete": true})),
    ] {
        let (st, r) = http_json(&a, "PUT", &format!("/api/exchanges/{x}"), Some(&body));
        assert_eq!(st, 201, "{x}: {r}");
    }
    for (x, q, body) in [
        ("events", "jobs", json!({"key": "a.*"})),
        ("events", "audit", json!({"key": "#"})),
        ("fan", "audit", json!({})),
        (
            "by-header",
            "jobs",
            json!({"arguments": {"x-match": "all", "kind": "x"}}),
        ),
        ("amq.topic", "jobs", json!({"key": "x.y"})),
    ] {
        let (st, r) = http_json(
            &a,
            "PUT",
            &format!("/api/exchanges/{x}/bindings/{q}"),
            Some(&body),
        );
        assert_eq!(st, 201, "{x} -> {q}: {r}");
    }
    let (st, exported) = http_json(&a, "GET", "/api/definitions", None);
    assert_eq!(st, 200, "{exported}");
    let names: Vec<&str> = exported["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["by-header", "events", "fan"],
        "predeclared ones are not exported"
    );
    assert_eq!(
        exported["bindings"].as_array().unwrap().len(),
        5,
        "{exported}"
    );
    assert_eq!(exported["users"], json!([]));

    // Into a fresh broker with the CLI: the same document comes back out.
    let b = Server::start();
    let file = b.data_dir.parent().unwrap().join("defs.json");
    std::fs::write(&file, exported.to_string()).unwrap();
    let text = levee_ok(&b, &["definitions", "import", file.to_str().unwrap()]);
    assert!(
        text.contains("exchanges: 3 created") && text.contains("bindings: 5 created"),
        "{text}"
    );
    let (_, again) = http_json(&b, "GET", "/api/definitions", None);
    assert_eq!(
        again, exported,
        "the imported broker exports the same definitions"
    );
    let cli: Value = serde_json::from_str(&levee_ok(&b, &["definitions", "export"])).unwrap();
    assert_eq!(
        cli, exported,
        "the CLI and the API export the same document"
    );
    // The bindings route in the new broker.
    let (st, r) = http_json(
        &b,
        "POST",
        "/api/exchanges/events/publish",
        Some(&json!({"routing_key": "a.b", "payload": "p"})),
    );
    assert_eq!(
        (st, &r["outcome"], &r["targets"]),
        (200, &json!("stored"), &json!(2)),
        "{r}"
    );

    // Over HTTP into another fresh broker; a second import changes nothing.
    let c = Server::start();
    let (st, r) = http_json(&c, "POST", "/api/definitions", Some(&exported));
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (&r["exchanges_created"], &r["bindings_created"]),
        (&json!(["by-header", "events", "fan"]), &json!(5)),
        "{r}"
    );
    let (st, r) = http_json(&c, "POST", "/api/definitions", Some(&exported));
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (
            r["exchanges_unchanged"].as_array().unwrap().len(),
            &r["bindings_unchanged"]
        ),
        (3, &json!(5)),
        "{r}"
    );
    assert_eq!(http_json(&c, "GET", "/api/definitions", None).1, exported);

    // What cannot be imported is reported, the rest still is: an exchange redefined, a binding
    // to a queue the document does not have.
    let mut bad = exported.clone();
    bad["exchanges"][1]["type"] = json!("direct");
    bad["bindings"] = json!([
        {"exchange": "events", "queue": "missing", "key": "k"},
        {"exchange": "fan", "queue": "work"},
    ]);
    let (st, r) = http_json(&c, "POST", "/api/definitions", Some(&bad));
    assert_eq!(st, 409, "{r}");
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{r}");
    assert_eq!(
        (&errors[0]["exchange"], &errors[0]["error"]),
        (&json!("events"), &json!("exchange-config-mismatch")),
        "{r}"
    );
    assert_eq!(errors[1]["binding"]["queue"], "missing", "{r}");
    assert_eq!(r["bindings_created"], 1, "{r}");
    let (_, bs) = http_json(&c, "GET", "/api/exchanges/fan/bindings", None);
    assert_eq!(bs.as_array().unwrap().len(), 2, "{bs}");
    // A malformed section is refused as a whole, before anything is declared.
    let mut malformed = exported.clone();
    malformed["bindings"] = json!([{"exchange": "events"}]);
    let (st, r) = http_json(&c, "POST", "/api/definitions", Some(&malformed));
    assert_eq!(st, 400, "{r}");
}

#[test]
fn a_publish_body_may_be_larger_than_a_config_body() {
    let server = Server::start();
    http_json(&server, "PUT", "/api/queues/big", Some(&json!({})));
    let payload = "x".repeat(200 * 1024);
    let (st, b) = http_json(
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
