//! `levee serve` settings are checked at start: a value that would make every later operation
//! fail is refused with one clear line naming the setting, before anything is opened.

mod common;

use std::process::Command;

use common::{Server, serve_expecting_exit};

fn refused(flags: &[&str], setting: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (ok, stderr) = serve_expecting_exit(&data, flags);
    assert!(!ok, "{flags:?} must be refused: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for {flags:?}: {stderr}");
    assert!(
        lines[0].contains(&format!("invalid setting {setting}")),
        "{flags:?}: {}",
        lines[0]
    );
    assert!(!data.exists(), "{flags:?}: nothing opened");
}

#[test]
fn settings_that_would_break_every_queue_or_connection_are_refused_at_start() {
    refused(&["--segment-bytes", "0"], "segment_bytes");
    // Smaller than one largest record (8 MiB): every disk queue's log would refuse to open.
    refused(&["--segment-bytes", "1048576"], "segment_bytes");
    refused(&["--segment-bytes", "5000000000"], "segment_bytes");
    refused(&["--max-in-flight-bytes", "0"], "max_in_flight_bytes");
    refused(&["--max-frame", "100"], "max_frame");
    refused(&["--heartbeat-ms", "10"], "heartbeat_ms");
    refused(&["--max-connections", "0"], "max_connections");
    refused(&["--max-http-connections", "0"], "max_http_connections");
    // The frame budget must hold at least one largest frame (16 MiB by default).
    refused(
        &["--max-partial-frame-bytes", "1048576"],
        "max_partial_frame_bytes",
    );
    refused(&["--http-header-timeout-ms", "0"], "http_header_timeout_ms");
}

#[test]
fn config_file_settings_are_checked_like_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("levee.toml");
    std::fs::write(&file, "segment_bytes = 0\n").unwrap();
    refused(&["--config", file.to_str().unwrap()], "segment_bytes");
    std::fs::write(&file, "max_connections = 0\n").unwrap();
    refused(&["--config", file.to_str().unwrap()], "max_connections");
}

/// The cluster's Raft timing is checked at start too: a heartbeat below 10 ms, or an election
/// timeout under three heartbeats (followers would campaign between two heartbeats).
#[test]
fn cluster_raft_timing_is_checked_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("levee.toml");
    let cluster = "[cluster]\nnode_id = 1\nlisten = \"127.0.0.1:0\"\n";
    let nodes = "[[cluster.nodes]]\nid = 1\ncluster = \"127.0.0.1:1\"\nwire = \"127.0.0.1:2\"\n";
    for (timing, says) in [
        (
            "raft_heartbeat_ms = 5\n",
            "raft_heartbeat_ms must be in 10..=60000",
        ),
        (
            "raft_heartbeat_ms = 400\nraft_election_timeout_ms = 1000\n",
            "raft_election_timeout_ms must be at least 3 heartbeats (1200)",
        ),
    ] {
        std::fs::write(&file, format!("{cluster}{timing}{nodes}")).unwrap();
        let data = tmp.path().join("data");
        let (ok, stderr) = serve_expecting_exit(&data, &["--config", file.to_str().unwrap()]);
        assert!(!ok, "{timing}: must be refused");
        assert!(stderr.contains(says), "{timing}: {stderr}");
        assert!(!data.exists(), "{timing}: nothing opened");
    }
}

#[test]
fn cluster_links_need_a_login_with_users_and_a_ca_with_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("levee.toml");
    let nodes = "[[cluster.nodes]]\nid = 1\ncluster = \"127.0.0.1:1\"\nwire = \"127.0.0.1:2\"\n";
    let user = "[[users]]\nname = \"node\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$ba5Pq4rZ0CMBQ4MA8C6gfhTKXzVZHzyXv3Cu3ku2H9U\"\n";
    let pki = tmp.path().join("absent.pem");
    let tls = format!("[tls]\ncert = \"{0}\"\nkey = \"{0}\"\n", pki.display());
    for (top, section, says) in [
        (
            user.to_string(),
            "",
            "[cluster] with [[users]]: the peers admit only their users",
        ),
        (
            user.to_string(),
            "user = \"node\"\n",
            "[cluster] user needs password_file",
        ),
        (
            user.to_string(),
            "user = \"node\"\npassword_file = \"/nonexistent/pw\"\n",
            "[cluster] password_file /nonexistent/pw",
        ),
        (
            tls.clone(),
            "",
            "need the CA the nodes' certificates chain to",
        ),
    ] {
        std::fs::write(
            &file,
            format!("{top}[cluster]\nnode_id = 1\nlisten = \"127.0.0.1:0\"\n{section}{nodes}"),
        )
        .unwrap();
        let data = tmp.path().join("data");
        let (ok, stderr) = serve_expecting_exit(&data, &["--config", file.to_str().unwrap()]);
        assert!(!ok, "{section}: must be refused");
        assert!(stderr.contains(says), "{top}{section}: {stderr}");
        assert!(!data.exists(), "{section}: nothing opened");
    }
}

#[test]
fn an_ack_timeout_of_zero_is_accepted_as_documented_never() {
    let server = Server::start();
    let levee = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(args)
            .env("LEVEE_ADDR", server.wire.to_string())
            .output()
            .unwrap()
    };
    let help = levee(&["queue", "declare", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("0 = never"));
    let out = levee(&["queue", "declare", "forever", "--ack-timeout-ms", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = levee(&["queue", "inspect", "forever"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ack_timeout=never"), "{text}");
}
