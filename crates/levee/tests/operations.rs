//! Operating Levee against the real binary: `/metrics` checked by Prometheus's own `promtool`,
//! the server-side history, alert rules from the config file and over HTTP (with their metric,
//! their webhook and the seed's sensor scenario 10: temperature > 28, humidity > 75 on the latest
//! value per key of a conflated queue).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Server, http_get, http_json, http_publish as publish, ops_tool, wait_until};
use serde_json::{Value, json};

fn firing(server: &Server) -> Vec<(String, String)> {
    let (st, v) = http_json(server, "GET", "/api/alerts", None);
    assert_eq!(st, 200, "{v}");
    v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["queue"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn metrics(server: &Server) -> String {
    let (st, text) = http_get(server.http, "/metrics");
    assert_eq!(st, 200, "{text}");
    text
}

#[test]
fn metrics_pass_promtool_and_carry_the_broker_figures() {
    let promtool = ops_tool("promtool");
    let server = Server::start();
    let (st, _) = http_json(
        &server,
        "PUT",
        "/api/queues/jobs",
        Some(&json!({"fsync": "always"})),
    );
    assert_eq!(st, 201);
    let (st, _) = http_json(
        &server,
        "PUT",
        "/api/alerts/backlog",
        Some(&json!({"queue": "*", "depth_above": 1000})),
    );
    assert_eq!(st, 201);
    for i in 0..5 {
        publish(&server, "jobs", json!({"payload": format!("m{i}")}));
    }
    let (st, got) = http_json(&server, "POST", "/api/queues/jobs/receive?max=2", None);
    assert_eq!(st, 200, "{got}");
    let receipts: Vec<Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["receipt"].clone())
        .collect();
    let (st, _) = http_json(
        &server,
        "POST",
        "/api/queues/jobs/ack",
        Some(&json!({ "receipts": receipts })),
    );
    assert_eq!(st, 200);
    wait_until("the monitor's first tick", || {
        metrics(&server).contains("levee_alert_firing{rule=\"backlog\",queue=\"jobs\"} 0")
    });
    let text = metrics(&server);
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    let sample = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert_eq!(sample("levee_queue_delivered_total{queue=\"jobs\"}"), 2.0);
    assert_eq!(sample("levee_queue_published_total{queue=\"jobs\"}"), 5.0);
    assert!(sample("levee_queue_oldest_ready_age_seconds{queue=\"jobs\"}") >= 0.0);
    assert!(sample("levee_publish_confirm_seconds_count") >= 5.0);
    assert!(sample("levee_fsync_seconds_count") >= 1.0);
    assert!(sample("levee_resident_memory_bytes") > 0.0);
    assert!(sample("levee_disk_bytes") > 0.0);
    assert!(sample("levee_uptime_seconds") > 0.0);
    // The HTTP receive session subscribes: a consumer.
    assert_eq!(sample("levee_consumers"), 1.0);
    assert!(text.contains("levee_build_info{version=\""), "{text}");
    // Rates are Prometheus's to compute: counters only, no rate gauges.
    assert!(!text.contains("_rate{"), "{text}");
}

/// A webhook receiver: every POST body, answered 200 (the first `fail_first` answered 500).
fn webhook_receiver(fail_first: usize) -> (String, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            n += 1;
            if n <= fail_first {
                let _ = s.write_all(b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap());
        }
    });
    (url, rx)
}

/// Scenario 10 of the seed: three sensors publish their readings as JSON into a conflating queue
/// (key = sensor id); rules from the config file watch the latest value per key.
#[test]
fn sensor_thresholds_fire_on_the_latest_value_per_key_and_clear() {
    let (url, hooks) = webhook_receiver(1);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("levee.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerts]]
name = "temperature"
queue = "sensors"
field = "temperature"
above = 28
webhook = "{url}"

[[alerts]]
name = "humidity"
queue = "sensors"
field = "humidity"
above = 75

[history]
seconds = 60
"#
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);
    let (st, v) = http_json(
        &server,
        "PUT",
        "/api/queues/sensors",
        Some(&json!({"overflow": "conflate-by-key", "max_messages": 16, "durability": "memory"})),
    );
    assert_eq!(st, 201, "{v}");
    let reading = |id: &str, t: f64, h: f64| {
        json!({
            "key": id,
            "payload": json!({"sensorId": id, "timestamp": 1, "temperature": t, "humidity": h}).to_string(),
        })
    };
    for (id, t, h) in [
        ("TEMP_01", 22.5, 55.0),
        ("TEMP_02", 24.0, 60.0),
        ("TEMP_03", 21.0, 52.0),
    ] {
        publish(&server, "sensors", reading(id, t, h));
    }
    wait_until("a tick with normal readings", || {
        metrics(&server).contains("levee_alert_firing{rule=\"temperature\",queue=\"sensors\"} 0")
    });
    assert!(firing(&server).is_empty());
    // TEMP_02 heats up: its older reading is replaced (conflation), the newest one is over 28.
    publish(&server, "sensors", reading("TEMP_02", 29.3, 60.0));
    wait_until("the temperature alert", || {
        firing(&server) == [("temperature".to_string(), "sensors".to_string())]
    });
    assert!(
        metrics(&server).contains("levee_alert_firing{rule=\"temperature\",queue=\"sensors\"} 1")
    );
    let (_, alerts) = http_json(&server, "GET", "/api/alerts", None);
    let f = &alerts["firing"][0];
    assert_eq!(f["value"], 29.3, "{alerts}");
    assert!(
        f["detail"].as_str().unwrap().contains("TEMP_02"),
        "{alerts}"
    );
    // The webhook's first attempt failed (500); the retry delivered it.
    let hook = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("webhook");
    assert_eq!(hook["rule"], "temperature");
    assert_eq!(hook["firing"], true);
    // Humidity of TEMP_03 over 75, while TEMP_02 cools down.
    publish(&server, "sensors", reading("TEMP_03", 21.0, 80.5));
    publish(&server, "sensors", reading("TEMP_02", 23.0, 60.0));
    wait_until("humidity fires, temperature clears", || {
        firing(&server) == [("humidity".to_string(), "sensors".to_string())]
    });
    let hook = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("webhook");
    assert_eq!(
        (hook["rule"].clone(), hook["firing"].clone()),
        (json!("temperature"), json!(false))
    );
    // Conflation is "replaced" in the history, not loss.
    let (st, h) = http_json(&server, "GET", "/api/queues/sensors/history", None);
    assert_eq!(st, 200);
    assert_eq!(h["capacity"], 60);
    let last = h["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["replaced"], 3, "{last}");
    assert_eq!(last["dropped"], 0, "{last}");
    assert_eq!(last["ready"], 3, "{last}");
}

#[test]
fn queue_rules_over_http_and_history() {
    let server = Server::start();
    for (q, body) in [
        ("dead", json!({"durability": "memory"})),
        (
            "jobs",
            json!({"durability": "memory", "dead_letter": "dead", "max_messages": 3, "overflow": "drop-newest"}),
        ),
    ] {
        let (st, v) = http_json(&server, "PUT", &format!("/api/queues/{q}"), Some(&body));
        assert_eq!(st, 201, "{v}");
    }
    let rules = [
        (
            "deep",
            json!({"queue": "jobs", "depth_above": 2, "for_ms": 1000}),
        ),
        ("old", json!({"queue": "jobs", "oldest_above_ms": 1})),
        (
            "loss",
            json!({"queue": "jobs", "loss_above_pct": 10.0, "window_ms": 60000}),
        ),
        ("idle", json!({"queue": "jobs", "no_consumer_credit": true})),
        (
            "dlq",
            json!({"queue": "jobs", "dead_letter_not_empty": true}),
        ),
    ];
    for (name, body) in &rules {
        let (st, v) = http_json(&server, "PUT", &format!("/api/alerts/{name}"), Some(body));
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = http_json(
        &server,
        "PUT",
        "/api/alerts/bad",
        Some(&json!({"queue": "jobs", "depth_above": 1, "no_consumer_credit": true})),
    );
    assert_eq!(st, 400, "{v}");
    wait_until("idle fires (no consumer at all)", || {
        firing(&server).contains(&("idle".into(), "jobs".into()))
    });
    for i in 0..5 {
        publish(&server, "jobs", json!({"payload": format!("m{i}")}));
    }
    wait_until("depth, age and loss fire", || {
        let f = firing(&server);
        ["deep", "old", "loss"]
            .iter()
            .all(|r| f.contains(&(r.to_string(), "jobs".to_string())))
    });
    assert!(!firing(&server).contains(&("dlq".into(), "jobs".into())));
    publish(&server, "dead", json!({"payload": "x"}));
    wait_until("dlq fires", || {
        firing(&server).contains(&("dlq".into(), "jobs".into()))
    });
    // Purging is the operator's decision, not loss; depth and age clear.
    let (st, _) = http_json(&server, "POST", "/api/queues/jobs/purge", None);
    assert_eq!(st, 200);
    wait_until("deep and old clear", || {
        let f = firing(&server);
        !f.iter().any(|(r, _)| r == "deep" || r == "old")
    });
    let (st, v) = http_json(&server, "DELETE", "/api/alerts/loss", None);
    assert_eq!(st, 200, "{v}");
    let (st, _) = http_json(&server, "DELETE", "/api/alerts/loss", None);
    assert_eq!(st, 404);
    let (_, alerts) = http_json(&server, "GET", "/api/alerts", None);
    assert_eq!(alerts["rules"].as_array().unwrap().len(), 4, "{alerts}");
    let recent = alerts["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|t| t["rule"] == "loss" && t["firing"] == false),
        "{alerts}"
    );
    // History: one point per second, the depth of 3 and the drops of the full queue in it.
    let (st, h) = http_json(&server, "GET", "/api/queues/jobs/history", None);
    assert_eq!(st, 200);
    let points = h["points"].as_array().unwrap();
    assert!(points.iter().any(|p| p["ready"] == 3), "{h}");
    assert_eq!(points.last().unwrap()["dropped"], 2, "{h}");
    assert!(
        points
            .windows(2)
            .all(|w| w[0]["t"].as_u64() < w[1]["t"].as_u64())
    );
    let since = points.last().unwrap()["t"].as_u64().unwrap();
    let (_, h) = http_json(
        &server,
        "GET",
        &format!("/api/queues/jobs/history?since={since}"),
        None,
    );
    assert!(!h["points"].as_array().unwrap().is_empty());
    let (st, _) = http_json(&server, "GET", "/api/queues/none/history", None);
    assert_eq!(st, 404);
    // The overview.
    let (st, o) = http_json(&server, "GET", "/api/overview", None);
    assert_eq!(st, 200, "{o}");
    assert!(o["node"]["rss_bytes"].as_u64().unwrap() > 0, "{o}");
    assert!(o["node"]["disk_free_bytes"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["queues"], 2);
    assert!(!o["alerts_firing"].as_array().unwrap().is_empty());
}

#[test]
fn bad_alert_rules_in_the_config_file_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("levee.toml");
    std::fs::write(
        &config,
        "[[alerts]]\nname = \"x\"\nqueue = \"q\"\ndepth_above = 1\nno_consumer_credit = true\n",
    )
    .unwrap();
    let (ok, stderr) = common::serve_expecting_exit(
        &tmp.path().join("d"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("one condition per rule"), "{stderr}");
}

/// `/api/overview` lists consumers by connection with their address, for the native protocol
/// and AMQP alike, and producers of `block` queues with the publish credit they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_lists_consumers_and_producers_by_connection() {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let server = Server::start();
    let c = common::client(&server).await;
    c.declare("work", levee_proto::QueueConfig::default())
        .await
        .unwrap();
    let producer = c
        .producer("work", levee_client::ProducerOptions::default())
        .await
        .unwrap();
    producer.send(levee_proto::Message::new("a")).await.unwrap();
    let _sub = c
        .consumer(
            "work",
            levee_client::ConsumerOptions {
                credit: levee_client::Credit::Fixed(3),
                ..levee_client::ConsumerOptions::default()
            },
        )
        .await
        .unwrap();
    let amqp = lapin::Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", server.amqp),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = amqp.create_channel().await.unwrap();
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    let _consumer = ch
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let http = server.http;
    let overview = move || {
        let (st, resp) = common::http_request(http, "GET", "/api/overview", "", "");
        assert_eq!(st, 200, "{resp}");
        serde_json::from_str::<Value>(common::http_body(&resp).trim()).unwrap()
    };
    let o = tokio::task::spawn_blocking(move || {
        let mut last = Value::Null;
        wait_until("two consumer connections and a producer", || {
            last = overview();
            let conns = last["connection_list"].as_array().unwrap();
            let consumers = conns
                .iter()
                .filter(|c| !c["consumers"].as_array().unwrap().is_empty())
                .count();
            let producers = conns
                .iter()
                .filter(|c| !c["producers"].as_array().unwrap().is_empty())
                .count();
            consumers == 2 && producers == 1
        });
        last
    })
    .await
    .unwrap();
    let conns = o["connection_list"].as_array().unwrap();
    let amqp_conn = conns.iter().find(|c| c["client"] == "amqp").expect("{o}");
    assert!(
        amqp_conn["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{o}"
    );
    assert_eq!(amqp_conn["consumers"][0]["queue"], "work", "{o}");
    let native = conns
        .iter()
        .find(|c| c["client"] != "amqp" && !c["producers"].as_array().unwrap().is_empty())
        .expect("{o}");
    assert_eq!(native["producers"][0]["queue"], "work", "{o}");
    assert!(
        native["producers"][0]["credit"].as_u64().unwrap() > 0,
        "{o}"
    );
    assert_eq!(native["consumers"][0]["queue"], "work", "{o}");
    assert_eq!(o["consumers"], 2, "{o}");
    assert_eq!(o["producers"], 1, "{o}");
    assert!(o["other_consumers"].as_array().unwrap().is_empty(), "{o}");
}
