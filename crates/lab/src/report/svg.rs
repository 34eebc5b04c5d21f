//! SVG bar charts (plotters): for each workload its headline figure by
//! backend with the target drawn as a line, and for some workloads the
//! pair of figures the headline is made of (alone / under load).
//!
//! # Invariants
//! - SV1. Every chart has a title, a labelled y axis with its unit, and a
//!   legend; a backend without a figure (n/a, failed) keeps its place on
//!   the x axis with no bar, so charts of one run line up.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::suite::Run;

/// One chart written: its file name and title.
pub struct Plot {
    /// File name inside the report directory.
    pub file: String,
    /// Title.
    pub title: String,
}

const COLORS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];
const W: u32 = 760;
const H: u32 = 380;

/// Extra charts: workload, title, y axis, metric keys (all of one unit).
const PAIRS: &[(&str, &str, &str, &[&str])] = &[
    ("fault-churn", "fault-churn: faults/s alone and with churn", "page faults", &["alone", "churned"]),
    (
        "fault-churn",
        "fault-churn: throughput kept, churn flat out and paced at 20k cycles/s",
        "throughput kept",
        &["kept", "kept_paced"],
    ),
    (
        "fault-churn",
        "fault-churn: fault time lost per churn cycle (flat out)",
        "time lost",
        &["lost_per_cycle"],
    ),
    (
        "fault-churn",
        "fault-churn: fault latency p99, alone and with churn",
        "latency",
        &["p99_alone", "p99_churned"],
    ),
    ("page-fault", "page-fault: faults/s, one thread and all", "page faults", &["faults1", "faults"]),
    (
        "proc-vs-map",
        "proc-vs-map: max ratio, the writer's beside the control's (PM6: sharing nothing)",
        "max with readers / alone",
        &["max_ratio", "floor_ratio"],
    ),
    ("proc-vs-map", "proc-vs-map: writer (mmap+munmap) max latency", "latency", &["max_alone", "max_with"]),
    ("proc-vs-map", "proc-vs-map: writer (mmap+munmap) p99 latency", "latency", &["p99_alone", "p99_with"]),
];

fn si(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e4 => format!("{:.0}k", v / 1e3),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 10.0 || v == v.round() => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn io<E: std::fmt::Display>(e: E) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A grouped bar chart: one group per backend, one bar per series.
fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    names: &[String],
    series: &[(String, Vec<Option<f64>>)],
    target: Option<(f64, String)>,
    unit: &str,
) -> std::io::Result<()> {
    let k = series.len() as i32;
    let per = k + 1;
    // No gap after the last group.
    let slots = names.len() as i32 * per - 1;
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .copied()
        .chain(target.as_ref().map(|t| t.0))
        .fold(0.0f64, f64::max);
    // Headroom above the tallest bar for the legend.
    let ymax = if top > 0.0 { top * 1.4 } else { 1.0 };
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(io)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((0..slots).into_segmented(), 0f64..ymax)
        .map_err(io)?;
    // Labels sit under a group's first bar, shifted to the group's middle.
    let slot_px = (W as f64 - 72.0 - 24.0) / f64::from(slots.max(1));
    let fmt_x = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(j) if j % per == 0 && ((j / per) as usize) < names.len() => {
            names[(j / per) as usize].clone()
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_labels(slots as usize + 1)
        .x_label_formatter(&fmt_x)
        .x_label_offset((slot_px * f64::from(k - 1) / 2.0) as i32)
        .y_label_formatter(&|v| si(*v))
        .x_desc("backend")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(io)?;
    for (si_, (label, vals)) in series.iter().enumerate() {
        let c = COLORS[si_ % COLORS.len()];
        let rects = vals.iter().enumerate().filter_map(|(i, v)| {
            let j = i as i32 * per + si_ as i32;
            v.map(|v| {
                Rectangle::new([(SegmentValue::Exact(j), 0.0), (SegmentValue::Exact(j + 1), v)], c.filled())
            })
        });
        chart
            .draw_series(rects)
            .map_err(io)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        // The value above each bar, so that a zero is seen as a zero.
        let values = vals.iter().enumerate().filter_map(|(i, v)| {
            let j = i as i32 * per + si_ as i32;
            let style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Center, VPos::Bottom));
            v.map(|v| Text::new(si(v), (SegmentValue::CenterOf(j), v), style))
        });
        chart.draw_series(values).map_err(io)?;
    }
    if let Some((t, whom)) = target {
        chart
            .draw_series(LineSeries::new(
                [(SegmentValue::Exact(0), t), (SegmentValue::Exact(slots), t)],
                RED.stroke_width(2),
            ))
            .map_err(io)?
            .label(format!("target{whom}: {}{unit}", si(t)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(io)?;
    root.present().map_err(io)
}

/// Writes every chart of `run` into `dir`; returns them per workload.
pub fn write_all(run: &Run, dir: &Path) -> std::io::Result<Vec<(&'static str, Vec<Plot>)>> {
    let mut out = Vec::new();
    for w in super::workloads(run) {
        let cells = super::cells_of(run, w);
        let names: Vec<String> = cells.iter().map(|c| c.backend.clone()).collect();
        let metric = |key: &str| -> Vec<Option<f64>> {
            cells
                .iter()
                .map(|c| {
                    c.outcome.as_ref().and_then(|o| o.metrics.iter().find(|m| m.key == key)).map(|m| m.value)
                })
                .collect()
        };
        let Some(head) = cells.iter().find_map(|c| c.outcome.as_ref().and_then(|o| o.metrics.first())) else {
            out.push((w, Vec::new()));
            continue;
        };
        // The target line, and whom it is for when not for every backend.
        let judged: Vec<(&str, f64)> = cells
            .iter()
            .filter_map(|c| {
                Some((c.backend.as_str(), c.outcome.as_ref()?.metrics.first()?.target.as_ref()?.line?))
            })
            .collect();
        let target = judged.first().map(|&(_, t)| {
            let whom = if judged.len() == cells.len() {
                String::new()
            } else {
                format!(" ({})", judged.iter().map(|j| j.0).collect::<Vec<_>>().join(", "))
            };
            (t, whom)
        });
        let mut plots = Vec::new();
        let mut charts = vec![(format!("{w}: {}", head.label), head.label, vec![head.key])];
        for (_, title, y, keys) in PAIRS.iter().filter(|p| p.0 == w) {
            charts.push((title.to_string(), *y, keys.to_vec()));
        }
        for (i, (title, y, keys)) in charts.into_iter().enumerate() {
            let unit = cells
                .iter()
                .find_map(|c| c.outcome.as_ref()?.metrics.iter().find(|m| m.key == keys[0]))
                .map_or("", |m| m.unit);
            let series: Vec<(String, Vec<Option<f64>>)> = keys
                .iter()
                .map(|k| {
                    let label = cells
                        .iter()
                        .find_map(|c| c.outcome.as_ref()?.metrics.iter().find(|m| m.key == *k))
                        .map_or(k.to_string(), |m| m.label.to_string());
                    (label, metric(k))
                })
                .collect();
            // Latencies of many milliseconds read better in ms.
            let (series, unit) =
                if unit == "us" && series.iter().flat_map(|s| s.1.iter().flatten()).any(|v| *v >= 1e4) {
                    let ms = series
                        .into_iter()
                        .map(|(l, v)| (l, v.into_iter().map(|v| v.map(|v| v / 1e3)).collect()))
                        .collect();
                    (ms, "ms")
                } else {
                    (series, unit)
                };
            let file = format!("{w}-{i}.svg");
            let y = format!("{y} ({unit})");
            bars(
                &dir.join(&file),
                &title,
                &y,
                &names,
                &series,
                if i == 0 { target.clone() } else { None },
                unit,
            )?;
            plots.push(Plot { file, title });
        }
        out.push((w, plots));
    }
    Ok(out)
}
