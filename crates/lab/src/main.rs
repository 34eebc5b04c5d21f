//! `rcuvm`: the lab's command-line front door.
//!
//! With no arguments it runs the workload suite (suite.rs): every workload
//! under every strategy and on the host kernel, a table, and a report in
//! `rcuvm-report/`. `replay` and `capture` check the address space against
//! real programs (replay.rs, capture.rs); `maps` prints what rcuvm shows
//! for a snapshot or a case (maps_cmd.rs); `probe` measures the RCU domain
//! and the maple tree alone.

mod args;
mod capture;
mod check;
mod maple_probe;
mod maps_cmd;
mod rcu_probe;
mod replay;
mod report;
mod suite;
mod workload;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let command = cli.command.unwrap_or_default();
    if !matches!(command, args::Command::Run(_)) {
        // What `rcuvm maps x | head` expects of a Unix tool: a closed pipe
        // ends it quietly, where Rust's ignored SIGPIPE made `println!`
        // panic. `run` keeps it ignored and writes fallibly (suite.rs SU4),
        // since its report must still be written.
        // SAFETY: `signal` with `SIG_DFL` installs no handler; it runs
        // before this process starts any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match command {
        args::Command::Run(a) => suite::run(&a),
        args::Command::Check(a) => check::run(&a),
        args::Command::Replay(a) => replay::run(&a),
        args::Command::Capture(a) => capture::run(&a),
        args::Command::Maps(a) => maps_cmd::run(&a),
        args::Command::Probe(a) => {
            rcu_probe::run(a.seconds);
            maple_probe::run(a.seconds);
            0
        }
    };
    std::process::exit(code);
}
