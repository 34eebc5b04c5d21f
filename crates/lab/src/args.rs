//! Command-line arguments (clap): the subcommands and their options, each
//! checked here so that bad input is a clear error before anything runs.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// rcuvm: an RCU-protected address-space manager and the lab that measures it.
///
/// With no subcommand, runs the whole suite (`rcuvm run`: about three
/// minutes on 2 CPUs) and writes rcuvm-report/.
#[derive(Debug, Parser)]
#[command(name = "rcuvm", version)]
pub struct Cli {
    /// What to do; `run` (the whole suite) when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workload suite (or one workload) under every strategy and on
    /// the host kernel; print the table, write the report.
    Run(RunArgs),
    /// Run randomized concurrent workloads on each strategy and check every
    /// history. Exit 0: no violation on a safe strategy; 1: violations.
    Check(crate::check::CheckArgs),
    /// Replay a case (DIR/start.maps, trace.strace, end.maps) and compare
    /// with DIR/end.maps. Exit 0: page-exact; 1: diverged; 2: bad input.
    Replay(ReplayArgs),
    /// Run CMD under strace and make a replay case of it in DIR.
    Capture(CaptureArgs),
    /// Print rcuvm's maps (or smaps) of a snapshot file or of a replay
    /// case's end state.
    Maps(MapsArgs),
    /// Measure the RCU domain and the maple tree alone (the figures of
    /// docs/benchmarks.md).
    Probe(ProbeArgs),
}

impl Default for Command {
    fn default() -> Self {
        Command::Run(RunArgs::default())
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=600.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0.01 and 600".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        // 64 threads of page-fault hold 8 GiB on the host at once.
        Ok(v) if (1..=64).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 1 and 64".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Options of `rcuvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// One workload (default: all of them). `rcuvm run --list` names them.
    #[arg(long)]
    pub workload: Option<String>,
    /// `all`, or strategies and `linux` (the host kernel), comma-separated.
    #[arg(long, default_value = "all")]
    pub strategy: String,
    /// Seconds of each measured phase, 0.01 to 600 (a workload has one to
    /// four; `--list` and the banner tell; the default makes the whole
    /// suite take about three minutes).
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    pub seconds: f64,
    /// Threads (default: the CPUs of this machine).
    #[arg(long, value_parser = threads)]
    pub threads: Option<usize>,
    /// Where to write index.html, results.json and the plots.
    #[arg(long, default_value = "rcuvm-report")]
    pub out: PathBuf,
    /// Leave workload threads unbound (by default thread i runs on CPU i,
    /// as will-it-scale does).
    #[arg(long)]
    pub no_affinity: bool,
    /// List the workloads and exit.
    #[arg(long)]
    pub list: bool,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            workload: None,
            strategy: "all".into(),
            seconds: 2.0,
            threads: None,
            out: PathBuf::from("rcuvm-report"),
            no_affinity: false,
            list: false,
        }
    }
}

/// Options of `rcuvm replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The case directory.
    pub dir: PathBuf,
    /// Also demand the same VMA lines, not only the same pages.
    #[arg(long)]
    pub exact: bool,
}

/// Options of `rcuvm capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Where to write start.maps, trace.strace and end.maps (created).
    pub dir: PathBuf,
    /// The program and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub cmd: Vec<OsString>,
}

/// Options of `rcuvm maps`.
#[derive(Debug, Args)]
pub struct MapsArgs {
    /// A `/proc/pid/maps` snapshot, or a replay case directory (its state
    /// after the trace is shown).
    pub path: PathBuf,
    /// Print smaps (sizes, Rss, VmFlags) instead of maps.
    #[arg(long)]
    pub smaps: bool,
}

/// Options of `rcuvm probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Seconds spent on each measurement.
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub seconds: f64,
}
