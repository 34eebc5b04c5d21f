//! The data the maple benches and `examples/lookup_pair.rs` share: VMA-like
//! ranges and random probes inside them, the same on every run.

/// xorshift64: cheap, deterministic randomness.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` VMA-like ranges (4–64 KiB, with 4–64 KiB gaps), sorted.
pub fn ranges(n: usize) -> Vec<(u64, u64)> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut at = 0x10_0000u64;
    (0..n)
        .map(|_| {
            let len = (1 + r.next() % 16) * 0x1000;
            let gap = (1 + r.next() % 16) * 0x1000;
            let s = at;
            at += len + gap;
            (s, s + len)
        })
        .collect()
}

/// `n` random addresses inside random ranges of `rs`.
pub fn probes(rs: &[(u64, u64)], n: usize, seed: u64) -> Vec<u64> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let (s, e) = rs[(r.next() % rs.len() as u64) as usize];
            s + r.next() % (e - s)
        })
        .collect()
}
