//! Loss curves as a standalone SVG, drawn by hand: training loss and
//! validation bits per byte against the step.
//!
//! Both series are plotted in bits per byte so they share one axis: the
//! training loss (nats per byte) is divided by ln 2, and validation uses
//! `val_bpb`, or `val_loss / ln 2` where only the loss was logged. Steps
//! whose value is missing or not finite are left out.

use crate::checkpoint::{read_metrics, Metrics};
use anyhow::{bail, Context, Result};
use kilobyte_format::write_atomic;
use std::f64::consts::LN_2;
use std::fmt::Write as _;
use std::path::Path;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;
// Room around the plot area for the title, tick labels and axis labels.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const TRAIN_COLOUR: &str = "#1f77b4";
const VAL_COLOUR: &str = "#d62728";

/// Reads `metrics.jsonl` and writes the plot to `svg_path` atomically. The
/// title names the run directory (the JSONL file's parent).
pub fn plot_metrics(jsonl_path: &Path, svg_path: &Path) -> Result<()> {
    let metrics = read_metrics(jsonl_path)?;
    let run = jsonl_path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| jsonl_path.display().to_string());
    let svg = render_svg(&metrics, &format!("kilobyte training: {run}"))
        .with_context(|| format!("{}", jsonl_path.display()))?;
    write_atomic(svg_path, svg.as_bytes()).with_context(|| format!("{}", svg_path.display()))
}

/// The SVG document for `metrics`.
pub fn render_svg(metrics: &[Metrics], title: &str) -> Result<String> {
    let train: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| Some((m.step as f64, m.train_loss? / LN_2)))
        .filter(|p| p.1.is_finite())
        .collect();
    let val: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| Some((m.step as f64, m.val_bpb.or(m.val_loss.map(|l| l / LN_2))?)))
        .filter(|p| p.1.is_finite())
        .collect();
    let all = || train.iter().chain(&val);
    if all().next().is_none() {
        bail!("no training or validation losses to plot");
    }
    let (x0, x1) = min_max(all().map(|p| p.0));
    let (y0, y1) = min_max(all().map(|p| p.1));
    let xs = Axis::new(x0, x1, LEFT, WIDTH - RIGHT);
    let ys = Axis::new(y0, y1, HEIGHT - BOTTOM, TOP);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid lines and tick labels.
    let (left, right, top, bottom) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    for &t in &xs.ticks {
        let x = xs.map(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 18.0,
            tick_label(t, xs.step)
        );
    }
    for &t in &ys.ticks {
        let y = ys.map(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            tick_label(t, ys.step)
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{left},{top} V{bottom} H{right}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        (left + right) / 2.0,
        HEIGHT - 15.0
    );
    let (ly, lx) = ((top + bottom) / 2.0, 20.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">bits per byte</text>"#
    );

    // The curves; validation points also get markers, as they are sparse.
    for (class, colour, points) in [("train", TRAIN_COLOUR, &train), ("val", VAL_COLOUR, &val)] {
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", xs.map(x), ys.map(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="{class}" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            coords.join(" ")
        );
        if class == "val" || points.len() == 1 {
            for &(x, y) in points.iter() {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    xs.map(x),
                    ys.map(y)
                );
            }
        }
    }

    // Legend, top right inside the plot area.
    let (bx, by) = (right - 190.0, top + 10.0);
    let _ = writeln!(
        s,
        r##"<rect x="{bx}" y="{by}" width="180" height="46" fill="white" fill-opacity="0.85" stroke="#999999"/>"##
    );
    for (i, (label, colour)) in [
        ("train loss / ln 2", TRAIN_COLOUR),
        ("validation bpb", VAL_COLOUR),
    ]
    .iter()
    .enumerate()
    {
        let y = by + 15.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
            bx + 8.0,
            bx + 32.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{label}</text>"#,
            bx + 40.0,
            y + 4.0
        );
    }
    s.push_str("</svg>\n");
    Ok(s)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A linear axis from data to pixels, its ends rounded out to round ticks.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
    px_lo: f64,
    px_hi: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Axis {
        // A single value still needs a range to draw in.
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        };
        let step = nice_step((hi - lo) / 6.0);
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let n = ((hi - lo) / step).round() as usize;
        let ticks = (0..=n).map(|i| lo + i as f64 * step).collect();
        Axis {
            lo,
            hi,
            step,
            ticks,
            px_lo,
            px_hi,
        }
    }

    fn map(&self, v: f64) -> f64 {
        self.px_lo + (v - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)
    }
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// A tick value with as many decimals as the tick spacing needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    // Rounding can leave -0.0 at zero.
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests;
