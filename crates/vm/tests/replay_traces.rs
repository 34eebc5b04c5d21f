//! The shared traces replay page-exactly: every call gets the kernel's
//! result (the same address, the same errno) and every page of `end.maps`
//! has the same prot, sharing, path and offset here.

use std::path::PathBuf;

#[path = "common/traces.rs"]
mod traces;

use rcuvm::replay::{Case, replay};

#[test]
fn shared_traces_replay_page_exact() {
    let dir = traces::traces_dir();
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 3, "expected the three shared traces in {}", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let c = Case::load(case).unwrap_or_else(|e| panic!("{e}"));
        let r = replay(&c).unwrap();
        let cmp = r.compare(&c.end);
        println!(
            "{name}: {} calls applied, results {}/{} agree, errno {}/{}, pages {} of {} differ, lines: {}/{} identical",
            r.applied,
            r.applied - r.disagreements.len(),
            r.applied,
            r.errno_agreed,
            r.kernel_failed,
            cmp.pages_differing,
            cmp.pages_end,
            cmp.lines_identical,
            cmp.lines_end,
        );
        for d in r.disagreements.iter().take(5) {
            println!("  line {}: {}: kernel {:?}, rcuvm {:?}", d.line, d.op, d.kernel, d.rcuvm);
        }
        for d in cmp.diffs.iter().take(5) {
            println!("  {:x}-{:x}: rcuvm {:?}\n      end.maps {:?}", d.start, d.end, d.ours, d.theirs);
        }
        assert_eq!(r.applied, c.calls.len());
        if !r.disagreements.is_empty() || !cmp.page_exact() {
            failures.push(name);
        }
    }
    assert!(failures.is_empty(), "diverged: {failures:?}");
}
