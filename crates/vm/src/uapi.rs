//! The system-call surface: `PROT_*`, `MAP_*` and errno values, with Linux's
//! numbers (x86-64).

use std::fmt;

bitflags::bitflags! {
    /// `PROT_*` for `mmap` and `mprotect`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// `PROT_READ`
        const READ = 0x1;
        /// `PROT_WRITE`
        const WRITE = 0x2;
        /// `PROT_EXEC`
        const EXEC = 0x4;
        /// `PROT_SEM` (accepted, no effect)
        const SEM = 0x8;
        /// `PROT_GROWSDOWN` (mprotect only)
        const GROWSDOWN = 0x0100_0000;
        /// `PROT_GROWSUP` (mprotect only)
        const GROWSUP = 0x0200_0000;
    }
}

bitflags::bitflags! {
    /// `MAP_*` flags for `mmap`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapFlags: u32 {
        /// `MAP_SHARED`
        const SHARED = 0x01;
        /// `MAP_PRIVATE`
        const PRIVATE = 0x02;
        /// `MAP_SHARED_VALIDATE` (both type bits)
        const SHARED_VALIDATE = 0x03;
        /// `MAP_DROPPABLE` (a map type of its own, Linux 6.11+): private
        /// anonymous memory the kernel may drop
        const DROPPABLE = 0x08;
        /// `MAP_FIXED`
        const FIXED = 0x10;
        /// `MAP_ANONYMOUS`
        const ANONYMOUS = 0x20;
        /// `MAP_32BIT` (x86-64): placed below 2 GiB
        const BIT32 = 0x40;
        /// `MAP_GROWSDOWN`
        const GROWSDOWN = 0x0100;
        /// `MAP_DENYWRITE` (ignored)
        const DENYWRITE = 0x0800;
        /// `MAP_EXECUTABLE` (ignored)
        const EXECUTABLE = 0x1000;
        /// `MAP_LOCKED`
        const LOCKED = 0x2000;
        /// `MAP_NORESERVE`
        const NORESERVE = 0x4000;
        /// `MAP_POPULATE`
        const POPULATE = 0x8000;
        /// `MAP_NONBLOCK`
        const NONBLOCK = 0x1_0000;
        /// `MAP_STACK`
        const STACK = 0x2_0000;
        /// `MAP_HUGETLB`
        const HUGETLB = 0x4_0000;
        /// `MAP_SYNC`
        const SYNC = 0x8_0000;
        /// `MAP_FIXED_NOREPLACE`
        const FIXED_NOREPLACE = 0x10_0000;
        /// `MAP_UNINITIALIZED` (ignored)
        const UNINITIALIZED = 0x400_0000;
    }
}

/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u32 = 1;
/// `MREMAP_FIXED`.
pub const MREMAP_FIXED: u32 = 2;
/// `MREMAP_DONTUNMAP`.
pub const MREMAP_DONTUNMAP: u32 = 4;

/// `MLOCK_ONFAULT`, the one `mlock2` flag.
pub const MLOCK_ONFAULT: u32 = 1;
/// `MCL_CURRENT`: `mlockall` locks every current VMA.
pub const MCL_CURRENT: u32 = 1;
/// `MCL_FUTURE`: `mlockall` locks every future mapping (`mm->def_flags`).
pub const MCL_FUTURE: u32 = 2;
/// `MCL_ONFAULT`: with the others, lock pages only as they are faulted in.
pub const MCL_ONFAULT: u32 = 4;

/// An errno value, as the kernel returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// `EBADF` (9)
    Ebadf,
    /// `ENOMEM` (12)
    Enomem,
    /// `EACCES` (13)
    Eacces,
    /// `EFAULT` (14)
    Efault,
    /// `EEXIST` (17)
    Eexist,
    /// `ENODEV` (19)
    Enodev,
    /// `EINVAL` (22)
    Einval,
    /// `EAGAIN` (11)
    Eagain,
    /// `EPERM` (1)
    Eperm,
    /// `EOVERFLOW` (75)
    Eoverflow,
    /// `EOPNOTSUPP` (95)
    Eopnotsupp,
    /// `ENOSYS` (38): never from Linux for these calls; rcuvm's answer to an
    /// advice Linux accepts but rcuvm does not model yet.
    Enosys,
    // What the kernel may answer and rcuvm never does (a device's mmap,
    // a signal, a file system): read from traces and the host backend, so
    // that they compare as disagreements rather than fail to parse.
    /// `EINTR` (4): from the kernel only.
    Eintr,
    /// `EIO` (5): from the kernel only.
    Eio,
    /// `ENXIO` (6): from the kernel only.
    Enxio,
    /// `EBUSY` (16): from the kernel only.
    Ebusy,
    /// `ENFILE` (23): from the kernel only.
    Enfile,
    /// `EMFILE` (24): from the kernel only.
    Emfile,
    /// `ETXTBSY` (26): from the kernel only.
    Etxtbsy,
    /// `EFBIG` (27): from the kernel only.
    Efbig,
    /// `ENOSPC` (28): from the kernel only.
    Enospc,
    /// `EROFS` (30): from the kernel only.
    Erofs,
    /// `EHWPOISON` (133): from the kernel only.
    Ehwpoison,
}

impl Errno {
    /// The number.
    pub fn code(self) -> i32 {
        match self {
            Errno::Eperm => 1,
            Errno::Ebadf => 9,
            Errno::Eagain => 11,
            Errno::Enomem => 12,
            Errno::Eacces => 13,
            Errno::Efault => 14,
            Errno::Eexist => 17,
            Errno::Enodev => 19,
            Errno::Einval => 22,
            Errno::Eoverflow => 75,
            Errno::Eopnotsupp => 95,
            Errno::Enosys => 38,
            Errno::Eintr => 4,
            Errno::Eio => 5,
            Errno::Enxio => 6,
            Errno::Ebusy => 16,
            Errno::Enfile => 23,
            Errno::Emfile => 24,
            Errno::Etxtbsy => 26,
            Errno::Efbig => 27,
            Errno::Enospc => 28,
            Errno::Erofs => 30,
            Errno::Ehwpoison => 133,
        }
    }

    /// Every value rcuvm returns, then those only the kernel does.
    pub const ALL: [Errno; 23] = [
        Errno::Eperm,
        Errno::Ebadf,
        Errno::Eagain,
        Errno::Enomem,
        Errno::Eacces,
        Errno::Efault,
        Errno::Eexist,
        Errno::Enodev,
        Errno::Einval,
        Errno::Eoverflow,
        Errno::Eopnotsupp,
        Errno::Enosys,
        Errno::Eintr,
        Errno::Eio,
        Errno::Enxio,
        Errno::Ebusy,
        Errno::Enfile,
        Errno::Emfile,
        Errno::Etxtbsy,
        Errno::Efbig,
        Errno::Enospc,
        Errno::Erofs,
        Errno::Ehwpoison,
    ];

    /// The value for a number, if it is one rcuvm returns.
    pub fn from_code(c: i32) -> Option<Errno> {
        Self::ALL.into_iter().find(|e| e.code() == c)
    }

    /// The value for a symbolic name (`ENOMEM`), if it is one rcuvm returns.
    pub fn from_name(name: &str) -> Option<Errno> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The symbolic name, as strace prints it.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Eperm => "EPERM",
            Errno::Ebadf => "EBADF",
            Errno::Eagain => "EAGAIN",
            Errno::Enomem => "ENOMEM",
            Errno::Eacces => "EACCES",
            Errno::Efault => "EFAULT",
            Errno::Eexist => "EEXIST",
            Errno::Enodev => "ENODEV",
            Errno::Einval => "EINVAL",
            Errno::Eoverflow => "EOVERFLOW",
            Errno::Eopnotsupp => "EOPNOTSUPP",
            Errno::Enosys => "ENOSYS",
            Errno::Eintr => "EINTR",
            Errno::Eio => "EIO",
            Errno::Enxio => "ENXIO",
            Errno::Ebusy => "EBUSY",
            Errno::Enfile => "ENFILE",
            Errno::Emfile => "EMFILE",
            Errno::Etxtbsy => "ETXTBSY",
            Errno::Efbig => "EFBIG",
            Errno::Enospc => "ENOSPC",
            Errno::Erofs => "EROFS",
            Errno::Ehwpoison => "EHWPOISON",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Errno {}

/// `MADV_*` advice values.
pub mod madv {
    /// `MADV_NORMAL`
    pub const NORMAL: i32 = 0;
    /// `MADV_RANDOM`
    pub const RANDOM: i32 = 1;
    /// `MADV_SEQUENTIAL`
    pub const SEQUENTIAL: i32 = 2;
    /// `MADV_WILLNEED`
    pub const WILLNEED: i32 = 3;
    /// `MADV_DONTNEED`
    pub const DONTNEED: i32 = 4;
    /// `MADV_FREE`
    pub const FREE: i32 = 8;
    /// `MADV_REMOVE`
    pub const REMOVE: i32 = 9;
    /// `MADV_DONTFORK`
    pub const DONTFORK: i32 = 10;
    /// `MADV_DOFORK`
    pub const DOFORK: i32 = 11;
    /// `MADV_MERGEABLE`
    pub const MERGEABLE: i32 = 12;
    /// `MADV_UNMERGEABLE`
    pub const UNMERGEABLE: i32 = 13;
    /// `MADV_HUGEPAGE`
    pub const HUGEPAGE: i32 = 14;
    /// `MADV_NOHUGEPAGE`
    pub const NOHUGEPAGE: i32 = 15;
    /// `MADV_DONTDUMP`
    pub const DONTDUMP: i32 = 16;
    /// `MADV_DODUMP`
    pub const DODUMP: i32 = 17;
    /// `MADV_WIPEONFORK`
    pub const WIPEONFORK: i32 = 18;
    /// `MADV_KEEPONFORK`
    pub const KEEPONFORK: i32 = 19;
    /// `MADV_COLD`
    pub const COLD: i32 = 20;
    /// `MADV_PAGEOUT`
    pub const PAGEOUT: i32 = 21;
    /// `MADV_POPULATE_READ`
    pub const POPULATE_READ: i32 = 22;
    /// `MADV_POPULATE_WRITE`
    pub const POPULATE_WRITE: i32 = 23;
    /// `MADV_DONTNEED_LOCKED`
    pub const DONTNEED_LOCKED: i32 = 24;
    /// `MADV_COLLAPSE`
    pub const COLLAPSE: i32 = 25;
    /// `MADV_HWPOISON`
    pub const HWPOISON: i32 = 100;
    /// `MADV_SOFT_OFFLINE`
    pub const SOFT_OFFLINE: i32 = 101;
    /// `MADV_GUARD_INSTALL`
    pub const GUARD_INSTALL: i32 = 102;
    /// `MADV_GUARD_REMOVE`
    pub const GUARD_REMOVE: i32 = 103;
}
