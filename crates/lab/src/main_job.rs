//! The main job until the workload suite lands: say what exists, then
//! measure what exists on this machine, with each target beside its figure.

use crate::args::RunArgs;

const STATUS: &[(&str, &str)] = &[
    ("rcuvm-rcu: RCU domain (read, synchronize[_expedited], call/retire, barrier)", "built"),
    ("rcuvm-maple: RCU-safe range B-tree with gap tracking", "built"),
    ("rcuvm: VMAs, maps, mmap/munmap/mprotect/mremap/brk/madvise (kernel-diff)", "built"),
    ("rcuvm replay / capture: real programs' traces, page-exact", "built"),
    ("rcuvm: mlock, multi-VMA mremap", "not yet"),
    ("rcuvm: page tables, TLBs, faults, the five strategies", "built"),
    ("rcuvm check: concurrency checker", "not yet"),
    ("lab: workload suite side by side with Linux, HTML report", "not yet"),
];

/// Runs the main job.
pub fn main_job(a: &RunArgs) {
    println!("rcuvm {} — what exists so far:", env!("CARGO_PKG_VERSION"));
    for (what, state) in STATUS {
        println!("  [{state:>7}] {what}");
    }
    println!();
    println!(
        "The workload suite is not built yet; measuring the RCU domain, the maple tree and the fault path."
    );
    let secs = a.seconds.clamp(0.05, 60.0);
    crate::rcu_probe::run(secs);
    crate::maple_probe::run(secs);
    crate::fault_probe::run(secs);
    println!();
    println!("Criterion benchmarks, side by side with their peers:");
    println!("  cargo bench -p rcuvm-rcu     (crossbeam-epoch, parking_lot)");
    println!("  cargo bench -p rcuvm-maple   (RwLock<BTreeMap>, scc::TreeIndex, crossbeam SkipMap)");
    println!("  cargo bench -p rcuvm --bench fault   (each strategy beside the host kernel)");
    println!("Figures and how they were measured: docs/benchmarks.md");
}

/// One row of the main job's table.
pub(crate) fn row(what: &str, fig: String, target: &str) {
    println!("{what:<46} {fig:>12} {target:>12}");
}
