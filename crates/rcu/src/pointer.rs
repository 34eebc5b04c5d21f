//! The RCU-protected pointer cell and the values unlinked from it.
//!
//! # Owns
//! [`RcuPtr`] (a nullable owning pointer readers load under a [`Guard`]) and
//! [`Unlinked`] (a value no longer reachable from its cell, waiting for its
//! grace period).
//!
//! # Invariants
//! - X1. A pointer stored in an `RcuPtr` came from `Box::into_raw` and is
//!   owned by the cell until a writer swaps it out; then it is owned by the
//!   returned `Unlinked`, which frees it only after a grace period of the
//!   cell's domain (`retire`, `synchronize`, or a successful `try_reclaim`).
//! - X2. `load` and `replace` only accept a guard of the cell's own domain
//!   (checked at run time: a comparison of domain ids); the reference
//!   `load` returns borrows the guard, and the one `replace`'s closure gets
//!   lasts for the call (checked at compile time).
//!
//! # Concurrency
//! `load`: read side, any thread holding a guard. `swap`, `store`, `take`,
//! `compare_exchange`: any thread; `replace`: any thread holding a guard.
//! Concurrent writers are allowed (each one atomically takes the value it
//! replaced).
//!
//! # Linux
//! `rcu_dereference()`, `rcu_assign_pointer()`, `rcu_replace_pointer()`.

use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr::{self, NonNull};

use crate::callback;
use crate::deferred::Deferred;
use crate::domain::{Domain, DomainInner};
use crate::grace::GpState;
use crate::guard::Guard;
use crate::sync::{Arc, AtomicPtr, Ordering};

/// An RCU-protected, nullable, owning pointer to a `T`.
///
/// # Examples
/// ```
/// use rcuvm_rcu::{Domain, RcuPtr};
///
/// let d = Domain::new();
/// let p = RcuPtr::new(&d, Some(Box::new(1u64)));
/// // Read-copy-update: compute the new version from the old one.
/// let g = d.read();
/// let old = p.replace(&g, |cur| Some(Box::new(cur.copied().unwrap_or(0) + 1)));
/// assert_eq!(p.load(&g), Some(&2));
/// drop(g);
/// assert_eq!(*old.unwrap().synchronize(), 1);
/// ```
pub struct RcuPtr<T: Send + Sync + 'static> {
    ptr: AtomicPtr<T>,
    domain: Arc<DomainInner>,
    _owns: PhantomData<Box<T>>,
}

fn into_raw<T>(b: Option<Box<T>>) -> *mut T {
    b.map_or(ptr::null_mut(), Box::into_raw)
}

impl<T: Send + Sync + 'static> RcuPtr<T> {
    /// A cell protected by `domain`'s grace periods.
    pub fn new(domain: &Domain, value: Option<Box<T>>) -> Self {
        Self { ptr: AtomicPtr::new(into_raw(value)), domain: domain.inner.clone(), _owns: PhantomData }
    }

    /// The current value, valid for as long as `guard` lives (X2).
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    #[inline]
    pub fn load<'g>(&self, guard: &'g Guard<'_>) -> Option<&'g T> {
        assert!(
            guard.domain_id() == self.domain.id(),
            "rcuvm-rcu: RcuPtr::load with a guard of another domain"
        );
        // ORDERING: Acquire pairs with the Release half of the writers'
        // swap/compare_exchange: the pointee's initialisation is visible.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: X1: a non-null pointer is a live `Box<T>`; it is freed only
        // after a grace period, which cannot end while `guard` (a section of
        // this domain, checked above) lives, and the result borrows `guard`.
        unsafe { p.as_ref() }
    }

    /// Whether the cell is null right now (a hint for writers).
    pub fn is_null(&self) -> bool {
        self.ptr.load(Ordering::Relaxed).is_null()
    }

    fn unlinked(&self, p: *mut T) -> Option<Unlinked<T>> {
        NonNull::new(p).map(|ptr| Unlinked {
            ptr,
            state: self.domain.get_state(),
            domain: self.domain.clone(),
            _owns: PhantomData,
        })
    }

    /// Publishes `new` and hands back the value it replaced.
    pub fn swap(&self, new: Option<Box<T>>) -> Option<Unlinked<T>> {
        // ORDERING: AcqRel: Release publishes `new`'s contents to readers;
        // Acquire makes the old value's contents ours to drop.
        let old = self.ptr.swap(into_raw(new), Ordering::AcqRel);
        self.unlinked(old)
    }

    /// Publishes `new`; the same as `swap(Some(new))`.
    pub fn store(&self, new: Box<T>) -> Option<Unlinked<T>> {
        self.swap(Some(new))
    }

    /// Clears the cell and hands back its value.
    pub fn take(&self) -> Option<Unlinked<T>> {
        self.swap(None)
    }

    /// Publishes `new` only if the cell still holds `current` (compared by
    /// address). On failure `new` is handed back with the value found.
    #[allow(clippy::type_complexity)]
    pub fn compare_exchange(
        &self,
        current: Option<&T>,
        new: Option<Box<T>>,
    ) -> Result<Option<Unlinked<T>>, Option<Box<T>>> {
        let cur = current.map_or(ptr::null_mut(), |r| ptr::from_ref(r).cast_mut());
        let new = into_raw(new);
        // ORDERING: as in `swap`; failure needs no ordering (we read nothing).
        match self.ptr.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(old) => Ok(self.unlinked(old)),
            // SAFETY: `new` came from `into_raw` just above and was never
            // published, so it is still uniquely ours.
            Err(_) => Err(NonNull::new(new).map(|p| unsafe { Box::from_raw(p.as_ptr()) })),
        }
    }

    /// Read-copy-update: builds the new value from the current one (read
    /// under `guard`, a section of the cell's domain, X2) and publishes it
    /// if no other writer got there first, retrying otherwise. Hands back
    /// the old value.
    ///
    /// Why the caller's guard and not one of its own: a guard borrows its
    /// [`Domain`], so the domain cannot be dropped while `f` reads (a
    /// dropped domain runs retired values' callbacks at once, callback.rs
    /// C4). A section entered from the cell's own handle on the domain
    /// borrowed nothing, and a value `f` was reading could be freed under
    /// it (found by a review: a use after free from safe code).
    ///
    /// The guard keeps the domain alive, so this does not compile:
    /// ```compile_fail
    /// use rcuvm_rcu::{Domain, RcuPtr};
    /// let d = Domain::new();
    /// let p = RcuPtr::new(&d, Some(Box::new(1u64)));
    /// let g = d.read();
    /// drop(d); // error: `d` is borrowed by `g`
    /// let _ = p.replace(&g, |_| None);
    /// ```
    ///
    /// # Panics
    /// If `guard` belongs to another domain.
    pub fn replace<F>(&self, guard: &Guard<'_>, mut f: F) -> Option<Unlinked<T>>
    where
        F: FnMut(Option<&T>) -> Option<Box<T>>,
    {
        assert!(
            guard.domain_id() == self.domain.id(),
            "rcuvm-rcu: RcuPtr::replace with a guard of another domain"
        );
        loop {
            // ORDERING: Acquire as in `load`.
            let cur = self.ptr.load(Ordering::Acquire);
            // SAFETY: as in `load`: `guard` is a section of this cell's
            // domain (checked above), which it borrows, and `f`'s reference
            // does not outlive this call.
            let new = into_raw(f(unsafe { cur.as_ref() }));
            // ORDERING: as in `swap`.
            match self.ptr.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(old) => {
                    return self.unlinked(old);
                }
                Err(_) => {
                    if let Some(p) = NonNull::new(new) {
                        // SAFETY: never published; still uniquely ours.
                        drop(unsafe { Box::from_raw(p.as_ptr()) });
                    }
                }
            }
        }
    }
}

impl<T: Send + Sync + 'static> Drop for RcuPtr<T> {
    fn drop(&mut self) {
        // A reader may still hold the current value (its reference borrows
        // its guard, not the cell), so it is retired, not freed.
        let p = self.ptr.load(Ordering::Relaxed);
        if let Some(u) = self.unlinked(p) {
            u.retire();
        }
    }
}

impl<T: Send + Sync + 'static + fmt::Debug> fmt::Debug for RcuPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcuPtr").field("ptr", &self.ptr.load(Ordering::Relaxed)).finish()
    }
}

/// A value unlinked from an [`RcuPtr`]: readers that loaded it before it was
/// unlinked may still use it until a grace period ends.
///
/// Dropping it retires it (it is freed after a grace period). It dereferences
/// to the old value, which the writer may still read.
#[must_use = "dropping an Unlinked retires it; say so with .retire()"]
pub struct Unlinked<T: Send + 'static> {
    ptr: NonNull<T>,
    state: GpState,
    domain: Arc<DomainInner>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: an `Unlinked<T>` is a `Box<T>` with a deferred drop: it may move to
// (and be dropped on) another thread when `T: Send`…
unsafe impl<T: Send + 'static> Send for Unlinked<T> {}
// SAFETY: …and shared `&Unlinked<T>` only hands out `&T`, so `T: Sync` suffices.
unsafe impl<T: Send + Sync + 'static> Sync for Unlinked<T> {}

impl<T: Send + 'static> Unlinked<T> {
    fn into_parts(self) -> (NonNull<T>, Arc<DomainInner>) {
        let me = ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so reading the Arc out
        // of it moves it rather than duplicating it.
        (me.ptr, unsafe { ptr::read(&me.domain) })
    }

    /// Frees the value after a grace period. Linux: `kfree_rcu()`.
    ///
    /// Context: any, including inside a read-side section.
    pub fn retire(self) {
        let (p, d) = self.into_parts();
        // SAFETY: X1: `p` is the unique owner of a `Box<T>`.
        let b = unsafe { Box::from_raw(p.as_ptr()) };
        callback::enqueue(&d, Deferred::drop_box(b));
    }

    /// Waits for a grace period (unless one already elapsed) and gives the
    /// value back, free of readers, to reuse or drop.
    ///
    /// # Panics
    /// Inside a read-side section of the cell's domain.
    pub fn synchronize(self) -> Box<T> {
        if !self.domain.poll_state(self.state) {
            self.domain.assert_outside_read_section("Unlinked::synchronize()");
            self.domain.synchronize_unchecked(false);
        }
        let (p, _d) = self.into_parts();
        // SAFETY: X1, and a full grace period elapsed since the unlink.
        unsafe { Box::from_raw(p.as_ptr()) }
    }

    /// The value, if a full grace period has already elapsed since it was
    /// unlinked; otherwise `self` back. Never waits.
    pub fn try_reclaim(self) -> Result<Box<T>, Self> {
        if self.domain.poll_state(self.state) {
            let (p, _d) = self.into_parts();
            // SAFETY: X1, and a full grace period elapsed since the unlink.
            Ok(unsafe { Box::from_raw(p.as_ptr()) })
        } else {
            Err(self)
        }
    }
}

impl<T: Send + 'static> Deref for Unlinked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: X1: we own the box until it is retired or reclaimed.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Send + 'static> Drop for Unlinked<T> {
    fn drop(&mut self) {
        // SAFETY: X1: we are the unique owner of the box, and this is the
        // last use of `ptr`.
        let b = unsafe { Box::from_raw(self.ptr.as_ptr()) };
        callback::enqueue(&self.domain, Deferred::drop_box(b));
    }
}

impl<T: Send + 'static + fmt::Debug> fmt::Debug for Unlinked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Unlinked").field(&**self).finish()
    }
}
