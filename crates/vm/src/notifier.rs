//! MMU notifiers: how a secondary MMU (a VMM's nested page tables, an
//! emulator's own translation cache, a device's IOMMU) stays coherent with
//! the address space's page tables.
//!
//! # Owns
//! The [`MmuNotifier`] trait, [`NotifierRange`] and [`NotifyEvent`], and
//! an address space's list of registered notifiers (`Notifiers`).
//!
//! # Invariants
//! - N1. Every change that removes or narrows a translation (a zap by
//!   `munmap`, a `MAP_FIXED` replacement, `brk` or `mremap` shrinking,
//!   `madvise(MADV_DONTNEED/FREE)`; any change of rights by `mprotect`; PTEs
//!   moved by `mremap`; a copy-on-write that replaces a present entry's
//!   frame; write permission that `fork` removes, fork.rs FK3) is bracketed: `invalidate_range_start` before the first PTE of
//!   the range changes, `invalidate_range_end` after the CPUs' TLB
//!   shootdown and before any frame it unmapped is freed. So a secondary
//!   MMU that drops its translations of the range in `start`, and creates
//!   none between `start` and `end` (KVM's `mmu_invalidate_in_progress`
//!   and sequence count; the test `tests/mmu_notifier.rs` has one), never
//!   reaches a frame after it was freed or reused.
//! - N2. Starts and ends pair up, one end per start with the same range,
//!   on the thread that made the change, in order; ranges of one mm call
//!   never nest.
//! - N3. Range callbacks run under the mmap write lock (or, for a fault's
//!   copy-on-write, the fault's hold on its VMA: under `mmap-lock` the
//!   mmap read lock; for a population's, mlock.rs L5, the mmap read lock
//!   under every strategy) and under the list of notifiers; `release` runs with
//!   neither held. From a callback,
//!   [`crate::AddressSpace::translate`], `map_count` and `brk_range` may
//!   be used; mm calls, (un)registering a notifier, and (under
//!   `mmap-lock`) `maps`/`smaps`/`vmas`/`query` would wait for those
//!   locks: they panic instead (N6). A notifier that needs its address
//!   space keeps a `Weak` to it: an `Arc` is a cycle, and `release` then
//!   never comes.
//! - N4. `release` runs once, when the address space is torn down, before
//!   its mappings go; no range callback follows it.
//! - N5. With no notifier registered, a change costs one relaxed load.
//! - N6. A callback that re-enters what would wait for its own locks (N3)
//!   panics with a message naming it; a callback that panics aborts the
//!   process (the change it interrupted would be left half made: PTEs
//!   with no VMA, frames never freed, a VMA read lock never dropped;
//!   found by a review). After `unregister_notifier` returns, no callback
//!   of that notifier is running or will run.
//!
//! # Linux
//! `include/linux/mmu_notifier.h`: `mmu_notifier_register`,
//! `invalidate_range_start`/`end` with `struct mmu_notifier_range` and its
//! `enum mmu_notifier_event`, `release` from `exit_mmap`. Not modelled:
//! the young/accessed callbacks (no page aging here), blockable vs
//! non-blockable ranges (every range here may block), interval notifiers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a range is invalidated (`enum mmu_notifier_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    /// Unmapped: `munmap`, `MAP_FIXED` over it, `brk` or `mremap`
    /// shrinking, and `mremap` moving its PTEs away (`MMU_NOTIFY_UNMAP`).
    Unmap,
    /// Pages dropped with the mapping kept (`madvise(MADV_DONTNEED)`), or
    /// a copy-on-write replacing a page (`MMU_NOTIFY_CLEAR`).
    Clear,
    /// Rights changed by `mprotect`, removed or added
    /// (`MMU_NOTIFY_PROTECTION_VMA`).
    ProtectionVma,
    /// Write permission removed from pages that `fork` shares
    /// copy-on-write (`MMU_NOTIFY_PROTECTION_PAGE`, fork.rs FK3).
    ProtectionPage,
}

/// A range being invalidated (`struct mmu_notifier_range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NotifierRange {
    /// First address (page-aligned).
    pub start: u64,
    /// One past the last address (page-aligned).
    pub end: u64,
    /// Why.
    pub event: NotifyEvent,
}

/// A secondary MMU's hooks (N1–N6). Register with
/// [`crate::AddressSpace::register_notifier`].
pub trait MmuNotifier: Send + Sync {
    /// Translations of `range` are about to change: drop them, and create
    /// none until the matching [`Self::invalidate_range_end`].
    fn invalidate_range_start(&self, range: &NotifierRange);
    /// The change of `range` is done and every CPU's TLB is flushed; the
    /// frames it unmapped are freed after this returns.
    fn invalidate_range_end(&self, range: &NotifierRange);
    /// The address space is being torn down (N4).
    fn release(&self) {}
}

/// An address space's registered notifiers (N5: a flag first).
#[derive(Default)]
pub(crate) struct Notifiers {
    any: AtomicBool,
    list: parking_lot::RwLock<Vec<(u64, Arc<dyn MmuNotifier>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifiers").field("registered", &self.list.read().len()).finish()
    }
}

std::thread_local! {
    /// N6: this thread is running a notifier callback.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// N6: refuses, with a panic that names the mistake, what would wait for
/// the lock a notifier callback runs under.
pub(crate) fn assert_not_in_callback(what: &str) {
    assert!(
        !IN_CALLBACK.with(|c| c.get()),
        "rcuvm: {what} was called from an MMU notifier callback; callbacks run under the mmap lock \
         (notifier.rs N3) and this would wait for it forever"
    );
}

/// Runs one callback (N6: marked, and a panic aborts the process: it
/// would unwind out of a half-made change, with PTEs left or frames held).
fn call(f: impl FnOnce()) {
    let was = IN_CALLBACK.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_CALLBACK.with(|c| c.set(was));
    if r.is_err() {
        eprintln!(
            "rcuvm: an MMU notifier callback panicked in the middle of a change to the address space; aborting"
        );
        std::process::abort();
    }
}

/// A range told to the notifiers (N1), to end with [`Notifiers::end`].
/// It holds the list for the whole bracket (N2), so that no notifier is
/// registered or unregistered between a start and its end: the mmap lock
/// excludes that for mm calls, but a fault's copy-on-write does not hold
/// it (found by a review: a notifier registered in between got an end
/// without a start, and KVM's in-progress count went below zero).
pub(crate) struct Pending<'a> {
    list: parking_lot::RwLockReadGuard<'a, Vec<(u64, Arc<dyn MmuNotifier>)>>,
    range: NotifierRange,
}

impl Notifiers {
    pub(crate) fn register(&self, n: Arc<dyn MmuNotifier>) -> u64 {
        assert_not_in_callback("register_notifier");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut l = self.list.write();
        l.push((id, n));
        self.any.store(true, Ordering::Release);
        id
    }

    pub(crate) fn unregister(&self, id: u64) -> bool {
        assert_not_in_callback("unregister_notifier");
        let mut l = self.list.write();
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        self.any.store(!l.is_empty(), Ordering::Release);
        l.len() != before
    }

    /// Whether any notifier is registered (N5).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// `invalidate_range_start` on every notifier, for a change made under
    /// the mmap write lock (which `register_notifier` and
    /// `unregister_notifier` take too, so the list cannot change before
    /// the matching [`Self::end_locked`]).
    pub(crate) fn start_locked(&self, start: u64, end: u64, event: NotifyEvent) -> Option<NotifierRange> {
        self.start(start, end, event).map(|p| p.range)
    }

    /// `invalidate_range_end` for a range [`Self::start_locked`] gave.
    pub(crate) fn end_locked(&self, r: Option<NotifierRange>) {
        if let Some(r) = r {
            for (_, n) in self.list.read().iter() {
                call(|| n.invalidate_range_end(&r));
            }
        }
    }

    /// `invalidate_range_start` on every notifier, for a change made
    /// without the mmap write lock (a fault's copy-on-write); the bracket,
    /// holding the list, to end.
    pub(crate) fn start(&self, start: u64, end: u64, event: NotifyEvent) -> Option<Pending<'_>> {
        if !self.active() {
            return None;
        }
        let range = NotifierRange { start, end, event };
        let list = self.list.read();
        for (_, n) in list.iter() {
            call(|| n.invalidate_range_start(&range));
        }
        Some(Pending { list, range })
    }

    /// `invalidate_range_end` for a bracket `start` opened.
    pub(crate) fn end(&self, p: Option<Pending<'_>>) {
        if let Some(p) = p {
            for (_, n) in p.list.iter() {
                call(|| n.invalidate_range_end(&p.range));
            }
        }
    }

    /// `release` on every notifier, which are then forgotten (N4).
    pub(crate) fn release(&self) {
        let l = std::mem::take(&mut *self.list.write());
        self.any.store(false, Ordering::Release);
        for (_, n) in l {
            call(|| n.release());
        }
    }
}
