//! `vmglobal`: RadixVM's global workload (Clements et al., EuroSys 2013,
//! §6), as this lab defines it.
//!
//! # Definition
//! One 64 MiB region is shared by all `threads` threads: each repeatedly
//! maps a page at a random place of the region, writes it, and unmaps it.
//! The pages are dealt out interleaved (thread `t` uses the pages
//! `≡ t mod threads`), so threads never collide but share every VMA-tree
//! node and page-table page of the region, and each unmap's shootdown
//! concerns an address space all threads are using. In the paper the
//! threads also access each other's pages, which makes every unmap shoot
//! down every core; this lab's threads do not, because on the host a read
//! of a page another thread may be unmapping would be a real SIGSEGV.
//!
//! # Invariants
//! - VG1. Pages are mapped with `MAP_FIXED_NOREPLACE` (backend.rs B1): a
//!   page that is not free (another mapping took it, or `rcu-dead` still
//!   keeps a dead entry there) is counted as a collision, never clobbered.

use std::sync::atomic::{AtomicBool, Ordering};

use rcuvm::{Errno, MapFlags, Prot};

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Metric, Outcome, Params, must, timed, xorshift};

/// The shared region.
const REGION: u64 = 64 << 20;

/// Runs it on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    // Find a free region, then give it back: the threads map inside it.
    let base = must("mmap", sp.mmap(0, REGION, Prot::empty(), MapFlags::empty()))?;
    must("munmap", sp.munmap(base, REGION))?;
    let mon = Monitor::start(&sp);
    let n = p.threads as u64;
    let collisions = std::sync::atomic::AtomicU64::new(0);
    let (counts, el) = timed(p.pin, p.threads, p.seconds, |i, stop: &AtomicBool| {
        let mut t = sp.toucher();
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
        let mut c = 0;
        while !stop.load(Ordering::Relaxed) {
            let page = (xorshift(&mut x) % (REGION / P / n)) * n + i as u64;
            let a = base + page * P;
            match sp.mmap(a, P, RW, MapFlags::FIXED_NOREPLACE) {
                Ok(_) => {}
                Err(Errno::Eexist) => {
                    collisions.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => panic!("mmap: {e}"),
            }
            t.write(a, c).expect("write to a fresh page");
            sp.munmap(a, P).expect("munmap");
            c += 1;
        }
        c
    });
    let ops: u64 = counts.iter().sum();
    Ok(Outcome {
        metrics: vec![
            Metric::new("ops", "map+write+unmap cycles/s", "cycles/s", ops as f64 / el),
            Metric::new("collisions", "pages not free when mapped", "count", collisions.into_inner() as f64),
        ],
        costs: mon.finish(),
        ..Outcome::default()
    })
}
