//! Small helpers the address-space tests share.

use rcuvm::{MapFlags, PAGE_SIZE, Prot};

/// A page.
pub const P: u64 = PAGE_SIZE;
/// Where the tests map, clear of rcuvm's placement.
pub const A: u64 = 0x1000_0000;

/// Private anonymous memory at a fixed address.
pub fn fixed() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED
}

/// Read and write.
pub fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}
