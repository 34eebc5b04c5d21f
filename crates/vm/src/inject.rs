//! Deliberate bugs, to prove the checker catches them.
//!
//! # Owns
//! [`Injection`]: the bugs, selected per address space at run time
//! ([`crate::MmBuilder::inject`]).
//!
//! # Invariants
//! - I1. Without the `inject` feature, `active` is a constant `false`:
//!   every hook compiles away and [`AVAILABLE`] is false. The feature is
//!   enabled only by test builds (the lab's dev-dependency), never by the
//!   `rcuvm` binary a user builds.
//! - I2. An injection breaks one invariant named in its doc and nothing
//!   else; each has a test (crates/lab, `check::tests`) that runs the
//!   checker and asserts that it reports a violation.
//! - I3. An injection is per address space, so tests that run in parallel
//!   in one process do not see each other's bugs.
//!
//! # Concurrency
//! Chosen when the address space is built; read-only after.
//!
//! # Linux
//! The kind of bug each of the mm's invariants exists to prevent.

/// Whether this build has the injection hooks (I1).
pub const AVAILABLE: bool = cfg!(feature = "inject");

/// A deliberate bug (I2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Injection {
    /// fault.rs FL1: skip the re-check of the tree under the PTL
    /// (`rcu-sync`, `rcu-dead`): a fault that found an unmapped VMA
    /// installs its PTE after the zap (a stale PTE).
    SkipRecheck,
    /// tlb.rs T2: skip the shootdown: no generation published, no wait;
    /// CPUs keep using translations whose frames were freed.
    SkipShootdown,
    /// unmap.rs U1 / pgtable.rs PT5: free unhooked table pages at once,
    /// without the grace periods of the VMA and TLB domains.
    EagerTableFree,
    /// vma.rs V1: `mprotect` of part of a VMA first publishes a
    /// half-updated VMA (the new rights over the old, whole range), then
    /// fixes it.
    HalfUpdatedVma,
    /// mmap.rs placement and unmap.rs U2 (`rcu-dead`): placement treats
    /// dead entries as free and maps over them without waiting, so the
    /// dead entry's reaper later erases a live VMA and frees its tables.
    PlacementIgnoresDead,
    /// fork.rs FK3: `fork` write-protects the parent's entries but shoots
    /// none down, so CPUs keep writable translations of pages it shares
    /// with the child: their stores reach the child, and a copy made
    /// meanwhile loses them.
    ForkSkipsShootdown,
    /// fork.rs FK4: `fork` copies a VMA's entries without write-locking
    /// it, so the parent's faults race the copy (the lost stores a review
    /// found before FK4).
    ForkSkipsWriteLock,
    /// fork.rs FK2: `fork` write-protects the child's copies of private
    /// entries but not the parent's, so the parent's stores after the
    /// fork land in frames the child maps.
    ForkSkipsWriteProtect,
}

impl Injection {
    /// Every injection.
    pub const ALL: [Injection; 8] = [
        Injection::SkipRecheck,
        Injection::SkipShootdown,
        Injection::EagerTableFree,
        Injection::HalfUpdatedVma,
        Injection::PlacementIgnoresDead,
        Injection::ForkSkipsShootdown,
        Injection::ForkSkipsWriteLock,
        Injection::ForkSkipsWriteProtect,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Injection::SkipRecheck => "skip-recheck",
            Injection::SkipShootdown => "skip-shootdown",
            Injection::EagerTableFree => "eager-table-free",
            Injection::HalfUpdatedVma => "half-updated-vma",
            Injection::PlacementIgnoresDead => "placement-ignores-dead",
            Injection::ForkSkipsShootdown => "fork-skips-shootdown",
            Injection::ForkSkipsWriteLock => "fork-skips-write-lock",
            Injection::ForkSkipsWriteProtect => "fork-skips-write-protect",
        }
    }

    /// The injection named `s`.
    pub fn from_name(s: &str) -> Option<Injection> {
        Injection::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Whether `which` is the injection of `chosen` (I1: always false without
/// the feature).
#[inline(always)]
pub(crate) fn active(chosen: Option<Injection>, which: Injection) -> bool {
    cfg!(feature = "inject") && chosen == Some(which)
}

impl crate::mmap::MmCall<'_> {
    /// [`Injection::HalfUpdatedVma`]: when `[addr, addr + len)` is a strict
    /// part of one VMA, publish that whole VMA with the new rights (the
    /// new flags over the stale range), let faults and readers run, then
    /// put the old VMA back for the real `mprotect`. Faults in the window
    /// install PTEs with rights the rest of the VMA never had.
    pub(crate) fn publish_half_updated(&mut self, addr: u64, len: u64, prot: crate::uapi::Prot) {
        let Some(v) = self.vma_at(addr) else { return };
        let end = addr.saturating_add(len);
        if end > v.end || (v.start == addr && v.end == end) {
            return;
        }
        let rights = crate::vma::VmFlags::READ | crate::vma::VmFlags::WRITE | crate::vma::VmFlags::EXEC;
        let flags = (v.flags - rights) | crate::vma::VmFlags::from_prot(prot);
        let half = crate::vma::Vma { flags, ..(*v).clone() };
        self.store(v.start..v.end, half);
        std::thread::sleep(std::time::Duration::from_micros(50));
        self.store(v.start..v.end, (*v).clone());
    }
}
