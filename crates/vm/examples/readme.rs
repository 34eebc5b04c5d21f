//! The README's "Using the address space" example, as a program:
//! `cargo run -p rcuvm --example readme`. `tests/readme.rs` runs it and
//! checks that the README still shows this very code.

use rcuvm::{AccessError, AddressSpace, MapFlags, Prot, Strategy};
use std::sync::Arc;

/// The example (public so that tests/readme.rs can run it); kept as the
/// README shows it, aligned comments and line breaks.
#[rustfmt::skip]
pub fn main() {
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let a = mm.mmap(0, 1 << 20, Prot::READ | Prot::WRITE,
                    MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    let worker = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let mut cpu = mm.cpu();          // one simulated CPU per thread
            cpu.write(a, 42).unwrap();       // TLB miss, walk, page fault
            cpu.read(a).unwrap()             // TLB hit
        })
    };
    assert_eq!(worker.join().unwrap(), 42);
    print!("{}", mm.smaps());                // Rss: 4 kB, from a lockless page-table walk
    mm.munmap(a, 1 << 20).unwrap();          // zap, shootdown, dead entry: no grace-period wait
    assert_eq!(mm.cpu().read(a), Err(AccessError::MapErr));
}
