//! The structural checker: every invariant of tree.rs (T1–T6), node by node.
//!
//! # Concurrency
//! Takes the write lock, so it sees a tree no writer is changing.
//!
//! # Linux
//! `mt_validate()` under `CONFIG_DEBUG_MAPLE_TREE`: limits, pivots, gaps,
//! and no adjacent NULL ranges.

use crate::node::{self, INNER_MIN, LEAF_MIN, NodePtr, NodeRef};
use crate::sync::Ordering;
use crate::tree::MapleTree;
use crate::value::Value;

struct Check {
    leaf_depth: Option<usize>,
    entries: usize,
    /// Whether the last slot seen, in address order, was free (T5).
    prev_free: bool,
    /// The next address the walk must reach (T1).
    next_addr: u64,
}

impl<T: Value> MapleTree<T> {
    /// Checks every structural invariant; returns the first violation.
    pub fn validate(&self) -> Result<(), String> {
        let _w = self.write();
        let root = self.raw.root();
        let mut c = Check { leaf_depth: None, entries: 0, prev_free: false, next_addr: 0 };
        let gap = visit(root, 0, u64::MAX, 0, true, &mut c)?;
        let _ = gap;
        if c.entries != self.len() {
            return Err(format!("T6: len() is {} but {} entries are stored", self.len(), c.entries));
        }
        Ok(())
    }
}

/// Checks the subtree at `n` spanning `[min, max]`; returns its largest gap.
fn visit<T>(
    n: NodePtr<T>,
    min: u64,
    max: u64,
    depth: usize,
    is_root: bool,
    c: &mut Check,
) -> Result<u64, String> {
    // SAFETY: the write lock is held: reachable nodes stay allocated.
    let meta = unsafe { n.meta() }.load();
    if node::is_dead(meta) {
        return Err(format!("a reachable node at depth {depth} is marked dead"));
    }
    let cnt = node::count(meta);
    // SAFETY: as above.
    match unsafe { n.get() } {
        NodeRef::Leaf(l) => {
            if cnt == 0 || cnt > node::LEAF_SLOTS {
                return Err(format!("leaf [{min:#x}, {max:#x}] has {cnt} slots"));
            }
            if !is_root && min != 0 && max != u64::MAX && cnt < LEAF_MIN {
                return Err(format!("T4: leaf [{min:#x}, {max:#x}] has {cnt} < {LEAF_MIN} slots"));
            }
            match c.leaf_depth {
                None => c.leaf_depth = Some(depth),
                Some(d) if d != depth => return Err(format!("T2: leaves at depths {d} and {depth}")),
                _ => {}
            }
            check_pivots(&l.pivots, cnt, min, max)?;
            let mut gap = 0;
            for i in 0..cnt {
                let (lo, hi) = node::slot_range(&l.pivots, cnt, i, min, max);
                if lo != c.next_addr {
                    return Err(format!("T1: slot starts at {lo:#x}, expected {:#x}", c.next_addr));
                }
                c.next_addr = hi.wrapping_add(1);
                let free = l.slots[i].load(Ordering::Relaxed).is_null();
                if free && c.prev_free {
                    return Err(format!("T5: free range at {lo:#x} follows another free range"));
                }
                c.prev_free = free;
                if free {
                    gap = gap.max(hi - lo);
                } else {
                    c.entries += 1;
                }
            }
            Ok(gap)
        }
        NodeRef::Inner(inner) => {
            let short = if is_root { cnt < 2 } else { min != 0 && max != u64::MAX && cnt < INNER_MIN };
            if cnt == 0 || cnt > node::INNER_SLOTS || short {
                return Err(format!("T4: internal node [{min:#x}, {max:#x}] has {cnt} children"));
            }
            check_pivots(&inner.pivots, cnt, min, max)?;
            let mut gap = 0;
            for i in 0..cnt {
                let (lo, hi) = node::slot_range(&inner.pivots, cnt, i, min, max);
                let g = visit(inner.child(i), lo, hi, depth + 1, false, c)?;
                if g != inner.gap(i) {
                    return Err(format!(
                        "T3: gap of child {i} of [{min:#x}, {max:#x}] is {:#x}, its subtree's is {g:#x}",
                        inner.gap(i)
                    ));
                }
                gap = gap.max(g);
            }
            Ok(gap)
        }
    }
}

fn check_pivots(p: &[u64], cnt: usize, min: u64, max: u64) -> Result<(), String> {
    let mut prev = None::<u64>;
    for &x in &p[..cnt - 1] {
        if x < min || x >= max || prev.is_some_and(|q| x <= q) {
            return Err(format!(
                "T2: pivots {:x?} not increasing inside [{min:#x}, {max:#x}]",
                &p[..cnt - 1]
            ));
        }
        prev = Some(x);
    }
    if p[cnt - 1..].iter().any(|&x| x != u64::MAX) {
        return Err(format!("N5: unused pivots {:x?} are not all u64::MAX", &p[cnt - 1..]));
    }
    Ok(())
}
