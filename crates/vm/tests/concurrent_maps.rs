//! Lock-free `maps()` readers against a writer doing mmap, munmap, mprotect
//! and madvise churn: lines never overlap or go backwards, every line is a
//! well-formed VMA, and VMAs that exist for the whole read are shown
//! unchanged (mm.rs A2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rcuvm::uapi::madv;
use rcuvm::{AddressSpace, MapFlags, PAGE_SIZE, Prot};

const P: u64 = PAGE_SIZE;
const BASE: u64 = 0x1000_0000;
const SLOTS: u64 = 256;

#[test]
fn maps_readers_see_consistent_snapshots_during_churn() {
    let mm = Arc::new(AddressSpace::new());
    let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    // Pinned VMAs every 16 pages, never touched by the writer; executable so
    // no churned neighbour (never executable) can merge with them.
    let pinned: Vec<String> = (0..SLOTS / 16)
        .map(|i| {
            let a = BASE + i * 16 * P;
            mm.mmap(a, P, Prot::READ | Prot::EXEC, fixed, None, 0).unwrap();
            mm.vmas().into_iter().find(|v| v.start == a).unwrap().to_string()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (mm, stop, pinned) = (mm.clone(), stop.clone(), pinned.clone());
        thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = mm.maps();
                let vmas = rcuvm::maps::parse(&text, "maps()").expect("every line well-formed, in order");
                for w in vmas.windows(2) {
                    assert!(w[0].end <= w[1].start, "lines overlap or go backwards:\n{text}");
                }
                for p in &pinned {
                    assert!(text.lines().any(|l| l == p), "pinned VMA {p} missing or changed:\n{text}");
                }
                reads += 1;
            }
            reads
        })
    };
    let mut x = 0x1234_5678u64;
    let t0 = Instant::now();
    let mut calls = 0u64;
    while t0.elapsed() < Duration::from_millis(1500) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = x % SLOTS;
        if slot % 16 == 0 {
            continue;
        }
        let pages = (1 + (x >> 20) % 4).min(16 - slot % 16);
        let (a, len) = (BASE + slot * P, pages * P);
        let prot = [Prot::READ, Prot::READ | Prot::WRITE, Prot::empty()][((x >> 30) % 3) as usize];
        let _ = match (x >> 40) % 4 {
            0 => mm.mmap(a, len, prot, fixed, None, 0).map(|_| ()),
            1 => mm.munmap(a, len),
            2 => mm.mprotect(a, len, prot),
            _ => mm.madvise(a, len, [madv::DONTDUMP, madv::DODUMP][((x >> 50) % 2) as usize]),
        };
        calls += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(calls > 1000 && reads > 100, "calls {calls}, reads {reads}");
}
