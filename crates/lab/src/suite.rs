//! The main job: run the chosen workloads on the chosen backends in one
//! process, one after the other, then print the table and write the report.
//!
//! # Owns
//! [`Run`] and [`Cell`] (what the report is made from), the machine's
//! description, the progress bar.
//!
//! # Invariants
//! - SU1. Every cell of the plan is in the run: measured, failed (the
//!   panic's or error's message), or not applicable (the workload's
//!   reason). Nothing is dropped or filled in.
//! - SU2. Targets are judged from the figures of this run (workload/mod.rs
//!   W1); this file adds only the munmap verdict (`rcu-dead` never waits
//!   for a grace period), from the counters of the same run.
//! - SU3. Bad arguments (an unknown workload or strategy, a report
//!   directory that cannot be made) are an error message and exit code 2
//!   before anything runs.
//! - SU5. Exit status: 0 when every cell ran (a missed target is a
//!   result, not a failure); 1 when a cell failed (its error is in the
//!   table, and the cells are listed on stderr) or the report could not be
//!   written; 2 for SU3.
//! - SU4. A closed stdout (`rcuvm run | head`) loses only what is printed:
//!   writes to it are fallible, so the run goes on and the report is
//!   written. (The other subcommands die quietly of `SIGPIPE` instead,
//!   main.rs.)

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rcuvm::Strategy;
use serde::Serialize;

use crate::args::RunArgs;
use crate::workload::{self, Backend, Metric, Outcome, Params};

/// One workload on one backend.
#[derive(Debug, Serialize)]
pub struct Cell {
    /// The workload's name.
    pub workload: &'static str,
    /// The backend's name.
    pub backend: String,
    /// What it measured, if it ran.
    pub outcome: Option<Outcome>,
    /// Why it did not run, or how it failed.
    pub error: Option<String>,
}

/// The machine, as this process sees it.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `MemTotal` of /proc/meminfo, GiB.
    pub memory_gib: f64,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// /proc/loadavg when the run started.
    pub load_at_start: String,
}

/// A whole run: what the report is made from.
#[derive(Debug, Serialize)]
pub struct Run {
    /// rcuvm's version.
    pub version: &'static str,
    /// The command line.
    pub command: String,
    /// When it started (UTC).
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// Seconds per phase and threads.
    pub params: Params,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// /proc/loadavg when the run ended: beside `load_at_start`, whether
    /// something else kept the machine busy (the suite keeps about two
    /// threads runnable).
    pub load_at_end: String,
    /// Every cell (SU1).
    pub cells: Vec<Cell>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

fn machine() -> Machine {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let kib = field(&meminfo, "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        memory_gib: (kib / (1u64 << 20) as f64 * 10.0).round() / 10.0,
        kernel: read("/proc/sys/kernel/osrelease"),
        load_at_start: read("/proc/loadavg"),
    }
}

/// Now, as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no time zone data).
fn utc_now() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// SU2: `rcu-dead`'s munmap never waits for a grace period.
fn munmap_verdict(b: Backend, o: &mut Outcome) {
    if let (Backend::Rcuvm(s), Some(w)) = (b, o.costs.munmap_waits) {
        let mut m = Metric::new("munmap_waits", "grace periods munmap waited for", "count", w as f64);
        if s == Strategy::RcuDead {
            m = m.with_target("= 0", w == 0, None);
        }
        o.metrics.push(m);
    }
}

/// Runs the command; returns the exit code.
pub fn run(a: &RunArgs) -> i32 {
    // SU4: stdout may be a pipe closed early (`| head`): output to it is
    // dropped, never a panic, and the report is still written.
    let mut out = std::io::stdout();
    if a.list {
        for w in workload::ALL {
            let _ = writeln!(
                out,
                "{:<12} {} phase{}  {}",
                w.name,
                w.phases,
                if w.phases == 1 { " " } else { "s" },
                w.about
            );
        }
        return 0;
    }
    // SU3.
    let plan = match (a.workload.as_deref().map(workload::find).transpose(), Backend::parse_list(&a.strategy))
    {
        (Ok(w), Ok(b)) => (w.map_or_else(|| workload::ALL.iter().collect::<Vec<_>>(), |w| vec![w]), b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rcuvm run: {e}");
            return 2;
        }
    };
    let (workloads, backends) = plan;
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!("rcuvm run: cannot create {}: {e}", a.out.display());
        return 2;
    }
    let params = Params {
        seconds: a.seconds,
        threads: a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        pin: !a.no_affinity,
    };
    let phases: u32 = workloads.iter().map(|w| w.phases * backends.len() as u32).sum();
    // The phases are nearly all of it (the suite at 299adc1: 193 s for
    // 192 s of phases).
    let _ = writeln!(
        out,
        "rcuvm {}: {} workloads x {} backends, {} s per phase, {} threads: about {:.0} s",
        env!("CARGO_PKG_VERSION"),
        workloads.len(),
        backends.len(),
        params.seconds,
        params.threads,
        f64::from(phases) * params.seconds * 1.01
    );
    let date = utc_now();
    let machine = machine();
    let t0 = Instant::now();
    let bar = ProgressBar::new((workloads.len() * backends.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    let mut cells = Vec::new();
    for w in &workloads {
        for &b in &backends {
            bar.set_message(format!("{} on {b}", w.name));
            let (outcome, error) = match (w.unsupported)(b) {
                Some(why) => (None, Some(format!("n/a: {why}"))),
                None => match catch_unwind(AssertUnwindSafe(|| (w.run)(b, &params))) {
                    Ok(Ok(mut o)) => {
                        munmap_verdict(b, &mut o);
                        (Some(o), None)
                    }
                    Ok(Err(e)) => (None, Some(format!("failed: {e}"))),
                    Err(p) => (None, Some(format!("failed: panic: {}", panic_message(p)))),
                },
            };
            cells.push(Cell { workload: w.name, backend: b.to_string(), outcome, error });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let run = Run {
        version: env!("CARGO_PKG_VERSION"),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date,
        machine,
        params,
        wall_seconds: t0.elapsed().as_secs_f64(),
        load_at_end: read("/proc/loadavg"),
        cells,
    };
    // SU4.
    let _ = out.write_all(crate::report::table::render(&run).as_bytes());
    // SU5: failed cells are said apart, and the exit status says so.
    let failed: Vec<String> = run
        .cells
        .iter()
        .filter(|c| c.error.as_deref().is_some_and(|e| e.starts_with("failed")))
        .map(|c| format!("{} on {}", c.workload, c.backend))
        .collect();
    if !failed.is_empty() {
        eprintln!("rcuvm run: {} cells failed (see the table): {}", failed.len(), failed.join(", "));
    }
    match crate::report::write(&run, &a.out) {
        Ok(()) => {
            let _ = writeln!(out, "report: {}", a.out.join("index.html").display());
            i32::from(!failed.is_empty())
        }
        Err(e) => {
            eprintln!("rcuvm run: writing the report to {}: {e}", a.out.display());
            1
        }
    }
}
