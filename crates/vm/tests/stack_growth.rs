//! Stack growth (stack.rs G1–G5, fault.rs FL8) against the host kernel:
//! the same scripts of fixed mappings, unmaps and accesses run in a C
//! program (`tests/host/stack_growth.c`, built here with the system's C
//! compiler) and on an `AddressSpace` under every strategy, and must give
//! the same result for every access (ok, `SEGV_MAPERR`, `SEGV_ACCERR`)
//! and the same maps lines in the arena after every step.
//!
//! The cases: growth by a page, by many, by a read; the guard gap below an
//! accessible VMA (255 pages refused, 256 allowed), none below a
//! `PROT_NONE` or another `VM_GROWSDOWN` VMA; a write below a read-only
//! stack (grows, then `SEGV_ACCERR`); a hole whose next VMA does not grow
//! down; `RLIMIT_STACK` to the page; growth over a range just unmapped
//! (under `rcu-dead`, over its dead entry).

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rcuvm::{AccessError, AddressSpace, MapFlags, MmConfig, PAGE_SIZE, Prot, Strategy};

/// Where both run the script: free in the C program (it maps with
/// `MAP_FIXED_NOREPLACE` and reports a clash) and in rcuvm.
const ARENA: u64 = 0x2000_0000_0000;
const P: u64 = PAGE_SIZE;

/// The C program, compiled once per test binary.
fn host_program() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/host/stack_growth.c");
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stack_growth_host");
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            let st = Command::new(&cc)
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
            assert!(st.success(), "{cc} failed on {}", src.display());
            out
        })
        .clone()
}

/// One step's outcome: the result and the arena's VMAs (start and end in
/// pages from the arena, permissions, the `VmFlags` of [`MODELLED`]).
type Step = (String, Vec<(u64, u64, String, String)>);

/// The smaps `VmFlags` compared: those these scripts can change and rcuvm
/// models (the host may show more, `sd` or `nh`).
const MODELLED: [&str; 11] = ["rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "lo", "ac"];

fn modelled(flags: &str) -> String {
    flags.split([',', ' ']).filter(|f| MODELLED.contains(f)).collect::<Vec<_>>().join(",")
}

fn run_host(script: &[String]) -> Vec<Step> {
    let out = Command::new(host_program())
        .arg(format!("{ARENA:x}"))
        .args(script)
        .output()
        .expect("run the host program");
    assert!(out.status.success(), "host program failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("ASCII output");
    let mut steps = Vec::new();
    let mut cur: Option<Step> = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        match w[0] {
            "op" => cur = Some((w[1..].join(" "), Vec::new())),
            "map" => cur.as_mut().expect("op first").1.push((
                w[1].parse().expect("start"),
                w[2].parse().expect("end"),
                w[3].to_string(),
                modelled(w.get(4).copied().unwrap_or("")),
            )),
            "end" => steps.push(cur.take().expect("op first")),
            _ => panic!("unexpected host output {line:?}"),
        }
    }
    assert_eq!(steps.len(), script.len(), "one step per op:\n{text}");
    steps
}

/// The host's `stack_guard_gap` (a boot parameter, 256 pages by default).
fn host_guard_gap() -> u64 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let pages = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("stack_guard_gap="))
        .map_or(256, |v| v.parse().expect("a page count"));
    pages * P
}

/// This process's soft `RLIMIT_STACK`, which the host program inherits.
fn host_stack_rlimit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut r) }, 0);
    if r.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { r.rlim_cur }
}

fn run_rcuvm(s: Strategy, script: &[String]) -> Vec<Step> {
    let mut cfg = MmConfig::default();
    cfg.stack_guard_gap = host_guard_gap();
    cfg.stack_rlimit = host_stack_rlimit();
    let mut mm = Arc::new(AddressSpace::builder().strategy(s).config(cfg.clone()).build());
    let mut cpu = mm.cpu();
    let mut steps = Vec::new();
    for op in script {
        let f: Vec<&str> = op.split(':').collect();
        let num = |i: usize| f[i].parse::<u64>().expect("a number");
        let result = match f[0] {
            "m" => {
                let prot = match f[3] {
                    "r" => Prot::READ,
                    "rw" => Prot::READ | Prot::WRITE,
                    _ => Prot::empty(),
                };
                let mut flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED_NOREPLACE;
                if f[4] == "g" {
                    flags |= MapFlags::GROWSDOWN;
                }
                match mm.mmap(ARENA + num(1) * P, num(2) * P, prot, flags, None, 0) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("errno {}", e.code()),
                }
            }
            "u" => match mm.munmap(ARENA + num(1) * P, num(2) * P) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("errno {}", e.code()),
            },
            "p" => {
                let prot = match f[3] {
                    "r" => Prot::READ,
                    "rw" => Prot::READ | Prot::WRITE,
                    _ => Prot::empty(),
                };
                match mm.mprotect(ARENA + num(1) * P, num(2) * P, prot) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("errno {}", e.code()),
                }
            }
            "l" => {
                // RLIMIT_STACK is the process's: a new limit for the rest
                // of the script (the tunables are fixed at build time, so
                // the script starts with it).
                assert!(steps.is_empty(), "l: first in a script");
                cfg.stack_rlimit = num(1);
                drop(cpu);
                mm = Arc::new(AddressSpace::builder().strategy(s).config(cfg.clone()).build());
                cpu = mm.cpu();
                "ok".to_string()
            }
            "w" | "r" => {
                let va = ARENA + num(1);
                let r = if f[0] == "w" { cpu.write(va, 1) } else { cpu.read(va).map(|_| ()) };
                match r {
                    Ok(()) => "ok".to_string(),
                    Err(AccessError::MapErr) => "maperr".to_string(),
                    Err(AccessError::AccErr) => "accerr".to_string(),
                    Err(e) => format!("{e:?}"),
                }
            }
            other => panic!("unknown op {other}"),
        };
        // smaps: each maps line, then its fields, the last `VmFlags:`.
        let mut lines = Vec::new();
        let mut cur: Option<(u64, u64, String)> = None;
        for l in mm.smaps().lines() {
            if let Some(flags) = l.strip_prefix("VmFlags:") {
                if let Some((a, b, perms)) = cur.take() {
                    lines.push((a, b, perms, modelled(flags.trim())));
                }
            } else if let Some((range, rest)) = l.split_once(' ') {
                let Some((a, b)) = range.split_once('-') else { continue };
                let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                    continue;
                };
                let in_arena = (ARENA..ARENA + (1 << 32)).contains(&a);
                cur = in_arena.then(|| ((a - ARENA) / P, (b - ARENA) / P, rest[..4].to_string()));
            }
        }
        steps.push((result, lines));
    }
    steps
}

fn page(p: u64) -> String {
    (p * P).to_string()
}

/// Runs `script` on the host and under every strategy and compares.
fn same_as_host(name: &str, script: &[String]) {
    let host = run_host(script);
    for s in Strategy::ALL {
        let ours = run_rcuvm(s, script);
        for (i, (h, o)) in host.iter().zip(&ours).enumerate() {
            assert_eq!(o, h, "{name}, {s}: step {i} ({}) differs from the host kernel", script[i]);
        }
    }
}

fn ops(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn stacks_grow_down_to_the_page_touched() {
    let (w303, w299, r290, w200, w199) =
        (page(303), (299 * P + 8).to_string(), page(290), page(200), (200 * P - 8).to_string());
    let script: Vec<String> =
        ["m:300:4:rw:g", &format!("w:{w303}"), &format!("w:{w299}"), &format!("r:{r290}")]
            .into_iter()
            .map(String::from)
            .chain([format!("w:{w200}"), format!("w:{w199}")])
            .collect();
    same_as_host("growth", &script);
}

#[test]
fn the_guard_gap_holds_only_below_an_accessible_vma() {
    let script = ops(&[
        // An accessible VMA 298 pages below: 255 pages above its end is
        // refused, 256 is not.
        "m:1000:2:rw:-",
        "m:1300:2:rw:g",
        &format!("w:{}", page(1257)),
        &format!("w:{}", page(1258)),
        // Read-only is accessible too.
        "m:6000:1:r:-",
        "m:6300:1:rw:g",
        &format!("r:{}", page(6256)),
        &format!("r:{}", page(6257)),
        // Below PROT_NONE, no gap: it grows to touch it.
        "m:2000:2:n:-",
        "m:2010:2:rw:g",
        &format!("w:{}", page(2002)),
        // Below another stack, no gap either.
        "m:3000:2:rw:g",
        "m:3010:2:rw:g",
        &format!("w:{}", page(3002)),
        // The first VMA above does not grow down: no growth, even with a
        // stack further up.
        "m:5000:2:rw:g",
        "m:5010:2:rw:-",
        &format!("w:{}", page(5005)),
    ]);
    same_as_host("guard gap", &script);
}

#[test]
fn a_write_below_a_read_only_stack_grows_it_then_faults() {
    let script = ops(&["m:4000:2:r:g", &format!("w:{}", page(3999)), &format!("r:{}", page(3998))]);
    same_as_host("read-only stack", &script);
}

#[test]
fn rlimit_stack_bounds_growth_to_the_page() {
    // 16 pages: the VMA of 4 may grow by 12, not 13.
    let script = ops(&["l:65536", "m:600:4:rw:g", &format!("w:{}", page(587)), &format!("w:{}", page(588))]);
    same_as_host("RLIMIT_STACK", &script);
}

#[test]
fn a_growth_refused_by_the_limit_still_gives_an_anon_vma() {
    // stack.rs G6: expand_downwards prepares the anon_vma before the
    // RLIMIT_STACK check, and with one, mprotect keeps VM_ACCOUNT (`ac`).
    // A growth refused by the guard gap gives none (checked before).
    let script = ops(&["l:65536", "m:600:4:rw:g", &format!("w:{}", page(587)), "p:600:4:r"]);
    same_as_host("refused by the limit, then mprotect", &script);
    let script = ops(&["m:1000:2:rw:-", "m:1300:2:rw:g", &format!("r:{}", page(1257)), "p:1300:2:r"]);
    same_as_host("refused by the gap, then mprotect", &script);
}

#[test]
fn placement_keeps_a_stacks_gap_past_a_dead_entry() {
    // Under rcu-dead the unmapped VMA just below the stack is a dead
    // entry: placement must look past it to the stack's guard gap (a
    // review found a hint honoured 2 pages under the stack).
    let script = ops(&["m:1300:2:rw:g", "m:1298:2:rw:-", "u:1298:2"]);
    let host = run_host(&script);
    for s in Strategy::ALL {
        let ours = run_rcuvm(s, &script);
        assert_eq!(ours, host, "{s}");
    }
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
        let rw = Prot::READ | Prot::WRITE;
        mm.mmap(ARENA + 1300 * P, 2 * P, rw, flags | MapFlags::FIXED | MapFlags::GROWSDOWN, None, 0).unwrap();
        mm.mmap(ARENA + 1298 * P, 2 * P, rw, flags | MapFlags::FIXED, None, 0).unwrap();
        mm.munmap(ARENA + 1298 * P, 2 * P).unwrap();
        let a = mm.mmap(ARENA + 1296 * P, 2 * P, rw, flags, None, 0).unwrap();
        let gap = mm.config().stack_guard_gap;
        assert!(
            a + 2 * P <= ARENA + 1300 * P - gap || a > ARENA + 1302 * P,
            "{s}: placed at {a:#x}, in the stack's gap"
        );
    }
}

#[test]
fn a_stack_grows_over_a_range_just_unmapped() {
    // Under rcu-dead the unmapped range is a dead entry: the growth waits
    // for its grace period (stack.rs G4) and the old page's data is gone.
    let script = ops(&[
        "m:7290:4:rw:-",
        &format!("w:{}", page(7291)),
        "m:7300:4:rw:g",
        "u:7290:4",
        &format!("r:{}", page(7291)),
        &format!("w:{}", page(7290)),
    ]);
    same_as_host("over an unmapped range", &script);
}

#[test]
fn growth_gives_fresh_zeroed_memory_and_keeps_data_above() {
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let top = 0x5000_0000_0000u64;
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED | MapFlags::GROWSDOWN;
        mm.mmap(top, 2 * P, Prot::READ | Prot::WRITE, flags, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(top + 8, 11).unwrap();
        assert_eq!(cpu.read(top - 3 * P), Ok(0), "{s}: grown memory reads as zeroes");
        cpu.write(top - 3 * P, 22).unwrap();
        assert_eq!((cpu.read(top + 8), cpu.read(top - 3 * P)), (Ok(11), Ok(22)), "{s}");
        let v = mm.vmas().into_iter().find(|v| v.end == top + 2 * P).unwrap();
        assert_eq!((v.start, v.pgoff), (top - 3 * P, (top - 3 * P) >> 12), "{s}: pgoff follows the start");
        assert!(v.anon_vma.is_some() || v.anon().is_some(), "{s}");
        // Far below the limit (8 MiB): SIGSEGV, nothing changes.
        assert_eq!(cpu.read(top - (9 << 20)), Err(AccessError::MapErr), "{s}");
        assert_eq!(mm.vmas().len(), 1, "{s}");
    }
}

#[test]
fn concurrent_faults_grow_one_stack_consistently() {
    for s in Strategy::ALL.into_iter().filter(|s| s.is_safe()) {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let top = 0x5000_0000_0000u64;
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED | MapFlags::GROWSDOWN;
        mm.mmap(top, P, Prot::READ | Prot::WRITE, flags, None, 0).unwrap();
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let mm = mm.clone();
                std::thread::spawn(move || {
                    let mut cpu = mm.cpu();
                    // Thread t writes every other page, downwards.
                    for i in 0..200u64 {
                        let va = top - (2 * i + t + 1) * P;
                        cpu.write(va, va).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut cpu = mm.cpu();
        for i in 1..=400u64 {
            assert_eq!(cpu.read(top - i * P), Ok(top - i * P), "{s}: page {i} below");
        }
        let vmas = mm.vmas();
        assert_eq!(vmas.len(), 1, "{s}: one stack VMA");
        assert_eq!((vmas[0].start, vmas[0].end), (top - 400 * P, top + P), "{s}");
    }
}

#[test]
fn growth_over_a_dead_entry_survives_its_reaping() {
    // rcu-dead: the unmapped range below the stack is a dead entry until a
    // grace period passes and an mm call (or the reaper) erases it. Growth
    // must reap it first (stack.rs G4); were it only overwritten, the
    // reaping would later erase the grown stack's lower part.
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    let rw = Prot::READ | Prot::WRITE;
    let base = 0x5000_0000_0000u64;
    mm.mmap(base, 4 * P, rw, flags, None, 0).unwrap();
    mm.mmap(base + 10 * P, 4 * P, rw, flags | MapFlags::GROWSDOWN, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(base + P, 1).unwrap();
    mm.munmap(base, 4 * P).unwrap();
    cpu.write(base + P, 2).unwrap();
    // Let every grace period pass and mm calls reap what expired.
    for _ in 0..4 {
        mm.domain().barrier();
        let a = mm.mmap(0, P, rw, MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
        mm.munmap(a, P).unwrap();
    }
    let stack = mm.vmas().into_iter().find(|v| v.flags.contains(rcuvm::VmFlags::GROWSDOWN)).unwrap();
    assert_eq!((stack.start, stack.end), (base + P, base + 14 * P), "the grown stack is whole");
    assert_eq!(cpu.read(base + P), Ok(2), "and keeps what was written");
}

#[test]
fn a_nested_access_does_not_grow_a_stack() {
    // fault.rs FL8: inside another CPU's access (or a guard of the VMA
    // domain) a growth would wait for that very section; the nested access
    // gets SIGSEGV and nothing panics (it reported a misplaced mm call).
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let top = 0x5000_0000_0000u64;
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let rw = Prot::READ | Prot::WRITE;
        mm.mmap(top, P, rw, flags | MapFlags::GROWSDOWN, None, 0).unwrap();
        let other = mm.mmap(0, P, rw, MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
        let (mut c1, mut c2) = (mm.cpu(), mm.cpu());
        let mut nested = None;
        c1.access(other, true, |_| nested = Some(c2.write(top - P, 7))).unwrap();
        assert_eq!(nested, Some(Err(AccessError::MapErr)), "{s}");
        {
            let _g = mm.domain().read();
            assert_eq!(c2.write(top - P, 7), Err(AccessError::MapErr), "{s}");
        }
        assert_eq!(mm.vmas().iter().find(|v| v.end == top + P).unwrap().start, top, "{s}: not grown");
        // Outside, it grows.
        assert_eq!(c2.write(top - P, 7), Ok(()), "{s}");
    }
}
