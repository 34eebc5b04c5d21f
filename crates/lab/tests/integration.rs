//! The `rcuvm` binary: `replay` on the shared traces and on broken cases,
//! and a `capture` → `replay` round trip on a program built here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rcuvm(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rcuvm")).args(args).output().expect("run rcuvm")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `rcuvm replay DIR [--exact]`: exit code, stdout, stderr.
fn replay(dir: &Path, exact: bool) -> (Option<i32>, String, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["replay".as_ref(), dir.as_os_str()];
    if exact {
        args.push("--exact".as_ref());
    }
    let o = rcuvm(&args);
    let (out, err) = text(&o);
    (o.status.code(), out, err)
}

#[path = "../../vm/tests/common/traces.rs"]
mod shared_traces;

fn traces() -> PathBuf {
    shared_traces::traces_dir()
}

fn copy_case(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["start.maps", "trace.strace", "end.maps"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn replay_shared_trace_is_page_exact() {
    let case = traces().join("node-map");
    let (code, out, err) = replay(&case, false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(page-exact)") && out.contains("lines: "), "{out}");
    println!("{out}");
}

#[test]
fn exact_demands_the_same_lines() {
    // end.maps with one anonymous VMA cut in two: the same pages, one line
    // more than the replay prints.
    let tmp = tempfile::tempdir().unwrap();
    copy_case(&traces().join("node-map"), tmp.path());
    let end = std::fs::read_to_string(tmp.path().join("end.maps")).unwrap();
    let mut out = String::new();
    let mut split = false;
    for l in end.lines() {
        let range = l.split(' ').next().unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
        if !split && l.ends_with(" 00:00 0 ") && e - s >= 0x2000 {
            let rest = &l[range.len()..];
            out += &format!("{s:08x}-{:08x}{rest}\n{:08x}-{e:08x}{rest}\n", s + 0x1000, s + 0x1000);
            split = true;
        } else {
            out += l;
            out.push('\n');
        }
    }
    assert!(split, "no anonymous line of two pages in node-map's end.maps");
    std::fs::write(tmp.path().join("end.maps"), out).unwrap();
    let (code, out, err) = replay(tmp.path(), false);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = replay(tmp.path(), true);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("lines that differ") && out.contains("(page-exact)"), "{out}");
}

#[test]
fn replay_reports_a_divergence_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    copy_case(&traces().join("python-json"), tmp.path());
    // Drop the last mmap's munmap: the replay keeps a mapping the kernel
    // removed.
    let trace = std::fs::read_to_string(tmp.path().join("trace.strace")).unwrap();
    let mut lines: Vec<&str> = trace.lines().collect();
    let i = lines.iter().rposition(|l| l.contains("munmap(")).unwrap();
    lines.remove(i);
    std::fs::write(tmp.path().join("trace.strace"), lines.join("\n") + "\n").unwrap();
    let (code, out, err) = replay(tmp.path(), false);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("DIVERGED") && out.contains("end.maps: (unmapped)"), "{out}");
}

#[test]
fn replay_input_errors_exit_2_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (code, _, err) = replay(&missing, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&missing.join("start.maps").display().to_string()), "{err}");

    copy_case(&traces().join("java-churn"), tmp.path());
    let trace = tmp.path().join("trace.strace");
    let mut t = std::fs::read_to_string(&trace).unwrap();
    t.insert_str(
        t.find('\n').unwrap() + 1,
        "7078  mmap(NULL, 4096, PROT_BOGUS, MAP_PRIVATE, -1, 0) = 0x1000\n",
    );
    std::fs::write(&trace, t).unwrap();
    let (code, _, err) = replay(tmp.path(), false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{}:2: ", trace.display())) && err.contains("PROT_BOGUS"), "{err}");

    let o = rcuvm(&["replay".as_ref()]);
    assert_eq!(o.status.code(), Some(2), "usage error");
}

#[test]
fn capture_needs_strace_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rcuvm"))
        .args(["capture".as_ref(), tmp.path().join("case").as_os_str(), "--".as_ref(), "true".as_ref()])
        .env("PATH", tmp.path())
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("strace"), "{err}");
}

/// Maps, unmaps, changes protection and advice, moves, maps a file shared
/// (read-write and read-only descriptors) and private, fails in nine ways,
/// and grows the heap.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long pg = 4096;
    char *a = mmap(0, 64 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(a, 1, 64 * pg);
    munmap(a + 8 * pg, 4 * pg);
    mprotect(a + 16 * pg, 8 * pg, PROT_READ);
    madvise(a + 32 * pg, 8 * pg, MADV_DONTFORK);
    madvise(a + 40 * pg, 4 * pg, MADV_DONTNEED);
    char *b = mremap(a + 48 * pg, 16 * pg, 64 * pg, MREMAP_MAYMOVE);
    b[0] = 1;
    mprotect((void *)0x1000, pg, PROT_READ); /* ENOMEM */
    munmap(a + 1, pg);                        /* EINVAL */
    char *s = mmap(0, 3 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    s[0] = 1;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 8 * pg)) return 1;
    char *f = mmap(0, 8 * pg, PROT_READ, MAP_SHARED, fd, 0);
    char *g = mmap(0, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 4 * pg);
    g[0] = f[0];
    munmap(f, 2 * pg);
    /* Failures the kernel and rcuvm must answer alike. */
    mmap(a, pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0); /* EEXIST */
    mmap(0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);                        /* EINVAL */
    mmap(0, pg, PROT_READ, MAP_PRIVATE, 99, 0);                                        /* EBADF */
    mprotect(f + 2 * pg, pg, PROT_READ | PROT_WRITE); /* 0: fd is O_RDWR */
    int ro = open(argv[1], O_RDONLY);
    char *r = mmap(0, pg, PROT_READ, MAP_SHARED, ro, 0);
    mprotect(r, pg, PROT_READ | PROT_WRITE);                                           /* EACCES */
    mremap((void *)0x10000, pg, 2 * pg, MREMAP_MAYMOVE);                               /* EFAULT */
    madvise(a, 12 * pg, MADV_DONTFORK);                                                /* ENOMEM */
    madvise(f + 2 * pg, pg, MADV_FREE);                                                /* EINVAL */
    sbrk(16 * pg);
    return 0;
}
"#;

#[test]
fn capture_then_replay_is_page_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, exe, case) = (tmp.path().join("p.c"), tmp.path().join("p"), tmp.path().join("case"));
    std::fs::write(&src, PROGRAM).unwrap();
    let o = Command::new("gcc").arg("-O").arg("-o").arg(&exe).arg(&src).output().expect("gcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = tmp.path().join("data");
    let o = rcuvm(&["capture".as_ref(), case.as_os_str(), "--".as_ref(), exe.as_os_str(), file.as_os_str()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let trace = std::fs::read_to_string(case.join("trace.strace")).unwrap();
    // The markers are cut off; the program's own calls are all there.
    assert!(!trace.contains("munmap(0x1000, 0)") && !trace.contains("munmap(0x2000, 0)"), "{trace}");
    for call in ["mremap(", "MADV_DONTFORK", "MAP_SHARED|MAP_ANONYMOUS", "brk("] {
        assert!(trace.contains(call), "{call} missing from\n{trace}");
    }
    assert!(trace.contains(&format!("<{}>", file.display())), "{trace}");
    let (code, out, err) = replay(&case, false);
    println!("{out}");
    assert_eq!(code, Some(0), "{out}{err}\n{trace}");
    let failed = trace.lines().filter(|l| l.contains("= -1 E")).count();
    for e in ["ENOMEM", "EINVAL", "EEXIST", "EBADF", "EACCES", "EFAULT"] {
        assert!(trace.contains(&format!("= -1 {e} ")), "no {e} in\n{trace}");
    }
    assert!(out.contains("(page-exact)") && out.contains(&format!("errno: {failed}/{failed} ")), "{out}");
}

/// `rcuvm run` with `args` and `--out DIR`: exit code, stdout, stderr.
fn run(args: &[&str], out: &Path) -> (Option<i32>, String, String) {
    let mut a: Vec<&std::ffi::OsStr> = vec!["run".as_ref()];
    a.extend(args.iter().map(|s| std::ffi::OsStr::new(*s)));
    a.extend(["--out".as_ref(), out.as_os_str()]);
    let o =
        Command::new(env!("CARGO_BIN_EXE_rcuvm")).args(&a).env("RCUVM_TRACES", traces()).output().unwrap();
    let (out, err) = text(&o);
    (o.status.code(), out, err)
}

#[test]
fn every_workload_runs_on_a_strategy_and_on_the_host_and_the_report_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, list, _) = run(&["--list"], tmp.path());
    assert_eq!(code, Some(0));
    let names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.len() >= 9, "{list}");
    let dir = tmp.path().join("report");
    let (code, out, err) =
        run(&["--strategy", "rcu-dead,linux", "--seconds", "0.05", "--threads", "2"], &dir);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("targets:") && out.contains("wall time:"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let cells = json["cells"].as_array().unwrap();
    assert_eq!(cells.len(), names.len() * 2, "every workload on both backends");
    for c in cells {
        let (w, b) = (c["workload"].as_str().unwrap(), c["backend"].as_str().unwrap());
        assert!(names.contains(&w) && (b == "rcu-dead" || b == "linux"), "{c}");
        if w == "replay" && b == "linux" {
            assert!(c["error"].as_str().unwrap().starts_with("n/a: "), "{c}");
            continue;
        }
        assert!(c["error"].is_null(), "{w} on {b}: {}", c["error"]);
        let metrics = c["outcome"]["metrics"].as_array().unwrap();
        assert!(!metrics.is_empty(), "{c}");
        for m in metrics {
            assert!(m["value"].as_f64().is_some_and(f64::is_finite), "{w} on {b}: {m}");
        }
    }
    // The headline figure of a throughput workload is a real measurement.
    let ops = |w: &str, b: &str| {
        cells.iter().find(|c| c["workload"] == w && c["backend"] == b).unwrap()["outcome"]["metrics"][0]["value"]
            .as_f64()
            .unwrap()
    };
    assert!(ops("vmlocal", "rcu-dead") > 0.0 && ops("vmlocal", "linux") > 0.0);

    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<table>").count(), html.matches("</table>").count(), "tables closed");
    for w in &names {
        assert!(html.contains(&format!("<h2 id=\"{w}\">")), "{w} missing from the page");
    }
    let imgs: Vec<&str> = html.split("<img src=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert!(imgs.len() >= names.len(), "one plot per workload at least: {imgs:?}");
    for f in imgs {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f}");
        assert!(svg.contains("<text") && svg.contains("backend"), "{f} has labelled axes");
    }
}

#[test]
fn bad_run_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--workload", "nope"][..], "unknown workload 'nope'"),
        (&["--strategy", "rcu-dead,nope"][..], "unknown strategy 'nope'"),
        (&["--seconds", "abc"][..], "--seconds"),
        (&["--seconds=-1"][..], "between 0.01 and 600"),
        (&["--threads", "0"][..], "--threads"),
        (&["--threads", "65"][..], "between 1 and 64"),
    ] {
        let (code, out, err) = run(args, tmp.path());
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!tmp.path().join("index.html").exists(), "nothing ran");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (code, _, err) = run(&["--workload", "mmap"], &file.join("report"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot create"), "{err}");
    let o = rcuvm(&["check".as_ref(), "--strategy".as_ref(), "nope".as_ref()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("unknown strategy"));
}

#[test]
fn maps_prints_a_snapshot_and_a_replayed_case() {
    let case = traces().join("node-map");
    let start = std::fs::read_to_string(case.join("start.maps")).unwrap();
    let o = rcuvm(&["maps".as_ref(), case.join("start.maps").as_os_str()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, start, "a snapshot round-trips byte for byte");
    let o = rcuvm(&["maps".as_ref(), case.as_os_str(), "--smaps".as_ref()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("Rss:") && out.contains("VmFlags:") && err.contains("VMAs"), "{out}");
    let o = rcuvm(&["maps".as_ref(), "/nonexistent/maps".as_ref()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/nonexistent/maps"));
}

/// A closed stdout: `run` goes on and writes its report (suite.rs SU4);
/// the other subcommands end quietly (SIGPIPE), never with a panic. The
/// pipe's reader is closed before the child can print (it is still
/// starting up), so its first write finds no reader.
#[test]
fn a_closed_stdout_is_no_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let spawn = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rcuvm"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rcuvm");
        drop(c.stdout.take());
        c.wait_with_output().expect("wait")
    };
    let dir = std::env::temp_dir().join(format!("rcuvm-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = spawn(&[
        "run".as_ref(),
        "--workload".as_ref(),
        "mmap".as_ref(),
        "--strategy".as_ref(),
        "rcu-dead".as_ref(),
        "--seconds".as_ref(),
        "0.05".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(dir.join("results.json").is_file(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let end = traces().join("java-churn/end.maps");
    for args in [vec!["run".as_ref(), "--list".as_ref()], vec!["maps".as_ref(), end.as_os_str()]] {
        let o = spawn(&args);
        let (_, err) = text(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let quiet = o.status.success() || o.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet, "{args:?}: {:?} {err}", o.status);
    }
}
