//! An RCU-safe range B-tree with gap tracking, after Linux's maple tree.
//!
//! [`MapleTree`] maps non-overlapping half-open `u64` ranges to values.
//! Readers walk it under an RCU [`Guard`](rcuvm_rcu::Guard) with no lock and
//! no shared writes; one writer at a time changes it by building new nodes
//! and publishing them with a single atomic store, and old nodes are freed
//! after a grace period. Internal nodes keep the largest free gap under each
//! child, so finding room for a mapping (bottom-up or top-down) is
//! O(log n).
//!
//! Layout (256-byte nodes, as Linux): leaves have 16 slots and 15 pivots;
//! internal nodes have 10 children, 9 pivots and 10 gaps. See `node.rs`.
//!
//! A value is one word in a leaf slot (see [`Value`]): an `Arc<T>`, whose
//! count lets a store that splits an entry leave the same value on both
//! sides, as Linux's tree does with its raw pointers; or a small integer
//! kept in the slot itself, as Linux's `xa_mk_value()` entries are, which a
//! lookup reads without another cache miss.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod alloc;
mod node;
mod sync;
mod tree;
mod validate;
mod value;
mod walk;
mod write;

pub use tree::{Entry, Error, Iter, MapleTree, TreeStats};
pub use value::Value;
pub use write::Writer;
