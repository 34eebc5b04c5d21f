//! The states an address space went through, as the oracle needs them:
//! which page of which mapping each address of the arena held after each
//! mm call, with what rights, and when each state may have been current.
//!
//! # Owns
//! [`States`]: built once per history from its calls.
//!
//! # Invariants
//! - M1. State `i` is the tree after call `i` (record.rs H3; state 0 is the
//!   empty address space). It *may* be current from the start of call `i`
//!   to the end of call `i + 1` ([`States::during`]): a call changes the
//!   tree piece by piece while it holds the lock, so during call `i + 1`
//!   a reader or fault may see either state at each address (mmap.rs P2).
//! - M2. A page's identity ([`ObjPage`]) is the mmap (or mremap growth)
//!   that created it and its index there; it survives mprotect and
//!   mremap moves, and ends at munmap or when mapped over. This is the
//!   semantics of the calls, computed from their arguments and results
//!   alone; after each call it is compared with the recorded tree, and a
//!   difference is a violation (an mm call that did not do what it
//!   returned), after which the model follows the tree.
//!
//! # Concurrency
//! None: built and read by the checking thread, after the round.
//!
//! # Linux
//! The semantics of `mmap`, `munmap`, `mprotect`, `mremap` for private
//! anonymous memory (`MREMAP_DONTUNMAP` and `old_len == 0` are not drawn).

use rcuvm::record::CallEvent;
use rcuvm::strace::MmOp as Op;
use rcuvm::uapi::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE};
use rcuvm::{PAGE_SIZE, VmFlags};

/// Where the checked pages are: `groups` runs of `group_pages` pages,
/// `stride` bytes apart (each run in its own leaf table when the stride is
/// 2 MiB, so unmapping a run frees a table).
#[derive(Clone, Copy, Debug)]
pub struct Arena {
    /// The first page's address.
    pub base: u64,
    /// Runs.
    pub groups: usize,
    /// Pages per run.
    pub group_pages: usize,
    /// Bytes from one run to the next.
    pub stride: u64,
}

impl Arena {
    /// Pages in all.
    pub fn pages(&self) -> usize {
        self.groups * self.group_pages
    }

    /// The address of arena page `p`.
    pub fn addr(&self, p: usize) -> u64 {
        self.base + (p / self.group_pages) as u64 * self.stride + (p % self.group_pages) as u64 * PAGE_SIZE
    }

    /// The arena page of `va`.
    pub fn page_of(&self, va: u64) -> Option<usize> {
        let off = va.checked_sub(self.base)?;
        let (g, i) = ((off / self.stride) as usize, ((off % self.stride) / PAGE_SIZE) as usize);
        (g < self.groups && i < self.group_pages).then_some(g * self.group_pages + i)
    }
}

/// A page of a mapping (M2): the index of the call that created it, and
/// the page's index in what that call created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjPage {
    /// Index of the creating call in the history.
    pub call: u32,
    /// Page index within what it created.
    pub page: u32,
}

/// What an arena page holds in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The page's identity.
    pub obj: ObjPage,
    /// The VMA's flags there.
    pub flags: VmFlags,
}

/// The arena's states over time (M1, M2).
pub struct States {
    arena: Arena,
    pages: usize,
    /// `starts[i]`, `ends[i]`: the interval of the call that made state `i`
    /// (state 0: `[0, 0]`).
    starts: Vec<u64>,
    ends: Vec<u64>,
    /// `slots[i * pages + p]`.
    slots: Vec<Option<Slot>>,
    /// The recorded VMAs of each state (for readers).
    pub vmas: Vec<Vec<rcuvm::record::VmaState>>,
}

/// A difference between a call's semantics and the tree after it (M2).
pub struct Mismatch {
    /// The call's index.
    pub call: usize,
    /// What differed.
    pub what: String,
}

impl States {
    /// The states of an arena of `pages` pages at `base` after `calls`,
    /// and the calls whose result the tree contradicts.
    pub fn build(arena: Arena, calls: &[CallEvent]) -> (States, Vec<Mismatch>) {
        let pages = arena.pages();
        let mut st = States {
            arena,
            pages,
            starts: vec![0],
            ends: vec![0],
            slots: vec![None; pages],
            vmas: vec![Vec::new()],
        };
        let mut mismatches = Vec::new();
        let mut cur: Vec<Option<ObjPage>> = vec![None; pages];
        for (i, c) in calls.iter().enumerate() {
            let expect = st.apply(&cur, i as u32, c);
            let tree: Vec<Option<VmFlags>> = (0..pages).map(|p| flags_at(&c.after, st.addr(p))).collect();
            let mut diff = Vec::new();
            for p in 0..pages {
                if expect[p].is_some() != tree[p].is_some() {
                    diff.push(format!(
                        "{:#x}: {} by the calls, {} in the tree",
                        st.addr(p),
                        if expect[p].is_some() { "mapped" } else { "unmapped" },
                        if tree[p].is_some() { "mapped" } else { "unmapped" },
                    ));
                }
            }
            if !diff.is_empty() {
                mismatches.push(Mismatch { call: i, what: diff.join("; ") });
            }
            // M2: from here on, the tree.
            for p in 0..pages {
                cur[p] = match (tree[p], expect[p]) {
                    (None, _) => None,
                    (Some(_), Some(o)) => Some(o),
                    (Some(_), None) => Some(ObjPage { call: i as u32, page: u32::MAX - p as u32 }),
                };
                st.slots.push(cur[p].zip(tree[p]).map(|(obj, flags)| Slot { obj, flags }));
            }
            st.starts.push(c.start);
            st.ends.push(c.end);
            st.vmas.push(c.after.clone());
        }
        (st, mismatches)
    }

    fn addr(&self, p: usize) -> u64 {
        self.arena.addr(p)
    }

    /// The arena page of `va`.
    pub fn page_of(&self, va: u64) -> Option<usize> {
        self.arena.page_of(va)
    }

    /// What the calls' semantics leave after call `i` (M2).
    fn apply(&self, cur: &[Option<ObjPage>], i: u32, c: &CallEvent) -> Vec<Option<ObjPage>> {
        let mut next = cur.to_vec();
        let Ok(r) = c.result else { return next };
        let fresh = |next: &mut Vec<Option<ObjPage>>, start: u64, len: u64, first: u32| {
            for j in 0..len / PAGE_SIZE {
                if let Some(p) = self.page_of(start + j * PAGE_SIZE) {
                    next[p] = Some(ObjPage { call: i, page: first + j as u32 });
                }
            }
        };
        let clear = |next: &mut Vec<Option<ObjPage>>, start: u64, len: u64| {
            for j in 0..len / PAGE_SIZE {
                if let Some(p) = self.page_of(start + j * PAGE_SIZE) {
                    next[p] = None;
                }
            }
        };
        match c.op {
            Op::Mmap { len, .. } => fresh(&mut next, r, round_up(len), 0),
            Op::Munmap { addr, len } => clear(&mut next, addr, round_up(len)),
            Op::Mprotect { .. } | Op::Madvise { .. } | Op::Brk { .. } => {}
            Op::Mremap { old_addr: addr, old_len, new_len, flags, .. } => {
                let (old, new) = (round_up(old_len), round_up(new_len));
                if old == 0 || flags & MREMAP_DONTUNMAP != 0 || flags & MREMAP_MAYMOVE == 0 && r != addr {
                    return next; // not drawn by the workload
                }
                let keep = old.min(new);
                let moved: Vec<Option<ObjPage>> = (0..keep / PAGE_SIZE)
                    .map(|j| self.page_of(addr + j * PAGE_SIZE).and_then(|p| cur[p]))
                    .collect();
                clear(&mut next, addr, old);
                // A fixed move without resizing may span holes (Linux 6.17+
                // `remap_move()`, vm mremap.rs R3): what lies at the
                // destination's matching gaps stays.
                let multi = flags & MREMAP_FIXED != 0 && old == new;
                for (j, o) in moved.into_iter().enumerate() {
                    if let Some(p) = self.page_of(r + j as u64 * PAGE_SIZE) {
                        if o.is_some() || !multi {
                            next[p] = o;
                        }
                    }
                }
                if new > old {
                    fresh(&mut next, r + old, new - old, (old / PAGE_SIZE) as u32);
                }
            }
        }
        next
    }

    /// The states that may be current at some time of `[s, e]` (M1).
    pub fn during(&self, s: u64, e: u64) -> std::ops::RangeInclusive<usize> {
        // Windows are ordered: starts and ends both increase with i.
        let lo = self.ends[1..].partition_point(|&end| end < s);
        let hi = self.starts.partition_point(|&start| start <= e).saturating_sub(1);
        lo..=hi.max(lo)
    }

    /// The calls that last changed arena page `p` up to state `i` (the
    /// most recent first, at most `n`), for reports.
    pub fn changes(&self, p: usize, i: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut j = i;
        while j > 0 && out.len() < n {
            if self.slot(j, p) != self.slot(j - 1, p) {
                out.push(j - 1);
            }
            j -= 1;
        }
        out
    }

    /// What arena page `p` holds in state `i`.
    pub fn slot(&self, i: usize, p: usize) -> Option<Slot> {
        self.slots[i * self.pages + p]
    }
}

fn round_up(len: u64) -> u64 {
    len.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// The flags of the VMA of `vmas` containing `va`.
pub fn flags_at(vmas: &[rcuvm::record::VmaState], va: u64) -> Option<VmFlags> {
    let i = vmas.partition_point(|v| v.end <= va);
    vmas.get(i).filter(|v| v.start <= va).map(|v| v.flags)
}
