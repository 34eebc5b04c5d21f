//! The terminal table: one block per workload, one row per backend, the
//! workload's figures, the target verdicts, then what the run cost.

use std::fmt::Write as _;

use super::{costs, fmt, rcu_sync_cost, targets, verdict};
use crate::suite::Run;
use crate::workload;

/// The whole table, the targets' summary last.
pub fn render(run: &Run) -> String {
    let mut out = String::new();
    for w in super::workloads(run) {
        let cells = super::cells_of(run, w);
        let about = workload::find(w).map_or("", |w| w.about);
        let _ = writeln!(out, "\n{w}: {about}");
        let Some(first) = cells.iter().find_map(|c| c.outcome.as_ref()) else {
            for c in &cells {
                let _ = writeln!(out, "  {:<13} {}", c.backend, c.error.as_deref().unwrap_or(""));
            }
            continue;
        };
        let keys = super::keys(&cells);
        let mut header = vec!["backend".to_string()];
        header.extend(keys.iter().map(|m| m.key.to_string()));
        header.push("target".into());
        header.extend(costs(first).into_iter().map(|(h, _)| h.to_string()));
        let mut rows = vec![header];
        let mut notes = Vec::new();
        for c in &cells {
            let mut row = vec![c.backend.clone()];
            match &c.outcome {
                Some(o) => {
                    row.extend(keys.iter().map(|k| {
                        o.metrics.iter().find(|m| m.key == k.key).map_or("-".into(), |m| fmt(m.value, m.unit))
                    }));
                    let v: Vec<String> = o.metrics.iter().filter_map(verdict).collect();
                    row.push(if v.is_empty() { "-".into() } else { v.join(", ") });
                    row.extend(costs(o).into_iter().map(|(_, v)| v));
                    notes.extend(o.notes.iter().map(|n| format!("{}: {n}", c.backend)));
                }
                None => row.push(c.error.clone().unwrap_or_default()),
            }
            rows.push(row);
        }
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                rows.iter()
                    .filter(|r| r.len() == cols)
                    .filter_map(|r| r.get(i))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &rows {
            let mut line = String::from(" ");
            for (i, s) in r.iter().enumerate() {
                let w = if r.len() == cols { width[i] } else { 0 };
                let _ = if i == 0 { write!(line, " {s:<w$}") } else { write!(line, "  {s:>w$}") };
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let legend: Vec<String> =
            keys.iter().map(|m| format!("{} = {} ({})", m.key, m.label, m.unit)).collect();
        let _ = writeln!(out, "  ({})", legend.join("; "));
        for n in &notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    let _ = writeln!(out, "\ntargets:");
    for (w, b, m) in targets(run) {
        let _ = writeln!(
            out,
            "  {w:<12} {b:<13} {:<38} {:>12}  {}",
            m.label,
            fmt(m.value, m.unit),
            verdict(m).unwrap_or_default()
        );
    }
    if let Some((n, ms)) = rcu_sync_cost(run) {
        let _ = writeln!(
            out,
            "  rcu-sync munmap waited for {n} grace periods, {ms:.1} ms in all (shown, no target)"
        );
    }
    let _ = writeln!(
        out,
        "wall time: {:.0} s; load average at start {}, at end {}",
        run.wall_seconds, run.machine.load_at_start, run.load_at_end
    );
    out
}
