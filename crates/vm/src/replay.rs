//! Replay of a real program's memory calls: a case (`start.maps`,
//! `trace.strace`, `end.maps`) applied to an [`AddressSpace`] and compared
//! with what the kernel ended with, page by page and line by line.
//!
//! # Owns
//! [`Case`] (loading a case directory), [`replay`] (the engine) and
//! [`compare`] (the page-exact and line comparison), with their results.
//!
//! # Invariants
//! - Y1. Every call of the trace is applied, in the order the kernel
//!   finished them (strace.rs S1), and its result is compared with the
//!   kernel's: the same returned value, or the same errno. A disagreement is
//!   counted and kept (with its trace line); replay goes on.
//! - Y2. Mappings go where the kernel put them, and only by the semantics
//!   under test: a successful non-fixed `mmap` is replayed at the returned
//!   address with `MAP_FIXED_NOREPLACE`, and a successful `mremap` that
//!   moved without `MREMAP_FIXED` is replayed with `MREMAP_FIXED` to the
//!   returned address after checking that the destination is free. If the
//!   model's state has diverged (the kernel's address is taken here), the
//!   call fails with `EEXIST` (from `mmap` itself, or from replay for a
//!   move) instead of clobbering: a divergence shows up at the first call
//!   it touches. Failed calls are replayed exactly as made, so rcuvm's own
//!   checks must give the errno.
//! - Y3. A file's identity comes from the maps: `dev`/`inode` of the first
//!   line with the same path in `start.maps`, else in `end.maps` (what
//!   `/proc/pid/maps` showed for it). A path in neither (a file mapped and
//!   unmapped in between) gets device `00:00` and inode 0 and is listed in
//!   [`Replay::unidentified`]; only `--exact` line comparison could see it,
//!   and such a file is by construction not in `end.maps`. A file
//!   unlinked while mapped shows in maps as `PATH (deleted)`; strace printed
//!   `PATH` when it was mapped, and the unlink is not a memory call, so a
//!   path found only with ` (deleted)` takes that identity and name.
//! - Y4. A case's input never panics the replay: unreadable files and
//!   malformed lines are errors naming the file (and line); every call is
//!   given to rcuvm as the trace has it (an `mremap` whose old range wraps
//!   past 2^64 is `EFAULT`, as in Linux: mremap_semantics.rs).
//! - Y5. An `mmap` of a file that the kernel refused with `ENODEV` (a
//!   directory, `/dev/null`: a file whose operations have no `mmap`) is
//!   not applied: rcuvm knows paths, not file types, so it would map it
//!   and shift every later placement. Such calls are counted apart
//!   ([`Replay::no_mmap_calls`]), neither as agreements nor as
//!   disagreements, so no result of the kernel is taken as rcuvm's.
//!
//! # Concurrency
//! None of its own: [`replay`] makes an [`AddressSpace`] and calls it from
//! one thread (each call takes the mmap write lock as usual).
//!
//! # Linux
//! What strace cannot show is inferred as follows, and each inference is
//! visible in the results:
//! - the descriptor table: strace `-y` prints a path for every open
//!   descriptor, so a non-anonymous `mmap` whose descriptor has no path (or
//!   is negative) gets `EBADF`, as `ksys_mmap_pgoff()` answers after the
//!   offset check;
//! - the descriptor's open mode (it decides `VM_MAYWRITE` of a shared file
//!   mapping): readable; writable if the trace shows the mapping made
//!   writable, by `PROT_WRITE` at `mmap` or by a later `mprotect` the kernel
//!   let through before anything replaced the range; else read-only (the
//!   usual `O_RDONLY` descriptor, and what a later `EACCES` shows);
//! - `start_brk` when `start.maps` has no `[heap]` line: the break the first
//!   `brk` call reports, if that call is a query or a refused move (glibc
//!   starts with `brk(NULL)`);
//! - faults: the `[stack]` VMA may have grown downwards by faults between the
//!   snapshots; [`compare`] accepts that growth (and reports it) when the
//!   pages it took are free in the replay. `[vvar]`, `[vdso]`, `[vsyscall]`
//!   are the kernel's own: they come from `start.maps` and are compared like
//!   any other line. `anon_vma` (set by the first write fault) changes which
//!   neighbours merge, so lines may split differently; pages may not differ.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::maps::{self, MapsError};
use crate::mm::AddressSpace;
use crate::mmap::MapFile;
use crate::strace::{self, MmOp, TraceCall, TraceError};
use crate::uapi::{Errno, MREMAP_FIXED, MREMAP_MAYMOVE, MapFlags, Prot};
use crate::vma::{Backing, FileId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

/// Why a case could not be loaded (Y4).
#[derive(Debug)]
pub enum CaseError {
    /// A file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A malformed maps line (names file and line).
    Maps(MapsError),
    /// A malformed trace line (names file and line).
    Trace(TraceError),
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            CaseError::Maps(e) => e.fmt(f),
            CaseError::Trace(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CaseError {}

/// A replay case: the three files of a case directory, parsed.
#[derive(Debug)]
pub struct Case {
    /// `start.maps`, as read.
    pub start_text: String,
    /// Where `start.maps` came from (for errors).
    pub start_source: String,
    /// The calls of `trace.strace`.
    pub calls: Vec<TraceCall>,
    /// Calls of `trace.strace` not replayed, by name (strace.rs S3).
    pub skipped: std::collections::BTreeMap<String, usize>,
    /// `end.maps`, parsed.
    pub end: Vec<Vma>,
}

/// The most bytes [`read_input`] takes: far more than any snapshot or
/// trace (the shared traces are under 400 KB), and a bound on what a
/// mistaken path (`/dev/zero`) costs.
pub const INPUT_LIMIT: u64 = 1 << 30;

/// A maps snapshot or trace file as text: its bytes read back as UTF-8
/// lossily (Linux prints names as their bytes; rcuvm keeps them as text),
/// from a file or a pipe (`<(...)`), at most [`INPUT_LIMIT`] bytes.
///
/// # Errors
/// The read's, or `InvalidData` past the limit.
pub fn read_input(path: &Path) -> std::io::Result<String> {
    read_at_most(path, INPUT_LIMIT)
}

fn read_at_most(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {limit} bytes: not a maps snapshot or an strace log"),
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl Case {
    /// Reads and parses `dir/start.maps`, `dir/trace.strace`, `dir/end.maps`.
    ///
    /// # Errors
    /// The first file that cannot be read or has a malformed line.
    pub fn load(dir: &Path) -> Result<Case, CaseError> {
        let read = |name: &str| -> Result<(String, String), CaseError> {
            let path = dir.join(name);
            let text = read_input(&path).map_err(|err| CaseError::Io { path: path.clone(), err })?;
            Ok((text, path.display().to_string()))
        };
        let (start_text, start_source) = read("start.maps")?;
        // Parse start.maps now so a malformed line is reported before the
        // trace is even read.
        maps::parse(&start_text, &start_source).map_err(CaseError::Maps)?;
        let (trace, trace_source) = read("trace.strace")?;
        let (calls, skipped) = strace::parse_counting(&trace, &trace_source).map_err(CaseError::Trace)?;
        let (end_text, end_source) = read("end.maps")?;
        let end = maps::parse(&end_text, &end_source).map_err(CaseError::Maps)?;
        Ok(Case { start_text, start_source, calls, skipped, end })
    }
}

/// A call whose result here is not the kernel's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// The trace line of the call's result.
    pub line: usize,
    /// The call.
    pub op: MmOp,
    /// What the kernel returned.
    pub kernel: Result<u64, Errno>,
    /// What rcuvm returned.
    pub rcuvm: Result<u64, Errno>,
}

/// What replaying a case did.
#[derive(Debug)]
pub struct Replay {
    /// The address space after the last call.
    pub mm: AddressSpace,
    /// Calls applied.
    pub applied: usize,
    /// Calls that failed in the kernel.
    pub kernel_failed: usize,
    /// Of those, how many failed here with the same errno.
    pub errno_agreed: usize,
    /// Every call whose result differs (Y1), in trace order.
    pub disagreements: Vec<Disagreement>,
    /// Paths of mapped files whose `dev`/`inode` neither snapshot shows (Y3).
    pub unidentified: BTreeSet<String>,
    /// Distinct mapped file paths.
    pub files: usize,
    /// `start_brk` was taken from the trace's first `brk` (no `[heap]` line).
    pub brk_from_trace: bool,
    /// `mmap`s of files the kernel refused with `ENODEV`, not applied (Y5).
    pub no_mmap_calls: usize,
}

impl Replay {
    /// The replayed address space beside `end` (see [`compare`]).
    pub fn compare(&self, end: &[Vma]) -> Comparison {
        let ours: Vec<Vma> = self.mm.vmas().iter().map(|v| (**v).clone()).collect();
        compare(&ours, end)
    }
}

/// Paths to file identities (Y3).
fn file_ids(start: &[Vma], end: &[Vma]) -> HashMap<Arc<str>, FileId> {
    let mut ids = HashMap::new();
    for v in start.iter().chain(end) {
        if let Backing::File(f) = &v.backing {
            ids.entry(f.path.clone()).or_insert_with(|| f.clone());
        }
    }
    ids
}

/// The identity of the file at `path` (Y3): its own, or that of the same
/// path unlinked later while still mapped (`d_path` then appends
/// ` (deleted)`; an unlink is not a memory call, so the trace cannot show it).
fn file_id<'a>(ids: &'a HashMap<Arc<str>, FileId>, path: &str) -> Option<&'a FileId> {
    ids.get(path).or_else(|| ids.get(format!("{path} (deleted)").as_str()))
}

/// Replays `case` from its `start.maps` (Y1–Y3).
///
/// # Errors
/// A malformed `start.maps` (already checked by [`Case::load`]).
pub fn replay(case: &Case) -> Result<Replay, MapsError> {
    let mm = AddressSpace::from_maps(&case.start_text, &case.start_source)?;
    let start = maps::parse(&case.start_text, &case.start_source)?;
    let ids = file_ids(&start, &case.end);
    let mut r = Replay {
        mm,
        applied: 0,
        kernel_failed: 0,
        errno_agreed: 0,
        disagreements: Vec::new(),
        unidentified: BTreeSet::new(),
        files: 0,
        brk_from_trace: false,
        no_mmap_calls: 0,
    };
    let mut paths = BTreeSet::new();
    let mut brk_seen = false;
    for (i, c) in case.calls.iter().enumerate() {
        if let MmOp::Brk { addr } = c.op {
            // start_brk from the first brk when no [heap] line gave it.
            if !brk_seen && r.mm.brk_range().0 == 0 {
                if let Ok(b) = c.result {
                    if (addr == 0 || addr != b) && r.mm.set_start_brk(b).is_ok() {
                        r.brk_from_trace = true;
                    }
                }
            }
            brk_seen = true;
        }
        if let MmOp::Mmap { fd: Some((_, Some(p))), flags, .. } = &c.op {
            if !flags.contains(MapFlags::ANONYMOUS) && c.result == Err(Errno::Enodev) {
                // Y5: a file without `mmap`, which rcuvm cannot know.
                r.no_mmap_calls += 1;
                continue;
            }
            if !flags.contains(MapFlags::ANONYMOUS) {
                paths.insert(p.clone());
                if file_id(&ids, p).is_none() {
                    r.unidentified.insert(p.clone());
                }
            }
        }
        let got = apply(&r.mm, &case.calls, i, &ids);
        r.applied += 1;
        if c.result.is_err() {
            r.kernel_failed += 1;
            if got == c.result {
                r.errno_agreed += 1;
            }
        }
        if got != c.result {
            r.disagreements.push(Disagreement {
                line: c.line,
                op: c.op.clone(),
                kernel: c.result,
                rcuvm: got,
            });
        }
    }
    r.files = paths.len();
    Ok(r)
}

fn page_align(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// The range a call replaced or removed, as the kernel's result shows it
/// (`mprotect` and `madvise` only change a mapping, so they have none).
fn replaced(c: &TraceCall) -> Vec<(u64, u64)> {
    let span = |a: u64, l: u64| (a, a.saturating_add(page_align(l)));
    match (&c.op, c.result) {
        (MmOp::Munmap { addr, len }, Ok(_)) => vec![span(*addr, *len)],
        (MmOp::Mmap { len, .. }, Ok(at)) => vec![span(at, *len)],
        (MmOp::Mremap { old_addr, old_len, new_len, .. }, Ok(to)) => {
            vec![span(*old_addr, *old_len), span(to, *new_len)]
        }
        _ => Vec::new(),
    }
}

/// Whether the descriptor behind the shared file mapping made by
/// `calls[i]` was open for writing, as far as the trace shows: the mapping
/// was made writable (`PROT_WRITE` at `mmap`, or a later `mprotect` adding
/// it that the kernel let through, before anything replaced the range), or
/// else not (a later `EACCES`, or no sign: the usual `O_RDONLY` descriptor).
fn fd_writable(calls: &[TraceCall], i: usize) -> bool {
    let (MmOp::Mmap { len, prot, .. }, Ok(at)) = (&calls[i].op, calls[i].result) else {
        return false;
    };
    if prot.contains(Prot::WRITE) {
        return true;
    }
    // The parts of the mapping nothing has replaced yet.
    let mut live = vec![(at, at.saturating_add(page_align(*len)))];
    let overlaps = |live: &[(u64, u64)], (s, e): (u64, u64)| live.iter().any(|&(ls, le)| s < le && ls < e);
    for c in &calls[i + 1..] {
        if let MmOp::Mprotect { addr, len, prot } = &c.op {
            if prot.contains(Prot::WRITE) && overlaps(&live, (*addr, addr.saturating_add(page_align(*len)))) {
                match c.result {
                    Ok(_) => return true,
                    Err(Errno::Eacces) => return false,
                    Err(_) => {}
                }
            }
        }
        for (s, e) in replaced(c) {
            live = live
                .into_iter()
                .flat_map(|(ls, le)| [(ls, le.min(s)), (ls.max(e), le)])
                .filter(|(a, b)| a < b)
                .collect();
        }
        if live.is_empty() {
            return false;
        }
    }
    false
}

/// Whether no VMA of `mm` overlaps `[start, end)`.
fn is_free(mm: &AddressSpace, start: u64, end: u64) -> bool {
    !mm.vmas().iter().any(|v| v.start < end && start < v.end)
}

/// Applies one call (Y2) and returns rcuvm's result in the trace's terms.
fn apply(
    mm: &AddressSpace,
    calls: &[TraceCall],
    i: usize,
    ids: &HashMap<Arc<str>, FileId>,
) -> Result<u64, Errno> {
    let c = &calls[i];
    match &c.op {
        MmOp::Brk { addr } => Ok(mm.brk(*addr)),
        MmOp::Munmap { addr, len } => mm.munmap(*addr, *len).map(|()| 0),
        MmOp::Mprotect { addr, len, prot } => mm.mprotect(*addr, *len, *prot).map(|()| 0),
        MmOp::Madvise { addr, len, advice } => mm.madvise(*addr, *len, *advice).map(|()| 0),
        MmOp::Mmap { addr, len, prot, flags, fd, offset } => {
            let anon = flags.contains(MapFlags::ANONYMOUS);
            let file = match fd {
                Some((_, Some(path))) if !anon => {
                    let id = file_id(ids, path).cloned().unwrap_or_else(|| FileId {
                        dev_major: 0,
                        dev_minor: 0,
                        inode: 0,
                        path: Arc::from(path.as_str()),
                    });
                    let shared = flags.bits() & MapFlags::SHARED_VALIDATE.bits() != MapFlags::PRIVATE.bits();
                    let writable = shared && fd_writable(calls, i);
                    Some(MapFile { id, readable: true, writable })
                }
                // ksys_mmap_pgoff(): no open file behind the descriptor.
                _ if !anon && offset % PAGE_SIZE == 0 => return Err(Errno::Ebadf),
                _ => None,
            };
            let placed = !flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
            let (addr, flags) = match c.result {
                Ok(at) if placed => (at, *flags | MapFlags::FIXED_NOREPLACE),
                _ => (*addr, *flags),
            };
            mm.mmap(addr, *len, *prot, flags, file.as_ref(), *offset)
        }
        MmOp::Mremap { old_addr, old_len, new_len, flags, new_addr } => {
            let moved = match c.result {
                Ok(to) if to != *old_addr && flags & (MREMAP_FIXED | MREMAP_MAYMOVE) == MREMAP_MAYMOVE => {
                    Some(to)
                }
                _ => None,
            };
            match moved {
                Some(to) => {
                    let len = page_align(*new_len);
                    if len == 0 || !is_free(mm, to, to.saturating_add(len)) {
                        // The kernel's destination is taken here: the model
                        // has diverged; refuse instead of clobbering (Y2).
                        return Err(Errno::Eexist);
                    }
                    mm.mremap(*old_addr, *old_len, *new_len, flags | MREMAP_FIXED, to)
                }
                None => mm.mremap(*old_addr, *old_len, *new_len, *flags, new_addr.unwrap_or(0)),
            }
        }
    }
}

/// One range where the replay and `end.maps` differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageDiff {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The replay's line covering `start`, if any.
    pub ours: Option<String>,
    /// `end.maps`'s line covering `start`, if any.
    pub theirs: Option<String>,
}

/// The replay's maps beside `end.maps`.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Pages mapped in `end.maps`.
    pub pages_end: u64,
    /// Pages whose prot, shared/private, path (or name) or offset differ, or
    /// that are mapped on one side only.
    pub pages_differing: u64,
    /// The differing ranges, in address order (adjacent pieces joined).
    pub diffs: Vec<PageDiff>,
    /// Lines of `end.maps` that the replay prints identically.
    pub lines_identical: usize,
    /// Lines of `end.maps`.
    pub lines_end: usize,
    /// Lines of the replay.
    pub lines_ours: usize,
    /// Lines only `end.maps` has, in address order.
    pub only_end: Vec<String>,
    /// Lines only the replay has, in address order.
    pub only_ours: Vec<String>,
    /// Pages the `[stack]` grew by faults between the snapshots (accepted).
    pub stack_growth_pages: u64,
}

impl Comparison {
    /// Every page agrees.
    pub fn page_exact(&self) -> bool {
        self.pages_differing == 0
    }

    /// Every line agrees.
    pub fn lines_exact(&self) -> bool {
        self.lines_identical == self.lines_end && self.lines_ours == self.lines_end
    }
}

/// What a page shows in maps: access bits, `s`/`p`, path or name, and the
/// file offset of the segment's first page (0 for anonymous memory, as maps
/// prints it).
fn page_key(v: &Vma, at: u64) -> (u64, bool, Option<&str>, u64) {
    let f = v.flags;
    let access = (f & (VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)).bits();
    match &v.backing {
        Backing::File(id) => {
            (access, f.contains(VmFlags::MAYSHARE), Some(&id.path), v.pgoff_at(at) << PAGE_SHIFT)
        }
        Backing::Anon => (access, f.contains(VmFlags::MAYSHARE), v.name.as_deref(), 0),
    }
}

/// Extends the replay's `[stack]` down to `end.maps`'s when only faults can
/// explain the difference: same top, lower bottom, and nothing mapped in
/// between here. Returns the pages added.
fn grow_stack(ours: &mut [Vma], theirs: &[Vma]) -> u64 {
    let is_stack = |v: &Vma| v.name.as_deref() == Some("[stack]");
    let (Some(t), Some(i)) = (theirs.iter().find(|v| is_stack(v)), ours.iter().position(is_stack)) else {
        return 0;
    };
    let o = &ours[i];
    let below_free = i == 0 || ours[i - 1].end <= t.start;
    if o.end != t.end || t.start >= o.start || !below_free {
        return 0;
    }
    let grown = (o.start - t.start) >> PAGE_SHIFT;
    ours[i] = Vma { start: t.start, pgoff: t.start >> PAGE_SHIFT, ..o.clone() };
    grown
}

/// Compares the replay's VMAs with `end.maps`'s, page by page and line by
/// line, after accepting the stack's growth by faults.
pub fn compare(ours: &[Vma], theirs: &[Vma]) -> Comparison {
    let mut ours = ours.to_vec();
    let mut c = Comparison { stack_growth_pages: grow_stack(&mut ours, theirs), ..Comparison::default() };
    c.pages_end = theirs.iter().map(|v| v.len() >> PAGE_SHIFT).sum();
    let our_lines: Vec<String> = ours.iter().map(maps::render_line).collect();
    let their_lines: Vec<String> = theirs.iter().map(maps::render_line).collect();
    let set: BTreeSet<&str> = our_lines.iter().map(String::as_str).collect();
    let their_set: BTreeSet<&str> = their_lines.iter().map(String::as_str).collect();
    c.only_end = their_lines.iter().filter(|l| !set.contains(l.as_str())).cloned().collect();
    c.only_ours = our_lines.iter().filter(|l| !their_set.contains(l.as_str())).cloned().collect();
    c.lines_identical = their_lines.len() - c.only_end.len();
    c.lines_end = their_lines.len();
    c.lines_ours = our_lines.len();

    // Sweep both sorted lists over segments where neither side changes.
    let (mut i, mut j) = (0, 0);
    let mut at = match (ours.first(), theirs.first()) {
        (Some(a), Some(b)) => a.start.min(b.start),
        (Some(a), None) => a.start,
        (None, Some(b)) => b.start,
        (None, None) => return c,
    };
    loop {
        while i < ours.len() && ours[i].end <= at {
            i += 1;
        }
        while j < theirs.len() && theirs[j].end <= at {
            j += 1;
        }
        let (o, t) = (ours.get(i), theirs.get(j));
        if o.is_none() && t.is_none() {
            break;
        }
        let o_in = o.filter(|v| v.start <= at);
        let t_in = t.filter(|v| v.start <= at);
        let next = [
            o.map(|v| if v.start > at { v.start } else { v.end }),
            t.map(|v| if v.start > at { v.start } else { v.end }),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("one side has a VMA");
        let same = match (o_in, t_in) {
            (None, None) => true,
            (Some(a), Some(b)) => page_key(a, at) == page_key(b, at),
            _ => false,
        };
        if !same {
            c.pages_differing += (next - at) >> PAGE_SHIFT;
            match c.diffs.last_mut() {
                Some(d) if d.end == at => d.end = next,
                _ => c.diffs.push(PageDiff {
                    start: at,
                    end: next,
                    ours: o_in.map(maps::render_line),
                    theirs: t_in.map(maps::render_line),
                }),
            }
        }
        at = next;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmas(text: &str) -> Vec<Vma> {
        maps::parse(text, "t.maps").unwrap()
    }

    #[test]
    fn compare_finds_page_differences_and_counts_lines() {
        let end = vmas(
            "00400000-00402000 r--p 00000000 fe:00 7                                  /bin/x
00402000-00404000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
",
        );
        // The same pages split differently, and a stack one page shorter.
        let same = vmas(
            "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
00401000-00402000 r--p 00001000 fe:00 7                                  /bin/x
00402000-00404000 rw-p 00000000 00:00 0 
7ffd00001000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
",
        );
        let c = compare(&same, &end);
        assert!(c.page_exact(), "{c:?}");
        assert_eq!((c.lines_identical, c.lines_end, c.lines_ours), (2, 3, 4));
        assert_eq!((c.only_end.len(), c.only_ours.len()), (1, 2));
        assert_eq!(c.stack_growth_pages, 1);
        assert!(!c.lines_exact());

        // Wrong offset on one page, wrong prot on another, one page missing.
        let wrong = vmas(
            "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
00401000-00402000 r--p 00002000 fe:00 7                                  /bin/x
00402000-00403000 r--p 00000000 00:00 0 
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
",
        );
        let c = compare(&wrong, &end);
        assert_eq!(c.pages_differing, 3);
        assert_eq!(c.diffs.len(), 1, "{:?}", c.diffs);
        assert_eq!((c.diffs[0].start, c.diffs[0].end), (0x401000, 0x404000));
        assert!(c.diffs[0].ours.as_deref().unwrap().contains("00002000"));

        // A page mapped only here, and a stack that shrank (not growth).
        let extra = vmas(
            "00400000-00402000 r--p 00000000 fe:00 7                                  /bin/x
00402000-00405000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00005000 rw-p 00000000 00:00 0                          [stack]
",
        );
        let c = compare(&extra, &end);
        assert_eq!((c.pages_differing, c.stack_growth_pages), (2, 0));
        assert!(c.diffs[0].theirs.is_none() && c.diffs[0].ours.is_some());
    }

    /// Input is read lossily and at most so far: `/dev/zero` (given by
    /// mistake) is an error, not a read that never ends.
    #[test]
    fn input_is_bounded_and_lossy() {
        let e = read_at_most(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let dir = std::env::temp_dir().join(format!("rcuvm-read-{}", std::process::id()));
        std::fs::write(&dir, b"caf\xe9\n").unwrap();
        assert_eq!(read_input(&dir).unwrap(), "caf\u{fffd}\n");
        std::fs::remove_file(&dir).unwrap();
    }

    fn case(start: &str, trace: &str, end: &str) -> Case {
        Case {
            start_text: start.to_string(),
            start_source: "start.maps".into(),
            calls: strace::parse(trace, "trace.strace").unwrap(),
            skipped: Default::default(),
            end: vmas(end),
        }
    }

    const START: &str = "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn failed_calls_must_fail_with_the_kernels_errno() {
        let trace = "\
1  brk(NULL)                         = 0x600000
1  munmap(0x7f0000001001, 4096)     = -1 EINVAL (Invalid argument)
1  mprotect(0x7f0000000000, 4096, PROT_READ) = -1 ENOMEM (Cannot allocate memory)
1  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
1  mmap(0x7f0000001000, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE, -1, 0) = -1 EEXIST (File exists)
1  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 5, 0) = -1 EBADF (Bad file descriptor)
1  mmap(NULL, 4096, PROT_READ, MAP_SHARED, 3</data/f>, 0) = 0x7f0000002000
1  mprotect(0x7f0000002000, 4096, PROT_READ|PROT_WRITE) = -1 EACCES (Permission denied)
";
        let end = "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
7f0000000000-7f0000002000 r--p 00000000 00:00 0 
7f0000002000-7f0000003000 r--s 00000000 fe:00 9                          /data/f
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
";
        let c = case(START, trace, end);
        let r = replay(&c).unwrap();
        assert_eq!((r.applied, r.kernel_failed, r.errno_agreed), (8, 5, 5), "{:?}", r.disagreements);
        assert!(r.disagreements.is_empty());
        assert!(r.brk_from_trace);
        let cmp = r.compare(&c.end);
        assert!(cmp.page_exact() && cmp.lines_exact(), "{cmp:?}");
        assert!(r.unidentified.is_empty());
    }

    #[test]
    fn mmaps_of_files_without_mmap_are_not_replayed() {
        // Y5: the kernel refused /dev/null with ENODEV; rcuvm, which knows
        // no file types, would map it and place the next mapping elsewhere.
        let trace = "\
1  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3</dev/null>, 0) = -1 ENODEV (No such device)
1  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
";
        let end = "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
7f0000000000-7f0000002000 r--p 00000000 00:00 0 
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
";
        let c = case(START, trace, end);
        let r = replay(&c).unwrap();
        assert_eq!((r.applied, r.no_mmap_calls, r.kernel_failed), (1, 1, 0));
        assert!(r.disagreements.is_empty(), "{:?}", r.disagreements);
        assert!(r.compare(&c.end).lines_exact());
    }

    #[test]
    fn a_divergence_is_reported_not_clobbered() {
        // The kernel placed the mapping where this model has one already
        // (start.maps disagrees with the trace): EEXIST, not a silent
        // replacement; and an errno the model does not give is counted.
        let trace = "\
1  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x400000
1  munmap(0x500000, 4096)            = -1 EINVAL (Invalid argument)
1  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
1  mremap(0x7f0000000000, 8192, 16384, MREMAP_MAYMOVE) = 0x3ff000
";
        let c = case(START, trace, START);
        let r = replay(&c).unwrap();
        assert_eq!(r.disagreements.len(), 3, "{:?}", r.disagreements);
        assert_eq!(r.disagreements[0].rcuvm, Err(Errno::Eexist));
        assert_eq!((r.disagreements[1].line, r.disagreements[1].rcuvm), (2, Ok(0)));
        // The move's destination overlaps /bin/x here: refused, not moved.
        assert_eq!((r.disagreements[2].line, r.disagreements[2].rcuvm), (4, Err(Errno::Eexist)));
        assert!(r.mm.query(0x7f0000000000).is_some());
        assert_eq!((r.kernel_failed, r.errno_agreed), (1, 0));
        // The file mapping is still there, untouched.
        assert!(r.mm.maps().contains("/bin/x"));
    }

    #[test]
    fn a_shared_mapping_is_writable_when_the_trace_shows_it() {
        // Made read-only from a descriptor the kernel later let become
        // writable (O_RDWR; after part of it was unmapped), and one it
        // refused (O_RDONLY).
        let trace = "\
1  mmap(NULL, 8192, PROT_READ, MAP_SHARED, 3</data/rw>, 0) = 0x7f0000000000
1  mmap(NULL, 4096, PROT_READ, MAP_SHARED, 4</data/ro>, 0) = 0x7f0000004000
1  mprotect(0x7f0000004000, 4096, PROT_READ|PROT_WRITE) = -1 EACCES (Permission denied)
1  munmap(0x7f0000000000, 4096)      = 0
1  mprotect(0x7f0000001000, 4096, PROT_READ|PROT_WRITE) = 0
1  munmap(0x7f0000004000, 4096)      = 0
1  mmap(NULL, 4096, PROT_READ, MAP_SHARED, 4</data/ro>, 0) = 0x7f0000004000
1  munmap(0x7f0000004000, 4096)      = 0
1  mprotect(0x7f0000004000, 4096, PROT_READ|PROT_WRITE) = -1 ENOMEM (Cannot allocate memory)
";
        let end = "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
7f0000001000-7f0000002000 rw-s 00001000 fe:00 8                          /data/rw
7ffd00000000-7ffd00004000 rw-p 00000000 00:00 0                          [stack]
";
        let c = case(START, trace, end);
        assert!(fd_writable(&c.calls, 0));
        assert!(!fd_writable(&c.calls, 1));
        // Unmapped before anything showed its mode: read-only by default.
        assert!(!fd_writable(&c.calls, 6));
        let r = replay(&c).unwrap();
        assert!(r.disagreements.is_empty(), "{:?}", r.disagreements);
        assert!(r.compare(&c.end).lines_exact());
        assert_eq!(r.unidentified.iter().collect::<Vec<_>>(), ["/data/ro"]);
    }

    /// The kernel's answers (this machine, Linux 6.18): the shrink's unmap
    /// of a tail past TASK_SIZE is EINVAL.
    #[test]
    fn wrapping_mremap_is_answered_as_linux_does() {
        let trace = "\
1  mmap(0x7f0000000000, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED, -1, 0) = 0x7f0000000000
1  mremap(0x7f0000000000, 18446744073709547520, 4096, 0) = -1 EINVAL (Invalid argument)
1  mremap(0x7f0000000000, 18446744073709547520, 4096, MREMAP_MAYMOVE|MREMAP_FIXED, 0x1000) = -1 EINVAL (Invalid argument)
";
        let r = replay(&case(START, trace, START)).unwrap();
        assert!(r.disagreements.is_empty(), "{:?}", r.disagreements);
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("rcuvm-replay-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = Case::load(&dir).unwrap_err();
        assert!(matches!(e, CaseError::Io { .. }), "{e}");
        assert!(e.to_string().contains(&dir.join("start.maps").display().to_string()), "{e}");

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("start.maps"), START).unwrap();
        std::fs::write(dir.join("trace.strace"), "1 brk(NULL) = 0x1000\n1 mmap(NULL) = 0x2000\n").unwrap();
        std::fs::write(dir.join("end.maps"), START).unwrap();
        let e = Case::load(&dir).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2: ", dir.join("trace.strace").display())), "{e}");

        std::fs::write(dir.join("trace.strace"), "1 brk(NULL) = 0x1000\n").unwrap();
        std::fs::write(dir.join("end.maps"), format!("{START}garbage\n")).unwrap();
        let e = Case::load(&dir).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3: ", dir.join("end.maps").display())), "{e}");
        assert!(Case::load(&dir.join("end.maps")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
