//! `rcuvm capture DIR -- CMD...`: makes a replay case of any program, the
//! way the shared traces were made.
//!
//! # Owns
//! The snapshot library's C source ([`PRELOAD_C`]), building it with `gcc`,
//! running the program under `strace`, and cutting the log down to one
//! process between its markers ([`cut`]).
//!
//! # Invariants
//! - C1. `start.maps` is read before the start marker `munmap(0x1000, 0)`
//!   and `end.maps` after the end marker `munmap(0x2000, 0)`, both by the same
//!   process, with raw system calls and a static buffer, so nothing the
//!   snapshot code does changes the address space it copies.
//! - C2. `trace.strace` holds exactly the lines of the captured process's
//!   threads strictly between its two markers: memory calls (both halves of a
//!   split call, or neither) and signal lines, verbatim. `execve`/`clone`
//!   lines (traced only to know who is whose thread) are dropped.
//! - C3. The captured process is the first one strace started (the root) if
//!   it made both markers; otherwise the first process, in log order, that
//!   did. Its threads are found from `clone`/`clone3` with `CLONE_THREAD`;
//!   child processes (fork, vfork, spawn) are not part of it, and
//!   each writes its own snapshots, which are ignored. After an `execve`
//!   the last start marker before the end marker counts (the new image's).
//! - C4. Missing `strace` or `gcc`, a library that does not build, or a log
//!   without both markers of one process is an error that says so; nothing
//!   is installed.
//!
//! # Concurrency
//! One thread; it waits for strace, which runs the program and its
//! children.
//!
//! # Linux
//! `strace -f -y -e trace=memory,execve,clone,clone3` output; the
//! destructor runs at `exit()`, so a program that ends by `_exit()`, a
//! signal, or an `execve` that never returns to it has no end marker. Threads
//! that still run while the destructor copies the maps may change them after
//! the end marker: such a case diverges, as the method implies.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::CaptureArgs;

/// The snapshot library, built at run time (C1). Its snapshots go to
/// `$RCUVM_CAPTURE_DIR/{start,end}.PID.maps`.
const PRELOAD_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Static, so copying needs no allocation and no stack growth. */
static char buf[1 << 16];
static int started;

static void snapshot(const char *kind) {
    const char *dir = getenv("RCUVM_CAPTURE_DIR");
    char path[4096], digits[24];
    size_t n = 0, d = 0;
    long pid = syscall(SYS_getpid);
    if (!dir) return;
    for (; *dir && n < sizeof(path) - 64; dir++) path[n++] = *dir;
    path[n++] = '/';
    for (; *kind; kind++) path[n++] = *kind;
    path[n++] = '.';
    do { digits[d++] = (char)('0' + pid % 10); pid /= 10; } while (pid);
    while (d) path[n++] = digits[--d];
    for (const char *s = ".maps"; *s; s++) path[n++] = *s;
    path[n] = 0;
    long in = syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
    long out = syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in >= 0 && out >= 0) {
        long r;
        while ((r = syscall(SYS_read, in, buf, sizeof(buf))) > 0) {
            for (long w = 0, k; w < r; w += k)
                if ((k = syscall(SYS_write, out, buf + w, r - w)) <= 0) goto done;
        }
    }
done:
    if (in >= 0) syscall(SYS_close, in);
    if (out >= 0) syscall(SYS_close, out);
}

__attribute__((constructor)) static void rcuvm_capture_start(void) {
    snapshot("start");
    syscall(SYS_munmap, 0x1000, 0);
    started = 1;
}

__attribute__((destructor)) static void rcuvm_capture_end(void) {
    if (!started) return;
    syscall(SYS_munmap, 0x2000, 0);
    snapshot("end");
}
"#;

const START_MARKER: &str = "munmap(0x1000, 0";
const END_MARKER: &str = "munmap(0x2000, 0";

/// A capture failure: what to tell the user (C4).
#[derive(Debug)]
pub struct CaptureError(pub String);

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs the command; returns the exit code: 0 when the case was written,
/// 2 when it could not be made.
pub fn run(a: &CaptureArgs) -> i32 {
    match capture(&a.dir, &a.cmd) {
        Ok(status) => {
            if let Some(code) = status.filter(|&c| c != 0) {
                eprintln!("rcuvm capture: note: the program exited with status {code}; the case was written");
            }
            0
        }
        Err(e) => {
            eprintln!("rcuvm capture: {e}");
            2
        }
    }
}

/// Checks that `tool` runs (C4).
fn need(tool: &str, version_arg: &str) -> Result<(), CaptureError> {
    match Command::new(tool).arg(version_arg).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(CaptureError(format!(
            "`{tool} {version_arg}` failed ({}): capture needs a working {tool}",
            o.status
        ))),
        Err(e) => Err(CaptureError(format!("cannot run {tool} ({e}): capture needs {tool} on PATH"))),
    }
}

/// Makes the case in `dir`; returns the program's exit status.
pub fn capture(dir: &Path, cmd: &[std::ffi::OsString]) -> Result<Option<i32>, CaptureError> {
    need("strace", "-V")?;
    need("gcc", "--version")?;
    let io = |what: &str, p: &Path, e: std::io::Error| CaptureError(format!("{what} {}: {e}", p.display()));
    let tmp = tempfile::Builder::new()
        .prefix("rcuvm-capture-")
        .tempdir()
        .map_err(|e| CaptureError(format!("cannot make a temporary directory: {e}")))?;
    let work = tmp.path();
    let src = work.join("rcuvm_capture.c");
    let lib = work.join("librcuvm_capture.so");
    std::fs::write(&src, PRELOAD_C).map_err(|e| io("cannot write", &src, e))?;
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .map_err(|e| CaptureError(format!("cannot run gcc: {e}")))?;
    if !out.status.success() {
        return Err(CaptureError(format!(
            "gcc could not build the snapshot library:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let log = work.join("raw.strace");
    let mut preload = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let env = |k: &str, v: &OsStr| {
        let mut s = std::ffi::OsString::from(format!("{k}="));
        s.push(v);
        s
    };
    let status = Command::new("strace")
        .args(["-f", "-y", "-e", "trace=memory,execve,clone,clone3", "-o"])
        .arg(&log)
        .arg("-E")
        .arg(env("LD_PRELOAD", &preload))
        .arg("-E")
        .arg(env("RCUVM_CAPTURE_DIR", work.as_os_str()))
        .arg("--")
        .args(cmd)
        .status()
        .map_err(|e| CaptureError(format!("cannot run strace: {e}")))?;
    let text = std::fs::read_to_string(&log)
        .map_err(|e| io("strace wrote no log (is ptrace allowed here?):", &log, e))?;
    if let Some(why) = exec_failure(&text) {
        return Err(CaptureError(format!("cannot run `{}`: {why}", cmd_line(cmd))));
    }
    let cut =
        cut(&text).map_err(|e| CaptureError(format!("in the strace log of `{}`: {e}", cmd_line(cmd))))?;
    // Only now: a capture that fails leaves no empty case behind.
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    for (kind, name) in [("start", "start.maps"), ("end", "end.maps")] {
        let from = snapshot_path(work, kind, cut.pid);
        let to = dir.join(name);
        std::fs::copy(&from, &to).map_err(|e| io("cannot copy the snapshot", &from, e))?;
    }
    let trace = dir.join("trace.strace");
    std::fs::write(&trace, &cut.trace).map_err(|e| io("cannot write", &trace, e))?;
    if !cut.root {
        eprintln!(
            "rcuvm capture: note: the command's own process made no end marker (it ended by _exit(), \
             a signal or an execve that failed?); captured a descendant, process {}, instead",
            cut.pid
        );
    }
    println!(
        "captured process {} ({}; {} lines between its markers) into {}",
        cut.pid,
        cut.program.as_deref().unwrap_or("program unknown"),
        cut.trace.lines().count(),
        dir.display()
    );
    Ok(status.code())
}

/// Why the command never ran, if no `execve` in the log succeeded (the
/// log traces them all): strace found no such program, or the first
/// `execve`'s error (`EACCES (Permission denied)`).
fn exec_failure(log: &str) -> Option<String> {
    let execs: Vec<&str> = log.lines().filter(|l| l.contains("execve(")).collect();
    if execs.iter().any(|l| l.trim_end().ends_with("= 0")) {
        return None;
    }
    Some(match execs.first() {
        None => "strace did not start it (its message is above)".to_string(),
        Some(l) => l.rsplit_once("= -1 ").map_or("its execve failed", |(_, e)| e).trim().to_string(),
    })
}

/// The command as one line, for messages.
fn cmd_line(cmd: &[std::ffi::OsString]) -> String {
    cmd.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// The captured process's part of a log (C2, C3).
#[derive(Debug, PartialEq, Eq)]
pub struct Cut {
    /// Its process id (the thread-group leader).
    pub pid: u32,
    /// Its lines between the markers, each ending in a newline.
    pub trace: String,
    /// It is the process strace started (C3), not a fallback.
    pub root: bool,
    /// The program it ran: the path of its last successful `execve` before
    /// the start marker, as strace printed it (quoted).
    pub program: Option<String>,
}

/// One log line: its thread id and the rest.
fn split_line(line: &str) -> Option<(u32, &str)> {
    let (t, rest) = line.split_once(char::is_whitespace)?;
    Some((t.parse().ok()?, rest.trim_start()))
}

/// The call a line starts or resumes, if any.
fn call_name(rest: &str) -> Option<&str> {
    if let Some(r) = rest.strip_prefix("<... ") {
        return r.split_once(" resumed>").map(|(n, _)| n);
    }
    let open = rest.find('(')?;
    Some(&rest[..open])
}

/// Cuts a raw `strace -f` log down to one process between its markers.
///
/// # Errors
/// No process made both markers (C4).
pub fn cut(log: &str) -> Result<Cut, String> {
    let lines: Vec<&str> = log.lines().collect();
    // Join split halves per thread, to read clone flags and results, and
    // find each thread's thread group (C3).
    let mut tgid: HashMap<u32, u32> = HashMap::new();
    let mut pending: HashMap<u32, &str> = HashMap::new();
    let mut order: Vec<u32> = Vec::new();
    for l in &lines {
        let Some((tid, rest)) = split_line(l) else { continue };
        let group = *tgid.entry(tid).or_insert_with(|| {
            order.push(tid);
            tid
        });
        let whole = if rest.ends_with("<unfinished ...>") {
            pending.insert(tid, rest);
            continue;
        } else if rest.starts_with("<... ") {
            match pending.remove(&tid) {
                Some(head) => format!("{head} {rest}"),
                None => continue,
            }
        } else {
            rest.to_string()
        };
        let is_clone = whole.starts_with("clone(") || whole.starts_with("clone3(");
        if !is_clone {
            continue;
        }
        let child = whole.rsplit_once(" = ").and_then(|(_, r)| r.trim().parse::<u32>().ok());
        if let Some(child) = child {
            if !tgid.contains_key(&child) {
                order.push(child);
            }
            tgid.insert(child, if whole.contains("CLONE_THREAD") { group } else { child });
        }
    }
    // Markers per process: (last start before the end, end), as line indexes.
    let mut starts: HashMap<u32, usize> = HashMap::new();
    let mut ends: HashMap<u32, (usize, usize)> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        let Some((tid, rest)) = split_line(l) else { continue };
        let g = tgid.get(&tid).copied().unwrap_or(tid);
        if rest.starts_with(START_MARKER) && !ends.contains_key(&g) {
            starts.insert(g, i);
        } else if rest.starts_with(END_MARKER) && !ends.contains_key(&g) {
            if let Some(&s) = starts.get(&g) {
                ends.insert(g, (s, i));
            }
        }
    }
    let root = order.first().copied();
    let pid = root
        .filter(|r| ends.contains_key(r))
        .or_else(|| order.iter().copied().filter(|p| ends.contains_key(p)).min_by_key(|p| ends[p].0))
        .ok_or_else(|| {
            "no process made both markers (munmap(0x1000, 0) at start, munmap(0x2000, 0) at exit): \
             did the program end by exit()? (LD_PRELOAD does not reach static or setuid programs)"
                .to_string()
        })?;
    let (s, e) = ends[&pid];
    // Keep the process's memory and signal lines in (s, e); a split call
    // only with both halves inside (C2).
    let mut keep = vec![false; lines.len()];
    let mut open: HashMap<u32, usize> = HashMap::new();
    let mut marker_tids: HashSet<u32> = HashSet::new();
    for (i, l) in lines.iter().enumerate().take(e + 1).skip(s) {
        let Some((tid, rest)) = split_line(l) else { continue };
        if tgid.get(&tid).copied().unwrap_or(tid) != pid {
            continue;
        }
        if i == s || i == e {
            // The markers themselves, and a resumed half of them.
            if rest.ends_with("<unfinished ...>") {
                marker_tids.insert(tid);
            }
            continue;
        }
        if rest.starts_with("---") {
            keep[i] = true;
            continue;
        }
        let Some(name) = call_name(rest) else { continue };
        let memory = !matches!(name, "execve" | "execveat" | "clone" | "clone3" | "fork" | "vfork");
        if rest.ends_with("<unfinished ...>") {
            if memory {
                open.insert(tid, i);
            }
        } else if rest.starts_with("<... ") {
            if marker_tids.remove(&tid) {
                continue;
            }
            if let Some(j) = open.remove(&tid) {
                keep[j] = true;
                keep[i] = true;
            }
        } else if memory && !rest.starts_with("+++") {
            keep[i] = true;
        }
    }
    let mut trace = String::new();
    for (l, k) in lines.iter().zip(&keep) {
        if *k {
            let _ = writeln!(trace, "{l}");
        }
    }
    let program = lines[..s]
        .iter()
        .rev()
        .filter_map(|l| split_line(l))
        .filter(|(tid, rest)| *tid == pid && rest.starts_with("execve(") && rest.ends_with("= 0"))
        .filter_map(|(_, rest)| rest["execve(".len()..].split(", [").next().map(str::to_string))
        .next();
    Ok(Cut { pid, trace, root: root == Some(pid), program })
}

/// Where the snapshot library puts a process's snapshot.
fn snapshot_path(dir: &Path, kind: &str, pid: u32) -> PathBuf {
    dir.join(format!("{kind}.{pid}.maps"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_never_ran_is_named_so() {
        let path_search = "7 execve(\"/usr/local/bin/x\", [\"x\"], 0x7ff /* 9 vars */) = -1 ENOENT (No such file or directory)\n\
                           7 execve(\"/usr/bin/x\", [\"x\"], 0x7ff /* 9 vars */) = 0\n";
        assert_eq!(exec_failure(path_search), None);
        let denied =
            "7 execve(\"/tmp/x.sh\", [\"/tmp/x.sh\"], 0x7ff /* 9 vars */) = -1 EACCES (Permission denied)\n";
        assert_eq!(exec_failure(denied).as_deref(), Some("EACCES (Permission denied)"));
        assert!(exec_failure("").unwrap().contains("strace did not start it"));
    }

    #[test]
    fn cut_keeps_the_root_process_between_its_markers() {
        let log = "\
100  execve(\"/bin/p\", [\"p\"], 0x7ffc /* 3 vars */) = 0
100  brk(NULL)                         = 0x1000000
100  munmap(0x1000, 0)                 = -1 EINVAL (Invalid argument)
100  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
100  clone3({flags=CLONE_VM|CLONE_THREAD|CLONE_SETTLS, child_tid=0x1} <unfinished ...>
101  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>
100  <... clone3 resumed> => {parent_tid=[101]}, 88) = 101
101  <... mmap resumed>)               = 0x7f0000010000
100  clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x1) = 102
102  munmap(0x1000, 0)                 = -1 EINVAL (Invalid argument)
102  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000020000
102  munmap(0x2000, 0)                 = -1 EINVAL (Invalid argument)
101  --- SIGSEGV {si_signo=SIGSEGV} ---
101  munmap(0x7f0000010000, 8192 <unfinished ...>
100  munmap(0x2000, 0)                 = -1 EINVAL (Invalid argument)
101  <... munmap resumed>)             = 0
100  +++ exited with 0 +++
";
        let c = cut(log).unwrap();
        assert_eq!((c.pid, c.root, c.program.as_deref()), (100, true, Some("\"/bin/p\"")));
        let want = "\
100  mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
101  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0 <unfinished ...>
101  <... mmap resumed>)               = 0x7f0000010000
101  --- SIGSEGV {si_signo=SIGSEGV} ---
";
        assert_eq!(c.trace, want);
        rcuvm::strace::parse(&c.trace, "cut").unwrap();
    }

    #[test]
    fn cut_falls_back_to_a_child_and_takes_the_last_start_after_exec() {
        let log = "\
200  munmap(0x1000, 0)                 = -1 EINVAL (Invalid argument)
200  clone(child_stack=NULL, flags=SIGCHLD) = 201
200  execve(\"/bin/q\", [\"q\"], 0x7ffc /* 3 vars */) = 0
201  munmap(0x1000, 0)                 = -1 EINVAL (Invalid argument)
201  brk(NULL)                         = 0x2000000
201  execve(\"/bin/r\", [\"r\"], 0x7ffc /* 3 vars */) = 0
201  munmap(0x1000, 0)                 = -1 EINVAL (Invalid argument)
201  brk(NULL)                         = 0x3000000
201  munmap(0x2000, 0)                 = -1 EINVAL (Invalid argument)
";
        let c = cut(log).unwrap();
        assert_eq!((c.pid, c.root, c.program.as_deref()), (201, false, Some("\"/bin/r\"")));
        assert_eq!(c.trace, "201  brk(NULL)                         = 0x3000000\n");
        assert!(cut("1  brk(NULL) = 0x1000\n").unwrap_err().contains("both markers"));
        assert_eq!(snapshot_path(Path::new("/d"), "end", 7), PathBuf::from("/d/end.7.maps"));
    }
}
