//! `index.html`: the machine and the command, the targets with their
//! verdicts, then each workload's plots, table and notes. Self-contained
//! but for the SVG files beside it; no script.

use std::fmt::Write as _;

use super::svg::Plot;
use super::{costs, fmt, rcu_sync_cost, targets, verdict};
use crate::suite::Run;
use crate::workload;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}\
td:first-child,th:first-child{text-align:left}.met{background:#dfd}.missed{background:#fdd;font-weight:bold}\
img{width:49%;border:1px solid #eee;margin:.3em 0}.wide{overflow-x:auto}.note{color:#555;font-size:13px}code{background:#f4f4f4}";

/// The page.
pub fn render(run: &Run, plots: &[(&'static str, Vec<Plot>)]) -> String {
    let m = &run.machine;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rcuvm lab report</title><style>{STYLE}</style></head><body>\
         <h1>rcuvm lab report</h1><p>Every workload ran under each rcuvm strategy and on the host kernel (<code>linux</code>: \
         the same loop with real mmap/munmap/mprotect and real page faults in the lab's own process), one after the other \
         in one run: compare ratios within a row, not absolute times across machines.</p>\
         <table><tr><th>date</th><td>{}</td></tr><tr><th>command</th><td><code>{}</code></td></tr>\
         <tr><th>machine</th><td>{} CPUs, {}, {} GiB, Linux {}</td></tr><tr><th>load average at start, at end</th><td>{}; {}</td></tr>\
         <tr><th>seconds per phase, threads</th><td>{}, {}</td></tr><tr><th>wall time</th><td>{:.0} s</td></tr></table>",
        esc(&run.date),
        esc(&run.command),
        m.cpus,
        esc(&m.cpu_model),
        m.memory_gib,
        esc(&m.kernel),
        esc(&m.load_at_start),
        esc(&run.load_at_end),
        run.params.seconds,
        run.params.threads,
        run.wall_seconds
    );
    h.push_str("<h2>Targets</h2><table><tr><th>workload</th><th>backend</th><th>figure</th><th>value</th><th>verdict</th></tr>");
    for (w, b, mt) in targets(run) {
        let met = mt.target.as_ref().is_some_and(|t| t.met);
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{w}</td><td>{b}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if met { "met" } else { "missed" },
            esc(mt.label),
            esc(&fmt(mt.value, mt.unit)),
            esc(&verdict(mt).unwrap_or_default())
        );
    }
    h.push_str("</table>");
    if let Some((n, ms)) = rcu_sync_cost(run) {
        let _ = write!(
            h,
            "<p>rcu-sync's munmap waited for {n} grace periods, {ms:.1} ms in all (shown; no target).</p>"
        );
    }
    for (w, ps) in plots {
        let about = workload::find(w).map_or("", |w| w.about);
        let _ = write!(h, "<h2 id=\"{w}\">{w}</h2><p>{}</p>", esc(about));
        for p in ps {
            let _ = write!(h, "<img src=\"{}\" alt=\"{}\">", esc(&p.file), esc(&p.title));
        }
        table(&mut h, run, w);
    }
    h.push_str("<h2>Reproduce</h2><p><code>cargo run --release</code> runs this suite; \
        <code>cargo run --release -- run --workload NAME --strategy S --seconds N --threads T</code> runs one cell. \
        <code>results.json</code> beside this page holds every figure.</p></body></html>\n");
    h
}

fn table(h: &mut String, run: &Run, w: &str) {
    let cells = super::cells_of(run, w);
    let Some(first) = cells.iter().find_map(|c| c.outcome.as_ref()) else {
        for c in cells {
            let _ =
                write!(h, "<p class=\"note\">{}: {}</p>", c.backend, esc(c.error.as_deref().unwrap_or("")));
        }
        return;
    };
    let keys = super::keys(&cells);
    // A workload's table has a column per figure and cost: wider than the
    // page, so it scrolls within its own box.
    h.push_str("<div class=\"wide\"><table><tr><th>backend</th>");
    for m in &keys {
        let _ = write!(h, "<th title=\"{}\">{} ({})</th>", esc(m.label), esc(m.label), esc(m.unit));
    }
    h.push_str("<th>target</th>");
    for (c, _) in costs(first) {
        let _ = write!(h, "<th>{c}</th>");
    }
    h.push_str("</tr>");
    let mut notes = Vec::new();
    for c in &cells {
        let _ = write!(h, "<tr><td>{}</td>", c.backend);
        match &c.outcome {
            Some(o) => {
                for k in &keys {
                    let Some(m) = o.metrics.iter().find(|m| m.key == k.key) else {
                        h.push_str("<td>-</td>");
                        continue;
                    };
                    let cls = m
                        .target
                        .as_ref()
                        .map_or("", |t| if t.met { " class=\"met\"" } else { " class=\"missed\"" });
                    let _ = write!(h, "<td{cls}>{}</td>", esc(&fmt(m.value, m.unit)));
                }
                let v: Vec<String> = o.metrics.iter().filter_map(verdict).collect();
                let _ = write!(h, "<td>{}</td>", esc(&v.join(", ")));
                for (_, v) in costs(o) {
                    let _ = write!(h, "<td>{v}</td>");
                }
                notes.extend(o.notes.iter().map(|n| format!("{}: {n}", c.backend)));
            }
            None => {
                let _ = write!(
                    h,
                    "<td colspan=\"{}\">{}</td>",
                    keys.len() + 6,
                    esc(c.error.as_deref().unwrap_or(""))
                );
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></div>");
    for n in notes {
        let _ = write!(h, "<p class=\"note\">{}</p>", esc(&n));
    }
}
