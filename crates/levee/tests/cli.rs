//! The `levee` command line against a running server: queue administration, publishing from
//! arguments and standard input, consuming, stats, config files and clear errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Server, levee, ok};

#[test]
fn declare_publish_consume_and_inspect_from_the_command_line() {
    let server = Server::start();
    let out = ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "jobs",
            "--max-messages",
            "100",
            "--durability",
            "memory",
        ],
    ));
    assert!(out.contains("created jobs"), "{out}");
    let out = ok(levee(&server, &["publish", "jobs", "alpha", "beta"]));
    assert!(out.contains("stored=2"), "{out}");
    // One message per line of standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["publish", "jobs"])
        .env("LEVEE_ADDR", server.wire.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"gamma\ndelta\n")
        .unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert!(out.contains("stored=2"), "{out}");
    let out = ok(levee(&server, &["queue", "list"]));
    assert_eq!(out.trim(), "jobs");
    let out = ok(levee(
        &server,
        &["consume", "jobs", "--count", "4", "--credit", "2"],
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["alpha", "beta", "gamma", "delta"]
    );
    let out = ok(levee(&server, &["queue", "inspect", "jobs"]));
    assert!(
        out.contains("published=4") && out.contains("acked=4"),
        "{out}"
    );
    assert!(out.contains("balanced=yes"), "{out}");
    let out = ok(levee(&server, &["stats"]));
    assert!(out.lines().any(|l| l.starts_with("jobs")), "{out}");
    let out = ok(levee(&server, &["queue", "delete", "jobs"]));
    assert!(out.contains("deleted jobs"), "{out}");
}

#[test]
fn errors_are_one_clear_line_and_a_failure_status() {
    let server = Server::start();
    let out = levee(&server, &["queue", "declare", "bad name!"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("levee: error:") && err.contains("invalid queue name"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "no backtrace noise: {err}");
    let out = levee(&server, &["queue", "inspect", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown queue missing"));
    let out = levee(&server, &["queue", "declare", "q", "--fsync", "sometimes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fsync"));
}

#[test]
fn serve_reads_a_config_file_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("unknown_key"),
        "{err}"
    );
    let bad_frame = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--max-frame",
            "10",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!bad_frame.status.success());
    assert!(String::from_utf8_lossy(&bad_frame.stderr).contains("max_frame"));
}

#[test]
fn settings_from_a_config_file_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("levee.toml");
    std::fs::write(&good, "heartbeat_ms = 1500\nmax_frame = 65536\n").unwrap();
    let units = dir.path().join("units.toml");
    std::fs::write(&units, "heartbeat_ms = \"2s\"\nmax_frame = \"128KiB\"\n").unwrap();
    let with_units = Server::start_with(&["--config", units.to_str().unwrap()]);
    let mut raw = common::Raw::connect(with_units.wire);
    raw.send(&levee_proto::ClientFrame::Hello(levee_proto::Hello::new(
        "cfg",
    )));
    match raw.recv() {
        Some(levee_proto::ServerFrame::Welcome(w)) => {
            assert_eq!((w.heartbeat_ms, w.max_frame), (2000, 128 << 10));
        }
        other => panic!("{other:?}"),
    }
    let server = Server::start_with(&["--config", good.to_str().unwrap()]);
    let mut raw = common::Raw::connect(server.wire);
    raw.send(&levee_proto::ClientFrame::Hello(levee_proto::Hello::new(
        "cfg",
    )));
    match raw.recv() {
        Some(levee_proto::ServerFrame::Welcome(w)) => {
            assert_eq!((w.heartbeat_ms, w.max_frame), (1500, 65536));
        }
        other => panic!("{other:?}"),
    }
}

/// `levee ARGS` with its standard streams piped, against `server`.
fn spawn(server: &Server, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .env("LEVEE_ADDR", server.wire.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning levee")
}

fn sigint(child: &std::process::Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
}

/// Waits (at most 10 s, then kills it and fails) for `child` to exit by itself; its output.
fn exited(mut child: std::process::Child) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!("levee did not exit: {}", stderr_of(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn inspect_json(server: &Server, queue: &str) -> serde_json::Value {
    let out = ok(levee(server, &["queue", "inspect", queue, "--json"]));
    assert_eq!(out.lines().count(), 1, "one document on one line: {out}");
    serde_json::from_str(&out).expect("inspect --json is JSON")
}

/// Polls `queue`'s stats (through `levee queue inspect --json`) until `cond` holds, at most 10 s.
fn wait_stats(server: &Server, queue: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let doc = inspect_json(server, queue);
        if cond(&doc["stats"]) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition never held: {doc}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn publish_exits_3_when_messages_are_not_stored_unless_drops_are_allowed() {
    let server = Server::start();
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "small",
            "--max-messages",
            "2",
            "--overflow",
            "reject",
            "--durability",
            "memory",
        ],
    ));
    let out = levee(&server, &["publish", "small", "a", "b", "c"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stored=2") && text.contains("rejected=1"),
        "{text}"
    );
    assert!(
        stderr_of(&out).contains("not stored: #3"),
        "{}",
        stderr_of(&out)
    );
    let out = levee(&server, &["publish", "small", "d", "--allow-drops"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    // A drop policy's drops count as not stored too.
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "lossy",
            "--max-messages",
            "1",
            "--overflow",
            "drop-newest",
            "--durability",
            "memory",
        ],
    ));
    let out = levee(&server, &["publish", "lossy", "x", "y"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped=1"));
}

#[test]
fn publish_from_a_pipe_that_stays_open_sends_each_line_as_it_arrives() {
    let server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "logs", "--durability", "memory"],
    ));
    let mut child = spawn(&server, &["publish", "logs"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first line\n").unwrap();
    stdin.flush().unwrap();
    // The pipe is still open: the line must be stored without waiting for end of input.
    wait_stats(&server, "logs", |s| s["stored"] == 1);
    stdin.write_all(b"second line\n").unwrap();
    stdin.flush().unwrap();
    wait_stats(&server, "logs", |s| s["stored"] == 2);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 2 to logs: stored=2"));
    let out = ok(levee(&server, &["consume", "logs", "--count", "2"]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["first line", "second line"]
    );
}

#[test]
fn interrupted_publish_prints_its_counts_and_exits_130() {
    let server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "tail", "--durability", "memory"],
    ));
    let mut child = spawn(&server, &["publish", "tail"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a\nb\nc\n").unwrap();
    stdin.flush().unwrap();
    wait_stats(&server, "tail", |s| s["stored"] == 3);
    sigint(&child);
    let out = exited(child);
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("interrupted") && err.contains("published 3 to tail: stored=3"),
        "{err}"
    );
    assert!(err.contains("unconfirmed=0"), "{err}");
}

#[test]
fn interrupted_consume_prints_consumed_and_acked_counts() {
    let server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "work", "--durability", "memory"],
    ));
    ok(levee(&server, &["publish", "work", "1", "2", "3"]));
    let child = spawn(&server, &["consume", "work", "--quiet"]);
    wait_stats(&server, "work", |s| s["acked"] == 3);
    sigint(&child);
    let out = exited(child);
    assert_eq!(out.status.code(), Some(130), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("interrupted: consumed 3 from work") && err.contains("acked=3"),
        "{err}"
    );
}

#[test]
fn a_publish_that_loses_its_broker_prints_what_was_stored() {
    let mut server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "gone", "--durability", "memory"],
    ));
    let mut child = spawn(&server, &["publish", "gone"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"kept\n").unwrap();
    stdin.flush().unwrap();
    wait_stats(&server, "gone", |s| s["stored"] == 1);
    server.kill9();
    // The next line meets the dead connection.
    stdin.write_all(b"lost\n").unwrap();
    stdin.flush().unwrap();
    let out = exited(child);
    drop(stdin);
    let err = stderr_of(&out);
    assert!(
        matches!(out.status.code(), Some(1 | 4)),
        "{:?} {err}",
        out.status
    );
    assert!(err.contains("stored=1"), "counts printed: {err}");
    assert!(
        err.contains("connection lost") || err.contains("not sent"),
        "{err}"
    );
}

#[test]
fn pointed_at_the_http_port_the_cli_says_so() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["queue", "list", "--addr", &server.http.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("looks like Levee's HTTP port") && err.contains("wire port"),
        "{err}"
    );
    assert!(!err.contains("exceeds the maximum frame size"), "{err}");
}

#[test]
fn inspect_prints_the_words_and_units_the_flags_take() {
    let server = Server::start();
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "words",
            "--fsync",
            "interval:50",
            "--max-deliveries",
            "unlimited",
            "--ack-timeout",
            "2m",
            "--max-bytes",
            "16MiB",
        ],
    ));
    let out = ok(levee(&server, &["queue", "inspect", "words"]));
    for want in [
        "durability=disk fsync=interval:50",
        "max_deliveries=unlimited",
        "ack_timeout=2m",
        "max_bytes=16MiB",
        "dead_letter=none",
        "ttl=none",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    assert!(
        !out.contains("Some(") && !out.contains("Disk(") && !out.contains("None"),
        "no Rust debug formatting: {out}"
    );
}

#[test]
fn declare_without_flags_gets_an_existing_queue_whatever_its_config() {
    let server = Server::start();
    let args = [
        "queue",
        "declare",
        "jobs",
        "--max-messages",
        "10",
        "--durability",
        "memory",
        "--overflow",
        "reject",
    ];
    assert!(ok(levee(&server, &args)).contains("created jobs"));
    // Omitted flags match anything.
    assert!(ok(levee(&server, &["queue", "declare", "jobs"])).contains("exists jobs"));
    let out = ok(levee(
        &server,
        &["queue", "declare", "jobs", "--overflow", "reject"],
    ));
    assert!(out.contains("exists jobs"), "{out}");
    // A flag that is given is compared.
    let out = levee(
        &server,
        &["queue", "declare", "jobs", "--max-messages", "20"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("max_messages: existing 10, requested 20"),
        "{err}"
    );
    assert!(
        !err.contains("overflow"),
        "only the given flag differs: {err}"
    );
    // --exact: every field is compared, omitted ones against the defaults.
    let out = levee(&server, &["queue", "declare", "jobs", "--exact"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("overflow: existing reject, requested block"));
    // And a queue that does not exist is created with the defaults.
    let out = ok(levee(&server, &["queue", "declare", "fresh"]));
    assert!(out.contains("created fresh"), "{out}");
    let fresh = inspect_json(&server, "fresh");
    assert_eq!(fresh["config"]["max_messages"], 100_000);
}

#[test]
fn sizes_and_durations_take_units_and_bare_numbers_keep_their_meaning() {
    let server = Server::start();
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "u",
            "--max-bytes",
            "1MiB",
            "--ack-timeout-ms",
            "2m",
            "--ttl",
            "30s",
            "--rate-bytes",
            "64KiB",
            "--durability",
            "memory",
        ],
    ));
    let c = inspect_json(&server, "u")["config"].clone();
    assert_eq!(c["max_bytes"], 1 << 20);
    assert_eq!(c["ack_timeout_ms"], 120_000);
    assert_eq!(c["message_ttl_ms"], 30_000);
    assert_eq!(c["rate_limit"]["bytes_per_sec"], 64 << 10);
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "bare",
            "--max-bytes",
            "4096",
            "--ack-timeout-ms",
            "1500",
            "--durability",
            "memory",
        ],
    ));
    let c = inspect_json(&server, "bare")["config"].clone();
    assert_eq!(
        (c["max_bytes"].clone(), c["ack_timeout_ms"].clone()),
        (4096.into(), 1500.into())
    );
    ok(levee(
        &server,
        &["publish", "u", "--count", "2", "--size", "1KiB"],
    ));
    assert_eq!(inspect_json(&server, "u")["stats"]["bytes"], 2048);
    let out = levee(
        &server,
        &["queue", "declare", "v", "--max-bytes", "12 parsecs"],
    );
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stderr_of(&out).contains("--max-bytes"));
    // The server's sizes and durations too.
    let server = Server::start_with(&["--max-frame", "64KiB", "--heartbeat-ms", "1500ms"]);
    let mut raw = common::Raw::connect(server.wire);
    raw.send(&levee_proto::ClientFrame::Hello(levee_proto::Hello::new(
        "units",
    )));
    match raw.recv() {
        Some(levee_proto::ServerFrame::Welcome(w)) => {
            assert_eq!((w.heartbeat_ms, w.max_frame), (1500, 65536));
        }
        other => panic!("{other:?}"),
    }
}

/// `PUT /api/queues/NAME` with a JSON body: (status, body).
fn http_put(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[test]
fn cli_and_http_refuse_the_same_invalid_combinations() {
    let server = Server::start();
    let out = levee(
        &server,
        &[
            "queue",
            "declare",
            "m",
            "--durability",
            "memory",
            "--fsync",
            "never",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let cli_err = stderr_of(&out);
    assert!(
        cli_err.contains("fsync") && cli_err.contains("memory queue"),
        "{cli_err}"
    );
    let (status, body) = http_put(
        server.http,
        "/api/queues/m",
        r#"{"durability": "memory", "fsync": "never"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let http_err = body["message"].as_str().unwrap_or_default().to_string();
    assert!(
        http_err.contains("fsync") && http_err.contains("memory queue"),
        "{body}"
    );
    // A range the broker refuses is refused by the CLI before anything is sent, naming it.
    let out = levee(&server, &["queue", "declare", "m", "--ack-timeout", "25h"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("ack_timeout_ms"),
        "{}",
        stderr_of(&out)
    );
    assert!(!ok(levee(&server, &["queue", "list"])).contains('m'));
}

#[test]
fn stats_and_lists_print_json_for_scripts_and_the_new_columns() {
    let server = Server::start();
    ok(levee(
        &server,
        &[
            "queue",
            "declare",
            "s",
            "--max-messages",
            "1",
            "--overflow",
            "reject",
            "--durability",
            "memory",
        ],
    ));
    let _ = levee(&server, &["publish", "s", "a", "b"]);
    let out = ok(levee(&server, &["stats"]));
    let header = out.lines().next().unwrap();
    for col in ["rejected", "expired", "consumers"] {
        assert!(header.contains(col), "{header}");
    }
    let out = ok(levee(&server, &["stats", "--json"]));
    assert_eq!(out.lines().count(), 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(doc["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(doc["queues"][0]["name"], "s");
    assert_eq!(doc["queues"][0]["stats"]["rejected"], 1);
    let out = ok(levee(&server, &["queue", "list", "--json"]));
    let names: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(names, ["s"]);
    let out = ok(levee(&server, &["stats", "s", "--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["stats"]["stored"], 1);
}

#[test]
fn client_options_go_before_or_after_the_subcommand_and_serve_refuses_them() {
    let server = Server::start();
    let addr = server.wire.to_string();
    ok(levee(
        &server,
        &["queue", "declare", "q", "--durability", "memory"],
    ));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(args)
            .env_remove("LEVEE_ADDR")
            .output()
            .unwrap()
    };
    assert_eq!(ok(run(&["--addr", &addr, "queue", "list"])).trim(), "q");
    assert_eq!(ok(run(&["queue", "list", "--addr", &addr])).trim(), "q");
    assert_eq!(ok(run(&["queue", "--addr", &addr, "list"])).trim(), "q");
    ok(run(&["stats", "--addr", &addr]));
    let out = run(&["serve", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let out = run(&["--addr", &addr, "serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--listen"), "{}", stderr_of(&out));
    let help = ok(run(&["serve", "--help"]));
    assert!(!help.contains("--addr"), "{help}");
}

/// Starts `levee serve` on `data_dir` with `env` and `extra` flags, stderr piped; returns the
/// child and its stdout lines up to and including the banner.
fn serve_with_logs(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--amqp", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("LEVEE_LOG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!("levee exited early: {}", stderr_of(&out));
        };
        let banner = line.contains("recovered");
        seen.push(line);
        if banner {
            return (child, seen);
        }
    }
}

/// SIGTERMs `child` and returns its stderr.
fn stop_and_stderr(child: std::process::Child) -> String {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    stderr_of(&exited(child))
}

#[test]
fn serve_prints_stable_listener_lines_then_a_banner_with_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, lines) = serve_with_logs(&data, &[], &[]);
    assert!(
        lines[0].starts_with("levee: wire listening on "),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("levee: http listening on "),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("levee: amqp listening on 127.0.0.1:"),
        "{lines:?}"
    );
    let wire = lines[0].rsplit(' ').next().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(args)
            .env("LEVEE_ADDR", &wire)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    };
    run(&["queue", "declare", "kept"]);
    run(&["publish", "kept", "a", "b", "c"]);
    let err = stop_and_stderr(child);
    // Text logs without colours when stderr is not a terminal; the declare is logged.
    assert!(!err.contains('\x1b'), "no ANSI escapes in a pipe: {err:?}");
    assert!(
        err.contains("levee serving") && err.contains("version="),
        "{err}"
    );
    let (child, lines) = serve_with_logs(&data, &[], &[]);
    let banner = lines.last().unwrap();
    assert!(
        banner.contains(&format!("version {}", env!("CARGO_PKG_VERSION")))
            && banner.contains("recovered 1 queues (3 messages)"),
        "{banner}"
    );
    stop_and_stderr(child);
}

#[test]
fn logs_honour_rust_log_and_come_as_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = serve_with_logs(
        &dir.path().join("data"),
        &[("RUST_LOG", "debug")],
        &["--log-format", "json"],
    );
    let wire = lines[0].rsplit(' ').next().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["queue", "declare", "logged", "--addr", &wire])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = stop_and_stderr(child);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    let serving = events
        .iter()
        .find(|e| message(e) == "levee serving")
        .expect("banner event");
    assert_eq!(serving["fields"]["queues"], 0);
    // RUST_LOG=debug (no LEVEE_LOG) shows the connection events; the declare is at info.
    for want in ["client connected", "queue declared", "client disconnected"] {
        assert!(events.iter().any(|e| message(e) == want), "{want}: {err}");
    }
}

#[test]
fn help_shows_the_defaults_an_example_per_subcommand_and_the_max_deliveries_rule() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        ok(out)
    };
    let declare = help(&["queue", "declare"]);
    for want in [
        "[default: 100000]",
        "[default: 64MiB]",
        "[default: block]",
        "[default: 30s",
        "[default: 20]",
        "[default: disk]",
        "[default: always]",
        "without --dead-letter, drop",
        "a message is dropped",
    ] {
        assert!(declare.contains(want), "{want:?} in {declare}");
    }
    let subcommands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["queue"],
        &["queue", "declare"],
        &["queue", "list"],
        &["queue", "inspect"],
        &["queue", "purge"],
        &["queue", "delete"],
        &["publish"],
        &["consume"],
        &["stats"],
        &["bench"],
        &["completions"],
        &["man"],
    ];
    for sub in subcommands {
        let text = help(sub);
        assert!(
            text.contains("Example"),
            "no example in `levee {sub:?} --help`"
        );
    }
    assert!(help(&["consume"]).contains("Ctrl-C"));
    assert!(help(&["serve"]).contains("RUST_LOG"));
}

#[test]
fn stats_watch_prints_timestamped_frames_until_interrupted() {
    let server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "w", "--durability", "memory"],
    ));
    let mut child = spawn(&server, &["stats", "--watch"]);
    // Read two frames as they are printed (stdout is a pipe: appended, not redrawn).
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut stamps = 0;
    while stamps < 2 {
        let line = lines.next().expect("stats --watch ended").unwrap();
        assert!(!line.contains('\x1b'), "no escapes into a pipe: {line:?}");
        if line.len() == 20 && line.ends_with('Z') && line.as_bytes()[10] == b'T' {
            stamps += 1;
        }
    }
    sigint(&child);
    let out = exited(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

#[test]
fn a_consume_that_loses_its_broker_prints_its_counts() {
    let mut server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "c", "--durability", "memory"],
    ));
    ok(levee(&server, &["publish", "c", "1", "2"]));
    let child = spawn(&server, &["consume", "c", "--quiet"]);
    wait_stats(&server, "c", |s| s["acked"] == 2);
    server.kill9();
    let out = exited(child);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("consumed 2 from c") && err.contains("acked=2"),
        "{err}"
    );
}

/// A memory queue's definition comes back after a restart (empty); a transient one does not.
#[test]
fn memory_queues_come_back_empty_after_a_restart_and_transient_ones_do_not() {
    let mut server = Server::start();
    ok(levee(
        &server,
        &["queue", "declare", "cache", "--durability", "memory"],
    ));
    ok(levee(
        &server,
        &["queue", "declare", "scratch", "--transient"],
    ));
    let text = ok(levee(&server, &["queue", "inspect", "scratch"]));
    assert!(text.contains("durability=transient"), "{text}");
    let out = levee(
        &server,
        &["queue", "declare", "bad", "--transient", "--fsync", "never"],
    );
    assert!(
        !out.status.success(),
        "fsync with a transient queue is refused"
    );
    assert!(stderr_of(&out).contains("transient"), "{}", stderr_of(&out));
    server.restart_after_kill9();
    let list = ok(levee(&server, &["queue", "list"]));
    assert!(list.contains("cache"), "{list}");
    assert!(!list.contains("scratch"), "{list}");
}

/// A single broker keeps one copy of a queue: asking for replicas is refused with the reason,
/// on the command line and over HTTP, and nothing is created.
#[test]
fn replicas_need_a_cluster() {
    let server = Server::start();
    let out = levee(&server, &["queue", "declare", "r", "--replicas", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("replicas") && why.contains("need a cluster"),
        "{why}"
    );
    let (status, body) = common::http_json(
        &server,
        "PUT",
        "/api/queues/r",
        Some(&serde_json::json!({"replicas": 3})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid-config", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("replicas")),
        "{body}"
    );
    let list = ok(levee(&server, &["queue", "list"]));
    assert!(!list.lines().any(|l| l.trim() == "r"), "{list}");
    // replicas = 1 is an ordinary queue.
    assert!(
        ok(levee(
            &server,
            &["queue", "declare", "r", "--replicas", "1"]
        ))
        .contains("created r")
    );
}
