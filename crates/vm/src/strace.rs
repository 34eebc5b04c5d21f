//! `strace -f -y -e trace=memory` logs, parsed into mm calls with the
//! kernel's results.
//!
//! # Owns
//! [`parse`], [`parse_counting`], [`TraceCall`], [`MmOp`], [`TraceError`].
//!
//! # Invariants
//! - S1. Every memory call of the log becomes one [`TraceCall`], in the order
//!   its *result* was printed (the order the kernel finished them), with its
//!   line number. A call split by another thread into `<unfinished ...>` and
//!   `<... NAME resumed>` halves is joined by thread id.
//! - S2. Lines that are not calls (`--- SIG… ---`, `+++ exited … +++`) are
//!   skipped; calls that never returned (`= ?`) are dropped, and so are
//!   memory calls that are not replayed (`mlock`, `mbind`, `msync`…),
//!   whatever their result. Anything else that cannot be parsed is an error
//!   naming the source and the line.
//! - S3. Skipped calls are counted by name ([`parse_counting`]), so a
//!   replay can say what it did not apply (a misspelt name among them).
//!
//! # Linux
//! strace's output format: `PID  name(args) = result`, failures as
//! `= -1 ENOMEM (Cannot allocate memory)`, descriptors with `-y` as
//! `3</path/to/file>`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::uapi::{Errno, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, MapFlags, Prot, madv};

/// One memory-management call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmOp {
    /// `brk(addr)`; `NULL` is 0.
    Brk {
        /// Requested break.
        addr: u64,
    },
    /// `mmap(addr, len, prot, flags, fd, off)`.
    Mmap {
        /// Hint or fixed address (0 for `NULL`).
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `PROT_*`.
        prot: Prot,
        /// `MAP_*`.
        flags: MapFlags,
        /// The descriptor and, with `-y`, its path.
        fd: Option<(i32, Option<String>)>,
        /// File offset in bytes.
        offset: u64,
    },
    /// `munmap(addr, len)`.
    Munmap {
        /// Start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `mprotect(addr, len, prot)`.
    Mprotect {
        /// Start.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `PROT_*`.
        prot: Prot,
    },
    /// `madvise(addr, len, advice)`.
    Madvise {
        /// Start.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `MADV_*` value.
        advice: i32,
    },
    /// `mremap(old, old_len, new_len, flags[, new_addr])`.
    Mremap {
        /// Old start.
        old_addr: u64,
        /// Old length.
        old_len: u64,
        /// New length.
        new_len: u64,
        /// `MREMAP_*` bits.
        flags: u32,
        /// With `MREMAP_FIXED`.
        new_addr: Option<u64>,
    },
}

impl fmt::Display for MmOp {
    /// The call in strace's shape, numbers in hex, flags as bits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmOp::Brk { addr } => write!(f, "brk({addr:#x})"),
            MmOp::Mmap { addr, len, prot, flags, fd, offset } => {
                write!(f, "mmap({addr:#x}, {len:#x}, {:#x}, {:#x}, ", prot.bits(), flags.bits())?;
                match fd {
                    Some((n, Some(p))) => write!(f, "{n}<{p}>")?,
                    Some((n, None)) => write!(f, "{n}")?,
                    None => f.write_str("-1")?,
                }
                write!(f, ", {offset:#x})")
            }
            MmOp::Munmap { addr, len } => write!(f, "munmap({addr:#x}, {len:#x})"),
            MmOp::Mprotect { addr, len, prot } => {
                write!(f, "mprotect({addr:#x}, {len:#x}, {:#x})", prot.bits())
            }
            MmOp::Madvise { addr, len, advice } => write!(f, "madvise({addr:#x}, {len:#x}, {advice})"),
            MmOp::Mremap { old_addr, old_len, new_len, flags, new_addr } => {
                write!(f, "mremap({old_addr:#x}, {old_len:#x}, {new_len:#x}, {flags:#x}")?;
                match new_addr {
                    Some(a) => write!(f, ", {a:#x})"),
                    None => f.write_str(")"),
                }
            }
        }
    }
}

/// A call and what the kernel returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceCall {
    /// Line of the result (1-based).
    pub line: usize,
    /// Thread id.
    pub tid: u32,
    /// The call.
    pub op: MmOp,
    /// The returned value, or the errno.
    pub result: Result<u64, Errno>,
}

/// A malformed log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// The file (or other source).
    pub source: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.msg)
    }
}

impl std::error::Error for TraceError {}

/// Splits `args` at top-level commas (not inside `(…)`, `{…}`, `[…]` or
/// a descriptor's `<path>`, in which only `>` counts: strace escapes a `>`
/// in a path, but not a `)` or a `,`).
fn split_args(args: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start, mut in_path) = (Vec::new(), 0i32, 0, false);
    for (i, c) in args.char_indices() {
        match c {
            '>' if in_path => in_path = false,
            _ if in_path => {}
            '<' => in_path = true,
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = args[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "NULL" {
        return Ok(0);
    }
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| format!("{s:?} is not a number"))
}

/// `s` without strace's comments: it prints bits it has no name for as
/// `0x10 /* PROT_??? */`.
fn uncomment(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// A path as strace `-y` prints it, unescaped: `\\`, `\"`, `\n`, `\t`
/// and octal `\303\251` (the bytes of a non-ASCII name), read back as
/// UTF-8 (lossily: rcuvm keeps names as text, and reads maps files the
/// same way).
fn unescape(p: &str) -> String {
    let b = p.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let octal = b[i + 1..].iter().take(3).take_while(|c| (b'0'..=b'7').contains(c)).count();
        if octal > 0 {
            let v = b[i + 1..i + 1 + octal].iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 1 + octal;
            continue;
        }
        out.push(match b[i + 1] {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'v' => 0x0b,
            b'f' => 0x0c,
            c => c,
        });
        i += 2;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `A|B|0x10` with symbolic names looked up in `names`.
fn flags(s: &str, names: &[(&str, u32)]) -> Result<u32, String> {
    let s = uncomment(s);
    let mut bits = 0;
    for part in s.split('|') {
        let part = part.trim();
        if part == "0" {
            continue;
        }
        bits |= match names.iter().find(|(n, _)| *n == part) {
            Some((_, b)) => *b,
            None => num(part).map_err(|_| format!("unknown flag {part:?}"))? as u32,
        };
    }
    Ok(bits)
}

const PROT: &[(&str, u32)] = &[
    ("PROT_NONE", 0),
    ("PROT_READ", 1),
    ("PROT_WRITE", 2),
    ("PROT_EXEC", 4),
    ("PROT_SEM", 8),
    ("PROT_GROWSDOWN", 0x0100_0000),
    ("PROT_GROWSUP", 0x0200_0000),
];

const MAP: &[(&str, u32)] = &[
    // What strace prints when neither type bit is set.
    ("MAP_FILE", 0),
    ("MAP_SHARED", 0x01),
    ("MAP_PRIVATE", 0x02),
    ("MAP_SHARED_VALIDATE", 0x03),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_FIXED", 0x10),
    ("MAP_ANONYMOUS", 0x20),
    ("MAP_32BIT", 0x40),
    ("MAP_GROWSDOWN", 0x100),
    ("MAP_DENYWRITE", 0x800),
    ("MAP_EXECUTABLE", 0x1000),
    ("MAP_LOCKED", 0x2000),
    ("MAP_NORESERVE", 0x4000),
    ("MAP_POPULATE", 0x8000),
    ("MAP_NONBLOCK", 0x1_0000),
    ("MAP_STACK", 0x2_0000),
    ("MAP_HUGETLB", 0x4_0000),
    ("MAP_SYNC", 0x8_0000),
    ("MAP_FIXED_NOREPLACE", 0x10_0000),
    ("MAP_UNINITIALIZED", 0x400_0000),
];

const MREMAP: &[(&str, u32)] = &[
    ("MREMAP_MAYMOVE", MREMAP_MAYMOVE),
    ("MREMAP_FIXED", MREMAP_FIXED),
    ("MREMAP_DONTUNMAP", MREMAP_DONTUNMAP),
];

const MADV: &[(&str, i32)] = &[
    ("MADV_NORMAL", madv::NORMAL),
    ("MADV_RANDOM", madv::RANDOM),
    ("MADV_SEQUENTIAL", madv::SEQUENTIAL),
    ("MADV_WILLNEED", madv::WILLNEED),
    ("MADV_DONTNEED", madv::DONTNEED),
    ("MADV_FREE", madv::FREE),
    ("MADV_REMOVE", madv::REMOVE),
    ("MADV_DONTFORK", madv::DONTFORK),
    ("MADV_DOFORK", madv::DOFORK),
    ("MADV_MERGEABLE", madv::MERGEABLE),
    ("MADV_UNMERGEABLE", madv::UNMERGEABLE),
    ("MADV_HUGEPAGE", madv::HUGEPAGE),
    ("MADV_NOHUGEPAGE", madv::NOHUGEPAGE),
    ("MADV_DONTDUMP", madv::DONTDUMP),
    ("MADV_DODUMP", madv::DODUMP),
    ("MADV_WIPEONFORK", madv::WIPEONFORK),
    ("MADV_KEEPONFORK", madv::KEEPONFORK),
    ("MADV_COLD", madv::COLD),
    ("MADV_PAGEOUT", madv::PAGEOUT),
    ("MADV_POPULATE_READ", madv::POPULATE_READ),
    ("MADV_POPULATE_WRITE", madv::POPULATE_WRITE),
    ("MADV_DONTNEED_LOCKED", madv::DONTNEED_LOCKED),
    ("MADV_COLLAPSE", madv::COLLAPSE),
    ("MADV_HWPOISON", madv::HWPOISON),
    ("MADV_SOFT_OFFLINE", madv::SOFT_OFFLINE),
    ("MADV_GUARD_INSTALL", madv::GUARD_INSTALL),
    ("MADV_GUARD_REMOVE", madv::GUARD_REMOVE),
];

/// `3</path>` or `-1`.
fn fd(s: &str) -> Result<Option<(i32, Option<String>)>, String> {
    let (n, path) = match s.split_once('<') {
        Some((n, rest)) => {
            let p = rest.strip_suffix('>').ok_or_else(|| format!("descriptor {s:?} has no closing '>'"))?;
            (n, Some(unescape(p)))
        }
        None => (s, None),
    };
    let n: i32 = n.trim().parse().map_err(|_| format!("descriptor {s:?} is not a number"))?;
    Ok(if n < 0 { None } else { Some((n, path)) })
}

fn op(name: &str, args: &str) -> Result<Option<MmOp>, String> {
    let a = split_args(args);
    let want = |n: usize| {
        if a.len() < n { Err(format!("{name} needs {n} arguments, has {}", a.len())) } else { Ok(()) }
    };
    Ok(Some(match name {
        "brk" => {
            want(1)?;
            MmOp::Brk { addr: num(a[0])? }
        }
        "mmap" => {
            want(6)?;
            MmOp::Mmap {
                addr: num(a[0])?,
                len: num(a[1])?,
                prot: Prot::from_bits_retain(flags(a[2], PROT)?),
                flags: MapFlags::from_bits_retain(flags(a[3], MAP)?),
                fd: fd(a[4])?,
                offset: num(a[5])?,
            }
        }
        "munmap" => {
            want(2)?;
            MmOp::Munmap { addr: num(a[0])?, len: num(a[1])? }
        }
        "mprotect" => {
            want(3)?;
            MmOp::Mprotect {
                addr: num(a[0])?,
                len: num(a[1])?,
                prot: Prot::from_bits_retain(flags(a[2], PROT)?),
            }
        }
        "madvise" => {
            want(3)?;
            let name = uncomment(a[2]);
            let advice = match MADV.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => *v,
                None => num(&name).map_err(|_| format!("unknown advice {:?}", a[2]))? as i32,
            };
            MmOp::Madvise { addr: num(a[0])?, len: num(a[1])?, advice }
        }
        "mremap" => {
            want(4)?;
            MmOp::Mremap {
                old_addr: num(a[0])?,
                old_len: num(a[1])?,
                new_len: num(a[2])?,
                flags: flags(a[3], MREMAP)?,
                new_addr: a.get(4).map(|s| num(s)).transpose()?,
            }
        }
        // Other calls `trace=memory` may show (mlock, msync, mincore,
        // set_mempolicy…) are not replayed yet.
        _ => return Ok(None),
    }))
}

/// `= ? ERESTARTSYS (To be restarted…)` or a bare `= ?`: the call never
/// returned (S2).
fn never_returned(res: &str) -> bool {
    res.split_whitespace().next() == Some("?")
}

/// `= 0x7f…`, `= 0`, `= -1 ENOMEM (…)`; `None` for `= ?`.
fn result(s: &str) -> Result<Option<Result<u64, Errno>>, String> {
    let s = s.trim();
    if never_returned(s) {
        return Ok(None);
    }
    if let Some(rest) = s.strip_prefix("-1 ") {
        let name = rest.split_whitespace().next().unwrap_or("");
        let e = Errno::from_name(name).ok_or_else(|| format!("unknown errno {name:?}"))?;
        return Ok(Some(Err(e)));
    }
    Ok(Some(Ok(num(s.split_whitespace().next().unwrap_or(""))?)))
}

/// Splits `name(args)   = result` into `name(args` and `result` (strace pads
/// with spaces before `=`).
fn call_and_result(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(" = ")?;
    let call = s[..i].trim_end().strip_suffix(')')?;
    Some((call, s[i + 3..].trim()))
}

/// Parses a whole log (S1, S2); `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<TraceCall>, TraceError> {
    parse_counting(text, source).map(|(calls, _)| calls)
}

/// [`parse`], and how many calls of each name were skipped as not
/// replayed (S3).
pub fn parse_counting(
    text: &str,
    source: &str,
) -> Result<(Vec<TraceCall>, BTreeMap<String, usize>), TraceError> {
    let mut out = Vec::new();
    let mut skipped = BTreeMap::new();
    let mut pending: HashMap<u32, (String, String)> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let err = |msg: String| TraceError { source: source.to_string(), line: lineno, msg };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (tid, rest) = match line.split_once(char::is_whitespace) {
            Some((t, r)) if t.bytes().all(|b| b.is_ascii_digit()) => {
                (t.parse::<u32>().map_err(|_| err(format!("thread id {t:?} is too large")))?, r.trim_start())
            }
            _ => (0, line),
        };
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue; // S2: signals, exits
        }
        let (name, args, res) = if let Some(r) = rest.strip_prefix("<... ") {
            // `<... mmap resumed>rest) = result`
            let (name, tail) =
                r.split_once(" resumed>").ok_or_else(|| err(format!("malformed resumed line {rest:?}")))?;
            let (head, args0) = pending
                .remove(&tid)
                .ok_or_else(|| err(format!("{name} resumed on thread {tid} never started")))?;
            if head != name {
                return Err(err(format!("thread {tid} resumed {name} but started {head}")));
            }
            let (tail_args, res) =
                call_and_result(tail).ok_or_else(|| err(format!("no result in {rest:?}")))?;
            let args = format!("{args0}{tail_args}");
            (name.to_string(), args, res.to_string())
        } else {
            let open = rest.find('(').ok_or_else(|| err(format!("not a system call: {rest:?}")))?;
            let name = &rest[..open];
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err(format!("not a system call: {rest:?}")));
            }
            if let Some(before) = rest.strip_suffix("<unfinished ...>") {
                let args = before[open + 1..].trim_end().to_string();
                // A second start on a thread whose first never resumed:
                // the first never returned (counted, S3).
                if let Some((lost, _)) = pending.insert(tid, (name.to_string(), args)) {
                    *skipped.entry(format!("{lost} (never resumed)")).or_insert(0) += 1;
                }
                continue;
            }
            let (c, res) = call_and_result(rest).ok_or_else(|| err(format!("no result in {rest:?}")))?;
            (name.to_string(), c[open + 1..].to_string(), res.to_string())
        };
        if never_returned(&res) {
            continue; // S2: never returned
        }
        // S2: a call that is not replayed is skipped before its result is
        // read: it may fail with an errno no mm call returns (mbind's EIO).
        let Some(op) = op(&name, &args).map_err(err)? else {
            *skipped.entry(name).or_insert(0) += 1;
            continue;
        };
        let Some(result) = result(&res).map_err(err)? else { continue };
        out.push(TraceCall { line: lineno, tid, op, result });
    }
    for (name, _) in pending.into_values() {
        *skipped.entry(format!("{name} (never resumed)")).or_insert(0) += 1;
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calls_failures_and_split_halves() {
        let log = "\
6968  brk(NULL)                         = 0xc76f000
6968  mmap(NULL, 353616, PROT_READ, MAP_PRIVATE, 3</usr/lib/locale/C.utf8/LC_CTYPE>, 0) = 0x7f2144ce7000
7079  mmap(NULL, 1048576, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK, -1, 0 <unfinished ...>
7086  munmap(0x7f8f103a8000, 16384 <unfinished ...>
7079  <... mmap resumed>)               = 0x7f8f102a8000
7086  <... munmap resumed>)             = -1 EINVAL (Invalid argument)
7086  --- SIGSEGV {si_signo=SIGSEGV} ---
6968  mremap(0x7f213c893000, 139264, 155648, MREMAP_MAYMOVE) = 0x7f213b66d000
6968  madvise(0x7f8f016ff000, 1024000, MADV_DONTNEED) = 0
7001  mprotect(0x1000, 4096, PROT_NONE)  = ?
7001  mbind(0x7f8f016ff000, 4096, MPOL_BIND, [0x1], 2, 0) = -1 EIO (Input/output error)
6968  +++ exited with 0 +++
";
        let calls = parse(log, "t.strace").unwrap();
        assert_eq!(calls.len(), 6);
        assert_eq!(calls[0].op, MmOp::Brk { addr: 0 });
        assert_eq!(calls[0].result, Ok(0xc76f000));
        match &calls[1].op {
            MmOp::Mmap { fd: Some((3, Some(p))), len: 353616, .. } => {
                assert_eq!(p, "/usr/lib/locale/C.utf8/LC_CTYPE")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!((calls[2].line, calls[2].tid, calls[2].result), (5, 7079, Ok(0x7f8f102a8000)));
        assert!(matches!(calls[2].op, MmOp::Mmap { fd: None, .. }));
        assert_eq!(calls[3].op, MmOp::Munmap { addr: 0x7f8f103a8000, len: 16384 });
        assert_eq!(calls[3].result, Err(Errno::Einval));
        assert!(matches!(calls[4].op, MmOp::Mremap { flags: MREMAP_MAYMOVE, new_addr: None, .. }));
        assert_eq!(calls[5].op, MmOp::Madvise { addr: 0x7f8f016ff000, len: 1024000, advice: madv::DONTNEED });
    }

    /// What this machine's strace 6.1 prints for bits and advice it has no
    /// name for, for a call a signal interrupted, and for paths with odd
    /// characters (found by a review: each was an error or a wrong path).
    #[test]
    fn parses_what_strace_prints_for_odd_cases() {
        let log = r#"1 mprotect(0x1000, 4096, PROT_READ|0x10 /* PROT_??? */) = -1 EINVAL (Invalid argument)
1 madvise(0x1000, 4096, 0x66 /* MADV_??? */) = 0
1 mremap(0x1000, 4096, 8192, 0x100 /* MREMAP_??? */) = -1 EINVAL (Invalid argument)
1 mmap(NULL, 4096, PROT_READ, MAP_FILE, 3</tmp/x>, 0) = -1 EINVAL (Invalid argument)
1 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_DROPPABLE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
1 madvise(0x1000, 4096, MADV_GUARD_INSTALL) = 0
1 munmap(0x1000, 4096) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)
1 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3</tmp/a)b, caf\303\251 \"q\" \\ \76>, 0) = 0x7f0000001000
1 mmap(NULL, 4096, PROT_READ, MAP_SHARED, 4</dev/mem>, 0) = -1 ENXIO (No such device or address)
"#;
        let calls = parse(log, "t.strace").unwrap();
        let ops: Vec<&MmOp> = calls.iter().map(|c| &c.op).collect();
        assert_eq!(calls.len(), 8, "{ops:?}");
        // An errno rcuvm never returns is the kernel's answer all the same.
        assert_eq!(calls[7].result, Err(Errno::Enxio));
        assert_eq!(*ops[0], MmOp::Mprotect { addr: 0x1000, len: 4096, prot: Prot::from_bits_retain(0x11) });
        assert_eq!(*ops[1], MmOp::Madvise { addr: 0x1000, len: 4096, advice: 0x66 });
        assert!(matches!(ops[2], MmOp::Mremap { flags: 0x100, .. }));
        assert!(matches!(ops[3], MmOp::Mmap { flags, .. } if flags.bits() == 0));
        assert!(matches!(ops[4], MmOp::Mmap { flags, .. } if flags.bits() == 0x28));
        assert_eq!(*ops[5], MmOp::Madvise { addr: 0x1000, len: 4096, advice: madv::GUARD_INSTALL });
        match ops[6] {
            MmOp::Mmap { fd: Some((3, Some(p))), offset: 0, .. } => {
                assert_eq!(p, "/tmp/a)b, café \"q\" \\ >")
            }
            o => panic!("{o:?}"),
        }
    }

    /// S3: what is not replayed is counted by name, a misspelt call too.
    #[test]
    fn skipped_calls_are_counted() {
        let log = "1 mlock(0x1000, 4096) = 0\n1 mbind(0x1000, 4096, MPOL_BIND, [0x1], 2, 0) = -1 EIO (x)\n\
                   1 mlock(0x1000, 4096) = 0\n1 mmapp(NULL, 4096) = 0x1000\n1 munmap(0x1000, 4096) = 0\n\
                   2 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>\n";
        let (calls, skipped) = parse_counting(log, "t").unwrap();
        assert_eq!(calls.len(), 1);
        let skipped: Vec<(&str, usize)> = skipped.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(skipped, [("mbind", 1), ("mlock", 2), ("mmap (never resumed)", 1), ("mmapp", 1)]);
    }

    #[test]
    fn malformed_lines_name_source_and_line() {
        for (bad, what) in [
            ("1 mmap(NULL, 4096) = 0x1000", "needs 6 arguments"),
            ("1 mmap(NULL, 4096, PROT_BOGUS, MAP_PRIVATE, -1, 0) = 0x1000", "unknown flag"),
            ("1 munmap(0x1000, 4096) = -1 EWEIRD (x)", "unknown errno"),
            ("1 <... munmap resumed>) = 0", "never started"),
            ("1 munmap(0x1000, 4096)", "no result"),
            ("1 what is this", "not a system call"),
        ] {
            let e = parse(&format!("1 brk(NULL) = 0x1000\n{bad}\n"), "x.strace").unwrap_err();
            assert_eq!((e.source.as_str(), e.line), ("x.strace", 2), "{bad}");
            assert!(e.msg.contains(what), "{bad}: {e}");
        }
    }
}
