//! smaps as the differential tests compare it (kernel_diff.rs,
//! kernel_fork.rs): each VMA of a window as its maps line, the `VmFlags`
//! rcuvm models and its resident pages, from the kernel's text or rcuvm's;
//! and the reservation their arenas live in.

use rcuvm::VmFlags;

/// The smaps `VmFlags` mnemonics rcuvm models, in the kernel's order.
pub const MNEMONICS: [(&str, VmFlags); 23] = [
    ("rd", VmFlags::READ),
    ("wr", VmFlags::WRITE),
    ("ex", VmFlags::EXEC),
    ("sh", VmFlags::SHARED),
    ("mr", VmFlags::MAYREAD),
    ("mw", VmFlags::MAYWRITE),
    ("me", VmFlags::MAYEXEC),
    ("ms", VmFlags::MAYSHARE),
    ("gd", VmFlags::GROWSDOWN),
    ("lo", VmFlags::LOCKED),
    ("sr", VmFlags::SEQ_READ),
    ("rr", VmFlags::RAND_READ),
    ("dc", VmFlags::DONTCOPY),
    ("lf", VmFlags::LOCKONFAULT),
    ("ac", VmFlags::ACCOUNT),
    ("nr", VmFlags::NORESERVE),
    ("sf", VmFlags::SYNC),
    ("wf", VmFlags::WIPEONFORK),
    ("dd", VmFlags::DONTDUMP),
    ("hg", VmFlags::HUGEPAGE),
    ("nh", VmFlags::NOHUGEPAGE),
    ("mg", VmFlags::MERGEABLE),
    ("dp", VmFlags::DROPPABLE),
];

/// Each VMA in `[lo, hi)` of an smaps text (the kernel's or rcuvm's) as
/// its maps line, the `VmFlags` rcuvm models (maps cannot show them all),
/// and its resident pages (`Rss`, `Anonymous`).
pub fn smaps_lines(text: &str, source: &str, lo: u64, hi: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let (mut rss, mut anon) = (None, None);
    for l in text.lines() {
        let kb = |key: &str| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().expect("a size"))
        };
        if let Ok(v) = rcuvm::maps::parse(l, source) {
            cur = v.first().filter(|v| v.start < hi && v.end > lo).map(|v| v.to_string());
            (rss, anon) = (None, None);
        } else if let Some(k) = kb("Rss:") {
            rss = Some(k);
        } else if let Some(k) = kb("Anonymous:") {
            anon = Some(k);
        } else if let Some(flags) = l.strip_prefix("VmFlags:") {
            if let Some(line) = cur.take() {
                let known: Vec<&str> =
                    flags.split_whitespace().filter(|m| MNEMONICS.iter().any(|(k, _)| k == m)).collect();
                let (r, a) = (rss.expect("an Rss line"), anon.expect("an Anonymous line"));
                out.push(format!("{line} | {} | rss {r} kB, anonymous {a} kB", known.join(" ")));
            }
        }
    }
    out
}

/// A fresh `PROT_NONE` shared anonymous mapping of `len` bytes: an
/// arena's two guard pages (a shmem file each, which nothing private can
/// merge with) and the arena between them, which the test maps over.
///
/// It is placed low (at 64 GiB or a free multiple of it), far below where
/// the kernel places mappings top-down. Why: the kernel fills the highest
/// hole that fits, and holes a test punched into an arena placed among
/// the others were the highest: a thread started meanwhile (its signal
/// stack, a few pages) landed in one and showed in the compared window.
pub fn reserve_guarded(len: u64) -> *mut libc::c_void {
    for k in 1..64u64 {
        // SAFETY: MAP_FIXED_NOREPLACE takes only free address space.
        let base = unsafe {
            libc::mmap(
                (k << 36) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if base != libc::MAP_FAILED {
            return base;
        }
    }
    panic!("no free 64 GiB multiple below 4 TiB for the arena");
}
