//! The cost of one `/proc/pid/maps` and one `smaps` read, single-threaded,
//! on an address space of `n` VMAs (every other page of one mapping made
//! read-only, every page touched so that smaps' walks find frames): the
//! figures behind the one-buffer rendering notes in docs/benchmarks.md.
//!
//! Run: `cargo run --release -p rcuvm --example maps_read -- [n]` (default
//! 8000). Prints the best of five rounds of 200 reads of each.
use std::sync::Arc;
use std::time::Instant;

use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

/// A way to read the address space's maps.
type Read = fn(&AddressSpace) -> String;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8000);
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    let base = mm.mmap(0, n * 4096, Prot::READ | Prot::WRITE, flags, None, 0).expect("mmap");
    let mut cpu = mm.cpu();
    for i in 0..n {
        cpu.write(base + i * 4096, i).expect("write");
    }
    for i in 0..n / 2 {
        mm.mprotect(base + (2 * i + 1) * 4096, 4096, Prot::READ).expect("mprotect");
    }
    let reads: [(&str, Read); 2] = [("maps", AddressSpace::maps), ("smaps", AddressSpace::smaps)];
    println!("{} VMAs", mm.maps().lines().count());
    for (name, read) in reads {
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..200 {
                    std::hint::black_box(read(&mm));
                }
                t.elapsed().as_secs_f64() / 200.0
            })
            .fold(f64::MAX, f64::min);
        println!("{name}: {:.1} us per read", best * 1e6);
    }
}
