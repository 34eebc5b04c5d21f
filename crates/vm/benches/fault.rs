//! What a page fault, a TLB hit and an mmap/touch/munmap cycle cost under
//! each strategy, beside the host kernel doing the same in this process.
//!
//! Run: `cargo bench -p rcuvm --bench fault`. Figures and how to read them
//! are in `docs/benchmarks.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

const P: u64 = 4096;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// Pages mapped at a time for the fault benchmark (16 MiB).
const CHUNK: u64 = 4096;

/// Write-faults `iters` fresh anonymous pages, `CHUNK` pages per mapping;
/// only the touches are timed.
fn fault_rcuvm(s: Strategy, iters: u64) -> Duration {
    let mm = Arc::new(AddressSpace::with_strategy(s));
    let mut cpu = mm.cpu();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let a = mm.mmap(0, n * P, RW, ANON, None, 0).unwrap();
        let t = Instant::now();
        for i in 0..n {
            cpu.write(a + i * P, i).unwrap();
        }
        total += t.elapsed();
        mm.munmap(a, n * P).unwrap();
        left -= n;
    }
    total
}

/// A fresh private anonymous read-write mapping of the host kernel.
fn linux_map(len: usize) -> *mut u8 {
    // SAFETY: asks for new memory; touches nothing that exists.
    let a = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(a, libc::MAP_FAILED);
    a.cast()
}

/// Writes `v` to page `i` of a mapping from `linux_map` (a page fault the
/// first time), then unmaps nothing.
fn linux_touch(a: *mut u8, i: u64, v: u64) {
    // SAFETY: callers pass a page index inside the mapping `a`.
    unsafe { std::ptr::write_volatile(a.add((i * P) as usize).cast::<u64>(), v) }
}

fn linux_unmap(a: *mut u8, len: usize) {
    // SAFETY: `a` came from `linux_map(len)` and is not used afterwards.
    unsafe { libc::munmap(a.cast(), len) };
}

/// The same on the host kernel: real page faults of this process.
fn fault_linux(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let len = (n * P) as usize;
        let a = linux_map(len);
        let t = Instant::now();
        for i in 0..n {
            linux_touch(a, i, i);
        }
        total += t.elapsed();
        linux_unmap(a, len);
        left -= n;
    }
    total
}

fn faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault: first write to an anonymous page");
    g.measurement_time(Duration::from_secs(3));
    for s in Strategy::ALL {
        g.bench_function(format!("rcuvm {s}"), |b| b.iter_custom(|n| fault_rcuvm(s, n)));
    }
    g.bench_function("linux (this process)", |b| b.iter_custom(fault_linux));
    g.finish();
}

fn tlb_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("access: read through a TLB hit");
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(a, 1).unwrap();
    g.bench_function("rcuvm Cpu::read", |b| b.iter(|| black_box(cpu.read(black_box(a)).unwrap())));
    g.finish();
}

/// `mmap` 16 pages, write each, `munmap` (will-it-scale `mmap1` with touches).
fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmap + touch 16 pages + munmap");
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let mut cpu = mm.cpu();
        g.bench_function(format!("rcuvm {s}"), |b| {
            b.iter(|| {
                let a = mm.mmap(0, 16 * P, RW, ANON, None, 0).unwrap();
                for i in 0..16 {
                    cpu.write(a + i * P, i).unwrap();
                }
                mm.munmap(a, 16 * P).unwrap();
            })
        });
    }
    g.bench_function("linux (this process)", |b| {
        b.iter(|| {
            let len = (16 * P) as usize;
            let a = linux_map(len);
            for i in 0..16 {
                linux_touch(a, i, i);
            }
            linux_unmap(a, len);
        })
    });
    g.finish();
}

criterion_group!(benches, faults, tlb_hit, cycle);
criterion_main!(benches);
