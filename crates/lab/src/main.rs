//! `rcuvm`: the lab's command-line front door.
//!
//! With no arguments it runs the main job. Today that job reports what
//! exists and measures the RCU domain on this machine; the workload suite,
//! checker and report arrive with their issues, and the job says so
//! instead of pretending. `replay` and `capture` check the address space
//! against real programs (replay.rs, capture.rs).

mod args;
mod capture;
mod check;
mod fault_probe;
mod main_job;
mod maple_probe;
mod rcu_probe;
mod replay;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    match cli.command.unwrap_or_default() {
        args::Command::Run(a) => main_job::main_job(&a),
        args::Command::Replay(a) => std::process::exit(replay::run(&a)),
        args::Command::Capture(a) => std::process::exit(capture::run(&a)),
        args::Command::Check(a) => std::process::exit(check::run(&a)),
    }
}
