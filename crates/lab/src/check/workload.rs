//! One round of the checker's workload: a fresh, recorded address space;
//! CPUs accessing a small arena; a writer churning mappings over the same
//! addresses; a maps/smaps/query reader; then teardown and P6.
//!
//! # Owns
//! [`round`], the arena's layout and the values written.
//!
//! # Invariants
//! - W1. Each accessor CPU `t` reads and writes only word `t` of each
//!   arena page (oracle.rs P5 relies on one writer per word); values are
//!   `(t + 1) << 48 | seq`, never 0.
//! - W2. The writer reuses addresses at once: every mmap asks for an arena
//!   address (`MAP_FIXED` half the time, a hint otherwise; `MAP_POPULATE`
//!   a quarter of the time), munmap, mprotect, `MADV_POPULATE_*` and
//!   mremap take arena ranges; a mapping placed outside the arena (a hint
//!   not taken, a move) is unmapped by the next call. Population installs
//!   PTEs from the writer's thread while the CPUs fault the same pages.
//! - W3 (P6). After the round: the arena's span is mapped and unmapped
//!   (so every table of it is freed), both domains'
//!   callbacks have run, the reaper has erased every dead entry within a
//!   second of barriers with no mm call, and the page table is back to
//!   its root alone;
//!   dead entries never exceeded `DEAD_LIMIT` plus one call's worth; the
//!   VMA domain's callback backlog stayed within twice its limit; after
//!   the address space is dropped, every frame of the shared `PhysMem` is
//!   free.
//! - W5. A panic in an mm call, an access or the teardown is caught and
//!   reported (P8, P7), never passed on: the checker outlives the bugs it
//!   finds (an injected bug may break the address space's own accounting).
//! - W4. The seed fixes every choice of every thread; the interleaving is
//!   the scheduler's, so a seed reproduces the workload, not the schedule.
//! - W6. With `fork` on, the writer forks the address space now and then
//!   (between its calls, with a generator of its own, so a seed's calls
//!   are the same with or without it) and keeps one child for a few of its
//!   calls ([`FORK_MODES`]: half the rounds fork often with short lives,
//!   the others keep children longer so that the parent's writes copy).
//!   Now and then a CPU of the child writes word `t` of a random arena
//!   page with a value tagged [`CHILD_TAG`], which no CPU of the parent
//!   writes (oracle.rs P5: a parent that reads one read its child's page).
//!   Then the child exits: its CPU is dropped and its teardown runs on
//!   another thread (`EXITERS`), its frames going back while the parent's
//!   CPUs write the pages they shared; the round waits for every teardown
//!   before W3. The parent's copies-on-write race its CPUs' stores,
//!   population and every call (fork.rs FK3, FK4; fault.rs FL11).
//! - W7. At each of the writer's steps the child's CPU also reads word `t`
//!   of a random arena page: the child's memory is the parent's at the
//!   fork, then changed only by the child's own writes (the child makes
//!   no mm call), so a word it reads again must hold what it read or
//!   wrote there last, and a value of its own only where it wrote it
//!   (checked here as it goes); the first value it reads of a word is
//!   handed to the oracle (P9), which finds the parent's write of it.
//!
//! # Concurrency
//! `threads` accessor threads, one reader and the writer (the calling
//! thread) share the address space; all are joined before teardown. The
//! writer owns the child and its CPU; `EXITERS` threads tear children
//! down, and are joined before the round's teardown.
//!
//! # Linux
//! The thread's motivating workload: one thread faulting, another churning
//! small mappings at the same addresses (a memory allocator's arena).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rcuvm::inject::Injection;
use rcuvm::record::{History, Recorder};
use rcuvm::uapi::{MREMAP_FIXED, MREMAP_MAYMOVE, madv};
use rcuvm::{AddressSpace, MapFlags, PAGE_SIZE, PhysMem, Prot, Strategy};

use super::model::Arena;
use super::oracle::{ChildRead, Violation};

/// The arena: four runs of four pages, each run in its own leaf table
/// (2 MiB apart), so unmapping a run frees its table and faults race that.
pub const ARENA: Arena = Arena { base: 0x4000_0000, groups: 4, group_pages: 4, stride: 2 << 20 };
const PAGES: usize = ARENA.groups * ARENA.group_pages;
/// The VMA domain's callback limit in the checker.
const CALLBACK_LIMIT: usize = 4096;
/// W6: the high bits of every value a forked child writes; a parent CPU
/// `t` writes `(t + 1) << 48 | seq` with `t < 64`, never these.
pub const CHILD_TAG: u64 = 0xffff << 48;
/// W6: how a round forks: (one writer step in this many forks when no
/// child is alive; a child lives 2^k writer steps, k uniform in 0..=this;
/// the child writes a page at one step in this many). Half the rounds fork
/// often with short lives: each fork races the CPUs' faults, the window
/// of fork.rs FK4. The others keep children longer: the parent's writes
/// copy their pages (each write the child makes to a page it shares
/// copies it, after which the parent's frame is its own again and the
/// parent's writes copy nothing, hence rarely).
const FORK_MODES: [(u64, u64, u64); 2] = [(2, 3, 4), (16, 9, 64)];
/// W6: threads that tear children down.
const EXITERS: usize = 4;

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How to run a round.
#[derive(Clone, Copy, Debug)]
pub struct RoundCfg {
    /// The strategy.
    pub strategy: Strategy,
    /// Accessor threads.
    pub threads: usize,
    /// The round's seed (W4).
    pub seed: u64,
    /// How long the writer churns.
    pub length: Duration,
    /// A deliberate bug.
    pub inject: Option<Injection>,
    /// Whether the writer calls mremap.
    pub mremap: bool,
    /// Whether the writer forks (W6).
    pub fork: bool,
}

/// What a round produced.
pub struct Round {
    /// The history.
    pub history: History,
    /// The zero page's pfn.
    pub zero_pfn: u64,
    /// P6 violations (W3).
    pub teardown: Vec<Violation>,
    /// Children forked (W6).
    pub forks: u64,
    /// The parent's values children read first (W7), for oracle.rs P9.
    pub child_reads: Vec<ChildRead>,
}

/// Runs one round (W1–W4) on a fresh address space over `phys`.
///
/// A panic anywhere in the address space (an mm call, an access, the
/// teardown) ends the round and is reported as a violation, not passed on.
pub fn round(cfg: RoundCfg, phys: &Arc<PhysMem>) -> Round {
    let rec = Recorder::new();
    let (mut teardown, mut forks, mut child_reads) = (Vec::new(), 0, Vec::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_round(cfg, phys, &rec, &mut teardown, &mut forks, &mut child_reads)
    }));
    if let Err(p) = r {
        teardown.push(Violation {
            rule: "P8",
            what: format!("the address space panicked: {}", message(&*p)),
            events: vec![],
        });
    }
    Round { history: rec.take(), zero_pfn: phys.zero_pfn(), teardown, forks, child_reads }
}

fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Sets the stop flag when dropped, so that a writer that panics stops
/// the other threads too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn run_round(
    cfg: RoundCfg,
    phys: &Arc<PhysMem>,
    rec: &Arc<Recorder>,
    teardown: &mut Vec<Violation>,
    forks: &mut u64,
    child_reads: &mut Vec<ChildRead>,
) {
    let in_use_before = phys.stats().in_use;
    let mm = Arc::new(
        AddressSpace::builder()
            .strategy(cfg.strategy)
            .phys(phys.clone())
            .recorder(rec.clone())
            .inject(cfg.inject)
            .rcu_config(rcuvm::rcu::Config::default().callback_limit(CALLBACK_LIMIT))
            .build(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = StopOnDrop(stop.clone());
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let (mm, stop) = (mm.clone(), stop.clone());
        let seed = cfg.seed ^ (t as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        handles.push(std::thread::spawn(move || accessor(&mm, &stop, t, seed)));
    }
    {
        let (mm, stop) = (mm.clone(), stop.clone());
        let seed = cfg.seed ^ 0x5eed;
        handles.push(std::thread::spawn(move || reader(&mm, &stop, seed)));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut forker = cfg.fork.then(|| Forker::new(cfg.seed ^ 0xf0f4, cfg.threads));
    let t = Instant::now();
    let (mut dead_max, mut dead_lost) = (0, None);
    while t.elapsed() < cfg.length {
        if let Some(f) = &mut forker {
            f.step(&mm);
        }
        writer_step(&mm, &mut rng, cfg.mremap);
        // The tree first: the reaper, which runs meanwhile, lowers the
        // count before it erases, so this order never sees more dead
        // entries than entries (the other order did, once a run).
        let entries = mm.vmas_in_tree();
        let dead = mm.dead_entries();
        dead_max = dead_max.max(dead);
        if dead > entries {
            dead_lost.get_or_insert((dead, entries));
        }
    }
    if let Some(f) = forker {
        *forks = f.forks;
        // W6: the last child goes while the CPUs still run.
        let (firsts, violations) = f.finish();
        child_reads.extend(firsts);
        teardown.extend(violations);
    }
    drop(stopper);
    let mut report = |rule, what: String| teardown.push(Violation { rule, what, events: vec![] });
    for h in handles {
        if let Err(p) = h.join() {
            report("P7", format!("an accessing or reading thread panicked: {}", message(&*p)));
        }
    }
    // W3: unmap the arena, let dead entries expire and be reaped (the next
    // call reaps), run every callback of both domains. The arena's span is
    // mapped first, so that the munmap has a VMA and frees every table of
    // the span: a fault that lost a race to a munmap may have hooked an
    // empty table in what became a gap, and only an unmap of a VMA frees
    // tables (`free_pgtables`), as in Linux.
    let span = ARENA.groups as u64 * ARENA.stride;
    let _ = mm.mmap(
        ARENA.base,
        span,
        Prot::empty(),
        MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED,
        None,
        0,
    );
    let _ = mm.munmap(ARENA.base, span);
    mm.domain().barrier();
    let _ = mm.munmap(ARENA.base, PAGE_SIZE);
    mm.domain().barrier();
    // Idle now: the reaper (rcuvm mm.rs A10) erases every dead entry left,
    // a batch per grace period while calls were still made, then all of
    // them. Give it a second of barriers.
    let idle = Instant::now();
    while mm.dead_entries() > 0 && idle.elapsed() < Duration::from_secs(1) {
        mm.domain().barrier();
    }
    if mm.dead_entries() > 0 {
        report(
            "P6",
            format!("{} dead entries left in an idle address space after 1 s of barriers", mm.dead_entries()),
        );
    }
    mm.shootdown().domain().barrier();
    if mm.page_table().tables() != 1 {
        report(
            "P6",
            format!(
                "{} table pages remain after teardown and barriers (want 1, the root)",
                mm.page_table().tables()
            ),
        );
    }
    if let Some((dead, entries)) = dead_lost {
        report(
            "P8",
            format!(
                "{dead} dead entries counted, but only {entries} entries in the tree (a dead entry overwritten)"
            ),
        );
    }
    if dead_max > rcuvm::strategy::DEAD_LIMIT + PAGES {
        report(
            "P6",
            format!("{dead_max} dead entries at once (bound {})", rcuvm::strategy::DEAD_LIMIT + PAGES),
        );
    }
    let pending = mm.domain().stats().callbacks_pending_max;
    if pending > 2 * CALLBACK_LIMIT as u64 {
        report(
            "P6",
            format!("the VMA domain's backlog reached {pending} callbacks (limit {CALLBACK_LIMIT})"),
        );
    }
    let uaf = mm.use_after_free_accesses();
    if uaf != 0 {
        report(
            "P3",
            format!(
                "{uaf} accesses or faults used a frame or table page after it was freed (cpu.rs C5, fault.rs FL5)"
            ),
        );
    }
    let stale = mm.ptes_in_freed_tables();
    if stale != 0 {
        report(
            "P3",
            format!(
                "{stale} PTEs were still set in table pages when they were freed (installed after their zap)"
            ),
        );
    }
    drop(mm);
    // Rounds share `phys`: count only this round's frames (a leak of an
    // earlier round is reported there).
    let in_use = phys.stats().in_use.saturating_sub(in_use_before);
    if in_use != 0 {
        report("P6", format!("{in_use} frames still in use after the address space was dropped"));
    }
}

/// W6: the writer's forks and the child it keeps.
struct Forker {
    rng: Rng,
    fork_one_in: u64,
    life_log2: u64,
    child_write_one_in: u64,
    threads: u64,
    /// The child, its CPU, and the writer steps it has left.
    child: Option<(rcuvm::Cpu, Arc<AddressSpace>, u64)>,
    /// When the child's fork returned (record.rs clock).
    fork_end: u64,
    /// W7: what each word the child read or wrote holds for it.
    known: HashMap<u64, u64>,
    /// W7: the parent's values children read first, for the oracle (P9).
    firsts: Vec<ChildRead>,
    /// W7: children that saw their memory change under them (P9).
    violations: Vec<Violation>,
    seq: u64,
    forks: u64,
    /// Children to tear down, and the thread that does it: a teardown
    /// waits for grace periods (about 0.2 ms idle, milliseconds beside
    /// the round's busy threads), which would leave the writer few calls.
    exits: Option<std::sync::mpsc::Sender<Arc<AddressSpace>>>,
    exiters: Vec<std::thread::JoinHandle<()>>,
}

impl Forker {
    fn new(seed: u64, threads: usize) -> Forker {
        let (fork_one_in, life_log2, child_write_one_in) = FORK_MODES[(seed & 1) as usize];
        let (tx, rx) = std::sync::mpsc::channel::<Arc<AddressSpace>>();
        // Several, since a teardown mostly sleeps (waiting for its domains'
        // reclaimers), and the writer forks faster than one keeps up.
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let exiters = (0..EXITERS)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    while let Ok(child) = rx.lock().map_err(drop).and_then(|r| r.recv().map_err(drop)) {
                        drop(child);
                    }
                })
            })
            .collect();
        Forker {
            rng: Rng::new(seed),
            fork_one_in,
            life_log2,
            child_write_one_in,
            threads: threads as u64,
            child: None,
            fork_end: 0,
            known: HashMap::new(),
            firsts: Vec::new(),
            violations: Vec::new(),
            seq: 0,
            forks: 0,
            exits: Some(tx),
            exiters,
        }
    }

    /// Before a writer step: fork, or read and write the child's pages
    /// and count down its life.
    fn step(&mut self, mm: &AddressSpace) {
        let Some((cpu, _, left)) = &mut self.child else {
            if self.rng.below(self.fork_one_in) == 0 {
                let child = Arc::new(mm.fork());
                self.fork_end = rcuvm::record::now();
                self.known.clear();
                // Log-uniform: many short lives (many forks, each racing
                // the CPUs' faults) and some long ones (many copies).
                let life = 1 << self.rng.below(self.life_log2 + 1);
                self.child = Some((child.cpu(), child, life));
                self.forks += 1;
            }
            return;
        };
        let word = |rng: &mut Rng| ARENA.addr(rng.below(PAGES as u64) as usize) + rng.below(self.threads) * 8;
        // W7: the child's memory is the parent's at the fork, then its own.
        let va = word(&mut self.rng);
        if let Ok(v) = cpu.read(va) {
            match self.known.get(&va) {
                Some(&k) if k != v => self.violations.push(Violation {
                    rule: "P9",
                    what: format!(
                        "a forked child read {v:#x} at {va:#x}, where it had read or written {k:#x} and nothing of its own changed it"
                    ),
                    events: vec![],
                }),
                Some(_) => {}
                None if v & CHILD_TAG == CHILD_TAG => self.violations.push(Violation {
                    rule: "P9",
                    what: format!("a forked child read {v:#x} at {va:#x}: a value it wrote, but not there"),
                    events: vec![],
                }),
                None => {
                    self.known.insert(va, v);
                    if v != 0 {
                        self.firsts.push(ChildRead { va, value: v, fork_end: self.fork_end });
                    }
                }
            }
        }
        if self.rng.below(self.child_write_one_in) == 0 {
            let va = word(&mut self.rng);
            self.seq += 1;
            if cpu.write(va, CHILD_TAG | self.seq).is_ok() {
                self.known.insert(va, CHILD_TAG | self.seq);
            }
        }
        *left -= 1;
        if *left == 0 {
            self.exit();
        }
    }

    /// The child exits: its CPU goes here, its teardown to an exiter.
    fn exit(&mut self) {
        if let Some((cpu, child, _)) = self.child.take() {
            drop(cpu);
            if let Some(tx) = &self.exits {
                let _ = tx.send(child);
            }
        }
    }

    /// The last child exits, and every teardown ends (before the round's
    /// own: W3 counts the frames of the shared `PhysMem`). A teardown that
    /// panicked is a violation (W5).
    fn finish(mut self) -> (Vec<ChildRead>, Vec<Violation>) {
        for p in self.shut_down() {
            self.violations.push(Violation {
                rule: "P8",
                what: format!("a forked child's teardown panicked: {p}"),
                events: vec![],
            });
        }
        (std::mem::take(&mut self.firsts), std::mem::take(&mut self.violations))
    }

    /// The last child exits and every exiter is joined; the messages of
    /// the teardowns that panicked.
    fn shut_down(&mut self) -> Vec<String> {
        self.exit();
        drop(self.exits.take());
        self.exiters.drain(..).filter_map(|t| t.join().err()).map(|p| message(&*p)).collect()
    }
}

impl Drop for Forker {
    /// After a panic in the round (`finish` not reached): the children
    /// still go; the round's own panic is what is reported.
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// W1: CPU `t` reads and writes word `t` of random arena pages.
fn accessor(mm: &Arc<AddressSpace>, stop: &AtomicBool, t: usize, seed: u64) {
    let mut cpu = mm.cpu();
    let mut rng = Rng::new(seed);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            let va = ARENA.addr(rng.below(PAGES as u64) as usize) + t as u64 * 8;
            if rng.below(10) < 6 {
                seq += 1;
                let _ = cpu.write(va, (t as u64 + 1) << 48 | seq);
            } else {
                let _ = cpu.read(va);
            }
        }
    }
}

/// Reads maps, smaps and single addresses.
fn reader(mm: &AddressSpace, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        match rng.below(4) {
            0 => drop(mm.smaps()),
            1 => drop(mm.query(ARENA.addr(rng.below(PAGES as u64) as usize))),
            _ => drop(mm.maps()),
        }
        // Keeps the history of a round small; the race is still there.
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A random arena range inside one run: its address and length.
fn range(rng: &mut Rng) -> (u64, u64) {
    let run = ARENA.group_pages as u64;
    let n = 1 + rng.below(run);
    let p = rng.below(run - n + 1);
    let g = rng.below(ARENA.groups as u64);
    (ARENA.base + g * ARENA.stride + p * PAGE_SIZE, n * PAGE_SIZE)
}

/// Whether `[a, a + len)` lies inside one run of the arena.
fn in_arena(a: u64, len: u64) -> bool {
    len > 0
        && ARENA.page_of(a).is_some()
        && ARENA.page_of(a + len - PAGE_SIZE) == ARENA.page_of(a).map(|p| p + (len / PAGE_SIZE) as usize - 1)
}

/// One mm call of the writer (W2).
fn writer_step(mm: &AddressSpace, rng: &mut Rng, mremap: bool) {
    let prots = [Prot::READ | Prot::WRITE, Prot::READ | Prot::WRITE, Prot::READ, Prot::empty()];
    let (a, len) = range(rng);
    let pick = rng.below(8);
    // Without mremap its share goes to munmap.
    match if pick == 7 && !mremap { 3 } else { pick } {
        0..=2 => {
            let mut flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
            if rng.below(2) == 0 {
                flags |= MapFlags::FIXED;
            }
            // Population (rcuvm fault.rs FL9) races the CPUs' faults.
            if rng.below(4) == 0 {
                flags |= MapFlags::POPULATE;
            }
            let prot = prots[rng.below(3) as usize];
            if let Ok(r) = mm.mmap(a, len, prot, flags, None, 0) {
                if !in_arena(r, len) {
                    let _ = mm.munmap(r, len);
                }
            }
        }
        3 | 4 => {
            let _ = mm.munmap(a, len);
        }
        5 | 6 if rng.below(4) == 0 => {
            let advice = [madv::POPULATE_READ, madv::POPULATE_WRITE][rng.below(2) as usize];
            let _ = mm.madvise(a, len, advice);
        }
        5 | 6 => {
            let _ = mm.mprotect(a, len, prots[rng.below(4) as usize]);
        }
        _ => {
            let new_len = (1 + rng.below(ARENA.group_pages as u64)) * PAGE_SIZE;
            let (d, _) = range(rng);
            let (flags, to) =
                if rng.below(2) == 0 && (d + new_len <= a || a + len <= d) && in_arena(d, new_len) {
                    (MREMAP_MAYMOVE | MREMAP_FIXED, d)
                } else {
                    (rng.below(2) as u32 * MREMAP_MAYMOVE, 0)
                };
            if let Ok(r) = mm.mremap(a, len, new_len, flags, to) {
                if !in_arena(r, new_len) {
                    let _ = mm.munmap(r, new_len);
                }
            }
        }
    }
}
