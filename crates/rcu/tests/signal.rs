//! Read-side sections inside a signal handler, interrupting read-side
//! sections of the same thread.
//!
//! After a thread's first use of a domain, `read()` takes no lock and
//! allocates nothing (reader.rs R5), so a handler may use it. The handler
//! below interrupts the main thread wherever it is, including half-way
//! through its own `read()`/`drop`, and checks that the value it loads is
//! alive; a writer meanwhile replaces and frees values, so a section whose
//! counter was corrupted by the interruption would let a free through.

#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rcuvm_rcu::{Domain, RcuPtr};

struct V(AtomicU64);
impl Drop for V {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

static DOMAIN: OnceLock<Domain> = OnceLock::new();
static CELL: OnceLock<RcuPtr<V>> = OnceLock::new();
static HANDLED: AtomicUsize = AtomicUsize::new(0);
static BAD: AtomicUsize = AtomicUsize::new(0);

extern "C" fn handler(_: libc::c_int) {
    let (Some(d), Some(c)) = (DOMAIN.get(), CELL.get()) else { return };
    let g = d.read();
    match c.load(&g) {
        Some(v) if v.0.load(Ordering::Relaxed) != 0 => {}
        _ => {
            BAD.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(g);
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn read_sections_in_a_signal_handler() {
    let d = DOMAIN.get_or_init(Domain::new);
    let cell = CELL.get_or_init(|| RcuPtr::new(d, Some(Box::new(V(AtomicU64::new(1))))));
    // First use on this thread happens outside the handler (R5).
    drop(d.read());
    // SAFETY: installs a handler that only uses async-signal-safe operations
    // after first use: TLS reads, atomics, no allocation, no lock.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `me` is the main test thread, alive until `stop`.
                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
                thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 2;
            while !stop.load(Ordering::Relaxed) {
                let old = cell.store(Box::new(V(AtomicU64::new(n)))).unwrap();
                drop(old.synchronize());
                n += 1;
            }
        })
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(700) {
        let g = d.read();
        let v = cell.load(&g).unwrap();
        let inner = d.read();
        assert_ne!(v.0.load(Ordering::Relaxed), 0);
        drop(inner);
        assert_ne!(v.0.load(Ordering::Relaxed), 0);
        drop(g);
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    writer.join().unwrap();
    assert!(
        HANDLED.load(Ordering::Relaxed) > 100,
        "only {} signals handled",
        HANDLED.load(Ordering::Relaxed)
    );
    assert_eq!(BAD.load(Ordering::Relaxed), 0);
    assert!(!d.in_read_section());
}
