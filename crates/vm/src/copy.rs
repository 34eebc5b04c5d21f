//! Byte copies to and from an address space through a CPU: the loads and
//! stores of any width and alignment an emulator makes, and the
//! `copy_from_user`/`copy_to_user` a kernel makes.
//!
//! # Owns
//! [`Cpu::read_bytes`], [`Cpu::write_bytes`] and their error, [`CopyError`].
//!
//! # Invariants
//! - B1. A copy goes page by page, and each page's part is one access
//!   (cpu.rs C1): the page is looked up, faulted in and checked once, and
//!   its bytes move inside one TLB section, so a shootdown waits for them
//!   as for a word access.
//! - B2. A copy that cannot access a page stops there: every byte before
//!   that page's first byte in the range was copied, none after. The error
//!   says how many bytes moved and the first address not copied (what
//!   Linux's `copy_{from,to}_user` return, the count of bytes not copied,
//!   and the address a signal would carry).
//! - B3. Bytes sit in a frame's words little-endian (x86-64's order). A
//!   whole aligned word is one store; a part of a word is a compare-exchange
//!   loop, so bytes of the same word that another CPU stores meanwhile are
//!   kept, as a byte store on x86 leaves its neighbours alone.
//! - B4. A range that wraps past 2^64 copies nothing (Linux's `access_ok`
//!   refuses it before any byte moves). An empty range copies nothing and
//!   succeeds without an access.
//!
//! # Linux
//! `copy_from_user`/`copy_to_user` (`raw_copy_*` then the fault fixup), and
//! the MMU's handling of a load or store that is not aligned or crosses a
//! page: each page it touches is translated and faulted separately.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::Cpu;
use crate::fault::AccessError;
use crate::frame::WORDS;
use crate::vma::PAGE_SIZE;

/// Why a byte copy stopped (B2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyError {
    /// Bytes copied before it stopped (all of them in pages before `addr`).
    pub copied: usize,
    /// The first address not copied: where the access failed.
    pub addr: u64,
    /// The signal the failed access would raise.
    pub error: AccessError,
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {:#x} after {} bytes", self.error, self.addr, self.copied)
    }
}

impl std::error::Error for CopyError {}

impl Cpu {
    /// Reads `buf.len()` bytes starting at `va`, at any alignment and
    /// across pages, as a load (or a `copy_from_user`) would (B1–B4).
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use rcuvm::{AccessError, AddressSpace, CopyError, MapFlags, Prot};
    ///
    /// let mm = Arc::new(AddressSpace::new());
    /// let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    /// let a = mm.mmap(0, 8192, Prot::READ | Prot::WRITE, anon, None, 0).unwrap();
    /// let mut cpu = mm.cpu();
    /// cpu.write_bytes(a + 4093, b"across").unwrap(); // two pages, two faults
    /// let mut buf = [0u8; 6];
    /// cpu.read_bytes(a + 4093, &mut buf).unwrap();
    /// assert_eq!(&buf, b"across");
    /// // Past the end of the mapping: the first page's bytes, then SIGSEGV.
    /// let e = cpu.read_bytes(a + 8190, &mut buf).unwrap_err();
    /// assert_eq!(e, CopyError { copied: 2, addr: a + 8192, error: AccessError::MapErr });
    /// ```
    ///
    /// # Errors
    /// Where the copy stopped and why (B2); `buf` then holds the bytes
    /// copied before it.
    ///
    /// # Panics
    /// As [`Cpu::access`]: never from bad addresses; only if called from
    /// inside an access's closure.
    pub fn read_bytes(&mut self, va: u64, buf: &mut [u8]) -> Result<(), CopyError> {
        self.copy(va, buf.len(), false, |page, off, done, n| {
            read_from(page, off, &mut buf[done..done + n]);
        })
    }

    /// Writes `data` starting at `va`, at any alignment and across pages,
    /// as a store (or a `copy_to_user`) would (B1–B4).
    ///
    /// # Errors
    /// Where the copy stopped and why (B2): the bytes before it were
    /// written, none after.
    ///
    /// # Panics
    /// As [`Cpu::read_bytes`].
    pub fn write_bytes(&mut self, va: u64, data: &[u8]) -> Result<(), CopyError> {
        self.copy(va, data.len(), true, |page, off, done, n| {
            write_to(page, off, &data[done..done + n]);
        })
    }

    /// Walks `[va, va + len)` page by page, one access each (B1), calling
    /// `op(page, offset in page, bytes done, bytes in this page)`.
    fn copy(
        &mut self,
        va: u64,
        len: usize,
        write: bool,
        mut op: impl FnMut(&[AtomicU64; WORDS], usize, usize, usize),
    ) -> Result<(), CopyError> {
        if len == 0 {
            return Ok(());
        }
        // B4: the last byte must be addressable.
        if va.checked_add(len as u64 - 1).is_none() {
            return Err(CopyError { copied: 0, addr: va, error: AccessError::MapErr });
        }
        let mut done = 0usize;
        while done < len {
            let at = va + done as u64;
            let off = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(len - done);
            #[cfg(feature = "record")]
            let start = self.record_start();
            let r = self.access_page(at, write, |page| op(page, off, done, n));
            #[cfg(feature = "record")]
            self.record(at, write, 0, r, start);
            if let Err(error) = r {
                return Err(CopyError { copied: done, addr: at, error });
            }
            done += n;
        }
        Ok(())
    }
}

/// Copies `out.len()` bytes from `page` at byte offset `off` (B3).
fn read_from(page: &[AtomicU64; WORDS], off: usize, out: &mut [u8]) {
    let mut i = 0;
    while i < out.len() {
        let b = off + i;
        let shift = b % 8;
        let n = (8 - shift).min(out.len() - i);
        let word = page[b / 8].load(Ordering::Relaxed).to_le_bytes();
        out[i..i + n].copy_from_slice(&word[shift..shift + n]);
        i += n;
    }
}

/// Copies `data` into `page` at byte offset `off` (B3).
fn write_to(page: &[AtomicU64; WORDS], off: usize, data: &[u8]) {
    let mut i = 0;
    while i < data.len() {
        let b = off + i;
        let shift = b % 8;
        let n = (8 - shift).min(data.len() - i);
        let part = &data[i..i + n];
        let word = &page[b / 8];
        if n == 8 {
            word.store(u64::from_le_bytes(part.try_into().expect("8 bytes")), Ordering::Relaxed);
        } else {
            // B3: keep the word's other bytes, even if another CPU stores
            // to them meanwhile. The closure always returns Some.
            let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let mut bytes = old.to_le_bytes();
                bytes[shift..shift + n].copy_from_slice(part);
                Some(u64::from_le_bytes(bytes))
            });
        }
        i += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Box<[AtomicU64; WORDS]> {
        Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    #[test]
    fn bytes_round_trip_at_every_offset_and_length() {
        let p = page();
        for (i, w) in p.iter().enumerate() {
            w.store(0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1), Ordering::Relaxed);
        }
        for off in 0..24 {
            for len in 0..24 {
                let data: Vec<u8> = (0..len).map(|k| (off * 31 + k * 7 + 1) as u8).collect();
                let before: Vec<u64> = p.iter().map(|w| w.load(Ordering::Relaxed)).collect();
                write_to(&p, off, &data);
                let mut back = vec![0; len];
                read_from(&p, off, &mut back);
                assert_eq!(back, data, "offset {off}, length {len}");
                // Bytes outside the range are unchanged (B3).
                let mut all = vec![0u8; 64];
                read_from(&p, 0, &mut all);
                for (k, &b) in all.iter().enumerate() {
                    if k < off || k >= off + len {
                        assert_eq!(
                            b,
                            before[k / 8].to_le_bytes()[k % 8],
                            "byte {k} after a write at {off}+{len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn words_hold_bytes_little_endian() {
        let p = page();
        p[1].store(0x0807_0605_0403_0201, Ordering::Relaxed);
        let mut b = [0u8; 3];
        read_from(&p, 9, &mut b);
        assert_eq!(b, [2, 3, 4]);
        write_to(&p, 15, &[0xaa, 0xbb]);
        assert_eq!(p[1].load(Ordering::Relaxed), 0xaa07_0605_0403_0201);
        assert_eq!(p[2].load(Ordering::Relaxed), 0xbb);
    }

    #[test]
    fn concurrent_byte_stores_to_one_word_keep_each_other() {
        let p: std::sync::Arc<[AtomicU64; WORDS]> =
            std::sync::Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for k in 0..20_000u32 {
                        write_to(&p, t, &[(k % 255 + 1) as u8]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Each thread's last store (20,000th: k = 19,999) survives.
        let last = (19_999 % 255 + 1) as u8;
        assert_eq!(p[0].load(Ordering::Relaxed).to_le_bytes()[..4], [last; 4]);
    }
}
