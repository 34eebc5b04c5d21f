//! `Cpu::read_bytes` and `Cpu::write_bytes` (copy.rs B1–B4) under every
//! strategy: copies at any alignment and across pages, where they stop
//! when a page cannot be accessed, and how they meet word accesses,
//! copy-on-write and unmapping.

use std::sync::Arc;

use rcuvm::frame::file_word;
use rcuvm::{AccessError, AddressSpace, CopyError, FileId, MapFile, MapFlags, Prot, Strategy};

const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const P: u64 = 4096;

fn mm(s: Strategy) -> Arc<AddressSpace> {
    Arc::new(AddressSpace::with_strategy(s))
}

/// `n` bytes that differ from their neighbours and from zero.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) | 1).collect()
}

#[test]
fn copies_cross_pages_at_any_alignment() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        // From 3 bytes before the end of page 0 across all of page 1 into
        // page 2: three accesses, three faults.
        let at = a + P - 3;
        let data = pattern(P as usize + 10, 5);
        cpu.write_bytes(at, &data).unwrap();
        assert_eq!(cpu.stats().fault.faults, 3, "{s}: one fault per page touched");
        let mut back = vec![0; data.len()];
        cpu.read_bytes(at, &mut back).unwrap();
        assert_eq!(back, data, "{s}");
        // Another CPU reads the same bytes, a few at a time.
        let mut other = mm.cpu();
        for (k, chunk) in data.chunks(7).enumerate() {
            let mut b = vec![0; chunk.len()];
            other.read_bytes(at + 7 * k as u64, &mut b).unwrap();
            assert_eq!(b, chunk, "{s}: chunk {k}");
        }
        // The bytes around the copy are untouched zeroes.
        let mut edge = [0xffu8; 2];
        cpu.read_bytes(at - 2, &mut edge).unwrap();
        assert_eq!(edge, [0, 0], "{s}");
        cpu.read_bytes(at + data.len() as u64, &mut edge).unwrap();
        assert_eq!(edge, [0, 0], "{s}");
    }
}

#[test]
fn bytes_and_words_are_the_same_memory_little_endian() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a + 8, 0x0807_0605_0403_0201).unwrap();
        let mut b = [0u8; 4];
        cpu.read_bytes(a + 10, &mut b).unwrap();
        assert_eq!(b, [3, 4, 5, 6], "{s}");
        cpu.write_bytes(a + 15, &[0xaa, 0xbb]).unwrap();
        assert_eq!(cpu.read(a + 8), Ok(0xaa07_0605_0403_0201), "{s}");
        assert_eq!(cpu.read(a + 16), Ok(0xbb), "{s}");
    }
}

#[test]
fn a_copy_stops_at_the_first_page_it_cannot_access() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 3 * P, RW, ANON, None, 0).unwrap();
        mm.munmap(a + P, P).unwrap();
        mm.mprotect(a + 2 * P, P, Prot::READ).unwrap();
        let mut cpu = mm.cpu();

        // Into the hole: the bytes of page 0 are written, then SEGV_MAPERR
        // at the hole's first byte.
        let data = pattern(20, 9);
        let e = cpu.write_bytes(a + P - 8, &data).unwrap_err();
        assert_eq!(e, CopyError { copied: 8, addr: a + P, error: AccessError::MapErr }, "{s}");
        let mut back = [0u8; 8];
        cpu.read_bytes(a + P - 8, &mut back).unwrap();
        assert_eq!(back, data[..8], "{s}: the bytes before the hole were written");

        // Reading across the hole fills the buffer up to it.
        let mut buf = vec![0u8; 20];
        let e = cpu.read_bytes(a + P - 8, &mut buf).unwrap_err();
        assert_eq!((e.copied, e.addr, e.error), (8, a + P, AccessError::MapErr), "{s}");
        assert_eq!(buf[..8], data[..8], "{s}");
        assert!(buf[8..].iter().all(|&b| b == 0), "{s}: nothing past the hole");

        // A read-only page: reads work, a write is SEGV_ACCERR and changes
        // nothing in it.
        let e = cpu.write_bytes(a + 2 * P + 100, &[1, 2, 3]).unwrap_err();
        assert_eq!(e, CopyError { copied: 0, addr: a + 2 * P + 100, error: AccessError::AccErr }, "{s}");
        let mut ro = [9u8; 3];
        cpu.read_bytes(a + 2 * P + 100, &mut ro).unwrap();
        assert_eq!(ro, [0, 0, 0], "{s}");
        assert_eq!(e.to_string(), format!("SIGSEGV (SEGV_ACCERR) at {:#x} after 0 bytes", a + 2 * P + 100));
    }
}

#[test]
fn ranges_past_the_end_of_memory_copy_nothing() {
    let mm = mm(Strategy::RcuDead);
    let mut cpu = mm.cpu();
    // Wraps past 2^64 (Linux's access_ok): refused whole.
    let mut b = [0u8; 8];
    assert_eq!(
        cpu.read_bytes(u64::MAX - 3, &mut b),
        Err(CopyError { copied: 0, addr: u64::MAX - 3, error: AccessError::MapErr })
    );
    assert_eq!(
        cpu.write_bytes(u64::MAX, &[1, 2]),
        Err(CopyError { copied: 0, addr: u64::MAX, error: AccessError::MapErr })
    );
    // The very last byte is addressable (nothing maps it here).
    assert_eq!(cpu.read_bytes(u64::MAX, &mut b[..1]).unwrap_err().error, AccessError::MapErr);
    // Nothing to copy: no access, no error, even at an unmapped address.
    assert_eq!(cpu.read_bytes(0x1000, &mut []), Ok(()));
    assert_eq!(cpu.write_bytes(u64::MAX, &[]), Ok(()));
    assert_eq!(cpu.stats().accesses, 0);
}

#[test]
fn byte_stores_to_a_private_file_mapping_copy_on_write() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let f = MapFile {
            id: FileId { dev_major: 8, dev_minor: 1, inode: 77, path: Arc::from("/data/f") },
            readable: true,
            writable: false,
        };
        let private = mm.mmap(0, 2 * P, RW, MapFlags::PRIVATE, Some(&f), 0).unwrap();
        let shared = mm.mmap(0, 2 * P, Prot::READ, MapFlags::SHARED, Some(&f), 0).unwrap();
        let mut cpu = mm.cpu();
        // Bytes 4..12 of page 1: the upper half of word 0 and the lower of
        // word 1, as the file holds them.
        let (w0, w1) = (file_word(&f.id, 1, 0), file_word(&f.id, 1, 1));
        let mut expect = w0.to_le_bytes()[4..].to_vec();
        expect.extend_from_slice(&w1.to_le_bytes()[..4]);
        let mut b = [0u8; 8];
        cpu.read_bytes(private + P + 4, &mut b).unwrap();
        assert_eq!(b.to_vec(), expect, "{s}: the file's bytes");
        // One byte written: the page is copied, the file is not changed.
        cpu.write_bytes(private + P + 5, &[0x5a]).unwrap();
        let mut mine = [0u8; 8];
        cpu.read_bytes(private + P + 4, &mut mine).unwrap();
        expect[1] = 0x5a;
        assert_eq!(mine.to_vec(), expect, "{s}: the private copy, with the byte");
        assert_eq!(cpu.read(shared + P), Ok(w0), "{s}: the page cache still holds the file's word");
        assert_eq!(cpu.read(private + P + 8), Ok(w1), "{s}: the rest of the copied page is the file's");
    }
}

#[test]
fn concurrent_copies_into_one_word_keep_each_others_bytes() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let mm = mm.clone();
                std::thread::spawn(move || {
                    let mut cpu = mm.cpu();
                    // Thread t owns bytes 4t..4t+4 of the word at a + 8.
                    for k in 0..5_000u32 {
                        cpu.write_bytes(a + 8 + 4 * t, &(k + 1).to_le_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut cpu = mm.cpu();
        assert_eq!(
            cpu.read(a + 8),
            Ok((5_000u64 << 32) | 5_000),
            "{s}: neither thread lost the other's bytes"
        );
    }
}

#[test]
fn a_copy_racing_munmap_sees_whole_pages_or_a_signal() {
    // Page i holds zeroes (new) or bytes i + 1 (written); a copy of a
    // whole page either completes with only those bytes or stops with
    // SEGV_MAPERR: it never reads another page's bytes through a stale
    // translation to a frame reused since. (Not rcu-refcount, unsafe by
    // design.)
    for s in Strategy::ALL.into_iter().filter(|s| s.is_safe()) {
        let mm = mm(s);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let base = 0x2000_0000u64;
        let fixed = ANON | MapFlags::FIXED;
        mm.mmap(base, 8 * P, RW, fixed, None, 0).unwrap();
        let ready = Arc::new(std::sync::Barrier::new(2));
        let reader = {
            let (mm, stop, ready) = (mm.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut cpu = mm.cpu();
                ready.wait();
                let mut buf = vec![0u8; P as usize];
                let mut seen = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in 0..8 {
                        match cpu.read_bytes(base + i * P, &mut buf) {
                            Ok(()) => {
                                let bad = buf.iter().find(|&&b| b != 0 && u64::from(b) != i + 1);
                                assert_eq!(bad, None, "{s}: page {i} held another page's byte");
                                seen += 1;
                            }
                            Err(e) => assert_eq!((e.copied, e.error), (0, AccessError::MapErr), "{s}"),
                        }
                    }
                }
                seen
            })
        };
        let mut cpu = mm.cpu();
        // Each round faults the pages in another order, so that a frame
        // freed from page i comes back as another page: a stale read of it
        // shows that page's bytes.
        let fill = |cpu: &mut rcuvm::Cpu, round: u64| {
            for k in 0..8 {
                let i = (k + round) % 8;
                cpu.write_bytes(base + i * P, &vec![(i + 1) as u8; P as usize]).unwrap();
            }
        };
        // The reader starts on written pages, so its TLB holds their
        // frames (not the zero page) when the first munmap frees them.
        fill(&mut cpu, 0);
        ready.wait();
        let t0 = std::time::Instant::now();
        let mut round = 0;
        while t0.elapsed() < std::time::Duration::from_millis(100) {
            mm.munmap(base, 8 * P).unwrap();
            mm.mmap(base, 8 * P, RW, fixed, None, 0).unwrap();
            round += 1;
            fill(&mut cpu, round);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0, "{s}: the reader read some pages");
        assert_eq!(mm.use_after_free_accesses(), 0, "{s}: cpu.rs C5");
    }
}

#[test]
fn addresses_past_task_size_reach_nothing() {
    // cpu.rs C7: the tables map 48 bits; an address with higher bits set
    // once reached the page of its low 48 bits (found by a review).
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a, 0x1234).unwrap();
        for high in [a | 1 << 48, a | 0xffff_0000_0000_0000, mm.config().task_size] {
            assert_eq!(cpu.read(high), Err(AccessError::MapErr), "{s}: {high:#x}");
            assert_eq!(cpu.write(high, 1), Err(AccessError::MapErr), "{s}: {high:#x}");
            assert_eq!(cpu.write_bytes(high, &[1, 2]).unwrap_err().error, AccessError::MapErr, "{s}");
            assert!(!mm.translate(high).present(), "{s}: {high:#x}");
        }
        assert_eq!(cpu.read(a), Ok(0x1234), "{s}: the low page is untouched");
        // A copy that runs into task_size stops there.
        let top = mm.config().task_size - P;
        mm.mmap(top, P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
        let e = cpu.write_bytes(top + P - 2, &[9; 4]).unwrap_err();
        assert_eq!((e.copied, e.addr, e.error), (2, top + P, AccessError::MapErr), "{s}");
    }
}
