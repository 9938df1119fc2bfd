//! Processes a test starts, stopped when the test ends however it ends: an assertion that
//! fails unwinds through these guards, so a failing test leaves no `slipway deploy` driving
//! in the background and no service instance serving on a port.
//!
//! - [`Reaped`]: a child of the test (a background `slipway deploy`), killed and waited
//!   for when dropped.
//! - [`SweepCwd`]: every process whose working directory is under a directory (the
//!   instances a target started there, which are not the test's own `Child`ren to hold),
//!   killed when dropped.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped, unless it has exited
/// already. Derefs to the [`Child`], so a test waits, kills or polls it as before.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Reaped {
    /// [`Child::wait_with_output`] for a guarded child, which cannot be moved out of its
    /// guard: stdin closed, stdout and stderr read to their ends (stderr on a thread, so
    /// a child filling one pipe cannot block on the other), then the exit status.
    pub fn wait_with_output(&mut self) -> std::io::Result<Output> {
        use std::io::Read as _;
        drop(self.0.stdin.take());
        let stderr = self.0.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).map(|_| buf)
            })
        });
        let mut stdout = Vec::new();
        if let Some(o) = self.0.stdout.as_mut() {
            o.read_to_end(&mut stdout)?;
        }
        let stderr = match stderr {
            Some(t) => t
                .join()
                .map_err(|_| std::io::Error::other("the stderr reader panicked"))??,
            None => Vec::new(),
        };
        let status = self.0.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl From<Child> for Reaped {
    fn from(child: Child) -> Self {
        Reaped(child)
    }
}

impl Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        // Reaped: no zombie left behind, whether it exited by itself or was killed.
        let _ = self.0.wait();
    }
}

/// Kills (SIGKILL), when dropped, every process whose working directory is `dir` or below
/// it — the instances a process target started with `dir` as their workdir — and waits
/// until each is gone or a zombie (its parent reaps it: the test's runtime, or init once
/// the test binary exits). Declare it after the directory's owner so it is dropped first.
#[derive(Debug)]
pub struct SweepCwd {
    dir: PathBuf,
}

impl SweepCwd {
    /// A guard for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        // /proc shows the canonical path; a temp dir may be reached through a symlink.
        let dir = dir.canonicalize().unwrap_or(dir);
        SweepCwd { dir }
    }

    /// The pids of the processes whose working directory is under the directory now.
    pub fn pids(&self) -> Vec<u32> {
        processes_under(&self.dir)
    }
}

impl Drop for SweepCwd {
    fn drop(&mut self) {
        let pids = processes_under(&self.dir);
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Processes (other than this one) whose working directory is `dir` or below it (a
/// deleted one too: /proc shows it as `PATH (deleted)`).
fn processes_under(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            let cwd = cwd.to_str()?;
            let cwd = Path::new(cwd.strip_suffix(" (deleted)").unwrap_or(cwd));
            (pid != me && cwd.starts_with(dir)).then_some(pid)
        })
        .collect()
}

/// Running (neither gone nor a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
