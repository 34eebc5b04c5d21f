//! Per-thread reader state: the counter each read-side section writes, the
//! registry a grace period scans, and the thread-local lookup between them.
//!
//! # Owns
//! - [`ReaderSlot`]: one cache-padded counter per (thread, domain) pair.
//! - [`Registry`]: a domain's list of slots.
//! - The thread-locals `FAST` (lookup cache) and `OWNED` (registrations).
//!
//! # Invariants
//! - R1. A slot lives as long as its domain's registry: slots are never
//!   removed from a registry, only marked free for the next thread. A raw
//!   pointer to a slot is therefore valid while its domain is borrowed.
//! - R2. Only the thread that owns a slot writes its counter while the slot
//!   is in use; grace periods only read it. The read path thus writes one
//!   cache line that no other thread writes, and does no read-modify-write.
//! - R3. The counter is `gp_snapshot | nest`. `nest` (low [`NEST_BITS`]) is the
//!   depth of the thread's nested sections; zero means quiescent. The
//!   snapshot (a multiple of [`GP_UNIT`], plus the domain's constant
//!   [`FENCE_BIT`]) is the domain's grace-period counter read on the
//!   outermost entry. A reader blocks a grace period `G`
//!   only while `nest != 0 && snapshot < G`.
//! - R4. A thread frees its slots at exit only if it is outside every read
//!   section of them; a slot whose guard was leaked stays in use forever
//!   (and so blocks grace periods, as a reader that never ends must).
//! - R7. A slot a [`Reader`](crate::Reader) uses stays the thread's while
//!   the `Reader` lives, even past the thread's registrations (a `Reader`
//!   kept in a thread-local destroyed after `OWNED`): the last such
//!   `Reader` frees it. Why: a `Reader` caches the slot's address, and a
//!   slot freed under it was claimed by another thread, both writing one
//!   counter: lost unlocks, and grace periods that skipped a live reader
//!   (found by a review).
//! - R8. A section of such a `Reader` is still seen by the thread's own
//!   checks (`nesting_in`: `in_read_section`, the refusal to wait inside
//!   one's own section, P4): the orphaned slots are kept in a thread-local
//!   without a destructor (`ORPHANS`, four entries), matched by domain
//!   address and id. Without it, `synchronize` inside such a section
//!   waited for itself forever (found by a review). A guard that outlives
//!   the last `Reader` of an orphaned slot at thread exit leaves the slot
//!   in use forever, as a leaked guard does (R4).
//! - R5. `FAST` is only read on the hot path, never mutated: after a thread's
//!   first use of a domain (and for up to [`FAST_ENTRIES`] domains per thread)
//!   a read-side section takes no lock, allocates nothing and makes no system
//!   call, so it may run in a signal handler.
//! - R6. `FAST` is keyed by the domain's address, which the hot path has in
//!   a register (an id would cost a load). An address names one domain for
//!   as long as a thread caches it: each registration (`OWNED`) holds a
//!   reference to its domain's `DomainInner`, so the memory cannot be reused
//!   by a new domain until the thread forgets the registration, and it
//!   clears the cache entry before that (`slot_for_slow`, thread exit). A
//!   dropped domain's memory therefore lives on until each thread that used
//!   it exits or next registers somewhere (its callbacks have run; only the
//!   memory waits).
//!
//! # Concurrency
//! `lock`/`unlock` are owner-thread only (R2). `Registry::register` takes the
//! registry mutex. `Registry::snapshot` is called by grace periods.
//!
//! # Linux
//! `urcu-memb`'s `rcu_reader` TLS, `rcu_register_thread()` and the
//! `registry` list; the counter layout is `URCU_GP_CTR_NEST_MASK` with a
//! 64-bit counter instead of the phase bit, so one scan per grace period is
//! enough (the counter cannot wrap in practice: 2^47 grace periods, below
//! `FENCE_BIT`).

use std::cell::{Cell, RefCell};

use crossbeam_utils::CachePadded;

use crate::domain::DomainInner;
use crate::membarrier;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, rcu_thread_local};

/// Bits of the counter that hold the nesting depth (R3).
pub(crate) const NEST_BITS: u32 = 16;
/// Mask of the nesting depth.
pub(crate) const NEST_MASK: u64 = (1 << NEST_BITS) - 1;
/// One grace period in the counter's units.
pub(crate) const GP_UNIT: u64 = 1 << NEST_BITS;
/// Set in a domain's grace-period counter, and so in every snapshot of it,
/// when its readers must fence themselves (no `membarrier` in this process:
/// membarrier.rs B1). The read path learns the mode from the counter it
/// loads anyway instead of loading a flag (domain.rs O2).
pub(crate) const FENCE_BIT: u64 = 1 << 63;
/// How many domains per thread the lock-free lookup caches (R5).
pub(crate) const FAST_ENTRIES: usize = 4;

/// What the outermost `read()` reads of its domain: one cache line, written
/// only when a grace period starts.
#[derive(Debug)]
pub(crate) struct ReadSide {
    /// The grace-period counter (domain.rs O2), with [`FENCE_BIT`] in it.
    pub(crate) gp: AtomicU64,
    /// The domain's id (domain.rs O1).
    pub(crate) id: u64,
}

/// One thread's read-side counter for one domain.
#[derive(Debug)]
pub(crate) struct ReaderSlot {
    /// `gp_snapshot | nest` (R3), and the domain's id. Padded: only its owner
    /// writes it (R2); the id shares the line because every guard reads it.
    ctr: CachePadded<Counter>,
    /// Claimed by a live thread.
    in_use: AtomicBool,
    /// The domain has been dropped; the thread may forget this slot.
    dead: AtomicBool,
    /// The owner thread's live `Reader` handles on this slot (R7). Owner
    /// thread only.
    readers: AtomicU64,
    /// The owner thread's registrations are gone while `Reader`s remained:
    /// the last of them frees the slot (R7). Owner thread only.
    orphaned: AtomicBool,
}

#[derive(Debug)]
struct Counter {
    ctr: AtomicU64,
    domain_id: u64,
}

impl ReaderSlot {
    fn new(domain_id: u64) -> Self {
        Self {
            ctr: CachePadded::new(Counter { ctr: AtomicU64::new(0), domain_id }),
            in_use: AtomicBool::new(true),
            dead: AtomicBool::new(false),
            readers: AtomicU64::new(0),
            orphaned: AtomicBool::new(false),
        }
    }

    /// A `Reader` of the owner thread now uses this slot (R7).
    pub(crate) fn reader_made(&self) {
        self.readers.store(self.readers.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// A `Reader` of the owner thread went; the last one frees the slot if
    /// the thread's registrations already went (R7, and R4's condition).
    pub(crate) fn reader_dropped(&self) {
        let n = self.readers.load(Ordering::Relaxed) - 1;
        self.readers.store(n, Ordering::Relaxed);
        if n == 0 && self.orphaned.load(Ordering::Relaxed) {
            self.orphaned.store(false, Ordering::Relaxed);
            forget_orphan(self);
            if self.nesting() == 0 {
                // ORDERING: Release pairs with the Acquire in `register`.
                self.in_use.store(false, Ordering::Release);
            }
        }
    }

    /// The id of the domain this slot belongs to.
    #[inline(always)]
    pub(crate) fn domain_id(&self) -> u64 {
        self.ctr.domain_id
    }

    /// Enters a read-side section (R3). Owner thread only.
    #[inline(always)]
    pub(crate) fn lock(&self, rs: &ReadSide) {
        let c = self.ctr.ctr.load(Ordering::Relaxed);
        if c & NEST_MASK == 0 {
            // ORDERING: Acquire pairs with the SeqCst fetch_add that starts a
            // grace period: a reader that sees the new counter also sees what
            // the updater unlinked before starting it.
            let snap = rs.gp.load(Ordering::Acquire);
            // ORDERING: Release (free on x86) so that a grace period whose
            // Acquire load sees this *newer* section also synchronizes with
            // the end of the previous one (C++20 release sequences no longer
            // cover later plain stores of the same thread).
            self.ctr.ctr.store(snap | 1, Ordering::Release);
            // ORDERING: orders the counter store before the section's loads;
            // pairs with `membarrier::writer_fence` in `grace_period` (B2).
            membarrier::reader_fence(snap & FENCE_BIT == 0);
        } else {
            // The outermost entry is the common case: keep it on the
            // straight-line path (no taken branch).
            crate::cold();
            assert!(c & NEST_MASK != NEST_MASK, "rcuvm-rcu: more than {NEST_MASK} nested read-side sections");
            // ORDERING: Release for the same reason as above.
            self.ctr.ctr.store(c + 1, Ordering::Release);
        }
    }

    /// Leaves a read-side section. Owner thread only.
    #[inline(always)]
    pub(crate) fn unlock(&self) {
        let c = self.ctr.ctr.load(Ordering::Relaxed);
        debug_assert!(c & NEST_MASK != 0, "unbalanced read-side unlock");
        // ORDERING: Release: every load of the section happens-before the
        // Acquire load in `grace::wait_for_readers` that sees it quiescent.
        self.ctr.ctr.store(c - 1, Ordering::Release);
    }

    /// The owner thread's nesting depth in this slot.
    pub(crate) fn nesting(&self) -> u64 {
        self.ctr.ctr.load(Ordering::Relaxed) & NEST_MASK
    }

    /// Whether this reader holds up a grace period whose counter is `gp` (R3).
    #[inline]
    pub(crate) fn blocks(&self, gp: u64) -> bool {
        // ORDERING: Acquire pairs with the Release store in `unlock`.
        let c = self.ctr.ctr.load(Ordering::Acquire);
        c & NEST_MASK != 0 && (c & !NEST_MASK) < gp
    }
}

/// A domain's list of reader slots (R1), copied on write: a registration
/// (rare: a thread's first read of the domain) publishes a new list, so a
/// grace period's snapshot is one reference count, not a copy of the list
/// (rcu-sync's munmap took one allocation per grace period for it).
#[derive(Debug)]
pub(crate) struct Registry {
    slots: Mutex<Arc<Vec<Arc<ReaderSlot>>>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self { slots: Mutex::new(Arc::new(Vec::new())) }
    }

    /// Claims a free slot or adds one.
    fn register(&self, domain_id: u64) -> Arc<ReaderSlot> {
        let mut slots = self.slots.lock();
        for s in slots.iter() {
            // ORDERING: Acquire pairs with the Release in `release`: the
            // previous owner's last unlock happened before we reuse the slot.
            if s.in_use.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return s.clone();
            }
        }
        let s = Arc::new(ReaderSlot::new(domain_id));
        let mut list = Vec::with_capacity(slots.len() + 1);
        list.extend(slots.iter().cloned());
        list.push(s.clone());
        *slots = Arc::new(list);
        s
    }

    /// The slots a grace period must scan. A slot registered after the
    /// snapshot was taken belongs to a reader that entered after the grace
    /// period's fence, which need not be waited for.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<ReaderSlot>>> {
        self.slots.lock().clone()
    }

    /// Number of slots ever created (live and free).
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Called when the domain is dropped: threads may forget these slots.
    pub(crate) fn kill(&self) {
        for s in self.slots.lock().iter() {
            s.dead.store(true, Ordering::Relaxed);
        }
    }
}

/// One entry of the lock-free lookup cache, keyed by the domain's address
/// (null: empty). R6 makes the address a safe key.
struct FastEntry {
    domain: Cell<*const DomainInner>,
    slot: Cell<*const ReaderSlot>,
}

/// A thread's registration in one domain. Keeps the slot's memory alive for
/// as long as the thread may look at it, and the domain's (R6).
struct Owned {
    domain: Arc<DomainInner>,
    slot: Arc<ReaderSlot>,
}

impl Owned {
    fn is(&self, d: *const DomainInner) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.domain), d)
    }
}

/// All of this thread's registrations; its destructor frees the slots (R4).
struct OwnedList {
    list: RefCell<Vec<Owned>>,
    next_victim: Cell<usize>,
}

impl Drop for OwnedList {
    fn drop(&mut self) {
        // Under loom, a failed model tears its threads down outside the model
        // while unwinding; touching loom primitives then would panic again
        // and abort the whole test binary instead of reporting the failure.
        #[cfg(rcuvm_loom)]
        if std::thread::panicking() {
            std::mem::forget(std::mem::take(self.list.get_mut()));
            return;
        }
        // Empty the cache first: a read-side section in a later thread-local
        // destructor must not follow a pointer into a slot we release.
        let _ = FAST.try_with(|f| {
            for e in f {
                e.domain.set(std::ptr::null());
            }
        });
        for o in self.list.get_mut().drain(..) {
            if o.slot.readers.load(Ordering::Relaxed) > 0 {
                // R7: a `Reader` (in a thread-local destroyed after this
                // one) still writes the slot; its drop frees it.
                o.slot.orphaned.store(true, Ordering::Relaxed);
                note_orphan(&o.domain, &o.slot);
            } else if o.slot.nesting() == 0 {
                // ORDERING: Release pairs with the Acquire in `register`.
                o.slot.in_use.store(false, Ordering::Release);
            }
        }
    }
}

rcu_thread_local! {
    static FAST: [FastEntry; FAST_ENTRIES] = [const { FastEntry { domain: Cell::new(std::ptr::null()), slot: Cell::new(std::ptr::null()) } }; FAST_ENTRIES];
}

rcu_thread_local! {
    static OWNED: OwnedList = OwnedList { list: RefCell::new(Vec::new()), next_victim: Cell::new(0) };
}

/// This thread's slot in `d`, registering on first use.
///
/// The returned pointer is valid while `d` is alive (R1).
#[inline(always)]
pub(crate) fn slot_for(d: &Arc<DomainInner>) -> *const ReaderSlot {
    let key = Arc::as_ptr(d);
    // The first two entries inline: a thread that uses two domains in turn
    // (an rcuvm CPU: the TLB domain per access, the VMA domain per fault)
    // pays no call for either. The second is laid out of line, so the
    // first stays straight-line code.
    FAST.with(|f| {
        if std::ptr::eq(f[0].domain.get(), key) {
            f[0].slot.get()
        } else {
            crate::cold();
            if std::ptr::eq(f[1].domain.get(), key) { f[1].slot.get() } else { slot_for_other(d) }
        }
    })
}

/// The rest of the cache (R5: still lock-free), then registration.
#[inline(never)]
fn slot_for_other(d: &Arc<DomainInner>) -> *const ReaderSlot {
    let key = Arc::as_ptr(d);
    let hit = FAST.with(|f| {
        f[2..].iter().find(|e| std::ptr::eq(e.domain.get(), key)).map_or(std::ptr::null(), |e| e.slot.get())
    });
    if !hit.is_null() {
        return hit;
    }
    slot_for_slow(d)
}

#[cold]
fn slot_for_slow(d: &Arc<DomainInner>) -> *const ReaderSlot {
    let key = Arc::as_ptr(d);
    let r = OWNED.try_with(|owned| {
        let mut list = owned.list.borrow_mut();
        // Forget registrations in domains that no longer exist: their cache
        // entries first, so no lookup (a signal handler's included) meets a
        // key whose domain is being freed, then the registrations, which may
        // hold the last reference to the domain (R6).
        let dead: Vec<Owned> = {
            let (dead, live) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|o: &Owned| o.slot.dead.load(Ordering::Relaxed));
            *list = live;
            dead
        };
        FAST.with(|f| {
            for e in f {
                if dead.iter().any(|o| o.is(e.domain.get())) {
                    e.domain.set(std::ptr::null());
                }
            }
        });
        drop(dead);
        let slot = match list.iter().find(|o| o.is(key)) {
            Some(o) => o.slot.clone(),
            None => {
                let s = d.registry.register(d.id());
                list.push(Owned { domain: d.clone(), slot: s.clone() });
                s
            }
        };
        let ptr = Arc::as_ptr(&slot);
        FAST.with(|f| {
            let idx = match f.iter().position(|e| e.domain.get().is_null()) {
                Some(i) => i,
                None => {
                    let v = owned.next_victim.get();
                    owned.next_victim.set((v + 1) % FAST_ENTRIES);
                    v
                }
            };
            // Publish the slot before the key, so a signal handler that
            // interrupts us never pairs the new key with the old pointer.
            f[idx].domain.set(std::ptr::null());
            f[idx].slot.set(ptr);
            f[idx].domain.set(key);
        });
        ptr
    });
    match r {
        Ok(p) => p,
        Err(_) => panic!(
            "rcuvm-rcu: read() on a thread whose RCU state was already torn down \
             (called from a thread-local destructor that ran after rcuvm-rcu's)"
        ),
    }
}

/// This thread's nesting depth in `d`, without registering.
pub(crate) fn nesting_in(d: &DomainInner) -> u64 {
    let key: *const DomainInner = d;
    let fast = FAST.with(|f| f.iter().find(|e| std::ptr::eq(e.domain.get(), key)).map(|e| e.slot.get()));
    if let Some(p) = fast {
        // SAFETY: the cache only holds slots of live registrations, and `d`
        // is alive, so its registry keeps the slot allocated (R1).
        return unsafe { (*p).nesting() };
    }
    let owned =
        OWNED.try_with(|owned| owned.list.borrow().iter().find(|o| o.is(key)).map(|o| o.slot.nesting()));
    match owned {
        Ok(Some(n)) => n,
        // R8: the registrations are gone (thread exit); a `Reader` that
        // outlived them may still be in a section.
        _ => ORPHANS.with(|o| {
            o.iter().find(|e| std::ptr::eq(e.get().0, key) && e.get().1 == d.id()).map_or(0, |e| {
                // SAFETY: the entry matched `d` by address and id (ids are
                // never reused), so the slot is in `d`'s registry, which
                // `d` keeps (R1).
                unsafe { (*e.get().2).nesting() }
            })
        }),
    }
}

/// How many orphaned slots (R8) a thread can still account for.
const ORPHAN_ENTRIES: usize = 4;

rcu_thread_local! {
    /// R8: slots `Reader`s still use after this thread's registrations
    /// were destroyed: (domain address, domain id, slot). Plain cells, so
    /// the thread-local has no destructor and lasts to the thread's end.
    #[allow(clippy::type_complexity)]
    static ORPHANS: [Cell<(*const DomainInner, u64, *const ReaderSlot)>; ORPHAN_ENTRIES] =
        [const { Cell::new((std::ptr::null(), 0, std::ptr::null())) }; ORPHAN_ENTRIES];
}

/// Remembers an orphaned slot (R8); past [`ORPHAN_ENTRIES`] it is not
/// seen by `nesting_in` (a section of it then does not stop this thread's
/// own `synchronize`, which waits for it forever: documented).
fn note_orphan(d: &Arc<DomainInner>, slot: &Arc<ReaderSlot>) {
    let _ = ORPHANS.try_with(|o| {
        if let Some(e) = o.iter().find(|e| e.get().0.is_null()) {
            e.set((Arc::as_ptr(d), d.id(), Arc::as_ptr(slot)));
        }
    });
}

/// Forgets an orphaned slot whose last `Reader` went (R8).
fn forget_orphan(slot: &ReaderSlot) {
    let _ = ORPHANS.try_with(|o| {
        for e in o {
            if std::ptr::eq(e.get().2, slot) {
                e.set((std::ptr::null(), 0, std::ptr::null()));
            }
        }
    });
}
