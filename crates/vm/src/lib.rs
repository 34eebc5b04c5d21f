//! rcuvm: an RCU-protected address-space manager with Linux's mm semantics.
//!
//! An [`AddressSpace`] keeps immutable [`Vma`]s in an RCU-safe
//! [`MapleTree`](rcuvm_maple::MapleTree) and serves lock-free readers
//! (`maps`, `smaps`, `query`). `mmap`, `munmap`, `mprotect`, `mremap`,
//! `brk`, `mlock` (and `mlock2`, `munlock`, `mlockall`, `munlockall`) and
//! `madvise` follow Linux's checks, placement and merging.
//!
//! Below the VMAs sit software page tables ([`PageTable`]), physical
//! memory ([`PhysMem`]) and simulated CPUs ([`Cpu`]) with TLBs that writers
//! shoot down. Page faults run under one of the five [`Strategy`]s of the
//! linux-mm thread "synchronize_rcu in munmap?".
//!
//! ```
//! use std::sync::Arc;
//! use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};
//!
//! let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
//! let a = mm.mmap(0, 8192, Prot::READ | Prot::WRITE, MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
//! let mut cpu = mm.cpu();
//! cpu.write(a + 8, 42).unwrap();          // a page fault, then the TLB
//! assert_eq!(cpu.read(a + 8), Ok(42));
//! mm.munmap(a, 8192).unwrap();            // zap, shootdown, dead entry
//! assert!(cpu.read(a + 8).is_err());      // SIGSEGV: the old translation is gone
//! ```
//!
//! A [`Cpu`] reads and writes 8-byte words ([`Cpu::read`], [`Cpu::write`])
//! or bytes at any address across pages ([`Cpu::read_bytes`],
//! [`Cpu::write_bytes`]); a fault below a `VM_GROWSDOWN` VMA grows it, as a
//! stack grows. File contents are synthetic ([`MapFile`]). A secondary MMU
//! (a VMM's nested page tables, an emulator's translation cache) stays
//! coherent through [`MmuNotifier`]s
//! ([`AddressSpace::register_notifier`]).
//!
//! `mlock`, `MAP_POPULATE` and `MADV_POPULATE_*` fault pages in through
//! the fault path; one charge larger than physical memory is refused
//! (overcommit), and page tables count against it.
//! [`AddressSpace::fork`] copies an address space, sharing its anonymous
//! pages copy-on-write. The checker, `rcuvm check`, is in the lab;
//! [`record`] and [`inject`] are its hooks here. [`protocol`] holds the
//! steps of the lockless protocols that the loom models run as they are.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod brk;
mod copy;
pub mod cpu;
pub mod fault;
mod fork;
pub mod frame;
pub mod inject;
mod madvise;
pub mod maps;
mod mlock;
mod mm;
mod mmap;
mod mprotect;
mod mremap;
pub mod notifier;
pub mod pgtable;
pub mod protocol;
pub mod record;
pub mod replay;
mod stack;
pub mod strace;
pub mod strategy;
pub mod tlb;
pub mod uapi;
mod unmap;
pub mod vma;
mod vma_cache;

/// Every `rust` block of the README (the RCU domain's, the maple tree's,
/// the address space's) compiles and runs as a doctest of this crate,
/// which has all three crates at hand.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use rcuvm_maple as maple;
pub use rcuvm_rcu as rcu;

pub use copy::CopyError;
pub use cpu::Cpu;
pub use fault::AccessError;
pub use frame::PhysMem;
pub use maps::MapsError;
pub use mm::{AddressSpace, MmBuilder};
pub use mmap::{MapFile, MmConfig};
pub use notifier::{MmuNotifier, NotifierRange, NotifyEvent};
pub use pgtable::PageTable;
pub use strategy::Strategy;
pub use uapi::{Errno, MapFlags, Prot};
pub use vma::{AnonVmaId, Backing, FileId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};
