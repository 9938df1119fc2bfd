//! The `slipway` binary as tests run it: a cleared environment (no `SLIPWAY_*` of the
//! developer's shell leaks into a test), a fixed `PATH`, and the test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's target directory's `slipway` binary (built by `cargo test`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_slipway") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target")
                .to_path_buf()
        });
    target.join("debug").join("slipway")
}

/// `slipway` in `dir`, with only `PATH`, `HOME` and `USER` from this process.
pub fn slipway(dir: &Path) -> Command {
    let mut c = Command::new(binary());
    c.env_clear().current_dir(dir);
    for k in ["PATH", "HOME", "USER"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}
