//! The sync facade: the only file of the crate that names concurrency primitives.
//!
//! # Owns
//! Nothing at run time. It chooses, at compile time, between `std` and `loom`
//! implementations of the atomics, locks, threads and thread-locals the rest of
//! the crate uses, so that the same protocol code runs natively and under the
//! loom model checker.
//!
//! # Invariants
//! - S1. Both halves export the same names with the same API. `Mutex::lock`
//!   never reports poisoning: a panic in a callback or a test must not turn
//!   every later grace period into a second panic.
//! - S2. Under loom, "heavy" fences become `fence(SeqCst)` (loom cannot model
//!   `membarrier`) and every wait loop yields to the scheduler.
//!
//! # Linux
//! Plays the role of `include/linux/compiler.h` and `asm/barrier.h`.

#[cfg(not(rcuvm_loom))]
mod imp {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering, fence};
    pub(crate) use std::thread::{self, JoinHandle};

    /// A mutex that ignores poisoning (S1).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// A condition variable paired with [`Mutex`], ignoring poisoning (S1).
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(std::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(std::sync::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(g).unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all()
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one()
        }
        /// Waits for a notification or until `dur` passed.
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            g: MutexGuard<'a, T>,
            dur: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            match self.0.wait_timeout(g, dur) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            }
        }
    }

    /// A compiler-only barrier: the reader half of an asymmetric fence.
    #[inline(always)]
    pub(crate) fn compiler_fence() {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    /// Spin-wait hint.
    #[inline(always)]
    pub(crate) fn spin_loop() {
        std::hint::spin_loop();
    }

    /// Sleep for a short while (writer-side backoff only).
    pub(crate) fn sleep_us(us: u64) {
        std::thread::sleep(std::time::Duration::from_micros(us));
    }

    /// Whether `d` has passed since `since`.
    pub(crate) fn has_passed(since: std::time::Instant, d: std::time::Duration) -> bool {
        since.elapsed() >= d
    }

    /// Nanoseconds since `epoch`.
    pub(crate) fn elapsed_ns(epoch: std::time::Instant) -> u64 {
        epoch.elapsed().as_nanos() as u64
    }

    /// Declares a thread-local; `const` initialised so access is a plain
    /// TLS offset with no lazy-init check.
    macro_rules! rcu_thread_local {
        ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
            std::thread_local! { $(#[$m])* static $name: $t = const { $init }; }
        };
    }
    pub(crate) use rcu_thread_local;

    /// Whether the heavy writer fence may be a `membarrier` system call.
    pub(crate) const MODEL: bool = false;
}

#[cfg(rcuvm_loom)]
mod imp {
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering, fence};
    pub(crate) use loom::thread::{self, JoinHandle};

    /// loom's mutex, with the std facade's unpoisoned API (S1).
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// loom's condition variable with the std facade's API.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(g).unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all()
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one()
        }
        /// loom does not model time (and its own `wait_timeout` never times
        /// out): return at once, a legal spurious wakeup.
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            g: MutexGuard<'a, T>,
            _dur: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            g
        }
    }

    /// Under loom the reader half is a real fence (S2).
    #[inline(always)]
    pub(crate) fn compiler_fence() {
        fence(Ordering::SeqCst);
    }

    /// Under loom every wait loop yields (S2).
    pub(crate) fn spin_loop() {
        loom::thread::yield_now();
    }

    /// Under loom sleeping is yielding (S2).
    pub(crate) fn sleep_us(_us: u64) {
        loom::thread::yield_now();
    }

    /// loom does not model time: every delay has passed (as after a
    /// `wait_timeout` that timed out).
    pub(crate) fn has_passed(_since: std::time::Instant, _d: std::time::Duration) -> bool {
        true
    }

    /// As `has_passed`: later than any deadline.
    pub(crate) fn elapsed_ns(_epoch: std::time::Instant) -> u64 {
        u64::MAX
    }

    macro_rules! rcu_thread_local {
        ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
            loom::thread_local! { $(#[$m])* static $name: $t = $init; }
        };
    }
    pub(crate) use rcu_thread_local;

    /// Whether the heavy writer fence may be a `membarrier` system call.
    pub(crate) const MODEL: bool = true;
}

pub(crate) use imp::*;
