//! Where a workload runs: an rcuvm address space under one strategy, or
//! the host kernel in this very process, behind one small API so that
//! every workload runs the same loop on both.
//!
//! # Owns
//! [`Backend`] (the name), [`Space`] (mm calls and maps reads), [`Toucher`]
//! (a thread's memory accesses) and [`Monitor`] (what a run cost in grace
//! periods, shootdowns, deferred callbacks and memory).
//!
//! # Invariants
//! - B1. On the host, workloads only ever write inside mappings they made
//!   and still hold, and they unmap only what they mapped: fixed addresses
//!   are taken with `MAP_FIXED_NOREPLACE` (a page someone else took is an
//!   error the workload counts, never a clobber) or with `MAP_FIXED` inside
//!   a mapping the workload itself holds.
//! - B2. A [`Toucher`] is made inside the thread that uses it
//!   ([`Space::toucher`]): rcuvm's `Cpu` belongs to one thread.
//! - B3. Figures a backend cannot give (grace periods on the host) are
//!   `None`, never a made-up zero.
//!
//! # Concurrency
//! `Space` is `Send + Sync` and shared by a workload's threads; each mm
//! call takes the backend's own locks (rcuvm's mmap lock, the kernel's).
//!
//! # Linux
//! The host side is `mmap(2)`, `munmap(2)`, `mprotect(2)`, `mremap(2)` and
//! `/proc/self/maps` read in 4096-byte `read(2)`s, as the selftests do.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use rcuvm::{AddressSpace, Errno, MapFlags, Prot, Strategy};

/// Page size, both backends.
pub const P: u64 = 4096;
/// Read and write.
pub const RW: Prot = Prot::READ.union(Prot::WRITE);
/// Private anonymous.
pub const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

/// Where the loops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An rcuvm address space under a strategy.
    Rcuvm(Strategy),
    /// The host kernel, in this process.
    Linux,
}

impl Backend {
    /// Every strategy, then the host kernel: a suite row's columns.
    pub fn all() -> Vec<Backend> {
        Strategy::ALL.into_iter().map(Backend::Rcuvm).chain([Backend::Linux]).collect()
    }

    /// Parses `all`, or a comma-separated list of strategy names and
    /// `linux`.
    pub fn parse_list(s: &str) -> Result<Vec<Backend>, String> {
        if s == "all" {
            return Ok(Backend::all());
        }
        let mut out = Vec::new();
        for name in s.split(',') {
            let b = match name {
                "linux" => Backend::Linux,
                _ => Backend::Rcuvm(name.parse::<Strategy>().map_err(|_| {
                    let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown strategy '{name}': expected one of {}, linux or all", names.join(", "))
                })?),
            };
            if !out.contains(&b) {
                out.push(b);
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Rcuvm(s) => write!(f, "{s}"),
            Backend::Linux => f.write_str("linux"),
        }
    }
}

/// One address space of a backend.
#[derive(Clone)]
pub struct Space {
    mm: Option<Arc<AddressSpace>>,
}

fn errno() -> Errno {
    let c = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Errno::from_code(c).unwrap_or(Errno::Einval)
}

impl Space {
    /// A fresh address space for `b` (on the host: this process's).
    pub fn new(b: Backend) -> Space {
        match b {
            Backend::Rcuvm(s) => Space { mm: Some(Arc::new(AddressSpace::with_strategy(s))) },
            Backend::Linux => Space { mm: None },
        }
    }

    /// A backend space over an existing rcuvm address space.
    pub fn from_mm(mm: Arc<AddressSpace>) -> Space {
        Space { mm: Some(mm) }
    }

    /// The rcuvm address space, if this is not the host.
    pub fn mm(&self) -> Option<&Arc<AddressSpace>> {
        self.mm.as_ref()
    }

    /// `mmap(addr, len, prot, flags | MAP_PRIVATE | MAP_ANONYMOUS)`.
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, Errno> {
        let flags = flags | ANON;
        match &self.mm {
            Some(mm) => mm.mmap(addr, len, prot, flags, None, 0),
            None => {
                // SAFETY: B1: a fixed address only with MAP_FIXED_NOREPLACE
                // or inside a mapping the caller holds.
                let p = unsafe {
                    libc::mmap(addr as *mut _, len as usize, prot.bits() as i32, flags.bits() as i32, -1, 0)
                };
                if p == libc::MAP_FAILED { Err(errno()) } else { Ok(p as u64) }
            }
        }
    }

    /// `munmap(addr, len)`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        match &self.mm {
            Some(mm) => mm.munmap(addr, len),
            // SAFETY: B1: the caller mapped this range and drops it.
            None => host(unsafe { libc::munmap(addr as *mut _, len as usize) }),
        }
    }

    /// `mprotect(addr, len, prot)`.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        match &self.mm {
            Some(mm) => mm.mprotect(addr, len, prot),
            // SAFETY: B1: the caller's own mapping.
            None => host(unsafe { libc::mprotect(addr as *mut _, len as usize, prot.bits() as i32) }),
        }
    }

    /// `mremap(addr, old, new, 0)`: resize in place.
    pub fn mremap(&self, addr: u64, old: u64, new: u64) -> Result<u64, Errno> {
        match &self.mm {
            Some(mm) => mm.mremap(addr, old, new, 0, 0),
            None => {
                // SAFETY: B1: the caller's own mapping, resized in place.
                let p = unsafe { libc::mremap(addr as *mut _, old as usize, new as usize, 0) };
                if p == libc::MAP_FAILED { Err(errno()) } else { Ok(p as u64) }
            }
        }
    }

    /// `/proc/pid/maps`: rcuvm's rendering, or this process's file read in
    /// 4096-byte `read(2)`s (so a line may straddle two reads, as in the
    /// kernel selftests).
    pub fn maps(&self) -> String {
        match &self.mm {
            Some(mm) => mm.maps(),
            None => {
                let mut out = Vec::with_capacity(1 << 16);
                let mut buf = [0u8; 4096];
                if let Ok(mut f) = std::fs::File::open("/proc/self/maps") {
                    while let Ok(n) = f.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                    }
                }
                String::from_utf8_lossy(&out).into_owned()
            }
        }
    }

    /// A thread's way to touch memory; call it in that thread (B2).
    pub fn toucher(&self) -> Toucher {
        match &self.mm {
            Some(mm) => Toucher::Cpu(Box::new(mm.cpu())),
            None => Toucher::Host,
        }
    }
}

fn host(r: i32) -> Result<(), Errno> {
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// A thread's memory accesses.
pub enum Toucher {
    /// A simulated CPU of the rcuvm address space.
    Cpu(Box<rcuvm::Cpu>),
    /// This thread on the host.
    Host,
}

impl Toucher {
    /// Writes `v` at `va`, which must lie in a live writable mapping the
    /// calling workload holds (B1). On rcuvm a failed access is returned.
    pub fn write(&mut self, va: u64, v: u64) -> Result<(), rcuvm::AccessError> {
        match self {
            Toucher::Cpu(c) => c.write(va, v),
            Toucher::Host => {
                // SAFETY: B1: a live writable mapping the caller made.
                unsafe { std::ptr::write_volatile(va as *mut u64, v) };
                Ok(())
            }
        }
    }
}

/// What a run cost, beyond its own figures (B3).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Costs {
    /// Grace periods of the VMA domain (normal and expedited).
    pub grace_periods: Option<u64>,
    /// Grace periods munmap waited for.
    pub munmap_waits: Option<u64>,
    /// Milliseconds munmap spent waiting for them.
    pub munmap_wait_ms: Option<f64>,
    /// Grace periods of dead entries that mm calls ended themselves,
    /// without blocking, because the entries piled up (`rcu-dead`, vm
    /// unmap.rs U8).
    pub dead_helps: Option<u64>,
    /// Grace periods every mm call waited for: munmap's, and those of
    /// calls that reused a range still under a dead entry (`rcu-dead`).
    pub sync_waits: Option<u64>,
    /// Milliseconds spent in them.
    pub sync_wait_ms: Option<f64>,
    /// TLB shootdowns.
    pub shootdowns: Option<u64>,
    /// The most RCU callbacks (deferred frees) pending at once.
    pub pending_max: Option<u64>,
    /// The most memory in page-table pages unhooked and waiting for their
    /// grace periods at once, KiB (sampled every 5 ms). VMA objects and
    /// tree nodes waiting for theirs are in `pending_max`, as callbacks.
    pub deferred_kib_max: Option<f64>,
    /// Peak memory during the run, MiB: rcuvm's frames and table pages in
    /// use; on the host, the growth of this process's resident set.
    pub peak_mib: f64,
}

impl Costs {
    /// Adds another run's costs (counts add up, peaks take the larger).
    pub fn add(&mut self, o: &Costs) {
        fn sum<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            }
        }
        self.grace_periods = sum(self.grace_periods, o.grace_periods);
        self.munmap_waits = sum(self.munmap_waits, o.munmap_waits);
        self.munmap_wait_ms = sum(self.munmap_wait_ms, o.munmap_wait_ms);
        self.dead_helps = sum(self.dead_helps, o.dead_helps);
        self.sync_waits = sum(self.sync_waits, o.sync_waits);
        self.sync_wait_ms = sum(self.sync_wait_ms, o.sync_wait_ms);
        self.deferred_kib_max = match (self.deferred_kib_max, o.deferred_kib_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.shootdowns = sum(self.shootdowns, o.shootdowns);
        self.pending_max = self.pending_max.max(o.pending_max);
        self.peak_mib = self.peak_mib.max(o.peak_mib);
    }
}

/// Samples memory every few milliseconds while a run goes on.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    /// The peak footprint and the peak of deferred table pages.
    handle: thread::JoinHandle<(u64, usize)>,
    space: Space,
    base: Counters,
}

/// Cumulative counters of an address space, read before and after a run.
#[derive(Clone, Copy, Default)]
struct Counters {
    grace_periods: u64,
    munmap_waits: u64,
    munmap_wait_ns: u64,
    dead_helps: u64,
    reuse_waits: u64,
    reuse_wait_ns: u64,
    shootdowns: u64,
}

fn resident_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace().nth(1).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0) * P
}

fn footprint(s: &Space) -> u64 {
    match s.mm() {
        Some(mm) => (mm.phys().stats().in_use as u64 + mm.page_table().tables() as u64) * P,
        None => resident_bytes(),
    }
}

fn counters(s: &Space) -> Counters {
    match s.mm() {
        Some(mm) => {
            let st = mm.domain().stats();
            let (munmap_waits, munmap_wait_ns) = mm.munmap_syncs();
            let (reuse_waits, reuse_wait_ns) = mm.reuse_syncs();
            Counters {
                grace_periods: st.grace_periods + st.expedited_grace_periods,
                munmap_waits,
                munmap_wait_ns,
                dead_helps: mm.dead_helps(),
                reuse_waits,
                reuse_wait_ns,
                shootdowns: mm.shootdown().flushes(),
            }
        }
        None => Counters::default(),
    }
}

impl Monitor {
    /// Starts sampling `space`.
    pub fn start(space: &Space) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (space.clone(), stop.clone());
        let base = footprint(space);
        let handle = thread::spawn(move || {
            let (mut peak, mut deferred) = (base, 0);
            let deferred_now = |s: &Space| s.mm().map_or(0, |mm| mm.deferred_tables());
            while !st.load(Ordering::Relaxed) {
                peak = peak.max(footprint(&s));
                deferred = deferred.max(deferred_now(&s));
                thread::sleep(Duration::from_millis(5));
            }
            let peak = peak.max(footprint(&s)).saturating_sub(if s.mm().is_some() { 0 } else { base });
            (peak, deferred.max(deferred_now(&s)))
        });
        Monitor { stop, handle, space: space.clone(), base: counters(space) }
    }

    /// Stops sampling; what the run cost since [`Monitor::start`].
    pub fn finish(self) -> Costs {
        self.stop.store(true, Ordering::Relaxed);
        let (peak, deferred) = self.handle.join().unwrap_or((0, 0));
        let peak_mib = peak as f64 / (1 << 20) as f64;
        let Some(mm) = self.space.mm() else {
            return Costs { peak_mib, ..Costs::default() };
        };
        let (a, b) = (counters(&self.space), self.base);
        let ms = |ns: u64| ns as f64 / 1e6;
        Costs {
            grace_periods: Some(a.grace_periods - b.grace_periods),
            munmap_waits: Some(a.munmap_waits - b.munmap_waits),
            munmap_wait_ms: Some(ms(a.munmap_wait_ns - b.munmap_wait_ns)),
            dead_helps: Some(a.dead_helps - b.dead_helps),
            sync_waits: Some(a.munmap_waits + a.reuse_waits - b.munmap_waits - b.reuse_waits),
            sync_wait_ms: Some(ms(a.munmap_wait_ns + a.reuse_wait_ns - b.munmap_wait_ns - b.reuse_wait_ns)),
            shootdowns: Some(a.shootdowns - b.shootdowns),
            pending_max: Some(mm.domain().stats().callbacks_pending_max),
            deferred_kib_max: Some(deferred as f64 * 4.0),
            peak_mib,
        }
    }
}
