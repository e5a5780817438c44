//! `levee bench --target levee`: a short real run against a broker the tool starts itself; the
//! JSON line and the table must be sane. Peer targets are not exercised here (no peers in CI).
//! Timing is reported, never asserted: the machine is shared, so only the presence and the
//! internal consistency of the figures are checked.

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

fn percentiles(v: &serde_json::Value, key: &str) -> [u64; 5] {
    let l = &v[key];
    let p = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("{key}.{k} missing in {v}"))
    };
    let r = [p("count"), p("p50"), p("p99"), p("p999"), p("max")];
    assert!(r[1] <= r[2] && r[2] <= r[3] && r[3] <= r[4], "{key}: {l}");
    r
}

#[test]
fn paced_run_reports_send_error_both_bases_calibration_and_per_second_percentiles() {
    let out = bench(&[
        "--rate",
        "2000",
        "--duration",
        "1",
        "--warmup",
        "300ms",
        "--durability",
        "memory",
        "--queues",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--calibrate",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["queues"], 2);
    assert_eq!(v["linger_us"], 0, "paced runs send each message at once");
    let sched = percentiles(&v, "latency_us");
    let actual = percentiles(&v, "latency_actual_us");
    let err = percentiles(&v, "send_error_us");
    assert!(
        sched[0] > 0 && sched[0] == actual[0] && actual[0] == err[0],
        "{v}"
    );
    // Actual send time >= scheduled send time, message by message: the percentiles follow.
    assert!(actual[1] <= sched[1] && actual[4] <= sched[4], "{v}");
    eprintln!(
        "send-time error (actual - scheduled) at 2,000 msg/s: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        err[1], err[2], err[3], err[4]
    );

    let c = &v["calibration"];
    assert_eq!(c["target"], "echo", "{v}");
    assert!(c["msgs_per_sec"].as_f64().unwrap() > 0.0, "{c}");
    let c_sched = percentiles(c, "latency_us");
    let c_actual = percentiles(c, "latency_actual_us");
    let c_err = percentiles(c, "send_error_us");
    assert!(c_sched[0] > 0 && c_actual[0] == c_sched[0] && c_err[0] == c_sched[0]);
    eprintln!(
        "harness floor (echo): p50 {} us / p99 {} us from actual send time",
        c_actual[1], c_actual[2]
    );

    let t = &v["timeline"];
    let len = t["consumed"].as_array().unwrap().len();
    assert_eq!(len, 2, "1.3 s -> 2 seconds: {t}");
    for k in [
        "p50_us",
        "p99_us",
        "actual_p50_us",
        "actual_p99_us",
        "send_error_p99_us",
    ] {
        let s = t[k]
            .as_array()
            .unwrap_or_else(|| panic!("timeline.{k} in {t}"));
        assert_eq!(s.len(), len, "timeline.{k}: {t}");
        assert!(s.iter().all(|x| x.as_u64().is_some()), "timeline.{k}: {t}");
    }
    // Every second received messages, so each has a p50 (>= 1 us) in both bases.
    for k in ["p50_us", "actual_p50_us"] {
        assert!(
            t[k].as_array()
                .unwrap()
                .iter()
                .all(|x| x.as_u64().unwrap() >= 1),
            "{k}: {t}"
        );
    }
}

#[test]
fn plot_to_png_writes_a_png_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.png");
    let out = bench(&[
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--rate",
        "1000",
        "--target",
        "echo",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("plot written to {}", plot.display())),
        "{stdout}"
    );
    let bytes = std::fs::read(&plot).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    let out = bench(&["--duration", "1", "--plot", "run.jpeg"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported file type .jpeg; use .svg, .png or .html"),
        "{err}"
    );
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
    assert!(err.contains("--size must be at least 16"), "{err}");

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
