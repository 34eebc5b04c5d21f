//! Differential test against the host kernel: the same random `mmap`,
//! `munmap`, `mprotect`, `madvise`, `mremap` (in place, moves across
//! several VMAs, `MREMAP_DONTUNMAP`), `mlock`, `mlock2`, `munlock`,
//! `mlockall` and `munlockall` calls,
//! run for real (libc) inside a reserved arena of this process and on an
//! `AddressSpace`, must return the same results and leave the same
//! `/proc/self/maps` lines over the arena after every call, and the same
//! `VM_*` flags (`/proc/self/smaps`' `VmFlags`, for the flags rcuvm models:
//! maps cannot show `VM_ACCOUNT` or `VM_NORESERVE`, which decide merging).
//! The kernel's `mlock` faults pages in, which gives VMAs `anon_vma`s that
//! decide later merges: the model must follow that too (mlock.rs L3).
//! Sequences also write to pages (`Touch`): a real store in the arena, and
//! a store through an rcuvm `Cpu`, whose page fault gives the VMA its
//! `anon_vma` (fault.rs FL4), so merging after faults is compared too. A
//! touch is made only where the VMA is writable (in both, as they agree up
//! to that call); elsewhere it is skipped on both sides.
//!
//! Pages are compared too: each VMA's smaps `Rss` and `Anonymous`, after
//! every call, so population (`MAP_POPULATE`, `MAP_LOCKED`, `mlock`,
//! `MADV_POPULATE_READ`/`WRITE`: the zero page is not counted, a write
//! fault's page is), zapping, moves and touches must leave the same pages
//! resident. rcuvm's `MADV_FREE` frees at once, as if reclaim ran at once;
//! Linux frees lazily, under memory pressure, so after the kernel's
//! `MADV_FREE` the test reclaims those pages itself (`MADV_DONTNEED` on
//! each VMA the kernel advised, up to the first it refuses: a locked one).
//! `MADV_PAGEOUT` is not drawn on a machine with swap (it would swap pages
//! out, which rcuvm does not model), and residency is not compared where
//! KSM runs (it may merge pages; it does not run here).
//!
//! The arena is a private anonymous `PROT_NONE` reservation between two
//! shared anonymous guard pages (a shmem file each, which nothing private
//! can merge with). Sequences: `RCUVM_DIFF_SEQS` (default 200), seeds from
//! `0x5eed0000 + RCUVM_DIFF_SEED` (default 0). A
//! divergence is shrunk to a minimal sequence (ops removed while it still
//! diverges, each candidate replayed on a fresh arena) and printed with its
//! seed; addresses in ops are offsets from the arena start.
//!
//! Its own test binary with a single test, so no other test thread maps
//! memory into the arena's holes.

#![cfg(target_os = "linux")]

use rcuvm::uapi::{
    MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT, MLOCK_ONFAULT, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, madv,
};
use std::cell::RefCell;
use std::sync::Arc;

use rcuvm::{AddressSpace, Cpu, Errno, MapFlags, PAGE_SIZE, Prot, VmFlags, Vma};

#[path = "common/smaps.rs"]
mod common_smaps;
use common_smaps::{MNEMONICS, smaps_lines};

const ARENA_PAGES: u64 = 64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One call; every address is an offset from the arena start. `Mlock`
/// is `mlock` with `flags: None`, else `mlock2`. `Mlockall` locks the whole
/// test process (only the arena is compared); the arena's `Drop` calls
/// `munlockall` so that no sequence inherits `MCL_FUTURE`.
#[derive(Clone, Debug)]
enum Op {
    Mmap {
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: Prot,
    },
    Madvise {
        addr: u64,
        len: u64,
        advice: i32,
    },
    Mremap {
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    },
    Mlock {
        addr: u64,
        len: u64,
        flags: Option<u32>,
    },
    Munlock {
        addr: u64,
        len: u64,
    },
    Mlockall {
        flags: u32,
    },
    Munlockall,
    /// A one-word store at this offset (a write fault the first time).
    Touch {
        addr: u64,
    },
}

fn errno() -> Errno {
    let c = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Errno::from_code(c).unwrap_or_else(|| panic!("kernel returned errno {c}, which rcuvm does not model"))
}

fn ok_or_errno(r: i32) -> Result<u64, Errno> {
    if r != 0 { Err(errno()) } else { Ok(0) }
}

fn kernel(op: &Op, lo: u64) -> Result<u64, Errno> {
    let at = |a: u64| (lo + a) as *mut libc::c_void;
    match *op {
        Op::Mmap { addr, len, prot, flags } => {
            // SAFETY: only ever MAP_FIXED inside the arena this test owns (or
            // refused calls), never over memory Rust uses.
            let p =
                unsafe { libc::mmap(at(addr), len as usize, prot.bits() as i32, flags.bits() as i32, -1, 0) };
            if p == libc::MAP_FAILED { Err(errno()) } else { Ok(p as u64) }
        }
        // SAFETY: inside the arena this test owns.
        Op::Munmap { addr, len } => ok_or_errno(unsafe { libc::munmap(at(addr), len as usize) }),
        Op::Mprotect { addr, len, prot } => {
            // SAFETY: inside the arena this test owns.
            ok_or_errno(unsafe { libc::mprotect(at(addr), len as usize, prot.bits() as i32) })
        }
        Op::Madvise { addr, len, advice } => {
            // SAFETY: inside the arena this test owns; its pages hold only
            // what touches wrote, which no later step reads back.
            let r = ok_or_errno(unsafe { libc::madvise(at(addr), len as usize, advice) });
            if advice == madv::FREE {
                reclaim_lazyfree(lo + addr, lo + addr + len);
            }
            r
        }
        Op::Mremap { addr, old_len, new_len, flags, new_addr } => {
            // SAFETY: source and destination inside the arena this test owns.
            let p = unsafe {
                libc::mremap(at(addr), old_len as usize, new_len as usize, flags as i32, at(new_addr))
            };
            if p == libc::MAP_FAILED { Err(errno()) } else { Ok(p as u64) }
        }
        Op::Mlock { addr, len, flags: None } => {
            // SAFETY: locking only changes residency, inside the arena.
            ok_or_errno(unsafe { libc::mlock(at(addr), len as usize) })
        }
        Op::Mlock { addr, len, flags: Some(f) } => {
            // SAFETY: as for mlock.
            ok_or_errno(unsafe { libc::mlock2(at(addr), len as usize, f) })
        }
        Op::Munlock { addr, len } => {
            // SAFETY: as for mlock.
            ok_or_errno(unsafe { libc::munlock(at(addr), len as usize) })
        }
        // SAFETY: locking the process only changes residency.
        Op::Mlockall { flags } => ok_or_errno(unsafe { libc::mlockall(flags as i32) }),
        // SAFETY: as for mlockall.
        Op::Munlockall => ok_or_errno(unsafe { libc::munlockall() }),
        Op::Touch { addr } => {
            // SAFETY: `Arena::step` touches only a page of the arena that
            // is mapped writable (the model says so, and agrees with the
            // kernel up to this call).
            unsafe { std::ptr::write_volatile((lo + addr) as *mut u64, 1) };
            Ok(0)
        }
    }
}

/// What reclaim would do to the pages the kernel's `MADV_FREE` just made
/// lazily free in `[start, end)`: drop them, as rcuvm's `MADV_FREE` does at
/// once. The kernel advised each VMA in the range in address order up to
/// the first it refused (a locked one: `can_madv_lru_vma()`; the arena
/// holds only private anonymous memory), read here from its own smaps.
fn reclaim_lazyfree(start: u64, end: u64) {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut cur: Option<(u64, u64)> = None;
    for l in text.lines() {
        if let Ok(v) = rcuvm::maps::parse(l, "/proc/self/smaps") {
            cur = v.first().filter(|v| v.start < end && v.end > start).map(|v| (v.start, v.end));
        } else if let Some(flags) = l.strip_prefix("VmFlags:") {
            let Some((s, e)) = cur.take() else { continue };
            if flags.split_whitespace().any(|m| m == "lo") {
                return;
            }
            let (s, e) = (s.max(start), e.min(end));
            // SAFETY: part of the arena this test owns, already advised
            // MADV_FREE (its data may be dropped at any time).
            unsafe { libc::madvise(s as *mut libc::c_void, (e - s) as usize, libc::MADV_DONTNEED) };
        }
    }
}

fn model(mm: &AddressSpace, op: &Op, lo: u64) -> Result<u64, Errno> {
    let unit = |r: Result<(), Errno>| r.map(|()| 0);
    match *op {
        Op::Mmap { addr, len, prot, flags } => mm.mmap(lo + addr, len, prot, flags, None, 0),
        Op::Munmap { addr, len } => unit(mm.munmap(lo + addr, len)),
        Op::Mprotect { addr, len, prot } => unit(mm.mprotect(lo + addr, len, prot)),
        Op::Madvise { addr, len, advice } => unit(mm.madvise(lo + addr, len, advice)),
        Op::Mremap { addr, old_len, new_len, flags, new_addr } => {
            mm.mremap(lo + addr, old_len, new_len, flags, lo + new_addr)
        }
        Op::Mlock { addr, len, flags: None } => unit(mm.mlock(lo + addr, len)),
        Op::Mlock { addr, len, flags: Some(f) } => unit(mm.mlock2(lo + addr, len, f)),
        Op::Munlock { addr, len } => unit(mm.munlock(lo + addr, len)),
        Op::Mlockall { flags } => unit(mm.mlockall(flags)),
        Op::Munlockall => {
            mm.munlockall();
            Ok(0)
        }
        Op::Touch { .. } => unreachable!("Arena::step runs touches through its Cpu"),
    }
}

fn mnemonics(f: VmFlags) -> String {
    MNEMONICS.iter().filter(|(_, b)| f.contains(*b)).map(|(m, _)| *m).collect::<Vec<_>>().join(" ")
}

/// The VMAs `window` lines would show, from the model's own `Vma`s (its
/// flags named as the test names them, independently of rcuvm's smaps).
fn window(vmas: &[Vma], lo: u64, hi: u64) -> Vec<String> {
    vmas.iter()
        .filter(|v| v.start < hi && v.end > lo)
        .map(|v| format!("{v} | {}", mnemonics(v.flags)))
        .collect()
}

/// Whether KSM runs on this machine (it does not here: `run` is 0).
fn ksm_on() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|t| t.trim() != "0")
}

/// Whether this machine has swap (`/proc/swaps` lists a device).
fn swap_on() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|t| t.lines().count() > 1)
}

fn random_op(r: &mut Rng, lo: u64, mm: &AddressSpace) -> Op {
    let page = r.below(ARENA_PAGES);
    let pages = 1 + r.below(8.min(ARENA_PAGES - page));
    let (addr, len) = (page * PAGE_SIZE, pages * PAGE_SIZE);
    if r.below(4) == 0 {
        return Op::Touch { addr: addr + 8 * r.below(512) };
    }
    // Up to two more pages, often across holes and several VMAs.
    let extra = r.below(3).min(ARENA_PAGES - page - pages) * PAGE_SIZE;
    let prot =
        [Prot::empty(), Prot::READ, Prot::READ | Prot::WRITE, Prot::READ | Prot::EXEC][r.below(4) as usize];
    let mut flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    flags |= if r.below(4) == 0 { MapFlags::FIXED_NOREPLACE } else { MapFlags::FIXED };
    if r.below(3) == 0 {
        flags |= MapFlags::NORESERVE;
    }
    if r.below(6) == 0 {
        flags |= MapFlags::LOCKED;
    }
    if r.below(6) == 0 {
        flags |= MapFlags::POPULATE;
    }
    if r.below(5) == 0 {
        return random_mremap(r, lo, mm, addr, len);
    }
    if r.below(40) == 0 {
        // MCL_ONFAULT alone and no flag are EINVAL.
        let all = [
            MCL_CURRENT,
            MCL_FUTURE,
            MCL_CURRENT | MCL_FUTURE,
            MCL_CURRENT | MCL_ONFAULT,
            MCL_FUTURE | MCL_ONFAULT,
            MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT,
            MCL_ONFAULT,
            0,
        ];
        let i = r.below(all.len() as u64 + 2) as usize;
        return all.get(i).map_or(Op::Munlockall, |&flags| Op::Mlockall { flags });
    }
    if r.below(5) == 0 {
        // Unaligned starts and lengths (mlock and munlock round them),
        // still ending inside the arena.
        let (addr, len) = if r.below(4) == 0 {
            let o = 1 + r.below(PAGE_SIZE - 1);
            (addr + o, len - o - r.below(PAGE_SIZE.min(len - o)))
        } else {
            (addr, len)
        };
        return match r.below(6) {
            0 | 1 => Op::Mlock { addr, len: len + extra, flags: None },
            2 => Op::Mlock { addr, len: len + extra, flags: Some(MLOCK_ONFAULT) },
            3 => Op::Mlock { addr, len, flags: Some([0, 2][r.below(2) as usize]) },
            _ => Op::Munlock { addr, len: len + extra },
        };
    }
    if r.below(4) == 0 {
        let advices = [
            madv::NORMAL,
            madv::RANDOM,
            madv::SEQUENTIAL,
            madv::DONTFORK,
            madv::DOFORK,
            madv::WIPEONFORK,
            madv::KEEPONFORK,
            madv::DONTDUMP,
            madv::DODUMP,
            madv::HUGEPAGE,
            madv::NOHUGEPAGE,
            madv::DONTNEED,
            madv::FREE,
            madv::WILLNEED,
            madv::COLD,
            madv::PAGEOUT,
            madv::MERGEABLE,
            madv::UNMERGEABLE,
            madv::POPULATE_READ,
            madv::POPULATE_WRITE,
            madv::POPULATE_WRITE,
            5, // not an advice: EINVAL
        ];
        let mut advice = advices[r.below(advices.len() as u64) as usize];
        if advice == madv::PAGEOUT && swap_on() {
            advice = madv::COLD; // PAGEOUT would swap pages out (see the top)
        }
        return Op::Madvise { addr, len: len + extra, advice };
    }
    match r.below(16) {
        0..=5 => Op::Mmap { addr, len, prot, flags },
        6..=8 => Op::Munmap { addr, len },
        9..=12 => Op::Mprotect { addr, len: len + extra, prot },
        // Refused calls: both must refuse, the same way, changing nothing
        // (or, for mprotect over a hole, changing what Linux changes).
        13 => Op::Munmap { addr: addr + 1, len },
        14 => Op::Mprotect { addr, len, prot: Prot::from_bits_retain(0x10) | prot },
        _ => Op::Mmap { addr, len: 0, prot, flags },
    }
}

/// An `mremap` whose destination stays inside the arena: in place (shrink
/// or grow), a fixed move with or without resizing (without, the source may
/// span several VMAs and holes), `MREMAP_DONTUNMAP` to a fixed place or to
/// a free hint. Never `MREMAP_MAYMOVE` to a place of the kernel's choosing,
/// which is chosen among the whole process's mappings, which the model
/// does not have.
fn random_mremap(r: &mut Rng, lo: u64, mm: &AddressSpace, addr: u64, len: u64) -> Op {
    let page = addr / PAGE_SIZE;
    let new_pages = 1 + r.below(8);
    let dest = |r: &mut Rng, pages: u64| r.below(ARENA_PAGES - pages + 1) * PAGE_SIZE;
    let grow = (new_pages * PAGE_SIZE).min((ARENA_PAGES - page) * PAGE_SIZE);
    let fixed = MREMAP_FIXED | MREMAP_MAYMOVE;
    let dontunmap = MREMAP_DONTUNMAP | MREMAP_MAYMOVE;
    if r.below(16) == 0 {
        // old_len 0 on private memory: EINVAL once the VMA is found.
        return Op::Mremap { addr, old_len: 0, new_len: len, flags: MREMAP_MAYMOVE, new_addr: 0 };
    }
    let (flags, new_len, new_addr) = match r.below(8) {
        0..=2 => (0, grow, 0),
        3 => (fixed, new_pages * PAGE_SIZE, dest(r, new_pages)),
        4 | 5 => (fixed, len, dest(r, len / PAGE_SIZE)),
        // One in four with a resize, which DONTUNMAP refuses (EINVAL).
        6 => (dontunmap | MREMAP_FIXED, if r.below(4) == 0 { grow } else { len }, dest(r, len / PAGE_SIZE)),
        _ => {
            // DONTUNMAP to a hint: only a free one (both then use it).
            let to = dest(r, len / PAGE_SIZE);
            let free = mm.vmas().iter().all(|v| v.end <= lo + to || v.start >= lo + to + len);
            (if free { dontunmap } else { dontunmap | MREMAP_FIXED }, len, to)
        }
    };
    Op::Mremap { addr, old_len: len, new_len, flags, new_addr }
}

/// The guards and arena, in the kernel and in a fresh `AddressSpace`.
struct Arena {
    base: *mut libc::c_void,
    lo: u64,
    mm: Arc<AddressSpace>,
    cpu: RefCell<Cpu>,
}

const TOTAL: u64 = (ARENA_PAGES + 2) * PAGE_SIZE;

impl Arena {
    fn new() -> Arena {
        let base = common_smaps::reserve_guarded(TOTAL);
        let lo = base as u64 + PAGE_SIZE;
        let arena = Op::Mmap {
            addr: 0,
            len: ARENA_PAGES * PAGE_SIZE,
            prot: Prot::empty(),
            flags: MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::NORESERVE | MapFlags::FIXED,
        };
        let mm = Arc::new(AddressSpace::new());
        assert_eq!(kernel(&arena, lo), Ok(lo));
        assert_eq!(model(&mm, &arena, lo), Ok(lo));
        let cpu = RefCell::new(mm.cpu());
        Arena { base, lo, mm, cpu }
    }

    /// Runs `op` on both: the result they agree on, or the divergence,
    /// described.
    fn step(&self, op: &Op) -> Result<Result<u64, Errno>, String> {
        let (lo, hi) = (self.lo, self.lo + ARENA_PAGES * PAGE_SIZE);
        let (k, m) = match *op {
            Op::Touch { addr } => {
                let writable = self.mm.query(lo + addr).is_some_and(|v| v.flags.contains(VmFlags::WRITE));
                if !writable {
                    return Ok(Ok(0)); // skipped on both sides
                }
                let m = self.cpu.borrow_mut().write(lo + addr, 1).map(|()| 0).map_err(|e| {
                    panic!("rcuvm refused a store the kernel allows at {addr:#x}: {e}");
                });
                (kernel(op, lo), m)
            }
            _ => (kernel(op, lo), model(&self.mm, op, lo)),
        };
        let vmas: Vec<Vma> = self.mm.vmas().iter().map(|v| (**v).clone()).collect();
        let host = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut kl, mut ml) = (
            smaps_lines(&host, "/proc/self/smaps", lo, hi),
            smaps_lines(&self.mm.smaps(), "rcuvm smaps", lo, hi),
        );
        if ksm_on() {
            // KSM may merge the kernel's zero-filled pages behind the
            // test's back: residency is not comparable then.
            for l in kl.iter_mut().chain(ml.iter_mut()) {
                l.truncate(l.rfind(" | rss").unwrap_or(l.len()));
            }
        }
        // rcuvm's smaps names the flags of its VMAs as the test does.
        let named: Vec<&str> =
            ml.iter().map(|l| l.rsplit_once(" | rss").map_or(l.as_str(), |(v, _)| v)).collect();
        assert_eq!(named, window(&vmas, lo, hi), "rcuvm's smaps against its own VMAs");
        if k == m && kl == ml {
            return Ok(k);
        }
        Err(format!(
            "last call {op:?}\nkernel: {k:?}\nrcuvm:  {m:?}\nkernel lines:\n{}\nrcuvm lines:\n{}\n\
             rcuvm (offset, anon_vma): {:?}",
            kl.join("\n"),
            ml.join("\n"),
            vmas.iter()
                .filter(|v| v.start < hi && v.end > lo)
                .map(|v| (v.start - lo, v.anon()))
                .collect::<Vec<_>>(),
        ))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unlocks the process (a sequence may have locked it) and
        // unmaps only the guards and arena.
        unsafe {
            libc::munlockall();
            libc::munmap(self.base, TOTAL as usize)
        };
    }
}

/// Replays `ops` on a fresh arena: the index of the first divergent op and
/// its description.
fn replay(ops: &[Op]) -> Option<(usize, String)> {
    let arena = Arena::new();
    ops.iter().enumerate().find_map(|(i, op)| arena.step(op).err().map(|d| (i, d)))
}

/// Delta debugging: drops chunks of ops (halving the chunk size down to
/// one) while the rest still diverges, and cuts after the divergent op.
fn shrink(mut ops: Vec<Op>) -> (Vec<Op>, String) {
    let (k, mut why) = replay(&ops).expect("the sequence diverged once; divergences are deterministic");
    ops.truncate(k + 1);
    let mut chunk = ops.len().div_ceil(2);
    while chunk > 0 {
        let mut i = 0;
        while i < ops.len() {
            let cand: Vec<Op> = ops[..i].iter().chain(&ops[(i + chunk).min(ops.len())..]).cloned().collect();
            match replay(&cand) {
                Some((k, d)) => {
                    ops = cand[..=k].to_vec();
                    why = d;
                }
                None => i += chunk,
            }
        }
        chunk /= 2;
    }
    (ops, why)
}

/// How often the calls this test exists for happened, so that a change to
/// the draws that stops exercising them fails the test.
#[derive(Debug, Default)]
struct Seen {
    mlock_ok: u64,
    mlock_err: u64,
    munlock_ok: u64,
    multi_vma_moves: u64,
    dontunmap_ok: u64,
    dontunmap_hint: u64,
    mlockall_ok: u64,
    /// Stores made (write faults the first time on a page).
    touches: u64,
    /// `MAP_POPULATE` mappings and `MADV_POPULATE_*` calls that succeeded.
    populate_ok: u64,
    /// Calls after which some arena page was resident (smaps' `Rss`).
    resident: u64,
}

impl Seen {
    fn count(&mut self, op: &Op, multi: bool, ok: bool) {
        match *op {
            Op::Mlock { .. } if ok => self.mlock_ok += 1,
            Op::Mlock { .. } => self.mlock_err += 1,
            Op::Munlock { .. } if ok => self.munlock_ok += 1,
            Op::Mremap { flags, .. } if ok && flags & MREMAP_DONTUNMAP != 0 => {
                self.dontunmap_ok += 1;
                self.dontunmap_hint += u64::from(flags & MREMAP_FIXED == 0);
            }
            Op::Mremap { .. } if ok && multi => self.multi_vma_moves += 1,
            Op::Mlockall { .. } if ok => self.mlockall_ok += 1,
            Op::Mmap { flags, .. } if ok && flags.contains(MapFlags::POPULATE) => self.populate_ok += 1,
            Op::Madvise { advice, .. }
                if ok && matches!(advice, madv::POPULATE_READ | madv::POPULATE_WRITE) =>
            {
                self.populate_ok += 1
            }
            _ => {}
        }
    }
}

/// Whether a call's range meets more than one VMA.
fn spans_vmas(mm: &AddressSpace, op: &Op, lo: u64) -> bool {
    let Op::Mremap { addr, old_len, .. } = *op else { return false };
    mm.vmas().iter().filter(|v| v.start < lo + addr + old_len && v.end > lo + addr).count() > 1
}

fn run_sequence(seed: u64, ops: usize, seen: &mut Seen) {
    let mut r = Rng(seed | 1);
    let arena = Arena::new();
    let mut history = Vec::new();
    for _ in 0..ops {
        let op = random_op(&mut r, arena.lo, &arena.mm);
        history.push(op.clone());
        let multi = spans_vmas(&arena.mm, &op, arena.lo);
        if let Op::Touch { addr } = op {
            seen.touches +=
                u64::from(arena.mm.query(arena.lo + addr).is_some_and(|v| v.flags.contains(VmFlags::WRITE)));
        }
        let res = arena.step(&op);
        if let Ok(agreed) = res {
            seen.count(&op, multi, agreed.is_ok());
            seen.resident += u64::from(arena.mm.phys().stats().in_use > 0);
        }
        if let Err(first) = res {
            drop(arena);
            let (min, why) = shrink(history);
            panic!(
                "seed {seed:#x}: divergence\n{first}\n\nshrunk to {} calls (offsets from the arena start):\n\
                 {min:#?}\n{why}",
                min.len()
            );
        }
    }
}

/// Unhinted private anonymous mappings of whole 2 MiB are placed on a
/// 2 MiB boundary by both (mmap.rs P6); exact positions are unit-tested
/// in mmap_semantics.rs against figures from this kernel.
fn thp_placement_matches_the_kernel() {
    let (len, rw) = (2u64 << 20, Prot::READ | Prot::WRITE);
    let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::NORESERVE;
    let mm = AddressSpace::new();
    for n in 1..=3u64 {
        // SAFETY: a fresh mapping the kernel places; unmapped below.
        let k = unsafe {
            libc::mmap(std::ptr::null_mut(), (n * len) as usize, rw.bits() as i32, flags.bits() as i32, -1, 0)
        };
        assert_ne!(k, libc::MAP_FAILED);
        let m = mm.mmap(0, n * len, rw, flags, None, 0).unwrap();
        // SAFETY: the mapping made above, which nothing else uses.
        unsafe { libc::munmap(k, (n * len) as usize) };
        assert_eq!((k as u64 % len, m % len), (0, 0), "{n} x 2 MiB: kernel {k:?}, rcuvm {m:#x}");
    }
}

/// Hand-written sequences for what the random draws never make: `mmap`'s
/// map types and the flags `calc_vm_flag_bits` turns into VMA flags
/// (mmap.rs P4, P5). Offsets in pages of the arena.
fn edge_sequences() -> Vec<Vec<Op>> {
    let p = PAGE_SIZE;
    let rw = Prot::READ | Prot::WRITE;
    let fixed = |page: u64, bits: u32| Op::Mmap {
        addr: page * p,
        len: p,
        prot: rw,
        flags: MapFlags::from_bits_retain(0x10 | 0x20 | bits),
    };
    // rcuvm models a machine with no huge pages reserved (mmap.rs P7).
    let no_huge_pages = ["nr_hugepages", "nr_overcommit_hugepages"]
        .iter()
        .all(|f| std::fs::read_to_string(format!("/proc/sys/vm/{f}")).is_ok_and(|v| v.trim() == "0"));
    let hugetlb = if no_huge_pages {
        vec![
            // MAP_HUGETLB with no huge pages reserved: an unaligned fixed
            // address or a page size x86-64 lacks is EINVAL, else ENOMEM.
            fixed(20, 0x02 | 0x4_0000),
            fixed(21, 0x02 | 0x4_0000),
            fixed(20, 0x02 | 0x4_0000 | (22 << 26)),
            Op::Mmap {
                addr: 20 * p,
                len: p,
                prot: rw,
                flags: MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::HUGETLB,
            },
        ]
    } else {
        Vec::new()
    };
    vec![
        hugetlb,
        // Every map type but MAP_SHARED, MAP_PRIVATE and MAP_DROPPABLE is
        // EINVAL for anonymous memory (MAP_SHARED_VALIDATE too).
        [0x00, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]
            .map(|t| fixed(1, t))
            .to_vec(),
        vec![
            // MAP_GROWSDOWN: not on shared anonymous memory.
            fixed(2, 0x01 | 0x100),
            fixed(2, 0x02 | 0x100),
            // MAP_DROPPABLE: its flags; not locked, not growing down.
            fixed(4, 0x08),
            fixed(6, 0x08 | 0x2000),
            fixed(6, 0x08 | 0x100),
            Op::Madvise { addr: 4 * p, len: p, advice: madv::KEEPONFORK },
            Op::Madvise { addr: 4 * p, len: p, advice: madv::DODUMP },
            Op::Madvise { addr: 4 * p, len: p, advice: madv::DONTFORK },
            Op::Mlock { addr: 4 * p, len: p, flags: None },
            // MAP_STACK is VM_NOHUGEPAGE, so no merge with its neighbour.
            fixed(10, 0x02 | 0x2_0000),
            fixed(11, 0x02),
            // MAP_SYNC is VM_SYNC on anonymous memory too. (Not on shared
            // anonymous memory here: its maps line names a shmem inode.)
            fixed(14, 0x02 | 0x8_0000),
        ],
    ]
}

#[test]
fn random_mm_call_sequences_match_the_kernel() {
    for (i, ops) in edge_sequences().into_iter().enumerate() {
        if let Some((k, why)) = replay(&ops) {
            panic!("edge sequence {i} diverged at op {k}:\n{why}");
        }
    }
    thp_placement_matches_the_kernel();
    let seqs: u64 = std::env::var("RCUVM_DIFF_SEQS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    // Other seeds than CI's: RCUVM_DIFF_SEED (added to the first seed).
    let base: u64 = std::env::var("RCUVM_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut seen = Seen::default();
    for s in 0..seqs {
        run_sequence(0x5EED_0000 + base + s, 40, &mut seen);
    }
    eprintln!("{seqs} sequences agreed with the kernel; calls of interest: {seen:?}");
    let Seen {
        mlock_ok,
        mlock_err,
        munlock_ok,
        multi_vma_moves,
        dontunmap_ok,
        dontunmap_hint,
        mlockall_ok,
        touches,
        populate_ok,
        resident,
    } = seen;
    let counts = [
        mlock_ok,
        mlock_err,
        munlock_ok,
        multi_vma_moves,
        dontunmap_ok,
        dontunmap_hint,
        mlockall_ok,
        touches,
        populate_ok,
        resident,
    ];
    assert!(counts.iter().all(|&n| n > 0), "the draws no longer exercise every call: {seen:?}");
}
