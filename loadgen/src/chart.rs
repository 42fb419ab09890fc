//! `chart`: SVG line charts, written by hand (a few dozen elements, and no font
//! library needed to render the labels). Two kinds: latency (p50 dashed, p99 solid,
//! log scale) against offered delivery rate, one colour per result file; and with
//! `--rss`, each server's RSS over the run (the soak), one colour per server.

use std::{fmt::Write as _, path::Path};

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

/// How the y axis maps values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    /// Decades, for latencies that span several.
    Log,
    /// From the lowest to the highest value, for a level that should stay flat.
    Linear,
}

/// One polyline: (x, y) points, a colour and a legend entry.
struct Line {
    label: Option<String>,
    colour: usize,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// What one chart shows.
struct Plot {
    title: &'static str,
    x_label: &'static str,
    y_unit: &'static str,
    scale: Scale,
    lines: Vec<Line>,
}

/// Runs `chart [--rss] --out file.svg result.json..`.
pub fn run(args: &ChartArgs) -> Result<(), String> {
    let mut lines = Vec::new();
    for (colour, input) in args.results.iter().enumerate() {
        let result = read(input)?;
        if args.rss {
            lines.extend(rss_lines(&result, lines.len(), input)?);
        } else {
            lines.extend(latency_lines(&result, colour));
        }
    }
    let plot = if args.rss {
        Plot {
            title: "Server RSS over the run",
            x_label: "minutes since the first phase started",
            y_unit: "MiB",
            scale: Scale::Linear,
            lines,
        }
    } else {
        Plot {
            title: "Latency against offered rate (p99 solid, p50 dashed)",
            x_label: "offered deliveries per second",
            y_unit: "ms",
            scale: Scale::Log,
            lines,
        }
    };
    std::fs::write(&args.out, svg(&plot)).map_err(|e| format!("{}: {e}", args.out.display()))
}

fn read(input: &Path) -> Result<RunResult, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", input.display());
    let text = std::fs::read_to_string(input).map_err(|e| fail(&e))?;
    serde_json::from_str(&text).map_err(|e| fail(&e))
}

/// p99 (solid, labelled) and p50 (dashed) against offered deliveries per second.
fn latency_lines(result: &RunResult, colour: usize) -> Vec<Line> {
    let measured = || result.phases.iter().filter(|p| p.latency_us.count > 0);
    let ms = |us: u64| (us as f64 / 1000.0).max(0.01);
    let line =
        |label: Option<String>, dashed: bool, pick: fn(&crate::stats::Latency) -> u64| Line {
            label,
            colour,
            dashed,
            points: measured()
                .map(|p| (p.offered_deliveries_per_s, ms(pick(&p.latency_us))))
                .collect(),
        };
    vec![
        line(Some(result.label.clone()), false, |l| l.p99),
        line(None, true, |l| l.p50),
    ]
}

/// One line per server: RSS in MiB against minutes.
fn rss_lines(result: &RunResult, first_colour: usize, input: &Path) -> Result<Vec<Line>, String> {
    let rss = result.rss.as_ref().ok_or_else(|| {
        format!(
            "{}: no RSS trace (run it with --rss-every)",
            input.display()
        )
    })?;
    Ok(rss
        .servers
        .iter()
        .enumerate()
        .map(|(i, server)| Line {
            label: Some(format!(
                "{} server {} (pid {})",
                result.label,
                i + 1,
                server.pid
            )),
            colour: first_colour + i,
            dashed: false,
            points: server
                .samples
                .iter()
                .map(|s| (s.t_s / 60.0, s.rss_kib as f64 / 1024.0))
                .collect(),
        })
        .collect())
}

/// The y range and its gridlines: decades for a log scale, five even steps for a
/// linear one (with a margin, so a flat line does not sit on the frame).
fn y_axis(scale: Scale, lo: f64, hi: f64) -> (f64, f64, Vec<f64>) {
    match scale {
        Scale::Log => {
            let (lo, hi) = (lo.min(1.0).log10().floor(), hi.max(1.0).log10().ceil());
            let hi = hi.max(lo + 1.0);
            let ticks = (lo as i32..=hi as i32).map(|d| 10f64.powi(d)).collect();
            (lo, hi, ticks)
        }
        Scale::Linear => {
            let margin = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1e-3);
            let (lo, hi) = ((lo - margin).max(0.0), hi + margin);
            let ticks = (0..=5)
                .map(|i| lo + (hi - lo) * f64::from(i) / 5.0)
                .collect();
            (lo, hi, ticks)
        }
    }
}

fn svg(plot: &Plot) -> String {
    let all = plot.lines.iter().flat_map(|l| &l.points);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_lo = all.clone().map(|p| p.1).fold(f64::MAX, f64::min);
    let y_hi = all.map(|p| p.1).fold(f64::MIN, f64::max);
    let (y_lo, y_hi) = if y_lo <= y_hi {
        (y_lo, y_hi)
    } else {
        (1.0, 1.0)
    };
    let (lo, hi, ticks) = y_axis(plot.scale, y_lo, y_hi);
    let scaled = |v: f64| {
        if plot.scale == Scale::Log {
            v.log10()
        } else {
            v
        }
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - (scaled(v) - lo) / (hi - lo) * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, "<title>{} ({})</title>", plot.title, plot.y_unit);
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        plot.title
    );
    let step = if ticks.len() > 1 {
        ticks[1] - ticks[0]
    } else {
        1.0
    };
    for tick in ticks {
        let yy = y(tick);
        let label = match plot.scale {
            Scale::Log => human(tick),
            // Enough decimals that neighbouring gridlines never read the same.
            Scale::Linear => {
                let decimals = if step >= 1.0 {
                    0
                } else {
                    (-step.log10()).ceil() as usize
                };
                format!("{tick:.decimals$}")
            }
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} {}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            label,
            plot.y_unit
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
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        plot.x_label
    );
    let mut legend = 0.0;
    for line in &plot.lines {
        let colour = COLOURS[line.colour % COLOURS.len()];
        let dash = if line.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let points: Vec<String> = line
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        );
        if let Some(label) = &line.label {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{label}</text>"#,
                LEFT + 10.0,
                TOP + 16.0 + 16.0 * legend
            );
            legend += 1.0;
        }
    }
    out.push_str("</svg>\n");
    out
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot(scale: Scale, lines: Vec<Vec<(f64, f64)>>) -> Plot {
        Plot {
            title: "t",
            x_label: "x",
            y_unit: "ms",
            scale,
            lines: lines
                .into_iter()
                .enumerate()
                .map(|(i, points)| Line {
                    label: Some(format!("line {i}")),
                    colour: i,
                    dashed: i % 2 == 1,
                    points,
                })
                .collect(),
        }
    }

    #[test]
    fn draws_one_polyline_per_line() {
        let svg = svg(&plot(
            Scale::Log,
            vec![
                vec![(1000.0, 2.0), (2000.0, 5.0)],
                vec![(1000.0, 0.5), (2000.0, 0.8)],
            ],
        ));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
        assert!(svg.contains(">0.1 ms<") && svg.contains(">10 ms<"), "{svg}");
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn a_linear_axis_frames_a_flat_line() {
        let (lo, hi, ticks) = y_axis(Scale::Linear, 14.0, 14.0);
        assert!(lo < 14.0 && hi > 14.0);
        assert_eq!(ticks.len(), 6);
        let svg = svg(&plot(Scale::Linear, vec![vec![(0.0, 14.0), (2.0, 15.5)]]));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        // Gridlines 0.35 MiB apart are labelled to a tenth, each one differently.
        let labels: Vec<&str> = svg
            .lines()
            .filter_map(|l| l.split(r#"text-anchor="end">"#).nth(1))
            .collect();
        assert_eq!(labels.len(), 6);
        assert!(labels.windows(2).all(|w| w[0] != w[1]), "{labels:?}");
    }
}
