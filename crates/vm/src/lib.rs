//! rcuvm: an RCU-protected address-space manager with Linux's mm semantics.
//!
//! Built so far: the immutable [`Vma`] and its flags, `/proc/pid/maps`
//! rendering and parsing in Linux's exact format, and an [`AddressSpace`]
//! that keeps its VMAs in an RCU-safe [`MapleTree`](rcuvm_maple::MapleTree)
//! and serves lock-free readers (`maps`, `query`).
//!
//! `mmap`, `munmap`, `mprotect`, `mremap`, `brk`, `mlock` (and `mlock2`,
//! `munlock`, `mlockall`, `munlockall`) and the flag-changing `madvise`
//! advices follow Linux's checks, placement and merging.
//!
//! Not yet: what `madvise` and `mlock` do to pages, page tables,
//! CPUs and TLBs, the fault path and the strategies. Each has its issue.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod brk;
mod madvise;
pub mod maps;
mod mlock;
mod mm;
mod mmap;
mod mprotect;
mod mremap;
pub mod strace;
pub mod uapi;
pub mod vma;

pub use maps::MapsError;
pub use mm::AddressSpace;
pub use mmap::{MapFile, MmConfig};
pub use uapi::{Errno, MapFlags, Prot};
pub use vma::{AnonVmaId, Backing, FileId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};
