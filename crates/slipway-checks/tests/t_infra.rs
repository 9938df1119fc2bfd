//! Infrastructure files in a real git repository: clean and committed passes with a
//! digest; an uncommitted edit and an untracked path fail; a validation command passes
//! or fails by its exit code.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::infra::{check_path, validate};

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q"]);
    std::fs::create_dir_all(d.path().join("infra")).unwrap();
    std::fs::write(d.path().join("infra/main.tf"), "resource \"x\" \"y\" {}\n").unwrap();
    git(d.path(), &["add", "infra"]);
    git(d.path(), &["commit", "-q", "-m", "infra"]);
    d
}

#[test]
fn committed_clean_files_pass_with_a_digest_and_edits_fail() {
    let d = repo();
    let v = check_path(d.path(), "infra");
    assert_eq!(v.verdict, Outcome::Pass, "{v:?}");
    assert!(
        v.measured.contains("1 file(s)") && v.measured.contains("sha256"),
        "{v:?}"
    );
    let digest = v.measured.clone();
    std::fs::write(d.path().join("infra/main.tf"), "changed\n").unwrap();
    let v = check_path(d.path(), "infra");
    assert_eq!(v.verdict, Outcome::Fail, "{v:?}");
    assert!(v.measured.contains("infra/main.tf"), "{v:?}");
    // Committing the change passes again, with another digest.
    git(d.path(), &["commit", "-q", "-am", "change"]);
    let v = check_path(d.path(), "infra");
    assert_eq!(v.verdict, Outcome::Pass);
    assert_ne!(v.measured, digest);
    // A new, untracked file under the path is uncommitted work too.
    std::fs::write(d.path().join("infra/new.tf"), "x\n").unwrap();
    assert_eq!(check_path(d.path(), "infra").verdict, Outcome::Fail);
    assert_eq!(check_path(d.path(), "missing").verdict, Outcome::Fail);
}

#[tokio::test]
async fn the_validation_command_decides_by_exit_code() {
    let d = repo();
    let ok = validate(
        d.path(),
        "grep -q resource infra/main.tf",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(ok.verdict, Outcome::Pass, "{ok:?}");
    let bad = validate(
        d.path(),
        "echo 'main.tf:1: unknown block' >&2; exit 3",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(bad.verdict, Outcome::Fail);
    assert!(
        bad.measured.contains("exit 3") && bad.measured.contains("unknown block"),
        "{bad:?}"
    );
}
