//! The oracle: checks one recorded history (record.rs) against the rules
//! every correct strategy keeps.
//!
//! # Owns
//! [`check`] and [`Violation`].
//!
//! # Invariants (the rules; each violation names one)
//! Times are record.rs's clock (H1); the states and when each may be
//! current are model.rs's (M1): an event overlapping an mm call may see
//! the state before it or the one after it, at each address, and the
//! oracle accepts either. It never assumes more ordering than the
//! intervals give, so a correct strategy cannot fail it (soundness); what
//! it catches is what no interleaving of the intervals explains.
//! - P1. A successful access at `va` needs a state that may be current
//!   during the access and maps `va` with the rights (a write: `VM_WRITE`;
//!   a read: any right, as x86). An access that starts after the munmap or
//!   mprotect that removed the rights returned has no such state: it went
//!   through a stale translation.
//! - P2. A frame incarnation (pfn, generation) other than the zero page
//!   belongs to one page of one mapping (model.rs M2) for its whole life
//!   (a frame `fork` shares is a page of the child too, whose accesses are
//!   not recorded: P9 checks what the child reads):
//!   the candidate pages of all accesses through it (P1's pages) must have
//!   one in common. Two accesses that can only have been to different
//!   pages, through the same incarnation, show a cross-mapping leak. The
//!   zero page is never written and always reads 0.
//! - P3. No access overlaps the free of its frame (`Touched::freed_during`,
//!   cpu.rs C5).
//! - P4. Readers: a maps or smaps text parses (lines in order, never
//!   overlapping); each page of each line is, in a state that may be
//!   current during the read, in a VMA with the line's rights and (file
//!   lines) its `pgoff` (mm.rs A2's `view`; page by page, because a
//!   call's intermediate VMAs are in no recorded state); a VMA present, identical,
//!   in every such state and away from every call made during the read
//!   (a page either side: merges) is shown whole; smaps' `Anonymous <=
//!   Rss <= Size`; a query's answer is such a line containing the
//!   address, or nothing only if some such state leaves the address
//!   unmapped or a call during the read touched it (`MAP_FIXED` over a
//!   mapping unmaps before it maps, so a reader may see the hole).
//! - P5. Nothing is lost: each word of the arena is written by one CPU only
//!   (the workload's rule), so a read through an incarnation returns that
//!   CPU's last write through the same incarnation; if it wrote none, what
//!   the incarnation began with: the same of the incarnation it was copied
//!   from, for a copy-on-write of a page `fork` shared (record.rs H5), or
//!   0 (frames are zeroed, F3). An unmap or zap ends the incarnation (the
//!   generation moves, F2), which is exactly "unless the page was unmapped
//!   or zapped in between". So a store through a stale writable
//!   translation of a frame that was copied meanwhile is lost, and seen as
//!   lost at the CPU's next read through the copy; and a value a forked
//!   child wrote (the workload tags them) is never the parent's.
//! - P7. An access fails (`SIGSEGV`) only if some state that may be current
//!   lets it: a page that every such state maps, with the rights, as the
//!   same mapping page, faults only by a bug. `Livelock` and `Oom` are
//!   always violations.
//! - P8. Each call did what it returned (model.rs M2): the tree after it
//!   maps exactly the pages its semantics say.
//! - P9. A forked child's memory is the parent's as it was when `fork`
//!   returned, then the child's own (workload.rs W7): a word the child
//!   reads again holds what it read or wrote there last (checked by the
//!   workload as it goes), a value it wrote only where it wrote it, and
//!   the first value it reads of a word is 0 or one a parent CPU began
//!   writing, successfully, before the fork returned ([`check_children`]).
//!   So a parent's store after the fork that reaches the child (a
//!   writable translation `fork` left) is caught.
//!
//! # Concurrency
//! None: runs on the history after the round's threads have joined.
//!
//! P6 (teardown and backlog) is checked by the workload (workload.rs),
//! which owns the address space.
//!
//! # Linux
//! What `/proc/pid/maps`' lockless readers (Linux 6.17) and the page-fault
//! path promise; the checks are the ones a kernel mm developer would ask of
//! a trace.

use std::collections::HashMap;

use rcuvm::record::{AccessEvent, CallEvent, CopyEvent, History, ReadEvent, ReadKind};
use rcuvm::strace::MmOp as Op;
use rcuvm::{AccessError, PAGE_SIZE, VmFlags};

use super::model::{Arena, ObjPage, States};

/// One broken rule, with the events that show it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// `P1`…`P8`.
    pub rule: &'static str,
    /// What happened.
    pub what: String,
    /// The events that show it, printed one per line.
    pub events: Vec<String>,
}

/// Counters of one checked history.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Accesses checked.
    pub accesses: u64,
    /// mm calls.
    pub calls: u64,
    /// mm calls that succeeded.
    pub calls_ok: u64,
    /// maps, smaps and query reads.
    pub reads: u64,
    /// Copies-on-write of pages `fork` shared (record.rs H5).
    pub copies: u64,
}

/// A value of the parent's that a forked child read first at `va`
/// (workload.rs W7, P9).
#[derive(Clone, Copy, Debug)]
pub struct ChildRead {
    /// The word read.
    pub va: u64,
    /// What it held.
    pub value: u64,
    /// When the child's fork returned (record.rs clock).
    pub fork_end: u64,
}

/// P9: each value a child read first was written by a parent CPU, with
/// success, in an access that began before the child's fork returned.
pub fn check_children(h: &History, reads: &[ChildRead]) -> Vec<Violation> {
    let t0 = h.calls.first().map_or(0, |c| c.start);
    let rel = |t: u64| t.saturating_sub(t0) as f64 / 1000.0;
    if reads.is_empty() {
        return Vec::new();
    }
    // Only the values the children read: a round has millions of writes.
    let mut writes: HashMap<u64, Option<&AccessEvent>> = reads.iter().map(|r| (r.value, None)).collect();
    for a in h.accesses.iter().flatten() {
        if a.write && a.result.is_ok() {
            if let Some(w) = writes.get_mut(&a.value) {
                *w = Some(a);
            }
        }
    }
    let mut out = Vec::new();
    for r in reads {
        let what = match writes.get(&r.value).copied().flatten() {
            None => format!(
                "a forked child read {:#x} at {:#x}, a value no CPU of the parent wrote (fork returned at {:.3} us)",
                r.value,
                r.va,
                rel(r.fork_end)
            ),
            Some(w) if w.start >= r.fork_end => format!(
                "a forked child read {:#x} at {:#x}, which the parent's CPU {} wrote at {:#x} [{:.3} .. {:.3}] us, after the fork returned at {:.3} us",
                r.value,
                r.va,
                w.cpu,
                w.va,
                rel(w.start),
                rel(w.end),
                rel(r.fork_end)
            ),
            Some(_) => continue,
        };
        out.push(Violation { rule: "P9", what, events: vec![] });
    }
    out
}

/// Checks `h` for `arena`; `zero_pfn` is the zero page.
pub fn check(h: &History, arena: Arena, zero_pfn: u64) -> (Vec<Violation>, Counts) {
    let (st, mism) = States::build(arena, &h.calls);
    let t0 = h.calls.first().map_or(0, |c| c.start);
    let mut out = Vec::new();
    for m in mism {
        out.push(Violation {
            rule: "P8",
            what: format!("the tree after call #{} is not what the call returned: {}", m.call, m.what),
            events: vec![call_line(m.call, &h.calls[m.call], t0)],
        });
    }
    let copied_from = h.copies.iter().map(|c| (c.to, *c)).collect();
    let mut cx = Ctx {
        st: &st,
        calls: &h.calls,
        zero_pfn,
        t0,
        incarnations: HashMap::new(),
        copied_from,
        out: &mut out,
    };
    let mut counts = Counts {
        calls: h.calls.len() as u64,
        calls_ok: h.calls.iter().filter(|c| c.result.is_ok()).count() as u64,
        reads: h.reads.len() as u64,
        copies: h.copies.len() as u64,
        ..Counts::default()
    };
    for log in &h.accesses {
        let mut last = HashMap::new();
        for a in log {
            counts.accesses += 1;
            cx.access(a, &mut last);
        }
    }
    for r in &h.reads {
        cx.read(r);
    }
    (out, counts)
}

/// A frame incarnation's candidate pages so far (P2), and its first access.
struct Incarnation {
    pages: Vec<ObjPage>,
    first: AccessEvent,
}

struct Ctx<'a> {
    st: &'a States,
    calls: &'a [CallEvent],
    zero_pfn: u64,
    t0: u64,
    incarnations: HashMap<(u64, u64), Incarnation>,
    /// P5: each copy's incarnation and the one it was copied from, with
    /// the copy (record.rs H5).
    copied_from: HashMap<(u64, u64), CopyEvent>,
    out: &'a mut Vec<Violation>,
}

fn allows(flags: VmFlags, write: bool) -> bool {
    if write {
        flags.contains(VmFlags::WRITE)
    } else {
        flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    }
}

/// A call as the report shows it: its interval in µs from `t0`, the
/// round's first call, on the same clock as the access lines (`Ctx::rel`).
fn call_line(i: usize, c: &CallEvent, t0: u64) -> String {
    let rel = |t: u64| t.saturating_sub(t0) as f64 / 1000.0;
    format!("call #{i} [{:.3} .. {:.3}] us: {} -> {:x?}", rel(c.start), rel(c.end), c.op, c.result)
}

impl Ctx<'_> {
    fn rel(&self, t: u64) -> f64 {
        t.saturating_sub(self.t0) as f64 / 1000.0
    }

    fn access_line(&self, a: &AccessEvent) -> String {
        format!(
            "cpu {} {} {:#x} [{:.3} .. {:.3}] us: value {:#x}, {:x?}",
            a.cpu,
            if a.write { "write" } else { "read" },
            a.va,
            self.rel(a.start),
            self.rel(a.end),
            a.value,
            a.result
        )
    }

    /// The calls around `[s, e]`: those whose states may be current then,
    /// and the one before (what made the first of them).
    fn context(&self, s: u64, e: u64) -> Vec<String> {
        let r = self.st.during(s, e);
        let (lo, hi) = (r.start().saturating_sub(1).max(1), (*r.end() + 1).min(self.calls.len()));
        (lo..=hi)
            .map(|i| {
                let c = &self.calls[i - 1];
                format!(
                    "call #{} [{:.3} .. {:.3}] us: {} -> {:x?}",
                    i - 1,
                    self.rel(c.start),
                    self.rel(c.end),
                    c.op,
                    c.result
                )
            })
            .collect()
    }

    /// The last calls that changed arena page `p` before state `i`.
    fn page_history(&self, p: usize, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .st
            .changes(p, i, 3)
            .into_iter()
            .map(|c| {
                let slot = self.st.slot(c + 1, p);
                format!("page changed by {} to {:?}", call_line(c, &self.calls[c], self.t0), slot)
            })
            .collect();
        v.reverse();
        v
    }

    fn report(&mut self, rule: &'static str, what: String, a: &AccessEvent, more: Vec<String>) {
        let mut events = vec![self.access_line(a)];
        events.extend(more);
        events.extend(self.context(a.start, a.end));
        self.out.push(Violation { rule, what, events });
    }

    fn access(&mut self, a: &AccessEvent, last: &mut HashMap<(u64, u64, u64), u64>) {
        let Some(p) = self.st.page_of(a.va) else { return };
        let states = self.st.during(a.start, a.end);
        let cands: Vec<ObjPage> = {
            let mut v: Vec<ObjPage> = states
                .clone()
                .filter_map(|i| self.st.slot(i, p))
                .filter(|s| allows(s.flags, a.write))
                .map(|s| s.obj)
                .collect();
            v.dedup();
            v
        };
        let t = match a.result {
            Err(AccessError::MapErr | AccessError::AccErr) => {
                // P7: every state maps it, with the rights, as one page?
                let all =
                    states.clone().all(|i| self.st.slot(i, p).is_some_and(|s| allows(s.flags, a.write)));
                if all && cands.len() == 1 {
                    self.report(
                        "P7",
                        "the access faulted where every possible state allows it".into(),
                        a,
                        vec![],
                    );
                }
                return;
            }
            Err(e) => {
                self.report("P7", format!("the access failed with {e}"), a, vec![]);
                return;
            }
            Ok(t) => t,
        };
        if t.freed_during {
            self.report("P3", format!("frame {:#x} was freed while the access used it", t.pfn), a, vec![]);
            return;
        }
        if cands.is_empty() {
            let hist = self.page_history(p, *states.end());
            self.report(
                "P1",
                "the access succeeded, but no state possible during it maps the address with the rights (a stale translation)"
                    .into(),
                a,
                hist,
            );
            return;
        }
        if t.pfn == self.zero_pfn {
            if a.write || a.value != 0 {
                self.report(
                    "P2",
                    format!("the zero page was written or read non-zero ({:#x})", a.value),
                    a,
                    vec![],
                );
            }
            return;
        }
        // P2: one page per incarnation.
        let key = (t.pfn, t.generation);
        let mut clash = None;
        match self.incarnations.get_mut(&key) {
            None => {
                self.incarnations.insert(key, Incarnation { pages: cands.clone(), first: *a });
            }
            Some(inc) => {
                let common: Vec<ObjPage> = inc.pages.iter().copied().filter(|o| cands.contains(o)).collect();
                if common.is_empty() {
                    if !inc.pages.is_empty() {
                        clash = Some((inc.first, inc.pages.clone()));
                    }
                    inc.pages.clear(); // reported once
                } else {
                    inc.pages = common;
                }
            }
        }
        if let Some((first, was)) = clash {
            let line =
                format!("earlier through the same frame: {} (pages {:?})", self.access_line(&first), was);
            self.report(
                "P2",
                format!(
                    "frame {:#x} generation {} was reached as pages {:?} of different mappings",
                    t.pfn, t.generation, cands
                ),
                a,
                vec![line],
            );
            return;
        }
        // P5: the writer's last value through this incarnation, or what
        // it began with.
        let word = (a.va % PAGE_SIZE) / 8;
        let k = (t.pfn, t.generation, word);
        if a.write {
            last.insert(k, a.value);
        } else {
            let (want, copies) = self.expected(last, (t.pfn, t.generation), word);
            if a.value != want {
                let what = if copies.is_empty() {
                    format!("read {:#x}, but the last write through this frame was {want:#x}", a.value)
                } else {
                    format!(
                        "read {:#x}, but this frame began as a copy, and the last write through it or what it was copied from was {want:#x}",
                        a.value
                    )
                };
                let more = copies
                    .iter()
                    .map(|c| {
                        format!(
                            "frame {:#x} generation {} copied from frame {:#x} generation {}, installed at {:.3} us",
                            c.to.0,
                            c.to.1,
                            c.from.0,
                            c.from.1,
                            self.rel(c.at)
                        )
                    })
                    .collect();
                self.report("P5", what, a, more);
            }
        }
    }

    /// P5: the value a read of `word` through incarnation `inc` should
    /// return, given this CPU's writes so far (`last`): its last write
    /// through `inc`, else through the incarnation `inc` was copied from,
    /// and so on; 0 at the end of the chain. Also the copies followed.
    fn expected(
        &self,
        last: &HashMap<(u64, u64, u64), u64>,
        mut inc: (u64, u64),
        word: u64,
    ) -> (u64, Vec<CopyEvent>) {
        let mut copies = Vec::new();
        loop {
            if let Some(&v) = last.get(&(inc.0, inc.1, word)) {
                return (v, copies);
            }
            // A copy's incarnation is newer than its source's (a frame is
            // allocated after its last free), so the chain ends; the bound
            // is a guard against a corrupt history only.
            match self.copied_from.get(&inc) {
                Some(c) if copies.len() < 1024 => {
                    copies.push(*c);
                    inc = c.from;
                }
                _ => return (0, copies),
            }
        }
    }

    fn read(&mut self, r: &ReadEvent) {
        let states = self.st.during(r.start, r.end);
        let mut bad = Vec::new();
        let header = |l: &&str| l.split(' ').next().is_some_and(|t| t.contains('-') && !t.ends_with(':'));
        match r.kind {
            ReadKind::Maps | ReadKind::Smaps => {
                let lines: Vec<&str> = r.text.lines().filter(header).collect();
                let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
                match rcuvm::maps::parse(&text, "maps read") {
                    Err(e) => bad.push(format!("does not parse: {e}")),
                    Ok(vs) => {
                        for v in &vs {
                            if !self.real(states.clone(), v) {
                                bad.push(format!("line {} is no part of a VMA of a possible state", v));
                            }
                        }
                        // A VMA identical in every possible state is shown whole.
                        let first = &self.st.vmas[*states.start()];
                        let touched = self.touched(&states);
                        for v in first {
                            let everywhere = states.clone().all(|i| self.st.vmas[i].contains(v))
                                && !touched.iter().any(|&(s, e)| s < v.end && v.start < e);
                            let shown = vs.iter().any(|l| {
                                l.start == v.start && l.end == v.end && rights(l.flags) == rights(v.flags)
                            });
                            if everywhere && !shown {
                                bad.push(format!(
                                    "VMA {:#x}-{:#x} existed throughout but is not shown",
                                    v.start, v.end
                                ));
                            }
                        }
                    }
                }
                if r.kind == ReadKind::Smaps {
                    bad.extend(smaps_sizes(&r.text));
                }
            }
            ReadKind::Query(addr) => {
                if r.text.is_empty() {
                    let touched = self.touched(&states).iter().any(|&(s, e)| s <= addr && addr < e);
                    if !touched
                        && states.clone().all(|i| super::model::flags_at(&self.st.vmas[i], addr).is_some())
                    {
                        bad.push(format!("query({addr:#x}) found nothing, but every possible state maps it"));
                    }
                } else {
                    match rcuvm::maps::parse(&format!("{}\n", r.text), "query") {
                        Ok(v) if v.len() == 1 && v[0].start <= addr && addr < v[0].end => {
                            if !self.real(states.clone(), &v[0]) {
                                bad.push(format!(
                                    "query({addr:#x}) gave {}, no part of a possible state",
                                    v[0]
                                ));
                            }
                        }
                        _ => bad.push(format!("query({addr:#x}) gave {:?}", r.text)),
                    }
                }
            }
        }
        if !bad.is_empty() {
            let mut events = self.context(r.start, r.end);
            events.push(format!(
                "{:?} read [{:.3} .. {:.3}] us:\n{}",
                r.kind,
                self.rel(r.start),
                self.rel(r.end),
                r.text.trim_end()
            ));
            self.out.push(Violation { rule: "P4", what: bad.join("; "), events });
        }
    }

    /// The ranges the calls made during `states` may have rewritten, a
    /// page wider on each side (merges replace neighbours): a VMA there
    /// may have been replaced by an identical one, which a reader may see
    /// in pieces (A2).
    fn touched(&self, states: &std::ops::RangeInclusive<usize>) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for c in &self.calls[*states.start()..*states.end()] {
            let r = c.result.unwrap_or(0);
            match c.op {
                Op::Mmap { addr, len, .. } => {
                    out.extend([(addr, addr.saturating_add(len)), (r, r.saturating_add(len))])
                }
                Op::Munmap { addr, len } | Op::Mprotect { addr, len, .. } | Op::Madvise { addr, len, .. } => {
                    out.push((addr, addr.saturating_add(len)))
                }
                Op::Mremap { old_addr: addr, old_len, new_len, new_addr, .. } => out.extend([
                    (addr, addr.saturating_add(old_len.max(new_len))),
                    (r, r.saturating_add(new_len)),
                    (new_addr.unwrap_or(r), new_addr.unwrap_or(r).saturating_add(new_len)),
                ]),
                Op::Brk { .. } => out.push((0, u64::MAX)),
            }
        }
        out.iter().map(|&(s, e)| (s.saturating_sub(PAGE_SIZE), e.saturating_add(PAGE_SIZE))).collect()
    }

    /// Whether every page of line `l` is, in some state of `states`, in a
    /// VMA with the line's rights and (file lines) its `pgoff` (P4). Page
    /// by page: a call's intermediate VMAs (an mremap's moved VMA merged
    /// with its source before the source is unmapped, as Linux's
    /// `copy_vma` may) are in no recorded state, but each of their pages
    /// is.
    fn real(&self, states: std::ops::RangeInclusive<usize>, l: &rcuvm::Vma) -> bool {
        (l.start..l.end).step_by(PAGE_SIZE as usize).all(|va| {
            states.clone().any(|i| {
                self.st.vmas[i].iter().any(|v| {
                    v.start <= va
                        && va < v.end
                        && rights(v.flags) == rights(l.flags)
                        // Anonymous lines show offset 0; the parser infers pgoff.
                        && (l.backing == rcuvm::Backing::Anon || v.pgoff + (l.start - v.start) / PAGE_SIZE == l.pgoff)
                })
            })
        })
    }
}

fn rights(f: VmFlags) -> VmFlags {
    f & (VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC | VmFlags::SHARED)
}

/// smaps: `Anonymous <= Rss <= Size` for every VMA (P4).
fn smaps_sizes(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut size, mut rss) = (0u64, 0u64);
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
        match k {
            "Size:" => size = v,
            "Rss:" if v > size => out.push(format!("Rss {v} kB > Size {size} kB")),
            "Rss:" => rss = v,
            "Anonymous:" if v > rss => out.push(format!("Anonymous {v} kB > Rss {rss} kB")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::workload::{ARENA, CHILD_TAG};
    use rcuvm::cpu::Touched;
    use rcuvm::record::Recorder;
    use rcuvm::{AddressSpace, MapFlags, Prot};

    /// A page frame incarnation: (pfn, generation).
    type Inc = (u64, u64);
    const A: Inc = (5, 0);
    const B: Inc = (6, 0);

    /// The history of one real mmap of the arena's first page, and the
    /// time after it.
    fn one_page() -> (History, u64) {
        let rec = Recorder::new();
        let mm = AddressSpace::builder().recorder(rec.clone()).build();
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        mm.mmap(ARENA.base, PAGE_SIZE, Prot::READ | Prot::WRITE, flags, None, 0).unwrap();
        let h = rec.take();
        let t = h.calls.last().unwrap().end + 1000;
        (h, t)
    }

    fn access(at: u64, write: bool, value: u64, (pfn, generation): (u64, u64)) -> AccessEvent {
        let result = Ok(Touched { pfn, generation, freed_during: false });
        AccessEvent { cpu: 0, va: ARENA.base, write, value, result, start: at, end: at + 10 }
    }

    /// CPU 0's accesses, in order, with copies; the rules broken.
    fn rules(accesses: &[(bool, u64, Inc)], copies: &[(usize, Inc, Inc)]) -> Vec<&'static str> {
        let (mut h, t) = one_page();
        h.accesses = vec![
            accesses
                .iter()
                .enumerate()
                .map(|(i, &(w, v, inc))| access(t + 100 * i as u64, w, v, inc))
                .collect(),
        ];
        // The copy's time is for reports only: P5 follows the lineage,
        // whatever the order.
        h.copies = copies
            .iter()
            .map(|&(after, from, to)| CopyEvent { from, to, at: t + 100 * after as u64 + 50 })
            .collect();
        check(&h, ARENA, 0).0.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_copy_begins_with_what_its_source_held() {
        let (v1, v2) = (1 << 48 | 1, 1 << 48 | 2);
        // Written through A, copied to B, read through B.
        assert_eq!(rules(&[(true, v1, A), (false, v1, B)], &[(0, A, B)]), Vec::<&str>::new());
        // Then written through B and read back.
        assert_eq!(
            rules(&[(true, v1, A), (false, v1, B), (true, v2, B), (false, v2, B)], &[(0, A, B)]),
            Vec::<&str>::new()
        );
        // Without the copy's record, B would have begun as zeroes.
        assert_eq!(rules(&[(true, v1, A), (false, v1, B)], &[]), ["P5"]);
        // A copy of zeroes.
        assert_eq!(rules(&[(false, 0, B)], &[(0, A, B)]), Vec::<&str>::new());
    }

    #[test]
    fn a_store_through_the_source_after_the_copy_is_lost() {
        let (v1, v2) = (1 << 48 | 1, 1 << 48 | 2);
        // A store through a stale writable translation of A after the
        // copy: the next read through B does not return it.
        assert_eq!(rules(&[(true, v1, A), (true, v2, A), (false, v1, B)], &[(0, A, B)]), ["P5"]);
        // B read as zeroes although it began as a copy of v1.
        assert_eq!(rules(&[(true, v1, A), (false, 0, B)], &[(0, A, B)]), ["P5"]);
    }

    #[test]
    fn a_childs_value_is_never_the_parents() {
        let v = 1 << 48 | 1;
        // The parent's own value passes; the child's in its place fails.
        assert_eq!(rules(&[(true, v, A), (false, v, A)], &[]), Vec::<&str>::new());
        assert_eq!(rules(&[(true, v, A), (false, CHILD_TAG | 1, A)], &[]), ["P5"]);
        assert_eq!(rules(&[(false, CHILD_TAG | 7, A)], &[]), ["P5"]);
        assert_eq!(rules(&[(true, v, A), (false, CHILD_TAG | 7, B)], &[(0, A, B)]), ["P5"]);
    }

    #[test]
    fn a_child_reads_only_what_the_parent_wrote_before_the_fork() {
        let (mut h, t) = one_page();
        let v = 1 << 48 | 1;
        h.accesses = vec![vec![access(t, true, v, A)]];
        let read = |value, fork_end| ChildRead { va: ARENA.base, value, fork_end };
        // The write began before the fork returned: the child may see it.
        assert!(check_children(&h, &[read(v, t + 5)]).is_empty());
        // It began after: a store that reached the child's memory.
        assert_eq!(check_children(&h, &[read(v, t - 1)])[0].rule, "P9");
        // A value the parent never wrote.
        assert_eq!(check_children(&h, &[read(v + 1, t + 5)])[0].rule, "P9");
        // A write that failed stored nothing.
        h.accesses[0][0].result = Err(AccessError::MapErr);
        assert_eq!(check_children(&h, &[read(v, t + 5)])[0].rule, "P9");
    }
}
