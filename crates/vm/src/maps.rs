//! `/proc/pid/maps`: rendering VMAs in Linux's exact format, and parsing a
//! snapshot back into VMAs.
//!
//! # Owns
//! [`render_line`] and [`write_line`], [`parse`], [`MapsError`].
//!
//! # Invariants
//! - M1. `parse(render(v))` gives back every field a maps line carries, and
//!   `render(parse(text)) == text` for any text Linux printed (tested on
//!   this process's own `/proc/self/maps` and on the shared traces).
//! - M2. A line Linux cannot have printed is an error naming the source and
//!   the line number; nothing is half-parsed.
//!
//! # Linux
//! `show_vma_header_prefix()` and `show_map_vma()` in `fs/proc/task_mmu.c`:
//! the header is padded to 72 columns (`seq_setwidth(m, 25 + 6 *
//! sizeof(void *) - 1)`), then one space, then the name; a line without a
//! name keeps the header's trailing space. The `s`/`p` letter is
//! `VM_MAYSHARE`. A parsed line cannot show `VM_MAY*`, `VM_ACCOUNT` and the
//! like; [`parse`] infers them as Linux sets them for an ordinary mapping
//! (see `flags_from_perms`).

use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::vma::{Backing, FileId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

/// Width the header is padded to before the name.
const HEADER_WIDTH: usize = 72;

/// The `/proc/pid/maps` line of `v`, without the newline.
pub fn render_line(v: &Vma) -> String {
    let mut s = String::new();
    write_line(&mut s, v);
    s
}

/// Appends the `/proc/pid/maps` line of `v`, without the newline, to
/// `out` (a whole file renders into one buffer: no allocation per line).
pub fn write_line(out: &mut String, v: &Vma) {
    // Only file mappings show their offset; anonymous ones print 0 whatever
    // their `vm_pgoff` (`show_map_vma`).
    let (maj, min, ino, off) = match &v.backing {
        Backing::File(f) => (f.dev_major, f.dev_minor, f.inode, v.pgoff << PAGE_SHIFT),
        Backing::Anon => (0, 0, 0, 0),
    };
    let f = v.flags;
    let start = out.len();
    let _ = write!(
        out,
        "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
        v.start,
        v.end,
        if f.contains(VmFlags::READ) { 'r' } else { '-' },
        if f.contains(VmFlags::WRITE) { 'w' } else { '-' },
        if f.contains(VmFlags::EXEC) { 'x' } else { '-' },
        if f.contains(VmFlags::MAYSHARE) { 's' } else { 'p' },
        off,
        maj,
        min,
        ino,
    );
    let name = match &v.backing {
        Backing::File(f) => Some(&f.path),
        Backing::Anon => v.name.as_ref(),
    };
    if let Some(name) = name {
        while out.len() - start < HEADER_WIDTH {
            out.push(' ');
        }
        out.push(' ');
        out.push_str(name);
    }
}

/// A malformed maps snapshot: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsError {
    /// The file (or other source) being parsed.
    pub source: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub msg: String,
}

impl fmt::Display for MapsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.msg)
    }
}

impl std::error::Error for MapsError {}

/// `VM_*` flags for a line's permission letters, as Linux sets them for an
/// ordinary mapping: every `VM_MAY*` bit (what `mmap` gives anonymous memory
/// and files opened read-write), `VM_MAYSHARE | VM_SHARED` for `s`,
/// `VM_ACCOUNT` for private writable memory, `VM_GROWSDOWN` for `[stack]`;
/// and for the kernel's special mappings the flags Linux 6.18 gives them
/// (read from this machine's smaps): `[vvar]`/`[vvar_vclock]` `VM_PFNMAP |
/// VM_IO | VM_DONTEXPAND | VM_DONTDUMP` and only `VM_MAYREAD`, `[vdso]`
/// `VM_DONTEXPAND`, `[vsyscall]` (the gate area) its access bits alone.
fn flags_from_perms(p: &[u8], name: Option<&str>) -> VmFlags {
    let mut f = match name {
        Some("[vvar]" | "[vvar_vclock]") => {
            VmFlags::MAYREAD | VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP
        }
        Some("[vsyscall]") => VmFlags::empty(),
        Some("[vdso]") => VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC | VmFlags::DONTEXPAND,
        _ => VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC,
    };
    if p[0] == b'r' {
        f |= VmFlags::READ;
    }
    if p[1] == b'w' {
        f |= VmFlags::WRITE;
    }
    if p[2] == b'x' {
        f |= VmFlags::EXEC;
    }
    if p[3] == b's' {
        f |= VmFlags::MAYSHARE | VmFlags::SHARED;
    } else if p[1] == b'w' {
        f |= VmFlags::ACCOUNT;
    }
    if name == Some("[stack]") {
        f |= VmFlags::GROWSDOWN;
    }
    f
}

fn hex(field: &str, what: &str) -> Result<u64, String> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{what} {field:?} is not hexadecimal"));
    }
    u64::from_str_radix(field, 16).map_err(|_| format!("{what} {field:?} overflows 64 bits"))
}

/// One line (M2).
fn parse_line(line: &str) -> Result<Vma, String> {
    // Five space-separated fields, then the padding and the optional name.
    let mut rest = line;
    let mut field = || -> Result<&str, String> {
        let end = rest.find(' ').ok_or_else(|| "too few fields".to_string())?;
        let f = &rest[..end];
        rest = &rest[end + 1..];
        Ok(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    // Linux ends a line without a name with a space after the inode; an
    // editor may have trimmed it.
    let inode = match rest.split_once(' ') {
        Some((f, r)) => {
            rest = r;
            f
        }
        None => std::mem::take(&mut rest),
    };
    let name = rest.trim_start_matches(' ');
    let name = (!name.is_empty()).then_some(name);

    let (s, e) = range.split_once('-').ok_or_else(|| format!("address range {range:?} has no '-'"))?;
    let (start, end) = (hex(s, "start address")?, hex(e, "end address")?);
    if start >= end {
        return Err(format!("empty or inverted range {range}"));
    }
    if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
        return Err(format!("range {range} is not page-aligned"));
    }
    let p = perms.as_bytes();
    let ok = p.len() == 4
        && matches!(p[0], b'r' | b'-')
        && matches!(p[1], b'w' | b'-')
        && matches!(p[2], b'x' | b'-')
        && matches!(p[3], b's' | b'p');
    if !ok {
        return Err(format!("permissions {perms:?} are not [r-][w-][x-][sp]"));
    }
    let off = hex(offset, "offset")?;
    if off % PAGE_SIZE != 0 {
        return Err(format!("offset {offset} is not page-aligned"));
    }
    let (maj, min) = dev.split_once(':').ok_or_else(|| format!("device {dev:?} is not MAJOR:MINOR"))?;
    let (maj, min) = (hex(maj, "device major")?, hex(min, "device minor")?);
    let inode: u64 = inode.parse().map_err(|_| format!("inode {inode:?} is not a decimal number"))?;
    let is_file = inode != 0 || maj != 0 || min != 0 || name.is_some_and(|n| n.starts_with('/'));
    let backing = if is_file {
        Backing::File(FileId {
            dev_major: maj as u32,
            dev_minor: min as u32,
            inode,
            path: Arc::from(name.unwrap_or("")),
        })
    } else {
        Backing::Anon
    };
    let flags = flags_from_perms(p, name);
    let name = if is_file { None } else { name.map(Arc::from) };
    // Anonymous memory's pgoff is its address at mmap time (V3), which a maps
    // line does not show: assume it was mapped where it is.
    let pgoff = if is_file { off >> PAGE_SHIFT } else { start >> PAGE_SHIFT };
    Ok(Vma::new(start, end, flags, pgoff, backing, None, name))
}

/// Parses a maps snapshot; `source` names it in errors (M2). Lines must be
/// sorted and must not overlap, as Linux prints them.
pub fn parse(text: &str, source: &str) -> Result<Vec<Vma>, MapsError> {
    let mut out: Vec<Vma> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |msg: String| MapsError { source: source.to_string(), line: i + 1, msg };
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        let v = parse_line(line).map_err(err)?;
        if let Some(prev) = out.last() {
            if v.start < prev.end {
                return Err(err(format!("{:x}-{:x} overlaps or precedes the line before", v.start, v.end)));
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// The `VmFlags:` mnemonics of `/proc/pid/smaps` for the flags rcuvm
/// models, in the kernel's order (by bit, `show_smap_vma_flags`).
const MNEMONICS: [(VmFlags, &str); 29] = [
    (VmFlags::READ, "rd"),
    (VmFlags::WRITE, "wr"),
    (VmFlags::EXEC, "ex"),
    (VmFlags::SHARED, "sh"),
    (VmFlags::MAYREAD, "mr"),
    (VmFlags::MAYWRITE, "mw"),
    (VmFlags::MAYEXEC, "me"),
    (VmFlags::MAYSHARE, "ms"),
    (VmFlags::GROWSDOWN, "gd"),
    (VmFlags::PFNMAP, "pf"),
    (VmFlags::LOCKED, "lo"),
    (VmFlags::IO, "io"),
    (VmFlags::SEQ_READ, "sr"),
    (VmFlags::RAND_READ, "rr"),
    (VmFlags::DONTCOPY, "dc"),
    (VmFlags::DONTEXPAND, "de"),
    (VmFlags::LOCKONFAULT, "lf"),
    (VmFlags::ACCOUNT, "ac"),
    (VmFlags::NORESERVE, "nr"),
    (VmFlags::HUGETLB, "ht"),
    (VmFlags::SYNC, "sf"),
    (VmFlags::WIPEONFORK, "wf"),
    (VmFlags::DONTDUMP, "dd"),
    (VmFlags::SOFTDIRTY, "sd"),
    (VmFlags::MIXEDMAP, "mm"),
    (VmFlags::HUGEPAGE, "hg"),
    (VmFlags::NOHUGEPAGE, "nh"),
    (VmFlags::MERGEABLE, "mg"),
    (VmFlags::DROPPABLE, "dp"),
];

/// `f` as smaps' `VmFlags:` line shows it (without the label), e.g.
/// `"rd wr mr mw me ac"`.
pub fn vm_flags_mnemonics(f: VmFlags) -> String {
    MNEMONICS.iter().filter(|(b, _)| f.contains(*b)).map(|(_, m)| *m).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_linux() {
        let v = parse_line(
            "558cb3163000-558cb3165000 r--p 00000000 fe:00 247282                     /usr/bin/head",
        )
        .unwrap();
        assert_eq!(
            render_line(&v),
            "558cb3163000-558cb3165000 r--p 00000000 fe:00 247282                     /usr/bin/head"
        );
        let a = parse_line("7fe571bae000-7fe571bb1000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(a.backing, Backing::Anon);
        assert!(a.flags.contains(VmFlags::ACCOUNT | VmFlags::WRITE));
        assert_eq!(render_line(&a), "7fe571bae000-7fe571bb1000 rw-p 00000000 00:00 0 ");
        let h = parse_line("556e13145000-556e13187000 rw-p 00000000 00:00 0                          [heap]")
            .unwrap();
        assert_eq!(h.name.as_deref(), Some("[heap]"));
        assert_eq!(
            render_line(&h),
            "556e13145000-556e13187000 rw-p 00000000 00:00 0                          [heap]"
        );
    }

    /// A nameless line with its trailing space trimmed is the same line.
    #[test]
    fn a_trimmed_nameless_line_parses() {
        let trimmed = parse_line("7f0000000000-7f0000001000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(trimmed, parse_line("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ").unwrap());
        assert_eq!((trimmed.start, trimmed.end, trimmed.name), (0x7f00_0000_0000, 0x7f00_0000_1000, None));
    }

    #[test]
    fn malformed_lines_name_source_and_line() {
        let good = "00400000-00401000 r--p 00000000 fe:00 1                                  /bin/x\n";
        let cases = [
            ("00401000-00400000 r--p 00000000 00:00 0 ", "inverted"),
            ("00400000-00401001 r--p 00000000 00:00 0 ", "page-aligned"),
            ("00400000-00401000 rq-p 00000000 00:00 0 ", "permissions"),
            ("00400000-00401000 r--p 0000z000 00:00 0 ", "offset"),
            ("00400000-00401000 r--p 00000000 0000 0 ", "MAJOR:MINOR"),
            ("00400000-00401000 r--p 00000000 00:00 x ", "inode"),
            ("00400000-00401000 r--p", "too few fields"),
            ("garbage", "too few fields"),
            ("00400000-00401000 r--p 00000000 00:00", "too few fields"),
            ("", "empty line"),
        ];
        for (line, what) in cases {
            let text = format!("{good}{line}\n");
            let e = parse(&text, "t.maps").unwrap_err();
            assert_eq!((e.source.as_str(), e.line), ("t.maps", 2), "{line:?}");
            assert!(e.msg.contains(what), "{line:?}: {e}");
            assert!(e.to_string().starts_with("t.maps:2: "));
        }
        let e = parse(&format!("{good}{good}"), "t.maps").unwrap_err();
        assert!(e.msg.contains("overlaps"), "{e}");
    }
}
