#!/usr/bin/env bash
# Model-checks rcuvm-rcu's grace-period protocol with loom: the models in
# crates/rcu/tests/loom_rcu.rs, with every primitive of the crate taken from
# loom (--cfg rcuvm_loom, see crates/rcu/src/sync.rs).
#
# CI searches with LOOM_MAX_PREEMPTIONS=3 (3.7 s for the six rcu models).
# Measured on this 2-core machine (LOOM_MAX_PREEMPTIONS=2, --release): the six
# models take 0.34 s together, none over 0.15 s; the script takes ~0.5 s wall
# with a warm target/loom, ~3 s after a change to the crate, ~60 s from cold.
# A deeper search costs 3.7 s with LOOM_MAX_PREEMPTIONS=3 and 24 s with 4.
#
# Extra arguments go to cargo test, e.g. `ci/loom.sh -- --nocapture` to see
# per-model iteration counts and times, or `ci/loom.sh nesting` for one model.
# LOOM_MAX_PREEMPTIONS may be raised from the environment for a deeper search.
set -euo pipefail
cd "$(dirname "$0")/.."

RUSTFLAGS="--cfg rcuvm_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" CARGO_TARGET_DIR=target/loom \
    cargo test -p rcuvm-rcu -p rcuvm-maple --release --test "loom_*" "$@"
