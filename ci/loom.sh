#!/usr/bin/env bash
# Model-checks with loom (--cfg rcuvm_loom: every primitive of rcuvm-rcu and
# rcuvm-maple comes from loom, see crates/rcu/src/sync.rs and
# crates/maple/src/sync.rs):
# - rcuvm-rcu's grace-period protocol: crates/rcu/tests/loom_rcu.rs;
# - the maple tree's readers against its writer: crates/maple/tests/loom_maple.rs;
# - the address space's two critical races (issue 6), on the real tree and
#   domains and vm's src/protocol.rs: crates/vm/tests/loom_vm.rs, a fault
#   against munmap then mmap at the same address (rcu-dead, rcu-sync) and a
#   maps reader against a split and an mremap move, the reaper against a
#   writer, a write fault's page reuse against fork (model 5: 69 iterations,
#   a few ms), plus the mutation checks that prove those models fail when a
#   protocol step is removed.
#
# CI searches with LOOM_MAX_PREEMPTIONS=3 (3.7 s for the six rcu models).
# Measured on this 2-core machine (LOOM_MAX_PREEMPTIONS=2, --release): the six
# rcu models take 0.34 s together, none over 0.15 s; a deeper search costs
# 3.7 s with LOOM_MAX_PREEMPTIONS=3 and 24 s with 4.
#
# vm models, one test thread, --release (iterations and time at bounds 2 / 3 / 4):
#   fault_vs_munmap_then_mmap_rcu_dead   3383 0.38 s / 38949 4.1 s / 374459 41 s
#   fault_vs_munmap_then_mmap_rcu_sync   4634 0.55 s / 51643 5.6 s / 525370 56 s
#   maps_vs_mremap                       3739 0.30 s / 11024 0.94 s / 48175 3.8 s
#   maps_vs_split                         546 0.04 s /  1487 0.11 s /  4995 0.37 s
#   the two _vmacache variants (fault.rs FL6) at bound 3: rcu_dead 43086 4.8 s,
#   rcu_sync 88647 9.7 s; vmacache_without_recheck caught in 0.34 s,
#   no_detach_mark in 0.09 s. With the reader's range check (mm.rs A6):
#   maps_vs_split 34489 2.8 s, maps_vs_mremap 69205 5.9 s at bound 3;
#   txn_range_not_widened caught in 7 ms. The vm binary now takes 34 s on
#   one thread.
# 2026-12-06 night, bound 3: fault_vs_munmap_then_mmap_rcu_dead 60454 8.3 s (the
#   MAP_FIXED now tries `try_complete` before it waits, vm unmap.rs U8),
#   reaper_vs_writer 642 0.07 s; the vm binary 59 s on one test thread.
# The mutation checks run at a fixed bound (2 for the fault model, 1 for the
# reader; 1 does not catch the fault model's) whatever LOOM_MAX_PREEMPTIONS
# says, and each is caught in under 0.5 s: fault_without_recheck 0.44 s,
# map_fixed_ignores_dead_entry 0.45 s, placement_ignores_dead_entry 2 ms,
# maps_without_seqcount 3 ms. The vm test binary takes 11.6 s on one thread,
# 9 s with the default two.
#
# The whole script, warm target/loom, LOOM_MAX_PREEMPTIONS=3: 24 s wall (vm
# 9 s, maple 11.6 s, rcu 3.7 s, the rest cargo); 29 s after a change to
# loom_vm.rs; building the vm crate and its dev-dependencies under loom the
# first time (rcu and maple already built) took 49 s.
#
# Extra arguments go to cargo test, e.g. `ci/loom.sh -- --nocapture` to see
# per-model iteration counts and times, or `ci/loom.sh nesting` for one model.
# LOOM_MAX_PREEMPTIONS may be raised from the environment for a deeper search.
set -euo pipefail
cd "$(dirname "$0")/.."

RUSTFLAGS="--cfg rcuvm_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" CARGO_TARGET_DIR=target/loom \
    cargo test -p rcuvm-rcu -p rcuvm-maple -p rcuvm --release --test "loom_*" "$@"
