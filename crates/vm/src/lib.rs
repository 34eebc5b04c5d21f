//! The address space: VMAs, mm calls, page tables, CPUs, faults, strategies.
//!
//! **Not implemented yet** (issues "rcuvm: the address space…" and "page
//! tables, CPUs with TLBs, the fault path…"). It exports nothing so far.
