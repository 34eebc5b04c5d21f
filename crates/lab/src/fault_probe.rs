//! The main job's look at the fault path: what a page fault costs under
//! each strategy, and how much fault throughput each keeps while another
//! thread churns mappings (the thread's motivating case), beside the host
//! kernel doing the same loops in this process, in the same run.
//!
//! The loops are the anchors' (`shared/ANCHORS.md`): a faulting thread
//! touches every page of a 64 MiB anonymous mapping, unmaps it, repeats; the
//! churning thread maps 16 KiB, touches it, unmaps it, repeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

const P: u64 = 4096;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// The faulting thread's mapping: 64 MiB.
const BIG: u64 = 64 << 20;
/// The churning thread's mapping: 16 KiB.
const SMALL: u64 = 16 << 10;

/// Where the loops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An rcuvm address space under a strategy.
    Rcuvm(Strategy),
    /// The host kernel, in this process.
    Linux,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Rcuvm(s) => write!(f, "{s}"),
            Backend::Linux => f.write_str("linux"),
        }
    }
}

/// One address space of a backend, with its mm calls and accesses.
trait Space: Send + Sync {
    fn map(&self, len: u64) -> u64;
    fn unmap(&self, a: u64, len: u64);
}

impl Space for AddressSpace {
    fn map(&self, len: u64) -> u64 {
        self.mmap(0, len, RW, ANON, None, 0).expect("mmap")
    }
    fn unmap(&self, a: u64, len: u64) {
        self.munmap(a, len).expect("munmap");
    }
}

/// The host kernel's address space: this process's.
struct Host;

impl Space for Host {
    fn map(&self, len: u64) -> u64 {
        // SAFETY: a fresh anonymous mapping that nothing else uses; the
        // loops write only inside it and unmap it themselves.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        p as u64
    }
    fn unmap(&self, a: u64, len: u64) {
        // SAFETY: `a` came from `map` with this length and is not used after.
        let r = unsafe { libc::munmap(a as *mut libc::c_void, len as usize) };
        assert_eq!(r, 0, "munmap: {}", std::io::Error::last_os_error());
    }
}

/// A thread's way to touch memory of a backend.
enum Toucher {
    Cpu(rcuvm::Cpu),
    Host,
}

impl Toucher {
    fn touch(&mut self, va: u64, v: u64) {
        match self {
            Toucher::Cpu(c) => c.write(va, v).expect("write"),
            // SAFETY: `va` lies in a live mapping of this process that the
            // calling loop made and owns.
            Toucher::Host => unsafe { std::ptr::write_volatile(va as *mut u64, v) },
        }
    }
}

fn space(b: Backend) -> (Arc<dyn Space>, Option<Arc<AddressSpace>>) {
    match b {
        Backend::Rcuvm(s) => {
            let mm = Arc::new(AddressSpace::with_strategy(s));
            (mm.clone(), Some(mm))
        }
        Backend::Linux => (Arc::new(Host), None),
    }
}

fn toucher(mm: &Option<Arc<AddressSpace>>) -> Toucher {
    match mm {
        Some(mm) => Toucher::Cpu(mm.cpu()),
        None => Toucher::Host,
    }
}

/// What one fault-churn run measured.
#[derive(Clone, Copy, Debug)]
pub struct ChurnResult {
    /// Faults per second of the faulting thread, alone.
    pub alone: f64,
    /// The same while another thread churns mappings.
    pub churned: f64,
    /// Churn cycles per second.
    pub churn_rate: f64,
}

/// Faults per second of one thread touching `BIG` mappings for `secs`,
/// with a churning thread beside it when `churn`; and the churn rate.
fn fault_rate(b: Backend, churn: bool, secs: f64) -> (f64, f64) {
    let (sp, mm) = space(b);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn.then(|| {
        let (sp, mm, stop) = (sp.clone(), mm.clone(), stop.clone());
        thread::spawn(move || {
            let mut t = toucher(&mm);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let a = sp.map(SMALL);
                for i in 0..SMALL / P {
                    t.touch(a + i * P, i);
                }
                sp.unmap(a, SMALL);
                n += 1;
            }
            n
        })
    });
    let mut t = toucher(&mm);
    let t0 = Instant::now();
    let mut faults = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let a = sp.map(BIG);
        for i in 0..BIG / P {
            t.touch(a + i * P, i);
        }
        faults += BIG / P;
        sp.unmap(a, BIG);
    }
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let cycles = churner.map_or(0, |h| h.join().expect("churn thread"));
    (faults as f64 / el, cycles as f64 / el)
}

/// The fault-churn workload on `b`: throughput alone and with churn.
pub fn fault_churn(b: Backend, secs: f64) -> ChurnResult {
    let (alone, _) = fault_rate(b, false, secs);
    let (churned, churn_rate) = fault_rate(b, true, secs);
    ChurnResult { alone, churned, churn_rate }
}

/// Runs the measurements and prints their rows.
pub fn run(secs: f64) {
    println!();
    println!("fault-churn: one thread faults in 64 MiB mappings; another maps, touches and unmaps 16 KiB");
    println!(
        "{:<14} {:>14} {:>14} {:>8} {:>12} {:>10}",
        "backend", "faults/s alone", "with churn", "kept", "churn/s", "target"
    );
    let mut backends: Vec<Backend> = Strategy::ALL.into_iter().map(Backend::Rcuvm).collect();
    backends.push(Backend::Linux);
    for b in backends {
        let r = fault_churn(b, secs);
        let target = match b {
            Backend::Rcuvm(Strategy::RcuDead) => ">= 95%",
            Backend::Linux => "(~60%)",
            _ => "",
        };
        println!(
            "{:<14} {:>14} {:>14} {:>7.0}% {:>12.0} {:>10}",
            b.to_string(),
            format!("{:.0} k", r.alone / 1e3),
            format!("{:.0} k", r.churned / 1e3),
            100.0 * r.churned / r.alone,
            r.churn_rate,
            target
        );
    }
}
