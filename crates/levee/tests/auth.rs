//! Users and permissions against the real binary: logins on the native protocol and HTTP,
//! permission rules, per-user limits, the failed-login slowdown, SIGHUP reloads, the safe default
//! (no users: loopback only), and no secret in logs, metrics, stats or errors.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use common::pki::{login, user};
use common::{Server, memory_queue};
use levee_client::{
    Binding, Client, ClientError, ErrorCode, ExchangeConfig, ExchangeKind, Message,
    ProducerOptions, PublishOutcome, RoutedOutcome,
};
use levee_proto::Overflow;

const ADMIN: &str = "{ actions = [\"admin\"] }";

/// A server whose config file is `config` (written in a temp dir kept alive by the server).
fn server_with(config: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, config).unwrap();
    let s = Server::start_with(&["--config", path.to_str().unwrap()]);
    (s, dir)
}

/// One HTTP/1.1 request: (status, headers + body as text).
fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let auth = auth.map_or(String::new(), |(u, p)| {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Authorization: Basic {b}\r\n")
    });
    common::http_request(addr, method, path, &auth, "")
}

async fn connect(server: &Server, u: &str, p: &str) -> Result<Client, ClientError> {
    Client::connect(server.wire, login(u, p)).await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } | ClientError::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_on_the_native_protocol_and_http() {
    let (server, _dir) = server_with(&user("admin", Some("right"), &[ADMIN]));
    let e = connect(&server, "admin", "wrong").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthFailed), "{e}");
    let e = connect(&server, "nobody", "right").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthFailed), "{e}");
    let anonymous = levee_client::ClientOptions {
        reconnect: None,
        ..levee_client::ClientOptions::default()
    };
    let e = Client::connect(server.wire, anonymous).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthFailed), "{e}");
    let ok = connect(&server, "admin", "right").await.unwrap();
    ok.list_queues().await.unwrap();

    let (status, resp) = http(server.http, "GET", "/api/queues", None);
    assert_eq!(status, 401, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{resp}"
    );
    let (status, _) = http(server.http, "GET", "/api/queues", Some(("admin", "wrong")));
    assert_eq!(status, 401);
    let (status, _) = http(server.http, "GET", "/metrics", Some(("admin", "right")));
    assert_eq!(status, 200);
    for probe in ["/healthz", "/readyz"] {
        let (status, resp) = http(server.http, "GET", probe, None);
        assert_eq!(status, 200, "{probe} stays open: {resp}");
    }
}

#[tokio::test]
async fn a_publisher_on_video_cannot_consume_it_nor_touch_billing() {
    let config = user("admin", Some("a"), &[ADMIN])
        + &user(
            "encoder",
            Some("e"),
            &["{ queues = \"video.*\", actions = [\"publish\"] }"],
        );
    let (server, _dir) = server_with(&config);
    let admin = connect(&server, "admin", "a").await.unwrap();
    for q in ["video.hd", "billing"] {
        admin
            .declare(q, memory_queue(Overflow::Reject, 100, 1 << 20))
            .await
            .unwrap();
    }
    let enc = connect(&server, "encoder", "e").await.unwrap();
    let p = enc
        .producer("video.hd", ProducerOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        p.send(Message::new("frame")).await.unwrap(),
        PublishOutcome::Stored { .. }
    ));
    let e = enc
        .consumer("video.hd", levee_client::ConsumerOptions::default())
        .await
        .map(|_| ())
        .expect_err("consuming is refused");
    assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    assert!(e.to_string().contains("forbidden"), "{e}");
    let e = enc
        .producer("billing", ProducerOptions::default())
        .await
        .map(|_| ())
        .expect_err("publishing to billing is refused");
    assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    enc.inspect("video.hd")
        .await
        .expect("a producer may read its queue's stats");
    for e in [
        enc.purge("billing").await.unwrap_err(),
        enc.inspect("billing").await.unwrap_err(),
        enc.delete("video.hd").await.unwrap_err(),
    ] {
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    }
    assert_eq!(
        enc.list_queues().await.unwrap(),
        vec!["video.hd".to_string()],
        "only the queues it has a right on"
    );
    // The connection survived every refusal.
    assert!(matches!(
        p.send(Message::new("frame 2")).await.unwrap(),
        PublishOutcome::Stored { .. }
    ));
    let info = admin.inspect("video.hd").await.unwrap();
    assert_eq!(info.stats.ready, 2);
    assert_eq!(admin.inspect("billing").await.unwrap().stats.ready, 0);
}

#[tokio::test]
async fn monitor_sees_stats_but_cannot_purge() {
    let config = user("admin", Some("a"), &[ADMIN])
        + &user(
            "grafana",
            Some("g"),
            &["{ queues = \"*\", actions = [\"monitor\"] }"],
        );
    let (server, _dir) = server_with(&config);
    let admin = connect(&server, "admin", "a").await.unwrap();
    admin
        .declare("jobs", memory_queue(Overflow::Reject, 100, 1 << 20))
        .await
        .unwrap();
    admin
        .producer("jobs", ProducerOptions::default())
        .await
        .unwrap()
        .send(Message::new("x"))
        .await
        .unwrap();
    let mon = connect(&server, "grafana", "g").await.unwrap();
    assert_eq!(mon.inspect("jobs").await.unwrap().stats.ready, 1);
    let e = mon.purge("jobs").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    let g = Some(("grafana", "g"));
    assert_eq!(http(server.http, "GET", "/metrics", g).0, 200);
    assert_eq!(http(server.http, "GET", "/api/queues/jobs", g).0, 200);
    let (status, resp) = http(server.http, "POST", "/api/queues/jobs/purge", g);
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("\"error\":\"forbidden\""), "{resp}");
    let (status, _) = http(server.http, "DELETE", "/api/queues/jobs", g);
    assert_eq!(status, 403);
    assert_eq!(
        admin.inspect("jobs").await.unwrap().stats.ready,
        1,
        "nothing purged"
    );
    // Refusals are counted.
    let (_, metrics) = http(server.http, "GET", "/metrics", Some(("admin", "a")));
    let forbidden: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("levee_forbidden_total ")?.parse().ok())
        .expect("levee_forbidden_total");
    assert!(forbidden >= 3, "{forbidden}");
}

#[tokio::test]
async fn per_user_connection_and_publish_rate_limits_hold() {
    let config = format!(
        "{}max_connections = 1\npublish_rate = 1\n",
        user("slow", Some("s"), &[ADMIN])
    );
    let (server, _dir) = server_with(&config);
    let c = connect(&server, "slow", "s").await.unwrap();
    let e = connect(&server, "slow", "s").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    assert!(
        e.to_string().contains("max_connections") || e.to_string().contains("limit"),
        "{e}"
    );
    c.declare("q", memory_queue(Overflow::Reject, 100_000, 64 << 20))
        .await
        .unwrap();
    let p = c.producer("q", ProducerOptions::default()).await.unwrap();
    // The burst is one largest batch (4096); past it, publishes are throttled.
    let mut throttled = 0;
    for i in 0..5000u32 {
        match p.send(Message::new(i.to_le_bytes().to_vec())).await {
            Ok(PublishOutcome::Stored { .. }) => {}
            Err(ClientError::Rejected {
                code: ErrorCode::Throttled,
                ..
            }) => throttled += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert!(throttled > 0, "the publish rate never refused anything");
    drop(p);
    c.close().await.unwrap();
    // Its slot is free again once the connection is gone.
    common::wait_until_async_ok(|| async { connect(&server, "slow", "s").await.is_ok() }).await;
}

#[tokio::test]
async fn failed_logins_from_one_address_are_slowed_down() {
    let (server, _dir) = server_with(&user("admin", Some("right"), &[ADMIN]));
    // Failures 1..4 (100, 200, 400, 800 ms of delay), then the 5th is held back 1.6 s.
    for _ in 0..4 {
        connect(&server, "admin", "guess").await.unwrap_err();
    }
    let t = Instant::now();
    connect(&server, "admin", "guess").await.unwrap_err();
    let fifth = t.elapsed();
    assert!(
        fifth >= Duration::from_millis(1200),
        "the 5th failure in a row was answered after {fifth:?}"
    );
    // A success resets the count.
    connect(&server, "admin", "right").await.unwrap();
    let t = Instant::now();
    connect(&server, "admin", "guess").await.unwrap_err();
    let again = t.elapsed();
    assert!(
        again < fifth,
        "after a success the delay starts again ({again:?})"
    );
}

#[test]
fn no_users_on_a_public_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http",
            "127.0.0.1:0",
            // Not the default 5672: a RabbitMQ on this machine must not decide the outcome.
            "--amqp",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("levee passwd") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before opening the data directory"
    );

    // allow_anonymous = true overrides, with a warning.
    let cfg = dir.path().join("open.toml");
    std::fs::write(&cfg, "allow_anonymous = true\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http",
            "127.0.0.1:0",
            "--amqp",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .env("LEVEE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("levee: wire listening on 0.0.0.0:"),
        "{first}"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_anonymous"), "a warning: {stderr}");
}

#[tokio::test]
async fn sighup_adds_and_removes_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, user("alice", Some("a"), &[ADMIN])).unwrap();
    let server = Server::start_with(&["--config", path.to_str().unwrap()]);
    let alice = connect(&server, "alice", "a").await.unwrap();
    alice.list_queues().await.unwrap();
    assert!(connect(&server, "bob", "b").await.is_err());

    std::fs::write(&path, user("bob", Some("b"), &[ADMIN])).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    common::wait_until_async_ok(|| async { connect(&server, "bob", "b").await.is_ok() }).await;
    // Alice's open connection is closed; she cannot log in again.
    common::wait_until_async_ok(|| async { !alice.is_connected() }).await;
    assert!(connect(&server, "alice", "a").await.is_err());
    let bob = connect(&server, "bob", "b").await.unwrap();

    // A broken config is refused and the one in force stays.
    std::fs::write(
        &path,
        "[[users]]\nname = \"bob\"\npassword_hash = \"nonsense\"\n",
    )
    .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bob.is_connected());
    bob.list_queues().await.unwrap();
    connect(&server, "bob", "b").await.unwrap();
}

fn scan_for(secrets: &[&str], what: &str, text: &str) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains a secret ({s}):\n{text}");
    }
}

#[tokio::test]
async fn no_password_or_hash_appears_in_logs_metrics_stats_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let password = "hunter2-very-secret";
    let entry = user("admin", Some(password), &[ADMIN]);
    let hash = entry
        .lines()
        .find_map(|l| l.strip_prefix("password_hash = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let config = dir.path().join("levee.toml");
    std::fs::write(
        &config,
        entry
            + &user(
                "reader",
                Some("reader-pw-secret"),
                &["{ queues = \"x\", actions = [\"monitor\"] }"],
            ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = common::serve_command(
        &dir.path().join("data"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    )
    .env("LEVEE_LOG", "debug")
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut addr = |prefix: &str| -> SocketAddr {
        loop {
            let l = lines.next().unwrap().unwrap();
            if let Some(a) = l.strip_prefix(prefix) {
                return a.parse().unwrap();
            }
        }
    };
    let wire = addr("levee: wire listening on ");
    let http_addr = addr("levee: http listening on ");
    let mut errors = String::new();
    for (u, p) in [("admin", "wrong-guess-secret"), ("ghost", password)] {
        let e = Client::connect(wire, login(u, p)).await.unwrap_err();
        errors += &format!("{e} {e:?}\n");
    }
    let admin = Client::connect(wire, login("admin", password))
        .await
        .unwrap();
    admin
        .declare("x", memory_queue(Overflow::Reject, 10, 1 << 20))
        .await
        .unwrap();
    let reader = Client::connect(wire, login("reader", "reader-pw-secret"))
        .await
        .unwrap();
    let e = reader.purge("x").await.unwrap_err();
    errors += &format!("{e} {e:?}\n");
    let stats = format!("{:?}", admin.inspect("x").await.unwrap());
    let (_, metrics) = http(http_addr, "GET", "/metrics", Some(("admin", password)));
    let (_, queues) = http(http_addr, "GET", "/api/queues", Some(("admin", password)));
    let (_, refused) = http(
        http_addr,
        "GET",
        "/api/queues",
        Some(("admin", "wrong-guess-secret")),
    );
    let (_, forbidden) = http(
        http_addr,
        "DELETE",
        "/api/queues/x",
        Some(("reader", "reader-pw-secret")),
    );
    drop((admin, reader));
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("login refused"),
        "the refusals are audit-logged:\n{logs}"
    );
    assert!(logs.contains("forbidden"), "{logs}");
    let salt = hash.split('$').nth(4).unwrap();
    let secrets = [
        password,
        "wrong-guess-secret",
        "reader-pw-secret",
        hash.as_str(),
        salt,
    ];
    scan_for(&secrets, "the log", &logs);
    scan_for(&secrets, "/metrics", &metrics);
    scan_for(&secrets, "/api/queues", &queues);
    scan_for(&secrets, "a 401", &refused);
    scan_for(&secrets, "a 403", &forbidden);
    scan_for(&secrets, "stats", &stats);
    scan_for(&secrets, "client errors", &errors);
    let _ = Path::new("");
}

#[tokio::test]
async fn exchange_rights_gate_declaring_binding_and_routed_publishes() {
    let config = user("admin", Some("a"), &[ADMIN])
        + &user(
            "uploader",
            Some("u"),
            &["{ queues = \"video.*\", exchanges = \"uploads\", actions = [\"publish\"] }"],
        );
    let (server, _dir) = server_with(&config);
    let admin = connect(&server, "admin", "a").await.unwrap();
    admin
        .declare("video.hd", memory_queue(Overflow::Reject, 100, 1 << 20))
        .await
        .unwrap();
    for x in ["uploads", "billing.events"] {
        admin
            .declare_exchange(x, ExchangeConfig::new(ExchangeKind::Fanout))
            .await
            .unwrap();
        admin.bind(Binding::new(x, "video.hd", "")).await.unwrap();
    }

    let up = connect(&server, "uploader", "u").await.unwrap();
    let stored = |o: &RoutedOutcome| o.is_stored();
    let out = up
        .publish_to_exchange("uploads", "", vec![Message::new("a")])
        .await
        .unwrap();
    assert!(stored(&out[0]), "{out:?}");
    // The default exchange checks the queue named by the routing key.
    let out = up
        .publish_to_exchange("", "video.hd", vec![Message::new("b")])
        .await
        .unwrap();
    assert!(stored(&out[0]), "{out:?}");
    for e in [
        up.publish_to_exchange("billing.events", "", vec![Message::new("c")])
            .await
            .unwrap_err(),
        up.declare_exchange("uploads2", ExchangeConfig::new(ExchangeKind::Direct))
            .await
            .map(|_| ())
            .unwrap_err(),
        up.delete_exchange("uploads", false).await.unwrap_err(),
        up.bind(Binding::new("uploads", "video.hd", "k"))
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
    }
    // HTTP: the same table. Publishing needs the right on the exchange; deleting needs manage.
    let (status, _) = http(
        server.http,
        "DELETE",
        "/api/exchanges/uploads",
        Some(("uploader", "u")),
    );
    assert_eq!(status, 403);
    let (status, _) = http(
        server.http,
        "GET",
        "/api/exchanges/billing.events",
        Some(("admin", "a")),
    );
    assert_eq!(status, 200);
    // The connection survived every refusal; the two allowed messages are there.
    assert_eq!(admin.inspect("video.hd").await.unwrap().stats.ready, 2);
}
