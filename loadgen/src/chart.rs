//! `chart`: an SVG of latency (p50 dashed, p99 solid, log scale) against offered
//! delivery rate, one colour per result file. Written by hand: a few dozen
//! elements, and no font library needed to render the labels.

use std::fmt::Write as _;

use crate::{args::ChartArgs, report::RunResult};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line on the chart: (offered deliveries/s, p50 ms, p99 ms) points.
struct Series {
    label: String,
    points: Vec<(f64, f64, f64)>,
}

/// Runs `chart --out file.svg result.json..`.
pub fn run(args: &ChartArgs) -> Result<(), String> {
    let mut series = Vec::new();
    for input in &args.results {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", input.display());
        let text = std::fs::read_to_string(input).map_err(|e| fail(&e))?;
        let result: RunResult = serde_json::from_str(&text).map_err(|e| fail(&e))?;
        let points = result
            .phases
            .iter()
            .filter(|p| p.latency_us.count > 0)
            .map(|p| {
                let ms = |us: u64| (us as f64 / 1000.0).max(0.01);
                (
                    p.offered_deliveries_per_s,
                    ms(p.latency_us.p50),
                    ms(p.latency_us.p99),
                )
            })
            .collect();
        series.push(Series {
            label: result.label,
            points,
        });
    }
    std::fs::write(&args.out, svg(&series)).map_err(|e| format!("{}: {e}", args.out.display()))
}

fn svg(series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| &s.points);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_lo = all.clone().map(|p| p.1).fold(f64::MAX, f64::min).min(1.0);
    let y_hi = all.map(|p| p.2).fold(1.0, f64::max);
    let (lo, hi) = (
        y_lo.log10().floor(),
        y_hi.log10().ceil().max(y_lo.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |ms: f64| TOP + plot_h - (ms.log10() - lo) / (hi - lo) * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        "<title>Publish-to-receive latency (ms, log) against offered deliveries per second</title>"
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Latency against offered rate (p99 solid, p50 dashed)</text>"#,
        WIDTH / 2.0
    );
    for decade in lo as i32..=hi as i32 {
        let ms = 10f64.powi(decade);
        let yy = y(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    for tick in 0..=5 {
        let v = x_max / 5.0 * f64::from(tick);
        let xx = x(v);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            human(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered deliveries per second</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (pick, dash) in [(2usize, ""), (1, r#" stroke-dasharray="5,4""#)] {
            let points: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(if pick == 2 { p.2 } else { p.1 })))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            LEFT + 10.0,
            TOP + 16.0 + 16.0 * i as f64,
            s.label
        );
    }
    out.push_str("</svg>\n");
    out
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_polyline_per_percentile() {
        let series = [Series {
            label: "a".into(),
            points: vec![(1000.0, 0.5, 2.0), (2000.0, 0.8, 5.0)],
        }];
        let svg = svg(&series);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.ends_with("</svg>\n"));
    }
}
