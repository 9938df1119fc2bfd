//! Helpers shared by the integration tests: running real tools and listing trees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a real tool, failing the test with the apt package to install when it is missing.
pub fn run(program: &str, apt_package: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install it with `apt-get install -y {apt_package}`")
        })
}

/// Runs a real tool and asserts it succeeded.
pub fn run_ok(program: &str, apt_package: &str, args: &[&str], cwd: &Path) -> Output {
    let out = run(program, apt_package, args, cwd);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every path under `root`, relative and sorted, so tests can assert a tree exactly.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub fn write(path: &Path, content: &[u8]) -> PathBuf {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
    path.to_owned()
}
