//! The `levee` command line against a running server: queue administration, publishing from
//! arguments and standard input, consuming, stats, config files and clear errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Server;

fn levee(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .env("LEVEE_ADDR", server.wire.to_string())
        .output()
        .expect("running levee")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "levee failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
