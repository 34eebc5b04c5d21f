//! MMU notifiers (notifier.rs N1–N5): which calls invalidate which ranges,
//! in what order, and a secondary MMU built on them that stays coherent
//! under mapping churn (KVM's protocol: drop at `start`, create nothing
//! while a range is in progress or the sequence moved).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rcuvm::uapi::{MREMAP_MAYMOVE, madv};
use rcuvm::{AddressSpace, MapFlags, MmuNotifier, NotifierRange, NotifyEvent, Prot, Strategy};

const P: u64 = 4096;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

#[derive(Default)]
struct Log {
    events: Mutex<Vec<(&'static str, NotifierRange)>>,
    released: AtomicU64,
}

impl MmuNotifier for Log {
    fn invalidate_range_start(&self, r: &NotifierRange) {
        self.events.lock().unwrap().push(("start", *r));
    }
    fn invalidate_range_end(&self, r: &NotifierRange) {
        self.events.lock().unwrap().push(("end", *r));
    }
    fn release(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

impl Log {
    /// The ranges invalidated since the last call, each checked to be a
    /// start immediately followed by its end (N2).
    fn take(&self) -> Vec<(u64, u64, NotifyEvent)> {
        let ev = std::mem::take(&mut *self.events.lock().unwrap());
        assert!(ev.len() % 2 == 0, "unpaired: {ev:?}");
        ev.chunks(2)
            .map(|p| {
                assert_eq!((p[0].0, p[1].0), ("start", "end"), "{ev:?}");
                assert_eq!(p[0].1, p[1].1, "an end with another range: {ev:?}");
                (p[0].1.start, p[0].1.end, p[0].1.event)
            })
            .collect()
    }
}

#[test]
fn each_call_invalidates_what_it_changes() {
    for s in Strategy::ALL {
        let log = Arc::new(Log::default());
        let mm = Arc::new(AddressSpace::with_strategy(s));
        mm.register_notifier(log.clone());
        let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        // First writes map fresh pages: nothing to invalidate.
        for i in 0..4 {
            cpu.write(a + i * P, 1).unwrap();
        }
        assert_eq!(log.take(), vec![], "{s}");
        // A read maps the zero page; the write after it replaces it.
        let b = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        cpu.read(b).unwrap();
        cpu.write(b, 2).unwrap();
        assert_eq!(log.take(), vec![(b, b + P, NotifyEvent::Clear)], "{s}: copy-on-write of the zero page");
        mm.mprotect(a, 2 * P, Prot::READ).unwrap();
        assert_eq!(log.take(), vec![(a, a + 2 * P, NotifyEvent::ProtectionVma)], "{s}");
        mm.madvise(a + 2 * P, P, madv::DONTNEED).unwrap();
        assert_eq!(log.take(), vec![(a + 2 * P, a + 3 * P, NotifyEvent::Clear)], "{s}");
        // A move (the VMA above blocks growth in place): the old range's
        // PTEs go.
        let moved = mm.mremap(b, P, 2 * P, MREMAP_MAYMOVE, 0).unwrap();
        assert_ne!(moved, b);
        assert!(log.take().contains(&(b, b + P, NotifyEvent::Unmap)), "{s}");
        mm.munmap(a + P, 2 * P).unwrap();
        assert_eq!(log.take(), vec![(a + P, a + 3 * P, NotifyEvent::Unmap)], "{s}");
        // MAP_FIXED over a mapping unmaps what it replaces.
        mm.mmap(a, P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
        assert!(log.take().contains(&(a, a + P, NotifyEvent::Unmap)), "{s}");
        drop(cpu);
        drop(mm);
        assert_eq!(log.released.load(Ordering::SeqCst), 1, "{s}: release, once");
        assert_eq!(log.take(), vec![], "{s}: no range after release (N4)");
    }
}

#[test]
fn unregistered_notifiers_hear_nothing() {
    let log = Arc::new(Log::default());
    let mm = Arc::new(AddressSpace::new());
    let id = mm.register_notifier(log.clone());
    assert!(mm.unregister_notifier(id));
    assert!(!mm.unregister_notifier(id));
    let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
    mm.cpu().write(a, 1).unwrap();
    mm.munmap(a, P).unwrap();
    drop(mm);
    assert_eq!(log.take(), vec![]);
    assert_eq!(log.released.load(Ordering::SeqCst), 0);
}

/// A secondary MMU (a VMM's nested page tables, in miniature): guest page
/// → host frame and the frame's generation when it was mapped, kept
/// coherent by KVM's `mmu_invalidate_seq` / `in_progress` protocol.
#[derive(Default)]
struct Shadow {
    map: Mutex<HashMap<u64, (u64, u64)>>,
    seq: AtomicU64,
    in_progress: AtomicU64,
    /// Only for the mutation check: create entries whatever the protocol says.
    ignore_protocol: bool,
}

impl MmuNotifier for Shadow {
    fn invalidate_range_start(&self, r: &NotifierRange) {
        let mut m = self.map.lock().unwrap();
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        m.retain(|&va, _| va < r.start || va >= r.end);
    }
    fn invalidate_range_end(&self, _: &NotifierRange) {
        let _m = self.map.lock().unwrap();
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs a guest that reads through `shadow` while the host churns the
/// mapping under it; returns (secondary reads, reads of a frame freed
/// since its entry was made).
fn churn(s: Strategy, shadow: Arc<Shadow>) -> (u64, u64) {
    let mm = Arc::new(AddressSpace::with_strategy(s));
    mm.register_notifier(shadow.clone());
    let base = 0x3000_0000u64;
    let fixed = ANON | MapFlags::FIXED;
    mm.mmap(base, 8 * P, RW, fixed, None, 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (mm, stop, shadow) = (mm.clone(), stop.clone(), shadow.clone());
        std::thread::spawn(move || {
            let mut cpu = mm.cpu(); // the host side of a guest fault
            let (mut reads, mut stale) = (0u64, 0u64);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let va = base + (i % 8) * P;
                i += 1;
                // The secondary access holds the shadow's lock, as a
                // vCPU in guest mode holds off KVM's remote TLB flush: an
                // invalidation waits for the accesses in flight.
                let m = shadow.map.lock().unwrap();
                let Some(&(pfn, generation)) = m.get(&va) else {
                    drop(m);
                    // A secondary fault: fault the host page in, translate,
                    // and install only if nothing was invalidated meanwhile.
                    let seq = shadow.seq.load(Ordering::SeqCst);
                    if cpu.write(va, va).is_err() {
                        continue;
                    }
                    let pte = mm.translate(va);
                    if !pte.present() {
                        continue;
                    }
                    let generation = mm.phys().frame(pte.pfn()).generation.load(Ordering::SeqCst);
                    let mut m = shadow.map.lock().unwrap();
                    let clean = shadow.in_progress.load(Ordering::SeqCst) == 0
                        && shadow.seq.load(Ordering::SeqCst) == seq;
                    if clean || shadow.ignore_protocol {
                        m.insert(va, (pte.pfn(), generation));
                    }
                    continue;
                };
                // A secondary access: the frame must still be the one mapped.
                reads += 1;
                if mm.phys().frame(pfn).generation.load(Ordering::SeqCst) != generation {
                    stale += 1;
                }
                drop(m);
            }
            (reads, stale)
        })
    };
    let t0 = std::time::Instant::now();
    let mut k = 0u64;
    while t0.elapsed() < std::time::Duration::from_millis(150) {
        k += 1;
        match k % 3 {
            0 => {
                mm.munmap(base, 8 * P).unwrap();
                mm.mmap(base, 8 * P, RW, fixed, None, 0).unwrap();
            }
            1 => mm.madvise(base + (k % 8) * P, P, madv::DONTNEED).unwrap(),
            _ => {
                mm.mmap(base + (k % 8) * P, P, RW, fixed, None, 0).unwrap();
            }
        }
        // Other threads' frees reuse frames sooner.
        let junk = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        mm.munmap(junk, 4 * P).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap()
}

#[test]
fn a_secondary_mmu_on_the_notifiers_never_reads_a_freed_frame() {
    for s in Strategy::ALL.into_iter().filter(|s| s.is_safe()) {
        let (reads, stale) = churn(s, Arc::new(Shadow::default()));
        assert!(reads > 0, "{s}: the guest made secondary accesses");
        assert_eq!(stale, 0, "{s}: {stale} of {reads} secondary reads hit a freed frame");
    }
}

#[test]
fn the_check_sees_a_secondary_mmu_that_ignores_the_protocol() {
    // The same churn with entries installed whatever the sequence says: a
    // translation made before a zap outlives its frame. Proves the test
    // above can fail.
    let mut stale_total = 0;
    for _ in 0..10 {
        let (_, stale) =
            churn(Strategy::RcuDead, Arc::new(Shadow { ignore_protocol: true, ..Shadow::default() }));
        stale_total += stale;
        if stale_total > 0 {
            break;
        }
    }
    assert!(stale_total > 0, "a secondary MMU that ignores in_progress/seq went unnoticed");
}

/// Counts brackets as KVM does (a signed in-progress count).
#[derive(Default)]
struct Counting {
    starts: AtomicU64,
    ends: AtomicU64,
}

impl MmuNotifier for Counting {
    fn invalidate_range_start(&self, _: &NotifierRange) {
        self.starts.fetch_add(1, Ordering::SeqCst);
    }
    fn invalidate_range_end(&self, _: &NotifierRange) {
        self.ends.fetch_add(1, Ordering::SeqCst);
    }
}

/// Says when its start runs, then dawdles in it.
struct Slow(Mutex<Option<std::sync::mpsc::Sender<()>>>);

impl MmuNotifier for Slow {
    fn invalidate_range_start(&self, _: &NotifierRange) {
        if let Some(tx) = self.0.lock().unwrap().take() {
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    fn invalidate_range_end(&self, _: &NotifierRange) {}
}

#[test]
fn registration_waits_for_a_faults_bracket() {
    // notifier.rs N2: a copy-on-write's start/end does not hold the mmap
    // lock; a notifier registered (or unregistered) in between got an end
    // without a start (found by a review).
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let (tx, rx) = std::sync::mpsc::channel();
        mm.register_notifier(Arc::new(Slow(Mutex::new(Some(tx)))));
        let z = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        mm.cpu().read(z).unwrap(); // the zero page
        let cow = {
            let mm = mm.clone();
            std::thread::spawn(move || mm.cpu().write(z, 1).unwrap())
        };
        rx.recv().unwrap(); // inside the copy-on-write's start
        let late = Arc::new(Counting::default());
        mm.register_notifier(late.clone());
        cow.join().unwrap();
        let (st, en) = (late.starts.load(Ordering::SeqCst), late.ends.load(Ordering::SeqCst));
        assert_eq!(st, en, "{s}: {st} starts, {en} ends for a notifier registered mid-bracket");
    }
}

/// A callback that makes an mm call on its own address space.
struct Reentrant(std::sync::OnceLock<std::sync::Weak<AddressSpace>>);

impl MmuNotifier for Reentrant {
    fn invalidate_range_start(&self, _: &NotifierRange) {
        if let Some(mm) = self.0.get().and_then(|w| w.upgrade()) {
            let _ = mm.mmap(0, P, RW, ANON, None, 0);
        }
    }
    fn invalidate_range_end(&self, _: &NotifierRange) {}
}

#[test]
fn a_reentrant_callback_aborts_with_a_message() {
    // notifier.rs N6: run in a child process (the abort would end this one).
    if std::env::var_os("RCUVM_REENTRANT_CHILD").is_some() {
        let mm = Arc::new(AddressSpace::new());
        let n = Arc::new(Reentrant(std::sync::OnceLock::new()));
        n.0.set(Arc::downgrade(&mm)).unwrap();
        mm.register_notifier(n);
        let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        mm.cpu().write(a, 1).unwrap();
        mm.munmap(a, P).unwrap(); // its start makes an mm call
        unreachable!("the re-entrant call went through");
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "a_reentrant_callback_aborts_with_a_message", "--nocapture"])
        .env("RCUVM_REENTRANT_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child did not fail:\n{err}");
    assert!(err.contains("was called from an MMU notifier callback"), "{err}");
    assert!(err.contains("aborting"), "{err}");
}
