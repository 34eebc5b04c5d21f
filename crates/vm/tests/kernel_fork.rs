//! `fork` against the host kernel's: the same mappings are made in an
//! arena of this process and in an `AddressSpace`; then this process
//! forks for real and the rcuvm address space forks too, and both
//! children make the same calls. After each, the child's VMAs, their
//! modelled `VmFlags` and their `Rss`/`Anonymous` must agree (fork.rs
//! FK1–FK2: which VMAs a child gets, unlocked, `MADV_WIPEONFORK` emptied,
//! which pages it shares, and how its new `anon_vma`s decide merges).
//! The parent's side is compared after the fork, and after it writes
//! every writable page. A hand-written scenario, then random ones
//! (`RCUVM_FORK_SEQS`, default 60: about 3 s).
//!
//! The real child only makes system calls into memory allocated before
//! the fork (it is a copy of a threaded process: no allocation, no
//! locks), and sends each result and its `/proc/self/smaps` back through
//! a pipe. Its own test binary, so no other test maps into the arena.

#![cfg(target_os = "linux")]

use std::sync::Arc;

use rcuvm::uapi::madv;
use rcuvm::{AddressSpace, Cpu, MapFlags, PAGE_SIZE, Prot};

#[path = "common/smaps.rs"]
mod common_smaps;
use common_smaps::smaps_lines;

const P: u64 = PAGE_SIZE;
const ARENA_PAGES: u64 = 64;
const TOTAL: u64 = (ARENA_PAGES + 2) * P;

/// One call; addresses are offsets from the arena start.
#[derive(Clone, Copy, Debug)]
enum Op {
    Mmap {
        page: u64,
        pages: u64,
        prot: Prot,
        flags: MapFlags,
    },
    Munmap {
        page: u64,
        pages: u64,
    },
    Mprotect {
        page: u64,
        pages: u64,
        prot: Prot,
    },
    Madvise {
        page: u64,
        pages: u64,
        advice: i32,
    },
    /// A one-word store (a write fault the first time).
    Touch {
        page: u64,
    },
    /// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)` of `pages` to `to`.
    Mremap {
        page: u64,
        pages: u64,
        to: u64,
    },
    /// `mlock` (`lock`) or `munlock`: locking populates, which breaks
    /// copy-on-write in a child (mlock.rs L3).
    Mlock {
        page: u64,
        pages: u64,
        lock: bool,
    },
}

/// The result as the kernel reports it: 0, or `-errno` (mmap: the
/// address, or `-errno`). No allocation, no panic: the forked child runs
/// this.
fn host(op: Op, lo: u64) -> i64 {
    let at = |page: u64| (lo + page * P) as *mut libc::c_void;
    let len = |pages: u64| (pages * P) as usize;
    let r = match op {
        Op::Mmap { page, pages, prot, flags } => {
            // SAFETY: MAP_FIXED inside the arena this test owns.
            let p =
                unsafe { libc::mmap(at(page), len(pages), prot.bits() as i32, flags.bits() as i32, -1, 0) };
            if p == libc::MAP_FAILED { -1 } else { return p as i64 - lo as i64 }
        }
        // SAFETY: inside the arena this test owns.
        Op::Munmap { page, pages } => unsafe { libc::munmap(at(page), len(pages)) },
        // SAFETY: inside the arena.
        Op::Mprotect { page, pages, prot } => unsafe {
            libc::mprotect(at(page), len(pages), prot.bits() as i32)
        },
        // SAFETY: inside the arena; only pages the test itself wrote.
        Op::Madvise { page, pages, advice } => unsafe { libc::madvise(at(page), len(pages), advice) },
        Op::Touch { page } => {
            // SAFETY: the scenario touches only arena pages the model
            // maps writable.
            unsafe { std::ptr::write_volatile((lo + page * P) as *mut u64, page + 1) };
            0
        }
        Op::Mremap { page, pages, to } => {
            let f = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
            // SAFETY: source and destination inside the arena.
            let p = unsafe { libc::mremap(at(page), len(pages), len(pages), f, at(to)) };
            if p == libc::MAP_FAILED { -1 } else { return p as i64 - lo as i64 }
        }
        // SAFETY: locking only changes residency, inside the arena.
        Op::Mlock { page, pages, lock: true } => unsafe { libc::mlock(at(page), len(pages)) },
        // SAFETY: as for mlock.
        Op::Mlock { page, pages, lock: false } => unsafe { libc::munlock(at(page), len(pages)) },
    };
    if r == 0 { 0 } else { -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
}

/// The same on an rcuvm address space and one of its CPUs.
fn model(mm: &AddressSpace, cpu: &mut Cpu, op: Op, lo: u64) -> i64 {
    let r = match op {
        Op::Mmap { page, pages, prot, flags } => {
            return mm
                .mmap(lo + page * P, pages * P, prot, flags, None, 0)
                .map_or_else(|e| -i64::from(e.code()), |a| a as i64 - lo as i64);
        }
        Op::Munmap { page, pages } => mm.munmap(lo + page * P, pages * P),
        Op::Mprotect { page, pages, prot } => mm.mprotect(lo + page * P, pages * P, prot),
        Op::Madvise { page, pages, advice } => mm.madvise(lo + page * P, pages * P, advice),
        Op::Touch { page } => {
            cpu.write(lo + page * P, page + 1).expect("the scenario touches writable pages");
            Ok(())
        }
        Op::Mremap { page, pages, to } => {
            let f = rcuvm::uapi::MREMAP_MAYMOVE | rcuvm::uapi::MREMAP_FIXED;
            return mm
                .mremap(lo + page * P, pages * P, pages * P, f, lo + to * P)
                .map_or_else(|e| -i64::from(e.code()), |a| a as i64 - lo as i64);
        }
        Op::Mlock { page, pages, lock: true } => mm.mlock(lo + page * P, pages * P),
        Op::Mlock { page, pages, lock: false } => mm.munlock(lo + page * P, pages * P),
    };
    r.map_or_else(|e| -i64::from(e.code()), |()| 0)
}

fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}
fn fixed() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED
}

/// The parent's mappings before the fork (page offsets in the arena).
fn before_fork() -> Vec<Op> {
    use Op::*;
    vec![
        // Faulted in, then split by mprotect: three VMAs, one anon_vma.
        Mmap { page: 0, pages: 4, prot: rw(), flags: fixed() },
        Touch { page: 0 },
        Touch { page: 2 },
        Mprotect { page: 1, pages: 1, prot: Prot::READ },
        // Not copied.
        Mmap { page: 8, pages: 4, prot: rw(), flags: fixed() },
        Touch { page: 8 },
        Madvise { page: 8, pages: 4, advice: madv::DONTFORK },
        // Copied without pages or anon_vma.
        Mmap { page: 16, pages: 4, prot: rw(), flags: fixed() },
        Touch { page: 17 },
        Madvise { page: 16, pages: 4, advice: madv::WIPEONFORK },
        // Locked and populated: the child gets the pages, not the lock.
        Mmap { page: 24, pages: 4, prot: rw(), flags: fixed() | MapFlags::LOCKED },
        // Never faulted: no anon_vma.
        Mmap { page: 32, pages: 4, prot: rw(), flags: fixed() },
        // Zero pages only: not copied (no anon_vma).
        Mmap { page: 40, pages: 2, prot: Prot::READ, flags: fixed() | MapFlags::POPULATE },
        // Two VMAs that one anon_vma makes mergeable in the parent.
        Mmap { page: 48, pages: 2, prot: rw(), flags: fixed() },
        Touch { page: 48 },
        Mmap { page: 50, pages: 2, prot: Prot::READ, flags: fixed() },
        Mprotect { page: 50, pages: 2, prot: rw() },
        Touch { page: 50 },
        Mprotect { page: 49, pages: 2, prot: Prot::READ },
    ]
}

/// What both children do, comparing after each call.
fn in_the_child() -> Vec<Op> {
    use Op::*;
    vec![
        // Back to one protection: merges in the parent; in the child?
        Mprotect { page: 1, pages: 1, prot: rw() },
        Mprotect { page: 49, pages: 2, prot: rw() },
        // Copy-on-write and fresh pages.
        Touch { page: 0 },
        Touch { page: 3 },
        Touch { page: 16 },
        Touch { page: 25 },
        Madvise { page: 2, pages: 1, advice: madv::DONTNEED },
        // New neighbours of copied VMAs.
        Mmap { page: 4, pages: 1, prot: rw(), flags: fixed() },
        Touch { page: 4 },
        Mmap { page: 12, pages: 2, prot: rw(), flags: fixed() },
        Mprotect { page: 32, pages: 4, prot: Prot::READ },
        Mprotect { page: 32, pages: 4, prot: rw() },
        Mprotect { page: 40, pages: 2, prot: rw() },
        Touch { page: 41 },
        Munmap { page: 24, pages: 2 },
        Madvise { page: 26, pages: 2, advice: madv::DONTNEED },
    ]
}

/// Writes all of `bytes` to `fd`; false if the pipe broke. No allocation.
fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: a slice this process owns.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// The forked child: runs `ops`, sending after the fork and after each
/// call its result (8 bytes), then its smaps (8 bytes of length, then the
/// text), read into `buf`. Never returns.
fn child(ops: &[Op], lo: u64, fd: i32, buf: &mut [u8]) -> ! {
    let mut send = |result: i64| -> bool {
        // SAFETY: a NUL-terminated path; `buf` is this process's memory.
        let f = unsafe { libc::open(c"/proc/self/smaps".as_ptr(), libc::O_RDONLY) };
        if f < 0 {
            return false;
        }
        let mut len = 0;
        loop {
            // SAFETY: reads into the unused tail of `buf`.
            let n = unsafe { libc::read(f, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        // SAFETY: the descriptor opened above.
        unsafe { libc::close(f) };
        len < buf.len()
            && write_all(fd, &result.to_le_bytes())
            && write_all(fd, &(len as u64).to_le_bytes())
            && write_all(fd, &buf[..len])
    };
    let mut ok = send(0);
    for &op in ops {
        ok = ok && send(host(op, lo));
    }
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
}

/// The child's messages: (result, smaps text) per step.
fn parse(mut bytes: &[u8]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let r = i64::from_le_bytes(bytes[..8].try_into().unwrap());
        let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        out.push((r, String::from_utf8(bytes[16..16 + n].to_vec()).unwrap()));
        bytes = &bytes[16 + n..];
    }
    out
}

/// Runs `before` in the arena and in a fresh address space, forks both,
/// runs `after` in both children, and compares the parent after the fork
/// and after it writes every writable page: the first divergence,
/// described. Stores are made only where the model allows them: `after`
/// must only store where the model's child may (a divergence there kills
/// the real child, which is reported).
fn run_scenario(before: &[Op], after: &[Op]) -> Result<(), String> {
    // The arena: PROT_NONE between two shared guard pages, as in
    // kernel_diff.rs.
    let base = common_smaps::reserve_guarded(TOTAL);
    let r = scenario_in(base as u64 + P, before, after);
    // SAFETY: unmaps only the guards and arena.
    unsafe { libc::munmap(base, TOTAL as usize) };
    r
}

/// The reservation that makes the arena, on both sides.
fn reserve() -> Op {
    Op::Mmap { page: 0, pages: ARENA_PAGES, prot: Prot::empty(), flags: fixed() | MapFlags::NORESERVE }
}

/// Lines that differ, for a message.
fn diverged(what: &str, k: i64, m: i64, kl: &[String], ml: &[String]) -> String {
    format!("{what}: kernel {k}, rcuvm {m}\nkernel:\n{}\nrcuvm:\n{}", kl.join("\n"), ml.join("\n"))
}

fn scenario_in(lo: u64, before: &[Op], after: &[Op]) -> Result<(), String> {
    let parent = Arc::new(AddressSpace::new());
    let mut pcpu = parent.cpu();
    let hi = lo + ARENA_PAGES * P;
    let window = |text: &str, src: &str| smaps_lines(text, src, lo, hi);
    let host_now = || window(&std::fs::read_to_string("/proc/self/smaps").unwrap(), "/proc/self/smaps");
    for &op in std::iter::once(&reserve()).chain(before) {
        if matches!(op, Op::Touch { page } if !writable(&parent, lo, page)) {
            continue;
        }
        let (k, m) = (host(op, lo), model(&parent, &mut pcpu, op, lo));
        let (kl, ml) = (host_now(), window(&parent.smaps(), "rcuvm"));
        if (k, &kl) != (m, &ml) {
            return Err(diverged(&format!("before the fork, after {op:?}"), k, m, &kl, &ml));
        }
    }

    let mut buf = vec![0u8; 8 << 20];
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes system calls into memory allocated
    // before the fork (`child`), then exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the read end is the parent's.
        unsafe { libc::close(fds[0]) };
        child(after, lo, fds[1], &mut buf);
    }
    // SAFETY: the write end is the child's.
    unsafe { libc::close(fds[1]) };
    let mut got = Vec::new();
    loop {
        // SAFETY: reads into `buf`, which this process owns.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    let mut status = 0;
    // SAFETY: the child forked above.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }

    let forked = Arc::new(parent.fork());
    let mut ccpu = forked.cpu();
    let steps = parse(&got);
    for (i, (k, text)) in steps.iter().enumerate() {
        let (op, m) = match i {
            0 => (None, 0),
            _ => (Some(after[i - 1]), model(&forked, &mut ccpu, after[i - 1], lo)),
        };
        let (kl, ml) = (window(text, "the child's /proc/self/smaps"), window(&forked.smaps(), "rcuvm child"));
        if (*k, &kl) != (m, &ml) {
            return Err(diverged(&format!("in the child, after {op:?}"), *k, m, &kl, &ml));
        }
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) || steps.len() != after.len() + 1 {
        return Err(format!("the real child failed after {} steps: status {status:#x}", steps.len()));
    }
    // The parent after the fork: unchanged VMAs, the same pages resident;
    // then its own copy-on-write.
    let (kl, ml) = (host_now(), window(&parent.smaps(), "rcuvm"));
    if kl != ml {
        return Err(diverged("the parent after the fork", 0, 0, &kl, &ml));
    }
    for page in (0..ARENA_PAGES).filter(|&p| writable(&parent, lo, p)) {
        let op = Op::Touch { page };
        host(op, lo);
        model(&parent, &mut pcpu, op, lo);
    }
    let (kl, ml) = (host_now(), window(&parent.smaps(), "rcuvm"));
    if kl != ml {
        return Err(diverged("the parent after its writes", 0, 0, &kl, &ml));
    }
    Ok(())
}

/// Whether the model maps arena page `page` writable.
fn writable(mm: &AddressSpace, lo: u64, page: u64) -> bool {
    mm.query(lo + page * P).is_some_and(|v| v.flags.contains(rcuvm::VmFlags::WRITE))
}

#[test]
fn fork_matches_the_kernels() {
    if let Err(why) = run_scenario(&before_fork(), &in_the_child()) {
        panic!("{why}");
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A random call in the arena: mappings (some populated), unmaps,
/// protections, advices (`DONTFORK`, `WIPEONFORK`, `DONTNEED`,
/// `POPULATE_*` among them), moves, locks and stores.
fn random_op(r: &mut Rng) -> Op {
    let page = r.below(ARENA_PAGES);
    let pages = 1 + r.below(6.min(ARENA_PAGES - page));
    let prots = [Prot::empty(), Prot::READ, rw(), rw()];
    match r.below(13) {
        12 => Op::Mlock { page, pages, lock: r.below(3) != 0 },
        0..=2 => {
            let flags = if r.below(5) == 0 { fixed() | MapFlags::POPULATE } else { fixed() };
            Op::Mmap { page, pages, prot: prots[r.below(4) as usize], flags }
        }
        3 => Op::Munmap { page, pages },
        4 | 5 => Op::Mprotect { page, pages, prot: prots[r.below(4) as usize] },
        6 => {
            let advices = [
                madv::DONTFORK,
                madv::DOFORK,
                madv::WIPEONFORK,
                madv::KEEPONFORK,
                madv::DONTNEED,
                madv::POPULATE_READ,
                madv::POPULATE_WRITE,
            ];
            Op::Madvise { page, pages, advice: advices[r.below(advices.len() as u64) as usize] }
        }
        7 => {
            let to = r.below(ARENA_PAGES - pages + 1);
            if to < page + pages && page < to + pages {
                Op::Touch { page }
            } else {
                Op::Mremap { page, pages, to }
            }
        }
        _ => Op::Touch { page },
    }
}

/// `n` random calls for a child of `parent`, drawn against a fork of it
/// so that stores go only where that child may write.
fn random_child_ops(r: &mut Rng, parent: &AddressSpace, lo: u64, n: usize) -> Vec<Op> {
    let mm = Arc::new(parent.fork());
    let mut cpu = mm.cpu();
    let mut ops = Vec::new();
    while ops.len() < n {
        let op = random_op(r);
        if matches!(op, Op::Touch { page } if !writable(&mm, lo, page)) {
            continue;
        }
        model(&mm, &mut cpu, op, lo);
        ops.push(op);
    }
    ops
}

/// Random calls before the fork and in the child (`RCUVM_FORK_SEQS`
/// scenarios, default 60): the parent's calls run on a model first, at
/// an arena-shaped address, to draw the child's.
#[test]
fn random_forks_match_the_kernels() {
    let n: u64 = std::env::var("RCUVM_FORK_SEQS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let lo = 0x4000_0000;
    for seed in 0..n {
        let mut r = Rng(0xf04c_0000 + seed);
        let before: Vec<Op> = (0..24).map(|_| random_op(&mut r)).collect();
        let parent = Arc::new(AddressSpace::new());
        let mut cpu = parent.cpu();
        for &op in std::iter::once(&reserve()).chain(&before) {
            if !matches!(op, Op::Touch { page } if !writable(&parent, lo, page)) {
                model(&parent, &mut cpu, op, lo);
            }
        }
        let after = random_child_ops(&mut r, &parent, lo, 24);
        if let Err(why) = run_scenario(&before, &after) {
            panic!("seed {seed}: {why}\nbefore the fork: {before:?}\nin the child: {after:?}");
        }
    }
}
