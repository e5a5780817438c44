//! The human-readable table of one or more runs (the JSON line is `Summary`'s serde form).
//!
//! Invariant: one row per summary, columns aligned; latencies in milliseconds (three decimals
//! below 1 ms), the send-time error in microseconds, RSS in MiB. Latency columns are from the
//! scheduled send time; `act` columns from the actual send time (a note under the table says so).

use std::fmt::Write;

use super::stats::Summary;

/// Formats microseconds as milliseconds with enough precision.
pub(crate) fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 1.0 {
        format!("{v:.3}")
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table of `runs`.
pub(crate) fn table(runs: &[Summary]) -> String {
    let header = [
        "target",
        "variant",
        "P/C",
        "queues",
        "size",
        "rate",
        "msgs/s",
        "MB/s",
        "confirm/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "act p50",
        "act p99",
        "act p99.9",
        "send err p99 us",
        "peak RSS MiB",
        "srv CPU us/msg",
        "cli CPU us/msg",
        "rejected",
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|s| {
            vec![
                s.target.to_string(),
                s.variant.clone(),
                format!("{}/{}", s.producers, s.consumers),
                s.queues.to_string(),
                s.size.to_string(),
                s.rate.map_or("max".into(), |r| r.to_string()),
                format!("{:.0}", s.msgs_per_sec),
                format!("{:.1}", s.mb_per_sec),
                format!("{:.0}", s.confirmed_per_sec),
                ms(s.latency_us.p50),
                ms(s.latency_us.p99),
                ms(s.latency_us.p999),
                ms(s.latency_us.max),
                ms(s.latency_actual_us.p50),
                ms(s.latency_actual_us.p99),
                ms(s.latency_actual_us.p999),
                s.send_error_us.p99.to_string(),
                s.peak_rss_bytes
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                s.server_cpu_us_per_msg
                    .map_or("-".into(), |c| format!("{c:.1}")),
                s.client_cpu_us_per_msg
                    .map_or("-".into(), |c| format!("{c:.1}")),
                s.rejected.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, &header);
    for r in &rows {
        line(&mut out, &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let _ = writeln!(
        out,
        "latency: p50..max ms from each message's scheduled send time (coordinated omission \
         corrected); act: ms from its actual send time; send err: actual - scheduled, us"
    );
    for s in runs {
        if let Some(c) = &s.calibration {
            let _ = writeln!(
                out,
                "calibration ({} target, no broker): {:.0} msgs/s; p50 {} / p99 {} / p99.9 {} ms \
                 from scheduled, p50 {} / p99 {} / p99.9 {} ms from actual; send err p99 {} us",
                c.target,
                c.msgs_per_sec,
                ms(c.latency_us.p50),
                ms(c.latency_us.p99),
                ms(c.latency_us.p999),
                ms(c.latency_actual_us.p50),
                ms(c.latency_actual_us.p99),
                ms(c.latency_actual_us.p999),
                c.send_error_us.p99
            );
        }
        if s.backlog_growth_per_sec > 0.05 * s.confirmed_per_sec.max(1.0) {
            let _ = writeln!(
                out,
                "note: {} {}: backlog grew by {:.0} msg/s (consumers did not keep up)",
                s.target, s.variant, s.backlog_growth_per_sec
            );
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::stats::{Calibration, Latency, Timeline};

    pub(crate) fn sample() -> Summary {
        Summary {
            target: "levee",
            variant: "fsync=always".into(),
            label: None,
            server_version: "0.1.0".into(),
            producers: 1,
            consumers: 1,
            size: 1024,
            rate: None,
            consumer_rate: None,
            duration_s: 10.0,
            warmup_s: 2.0,
            published: 1_000_000,
            confirmed: 1_000_000,
            rejected: 0,
            consumed: 800_000,
            msgs_per_sec: 80_000.0,
            mb_per_sec: 81.92,
            confirmed_per_sec: 100_000.0,
            backlog_growth_per_sec: 20_000.0,
            queues: 1,
            linger_us: Some(1000),
            latency_us: Latency {
                count: 800_000,
                p50: 1234,
                p99: 15_600,
                p999: 123_000,
                max: 250_000,
                mean: 2000,
            },
            latency_actual_us: Latency {
                count: 800_000,
                p50: 456,
                p99: 14_900,
                p999: 122_000,
                max: 249_000,
                mean: 1300,
            },
            send_error_us: Latency {
                count: 800_000,
                p50: 2,
                p99: 17,
                p999: 800,
                max: 1500,
                mean: 3,
            },
            calibration: Some(Calibration {
                target: "echo",
                msgs_per_sec: 80_000.0,
                latency_us: Latency {
                    count: 800_000,
                    p50: 40,
                    p99: 210,
                    p999: 900,
                    max: 2000,
                    mean: 50,
                },
                latency_actual_us: Latency::default(),
                send_error_us: Latency::default(),
            }),
            peak_rss_bytes: Some(50 << 20),
            server_cpu_us_per_msg: Some(12.5),
            client_cpu_us_per_msg: None,
            timeline: Timeline {
                warmup_s: 2.0,
                confirmed: vec![90_000, 100_000, 100_000],
                consumed: vec![80_000, 80_000, 80_000],
                p50_us: vec![1000, 1200, 0],
                p99_us: vec![9000, 15_000, 0],
                actual_p50_us: vec![400, 450, 0],
                actual_p99_us: vec![8000, 14_000, 0],
                send_error_p99_us: vec![15, 17, 0],
                rss_bytes: vec![40 << 20, 50 << 20, 0],
            },
        }
    }

    #[test]
    fn table_has_aligned_figures_and_flags_a_growing_backlog() {
        let t = table(&[sample()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("target"));
        for f in [
            "80000", "81.9", "1.23", "15.6", "123", "250", "50.0", "1/1", "max", "0.456", "14.9",
            "122",
        ] {
            assert!(lines[1].contains(f), "{f} missing in {}", lines[1]);
        }
        assert!(lines[2].contains("from each message's scheduled send time"));
        assert!(
            lines[3].starts_with("calibration (echo target"),
            "{}",
            lines[3]
        );
        assert!(lines[3].contains("p50 0.040 / p99 0.210"), "{}", lines[3]);
        assert!(lines[4].contains("backlog grew by 20000 msg/s"));
        let h = lines[0].find("send err p99 us").unwrap() + "send err p99 us".len();
        assert_eq!(&lines[1][h - 2..h], "17");
        // Right-aligned numeric columns end at the same offset as their headers.
        let h = lines[0].find("msgs/s").unwrap() + "msgs/s".len();
        assert_eq!(&lines[1][h - 5..h], "80000");
    }

    #[test]
    fn json_line_is_one_line_with_all_fields() {
        let j = serde_json::to_string(&sample()).unwrap();
        assert!(!j.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["target"], "levee");
        assert_eq!(v["latency_us"]["p99"], 15_600);
        assert_eq!(v["latency_actual_us"]["p50"], 456);
        assert_eq!(v["send_error_us"]["p999"], 800);
        assert_eq!(v["calibration"]["latency_us"]["p99"], 210);
        assert_eq!(v["timeline"]["actual_p99_us"][1], 14_000);
        assert_eq!(v["peak_rss_bytes"], 50 << 20);
        assert_eq!(v["server_cpu_us_per_msg"], 12.5);
        assert_eq!(v["timeline"]["consumed"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn ms_precision() {
        assert_eq!(ms(1234), "1.23");
        assert_eq!(ms(15_600), "15.6");
        assert_eq!(ms(250_000), "250");
        assert_eq!(ms(456), "0.456");
        assert_eq!(ms(1000), "1.00");
    }
}
