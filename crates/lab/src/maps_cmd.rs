//! `rcuvm maps PATH [--smaps]`: what rcuvm shows as `/proc/pid/maps` (or
//! smaps) for a snapshot file, or for a replay case after its trace.
//!
//! # Invariants
//! - MC1. Exit 0 with the text printed; 2 when the input cannot be read or
//!   parsed (the message names the file and line). A case whose replay
//!   diverged is still shown (`rcuvm replay` judges it), with a note.

use rcuvm::AddressSpace;
use rcuvm::replay::{Case, replay};

use crate::args::MapsArgs;

/// Runs the command; returns the exit code (MC1).
pub fn run(a: &MapsArgs) -> i32 {
    let mm = if a.path.is_dir() {
        let r = Case::load(&a.path)
            .map_err(|e| e.to_string())
            .and_then(|c| replay(&c).map_err(|e| e.to_string()));
        match r {
            Ok(r) => {
                if !r.disagreements.is_empty() {
                    eprintln!(
                        "note: {} calls got another result than the kernel's (see rcuvm replay)",
                        r.disagreements.len()
                    );
                }
                r.mm
            }
            Err(e) => {
                eprintln!("rcuvm maps: {e}");
                return 2;
            }
        }
    } else {
        let text = match rcuvm::replay::read_input(&a.path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("rcuvm maps: {}: {e}", a.path.display());
                return 2;
            }
        };
        match AddressSpace::from_maps(&text, &a.path.display().to_string()) {
            Ok(mm) => mm,
            Err(e) => {
                eprintln!("rcuvm maps: {e}");
                return 2;
            }
        }
    };
    print!("{}", if a.smaps { mm.smaps() } else { mm.maps() });
    let total: u64 = mm.vmas().iter().map(|v| v.len()).sum();
    eprintln!("{} VMAs, {} KiB mapped", mm.map_count(), total >> 10);
    0
}
