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
//!   `madvise(MADV_DONTNEED/FREE)`; rights removed by `mprotect`; PTEs
//!   moved by `mremap`; a copy-on-write that replaces a present entry's
//!   frame) is bracketed: `invalidate_range_start` before the first PTE of
//!   the range changes, `invalidate_range_end` after the CPUs' TLB
//!   shootdown and before any frame it unmapped is freed. So a secondary
//!   MMU that drops its translations of the range in `start`, and creates
//!   none between `start` and `end` (KVM's `mmu_invalidate_in_progress`
//!   and sequence count; the test `tests/mmu_notifier.rs` has one), never
//!   reaches a frame after it was freed or reused.
//! - N2. Starts and ends pair up, one end per start with the same range,
//!   on the thread that made the change, in order; ranges of one mm call
//!   never nest.
//! - N3. Callbacks run under the mmap write lock (or, for a fault's
//!   copy-on-write, the fault's hold on its VMA) and must not call back
//!   into the address space's mm calls (they would wait for themselves).
//!   Reading its page tables through [`crate::AddressSpace::translate`] is
//!   allowed.
//! - N4. `release` runs once, when the address space is torn down, before
//!   its mappings go; no range callback follows it.
//! - N5. With no notifier registered, a change costs one relaxed load.
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
    /// Rights removed by `mprotect` (`MMU_NOTIFY_PROTECTION_VMA`).
    ProtectionVma,
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

/// A secondary MMU's hooks (N1–N4). Register with
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

impl Notifiers {
    pub(crate) fn register(&self, n: Arc<dyn MmuNotifier>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut l = self.list.write();
        l.push((id, n));
        self.any.store(true, Ordering::Release);
        id
    }

    pub(crate) fn unregister(&self, id: u64) -> bool {
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

    /// `invalidate_range_start` on every notifier; the range to end later.
    pub(crate) fn start(&self, start: u64, end: u64, event: NotifyEvent) -> Option<NotifierRange> {
        if !self.active() {
            return None;
        }
        let r = NotifierRange { start, end, event };
        for (_, n) in self.list.read().iter() {
            n.invalidate_range_start(&r);
        }
        Some(r)
    }

    /// `invalidate_range_end` for a range `start` gave.
    pub(crate) fn end(&self, r: Option<NotifierRange>) {
        if let Some(r) = r {
            // A notifier registered between start and end gets an end it
            // had no start for: harmless for the protocol of N1 (it holds
            // nothing of the range yet).
            for (_, n) in self.list.read().iter() {
                n.invalidate_range_end(&r);
            }
        }
    }

    /// `release` on every notifier, which are then forgotten (N4).
    pub(crate) fn release(&self) {
        let l = std::mem::take(&mut *self.list.write());
        self.any.store(false, Ordering::Release);
        for (_, n) in l {
            n.release();
        }
    }
}
