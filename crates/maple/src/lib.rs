//! RCU-safe range B-tree with gap tracking, after Linux's maple tree.
//!
//! **Not implemented yet** (issue "rcuvm-maple"): this crate is only a place
//! in the workspace so the dependency direction lab → vm → maple → rcu is
//! fixed from the start. It exports nothing.
