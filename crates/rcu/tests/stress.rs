//! Multi-threaded stress with use-after-free canaries.
//!
//! Every published object carries a canary that its `Drop` overwrites (and a
//! generation it checks). Readers keep loading and re-checking objects for
//! the whole of their section; writers replace them and free the old ones
//! through every path the crate offers: `retire`, `Unlinked::synchronize`,
//! expedited grace periods and `try_reclaim`. A freed object seen by a reader
//! shows up as a broken canary. The objects are also recycled through a
//! free list, so a premature free turns into a visibly *changed* object even
//! if the allocator would have left the memory alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rcuvm_rcu::{Config, Domain, RcuPtr};

const ALIVE: u64 = 0xA11C_E5A1_1CE5_A11C;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

struct Canary {
    canary: AtomicU64,
    /// Written once before publication, checked against `canary` by readers.
    value: AtomicU64,
    drops: Arc<AtomicUsize>,
}

impl Canary {
    fn new(value: u64, drops: &Arc<AtomicUsize>) -> Box<Self> {
        Box::new(Canary { canary: AtomicU64::new(ALIVE), value: AtomicU64::new(value), drops: drops.clone() })
    }
    fn check(&self) {
        let c = self.canary.load(Ordering::Relaxed);
        assert_eq!(c, ALIVE, "use after free: a reader saw a freed object (canary {c:#x})");
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.check(); // a double free would trip this
        self.canary.store(DEAD, Ordering::Relaxed);
        self.value.store(u64::MAX, Ordering::Relaxed);
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

fn run(domain: Config, readers: usize, writers: usize, slots: usize, dur: Duration) {
    let d = Arc::new(Domain::with_config(domain));
    let drops = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(slots));
    let cells: Arc<Vec<RcuPtr<Canary>>> =
        Arc::new((0..slots).map(|i| RcuPtr::new(&d, Some(Canary::new(i as u64, &drops)))).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for r in 0..readers {
        let (d, cells, stop, reads) = (d.clone(), cells.clone(), stop.clone(), reads.clone());
        hs.push(thread::spawn(move || {
            let mut n = 0u64;
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let g = d.read();
                let mut held = Vec::with_capacity(4);
                for k in 0..4 {
                    if let Some(o) = cells[(i + k * 7) % cells.len()].load(&g) {
                        o.check();
                        held.push(o);
                    }
                }
                // Nested section, then keep re-checking everything loaded
                // under the outer one: all of it must stay alive.
                {
                    let g2 = d.read();
                    if let Some(o) = cells[i % cells.len()].load(&g2) {
                        o.check();
                    }
                }
                for _ in 0..8 {
                    for o in &held {
                        o.check();
                        let v = o.value.load(Ordering::Relaxed);
                        assert_ne!(v, u64::MAX, "reader saw a value overwritten by drop");
                    }
                    std::hint::spin_loop();
                }
                drop(g);
                i = i.wrapping_add(1);
                n += 1;
            }
            reads.fetch_add(n, Ordering::Relaxed);
        }));
    }
    for w in 0..writers {
        let (d, cells, stop, drops, made) =
            (d.clone(), cells.clone(), stop.clone(), drops.clone(), made.clone());
        hs.push(thread::spawn(move || {
            let mut k = w as u64;
            while !stop.load(Ordering::Relaxed) {
                let idx = (k as usize * 31 + w) % cells.len();
                let old = cells[idx].store(Canary::new(k, &drops));
                made.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = old {
                    match k % 8 {
                        // Mostly deferred frees; some synchronous ones.
                        0 => drop(old.synchronize()),
                        1 => {
                            d.synchronize_expedited();
                            drop(old.try_reclaim().unwrap_or_else(|_| panic!("a grace period elapsed")));
                        }
                        2 => {
                            // Reuse the old object in place after a grace
                            // period: what a premature free would corrupt.
                            let b = old.synchronize();
                            b.check();
                            b.value.store(k, Ordering::Relaxed);
                            cells[idx].store(b).unwrap().retire();
                        }
                        _ => old.retire(),
                    }
                }
                k += writers as u64;
            }
        }));
    }
    thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    drop(cells);
    d.barrier();
    let s = d.stats();
    let made = made.load(Ordering::Relaxed);
    assert_eq!(drops.load(Ordering::Relaxed), made, "every object is freed exactly once");
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(s.callbacks_pending_max <= (d.config().callback_limit + writers + 1) as u64);
    assert_eq!(s.callbacks_pending, 0);
}

#[test]
fn readers_never_see_freed_objects() {
    run(Config::default(), 2, 2, 16, Duration::from_millis(1500));
}

#[test]
fn readers_never_see_freed_objects_with_a_tiny_backlog_limit() {
    // Forces the help/expedite path of the bounded backlog all the time.
    run(Config::default().callback_limit(8), 2, 2, 4, Duration::from_millis(1500));
}

#[test]
fn many_short_lived_reader_threads() {
    let d = Arc::new(Domain::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = Arc::new(RcuPtr::new(&d, Some(Canary::new(0, &drops))));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cell, stop, drops) = (cell.clone(), stop.clone(), drops.clone());
        thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                cell.store(Canary::new(n, &drops)).unwrap().retire();
                n += 1;
            }
            n
        })
    };
    let t0 = Instant::now();
    let mut spawned = 0;
    while t0.elapsed() < Duration::from_millis(800) {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (d, cell) = (d.clone(), cell.clone());
                thread::spawn(move || {
                    for _ in 0..100 {
                        let g = d.read();
                        cell.load(&g).unwrap().check();
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        spawned += 2;
    }
    stop.store(true, Ordering::Relaxed);
    let made = writer.join().unwrap();
    drop(cell);
    d.barrier();
    assert_eq!(drops.load(Ordering::Relaxed) as u64, made);
    // Slots are recycled: far fewer than the threads that came and went.
    assert!(d.stats().reader_slots <= 4, "{} slots for {spawned} threads", d.stats().reader_slots);
}
