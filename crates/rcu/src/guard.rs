//! The read-side critical section.
//!
//! # Owns
//! [`Guard`]: proof that the current thread is inside a read-side section of
//! one domain.
//!
//! # Invariants
//! - G1. While a `Guard` exists, no grace period of its domain that started
//!   after the guard was taken can complete. Every reference obtained through
//!   the guard borrows it, so it cannot outlive the section (checked by the
//!   compiler; see the `compile_fail` examples below).
//! - G2. A `Guard` stays on the thread that took it (`!Send`, `!Sync`): its
//!   counter belongs to that thread (reader.rs R2).
//!
//! # Concurrency
//! Taking and dropping a guard is owner-thread only and lock-free.
//!
//! # Linux
//! `rcu_read_lock()` / `rcu_read_unlock()`.

use std::fmt;
use std::marker::PhantomData;

use crate::domain::DomainInner;
use crate::reader::{self, ReaderSlot};
use crate::sync::Arc;

/// A read-side critical section of a [`Domain`](crate::Domain).
///
/// Created by [`Domain::read`](crate::Domain::read); the section ends when the
/// guard is dropped. Guards nest: a thread may take several at once, and the
/// section ends with the last one.
///
/// A reference loaded under a guard cannot outlive it:
///
/// ```compile_fail,E0597
/// use rcuvm_rcu::{Domain, RcuPtr};
/// let d = Domain::new();
/// let p = RcuPtr::new(&d, Some(Box::new(7)));
/// let r;
/// {
///     let g = d.read();
///     r = p.load(&g);
/// }
/// println!("{r:?}"); // `g` does not live long enough
/// ```
///
/// and a guard cannot move to another thread:
///
/// ```compile_fail,E0277
/// use rcuvm_rcu::Domain;
/// let d = Domain::new();
/// let g = d.read();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(g)); // `*const ReaderSlot` cannot be sent
/// });
/// ```
///
/// Context: any thread, including a signal handler once the thread has used
/// the domain before.
#[must_use = "the read-side section ends when the guard is dropped"]
pub struct Guard<'d> {
    /// Valid while the domain is borrowed (reader.rs R1); makes the guard
    /// `!Send`. One word, so a guard costs one register.
    slot: *const ReaderSlot,
    _domain: PhantomData<&'d DomainInner>,
}

impl<'d> Guard<'d> {
    /// Enters a section of `domain`.
    #[inline(always)]
    pub(crate) fn enter(domain: &'d Arc<DomainInner>) -> Self {
        let slot = reader::slot_for(domain);
        // SAFETY: `slot_for` returns this thread's slot of `domain`, alive
        // while `domain` is (reader.rs R1); only this thread writes it (R2).
        unsafe { (*slot).lock(&domain.read_side) };
        Guard { slot, _domain: PhantomData }
    }

    /// Enters a section through a slot the caller already looked up.
    #[inline(always)]
    fn enter_slot(domain: &'d DomainInner, slot: *const ReaderSlot) -> Self {
        // SAFETY: `slot` is this thread's slot of `domain` (a `Reader` is
        // `!Send` and was made on this thread), alive while `domain` is (R1).
        unsafe { (*slot).lock(&domain.read_side) };
        Guard { slot, _domain: PhantomData }
    }

    /// The id of the domain this section belongs to.
    #[inline(always)]
    pub fn domain_id(&self) -> u64 {
        // SAFETY: as in `drop`: the slot outlives the borrowed domain.
        unsafe { (*self.slot).domain_id() }
    }
}

impl Drop for Guard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `enter`: the slot outlives the borrowed domain, and
        // this guard never left its thread (G2).
        unsafe { (*self.slot).unlock() }
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("domain", &self.domain_id()).finish()
    }
}

/// This thread's registration in a domain, for hot loops: [`Reader::read`]
/// skips the thread-local lookup that [`Domain::read`](crate::Domain::read)
/// does (liburcu's `rcu_register_thread()` made explicit).
///
/// `!Send`: it names this thread's counter.
///
/// ```compile_fail,E0277
/// use rcuvm_rcu::Domain;
/// let d = Domain::new();
/// let r = d.reader();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(r.read())); // a Reader cannot move threads
/// });
/// ```
///
/// # Examples
/// ```
/// use rcuvm_rcu::Domain;
/// let d = Domain::new();
/// let r = d.reader();
/// for _ in 0..3 {
///     let g = r.read();
///     assert!(d.in_read_section());
///     drop(g);
/// }
/// ```
pub struct Reader<'d> {
    domain: &'d DomainInner,
    slot: *const ReaderSlot,
}

impl<'d> Reader<'d> {
    pub(crate) fn new(domain: &'d Arc<DomainInner>) -> Self {
        let slot = reader::slot_for(domain);
        // SAFETY: R1: the slot lives as long as `domain`'s registry, which
        // `domain` (borrowed for 'd) keeps.
        unsafe { &*slot }.reader_made();
        Reader { domain, slot }
    }

    /// Enters a read-side section; the same as `Domain::read`, minus the
    /// lookup.
    #[inline(always)]
    pub fn read(&self) -> Guard<'d> {
        Guard::enter_slot(self.domain, self.slot)
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `new`: the domain is still borrowed.
        unsafe { &*self.slot }.reader_dropped();
    }
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("domain", &self.domain.id()).finish()
    }
}
