//! The comparison chart: one panel per policy, demand (whole instances needed) against supply
//! (instances serving) and instances paid for, over time, as a self-contained SVG.

use std::fmt::Write;

use super::Run;
use super::score::required;
use super::trace::Trace;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 150.0;
const GAP: f64 = 46.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 56.0;
/// Points per series at most; longer runs are bucketed (the highest value of each bucket).
const POINTS: usize = 1_200;

fn bucketed(values: impl ExactSizeIterator<Item = u32>) -> Vec<(usize, u32)> {
    let length = values.len();
    let size = length.div_ceil(POINTS).max(1);
    let mut out = Vec::with_capacity(length / size + 1);
    let mut highest = 0;
    for (i, v) in values.enumerate() {
        highest = if i % size == 0 { v } else { highest.max(v) };
        if i % size == size - 1 || i + 1 == length {
            out.push((i - i % size, highest));
        }
    }
    out
}

fn step_path(points: &[(usize, u32)], x: impl Fn(usize) -> f64, y: impl Fn(u32) -> f64) -> String {
    let mut path = String::new();
    for (n, &(at, v)) in points.iter().enumerate() {
        if n == 0 {
            let _ = write!(path, "M{:.1},{:.1}", x(at), y(v));
        } else {
            let _ = write!(path, " H{:.1} V{:.1}", x(at), y(v));
        }
    }
    if let Some(&(_, v)) = points.last() {
        let _ = write!(path, " H{:.1} V{:.1}", x(usize::MAX), y(v));
    }
    path
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws `runs` (each with its series kept) on `trace`.
pub fn svg(trace: &Trace, runs: &[Run]) -> String {
    let seconds = trace.demand.len().max(1);
    let height = TOP + runs.len() as f64 * (PANEL + GAP) + 10.0;
    let demand: Vec<u32> = trace.demand.iter().map(|&d| required(d)).collect();
    let top_value = runs
        .iter()
        .flat_map(|r| r.billed.iter().copied())
        .chain(demand.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let hours = seconds as f64 / 3_600.0;
    let (unit, scale) = if hours > 72.0 {
        ("days", 86_400.0)
    } else if hours >= 2.0 {
        ("hours", 3_600.0)
    } else {
        ("minutes", 60.0)
    };
    let plot = WIDTH - LEFT - RIGHT;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">Trace {}: demand against supply, per policy</text>"#,
        escape(&trace.name)
    );
    let _ = writeln!(
        svg,
        r##"<g transform="translate({LEFT},38)"><rect width="14" height="10" fill="#c8c8c8"/><text x="18" y="9">demand (instances needed at 100 %)</text><line x1="250" y1="5" x2="270" y2="5" stroke="#1f6feb" stroke-width="2"/><text x="274" y="9">supply (instances serving)</text><line x1="450" y1="5" x2="470" y2="5" stroke="#d1242f" stroke-width="1.5" stroke-dasharray="4 3"/><text x="474" y="9">instances paid for</text></g>"##
    );
    let demand_points = bucketed(demand.iter().copied());
    for (index, run) in runs.iter().enumerate() {
        let y0 = TOP + index as f64 * (PANEL + GAP) + 18.0;
        let x = |at: usize| LEFT + plot * (at.min(seconds) as f64 / seconds as f64);
        let y = |v: u32| y0 + PANEL - PANEL * f64::from(v) / f64::from(top_value);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" fill="dimgray">{}</text>"#,
            y0 - 6.0,
            escape(&run.policy),
            LEFT + 90.0,
            y0 - 6.0,
            escape(&format!(
                "{:.1} instance-h, under-provisioned {:.1}% of the time, load above SLO {:.1}%, {} out / {} in",
                run.scores.instance_hours,
                run.scores.timeshare_u,
                run.scores.slo_violation_share,
                run.scores.scale_outs,
                run.scores.scale_ins
            ))
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{y0:.1}" width="{plot:.1}" height="{PANEL}" fill="none" stroke="#888"/>"##
        );
        for v in 0..=top_value {
            if top_value <= 12 || v % top_value.div_ceil(6) == 0 {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
                    LEFT + plot,
                    y(v),
                    y(v),
                    LEFT - 6.0,
                    y(v) + 4.0
                );
            }
        }
        let area = format!(
            "{} V{:.1} H{:.1} Z",
            step_path(&demand_points, x, y),
            y(0),
            x(0)
        );
        let _ = writeln!(svg, r##"<path d="{area}" fill="#c8c8c8"/>"##);
        let supply = bucketed(run.supply.iter().copied());
        let billed = bucketed(run.billed.iter().copied());
        let _ = writeln!(
            svg,
            r##"<path d="{}" fill="none" stroke="#d1242f" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
            step_path(&billed, x, y)
        );
        let _ = writeln!(
            svg,
            r##"<path d="{}" fill="none" stroke="#1f6feb" stroke-width="2"/>"##,
            step_path(&supply, x, y)
        );
        let total = seconds as f64 / scale;
        let step = nice_step(total / 8.0);
        let mut tick = 0.0;
        while tick <= total + 1e-9 {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="dimgray">{}</text>"#,
                x((tick * scale) as usize),
                y0 + PANEL + 14.0,
                tick
            );
            tick += step;
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="dimgray">{unit}</text>"#,
            LEFT + plot,
            y0 + PANEL + 28.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
