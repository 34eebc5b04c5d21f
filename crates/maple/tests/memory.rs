//! Node memory per entry against the target: at most twice a plain sorted
//! `(start, end, pointer)` array (24 bytes per entry), for the insertion
//! orders an address space sees: bottom-up, top-down and scattered.

use std::sync::Arc;

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

/// VMA-like ranges: 4–64 KiB long with 4–64 KiB gaps, sorted.
fn ranges(n: usize) -> Vec<(u64, u64)> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut at = 0x10_0000u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (1 + x % 16) * 0x1000;
            let gap = (1 + (x >> 8) % 16) * 0x1000;
            let s = at;
            at += len + gap;
            (s, s + len)
        })
        .collect()
}

fn bytes_per_entry(order: &[(u64, u64)]) -> (f64, usize) {
    let t = MapleTree::new(Arc::new(Domain::new()));
    {
        let mut w = t.write();
        for (i, &(s, e)) in order.iter().enumerate() {
            w.insert(s..e, i as u32).unwrap();
        }
    }
    t.validate().unwrap();
    let st = t.stats();
    (st.bytes as f64 / st.entries as f64, st.height)
}

#[test]
fn memory_per_entry() {
    for n in [1_000usize, 10_000, 100_000] {
        let rs = ranges(n);
        let (up, hu) = bytes_per_entry(&rs);
        let down: Vec<_> = rs.iter().rev().copied().collect();
        let (dn, hd) = bytes_per_entry(&down);
        // A fixed shuffle: every 7919th element, modulo n.
        let mixed: Vec<_> = (0..n).map(|i| rs[(i * 7919) % n]).collect();
        let (mx, hm) = bytes_per_entry(&mixed);
        println!(
            "n={n}: bytes/entry bottom-up {up:.1} (h{hu}), top-down {dn:.1} (h{hd}), scattered {mx:.1} (h{hm})"
        );
        assert!(up <= 48.0 && dn <= 48.0, "n={n}: {up:.1} / {dn:.1} bytes per entry, target <= 48");
        assert!(mx <= 48.0, "n={n}: scattered inserts use {mx:.1} bytes per entry, target <= 48");
    }
}
