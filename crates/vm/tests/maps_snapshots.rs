//! Real snapshots round-trip through the parser, the address space and the
//! renderer unchanged: this process's own `/proc/self/maps`, and the start
//! and end snapshots of the traces in `../shared/traces/`.

use std::path::PathBuf;

use rcuvm::AddressSpace;

#[path = "common/traces.rs"]
mod common_traces;

fn traces() -> PathBuf {
    common_traces::traces_dir()
}

#[test]
fn own_proc_maps_round_trips() {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mm = AddressSpace::from_maps(&text, "/proc/self/maps").unwrap();
    assert_eq!(mm.maps(), text);
    // The gate area ([vsyscall]) is shown but not counted, as in Linux.
    let gate = text.lines().filter(|l| l.ends_with("[vsyscall]")).count();
    assert_eq!(mm.map_count(), text.lines().count() - gate);
}

#[test]
fn trace_snapshots_round_trip() {
    let mut n = 0;
    for case in std::fs::read_dir(traces()).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        for f in ["start.maps", "end.maps"] {
            let path = case.join(f);
            let text = std::fs::read_to_string(&path).unwrap();
            let mm = AddressSpace::from_maps(&text, &path.display().to_string()).unwrap();
            assert_eq!(mm.maps(), text, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 6, "expected the three shared cases, found {n} snapshots");
}

#[test]
fn query_finds_the_vma_and_nothing_in_holes() {
    let text = "00400000-00402000 r-xp 00000000 fe:00 42                                 /bin/x\n\
                00600000-00601000 rw-p 00000000 00:00 0                          [heap]\n";
    let mm = AddressSpace::from_maps(text, "inline").unwrap();
    let v = mm.query(0x401fff).unwrap();
    assert_eq!((v.start, v.end, v.pgoff), (0x400000, 0x402000, 0));
    assert!(mm.query(0x402000).is_none());
    assert_eq!(mm.query(0x600000).unwrap().name.as_deref(), Some("[heap]"));
    assert_eq!(mm.vmas().len(), 2);
}

#[test]
fn a_heap_split_in_three_keeps_its_name_on_every_line() {
    // mprotect inside the heap splits it; Linux names every piece [heap]
    // (start_brk is the first line's start, brk the last line's end).
    let text = "00400000-00401000 r--p 00000000 fe:00 7                                  /bin/x
01000000-01001000 rw-p 00000000 00:00 0                                  [heap]
01001000-01002000 r--p 00000000 00:00 0                                  [heap]
01002000-01003000 rw-p 00000000 00:00 0                                  [heap]
";
    let mm = AddressSpace::from_maps(text, "inline").unwrap();
    assert_eq!(mm.maps(), text);
    assert_eq!(mm.brk_range(), (0x1000000, 0x1003000));
}

#[test]
fn a_malformed_snapshot_names_file_and_line() {
    let text = "00400000-00402000 r-xp 00000000 fe:00 42 /bin/x\n00402000-00401000 r--p 0 00:00 0 \n";
    let e = AddressSpace::from_maps(text, "bad.maps").unwrap_err();
    assert_eq!(e.to_string().split(": ").next(), Some("bad.maps:2"));
}
