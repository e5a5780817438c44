//! `levee bench --target levee`: a short real run against a broker the tool starts itself; the
//! JSON line and the table must be sane. Peer targets are not exercised here (no peers in CI).

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("bench")
        .args(args)
        .env("LEVEE_LOG", "warn")
        .output()
        .expect("running levee bench")
}

#[test]
fn json_run_against_a_started_broker_is_sane() {
    let out = bench(&[
        "--target",
        "levee",
        "--duration",
        "1",
        "--warmup",
        "500ms",
        "--size",
        "256",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per run: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let u = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(v["target"], "levee");
    assert_eq!(v["variant"], "fsync=always");
    assert_eq!(u("size"), 256);
    assert!(
        u("published") > 0 && u("confirmed") > 0 && u("consumed") > 0,
        "{v}"
    );
    assert_eq!(u("rejected"), 0, "a block queue refuses nothing");
    // Nothing is consumed that was not published (allowing for warm-up leftovers in flight).
    assert!(u("consumed") <= u("published") + 20_000, "{v}");
    assert!((f("msgs_per_sec") - u("consumed") as f64 / f("duration_s")).abs() < 1e-6);
    assert!((f("mb_per_sec") - f("msgs_per_sec") * 256.0 / 1e6).abs() < 1e-6);
    let l = &v["latency_us"];
    let p = |k: &str| l[k].as_u64().unwrap();
    assert!(p("count") > 0);
    assert!(p("p50") >= 1, "{l}");
    assert!(
        p("p50") <= p("p99") && p("p99") <= p("p999") && p("p999") <= p("max"),
        "{l}"
    );
    assert!(
        p("max") < 30_000_000,
        "a loopback run has no 30 s latency: {l}"
    );
    // The tool started the broker, so it sampled its memory.
    let rss = u("peak_rss_bytes");
    assert!((1 << 20..8 << 30).contains(&rss), "peak RSS {rss}");
    let t = &v["timeline"];
    assert_eq!(
        t["consumed"].as_array().unwrap().len(),
        2,
        "1.5 s -> 2 seconds: {t}"
    );
    let per_sec_total: u64 = t["consumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert!(per_sec_total >= u("consumed"));
}

#[test]
fn table_and_plot_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let out = bench(&[
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--rate",
        "2000",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    for col in [
        "target",
        "msgs/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "peak RSS MiB",
    ] {
        assert!(header.contains(col), "{col} missing in {header}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("levee") && row.contains("2000"), "{row}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("throughput"));
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let out = bench(&["--size", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size must be at least 8"), "{err}");

    let out = bench(&[
        "--target",
        "levee",
        "--server",
        "127.0.0.1:1",
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to levee at 127.0.0.1:1"), "{err}");
}

#[cfg(not(feature = "peers"))]
#[test]
fn peer_targets_need_the_peers_feature() {
    for target in ["rabbitmq", "nats"] {
        let out = bench(&["--target", target, "--duration", "1"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features peers"), "{err}");
    }
}
