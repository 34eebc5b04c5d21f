//! What `fork` costs, beside the host kernel's, in alternating rounds of
//! one process: for a private anonymous mapping of `MiB` whose every page
//! was written, the time of the fork itself (copying the VMAs and page
//! entries, write-protecting the parent's), then of the parent writing one
//! word in every page while the child still lives (a copy-on-write fault
//! per page), then of the child going away (rcuvm: dropping its address
//! space, which frees its table pages and gives back the frames' counts;
//! the host: the child exits and the parent reaps it).
//!
//! rcuvm runs under each strategy asked for, its strategies' rounds
//! alternating; the host forks this very process, in rounds made first,
//! while the process holds little but the buffer (a real fork copies the
//! whole process: rcuvm's populated frames would count). Its child waits
//! on a pipe, then exits without running anything else, so the parent's
//! writes are copies-on-write there too. Figures are the medians of the
//! rounds, in ms and in ns per page.
//!
//! Run: `cargo run --release -p rcuvm --example fork_pair -- [MiB] [rounds] [strategy,...]`
//! (defaults 64, 7, rcu-dead).
use std::sync::Arc;
use std::time::Instant;

use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

const PAGE: u64 = 4096;

/// One round's times, ms: the fork, the parent's copy-on-write writes,
/// the child's end.
type Round = (f64, f64, f64);

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One rcuvm round: (fork, parent's copy-on-write writes, child's drop), in ms.
fn rcuvm_round(mm: &Arc<AddressSpace>, a: u64, len: u64, round: u64) -> Round {
    let t0 = Instant::now();
    let child = mm.fork();
    let t1 = Instant::now();
    let mut cpu = mm.cpu();
    for p in (0..len).step_by(PAGE as usize) {
        cpu.write(a + p, round).expect("a writable page");
    }
    let t2 = Instant::now();
    drop(child);
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    (ms(t0, t1), ms(t1, t2), ms(t2, t3))
}

/// One host round on `buf`: the same three steps with a real `fork`.
fn host_round(buf: *mut u64, len: u64, round: u64) -> Round {
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let t0 = Instant::now();
    // SAFETY: the child only reads from the pipe and exits (no allocation,
    // no lock: it is a copy of a threaded process).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut b = 0u8;
        // SAFETY: closes its copy of the write end (else its read would
        // wait for itself), reads the pipe, then exits running nothing.
        unsafe {
            libc::close(fds[1]);
            libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    let t1 = Instant::now();
    for i in (0..len / 8).step_by((PAGE / 8) as usize) {
        // SAFETY: inside the mapping `buf` points to, which this process owns.
        unsafe { std::ptr::write_volatile(buf.add(i as usize), round) };
    }
    let t2 = Instant::now();
    let mut status = 0;
    // SAFETY: wakes the child (closing the write end), then reaps it.
    unsafe {
        libc::close(fds[1]);
        libc::waitpid(pid, &mut status, 0);
        libc::close(fds[0]);
    }
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    (ms(t0, t1), ms(t1, t2), ms(t2, t3))
}

fn main() {
    let mib: u64 = std::env::args().nth(1).map_or(64, |s| s.parse().expect("MiB"));
    let rounds: u64 = std::env::args().nth(2).map_or(7, |s| s.parse().expect("rounds"));
    let strategies: Vec<Strategy> = std::env::args().nth(3).map_or(vec![Strategy::RcuDead], |s| {
        s.split(',').map(|n| n.parse().unwrap_or_else(|e| panic!("{e}"))).collect()
    });
    let len = mib << 20;
    let pages = (len / PAGE) as f64;
    let rw = Prot::READ | Prot::WRITE;
    let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    // The host's rounds come first, while this process holds little but
    // the buffer: its fork copies every mapping of the process, and
    // rcuvm's frames (its `PhysMem`, `MiB` per strategy, populated) would
    // count in the host's figure.
    let host: Vec<Round> = {
        // SAFETY: a fresh mapping, written whole (MAP_POPULATE faults it in).
        let buf = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(buf, libc::MAP_FAILED);
        let r = (1..=rounds).map(|round| host_round(buf.cast(), len, round)).collect();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(buf, len as usize) };
        r
    };
    let mms: Vec<(Strategy, Arc<AddressSpace>, u64)> = strategies
        .iter()
        .map(|&s| {
            let mm = Arc::new(AddressSpace::with_strategy(s));
            let a = mm.mmap(0, len, rw, anon | MapFlags::POPULATE, None, 0).expect("mmap");
            (s, mm, a)
        })
        .collect();
    let mut results: Vec<(String, Vec<Round>)> =
        mms.iter().map(|(s, ..)| (s.to_string(), Vec::new())).chain([("linux".to_string(), host)]).collect();
    for round in 1..=rounds {
        for (i, (_, mm, a)) in mms.iter().enumerate() {
            results[i].1.push(rcuvm_round(mm, *a, len, round));
        }
    }
    println!("fork of {mib} MiB written ({pages} pages), median of {rounds} rounds:");
    println!(
        "{:<14}{:>12}{:>14}{:>12}{:>14}{:>12}",
        "", "fork ms", "ns/page", "cow ms", "ns/page", "child ms"
    );
    for (name, r) in &results {
        let (f, c, d) = (
            med(r.iter().map(|x| x.0).collect()),
            med(r.iter().map(|x| x.1).collect()),
            med(r.iter().map(|x| x.2).collect()),
        );
        println!("{name:<14}{f:>12.2}{:>14.1}{c:>12.2}{:>14.1}{d:>12.2}", f * 1e6 / pages, c * 1e6 / pages);
    }
}
