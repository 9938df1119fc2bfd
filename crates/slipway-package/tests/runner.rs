//! Integration tests of slipway-package, one binary (see TESTING.md). Tests that need a
//! real tool (`minisign`, `dpkg-deb`, `rpmbuild`) fail with the apt package to install
//! rather than skip, so a missing tool is never mistaken for a pass.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
// Helpers outside #[test] functions are test code too: a failed setup step should panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod ref_openapi_diff;
mod reference;
mod test_archive;
mod test_compat_openapi;
mod test_compat_sql;
mod test_deps;
mod test_digest;
mod test_fuzz;
mod test_image;
mod test_inspect;
mod test_locks;
mod test_manifest;
mod test_render;
mod test_sign;
mod test_supply;
mod test_unpack;

#[test]
fn every_test_file_is_listed_in_the_runner() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let runner = std::fs::read_to_string(dir.join("runner.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "runner") {
            assert!(
                runner.contains(&format!("mod {module};")),
                "tests/{name} is not listed in tests/runner.rs"
            );
        }
    }
}
