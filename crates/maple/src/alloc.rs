//! Node memory: 256-byte blocks, recycled through a per-tree pool.
//!
//! # Owns
//! [`NodePool`] (blocks that have been through a grace period, ready for
//! reuse) and [`Blocks`] (the writer's own stock, refilled from the pool).
//!
//! # Invariants
//! - A1. Every block in the pool or the writer's stock is unreachable by any
//!   reader: it only enters the pool from a grace-period callback (write.rs
//!   R1), so the writer may overwrite it at once.
//! - A2. The pool keeps at most `cap` blocks: a quarter of the tree's live
//!   nodes (at least `POOL_MIN`), plus the most blocks that were waiting
//!   for their grace period at once over the last [`PEAK_WINDOW`] to
//!   twice that many batches retired. What does not fit goes back to the
//!   global allocator. A tree that stops churning keeps what its pool
//!   holds (at most that peak, which was memory waiting to be freed
//!   anyway) until its writer's next stores use it or the tree is
//!   dropped, as a `kmem_cache` keeps its slabs until shrunk. Measured:
//!   a peak of 2,600–7,000 blocks (0.7–1.8 MiB) in flight for 500 live
//!   nodes in rcuvm's mm_allocs test.
//! - A3. Why the blocks in flight count: a writer that churns retires
//!   blocks at the rate it builds them, and they come back a grace period
//!   later, all of a grace period's batches at once; over the next one
//!   the writer needs about as many again. A pool capped at a quarter of a
//!   small tree freed most of them to the allocator and the writer
//!   allocated as many anew (2.06 node allocations and frees per
//!   mmap+munmap pair on a tree of 4,000 entries under rcuvm's `rcu-dead`,
//!   0.46 under `vma-lock`; a cap of four times the blocks still in flight
//!   when a batch came back left 0.03 and 0.46). With the peak,
//!   0.000–0.008 under every strategy (rcuvm's `tests/mm_allocs.rs` prints the
//!   census). The memory kept for this is at most what was already
//!   waiting to be freed at the peak. Each allocation counts twice over
//!   under glibc: an aligned block is carved out of a larger chunk whose
//!   ends are freed as small chunks into the fast bins, which an
//!   allocation later merges all at once (`malloc_consolidate`, up to
//!   0.9 ms in rcuvm's proc-vs-map writer, uprobes).
//! - A4. Nobody waits for the pool's lock: a writer that finds it taken
//!   builds its node in a fresh block, and a batch that finds it taken
//!   frees its blocks to the allocator. Why: the lock is taken by the
//!   writer (refill, under the caller's lock: rcuvm's mmap lock) and by
//!   whichever thread runs the batches (the writer after its mm calls, or
//!   the RCU reclaimer), and a holder that loses its CPU keeps it for as
//!   long as it waits for one. In rcuvm's proc-vs-map, with every CPU
//!   busy, the writer waited 7–70 µs on it a few times a run, a refill
//!   under the mmap lock among them (a scratch build that timed the lock).
//!
//! # Why
//! Without the pool, the writer allocates every node and the reclaimer
//! thread frees it: with glibc's allocator that is a cross-thread free per
//! node, and under churn the two threads fight over the arena lock (measured:
//! 135 k context switches and ~6 µs per store at 10^4 entries, against
//! ~1 µs with frees on the writer's thread). Linux recycles maple nodes
//! through `kmem_cache` for the same reason. The pool is handed over in
//! batches: one lock per grace-period callback and per refill.

use std::alloc::Layout;
use std::ptr::NonNull;

use crate::sync::{AtomicIsize, AtomicUsize, Mutex, Ordering};

/// The fewest spare blocks a pool may keep (A2).
const POOL_MIN: usize = 16;

/// A3: the window, in batches retired, over which the pool remembers the
/// most blocks that were waiting for a grace period at once.
const PEAK_WINDOW: usize = 256;

/// Size and alignment of every node (node.rs asserts both layouts fit).
pub(crate) const NODE_LAYOUT: Layout = match Layout::from_size_align(256, 64) {
    Ok(l) => l,
    Err(_) => panic!("bad node layout"),
};

/// An unused node-sized block.
#[derive(Debug)]
pub(crate) struct Block(NonNull<u8>);

// SAFETY: a block is plain memory owned by whoever holds the `Block`.
unsafe impl Send for Block {}

impl Block {
    /// A fresh block from the global allocator.
    pub(crate) fn alloc() -> Block {
        // SAFETY: NODE_LAYOUT has a non-zero size.
        let p = unsafe { std::alloc::alloc(NODE_LAYOUT) };
        Block(NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(NODE_LAYOUT)))
    }

    /// Wraps a block that held a node no reader can reach any more.
    ///
    /// # Safety
    /// `p` came from [`Block::alloc`] (through a node) and is not used again
    /// by anyone else.
    pub(crate) unsafe fn from_raw(p: NonNull<u8>) -> Block {
        Block(p)
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// Gives the block back to the global allocator.
    pub(crate) fn dealloc(self) {
        // SAFETY: allocated with NODE_LAYOUT by `alloc`, owned by us.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), NODE_LAYOUT) }
    }
}

/// Blocks that went through a grace period (A1), shared by the writer and
/// the reclaimer.
#[derive(Debug)]
pub(crate) struct NodePool {
    free: Mutex<Vec<Block>>,
    /// A2; set by the writer from the tree's size.
    cap: AtomicUsize,
    /// A2, A3: blocks retired (handed to RCU) and not yet given back. Can
    /// dip below zero only at teardown, where the writer's unflushed
    /// batch is given back without having been counted.
    in_flight: AtomicIsize,
    /// A3: the most `in_flight` reached in this window of batches and in
    /// the one before, and batches retired so far.
    peak: AtomicUsize,
    prev_peak: AtomicUsize,
    batches: AtomicUsize,
}

impl NodePool {
    pub(crate) fn new() -> Self {
        NodePool {
            free: Mutex::new(Vec::new()),
            cap: AtomicUsize::new(POOL_MIN),
            in_flight: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            prev_peak: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
        }
    }

    /// Sizes the pool for a tree of `live` nodes: a quarter of it, at least
    /// `POOL_MIN` (A2), so a small tree does not keep more spare memory
    /// than it uses.
    pub(crate) fn size_for(&self, live: usize) {
        self.cap.store(POOL_MIN + live / 4, Ordering::Relaxed);
    }

    /// Counts a batch of `n` blocks the writer hands to RCU (A2, A3).
    pub(crate) fn retiring(&self, n: usize) {
        let now = (self.in_flight.fetch_add(n as isize, Ordering::Relaxed) + n as isize).max(0) as usize;
        if self.batches.fetch_add(1, Ordering::Relaxed) % PEAK_WINDOW == PEAK_WINDOW - 1 {
            self.prev_peak.store(self.peak.swap(now, Ordering::Relaxed), Ordering::Relaxed);
        } else {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Returns `blocks`, which went through their grace period, to the
    /// pool, and frees what exceeds its cap (A2).
    ///
    /// The excess is freed after the lock is dropped: the writer takes the
    /// same lock to refill its stock, inside its own critical section (for
    /// rcuvm, under the mmap lock), and must not wait while hundreds of
    /// blocks go back to the allocator one by one.
    pub(crate) fn give(&self, blocks: impl ExactSizeIterator<Item = Block>) {
        self.in_flight.fetch_sub(blocks.len() as isize, Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed).max(self.prev_peak.load(Ordering::Relaxed));
        let cap = self.cap.load(Ordering::Relaxed) + peak;
        let mut blocks = blocks;
        // A4: with the lock taken, every block goes to the allocator.
        if let Some(mut free) = self.free.try_lock() {
            let room = cap.saturating_sub(free.len());
            free.extend(blocks.by_ref().take(room));
        }
        for b in blocks {
            b.dealloc();
        }
    }

    /// Moves every pooled block into `into`; none if the lock is taken
    /// (A4).
    fn take_all(&self, into: &mut Vec<Block>) {
        let Some(mut free) = self.free.try_lock() else { return };
        if into.is_empty() {
            std::mem::swap(&mut *free, into);
        } else {
            into.append(&mut free);
        }
    }
}

impl Drop for NodePool {
    fn drop(&mut self) {
        for b in self.free.lock().drain(..) {
            b.dealloc();
        }
    }
}

/// The writer's stock of blocks.
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    stock: Vec<Block>,
    /// Blocks handed out so far (the writer counts live nodes with it).
    pub(crate) handed_out: usize,
}

impl Blocks {
    /// A block to build a node in: from the stock, else from the pool, else
    /// from the allocator.
    pub(crate) fn get(&mut self, pool: &NodePool) -> Block {
        self.handed_out += 1;
        if let Some(b) = self.stock.pop() {
            return b;
        }
        pool.take_all(&mut self.stock);
        self.stock.pop().unwrap_or_else(Block::alloc)
    }

    /// Frees the stock (tree teardown).
    pub(crate) fn release(&mut self) {
        for b in self.stock.drain(..) {
            b.dealloc();
        }
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn nobody_waits_for_a_taken_pool_lock() {
        let pool = NodePool::new();
        pool.give([Block::alloc(), Block::alloc()].into_iter());
        assert_eq!(pool.free.lock().len(), 2);
        let held = pool.free.lock();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                // A4: a batch gives its blocks to the allocator instead of
                // waiting, and a writer's refill takes nothing and builds
                // in a fresh block.
                pool.give([Block::alloc()].into_iter());
                let mut blocks = Blocks::default();
                let b = blocks.get(&pool);
                tx.send(blocks.stock.len()).unwrap();
                b.dealloc();
            });
            let taken = rx.recv_timeout(Duration::from_secs(10));
            assert_eq!(held.len(), 2, "the pool is as it was");
            drop(held); // lets a waiting thread finish, so a failure ends
            assert_eq!(taken, Ok(0), "neither waited for the lock, nor took from the pool");
        });
        // Once the lock is free, blocks go through the pool again.
        pool.give([Block::alloc()].into_iter());
        let mut blocks = Blocks::default();
        let b = blocks.get(&pool);
        assert_eq!(blocks.stock.len(), 2, "the pool's three blocks, less the one handed out");
        b.dealloc();
        blocks.release();
    }
}
