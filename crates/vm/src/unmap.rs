//! Tearing down the pages of a range a writer has unmapped: zap, unhook
//! tables, shoot down TLBs, free, each as the strategy says.
//!
//! # Invariants
//! - U1. Order: the tree stops mapping the range first (erase, or a dead
//!   entry); then PTEs are zapped under their PTLs; then tables that map
//!   only the gap are unhooked; then one TLB shootdown covers it all; then
//!   frames are freed; tables are freed after a grace period of the VMA
//!   domain (pgtable.rs PT5, tlb.rs T3).
//! - U2. Under `rcu-dead`, munmap unhooks no table and waits for no grace
//!   period: the dead entry keeps the range until a grace period has
//!   passed the state its munmap took (strategy.rs `DeadEntry`; the
//!   reaper, mm.rs A10, keeps grace periods coming); an mm call or the
//!   reaper then erases it and unhooks its tables (its
//!   grace period has passed, so no fault or smaps reader can be in them;
//!   only the MMU's walk can, and the shootdown covers that). An mm call
//!   that needs the range earlier (`MAP_FIXED`) synchronises first.
//! - U4. The dead entries are bounded: past [`DEAD_LIMIT`], the munmap that
//!   adds one waits for a grace period and reaps them all (the writer helps,
//!   as callers of a full RCU callback queue do), so a munmap storm cannot
//!   grow the tree without bound. It reaps after its own zap and
//!   shootdown, never between the dead entry and the zap (U1's order).
//! - U5. An mm call erases at most [`REAP_BATCH`] expired dead entries
//!   beyond those it needs, oldest first; the reaper (mm.rs A10) erases
//!   the rest, also in batches, once the address space is idle. Each
//!   munmap adds one entry per VMA, so the calls keep up. Forced reaping
//!   (a range needed now, or past [`DEAD_LIMIT`]) still takes every entry
//!   it needs. Linux breaks long work under the lock the same way
//!   (`mmap_lock_is_contended`). Why: a grace period expires the entries
//!   of every munmap since the previous one at once, 150 in `fault-churn`
//!   and 1,300–3,000 in `proc-vs-map` when readers make the grace period
//!   long, and the call that erased them all held the mmap lock for up
//!   to 420 µs (about 140 ns an entry). History, measured: bounded only
//!   while another writer waited (for `fault-churn`: 86.4–89.8% kept,
//!   against 84.1–94.3% bounded always and 80.8–90.0% unbounded), since
//!   a call bounded always left an idle address space with expired
//!   entries and their tables (`rcuvm check`'s P6); the reaper now
//!   removes those, and the bound applies always.
//! - U8. A munmap that leaves the [`DEAD_HELP`]th dead entry, and every
//!   [`DEAD_HELP_EVERY`]th after it, tries once, without blocking, to
//!   complete the grace period of the oldest (rcuvm-rcu
//!   `Domain::try_complete`: a `membarrier` and a scan of the reader
//!   slots); a call that must reap entries whose grace period has not
//!   passed (U4, or a range it needs) tries the same for the newest of
//!   them before it waits, and waits only if a reader is in the way. Why:
//!   dead entries pile up only while grace periods are late, and on this
//!   2-CPU machine with both CPUs busy they were late mostly because no
//!   thread ran one (the reclaimer got no CPU); about once in ten
//!   `proc-vs-map` runs (rcu-dead, before this and after A10 alike) 8,192
//!   entries accumulated, about 15 ms of the writer's munmaps, and the
//!   munmap at the bound waited for a grace period (1.48 ms in all,
//!   with the reap).
//! - U6. Reaped entries that touch go in one erase: their union holds only
//!   them (each left the queue once, and only writers change the tree), and one
//!   spanning erase rebuilds the few nodes around the run where an erase
//!   per entry copied a leaf and its ancestors for each. Why: a grace
//!   period expires every entry of the munmaps since the previous one, and
//!   top-down placement puts them side by side (each mmap lands below the
//!   range the last one's dead entry still holds). Measured in
//!   `proc-vs-map` (rcu-dead): 600–4,700 entries reaped at once took
//!   0.3–2.4 ms one by one and 0.1–0.3 ms as runs, for one or two runs.
//! - U7. Reaping allocates nothing in steady state and touches no dead
//!   entry's VMA object: the queue holds each entry's range and grace
//!   period state (strategy.rs `DeadEntry`), and the runs it erases are
//!   gathered in a vector the mm state keeps between calls (mm.rs A9).
//! - U3. Under `rcu-sync`, munmap returns only after a grace period of the
//!   VMA domain: no fault or reader that found an unmapped VMA is still
//!   running when the range can be reused.
//!
//! # Concurrency
//! mmap write lock (an [`MmCall`]).
//!
//! # Linux
//! `mm/vma.c` `vms_complete_munmap_vmas` → `unmap_region` (`unmap_vmas`,
//! `free_pgtables` with floor and ceiling, `tlb_finish_mmu`); solutions 1
//! and 3 of the thread for the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::mmap::MmCall;
use crate::notifier::NotifyEvent;
use crate::pgtable::VA_END;
#[cfg(doc)]
use crate::strategy::REAP_BATCH;
use crate::strategy::{self, DEAD_HELP, DEAD_HELP_EVERY, DEAD_LIMIT, DeadEntry, Strategy};
use crate::tlb::MmuGather;
use crate::vma::Vma;

/// Tables that `rcu-refcount` frees on the last put of the VMAs that
/// mapped them (strategy.rs S5); the MMU's walks are still waited for (a
/// grace period of the TLB domain, tlb.rs T6).
pub(crate) struct TablesOnPut {
    tables: Vec<(crate::pgtable::UnhookedTable, u32)>,
    freer: crate::pgtable::TableFreer,
    vma: Arc<rcuvm_rcu::Domain>,
    tlb: Arc<rcuvm_rcu::Domain>,
    leaked: Arc<crossbeam_utils::CachePadded<AtomicU64>>,
}

impl Drop for TablesOnPut {
    /// After a grace period of the VMA domain, then one of the TLB domain
    /// (tlb.rs T6), as every other free of tables. Why the VMA domain's
    /// too: the put that frees them may be any VMA's (a CPU's VMA cache
    /// lets go of one at any time), while a fault of another VMA that
    /// shares these tables still walks them inside its section of the VMA
    /// domain (strategy.rs S5); with the TLB domain's alone such a fault
    /// wrote a table the pool had handed out again (a SIGSEGV in 2 of 150
    /// seeds of `rcuvm check --strategy rcu-refcount`).
    fn drop(&mut self) {
        let (tables, f, leaked) = (std::mem::take(&mut self.tables), self.freer.clone(), self.leaked.clone());
        let tlb = self.tlb.clone();
        self.vma.call(move || {
            tlb.call(move || {
                leaked.fetch_add(f.free(tables) as u64, Ordering::Relaxed);
            })
        });
    }
}

impl MmCall<'_> {
    /// Marks `v`, which this call is about to replace or remove, detached
    /// (vma.rs V6), and `vma_start_write()` under the `vma-lock` strategy
    /// (strategy.rs S3).
    pub(crate) fn vma_write_lock(&self, v: &Vma) {
        // ORDERING: Release; what makes the mark seen in time is the PTL:
        // the page-table change that follows takes it (fault.rs FL6).
        v.rt.detached.store(true, Ordering::Release);
        if self.hw.strategy == Strategy::VmaLock {
            strategy::vma_start_write(v, &self.hw.mm_lock_seq);
        }
    }

    /// Removes `[start, end)` (whose VMAs are `hit`, remnants already
    /// stored) from the tree: erased, or under `rcu-dead` replaced by dead
    /// entries (U2). Returns whether dead entries were left.
    pub(crate) fn bury(&mut self, hit: &[Arc<Vma>], start: u64, end: u64) -> bool {
        if self.hw.strategy != Strategy::RcuDead {
            self.erase(start..end);
            return false;
        }
        for v in hit {
            let (s, e) = (v.start.max(start), v.end.min(end));
            let mut tomb = v.slice(s, e);
            tomb.rt.dead = true;
            self.store(s..e, tomb);
            // ORDERING: `get_state` fences after the store above: the state
            // is passed only by a grace period that began after the dead
            // entry was published (rcuvm-rcu grace.rs P2).
            let gp = self.domain.get_state();
            self.dead.push_back(DeadEntry { start: s, end: e, gp });
            self.hw.dead.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // No callback per entry: the reaper the call queues when it
            // ends (mm.rs A10) keeps grace periods running until a reap.
            // U8: entries piling up mean grace periods are late; help the
            // oldest one's along, without blocking.
            let n = self.dead.len();
            if n >= DEAD_HELP && n % DEAD_HELP_EVERY == 0 {
                let oldest = self.dead.front().expect("just pushed").gp;
                if self.domain.try_complete(oldest) {
                    self.hw.dead_helps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        true
    }

    /// The free gap around `[start, end)`: the end of the entry below and
    /// the start of the entry above (`free_pgtables`' floor and ceiling).
    fn gap_around(&self, start: u64, end: u64) -> (u64, u64) {
        let g = self.domain.read();
        let floor = self.tree.prev(start, &g).map_or(0, |e| e.range.end);
        let ceiling = self.tree.next(end.saturating_sub(1), &g).map_or(VA_END, |e| e.range.start);
        (floor, ceiling.min(VA_END))
    }

    /// Zaps `[start, end)`, unhooks the tables of the gap around it when
    /// `free_tables`, and finishes (U1). Under `rcu-refcount` the tables
    /// are freed on the last put of the unmapped VMAs `hit` instead (S5).
    pub(crate) fn unmap_pages(&mut self, start: u64, end: u64, free_tables: bool, hit: &[Arc<Vma>]) {
        let mut g = MmuGather::default();
        g.notify = self.hw.notifiers.start_locked(start, end, NotifyEvent::Unmap);
        self.hw.pt.zap(start, end, &mut g);
        if free_tables {
            let (floor, ceiling) = self.gap_around(start, end);
            self.hw.pt.free_tables(floor, ceiling, start, end.min(VA_END), &mut g);
        }
        if self.hw.strategy == Strategy::RcuRefcount && !g.tables.is_empty() {
            let holder = Arc::new(TablesOnPut {
                tables: std::mem::take(&mut g.tables),
                freer: self.hw.pt.freer(),
                vma: self.tree.domain().clone(),
                tlb: self.hw.tlb.domain().clone(),
                leaked: self.hw.ptes_in_freed_tables.clone(),
            });
            for v in hit {
                let _ = v.rt.on_last_put.set(holder.clone());
            }
            // The tree's counts of `hit` sit in the writer's batch of
            // retired values (maple write.rs, 64 a batch) until handed to
            // RCU: hand them now, or the last put (and the tables) waits
            // for 63 more retirements, past every barrier.
            self.w.flush();
        }
        self.finish(g, false);
        // U4, only now: reaping unhooks the tables under every dead entry,
        // this call's too, and a table unhooked before its zap keeps its
        // PTEs, which no shootdown then covers (found by rcuvm check: P1).
        if self.dead.len() > DEAD_LIMIT {
            self.reap_dead(true, 0, u64::MAX);
        }
    }

    /// `tlb_finish_mmu()`: one shootdown, then frames back at once; tables
    /// after a grace period of the VMA domain (unless `vma_gp_passed`) and
    /// then one of the TLB domain (U1, U2, tlb.rs T6).
    pub(crate) fn finish(&mut self, mut g: MmuGather, vma_gp_passed: bool) {
        if g.needs_flush() {
            let (s, e, cpus) = g.range();
            self.hw.tlb.flush(s, e, cpus);
        }
        // notifier.rs N1: after the shootdown, before the frames go.
        self.hw.notifiers.end_locked(g.notify.take());
        self.hw.phys.free(g.frames);
        if g.tables.is_empty() {
            return;
        }
        let (f, leaked) = (self.hw.pt.freer(), self.hw.ptes_in_freed_tables.clone());
        if crate::inject::active(self.hw.inject, crate::inject::Injection::EagerTableFree) {
            // inject.rs: no grace period at all (breaks U1, PT5); the
            // tables are quarantined (pgtable.rs PT7), so walkers still in
            // them corrupt no live table.
            leaked.fetch_add(f.quarantine(g.tables) as u64, Ordering::Relaxed);
            return;
        }
        let tables = g.tables;
        let tlb = self.hw.tlb.domain().clone();
        let free_after_walks = move || {
            tlb.call(move || {
                leaked.fetch_add(f.free(tables) as u64, Ordering::Relaxed);
            })
        };
        if vma_gp_passed {
            free_after_walks();
        } else {
            self.domain.call(free_after_walks);
        }
    }

    /// What munmap does last: `rcu-sync` waits for a grace period (U3).
    pub(crate) fn after_unmap(&mut self) {
        if self.hw.strategy == Strategy::RcuSync {
            let t = Instant::now();
            self.domain.synchronize();
            let ns = t.elapsed().as_nanos() as u64;
            self.hw.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.hw.sync_ns.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Erases dead entries and unhooks their tables (U2): the expired ones,
    /// oldest first, within the call's budget (U5), and
    /// with `force` every one overlapping `[start, end)`, after waiting for
    /// a grace period if one has not expired.
    ///
    /// Cost: the expired ones come off the front of the queue (their
    /// states were taken in order); the forced path scans the queue only when
    /// the tree shows a dead entry in the range.
    pub(crate) fn reap_dead(&mut self, force: bool, start: u64, end: u64) {
        // inject.rs: with placement ignoring dead entries, nothing waits
        // for them either (the bug U2 and S4 exist to prevent).
        let force =
            force && !crate::inject::active(self.hw.inject, crate::inject::Injection::PlacementIgnoresDead);
        if self.dead.is_empty() {
            return;
        }
        // U7: the runs are gathered in the call's scratch vector.
        let mut runs = std::mem::take(self.reap_runs);
        runs.clear();
        let domain = self.domain;
        let expired = |d: &DeadEntry| domain.poll_state(d.gp);
        let mut take = |d: &DeadEntry| runs.push((d.start, d.end));
        while self.reap_budget > 0 && self.dead.front().is_some_and(expired) {
            take(&self.dead.pop_front().expect("checked front"));
            self.reap_budget -= 1;
        }
        if force && self.entries_in(start, end).iter().any(|v| v.is_dead()) {
            let overlaps = |s: u64, e: u64| s < end && start < e;
            // U8: the newest such entry's grace period, completed without
            // blocking if no reader is in the way, covers them all.
            let newest =
                self.dead.iter().rev().find(|d| overlaps(d.start, d.end) && !expired(d)).map(|d| d.gp);
            let helped = newest.map(|gp| self.domain.try_complete(gp));
            if helped == Some(true) {
                self.hw.dead_helps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if helped == Some(false) {
                // Who waits: a munmap past the bound (U4), or a call that
                // reuses a dead range (S4), counted apart.
                let (n, ns) = if (start, end) == (0, u64::MAX) {
                    (&self.hw.syncs, &*self.hw.sync_ns)
                } else {
                    (&self.hw.reuse_syncs, &self.hw.reuse_sync_ns)
                };
                let t = Instant::now();
                self.domain.synchronize();
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ns.fetch_add(t.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            self.dead.retain(|d| {
                if overlaps(d.start, d.end) {
                    take(d);
                    false
                } else {
                    true
                }
            });
        }
        if runs.is_empty() {
            *self.reap_runs = runs;
            return;
        }
        self.hw.dead.fetch_sub(runs.len(), std::sync::atomic::Ordering::Relaxed);
        // U6: neighbours go in one erase (their union holds only them).
        runs.sort_unstable_by_key(|r| r.0);
        runs.dedup_by(|next, prev| {
            let adjacent = prev.1 == next.0;
            if adjacent {
                prev.1 = next.1;
            }
            adjacent
        });
        for (s, e) in &runs {
            self.erase(*s..*e);
        }
        // The grace period has passed: tables go back at once (U2).
        let mut g = MmuGather::default();
        for (s, e) in &runs {
            let (floor, ceiling) = self.gap_around(*s, *e);
            self.hw.pt.free_tables(floor, ceiling, *s, (*e).min(VA_END), &mut g);
        }
        *self.reap_runs = runs;
        self.finish(g, true);
    }
}
