//! Where the shared traces are, for every test that reads them (vm's and,
//! through `#[path]`, the lab's): `RCUVM_TRACES`, else `shared/traces`
//! beside the repository (both crates sit at the same depth).

use std::path::PathBuf;

/// The traces' directory.
///
/// # Panics
/// If it is missing, naming it and the variable that moves it.
pub fn traces_dir() -> PathBuf {
    let dir = std::env::var_os("RCUVM_TRACES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces"),
        PathBuf::from,
    );
    assert!(
        dir.is_dir(),
        "{} is missing: the shared traces sit beside the repository (or set RCUVM_TRACES)",
        dir.display()
    );
    dir
}
