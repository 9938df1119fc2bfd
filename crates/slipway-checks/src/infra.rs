//! Infrastructure files: declared IaC paths must be tracked and clean in git (no
//! uncommitted or untracked changes), their content digest is recorded (sha256 over the
//! tracked files, path and bytes, in path order), and a declared validation command must
//! exit 0.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{Outcome, Verdict};

fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = slipway_stdx::command("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Check one declared path (a file or directory, relative to `repo`).
pub fn check_path(repo: &Path, path: &str) -> Verdict {
    let started = Instant::now();
    let row = |o, m: String| Verdict::new("infra.files", path, o, m, "committed, clean", started);
    let files = match git(repo, &["ls-files", "-z", "--", path]) {
        Ok(f) => f,
        Err(e) => {
            return row(Outcome::Fail, format!("not a git work tree: {e}"))
                .hint("keep infrastructure files in the git repository of the spec");
        }
    };
    let mut files: Vec<&str> = files.split('\0').filter(|f| !f.is_empty()).collect();
    if files.is_empty() {
        return row(Outcome::Fail, "not tracked by git".into()).hint(format!(
            "`git add {path} && git commit`: declared infrastructure must be versioned"
        ));
    }
    match git(
        repo,
        &["status", "--porcelain", "--untracked-files=all", "--", path],
    ) {
        Ok(s) if !s.trim().is_empty() => {
            let changed: Vec<&str> = s.lines().take(5).map(str::trim).collect();
            return row(
                Outcome::Fail,
                format!("uncommitted changes: {}", changed.join(", ")),
            )
            .hint(format!(
                "commit or revert the changes under {path} before deploying"
            ));
        }
        Ok(_) => {}
        Err(e) => return row(Outcome::Fail, format!("git status failed: {e}")),
    }
    files.sort_unstable();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.as_bytes());
        h.update([0]);
        match std::fs::read(repo.join(f)) {
            Ok(bytes) => h.update(&bytes),
            Err(e) => return row(Outcome::Fail, format!("read {f}: {e}")),
        }
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let commit = git(repo, &["log", "-1", "--format=%h", "--", path]).unwrap_or_default();
    row(
        Outcome::Pass,
        format!(
            "{} file(s) at commit {}, sha256 {}",
            files.len(),
            commit.trim(),
            &digest[..16]
        ),
    )
}

/// Run the declared validation command (`sh -c`) in `repo`, bounded by `timeout`.
pub async fn validate(repo: &Path, command: &str, timeout: Duration) -> Verdict {
    let started = Instant::now();
    let row = |o, m: String| Verdict::new("infra.validate", command, o, m, "exit 0", started);
    let child = slipway_stdx::tokio_command("sh")
        .arg("-c")
        .arg(command)
        .current_dir(repo)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => row(
            Outcome::Fail,
            format!("still running after {} ms", timeout.as_millis()),
        )
        .hint("the validation hangs; make it non-interactive or raise the timeout"),
        Ok(Err(e)) => row(Outcome::Fail, format!("could not start: {e}")),
        Ok(Ok(o)) if o.status.success() => row(Outcome::Pass, "exit 0".into()),
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            row(
                Outcome::Fail,
                format!("exit {}: {}", o.status.code().unwrap_or(-1), last.trim()),
            )
            .hint("fix what the validation reports, commit, and check again")
        }
    }
}
