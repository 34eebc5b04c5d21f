//! Command-line arguments (clap).

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
