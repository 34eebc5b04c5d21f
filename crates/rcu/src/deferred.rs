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
//! - D3. A closure no bigger than a pointer, and aligned no more strictly,
//!   is kept in the `Deferred` itself, not boxed: `call` then allocates
//!   nothing, as Linux's `call_rcu()` allocates nothing (its `rcu_head` is
//!   inside the object). Why: the common callback captures one `Arc`
//!   (rcuvm's dead-entry expiry); boxed, each was an
//!   8-byte allocation freed on another call's path, and under glibc
//!   those small chunks collect in the fast bins until an allocation
//!   merges them all at once (`malloc_consolidate`), which made the
//!   rcuvm proc-vs-map writer's slowest calls (perf, cpu-clock).
//!
//! # Linux
//! `struct rcu_head` with its `func`; `kfree_rcu()` is [`Deferred::drop_box`].

use std::mem::{ManuallyDrop, MaybeUninit};

/// A pending callback.
pub(crate) struct Deferred {
    /// A `Box<F>`/`Box<T>` pointer, or (D3) the closure's own bytes.
    data: MaybeUninit<*mut ()>,
    call: unsafe fn(MaybeUninit<*mut ()>),
}

// SAFETY: D1: `data` always holds a `Box<F>`/`Box<T>` pointer or an `F`
// whose type is `Send`, and `call` only reconstitutes that box or value.
unsafe impl Send for Deferred {}

/// Whether `F` fits in the `data` word (D3).
const fn fits_inline<F>() -> bool {
    size_of::<F>() <= size_of::<*mut ()>() && align_of::<F>() <= align_of::<*mut ()>()
}

/// Reads an `F` kept in the word and calls it.
///
/// # Safety
/// `w` must hold an `F` written by [`Deferred::call`] (D3), not used since.
unsafe fn call_inline<F: FnOnce()>(w: MaybeUninit<*mut ()>) {
    // SAFETY: the caller guarantees `w` holds an unused `F`, written at its
    // start; `fits_inline::<F>()` made its size and alignment fit.
    let f = unsafe { std::ptr::read(w.as_ptr().cast::<F>()) };
    f();
}

/// Reconstitutes a `Box<F>` and calls it.
///
/// # Safety
/// `p` must come from `Box::<F>::into_raw` and not have been used since.
unsafe fn call_box<F: FnOnce()>(p: MaybeUninit<*mut ()>) {
    // SAFETY: the caller guarantees `p` is an unused `Box<F>` pointer.
    let f = unsafe { Box::from_raw(p.assume_init().cast::<F>()) };
    f();
}

/// Reconstitutes a `Box<T>` and drops it.
///
/// # Safety
/// `p` must come from `Box::<T>::into_raw` and not have been used since.
unsafe fn drop_box<T>(p: MaybeUninit<*mut ()>) {
    // SAFETY: the caller guarantees `p` is an unused `Box<T>` pointer.
    drop(unsafe { Box::from_raw(p.assume_init().cast::<T>()) });
}

impl Deferred {
    /// A closure to call later: kept inline if it fits (D3), else boxed.
    pub(crate) fn call<F: FnOnce() + Send + 'static>(f: F) -> Self {
        if fits_inline::<F>() {
            let mut data = MaybeUninit::<*mut ()>::uninit();
            // SAFETY: `F` fits in the word, in size and alignment (checked
            // just above); the word is ours to write.
            unsafe { data.as_mut_ptr().cast::<F>().write(f) };
            Self { data, call: call_inline::<F> }
        } else {
            Self { data: MaybeUninit::new(Box::into_raw(Box::new(f)).cast()), call: call_box::<F> }
        }
    }

    /// A box to drop later, without a second allocation.
    pub(crate) fn drop_box<T: Send + 'static>(b: Box<T>) -> Self {
        Self { data: MaybeUninit::new(Box::into_raw(b).cast()), call: drop_box::<T> }
    }

    /// Runs the callback (D2).
    pub(crate) fn run(self) {
        let me = ManuallyDrop::new(self);
        // SAFETY: `data` was written by the constructor that chose `call`
        // (a box pointer, or D3's inline `F`), and `ManuallyDrop` keeps
        // `Drop` from using it a second time (D2).
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
    fn a_closure_of_one_word_runs_inline_and_others_boxed() {
        let n = Arc::new(AtomicUsize::new(0));
        // One `Arc`: inline (D3).
        let a = n.clone();
        let f = move || {
            a.fetch_add(1, Ordering::SeqCst);
        };
        assert!(fits_inline::<Arc<AtomicUsize>>() && !fits_inline::<[u64; 2]>());
        Deferred::call(f).run();
        // Two `Arc`s: boxed; dropped, not run by hand.
        let (b, c) = (n.clone(), n.clone());
        drop(Deferred::call(move || {
            b.fetch_add(10, Ordering::SeqCst);
            c.fetch_add(100, Ordering::SeqCst);
        }));
        // Zero-sized, and a byte with seven bytes of the word left unset.
        static BYTES: AtomicUsize = AtomicUsize::new(0);
        Deferred::call(|| {}).run();
        let flag = 7u8;
        drop(Deferred::call(move || {
            BYTES.fetch_add(usize::from(flag), Ordering::SeqCst);
        }));
        assert_eq!(BYTES.load(Ordering::SeqCst), 7);
        assert_eq!(n.load(Ordering::SeqCst), 111);
        // Every clone went with its closure.
        assert_eq!(Arc::strong_count(&n), 1);
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
