//! `rcuvm check`: randomized concurrent workloads on each strategy, every
//! history checked by the oracle.
//!
//! # Owns
//! The command ([`run`]), its arguments ([`CheckArgs`]) and its exit-code
//! rule.
//!
//! # Invariants
//! - K1. A strategy runs rounds (workload.rs) of at most 100 ms until its
//!   time is up or a round shows a violation; each round's history is
//!   checked (oracle.rs) before the next begins, so memory stays bounded.
//! - K2. Every violation is printed with the seed, the strategy, the round
//!   and the events that show it.
//! - K3. Exit status: 1 if a safe strategy (or, with `--inject`, any run)
//!   had a violation, or if `rcu-refcount` was asked for by name and had
//!   one; 0 otherwise. Under `--strategy all`, `rcu-refcount`'s violations
//!   are printed as expected (it is unsafe by design, strategy.rs S5) and
//!   do not fail the run; not finding one is printed as a miss. 2: a usage
//!   error.
//!
//! # Concurrency
//! One strategy at a time; a round's threads are joined before its
//! history is checked.
//!
//! # Linux
//! What a kernel mm developer would run before proposing a new fault
//! strategy: the thread's races, every interleaving the scheduler gives.

pub mod model;
pub mod oracle;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rcuvm::inject::Injection;
use rcuvm::{PhysMem, Strategy};

use oracle::{Counts, Violation};
use workload::{ARENA, RoundCfg};

/// Options of `rcuvm check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A strategy (mmap-lock, vma-lock, rcu-sync, rcu-dead, rcu-refcount) or `all`.
    #[arg(long, default_value = "all")]
    pub strategy: String,
    /// Seconds per strategy (0.01 to a day).
    #[arg(long, default_value_t = 10.0, value_parser = seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Accessor threads (each a simulated CPU), 1 to 64.
    #[arg(long, default_value_t = 2, value_parser = crate::args::threads)]
    pub threads: usize,
    /// The seed (default: from the clock); it fixes every thread's choices,
    /// not the schedule.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A deliberate bug (test builds only): skip-recheck, skip-shootdown,
    /// eager-table-free, half-updated-vma, placement-ignores-dead,
    /// fork-skips-shootdown, fork-skips-write-lock, fork-skips-write-protect.
    #[arg(long, hide = true)]
    pub inject: Option<String>,
    /// Leave mremap out of the writer's churn.
    #[arg(long)]
    pub no_mremap: bool,
    /// Leave fork out of the writer's churn.
    #[arg(long)]
    pub no_fork: bool,
}

/// What the writer does and which bug is injected.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// A deliberate bug.
    pub inject: Option<Injection>,
    /// Whether the writer calls mremap.
    pub mremap: bool,
    /// Whether the writer forks (workload.rs W6).
    pub fork: bool,
}

/// What one strategy's run found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Accesses, calls and reads checked.
    pub counts: Counts,
    /// Rounds run.
    pub rounds: u64,
    /// Children forked (workload.rs W6).
    pub forks: u64,
    /// Seconds spent (workload and oracle).
    pub seconds: f64,
    /// Violations, with their round.
    pub violations: Vec<(u64, Violation)>,
    /// Seconds until the first violation.
    pub first_at: Option<f64>,
}

/// `--seconds`: finite, from 0.01 (one round's worth of a short run) to a
/// day (a `Duration` holds it).
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=86_400.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0.01 and 86400".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `strategy` for `seconds` (K1).
pub fn check_strategy(strategy: Strategy, seconds: f64, threads: usize, seed: u64, run: Run) -> Summary {
    let phys = Arc::new(PhysMem::new(1 << 16));
    let t = Instant::now();
    let mut sum = Summary::default();
    let budget = Duration::from_secs_f64(seconds);
    while t.elapsed() < budget {
        let round_seed = mix(seed ^ mix(strategy as u64 + 1) ^ mix(sum.rounds + 0x100));
        let length = (budget.saturating_sub(t.elapsed())).min(Duration::from_millis(100));
        let cfg = RoundCfg {
            strategy,
            threads,
            seed: round_seed,
            length,
            inject: run.inject,
            mremap: run.mremap,
            fork: run.fork,
        };
        let r = workload::round(cfg, &phys);
        let (mut v, c) = oracle::check(&r.history, ARENA, r.zero_pfn);
        v.extend(oracle::check_children(&r.history, &r.child_reads));
        v.extend(r.teardown);
        sum.counts.accesses += c.accesses;
        sum.counts.calls += c.calls;
        sum.counts.calls_ok += c.calls_ok;
        sum.counts.reads += c.reads;
        sum.counts.copies += c.copies;
        sum.forks += r.forks;
        let round = sum.rounds;
        sum.rounds += 1;
        if !v.is_empty() {
            sum.first_at = Some(t.elapsed().as_secs_f64());
            sum.violations.extend(v.into_iter().map(|x| (round, x)));
            break;
        }
    }
    sum.seconds = t.elapsed().as_secs_f64();
    sum
}

/// How many violations of each rule, e.g. `P1 3, P6 1`.
fn rules(sum: &Summary) -> String {
    let mut n: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, v) in &sum.violations {
        *n.entry(v.rule).or_default() += 1;
    }
    n.iter().map(|(r, c)| format!("{r} {c}")).collect::<Vec<_>>().join(", ")
}

fn mix(x: u64) -> u64 {
    workload::Rng::new(x).next()
}

/// `rcuvm check` (K1–K3).
pub fn run(a: &CheckArgs) -> i32 {
    let strategies: Vec<Strategy> = if a.strategy == "all" {
        Strategy::ALL.to_vec()
    } else {
        match a.strategy.parse() {
            Ok(s) => vec![s],
            Err(e) => {
                eprintln!("rcuvm check: {e} (or all)");
                return 2;
            }
        }
    };
    let inject = match a.inject.as_deref().map(|n| (n, Injection::from_name(n))) {
        None => None,
        Some((n, None)) => {
            eprintln!("rcuvm check: unknown injection {n:?}");
            return 2;
        }
        Some((_, Some(_))) if !rcuvm::inject::AVAILABLE => {
            eprintln!(
                "rcuvm check: this build has no injection hooks (the `inject` feature of rcuvm: test builds)"
            );
            return 2;
        }
        Some((_, i)) => i,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "rcuvm check: seed {seed}, {} accessor threads, {} s per strategy{}{}{}",
        a.threads,
        a.seconds,
        if a.no_mremap { ", no mremap" } else { "" },
        if a.no_fork { ", no fork" } else { "" },
        inject.map_or(String::new(), |i| format!(", injected bug {}", i.name()))
    );
    let mut fail = false;
    for s in strategies {
        let run = Run { inject, mremap: !a.no_mremap, fork: !a.no_fork };
        let sum = check_strategy(s, a.seconds, a.threads, seed, run);
        let expected = !s.is_safe() && a.strategy == "all" && inject.is_none();
        let c = sum.counts;
        println!(
            "{:<13} {:>11} accesses {:>9} mm calls ({} ok) {:>7} reads {:>6} forks ({} copies) {:>5} rounds {:>6.1} s: {}",
            s.name(),
            c.accesses,
            c.calls,
            c.calls_ok,
            c.reads,
            sum.forks,
            c.copies,
            sum.rounds,
            sum.seconds,
            match (sum.violations.len(), expected) {
                (0, false) => "no violation".to_string(),
                (0, true) => "no violation found (expected some: it is unsafe by design; the checker missed it this time)".into(),
                (n, false) => format!("{n} violations ({}), first after {:.1} s", rules(&sum), sum.first_at.unwrap_or(0.0)),
                (n, true) => format!(
                    "{n} violations ({}), first after {:.1} s (expected: unsafe by design, strategy.rs S5)",
                    rules(&sum),
                    sum.first_at.unwrap_or(0.0)
                ),
            }
        );
        for (round, v) in sum.violations.iter().take(3) {
            println!("  {} [seed {seed}, strategy {}, round {round}]: {}", v.rule, s.name(), v.what);
            for e in &v.events {
                for l in e.lines().take(40) {
                    println!("      {l}");
                }
            }
        }
        if sum.violations.len() > 3 {
            println!("  … and {} more in that round", sum.violations.len() - 3);
        }
        fail |= !sum.violations.is_empty() && !expected;
    }
    i32::from(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `s` with the injection `i` until a round shows a violation,
    /// and demands one of `rules` among that round's violations: the rules
    /// the injected bug can break (design.md §8's table lists those seen),
    /// so that a violation of another (a false P8 once) does not pass for
    /// the bug.
    fn caught(s: Strategy, i: Option<Injection>, seconds: f64, rules: &[&str]) -> Summary {
        let sum = check_strategy(s, seconds, 2, 42, Run { inject: i, mremap: true, fork: true });
        assert!(
            !sum.violations.is_empty(),
            "{s} with {i:?}: no violation in {:.1} s ({:?})",
            sum.seconds,
            sum.counts
        );
        assert!(
            sum.violations.iter().any(|(_, v)| rules.contains(&v.rule)),
            "{s} with {i:?}: violations of {}, none of {rules:?}: {:#?}",
            super::rules(&sum),
            sum.violations.first()
        );
        sum
    }

    #[test]
    fn safe_strategies_show_no_violation() {
        for s in Strategy::ALL.into_iter().filter(|&s| s.is_safe()) {
            let sum = check_strategy(s, 1.0, 2, 7, Run { inject: None, mremap: true, fork: true });
            assert!(sum.violations.is_empty(), "{s}: {:#?}", sum.violations.first());
            assert!(sum.counts.accesses > 1000 && sum.counts.calls > 100, "{s}: {:?}", sum.counts);
        }
    }

    /// Regression: under rcu-dead, `move_vma` (mremap.rs) moved PTEs into
    /// a destination still covered by dead entries, or still without its
    /// VMA while a reaping of other expired dead entries freed the tables
    /// of the gap around them (P3: PTEs in freed tables; P6: their frames
    /// leaked). Seed 6 showed it in its first 0.4 s; fixed by reaping the
    /// destination before the move and storing the moved VMA without
    /// reaping (mremap.rs R9).
    #[test]
    fn rcu_dead_mremap_over_dead_entries() {
        let sum =
            check_strategy(Strategy::RcuDead, 2.0, 2, 6, Run { inject: None, mremap: true, fork: true });
        assert!(sum.violations.is_empty(), "{:#?}", sum.violations.first());
    }

    /// The thread's stale PTE: an access through a translation of an
    /// unmapped range (P1), a frame reached as two pages (P2), a PTE left
    /// in a freed table (P3) or a lost write (P5); P6 alone (tables
    /// `rcu-refcount` frees late) does not count.
    /// A soak of rcu-sync (60 s, `--ignored`): it once found, about once
    /// per 10 to 20 s, an access through a translation of a range a munmap
    /// had returned from (P1), or a PTE left in a freed table (P3). The
    /// cause: a zap skipped an empty leaf entry without the table's lock,
    /// so a racing fault could install behind the scan with a stale view of
    /// the tree (fixed in pgtable.rs PT4: the leaf scan holds the PTL).
    #[test]
    #[ignore = "a 60 s soak"]
    fn rcu_sync_rare_stale_translation() {
        let sum =
            check_strategy(Strategy::RcuSync, 60.0, 2, 13, Run { inject: None, mremap: true, fork: true });
        assert!(sum.violations.is_empty(), "{:#?}", sum.violations.first());
    }

    #[test]
    fn rcu_refcount_stale_pte_is_caught() {
        let t = Instant::now();
        let mut seed = 1;
        while t.elapsed() < Duration::from_secs(30) {
            let sum = check_strategy(
                Strategy::RcuRefcount,
                5.0,
                2,
                seed,
                Run { inject: None, mremap: true, fork: true },
            );
            if sum.violations.iter().any(|(_, v)| matches!(v.rule, "P1" | "P2" | "P3" | "P5")) {
                return;
            }
            seed += 1;
        }
        panic!("no stale PTE found under rcu-refcount in 30 s");
    }

    #[test]
    fn injected_skip_recheck_is_caught() {
        const { assert!(rcuvm::inject::AVAILABLE, "test builds enable rcuvm's inject feature") };
        // P6: a PTE installed after its zap keeps its frame past the drop.
        caught(Strategy::RcuDead, Some(Injection::SkipRecheck), 60.0, &["P1", "P2", "P3", "P5", "P6"]);
    }

    #[test]
    fn injected_skip_shootdown_is_caught() {
        caught(Strategy::VmaLock, Some(Injection::SkipShootdown), 60.0, &["P1", "P2", "P3", "P5"]);
    }

    #[test]
    fn injected_eager_table_free_is_caught() {
        caught(Strategy::RcuSync, Some(Injection::EagerTableFree), 60.0, &["P3"]);
    }

    #[test]
    fn injected_half_updated_vma_is_caught() {
        caught(Strategy::VmaLock, Some(Injection::HalfUpdatedVma), 60.0, &["P4", "P7"]);
    }

    #[test]
    fn injected_placement_ignoring_dead_entries_is_caught() {
        caught(Strategy::RcuDead, Some(Injection::PlacementIgnoresDead), 60.0, &["P1", "P3", "P6", "P8"]);
    }

    /// A fork that leaves its parent's CPUs writable translations of the
    /// pages it shares (workload.rs W6; oracle.rs P5 through the copies).
    #[test]
    fn injected_fork_skipping_its_shootdown_is_caught() {
        for s in [Strategy::MmapLock, Strategy::RcuDead] {
            caught(s, Some(Injection::ForkSkipsShootdown), 60.0, &["P1", "P2", "P3", "P5", "P9"]);
        }
    }

    /// A fork that leaves the parent's entries writable: the parent's
    /// stores after it reach the child (P9, workload.rs W7).
    #[test]
    fn injected_fork_skipping_its_write_protect_is_caught() {
        for s in [Strategy::MmapLock, Strategy::RcuDead] {
            caught(s, Some(Injection::ForkSkipsWriteProtect), 60.0, &["P9"]);
        }
    }

    /// A fork whose copy races the parent's faults. A narrow race: under
    /// rcu-dead it was caught after 4-10 s (seeds 1, 2, 42). Every budget
    /// here is 60 s, though most bugs show in under a second: the test
    /// ends at the first violation, and on a busy machine (two test
    /// binaries at once) two of them once missed 30 s.
    #[test]
    fn injected_fork_skipping_its_write_lock_is_caught() {
        caught(Strategy::RcuDead, Some(Injection::ForkSkipsWriteLock), 60.0, &["P3", "P5", "P6"]);
    }
}
