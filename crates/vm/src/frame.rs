//! Physical memory: page frames, the zero page and the page cache.
//!
//! # Owns
//! [`PhysMem`]: every frame of a simulated machine (4 KiB of data as 512
//! words each), the free list, and the page cache (file pages keyed by file
//! and page offset).
//!
//! # Invariants
//! - F1. Frame memory is type-stable: a chunk of frames, once allocated, is
//!   never deallocated while the `PhysMem` lives. A lagging reader that
//!   still holds a pfn therefore reads valid atomics, never freed memory;
//!   whether the frame was reused is told by its generation (F2), which is
//!   what the checker's P3 relies on.
//! - F2. A frame's `generation` is bumped every time the frame is freed. A frame is
//!   freed only when no PTE and no TLB entry can reach it (the caller's
//!   duty: munmap frees through [`crate::tlb::MmuGather`], after the TLB
//!   shootdown was acknowledged).
//! - F3. A frame handed out by [`PhysMem::alloc`] is zero-filled.
//! - F4. Page-cache frames and the zero page are never freed while the
//!   `PhysMem` lives; PTEs that map them hold no count (unmapping them
//!   frees nothing).
//!
//! - F5. Freed frames go to the freeing thread's own list (Linux's per-CPU
//!   `pcp` lists), which holds at most [`PCP_HIGH`] frames; the excess,
//!   oldest first, goes to the shared list. An allocation takes from its
//!   own list (the most recently freed first), then the shared list, then
//!   the oldest frames another thread's list holds beyond [`PCP_KEEP`],
//!   then carves a never-used frame, and takes from the warm ends of other
//!   threads' lists only when nothing is left to carve. Memory thus
//!   exceeds what is in use by at most `PCP_KEEP` frames per thread.
//!   Why a thread keeps so much: a thread that unmaps and maps again gets
//!   its own frames back instead of another CPU's (two faulters that
//!   traded frames through the shared list scaled 1.20–1.58× on two CPUs,
//!   1.72–1.91× keeping them; `rcuvm run --workload page-fault`, five
//!   runs each, alternated). Why
//!   not take another thread's warm frames: a thread still running wrote
//!   them lately (often with cached stores, F6), so each costs a transfer
//!   of every line from the other CPU's cache, and the owner, short of its
//!   own, takes cold ones; a faulter beside a churner lost 4–9 points of
//!   the throughput it kept that way (`fault_pair`, docs/benchmarks.md).
//! - F6. Zero-filling (F3) uses non-temporal stores on x86-64 (`movnti`, an
//!   aligned 8-byte store per word, then `sfence`), in inline asm. Why: a
//!   fault-heavy thread zeroes gigabytes per second; cached stores read
//!   every line in first and push everything else out of the shared cache,
//!   its own page tables and VMAs and every other thread's working set.
//!   Measured (`rcuvm run --workload fault-churn`, rcu-dead): 2.1 M faults/s
//!   alone with relaxed atomic stores, 2.6–3.0 M with `rep stosq` (cached),
//!   2.7–2.8 M with `movnti`; kept under churn 62–70%, 68–77%, 78–88%. The
//!   stores are asm, not non-atomic Rust writes, so a reader racing them
//!   (only a lagging CPU in a strategy the checker catches) has defined
//!   behaviour and sees old or zero words; the `sfence` makes the zeros
//!   visible before the PTE that maps the frame. A frame this thread freed
//!   among its last `RECENT` (64) frees is zeroed with cached stores (`rep
//!   stosq`) instead: it is probably still in this CPU's cache, and a
//!   thread that maps, touches and unmaps a few pages in a loop keeps them
//!   there instead of writing them to memory every time. Measured
//!   (fault-churn rcu-dead, three runs each): the churner's cycles rose
//!   from 190–230 k/s to 250–275 k/s and the faulters' time lost per cycle
//!   fell from 0.55–0.79 µs to 0.31–0.52 µs. The cost: a thread faulting
//!   over a working set that fits the cache but is larger than 64 frames
//!   takes a miss after each fault (the fault bench's 16 MiB rounds: 490
//!   ns per fault against 250–300 ns with cached stores everywhere;
//!   docs/benchmarks.md).
//! - F7. An anonymous frame counts the page tables that map it
//!   (`mapcount`, Linux's `_mapcount` plus one): 1 when handed out, one
//!   more for each address space `fork` shares it with (mm.rs A14).
//!   `PhysMem::free` drops one, and frees the frame only when the last
//!   goes. A fault reuses an anonymous page for a write only while its
//!   count is 1 (fault.rs FL11).
//!
//! # Concurrency
//! Everything here is callable from any thread. `frame()` is lock-free; the
//! free lists and the page cache take short mutexes. Each thread has its own
//! list (F5), so a thread that unmaps and maps again reuses the frames it
//! just freed, still in its cache, and takes no lock another thread wants;
//! per-CPU caches in [`FrameCache`] keep even that mutex off most faults.
//!
//! # Linux
//! `struct page`/`struct folio` reduced to data, a generation and an owner
//! tag; the buddy allocator reduced to a free list with per-CPU caches
//! (`pcp` lists); `mm/filemap.c`'s page cache reduced to a map. File
//! contents are not read from disk: a file page's initial data is a
//! deterministic function of the file and offset ([`file_word`]), so that a
//! stale or cross-file mapping is visible in the data.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use crate::vma::FileId;

/// Words of 8 bytes in a frame.
pub const WORDS: usize = 512;
/// Frames in one allocation chunk (2 MiB of data).
const CHUNK: usize = 512;
/// Per-thread free lists (F5); threads share them round-robin past this.
const PCP_LISTS: usize = 16;
/// Most frames one per-thread list keeps (F5): 128 MiB, so that a thread
/// that unmaps and maps again gets its own frames back.
pub const PCP_HIGH: usize = 32768;
/// Frames of a per-thread list that other threads leave to it while they
/// can carve (F5): 8 MiB, the recent, warm end of the list.
pub const PCP_KEEP: usize = 2048;

std::thread_local! {
    /// This thread's per-thread free list: an index below [`PCP_LISTS`],
    /// `usize::MAX` until first use.
    static PCP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's list index (F5), assigned round-robin on first use.
fn pcp_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    PCP.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT.fetch_add(1, Ordering::Relaxed) % PCP_LISTS);
        }
        c.get()
    })
}

/// Frames this thread freed lately, by pfn modulo the size (F6): a frame
/// found here is probably still in this CPU's cache.
const RECENT: usize = 64;

std::thread_local! {
    static RECENTLY_FREED: [Cell<Pfn>; RECENT] = const { [const { Cell::new(Pfn::MAX) }; RECENT] };
}

/// Notes `pfn` as freed by this thread (F6).
fn note_freed(pfn: Pfn) {
    RECENTLY_FREED.with(|r| r[pfn as usize % RECENT].set(pfn));
}

/// Whether this thread freed `pfn` among its last frees (F6), forgetting it.
fn recently_freed_here(pfn: Pfn) -> bool {
    RECENTLY_FREED.with(|r| r[pfn as usize % RECENT].replace(Pfn::MAX) == pfn)
}

/// Moves up to `want` frames from the end of `list` (the most recently
/// freed) to `into`.
fn take_last(list: &Mutex<VecDeque<Pfn>>, into: &mut Vec<Pfn>, want: usize) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    let k = l.len().saturating_sub(want);
    into.extend(l.drain(k..));
}

/// A page frame number: index of a frame in its [`PhysMem`].
pub type Pfn = u64;

/// One page frame. Aligned to a cache line so that no line holds two
/// frames: a frame one thread zeroes shares nothing with its neighbour,
/// which another thread may be using.
#[repr(C, align(64))]
pub struct Frame {
    /// The page's data, as words (racy accesses are well defined).
    pub data: [AtomicU64; WORDS],
    /// Bumped on every free (F2).
    pub generation: AtomicU64,
    /// Who the frame belongs to while allocated: [`Owner`] packed.
    pub owner: AtomicU64,
    /// Page tables mapping it, for an anonymous frame (F7).
    pub(crate) mapcount: AtomicU32,
}

/// What a frame is used for, packed into [`Frame::owner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// On the free list.
    Free,
    /// The shared zero page.
    Zero,
    /// An anonymous page of address space `mm`, faulted at `vpn`.
    Anon {
        /// The address space's id.
        mm: u32,
        /// Virtual page number at which it was first mapped.
        vpn: u64,
    },
    /// A page-cache page (F4).
    PageCache,
}

impl Owner {
    fn pack(self) -> u64 {
        match self {
            Owner::Free => 0,
            Owner::Zero => 1,
            Owner::PageCache => 2,
            Owner::Anon { mm, vpn } => 3 | (u64::from(mm) << 2) | (vpn << 24),
        }
    }

    fn unpack(v: u64) -> Owner {
        match v & 3 {
            0 => Owner::Free,
            1 => Owner::Zero,
            2 => Owner::PageCache,
            _ => Owner::Anon { mm: ((v >> 2) & 0x3f_ffff) as u32, vpn: v >> 24 },
        }
    }
}

impl Frame {
    /// Whether only one page table maps this anonymous frame (F7): a write
    /// may then reuse it in place.
    pub(crate) fn exclusive(&self) -> bool {
        self.mapcount.load(Ordering::Acquire) == 1
    }

    /// One more page table maps this frame (F7, `fork`): counted if it is
    /// anonymous (the zero page and page-cache frames are never freed).
    pub(crate) fn share_if_anon(&self) {
        if matches!(self.owner(), Owner::Anon { .. }) {
            self.mapcount.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The frame's owner.
    pub fn owner(&self) -> Owner {
        Owner::unpack(self.owner.load(Ordering::Acquire))
    }

    /// Zero-fills the frame (F3, F6): with cached stores if it is `hot`
    /// (likely still in this CPU's cache), else with streaming stores.
    fn zero(&self, hot: bool) {
        #[cfg(target_arch = "x86_64")]
        if hot {
            // SAFETY: as below: exactly this frame's `WORDS` aligned words,
            // each written by one 8-byte store of `rep stosq` (F6).
            unsafe {
                std::arch::asm!(
                    "rep stosq",
                    inout("rcx") WORDS => _,
                    inout("rdi") self.data.as_ptr() => _,
                    in("rax") 0u64,
                    options(nostack, preserves_flags),
                );
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let start = self.data.as_ptr();
            // `WORDS` words, 64 bytes per loop turn.
            let end = start.wrapping_add(WORDS);
            // SAFETY: the asm writes exactly this frame's `WORDS` words,
            // from `start` up to `end` (64-byte aligned: `Frame` is, and
            // `data` is its first field), which `&self` keeps allocated (F1).
            // Each `movnti` is one aligned 8-byte store, what a relaxed
            // store of the word would compile to; being inline asm, they are
            // not non-atomic Rust accesses, so a lagging reader racing them
            // (possible only in a strategy the checker exists to catch)
            // reads old or zero words with defined behaviour (F6). `sfence`
            // orders the weakly ordered streaming stores before every later
            // store of this thread, so whoever sees the PTE the fault
            // publishes next sees the zeros.
            unsafe {
                std::arch::asm!(
                    "2:",
                    "movnti qword ptr [{p}], {z}",
                    "movnti qword ptr [{p} + 8], {z}",
                    "movnti qword ptr [{p} + 16], {z}",
                    "movnti qword ptr [{p} + 24], {z}",
                    "movnti qword ptr [{p} + 32], {z}",
                    "movnti qword ptr [{p} + 40], {z}",
                    "movnti qword ptr [{p} + 48], {z}",
                    "movnti qword ptr [{p} + 56], {z}",
                    "add {p}, 64",
                    "cmp {p}, {end}",
                    "jne 2b",
                    "sfence",
                    p = inout(reg) start => _,
                    end = in(reg) end,
                    z = in(reg) 0u64,
                    options(nostack),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = hot; // relaxed stores either way
            for w in &self.data {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Copies `src`'s data into this frame (copy-on-write).
    pub fn copy_from(&self, src: &Frame) {
        for (d, s) in self.data.iter().zip(src.data.iter()) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// The initial value of word `i` of page `pgoff` of `file`: what "reading
/// the file" gives. Anonymous shared memory (`/dev/zero`) reads zero.
pub fn file_word(file: &FileId, pgoff: u64, i: usize) -> u64 {
    if file.dev_major == 0 && file.dev_minor == 1 {
        return 0;
    }
    // A cheap mix (splitmix64) of the file, offset and word: distinct files
    // and offsets give distinct data.
    let mut z = file.inode.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pgoff << 9 | i as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counters of a [`PhysMem`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysStats {
    /// Frames allocated and not freed (anonymous and page cache, not the
    /// zero page).
    pub in_use: usize,
    /// Page-cache frames.
    pub page_cache: usize,
    /// Frames ever carved from chunks.
    pub carved: usize,
}

/// One thread's free list and allocation count (F5), on a cache line of
/// its own: a fault touches no line another thread's faults write.
#[derive(Debug, Default)]
struct Pcp {
    list: Mutex<VecDeque<Pfn>>,
    /// Frames this list's threads handed out minus those they freed
    /// (negative when frames move between threads); the sum over all lists
    /// is the number in use.
    in_use: AtomicI64,
}

/// A machine's physical memory (F1–F5).
pub struct PhysMem {
    chunks: Box<[AtomicPtr<[Frame; CHUNK]>]>,
    /// Next never-used pfn.
    next: AtomicU64,
    /// The shared free list.
    free: Mutex<VecDeque<Pfn>>,
    /// The per-thread free lists (F5).
    pcp: Box<[CachePadded<Pcp>]>,
    /// The next inode of a shared anonymous mapping's file (F4).
    shmem_ino: AtomicU64,
    page_cache: Mutex<HashMap<(u32, u32, u64, u64), Pfn>>,
    zero: Pfn,
}

impl std::fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysMem").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl PhysMem {
    /// Physical memory of up to `max_frames` frames (rounded up to whole
    /// 2 MiB chunks), allocated lazily.
    pub fn new(max_frames: usize) -> Self {
        let n = max_frames.div_ceil(CHUNK).max(1);
        let chunks = (0..n).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect();
        let mut pm = PhysMem {
            chunks,
            next: AtomicU64::new(0),
            free: Mutex::new(VecDeque::new()),
            pcp: (0..PCP_LISTS).map(|_| CachePadded::default()).collect(),
            page_cache: Mutex::new(HashMap::new()),
            shmem_ino: AtomicU64::new(0x10_0000),
            zero: 0,
        };
        pm.zero = pm.carve().expect("room for the zero page");
        pm.frame(pm.zero).owner.store(Owner::Zero.pack(), Ordering::Release);
        pm
    }

    /// The shared zero page.
    pub fn zero_pfn(&self) -> Pfn {
        self.zero
    }

    /// The frame `pfn`.
    ///
    /// # Panics
    /// If `pfn` was never handed out by this `PhysMem` (a bug in the caller:
    /// pfns come only from page-table entries this `PhysMem` filled).
    #[inline]
    pub fn frame(&self, pfn: Pfn) -> &Frame {
        let c = self.chunks[(pfn as usize) / CHUNK].load(Ordering::Acquire);
        assert!(!c.is_null(), "pfn {pfn} was never allocated");
        // SAFETY: F1: a published chunk is never freed while `self` lives,
        // and it was fully initialised (zeroed atomics) before the Release
        // store that published it, which the Acquire load above pairs with.
        unsafe { &(*c)[(pfn as usize) % CHUNK] }
    }

    /// A never-used frame, carving a new chunk when needed.
    fn carve(&self) -> Option<Pfn> {
        // Never past the end: at the limit, allocations keep asking (F5).
        let cap = (self.chunks.len() * CHUNK) as u64;
        let pfn = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1))
            .ok()?;
        let ci = (pfn as usize) / CHUNK;
        let slot = &self.chunks[ci];
        if pfn == 1 {
            // The first frame after the zero page: chunk 0 is in use now,
            // populate it as the others are (`chunk_alloc`).
            chunk_populate(self.chunks[0].load(Ordering::Acquire));
        }
        if slot.load(Ordering::Acquire).is_null() {
            // Chunk 0 holds the zero page, which an address space that
            // maps nothing still has: left unpopulated until pfn 1.
            let p = chunk_alloc(ci != 0);
            // ORDERING: Release publishes the zeroed chunk to `frame()`'s
            // Acquire load; AcqRel on failure sees the winner's chunk.
            if slot.compare_exchange(std::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire).is_err() {
                // SAFETY: `p` came from `chunk_alloc` above and was never
                // published.
                unsafe { chunk_free(p) };
            }
        }
        Some(pfn)
    }

    /// Moves up to `n` free frames to `out` (a per-CPU cache refill): from
    /// this thread's list, the shared list, then the oldest frames other
    /// threads' lists hold beyond [`PCP_KEEP`] (F5).
    fn take_free(&self, out: &mut Vec<Pfn>, n: usize) {
        // The most recently freed (the warmest) last, where `pop` finds
        // them first.
        let mut mine = Vec::new();
        take_last(&self.pcp[pcp_index()].list, &mut mine, n);
        let before = out.len();
        if mine.len() < n {
            take_last(&self.free, out, n - mine.len());
        }
        let short = n - mine.len() - (out.len() - before);
        self.take_from_others(out, short, PCP_KEEP);
        out.append(&mut mine);
    }

    /// Moves up to `want` frames from other threads' lists to `out`, from
    /// each the ones it freed longest ago (the least likely to be in its
    /// cache), leaving each at least `keep` (F5: [`PCP_KEEP`] while frames
    /// can be carved, 0 when none can).
    fn take_from_others(&self, out: &mut Vec<Pfn>, mut want: usize, keep: usize) {
        let me = pcp_index();
        for i in 1..PCP_LISTS {
            if want == 0 {
                break;
            }
            let mut l = self.pcp[(me + i) % PCP_LISTS].list.lock().unwrap_or_else(|e| e.into_inner());
            let k = want.min(l.len().saturating_sub(keep));
            out.extend(l.drain(..k));
            want -= k;
        }
    }

    /// A zero-filled frame owned by `owner` (F3), or `None` when physical
    /// memory is exhausted.
    pub fn alloc(&self, owner: Owner) -> Option<Pfn> {
        let mut one = Vec::new();
        self.take_free(&mut one, 1);
        self.hand_out(one.pop(), owner)
    }

    /// Gives out `recycled` (zeroed first, F3) or a fresh frame, owned by
    /// `owner`.
    fn hand_out(&self, recycled: Option<Pfn>, owner: Owner) -> Option<Pfn> {
        let pfn = match recycled {
            Some(p) => {
                self.frame(p).zero(recently_freed_here(p));
                p
            }
            None => match self.carve() {
                Some(p) => p,
                None => {
                    let mut one = Vec::new();
                    self.take_from_others(&mut one, 1, 0);
                    let p = one.pop()?;
                    self.frame(p).zero(false);
                    p
                }
            },
        };
        self.frame(pfn).mapcount.store(1, Ordering::Relaxed);
        self.frame(pfn).owner.store(owner.pack(), Ordering::Release);
        self.pcp[pcp_index()].in_use.fetch_add(1, Ordering::Relaxed);
        Some(pfn)
    }

    /// Frees frames that nothing can reach any more (F2). Page-cache frames
    /// and the zero page in `pfns` are skipped (F4).
    pub(crate) fn free(&self, pfns: impl IntoIterator<Item = Pfn>) {
        let mut n = 0;
        let mut batch = Vec::new();
        for pfn in pfns {
            let f = self.frame(pfn);
            if !matches!(f.owner(), Owner::Anon { .. }) {
                continue;
            }
            // F7: another address space still maps it. ORDERING: AcqRel,
            // so that the last one's free follows every other's use.
            if f.mapcount.fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
            // ORDERING: Release: a reader that sees the new generation also
            // sees the frame as free.
            f.owner.store(Owner::Free.pack(), Ordering::Release);
            f.generation.fetch_add(1, Ordering::Release);
            note_freed(pfn);
            batch.push(pfn);
            n += 1;
        }
        if n > 0 {
            self.pcp[pcp_index()].in_use.fetch_sub(n as i64, Ordering::Relaxed);
            self.give_back(batch);
        }
    }

    /// Puts free frames on this thread's list, moving what passes
    /// [`PCP_HIGH`] to the shared list, oldest first (F5).
    fn give_back(&self, batch: Vec<Pfn>) {
        let spill = {
            let mut l = self.pcp[pcp_index()].list.lock().unwrap_or_else(|e| e.into_inner());
            l.extend(batch);
            let over = l.len().saturating_sub(PCP_HIGH);
            (over > 0).then(|| l.drain(..over).collect::<Vec<_>>())
        };
        if let Some(spill) = spill {
            self.free.lock().unwrap_or_else(|e| e.into_inner()).extend(spill);
        }
    }

    /// The page-cache frame for page `pgoff` of `file`, filled with the
    /// file's data on first use (F4).
    ///
    /// # Errors
    /// `None` when physical memory is exhausted.
    pub fn page_cache(&self, file: &FileId, pgoff: u64) -> Option<Pfn> {
        let key = (file.dev_major, file.dev_minor, file.inode, pgoff);
        let mut pc = self.page_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&p) = pc.get(&key) {
            return Some(p);
        }
        let pfn = self.alloc(Owner::PageCache)?;
        let f = self.frame(pfn);
        for (i, w) in f.data.iter().enumerate() {
            w.store(file_word(file, pgoff, i), Ordering::Relaxed);
        }
        pc.insert(key, pfn);
        Some(pfn)
    }

    /// A new inode for a shared anonymous mapping's file
    /// (`shmem_zero_setup`), distinct from every other of this memory: the
    /// page cache is keyed by inode, and every address space on this
    /// memory (a `fork`'s child among them) shares it (F4).
    pub(crate) fn next_shmem_ino(&self) -> u64 {
        self.shmem_ino.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Frames this memory can hold (the zero page among them): its
    /// `totalram_pages()`.
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Frames allocated and not freed ([`PhysStats::in_use`]).
    pub(crate) fn in_use(&self) -> usize {
        self.pcp.iter().map(|p| p.in_use.load(Ordering::Relaxed)).sum::<i64>().max(0) as usize
    }

    /// Counters.
    pub fn stats(&self) -> PhysStats {
        PhysStats {
            in_use: self.in_use(),
            page_cache: self.page_cache.lock().unwrap_or_else(|e| e.into_inner()).len(),
            carved: self.next.load(Ordering::Relaxed) as usize,
        }
    }
}

impl Drop for PhysMem {
    fn drop(&mut self) {
        for c in self.chunks.iter() {
            let p = c.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: `&mut self`: no reference into the chunk remains;
                // it came from `chunk_alloc` in `carve`.
                unsafe { chunk_free(p) };
            }
        }
    }
}

/// A new chunk of zeroed frames (all-zero bytes are valid `Frame`s:
/// zeroed atomics, which is also F3 for fresh frames).
///
/// On Unix the chunk is its own anonymous mapping, zeroed by the kernel.
/// Why not `alloc_zeroed`: `Frame` is over-aligned (64), and the standard
/// allocator serves that with `posix_memalign` and then writes zeros over
/// all 2 MiB, so every address space paid 2.1 MiB of resident memory for
/// its zero page alone (measured with /proc/self/statm over 1,000 empty
/// address spaces: 2,283 KiB each, now 27–72 KiB; docs/benchmarks.md,
/// tests/memory_per_mm.rs).
///
/// With `populate` (every chunk but the zero page's, and that one too
/// once a frame of it is used: `carve`), the kernel faults the whole
/// chunk in at once (`MAP_POPULATE`). Why: left to fault in page by page
/// under the simulated faults, two faulting threads of `page-fault` made
/// 4.8–5.3 M faults/s in most runs against 6.4–7.3 M for the build that
/// wrote the chunk at once (and 6.7–6.9 M with `MAP_POPULATE`), one
/// thread alike (alternated runs, docs/benchmarks.md).
#[cfg(unix)]
fn chunk_alloc(populate: bool) -> *mut [Frame; CHUNK] {
    let len = std::mem::size_of::<[Frame; CHUNK]>();
    #[cfg(target_os = "linux")]
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
    #[cfg(not(target_os = "linux"))]
    let flags = {
        let _ = populate;
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    };
    // SAFETY: an anonymous private mapping at an address the kernel picks
    // touches no existing memory; the result is checked before use.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<[Frame; CHUNK]>());
    }
    // Page-aligned, so `Frame`'s 64-byte alignment holds.
    p.cast()
}

/// Faults chunk `p` in, as `chunk_alloc(true)` does (a hint: an old
/// kernel without `MADV_POPULATE_WRITE` leaves it to fault page by page).
#[cfg(target_os = "linux")]
fn chunk_populate(p: *mut [Frame; CHUNK]) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` is a whole mapping from `chunk_alloc`, live while the
    // `PhysMem` is; populating writes nothing a reader could see (the
    // pages read as zeroes either way).
    unsafe { libc::madvise(p.cast(), std::mem::size_of::<[Frame; CHUNK]>(), libc::MADV_POPULATE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn chunk_populate(_: *mut [Frame; CHUNK]) {}

/// Gives back a chunk from [`chunk_alloc`].
///
/// # Safety
/// `p` came from `chunk_alloc`, is freed once, and no reference into it
/// remains.
#[cfg(unix)]
unsafe fn chunk_free(p: *mut [Frame; CHUNK]) {
    // SAFETY: the caller's contract: the whole mapping `chunk_alloc` made,
    // unreferenced. munmap of a mapping we own cannot fail but for bad
    // arguments, which these are not.
    unsafe { libc::munmap(p.cast(), std::mem::size_of::<[Frame; CHUNK]>()) };
}

#[cfg(not(unix))]
fn chunk_alloc(_populate: bool) -> *mut [Frame; CHUNK] {
    let layout = std::alloc::Layout::new::<[Frame; CHUNK]>();
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<[Frame; CHUNK]>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    p
}

#[cfg(not(unix))]
unsafe fn chunk_free(p: *mut [Frame; CHUNK]) {
    // SAFETY: the caller's contract; allocated with this layout.
    unsafe { std::alloc::dealloc(p.cast(), std::alloc::Layout::new::<[Frame; CHUNK]>()) };
}

/// A CPU's private stock of free frames, refilled from and spilled to the
/// shared free list in batches so most faults take no shared lock.
#[derive(Debug, Default)]
pub struct FrameCache {
    stock: Vec<Pfn>,
}

const CACHE_BATCH: usize = 32;

impl FrameCache {
    /// A zero-filled frame owned by `owner` (F3).
    pub fn alloc(&mut self, pm: &PhysMem, owner: Owner) -> Option<Pfn> {
        if self.stock.is_empty() {
            pm.take_free(&mut self.stock, CACHE_BATCH);
        }
        pm.hand_out(self.stock.pop(), owner)
    }

    /// Gives back a frame this CPU allocated but never mapped.
    pub fn unused(&mut self, pm: &PhysMem, pfn: Pfn) {
        pm.free([pfn]);
    }

    /// Returns the stock to the free lists (a CPU going away).
    pub fn drain(&mut self, pm: &PhysMem) {
        pm.give_back(std::mem::take(&mut self.stock));
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file(inode: u64) -> FileId {
        FileId { dev_major: 8, dev_minor: 1, inode, path: Arc::from("/f") }
    }

    #[test]
    fn frames_are_zeroed_reused_and_generations_move() {
        let pm = PhysMem::new(4096);
        // Neighbours on both sides, to show the zeroing stays inside its frame.
        let lo = pm.alloc(Owner::Anon { mm: 1, vpn: 4 }).unwrap();
        let a = pm.alloc(Owner::Anon { mm: 1, vpn: 5 }).unwrap();
        let hi = pm.alloc(Owner::Anon { mm: 1, vpn: 6 }).unwrap();
        assert_eq!((lo + 1, a + 1), (a, hi), "carved in order");
        for f in [lo, a, hi] {
            for w in &pm.frame(f).data {
                w.store(7, Ordering::Relaxed);
            }
        }
        assert_eq!(pm.frame(a).owner(), Owner::Anon { mm: 1, vpn: 5 });
        let g = pm.frame(a).generation.load(Ordering::Relaxed);
        pm.free([a]);
        assert_eq!(pm.frame(a).generation.load(Ordering::Relaxed), g + 1);
        assert_eq!(pm.frame(a).owner(), Owner::Free);
        let b = pm.alloc(Owner::Anon { mm: 1, vpn: 6 }).unwrap();
        assert_eq!(a, b, "the free list is reused");
        assert!(pm.frame(b).data.iter().all(|w| w.load(Ordering::Relaxed) == 0), "F3: every word zeroed");
        for f in [lo, hi] {
            assert!(pm.frame(f).data.iter().all(|w| w.load(Ordering::Relaxed) == 7), "a neighbour untouched");
        }
        assert_eq!(pm.stats().in_use, 3);
        // F6's other path: a frame freed by another thread is not in this
        // thread's cache, so it is zeroed with streaming stores. It comes
        // back as the oldest frame of that thread's list beyond PCP_KEEP
        // (F5).
        for w in &pm.frame(b).data {
            w.store(9, Ordering::Relaxed);
        }
        let more: Vec<Pfn> =
            (0..PCP_KEEP as u64).map(|v| pm.alloc(Owner::Anon { mm: 1, vpn: 8 + v }).unwrap()).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                pm.free([b]);
                pm.free(more.iter().copied());
            });
        });
        let c = pm.alloc(Owner::Anon { mm: 1, vpn: 7 }).unwrap();
        assert_eq!(c, b, "the other thread's frame is reused");
        assert!(pm.frame(c).data.iter().all(|w| w.load(Ordering::Relaxed) == 0), "F3 when streamed too");
        for f in [lo, hi] {
            assert!(pm.frame(f).data.iter().all(|w| w.load(Ordering::Relaxed) == 7), "a neighbour untouched");
        }
    }

    /// F5: a thread gets back the frames it freed last; another thread
    /// takes the oldest frames it holds beyond PCP_KEEP, then carves rather
    /// than take its warm ones; the counts add up.
    #[test]
    fn per_thread_lists_reuse_warm_frames_and_others_take_only_the_cold_end() {
        let pm = PhysMem::new(1 << 16);
        let anon = |vpn| Owner::Anon { mm: 1, vpn };
        let mut cache = FrameCache::default();
        let mine: Vec<Pfn> = (0..3 * PCP_KEEP as u64).map(|v| cache.alloc(&pm, anon(v)).unwrap()).collect();
        pm.free(mine.iter().copied());
        cache.drain(&pm);
        // The most recently freed come back first.
        let again = pm.alloc(anon(0)).unwrap();
        assert_eq!(again, *mine.last().unwrap(), "warmest first");
        pm.free([again]);
        let carved = pm.stats().carved;
        let list: Vec<Pfn> = pm.pcp[pcp_index()].list.lock().unwrap().iter().copied().collect();
        assert!(list.len() >= 3 * PCP_KEEP, "this thread keeps its frees (up to PCP_HIGH)");
        let (cold, warm) = list.split_at(list.len() - PCP_KEEP);
        let n = mine.len();
        let pm2 = &pm;
        let theirs = std::thread::scope(|s| {
            s.spawn(move || {
                let mut c = FrameCache::default();
                let v: Vec<Pfn> = (0..n as u64).map(|i| c.alloc(pm2, anon(i)).unwrap()).collect();
                c.drain(pm2);
                v
            })
            .join()
            .unwrap()
        });
        assert!(cold.iter().all(|p| theirs.contains(p)), "the cold end went to the other thread");
        assert!(theirs.iter().all(|p| !warm.contains(p)), "the warm end stayed");
        assert_eq!(pm.stats().carved, carved + (n - cold.len()), "then fresh frames");
        let mut sorted = theirs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), n, "no frame handed out twice");
        assert_eq!(pm.stats().in_use, n, "counts from both threads add up");
        pm.free(theirs);
        assert_eq!(pm.stats().in_use, 0);
    }

    /// F5: with nothing left to carve, an allocation takes another thread's
    /// free frames (the oldest first, zeroed) instead of failing.
    #[test]
    fn at_the_limit_other_threads_lists_are_used() {
        let pm = PhysMem::new(CHUNK);
        let anon = |vpn| Owner::Anon { mm: 1, vpn };
        let all: Vec<Pfn> = std::iter::from_fn(|| pm.alloc(anon(1))).collect();
        assert_eq!(all.len(), CHUNK - 1, "one chunk, less the zero page");
        for &p in &all {
            for w in &pm.frame(p).data {
                w.store(5, Ordering::Relaxed);
            }
        }
        // Another thread frees them all: they stay on its list (fewer than
        // PCP_HIGH).
        std::thread::scope(|s| {
            s.spawn(|| pm.free(all.iter().copied()));
        });
        assert_eq!(pm.free.lock().unwrap().len(), 0);
        let got: Vec<Pfn> = std::iter::from_fn(|| pm.alloc(anon(2))).collect();
        assert_eq!(got, all, "every frame, oldest free first");
        assert!(got.iter().all(|&p| pm.frame(p).data.iter().all(|w| w.load(Ordering::Relaxed) == 0)), "F3");
        assert_eq!(pm.stats().carved, CHUNK, "nothing carved past the end");
    }

    #[test]
    fn page_cache_and_zero_page_are_never_freed() {
        let pm = PhysMem::new(4096);
        let p = pm.page_cache(&file(9), 3).unwrap();
        assert_eq!(pm.page_cache(&file(9), 3), Some(p));
        assert_ne!(pm.page_cache(&file(9), 4), Some(p));
        assert_eq!(pm.frame(p).data[1].load(Ordering::Relaxed), file_word(&file(9), 3, 1));
        pm.free([p, pm.zero_pfn()]);
        assert_eq!(pm.frame(p).owner(), Owner::PageCache);
        assert_eq!(pm.frame(pm.zero_pfn()).owner(), Owner::Zero);
    }

    #[test]
    fn exhaustion_is_an_error_not_a_panic() {
        let pm = PhysMem::new(1);
        let mut got = 0;
        while pm.alloc(Owner::Anon { mm: 0, vpn: 0 }).is_some() {
            got += 1;
        }
        assert_eq!(got, CHUNK - 1, "one chunk, less the zero page");
    }

    #[test]
    fn cpu_caches_refill_and_drain() {
        let pm = PhysMem::new(8192);
        let frames: Vec<_> = (0..100).map(|_| pm.alloc(Owner::Anon { mm: 0, vpn: 0 }).unwrap()).collect();
        pm.free(frames);
        let mut c = FrameCache::default();
        let p = c.alloc(&pm, Owner::Anon { mm: 0, vpn: 1 }).unwrap();
        assert_eq!(c.stock.len(), CACHE_BATCH - 1);
        c.unused(&pm, p);
        c.drain(&pm);
        assert_eq!(pm.stats().in_use, 0);
    }
}
