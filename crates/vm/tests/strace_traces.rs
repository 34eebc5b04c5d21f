//! The shared traces parse completely: every memory call of each log.

#[path = "common/traces.rs"]
mod traces;

#[test]
fn shared_traces_parse() {
    let dir = traces::traces_dir();
    let mut total = 0;
    for case in std::fs::read_dir(&dir).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let path = case.join("trace.strace");
        let text = std::fs::read_to_string(&path).unwrap();
        let calls = rcuvm::strace::parse(&text, &path.display().to_string()).unwrap();
        // Every line that completes a call is a call (no memory call is lost).
        let completed = text.lines().filter(|l| l.contains(" = ") && !l.contains(" = ?")).count();
        assert_eq!(calls.len(), completed, "{}", path.display());
        total += calls.len();
    }
    // The README's "calls" column (948, 3368, 1167) counts log lines, which
    // include the halves of split calls and a signal line: 922 + 3368 + 1118
    // calls complete.
    assert_eq!(total, 922 + 3368 + 1118);
}
