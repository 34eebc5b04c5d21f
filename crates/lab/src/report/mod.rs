//! The report of a run: the terminal table (table.rs), `results.json`, SVG
//! plots (svg.rs) and `index.html` (html.rs), all from one [`Run`].
//!
//! # Invariants
//! - RE1. Every figure shown comes from the `Run`; nothing is computed
//!   twice in two places: formatting (here) and verdicts (workload/mod.rs
//!   W1) are shared by the table, the page and the plots.
//! - RE2. The report directory holds only files this module writes:
//!   `index.html`, `results.json`, `*.svg`.

use std::path::Path;

use crate::suite::{Cell, Run};
use crate::workload::{Metric, Outcome};

mod html;
mod svg;
pub mod table;

/// Writes `results.json`, the plots and `index.html` into `dir`.
pub fn write(run: &Run, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(run).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json + "\n")?;
    let plots = svg::write_all(run, dir)?;
    std::fs::write(dir.join("index.html"), html::render(run, &plots))
}

/// A figure with its unit, as people read it.
pub fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{v:.1}%"),
        "x" => format!("{v:.2}x"),
        "count" => format!("{v:.0}"),
        "us" if v >= 1e3 => format!("{:.1} ms", v / 1e3),
        _ if v.abs() >= 1e6 => format!("{:.2} M{unit}", v / 1e6),
        _ if v.abs() >= 1e4 => format!("{:.1} k{unit}", v / 1e3),
        _ if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.2} {unit}"),
    }
}

/// A target's verdict.
pub fn verdict(m: &Metric) -> Option<String> {
    m.target.as_ref().map(|t| format!("{} ({})", if t.met { "met" } else { "MISSED" }, t.text))
}

/// The run's cells of one workload, in backend order.
pub fn cells_of<'a>(run: &'a Run, workload: &str) -> Vec<&'a Cell> {
    run.cells.iter().filter(|c| c.workload == workload).collect()
}

/// The metrics of a workload's cells, each key once, in first-seen order
/// (a backend may have figures another has not).
pub fn keys<'a>(cells: &[&'a Cell]) -> Vec<&'a Metric> {
    let mut out: Vec<&Metric> = Vec::new();
    for m in cells.iter().filter_map(|c| c.outcome.as_ref()).flat_map(|o| &o.metrics) {
        if !out.iter().any(|k| k.key == m.key) {
            out.push(m);
        }
    }
    out
}

/// The workloads of the run, in order.
pub fn workloads(run: &Run) -> Vec<&'static str> {
    let mut w: Vec<&'static str> = Vec::new();
    for c in &run.cells {
        if !w.contains(&c.workload) {
            w.push(c.workload);
        }
    }
    w
}

/// The cost columns: header and value of each.
pub fn costs(o: &Outcome) -> Vec<(&'static str, String)> {
    let c = &o.costs;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    vec![
        ("grace periods", opt(c.grace_periods)),
        ("sync waits", opt(c.sync_waits)),
        ("sync ms", c.sync_wait_ms.map_or("-".into(), |v| format!("{v:.1}"))),
        ("shootdowns", opt(c.shootdowns)),
        ("pending max", opt(c.pending_max)),
        ("deferred KiB", c.deferred_kib_max.map_or("-".into(), |v| format!("{v:.0}"))),
        ("peak MiB", format!("{:.1}", c.peak_mib)),
    ]
}

/// Every target of the run: (workload, backend, metric).
pub fn targets(run: &Run) -> Vec<(&str, &str, &Metric)> {
    let mut out = Vec::new();
    for c in &run.cells {
        for m in c.outcome.iter().flat_map(|o| &o.metrics).filter(|m| m.target.is_some()) {
            out.push((c.workload, c.backend.as_str(), m));
        }
    }
    out
}

/// What `rcu-sync`'s munmap cost over the run: grace periods waited, ms;
/// `None` when no `rcu-sync` cell was measured (nothing to show).
pub fn rcu_sync_cost(run: &Run) -> Option<(u64, f64)> {
    let mut cells =
        run.cells.iter().filter(|c| c.backend == "rcu-sync").filter_map(|c| c.outcome.as_ref()).peekable();
    cells.peek()?;
    Some(cells.fold((0, 0.0), |(n, ms), o| {
        (n + o.costs.munmap_waits.unwrap_or(0), ms + o.costs.munmap_wait_ms.unwrap_or(0.0))
    }))
}
