//! The asymmetric fence: a free reader half, an expensive writer half.
//!
//! # Owns
//! The process-wide fence mode, chosen once by [`init`] before the first
//! [`Domain`](crate::Domain) exists.
//!
//! # Invariants
//! - B1. The mode never changes after [`init`] returns. Readers read it with a
//!   relaxed load; they can only run after a domain exists, and a domain exists
//!   only after `init` returned, so every reader sees the final mode.
//! - B2. In `Membarrier` mode the reader half is a compiler barrier and the
//!   writer half is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which
//!   executes a full memory barrier on every CPU running a thread of this
//!   process. In `Fence` mode both halves are `fence(SeqCst)`. Either way
//!   (reader store; reader half; reader load) and (writer store; writer half;
//!   writer load) cannot both see the other's store missing: the Dekker
//!   pattern every grace period rests on.
//!
//! # Linux
//! `urcu-memb`'s `smp_mb_slave()` / `smp_mb_master()`; the kernel's own
//! `membarrier(2)`. `RCUVM_RCU_NO_MEMBARRIER=1` in the environment forces the
//! fallback (for tests and for kernels with `membarrier` filtered by seccomp).

use std::sync::OnceLock;

use crate::sync::{self, Ordering, fence};

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// How the heavy half of the fence is implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceMode {
    /// Readers use a compiler barrier; writers call
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`.
    Membarrier,
    /// Readers and writers both execute `fence(SeqCst)`.
    Fence,
}

// A std atomic on purpose, also under loom: the mode is fixed before any
// modelled thread runs (B1), so it is not part of the protocol being checked.
static MEMBARRIER_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static MODE: OnceLock<FenceMode> = OnceLock::new();

fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier(2) takes (cmd, flags, cpu_id) integers and touches no
    // user memory; an unknown command just fails with EINVAL or ENOSYS.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
}

fn choose() -> FenceMode {
    if sync::MODEL || std::env::var_os("RCUVM_RCU_NO_MEMBARRIER").is_some_and(|v| v != "0") {
        return FenceMode::Fence;
    }
    let cmds = membarrier(MEMBARRIER_CMD_QUERY);
    if cmds < 0 || cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED == 0 {
        return FenceMode::Fence;
    }
    if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0 {
        return FenceMode::Fence;
    }
    FenceMode::Membarrier
}

/// Chooses the mode once for the process (B1). Called by `Domain::new`.
pub(crate) fn init() -> FenceMode {
    *MODE.get_or_init(|| {
        let mode = choose();
        MEMBARRIER_ON.store(mode == FenceMode::Membarrier, std::sync::atomic::Ordering::Relaxed);
        mode
    })
}

/// The reader half (B2). Costs nothing in `Membarrier` mode.
/// `membarrier_on` is the domain's mode (B1), read off the grace-period
/// counter's `FENCE_BIT` (reader.rs).
#[inline(always)]
pub(crate) fn reader_fence(membarrier_on: bool) {
    if membarrier_on {
        sync::compiler_fence();
    } else {
        crate::cold();
        fence(Ordering::SeqCst);
    }
}

/// The writer half (B2): a full barrier on every CPU running this process.
pub(crate) fn writer_fence() {
    // ORDERING: a full fence on our own CPU first, so that our prior stores
    // (the grace-period counter) are globally visible before the IPIs ask the
    // other CPUs to fence.
    fence(Ordering::SeqCst);
    if MEMBARRIER_ON.load(std::sync::atomic::Ordering::Relaxed) {
        let r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
        // The command was registered in `init`; the kernel cannot withdraw it.
        // If it fails anyway, readers are not fenced and a grace period would
        // be a lie: stopping is the only safe answer.
        if r != 0 {
            eprintln!(
                "rcuvm-rcu: membarrier(PRIVATE_EXPEDITED) failed after registration: {}",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
}
