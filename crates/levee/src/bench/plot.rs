//! A chart of one run, drawn by hand as SVG: consumed and confirmed messages/s, latency p50 /
//! p99 from the scheduled and from the actual send time (log scale) and server RSS per second,
//! the warm-up shaded. A `.html` path gets the SVG wrapped in a self-contained page (no scripts,
//! no external resources); a `.png` path gets it rasterised by `resvg` with the system's fonts.
//!
//! Invariants: the output depends only on the summary (deterministic; no time or randomness);
//! legends sit above their panel, outside the plotted area, so no line crosses them; lines
//! that can coincide (consumed over confirmed) are drawn so that both stay visible (the later
//! one thinner and dashed, on top of the earlier one).

use std::fmt::Write;

use super::args::PlotFormat;
use super::stats::Summary;

const W: f64 = 900.0;
const PANEL_H: f64 = 190.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 52.0;
const GAP: f64 = 45.0;

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    log: bool,
    series: Vec<Line<'a>>,
}

/// One series: legend name, colour, stroke width, dash pattern (`None`: solid), values.
struct Line<'a> {
    name: &'a str,
    color: &'a str,
    width: f64,
    dash: Option<&'a str>,
    values: Vec<f64>,
}

fn line<'a>(name: &'a str, color: &'a str, values: Vec<f64>) -> Line<'a> {
    Line {
        name,
        color,
        width: 2.0,
        dash: None,
        values,
    }
}

/// Width of a legend entry: the 20 px swatch, a gap, the name at ~7 px a character, a gap.
fn legend_width(name: &str) -> f64 {
    20.0 + 6.0 + 7.0 * name.chars().count() as f64 + 14.0
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
pub(crate) fn svg(s: &Summary) -> String {
    let f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let ms = |v: &[u64]| v.iter().map(|&u| u as f64 / 1e3).collect::<Vec<_>>();
    let dashed = |l: Line<'static>| Line {
        width: 1.5,
        dash: Some("6 3"),
        ..l
    };
    let mut panels = vec![
        Panel {
            title: "throughput",
            unit: "msg/s",
            log: false,
            series: vec![
                Line {
                    width: 4.0,
                    ..line("confirmed", "#ff7f0e", f(&s.timeline.confirmed))
                },
                dashed(line("consumed", "#1f77b4", f(&s.timeline.consumed))),
            ],
        },
        Panel {
            title: "end-to-end latency",
            unit: "ms",
            log: true,
            series: vec![
                line("p50 scheduled", "#2ca02c", ms(&s.timeline.p50_us)),
                line("p99 scheduled", "#d62728", ms(&s.timeline.p99_us)),
                dashed(line("p50 actual", "#17becf", ms(&s.timeline.actual_p50_us))),
                dashed(line("p99 actual", "#222222", ms(&s.timeline.actual_p99_us))),
            ],
        },
    ];
    if s.timeline.rss_bytes.iter().any(|&b| b > 0) {
        panels.push(Panel {
            title: "server RSS",
            unit: "MiB",
            log: false,
            series: vec![line(
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
        .flat_map(|p| p.series.iter().map(|s| s.values.len()))
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
        let all: Vec<f64> = p
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .collect();
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
        // Legend: right-aligned on the panel's title line, above the plotted area.
        let mut lx = LEFT + pw - p.series.iter().map(|l| legend_width(l.name)).sum::<f64>();
        let ly = y0 - 6.0;
        for l in &p.series {
            let dash = l
                .dash
                .map(|d| format!(r#" stroke-dasharray="{d}""#))
                .unwrap_or_default();
            let mut d = String::new();
            let mut pen_up = true;
            for (i, &v) in l.values.iter().enumerate() {
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
                    r#"<path d="{}" fill="none" stroke="{}" stroke-width="{}"{dash}/>"#,
                    d.trim_end(),
                    l.color,
                    l.width
                );
            }
            let _ = writeln!(
                o,
                r#"<line x1="{lx:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{}" stroke-width="{}"{dash}/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                lx + 20.0,
                ly - 4.0,
                ly - 4.0,
                l.color,
                l.width,
                lx + 26.0,
                esc(l.name)
            );
            lx += legend_width(l.name);
        }
    }
    o.push_str("</svg>\n");
    o
}

/// The chart as text: SVG, or a self-contained HTML page around it (PNG: [`png`]).
pub(crate) fn render(s: &Summary, format: PlotFormat) -> String {
    let svg = svg(s);
    match format {
        PlotFormat::Html => format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>levee bench: {} {}</title></head>\n<body>\n{svg}<pre>{}</pre>\n</body></html>\n",
            esc(s.target),
            esc(&s.variant),
            esc(&serde_json::to_string_pretty(s).unwrap_or_default())
        ),
        PlotFormat::Svg | PlotFormat::Png => svg,
    }
}

/// The chart as a PNG image: the SVG rendered by `resvg`, text in the system's sans-serif font
/// (DejaVu Sans where installed).
pub(crate) fn png(s: &Summary) -> anyhow::Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    let families: Vec<String> = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    anyhow::ensure!(
        !families.is_empty(),
        "--plot .png needs a font to draw its text and none is installed (install fonts-dejavu-core, or use .svg)"
    );
    let sans = families
        .iter()
        .find(|f| f.as_str() == "DejaVu Sans")
        .or_else(|| families.iter().find(|f| f.contains("Sans")))
        .unwrap_or(&families[0])
        .clone();
    db.set_sans_serif_family(&sans);
    opt.font_family = sans;
    let tree = usvg::Tree::from_str(&svg(s), &opt)
        .map_err(|e| anyhow::anyhow!("rendering the chart: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow::anyhow!("chart of size {size:?} has no pixels"))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| anyhow::anyhow!("encoding the chart as PNG: {e}"))
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
            "p99 scheduled",
            "p99 actual",
        ] {
            assert!(s.contains(t), "{t}");
        }
        assert_eq!(s.matches("<path").count(), 7);
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
        let h = render(&sample(), PlotFormat::Html);
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("<svg") && h.contains("&quot;msgs_per_sec&quot;"));
        assert!(!h.contains("<script") && !h.contains("http://cdn") && !h.contains("<link"));
        assert!(render(&sample(), PlotFormat::Svg).starts_with("<svg"));
    }

    /// (x1, x2, y) of a legend swatch.
    type Swatch = (f64, f64, f64);

    /// Every legend swatch, and every path vertex (x, y).
    fn legends_and_vertices(s: &str) -> (Vec<Swatch>, Vec<(f64, f64)>) {
        let attr = |tag: &str, name: &str| -> f64 {
            let k = format!(" {name}=\"");
            let i = tag.find(&k).unwrap() + k.len();
            tag[i..i + tag[i..].find('"').unwrap()].parse().unwrap()
        };
        let legends = s
            .lines()
            .filter(|l| l.starts_with("<line") && l.contains("stroke-width"))
            .map(|l| (attr(l, "x1"), attr(l, "x2"), attr(l, "y1")))
            .collect();
        let vertices = s
            .lines()
            .filter(|l| l.starts_with("<path"))
            .flat_map(|l| {
                let d = &l[l.find("d=\"").unwrap() + 3..];
                let d = &d[..d.find('"').unwrap()];
                d.split_whitespace()
                    .map(|p| {
                        let (x, y) = p[1..].split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        (legends, vertices)
    }

    #[test]
    fn no_line_reaches_a_legend() {
        // RSS flat at its maximum: the line runs along the top of its panel.
        let mut sm = sample();
        sm.timeline.rss_bytes = vec![50 << 20, 50 << 20, 50 << 20];
        let s = svg(&sm);
        let (legends, vertices) = legends_and_vertices(&s);
        assert_eq!(legends.len(), 7);
        // Legends sit in the gaps between panels (and above the first), every vertex inside a
        // panel: no line can cross a legend, however high its values.
        let in_panel = |y: f64| (y - TOP).rem_euclid(PANEL_H + GAP) <= PANEL_H + 0.1;
        for (x1, x2, ly) in legends {
            assert!(x1 >= LEFT && x2 <= W - RIGHT, "legend at {x1}..{x2}");
            assert!(!in_panel(ly) && ly > 0.0, "legend at y {ly} inside a panel");
        }
        assert!(!vertices.is_empty());
        for &(_, vy) in &vertices {
            assert!(in_panel(vy), "vertex at y {vy} outside every panel");
        }
    }

    #[test]
    fn consumed_stays_visible_over_confirmed() {
        let mut sm = sample();
        sm.timeline.consumed = sm.timeline.confirmed.clone();
        let s = svg(&sm);
        let confirmed = s.find(r##"stroke="#ff7f0e" stroke-width="4""##).unwrap();
        let consumed = s
            .find(r##"stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="6 3""##)
            .unwrap();
        // Same values: the thin dashed consumed line is drawn after (over) the wide one.
        assert!(consumed > confirmed);
    }

    #[test]
    fn png_is_a_real_png_of_the_chart_size() {
        let bytes = png(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!(w, W as u32);
        assert_eq!(h, (TOP + 3.0 * (PANEL_H + GAP)) as u32);
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(83_000.0), 100_000.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(2.2), 2.5);
    }
}
