//! A type-erased callback: one pointer and one function, no double boxing.
//!
//! # Owns
//! [`Deferred`], the unit the callback queue stores.
//!
//! # Invariants
//! - D1. A `Deferred` is built only from a `Send + 'static` payload, so it may
//!   run on the reclaimer thread at any later time.
//! - D2. It runs exactly once: [`Deferred::run`] consumes it, and dropping one
//!   that never ran runs it too (the queue only drops callbacks after a
//!   grace period, so running is always what "drop" should mean).
//!
//! # Linux
//! `struct rcu_head` with its `func`; `kfree_rcu()` is [`Deferred::drop_box`].

use std::mem::ManuallyDrop;

/// A pending callback.
pub(crate) struct Deferred {
    data: *mut (),
    call: unsafe fn(*mut ()),
}

// SAFETY: D1: `data` always comes from a `Box<F>`/`Box<T>` whose `F`/`T` is
// `Send`, and `call` only reconstitutes that box.
unsafe impl Send for Deferred {}

/// Reconstitutes a `Box<F>` and calls it.
///
/// # Safety
/// `p` must come from `Box::<F>::into_raw` and not have been used since.
unsafe fn call_box<F: FnOnce()>(p: *mut ()) {
    // SAFETY: the caller guarantees `p` is an unused `Box<F>` pointer.
    let f = unsafe { Box::from_raw(p.cast::<F>()) };
    f();
}

/// Reconstitutes a `Box<T>` and drops it.
///
/// # Safety
/// `p` must come from `Box::<T>::into_raw` and not have been used since.
unsafe fn drop_box<T>(p: *mut ()) {
    // SAFETY: the caller guarantees `p` is an unused `Box<T>` pointer.
    drop(unsafe { Box::from_raw(p.cast::<T>()) });
}

impl Deferred {
    /// A closure to call later.
    pub(crate) fn call<F: FnOnce() + Send + 'static>(f: F) -> Self {
        Self { data: Box::into_raw(Box::new(f)).cast(), call: call_box::<F> }
    }

    /// A box to drop later, without a second allocation.
    pub(crate) fn drop_box<T: Send + 'static>(b: Box<T>) -> Self {
        Self { data: Box::into_raw(b).cast(), call: drop_box::<T> }
    }

    /// Runs the callback (D2).
    pub(crate) fn run(self) {
        let me = ManuallyDrop::new(self);
        // SAFETY: `data` came from the matching `into_raw` in a constructor,
        // and `ManuallyDrop` keeps `Drop` from using it a second time (D2).
        unsafe { (me.call)(me.data) }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // SAFETY: as in `run`; `drop` is only reached when `run` was not (D2).
        unsafe { (self.call)(self.data) }
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_once_whether_run_or_dropped() {
        let n = Arc::new(AtomicUsize::new(0));
        let a = n.clone();
        Deferred::call(move || {
            a.fetch_add(1, Ordering::SeqCst);
        })
        .run();
        let b = n.clone();
        drop(Deferred::call(move || {
            b.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn drop_box_drops_the_value() {
        let n = Arc::new(AtomicUsize::new(0));
        struct D(Arc<AtomicUsize>);
        impl Drop for D {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        Deferred::drop_box(Box::new(D(n.clone()))).run();
        Deferred::drop_box(Box::new(())).run();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
