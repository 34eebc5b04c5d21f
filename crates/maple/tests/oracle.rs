//! proptest: random operation sequences against a `BTreeMap` oracle, with
//! `validate()` after every write.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rcuvm_maple::{Error, MapleTree, Value};
use rcuvm_rcu::Domain;

/// The oracle: start -> (end, value), non-overlapping half-open ranges.
#[derive(Default, Clone, Debug)]
struct Model(BTreeMap<u64, (u64, u32)>);

impl Model {
    fn overlapping(&self, a: u64, b: u64) -> Vec<(u64, u64, u32)> {
        self.0.iter().filter(|(s, (e, _))| **s < b && *e > a).map(|(s, (e, v))| (*s, *e, *v)).collect()
    }
    fn erase(&mut self, a: u64, b: u64) -> usize {
        let hits = self.overlapping(a, b);
        for &(s, e, v) in &hits {
            self.0.remove(&s);
            if s < a {
                self.0.insert(s, (a, v));
            }
            if e > b {
                self.0.insert(b, (e, v));
            }
        }
        hits.len()
    }
    fn store(&mut self, a: u64, b: u64, v: u32) {
        self.erase(a, b);
        self.0.insert(a, (b, v));
    }
    fn load(&self, x: u64) -> Option<(u64, u64, u32)> {
        self.0.range(..=x).next_back().filter(|(_, (e, _))| *e > x).map(|(s, (e, v))| (*s, *e, *v))
    }
    fn find(&self, x: u64) -> Option<(u64, u64, u32)> {
        self.load(x).or_else(|| self.0.range(x..).next().map(|(s, (e, v))| (*s, *e, *v)))
    }
    fn next(&self, x: u64) -> Option<(u64, u64, u32)> {
        self.0.range(x.saturating_add(1)..).next().filter(|(s, _)| **s > x).map(|(s, (e, v))| (*s, *e, *v))
    }
    fn prev(&self, x: u64) -> Option<(u64, u64, u32)> {
        self.0.iter().rev().find(|(_, (e, _))| *e <= x).map(|(s, (e, v))| (*s, *e, *v))
    }
    /// Free ranges (half-open) of the whole u64 space, below u64::MAX.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0u64;
        for (s, (e, _)) in &self.0 {
            if *s > at {
                out.push((at, *s));
            }
            at = *e;
        }
        out.push((at, u64::MAX)); // the last address is never storable
        out
    }
    fn empty_area(&self, lo: u64, hi: u64, size: u64, rev: bool) -> Option<u64> {
        if size == 0 || lo >= hi {
            return None;
        }
        let mut fits: Vec<u64> = Vec::new();
        for (a, b) in self.gaps() {
            // The tree's last free range includes u64::MAX itself.
            let b = if b == u64::MAX { u64::MAX } else { b };
            let (a, b) = (a.max(lo), b.min(hi));
            if b > a && b - a >= size {
                fits.push(if rev { b - size } else { a });
            }
        }
        if rev { fits.into_iter().max() } else { fits.into_iter().min() }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64, u32),
    Store(u64, u64, u32),
    Erase(u64, u64),
    Replace(u64, u64, u32),
    ReplaceExisting(usize, u32),
    Query(u64),
    Gap(u64, u64, u64),
}

fn addr(space: u64) -> impl Strategy<Value = u64> + Clone {
    prop_oneof![8 => 0..space, 1 => Just(0u64), 1 => (u64::MAX - 8)..=u64::MAX]
}

fn op(space: u64, max_len: u64) -> impl Strategy<Value = Op> {
    let addr = move || addr(space);
    let range = (addr(), 1u64..max_len).prop_map(|(a, l): (u64, u64)| (a, a.saturating_add(l))).boxed();
    prop_oneof![
        6 => (range.clone(), any::<u32>()).prop_map(|((a, b), v)| Op::Insert(a, b, v)),
        4 => (range.clone(), any::<u32>()).prop_map(|((a, b), v)| Op::Store(a, b, v)),
        3 => range.clone().prop_map(|(a, b)| Op::Erase(a, b)),
        1 => (range.clone(), any::<u32>()).prop_map(|((a, b), v)| Op::Replace(a, b, v)),
        2 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::ReplaceExisting(i, v)),
        3 => addr().prop_map(Op::Query),
        2 => (addr(), addr(), 1u64..64).prop_map(|(a, b, s)| Op::Gap(a.min(b), a.max(b), s)),
        // Inverted and empty ranges must be refused without a change.
        1 => (addr(), addr()).prop_map(|(a, b)| Op::Store(a.max(b), a.min(b), 7)),
    ]
}

/// The two ways a value lives in a slot (value.rs): behind an `Arc`, or in
/// the slot word itself. The oracle runs over both.
trait TestValue: Value {
    fn mk(v: u32) -> Self;
    fn get(r: Self::Ref<'_>) -> u32;
    fn own(self) -> u32;
}

impl TestValue for Arc<u32> {
    fn mk(v: u32) -> Self {
        Arc::new(v)
    }
    fn get(r: &u32) -> u32 {
        *r
    }
    fn own(self) -> u32 {
        *self
    }
}

impl TestValue for u32 {
    fn mk(v: u32) -> Self {
        v
    }
    fn get(r: u32) -> u32 {
        r
    }
    fn own(self) -> u32 {
        self
    }
}

fn entry<V: TestValue>(e: Option<rcuvm_maple::Entry<'_, V>>) -> Option<(u64, u64, u32)> {
    e.map(|e| (e.range.start, e.range.end, V::get(e.value)))
}

fn run<V: TestValue>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tree = MapleTree::<V>::new(Arc::new(Domain::new()));
    let mut m = Model::default();
    for op in ops {
        match op.clone() {
            Op::Insert(a, b, v) => {
                let got = tree.write().insert(a..b, V::mk(v));
                let want = if a >= b {
                    Err(Error::InvalidRange)
                } else if !m.overlapping(a, b).is_empty() {
                    Err(Error::Exists)
                } else {
                    m.store(a, b, v);
                    Ok(())
                };
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::Store(a, b, v) => {
                let got = tree.write().store(a..b, V::mk(v));
                if a >= b {
                    prop_assert_eq!(got, Err(Error::InvalidRange));
                } else {
                    prop_assert_eq!(got, Ok(()));
                    m.store(a, b, v);
                }
            }
            Op::Erase(a, b) => {
                let got = tree.write().erase(a..b);
                if a >= b {
                    prop_assert_eq!(got, Err(Error::InvalidRange));
                } else {
                    prop_assert_eq!(got, Ok(m.erase(a, b)), "{:?}", op);
                }
            }
            Op::Replace(a, b, v) => {
                let got = tree.write().replace(a..b, V::mk(v)).map(V::own);
                let want = match m.0.get(&a) {
                    _ if a >= b => Err(Error::InvalidRange),
                    Some(&(e, old)) if e == b => {
                        m.0.insert(a, (b, v));
                        Ok(old)
                    }
                    _ => Err(Error::NotFound),
                };
                prop_assert_eq!(got, want, "{:?}", op);
            }
            Op::ReplaceExisting(i, v) => {
                if m.0.is_empty() {
                    continue;
                }
                let (&s, &(e, old)) = m.0.iter().nth(i % m.0.len()).unwrap();
                prop_assert_eq!(tree.write().replace(s..e, V::mk(v)).map(V::own), Ok(old));
                m.0.insert(s, (e, v));
            }
            Op::Query(x) => {
                let g = tree.domain().read();
                prop_assert_eq!(entry(tree.load(x, &g)), m.load(x), "load {:#x}", x);
                prop_assert_eq!(entry(tree.find(x, &g)), m.find(x), "find {:#x}", x);
                prop_assert_eq!(entry(tree.next(x, &g)), m.next(x), "next {:#x}", x);
                prop_assert_eq!(entry(tree.prev(x, &g)), m.prev(x), "prev {:#x}", x);
            }
            Op::Gap(lo, hi, size) => {
                let g = tree.domain().read();
                prop_assert_eq!(
                    tree.empty_area(lo, hi, size, &g),
                    m.empty_area(lo, hi, size, false),
                    "{:?}",
                    op
                );
                prop_assert_eq!(
                    tree.empty_area_rev(lo, hi, size, &g),
                    m.empty_area(lo, hi, size, true),
                    "rev {:?}",
                    op
                );
            }
        }
        if let Err(e) = tree.validate() {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
        prop_assert_eq!(tree.len(), m.0.len());
        let g = tree.domain().read();
        let all: Vec<_> =
            tree.iter_from(0, &g).map(|e| (e.range.start, e.range.end, V::get(e.value))).collect();
        let want: Vec<_> = m.0.iter().map(|(s, (e, v))| (*s, *e, *v)).collect();
        prop_assert_eq!(all, want, "contents after {:?}", op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_oracle(ops in prop::collection::vec(op(600, 40), 1..300)) {
        run::<Arc<u32>>(ops)?;
    }

    /// The same with the values kept in the slots: the writer retires no
    /// value then, but must count entries alike.
    #[test]
    fn random_sequences_of_inline_values_match_the_oracle(ops in prop::collection::vec(op(600, 40), 1..300)) {
        run::<u32>(ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Enough entries for three and four levels, so splits, borrows from
    /// cousins and spanning stores cross internal nodes.
    #[test]
    fn long_sequences_over_deep_trees_match_the_oracle(ops in prop::collection::vec(op(40_000, 300), 1500..2500)) {
        run::<Arc<u32>>(ops)?;
    }
}

#[test]
fn grows_and_shrinks_through_many_levels() {
    let tree = MapleTree::<u32>::new(Arc::new(Domain::new()));
    let mut m = Model::default();
    // VMA-like: 4 KiB-aligned ranges with gaps, inserted top-down.
    for i in (0..5000u64).rev() {
        let a = 0x1000_0000 + i * 0x3000;
        tree.write().insert(a..a + 0x2000, i as u32).unwrap();
        m.store(a, a + 0x2000, i as u32);
    }
    tree.validate().unwrap();
    let s = tree.stats();
    assert!(s.height >= 3, "{s:?}");
    // Erase every other one, then a big spanning range, then the rest.
    for i in (0..5000u64).step_by(2) {
        let a = 0x1000_0000 + i * 0x3000;
        assert_eq!(tree.write().erase(a..a + 0x2000), Ok(1));
        m.erase(a, a + 0x2000);
    }
    tree.validate().unwrap();
    let (a, b) = (0x1000_0000 + 1000 * 0x3000 + 0x1000, 0x1000_0000 + 3000 * 0x3000 + 0x1000);
    tree.write().store(a..b, 99).unwrap();
    m.store(a, b, 99);
    tree.validate().unwrap();
    tree.write().erase(0..u64::MAX).unwrap();
    tree.validate().unwrap();
    assert!(tree.is_empty());
    assert_eq!(tree.stats().height, 1);
}
