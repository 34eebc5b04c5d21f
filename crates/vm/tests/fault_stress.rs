//! Concurrent stress of the whole fault path under each strategy: CPUs
//! read and write a small region while a writer unmaps, remaps (at once,
//! `MAP_FIXED`), mprotects and `MADV_DONTNEED`s it, and recycles frames at
//! other addresses; a reader parses `maps` and `smaps` all along.
//!
//! Every value written encodes the address it was written at, so a read
//! that returns a value of another address is a cross-mapping leak: a
//! stale TLB entry or PTE that reached a frame freed and reused elsewhere.
//! At the end every frame must be back (no leak, nothing freed twice).
//! One of the CPUs makes slow accesses (a few microseconds between the TLB
//! lookup and the store), which widens the window in which a shootdown
//! that did not wait for it would let the frame be freed and reused.
//!
//! `RCUVM_STRESS_MS` sets the time per strategy (default 600 ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcuvm::uapi::madv;
use rcuvm::{AddressSpace, MapFlags, PhysMem, Prot, Strategy};

const P: u64 = 4096;
const BASE: u64 = 0x40_0000_0000;
const PAGES: u64 = 32;
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const RW: Prot = Prot::READ.union(Prot::WRITE);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check(v: u64, va: u64) -> bool {
    v == 0 || v >> 8 == va
}

#[derive(Debug, Default)]
struct Outcome {
    accesses: u64,
    mm_calls: u64,
    leaks: u64,
    use_after_free: u64,
    maps_reads: u64,
    maps_anomalies: u64,
}

fn run(s: Strategy, ms: u64, seed: u64) -> (Outcome, usize) {
    let phys = Arc::new(PhysMem::new(1 << 16));
    let mm = Arc::new(AddressSpace::builder().strategy(s).phys(phys.clone()).build());
    mm.mmap(BASE, PAGES * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let leaks = Arc::new(AtomicU64::new(0));
    let accesses = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for tid in 1..=2u64 {
        let (mm, stop, leaks, accesses) = (mm.clone(), stop.clone(), leaks.clone(), accesses.clone());
        threads.push(std::thread::spawn(move || {
            let mut cpu = mm.cpu();
            let mut r = Rng(seed ^ (tid * 0x9e37_79b9));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let va = BASE + r.below(PAGES) * P + r.below(512) * 8;
                if tid == 2 && r.below(8) == 0 {
                    let _ = cpu.access(va, true, |w| {
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_micros(3) {
                            std::hint::spin_loop();
                        }
                        w.store(va << 8 | tid, Ordering::Relaxed);
                    });
                } else if r.below(2) == 0 {
                    let _ = cpu.write(va, va << 8 | tid);
                } else if let Ok(v) = cpu.read(va) {
                    if !check(v, va) {
                        leaks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            accesses.fetch_add(n, Ordering::Relaxed);
        }));
    }
    let maps_reader = {
        let (mm, stop) = (mm.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut anomalies) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let text = if reads % 2 == 0 { mm.maps() } else { mm.smaps() };
                let mut last_end = 0;
                for v in rcuvm::maps::parse(&text, "maps").unwrap_or_default() {
                    if v.start < last_end {
                        anomalies += 1;
                    }
                    last_end = v.end;
                }
                reads += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            (reads, anomalies)
        })
    };
    // The writer, with a CPU of its own that recycles frames elsewhere.
    let mut cpu = mm.cpu();
    let mut r = Rng(seed);
    let mut calls = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(ms) {
        let i = r.below(PAGES);
        let k = 1 + r.below((PAGES - i).min(8));
        let (a, len) = (BASE + i * P, k * P);
        let _ = match r.below(6) {
            0 => mm.munmap(a, len),
            1 | 2 => mm.mmap(a, len, RW, ANON | MapFlags::FIXED, None, 0).map(|_| ()),
            3 => mm.mprotect(a, len, [Prot::READ, RW, Prot::empty()][r.below(3) as usize]),
            4 => mm.madvise(a, len, madv::DONTNEED),
            _ => {
                // Recycle: a fresh mapping elsewhere, touched and read back.
                let s = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
                for j in 0..4 {
                    let va = s + j * P;
                    cpu.write(va, va << 8).unwrap();
                }
                for j in 0..4 {
                    let va = s + j * P;
                    let v = cpu.read(va).unwrap();
                    if !check(v, va) {
                        leaks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                mm.munmap(s, 4 * P)
            }
        };
        calls += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (maps_reads, maps_anomalies) = maps_reader.join().unwrap();
    drop(cpu);
    let use_after_free = mm.use_after_free_accesses();
    drop(mm);
    let out = Outcome {
        accesses: accesses.load(Ordering::Relaxed),
        mm_calls: calls,
        leaks: leaks.load(Ordering::Relaxed),
        use_after_free,
        maps_reads,
        maps_anomalies,
    };
    (out, phys.stats().in_use)
}

/// One test, so the strategies run one after the other (each has the
/// machine's two cores). `rcu-refcount` is unsafe by design (a fault that
/// took its reference before a munmap installs a stale PTE after it): it
/// runs for what it shows, asserting only that it neither panics nor
/// hangs; the checker (`rcuvm check`) is what proves it wrong.
#[test]
fn every_strategy_under_stress() {
    let ms = std::env::var("RCUVM_STRESS_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    for s in Strategy::ALL {
        let (o, in_use) = run(s, ms, 0x5eed ^ s as u64);
        println!("{s}: {o:?}, frames in use at teardown: {in_use}");
        assert!(o.accesses > 1000 && o.mm_calls > 100, "{s}: the stress did not run: {o:?}");
        if !s.is_safe() {
            continue;
        }
        assert!(o.maps_reads > 10, "{s}: the maps reader did not run: {o:?}");
        assert_eq!(o.leaks, 0, "{s}: a value of another address was read: {o:?}");
        assert_eq!(o.use_after_free, 0, "{s}: an access used a frame while it was freed: {o:?}");
        assert_eq!(o.maps_anomalies, 0, "{s}: maps went backwards or overlapped: {o:?}");
        assert_eq!(in_use, 0, "{s}: frames leaked at teardown");
    }
}

/// fault.rs FL7: no store that returned `Ok` is lost across `mremap`
/// moves. One CPU increments a counter it finds at either of two
/// addresses while another thread moves the mapping between them; the
/// counter must end equal to the number of increments that succeeded.
/// Under `rcu-sync` and `rcu-dead` about 5% of them were lost before FL7
/// (a fault into the source after its PTEs moved filled a page the
/// source's unmap then dropped).
#[test]
fn no_store_is_lost_across_mremap_moves() {
    use rcuvm::uapi::{MREMAP_FIXED, MREMAP_MAYMOVE};
    let ms: u64 = std::env::var("RCUVM_STRESS_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(600) / 2;
    let (x, y) = (BASE, BASE + 0x10_0000_0000);
    for s in Strategy::ALL.into_iter().filter(|s| s.is_safe()) {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        mm.mmap(x, 4 * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
        let stop = AtomicBool::new(false);
        let (ok, last) = std::thread::scope(|sc| {
            let counter = sc.spawn(|| {
                let mut cpu = mm.cpu();
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for at in [x, y] {
                        if let Ok(v) = cpu.read(at) {
                            ok += u64::from(cpu.write(at, v + 1).is_ok());
                        }
                    }
                }
                ok
            });
            let (t0, mut at) = (Instant::now(), x);
            while t0.elapsed() < Duration::from_millis(ms) {
                let to = if at == x { y } else { x };
                mm.mremap(at, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_FIXED, to).unwrap();
                at = to;
            }
            stop.store(true, Ordering::Relaxed);
            (counter.join().unwrap(), at)
        });
        let end = mm.cpu().read(last).unwrap();
        assert!(ok > 1000, "{s}: only {ok} increments: the test raced nothing");
        assert_eq!(end, ok, "{s}: {} of {ok} successful increments lost", ok.saturating_sub(end));
    }
}
