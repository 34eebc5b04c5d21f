//! `rcuvm replay DIR [--exact]`: replays a real program's memory calls and
//! says whether rcuvm ends where the kernel did.
//!
//! # Owns
//! The command's report and exit code; the engine is `rcuvm::replay`
//! (vm/replay.rs, invariants Y1–Y4).
//!
//! # Invariants
//! - L1. Exit 0 only when every call got the kernel's result and every page
//!   agrees (with `--exact`, every line too); 1 for a divergence; 2 when the
//!   case cannot be read or parsed (the message names the file and line).
//!
//! # Linux
//! The case is what `/proc/pid/maps` and `strace -f -y -e trace=memory`
//! showed; see /work/shared/traces/README.md and `rcuvm capture`.

use std::path::Path;

use rcuvm::replay::{Case, Comparison, Replay, replay};
use rcuvm::uapi::Errno;

use crate::args::ReplayArgs;

/// How many disagreements and differing ranges are printed.
const SHOWN: usize = 10;

fn result(r: &Result<u64, Errno>) -> String {
    match r {
        Ok(v) => format!("{v:#x}"),
        Err(e) => format!("-1 {e}"),
    }
}

/// Runs the command; returns the exit code (L1).
pub fn run(a: &ReplayArgs) -> i32 {
    let dir: &Path = &a.dir;
    let case = match Case::load(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rcuvm replay: {e}");
            return 2;
        }
    };
    let r = match replay(&case) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rcuvm replay: {e}");
            return 2;
        }
    };
    let cmp = r.compare(&case.end);
    report(dir, &r, &cmp, &case.skipped, a.exact)
}

fn report(
    dir: &Path,
    r: &Replay,
    cmp: &Comparison,
    skipped: &std::collections::BTreeMap<String, usize>,
    exact: bool,
) -> i32 {
    println!("replay {}", dir.display());
    let not_replayed: Vec<String> = skipped.iter().map(|(n, k)| format!("{n} x{k}")).collect();
    if not_replayed.is_empty() {
        println!("calls: {} applied", r.applied);
    } else {
        println!("calls: {} applied; not replayed: {}", r.applied, not_replayed.join(", "));
    }
    println!(
        "results: {}/{} as the kernel's; errno: {}/{} failed calls failed with the kernel's errno",
        r.applied - r.disagreements.len(),
        r.applied,
        r.errno_agreed,
        r.kernel_failed
    );
    println!(
        "files: {} mapped paths, {} without dev/inode in the snapshots (shown as 00:00 0)",
        r.files,
        r.unidentified.len()
    );
    if r.brk_from_trace {
        println!("heap: start.maps has no [heap]; start_brk taken from the trace's first brk");
    }
    if r.no_mmap_calls > 0 {
        println!(
            "not replayed: {} mmap calls of files the kernel refused with ENODEV (no mmap for that file type, which rcuvm does not model)",
            r.no_mmap_calls
        );
    }
    if cmp.stack_growth_pages > 0 {
        println!("stack: grew by {} pages between the snapshots (faults, accepted)", cmp.stack_growth_pages);
    }
    println!(
        "pages: {} of {} differ{}",
        cmp.pages_differing,
        cmp.pages_end,
        if cmp.page_exact() { " (page-exact)" } else { "" }
    );
    println!(
        "lines: {}/{} identical (replay has {} lines)",
        cmp.lines_identical, cmp.lines_end, cmp.lines_ours
    );
    for d in r.disagreements.iter().take(SHOWN) {
        println!(
            "  trace.strace:{}: {}: kernel {}, rcuvm {}",
            d.line,
            d.op,
            result(&d.kernel),
            result(&d.rcuvm)
        );
    }
    if r.disagreements.len() > SHOWN {
        println!("  ... {} more calls disagree", r.disagreements.len() - SHOWN);
    }
    for d in cmp.diffs.iter().take(SHOWN) {
        println!("  {:x}-{:x} differs:", d.start, d.end);
        println!("    rcuvm:    {}", d.ours.as_deref().unwrap_or("(unmapped)"));
        println!("    end.maps: {}", d.theirs.as_deref().unwrap_or("(unmapped)"));
    }
    if cmp.diffs.len() > SHOWN {
        println!("  ... {} more differing ranges", cmp.diffs.len() - SHOWN);
    }
    if exact && !cmp.lines_exact() {
        println!("  lines that differ (- end.maps only, + rcuvm only):");
        for l in cmp.only_end.iter().take(SHOWN) {
            println!("    - {l}");
        }
        for l in cmp.only_ours.iter().take(SHOWN) {
            println!("    + {l}");
        }
    }
    let ok = r.disagreements.is_empty() && cmp.page_exact() && (!exact || cmp.lines_exact());
    println!(
        "{}",
        match (ok, exact) {
            (true, false) => "OK: page-exact",
            (true, true) => "OK: line-exact",
            (false, false) => "DIVERGED (results or pages)",
            (false, true) => "DIVERGED (results, pages or lines)",
        }
    );
    i32::from(!ok)
}
