//! A chart of one run, drawn by hand as SVG: consumed and confirmed messages/s, latency p50 /
//! p99 (log scale) and server RSS per second, the warm-up shaded. A `.html` path gets the SVG
//! wrapped in a self-contained page (no scripts, no external resources).
//!
//! Invariant: the output depends only on the summary (deterministic; no time or randomness).

use std::fmt::Write;
use std::path::Path;

use super::stats::Summary;

const W: f64 = 900.0;
const PANEL_H: f64 = 190.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 45.0;

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    log: bool,
    series: Vec<(&'a str, &'a str, Vec<f64>)>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart as SVG.
pub fn svg(s: &Summary) -> String {
    let f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let mut panels = vec![
        Panel {
            title: "throughput",
            unit: "msg/s",
            log: false,
            series: vec![
                ("consumed", "#1f77b4", f(&s.timeline.consumed)),
                ("confirmed", "#ff7f0e", f(&s.timeline.confirmed)),
            ],
        },
        Panel {
            title: "end-to-end latency",
            unit: "ms",
            log: true,
            series: vec![
                (
                    "p50",
                    "#2ca02c",
                    s.timeline.p50_us.iter().map(|&u| u as f64 / 1e3).collect(),
                ),
                (
                    "p99",
                    "#d62728",
                    s.timeline.p99_us.iter().map(|&u| u as f64 / 1e3).collect(),
                ),
            ],
        },
    ];
    if s.timeline.rss_bytes.iter().any(|&b| b > 0) {
        panels.push(Panel {
            title: "server RSS",
            unit: "MiB",
            log: false,
            series: vec![(
                "rss",
                "#9467bd",
                s.timeline
                    .rss_bytes
                    .iter()
                    .map(|&b| b as f64 / 1048576.0)
                    .collect(),
            )],
        });
    }
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP);
    let n = panels
        .iter()
        .flat_map(|p| p.series.iter().map(|s| s.2.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let pw = W - LEFT - RIGHT;
    let x = |i: f64| LEFT + pw * i / n as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let rate = s
        .rate
        .map_or("unthrottled".into(), |r| format!("{r} msg/s"));
    let title = format!(
        "{} ({}){}: {}P/{}C, {} B, {} (warm-up shaded)",
        s.server_version,
        s.variant,
        s.label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default(),
        s.producers,
        s.consumers,
        s.size,
        rate
    );
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    for (pi, p) in panels.iter().enumerate() {
        let y0 = TOP + pi as f64 * (PANEL_H + GAP);
        let y1 = y0 + PANEL_H;
        let all: Vec<f64> = p.series.iter().flat_map(|s| s.2.iter().copied()).collect();
        let max = all.iter().copied().fold(0.0, f64::max);
        let (lo, hi) = if p.log {
            let min_pos = all
                .iter()
                .copied()
                .filter(|&v| v > 0.0)
                .fold(f64::INFINITY, f64::min);
            let lo = if min_pos.is_finite() {
                10f64.powf(min_pos.log10().floor())
            } else {
                0.01
            };
            (lo, 10f64.powf(max.max(lo * 10.0).log10().ceil()))
        } else {
            (0.0, nice_max(max))
        };
        let y = |v: f64| {
            let r = if p.log {
                if v <= 0.0 {
                    return None;
                }
                (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
            } else {
                v / hi
            };
            Some(y1 - PANEL_H * r.clamp(0.0, 1.0))
        };
        let warm = x(s.timeline.warmup_s.min(n as f64));
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{y0}" width="{:.1}" height="{PANEL_H}" fill="#eeeeee"/>"##,
            warm - LEFT
        );
        let _ = writeln!(
            o,
            r#"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{} ({})</text>"#,
            y0 - 6.0,
            esc(p.title),
            esc(p.unit)
        );
        // Y ticks.
        let ticks: Vec<f64> = if p.log {
            let mut t = vec![];
            let mut v = lo;
            while v <= hi * 1.0001 {
                t.push(v);
                v *= 10.0;
            }
            t
        } else {
            (0..=4).map(|i| hi * i as f64 / 4.0).collect()
        };
        for t in ticks {
            if let Some(ty) = y(t).or(Some(y1)) {
                let _ = writeln!(
                    o,
                    r##"<line x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    LEFT + pw,
                    LEFT - 6.0,
                    ty + 4.0,
                    fmt_num((t * 1000.0).round() / 1000.0)
                );
            }
        }
        // X ticks every few seconds.
        let step = ((n as f64 / 10.0).ceil() as usize).max(1);
        for i in (0..=n).step_by(step) {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{i}s</text>"#,
                x(i as f64),
                y1 + 15.0
            );
        }
        for (si, (name, color, vals)) in p.series.iter().enumerate() {
            let mut d = String::new();
            let mut pen_up = true;
            for (i, &v) in vals.iter().enumerate() {
                match y(v) {
                    Some(py) => {
                        let _ = write!(
                            d,
                            "{}{:.1},{:.1} ",
                            if pen_up { "M" } else { "L" },
                            x(i as f64 + 0.5),
                            py
                        );
                        pen_up = false;
                    }
                    None => pen_up = true,
                }
            }
            if !d.is_empty() {
                let _ = writeln!(
                    o,
                    r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    d.trim_end()
                );
            }
            let lx = LEFT + pw - 110.0;
            let ly = y0 + 16.0 + 16.0 * si as f64;
            let _ = writeln!(
                o,
                r#"<line x1="{lx}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                lx + 20.0,
                ly - 4.0,
                ly - 4.0,
                lx + 26.0,
                esc(name)
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

/// The chart for `path`: SVG, or a self-contained HTML page when the extension is `html`/`htm`.
pub fn render(s: &Summary, path: &Path) -> String {
    let svg = svg(s);
    match path.extension().and_then(|e| e.to_str()) {
        Some("html" | "htm") => format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>levee bench: {} {}</title></head>\n<body>\n{svg}<pre>{}</pre>\n</body></html>\n",
            esc(s.target),
            esc(&s.variant),
            esc(&serde_json::to_string_pretty(s).unwrap_or_default())
        ),
        _ => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample;

    #[test]
    fn svg_has_three_panels_and_balanced_markup() {
        let s = svg(&sample());
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        for t in [
            "throughput",
            "end-to-end latency",
            "server RSS",
            "consumed",
            "p99",
        ] {
            assert!(s.contains(t), "{t}");
        }
        assert_eq!(s.matches("<path").count(), 5);
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
        // A second without deliveries breaks the latency line rather than dropping it to 0.
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    #[test]
    fn no_rss_no_rss_panel() {
        let mut sm = sample();
        sm.timeline.rss_bytes = vec![0, 0, 0];
        assert!(!svg(&sm).contains("server RSS"));
    }

    #[test]
    fn html_is_self_contained() {
        let h = render(&sample(), Path::new("run.html"));
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("<svg") && h.contains("&quot;msgs_per_sec&quot;"));
        assert!(!h.contains("<script") && !h.contains("http://cdn") && !h.contains("<link"));
        assert!(render(&sample(), Path::new("run.svg")).starts_with("<svg"));
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(83_000.0), 100_000.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2.2), 2.5);
    }
}
