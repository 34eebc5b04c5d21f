//! Command-line arguments (clap).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// rcuvm: an RCU-protected address-space manager and the lab that measures it.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands. Only what exists is listed.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: status of the system and measurements of what exists.
    Run(RunArgs),
    /// Replay a case (DIR/start.maps, trace.strace, end.maps) and compare
    /// with DIR/end.maps. Exit 0: page-exact; 1: diverged; 2: bad input.
    Replay(ReplayArgs),
    /// Run CMD under strace and make a replay case of it in DIR.
    Capture(CaptureArgs),
    /// Run randomized concurrent workloads on each strategy and check every
    /// history. Exit 0: no violation on a safe strategy; 1: violations.
    Check(crate::check::CheckArgs),
}

impl Default for Command {
    fn default() -> Self {
        Command::Run(RunArgs::default())
    }
}

/// Options of `rcuvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Seconds spent on each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self { seconds: 1.0 }
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
