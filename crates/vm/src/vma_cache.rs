//! The cache of VMA objects (Linux's `vm_area_cachep`): a VMA object whose
//! last count the tree gives back after its grace period stays, emptied
//! (or as it is, if it holds nothing: VC4), in the freeing thread's
//! cache, and that thread's next VMA is built in
//! it, so that mm calls and the callbacks after them (mm.rs A8) do not go
//! to the allocator for VMAs.
//!
//! # Owns
//! [`vm_area_alloc`], [`vm_area_free`] and each thread's cache.
//!
//! # Invariants
//! - VC1. Only an object nobody else counts is kept, and it holds
//!   nothing: an object that holds a name, a file or the tables
//!   `rcu-refcount` frees on the last put (strategy.rs S5) is emptied
//!   first (`Arc::get_mut`), its fields dropped; nothing can reach it.
//! - VC2. A thread keeps at most [`CACHE_OBJECTS`]; past that, and on a
//!   thread whose cache is gone (thread-local teardown), objects go to
//!   the allocator.
//! - VC3. Only a thread that has built a VMA keeps objects: a thread that
//!   only frees them (the RCU reclaimer, running what mm calls left)
//!   would fill its cache with objects nobody takes again.
//! - VC4. An object that already holds nothing (anonymous, no name, no
//!   tables: the common case) is kept as it is: the free only reads it,
//!   and the next `vm_area_alloc` that takes it overwrites it. Why: the
//!   free runs a grace period after the object was last read, often by a
//!   `/proc/pid/maps` reader on another CPU, so that CPU still has its
//!   cache lines, and every write (emptying it, `Arc::get_mut`'s atomic
//!   exchange) waited for them to be taken back. A callback freed 64 VMA
//!   objects, and an mm call that ran 32 callbacks after a late grace
//!   period took 0.13–0.26 ms with readers against 0.05 ms alone; the
//!   free was 48% of the writer's samples in those calls (proc-vs-map,
//!   perf). The alloc's writes are one object a call, where the frees
//!   were thousands in one call.
//!
//! Why: an mmap+munmap pair allocated about two VMA objects from glibc
//! and freed as many (rcu-dead: 1.89 per pair, 0.30–0.57 with the cache,
//! tests/mm_allocs.rs). Alternated six times (`rcuvm run --workload mmap`),
//! rcu-dead's mmap1 made 4–22% more pairs a second with the cache and
//! vma-lock 12–28% more in five of six. It was tried for `proc-vs-map`'s
//! slowest writer calls with readers, where glibc's frees of the tree's
//! garbage batches were 36% of the samples: those did not get fewer
//! (docs/benchmarks.md, "proc-vs-map, late night").
//!
//! # Concurrency
//! Per thread; nothing is shared.
//!
//! # Linux
//! `vm_area_alloc()`/`vm_area_free()` on `vm_area_cachep`, whose per-CPU
//! slab caches keep freed objects for the next allocation on that CPU.

use std::cell::RefCell;
use std::sync::Arc;

use crate::vma::{Backing, VmFlags, Vma};

/// Most empty VMA objects a thread keeps (VC2): 600 KiB at most, about a
/// grace period's worth of proc-vs-map's munmaps (1,024 kept 17% of what
/// a pair allocates, 4,096 84%: tests/mm_allocs.rs).
pub const CACHE_OBJECTS: usize = 4096;

thread_local! {
    static CACHE: RefCell<Vec<Arc<Vma>>> = const { RefCell::new(Vec::new()) };
    /// VC3: this thread has built a VMA.
    static BUILDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What a cached object holds: nothing that owns memory or a count.
fn empty() -> Vma {
    Vma {
        start: 0,
        end: 0,
        flags: VmFlags::empty(),
        pgoff: 0,
        backing: Backing::Anon,
        anon_vma: None,
        name: None,
        rt: Default::default(),
    }
}

/// VC1, VC4: whether `v` owns no memory and no count, so that keeping it
/// as it is keeps nothing else alive.
fn holds_nothing(v: &Vma) -> bool {
    matches!(v.backing, Backing::Anon) && v.name.is_none() && v.rt.on_last_put.get().is_none()
}

/// `v` in a VMA object of this thread's cache, or a new one.
pub(crate) fn vm_area_alloc(v: Vma) -> Arc<Vma> {
    let _ = BUILDS.try_with(|b| b.set(true));
    let cached = CACHE.try_with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.pop())).ok().flatten();
    if let Some(mut a) = cached {
        // VC1, VC4: the cache had the only count when it took the object,
        // and nobody can have made another since; checked all the same,
        // with the exchange that orders this thread's writes after every
        // earlier holder's last use.
        if let Some(slot) = Arc::get_mut(&mut a) {
            debug_assert!(holds_nothing(slot));
            *slot = v;
            return a;
        }
    }
    Arc::new(v)
}

/// Gives back a VMA object the tree retired (the tree's `free`, maple
/// write.rs R10): kept if nobody else counts it and the cache has room
/// (emptied first if it holds anything, VC1, VC4); otherwise dropped.
pub(crate) fn vm_area_free(mut a: Arc<Vma>) {
    if !BUILDS.try_with(std::cell::Cell::get).unwrap_or(false) {
        return; // VC3: dropped, as it would be without the cache
    }
    // With the only strong count, no other holder can appear but through
    // a `Weak` (rcuvm makes none); `vm_area_alloc`'s `Arc::get_mut`
    // checks again before it writes.
    if Arc::strong_count(&a) != 1 {
        return; // another holder (a fault, a vmacache) drops it last
    }
    // ORDERING: Acquire, after the count: what the last other holder did
    // to the object before its Release decrement (say, set its tables,
    // unmap.rs) is seen by `holds_nothing` below.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    // VC4: an object that holds nothing is kept unwritten; its stay here
    // keeps nothing alive.
    if !holds_nothing(&a) {
        let Some(v) = Arc::get_mut(&mut a) else {
            return; // as above
        };
        // VC1: drop what it holds now, as its last put would.
        *v = empty();
    }
    let _ = CACHE.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if c.len() < CACHE_OBJECTS {
                if c.capacity() == 0 {
                    c.reserve_exact(CACHE_OBJECTS);
                }
                c.push(a);
                return;
            }
        }
        drop(a);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_object_is_emptied_kept_and_reused() {
        // Earlier tests on this thread (`--test-threads=1`) may have filled
        // its cache.
        CACHE.with(|c| c.borrow_mut().clear());
        let name: Arc<str> = Arc::from("[anon:x]");
        let v = Vma { start: 0x1000, end: 0x2000, name: Some(name.clone()), ..empty() };
        let a = vm_area_alloc(v);
        let at = Arc::as_ptr(&a);
        vm_area_free(a);
        assert_eq!(Arc::strong_count(&name), 1, "the name was dropped with the object's contents");
        let b = vm_area_alloc(Vma { start: 0x3000, end: 0x4000, ..empty() });
        assert_eq!(Arc::as_ptr(&b), at, "the same object, reused");
        assert_eq!((b.start, b.end), (0x3000, 0x4000));
    }

    #[test]
    fn an_object_that_holds_nothing_is_kept_unwritten() {
        CACHE.with(|c| c.borrow_mut().clear());
        let a = vm_area_alloc(Vma { start: 0x1000, end: 0x2000, ..empty() });
        let at = Arc::as_ptr(&a);
        vm_area_free(a);
        // VC4: kept as it was freed, not emptied.
        let kept = CACHE.with(|c| c.borrow().last().map(|k| (Arc::as_ptr(k), k.start, k.end)));
        assert_eq!(kept, Some((at, 0x1000, 0x2000)));
        let b = vm_area_alloc(Vma { start: 0x5000, end: 0x7000, ..empty() });
        assert_eq!(Arc::as_ptr(&b), at, "the same object, reused");
        assert_eq!((b.start, b.end), (0x5000, 0x7000));
        assert!(CACHE.with(|c| c.borrow().is_empty()));
    }

    #[test]
    fn a_cached_object_shared_since_is_not_reused() {
        CACHE.with(|c| c.borrow_mut().clear());
        let a = vm_area_alloc(Vma { start: 0x1000, end: 0x2000, ..empty() });
        let weak = Arc::downgrade(&a);
        vm_area_free(a);
        // A `Weak` (which rcuvm never makes) brings it back while cached.
        let back = weak.upgrade().expect("kept alive by the cache");
        let b = vm_area_alloc(Vma { start: 0x5000, end: 0x7000, ..empty() });
        assert!(!Arc::ptr_eq(&b, &back), "a new object, not the shared one");
        assert_eq!((back.start, back.end), (0x1000, 0x2000), "the holder's object untouched");
        assert_eq!((b.start, b.end), (0x5000, 0x7000));
    }

    #[test]
    fn a_thread_that_builds_no_vma_keeps_none() {
        let a =
            std::thread::spawn(|| Arc::new(Vma { start: 0x1000, end: 0x2000, ..empty() })).join().unwrap();
        let kept = std::thread::spawn(move || {
            vm_area_free(a);
            CACHE.with(|c| c.borrow().len())
        })
        .join()
        .unwrap();
        assert_eq!(kept, 0);
    }

    #[test]
    fn a_shared_object_is_not_kept() {
        let a = vm_area_alloc(Vma { start: 0x1000, end: 0x2000, ..empty() });
        let other = a.clone();
        vm_area_free(a);
        assert_eq!(Arc::strong_count(&other), 1, "its count went, the object stays with its holder");
        assert_eq!(other.start, 0x1000, "untouched");
    }
}
