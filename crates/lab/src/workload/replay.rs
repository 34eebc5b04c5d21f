//! `replay`: the real programs' traces (`../shared/traces/`, or
//! `$RCUVM_TRACES`) replayed under each strategy while synthetic threads
//! fault in the program's mappings.
//!
//! # Definition
//! Each iteration takes the next case, builds an address space of the
//! strategy holding `start.maps`'s VMAs (each mapped anonymous private at
//! its address with its protection: the replay engine, `rcuvm::replay`,
//! builds only default-strategy address spaces, so files stand in as
//! anonymous memory here), then applies every successful call of the trace
//! at the kernel's addresses (a placed `mmap` with `MAP_FIXED_NOREPLACE`
//! at the address the kernel returned, a moving `mremap` with
//! `MREMAP_FIXED`), while `max(1, threads - 1)` threads write (or read,
//! where read-only) a random page among the first 64 of a random VMA. The
//! figures are calls and faulting accesses per second. Whether rcuvm gives
//! each call the kernel's result is `rcuvm replay`'s job, not this one's.
//!
//! # Invariants
//! - RP1. The host is not a backend here: the traces' addresses are the
//!   captured processes', not free in this one.
//! - RP2. Faulting threads see VMAs come and go: a `SIGSEGV` answer is a
//!   lost race, counted, not an error.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use rcuvm::replay::Case;
use rcuvm::strace::MmOp;
use rcuvm::uapi::{MREMAP_FIXED, MREMAP_MAYMOVE};
use rcuvm::{AddressSpace, MapFlags, Prot, Strategy, VmFlags};

use super::backend::{ANON, Monitor, P, Space};
use super::{Backend, Costs, Metric, Outcome, Params, xorshift};

/// Why the host cannot run it (RP1).
pub fn unsupported(b: Backend) -> Option<&'static str> {
    (b == Backend::Linux)
        .then_some("the traces' addresses belong to the captured processes (use rcuvm replay)")
}

/// Where the traces are: `RCUVM_TRACES`, else `shared/traces` beside the
/// checkout this binary was built from (so `cargo run` finds them from any
/// directory), else `../shared/traces` from the current directory.
pub fn traces_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RCUVM_TRACES") {
        return PathBuf::from(d);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces"));
    if built.is_dir() { built } else { PathBuf::from("../shared/traces") }
}

fn load_cases() -> Result<Vec<(String, Case)>, String> {
    let dir = traces_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e} (set RCUVM_TRACES to the traces' directory)", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("trace.strace").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("{}: no case (a directory with trace.strace)", dir.display()));
    }
    names
        .into_iter()
        .map(|n| Ok((n.clone(), Case::load(&dir.join(&n)).map_err(|e| e.to_string())?)))
        .collect()
}

fn prot(f: VmFlags) -> Prot {
    let mut p = Prot::empty();
    for (v, q) in [(VmFlags::READ, Prot::READ), (VmFlags::WRITE, Prot::WRITE), (VmFlags::EXEC, Prot::EXEC)] {
        if f.contains(v) {
            p |= q;
        }
    }
    p
}

/// An address space of strategy `s` holding `start.maps`'s VMAs.
fn build(case: &Case, s: Strategy) -> Result<Arc<AddressSpace>, String> {
    let mm = Arc::new(AddressSpace::with_strategy(s));
    let vmas = rcuvm::maps::parse(&case.start_text, &case.start_source).map_err(|e| e.to_string())?;
    for v in vmas.iter().filter(|v| v.end <= mm.config().task_size) {
        // Best effort: a line rcuvm cannot map this way is left out.
        let _ = mm.mmap(v.start, v.len(), prot(v.flags), ANON | MapFlags::FIXED, None, 0);
    }
    Ok(mm)
}

/// Applies one successful call of the trace; its result is not judged here.
fn apply(mm: &AddressSpace, op: &MmOp, result: u64) {
    let _ = match op {
        MmOp::Brk { addr } => Ok(mm.brk(*addr)),
        MmOp::Munmap { addr, len } => mm.munmap(*addr, *len).map(|()| 0),
        MmOp::Mprotect { addr, len, prot } => mm.mprotect(*addr, *len, *prot).map(|()| 0),
        MmOp::Madvise { addr, len, advice } => mm.madvise(*addr, *len, *advice).map(|()| 0),
        MmOp::Mmap { addr, len, prot, flags, .. } => {
            let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
            let (at, how) =
                if fixed { (*addr, *flags & MapFlags::FIXED) } else { (result, MapFlags::FIXED_NOREPLACE) };
            mm.mmap(at, *len, *prot, ANON | how, None, 0)
        }
        MmOp::Mremap { old_addr, old_len, new_len, flags, new_addr } => {
            if result != *old_addr && flags & (MREMAP_FIXED | MREMAP_MAYMOVE) == MREMAP_MAYMOVE {
                mm.mremap(*old_addr, *old_len, *new_len, flags | MREMAP_FIXED, result)
            } else {
                mm.mremap(*old_addr, *old_len, *new_len, *flags, new_addr.unwrap_or(0))
            }
        }
    };
}

/// Runs it on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let Backend::Rcuvm(s) = b else {
        return Err(unsupported(b).unwrap_or_default().to_string());
    };
    let cases = load_cases()?;
    let (calls, faults, lost) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let t0 = Instant::now();
    let mut iterations = 0usize;
    let mut costs = Costs::default();
    while t0.elapsed().as_secs_f64() < p.seconds || iterations == 0 {
        let (_, case) = &cases[iterations % cases.len()];
        let mm = build(case, s)?;
        let sp = Space::from_mm(mm.clone());
        let mon = Monitor::start(&sp);
        let stop = AtomicBool::new(false);
        thread::scope(|sc| {
            for i in 0..p.threads.saturating_sub(1).max(1) {
                let (mm, stop, faults, lost) = (&mm, &stop, &faults, &lost);
                sc.spawn(move || {
                    let mut cpu = mm.cpu();
                    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (i as u64 + 1) << 32;
                    let mut vmas = mm.vmas();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && !vmas.is_empty() {
                        let v = &vmas[(xorshift(&mut x) % vmas.len() as u64) as usize];
                        let pages = (v.len() / P).min(64);
                        let va = v.start + (xorshift(&mut x) % pages) * P;
                        let r = if v.flags.contains(VmFlags::WRITE) {
                            cpu.write(va, n)
                        } else {
                            cpu.read(va).map(drop)
                        };
                        if r.is_ok() { faults } else { lost }.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                        if n % 256 == 0 {
                            vmas = mm.vmas();
                        }
                    }
                });
            }
            for c in &case.calls {
                if let Ok(r) = c.result {
                    apply(&mm, &c.op, r);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        costs.add(&mon.finish());
        iterations += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    Ok(Outcome {
        metrics: vec![
            Metric::new("calls", "trace calls applied/s", "calls/s", calls.into_inner() as f64 / el),
            Metric::new(
                "accesses",
                "faulting threads' accesses/s",
                "accesses/s",
                faults.into_inner() as f64 / el,
            ),
            Metric::new("lost", "accesses that lost a race (SIGSEGV)", "count", lost.into_inner() as f64),
        ],
        notes: vec![format!("{iterations} replays of {}", names.join(", "))],
        costs,
    })
}
