//! Userspace RCU with the kernel's semantics.
//!
//! Read-copy-update lets readers run without locks while a writer replaces
//! what they read: the writer unlinks the old version, waits for a *grace
//! period* (until every reader that might still see it has left its read-side
//! section), then frees it. rcuvm's address spaces rest on it: VMAs, maple-tree
//! nodes and page tables are all freed this way.
//!
//! No crate gave all of what that needs: crossbeam-epoch, seize and haphazard
//! defer frees but cannot *wait* for a grace period, which `munmap` in the
//! thread's solution 1 must. This crate follows liburcu's `memb` flavour:
//!
//! - **Readers** ([`Domain::read`] → [`Guard`]) store one per-thread counter
//!   on entry and exit of the outermost section: no lock, no allocation, no
//!   system call and no read-modify-write after the thread's first use, and a
//!   compiler barrier instead of a fence, because…
//! - **Grace periods** ([`Domain::synchronize`],
//!   [`Domain::synchronize_expedited`]) fence every running thread of the
//!   process at once with `membarrier(2)`, then wait for each counter to show
//!   its reader quiescent or in a newer section. Concurrent callers share.
//! - **Callbacks** ([`Domain::call`], [`Domain::retire`], [`Domain::barrier`])
//!   run after a grace period on a reclaimer thread, in batches. The backlog is
//!   bounded: past [`Config::callback_limit`] callers help.
//! - **Pointers** ([`RcuPtr`]) publish and load values; what a writer replaces
//!   comes back as an [`Unlinked`] that is only freed after a grace period.
//!
//! # Domains
//! Each [`Domain`] has its own grace periods, readers and callbacks (an rcuvm
//! address space owns one, so one process's `munmap` never waits for another
//! address space's readers). [`Domain::global`] is the process-wide default.
//!
//! # Examples
//! ```
//! use rcuvm_rcu::{Domain, RcuPtr};
//!
//! let d = Domain::new();
//! let p = RcuPtr::new(&d, Some(Box::new([1u8; 64])));
//! let g = d.read();
//! let v = p.load(&g).unwrap();
//! // A writer may replace it now; `v` stays valid until `g` is dropped.
//! let old = p.store(Box::new([2u8; 64]));
//! assert_eq!(v[0], 1);
//! drop(g);
//! let old = old.unwrap().synchronize(); // no reader can see it any more
//! assert_eq!(old[0], 1);
//! ```
//!
//! # Loom
//! Built with `RUSTFLAGS="--cfg rcuvm_loom"`, every primitive comes from loom
//! (see `src/sync.rs`) and `tests/loom_*.rs` model-check the protocols.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod callback;
mod deferred;
mod domain;
mod grace;
mod guard;
mod membarrier;
mod pointer;
mod reader;
mod stats;
mod sync;

pub use domain::{Config, Domain};
pub use grace::GpState;
pub use guard::{Guard, Reader};
pub use membarrier::FenceMode;
pub use pointer::{RcuPtr, Unlinked};
pub use stats::Stats;

/// Marks the branch that calls it as unlikely, so the compiler lays out the
/// likely one as straight-line code with no taken jump: the read path's
/// outermost entry, first cached domain and membarrier mode
/// (`std::hint::cold_path` needs a newer toolchain than `rust-version`).
#[cold]
#[inline(always)]
pub(crate) fn cold() {}
