//! The `exec` target: steps are `sh -c` commands on this machine, with Ansible-like
//! idempotency guards (`creates:` path, `unless:` command), bounded output capture, a
//! timeout that kills the whole process group, and an `undo:` command for rollback.
//!
//! Exactly-once across orchestrator crashes. Each attempt runs under `flock -o` (the lock
//! held by flock for the command's life, not inherited by what the command starts in the
//! background) on a lock file of its (run, idempotency key), and the shell that holds the lock first checks the step's
//! completion marker, records that an attempt started (`<key>.run`), runs the command, and
//! writes the marker when it exits 0 (or its exit status into `<key>.run` when not).
//! Killing slipway does not kill that shell (it has its own process group, and its output
//! goes to files in the state directory, which slipway reads once it exits — never to a
//! pipe, whose closing would kill a command printing after its effect with SIGPIPE), so an
//! attempt in flight finishes on its own; `observe` waits for the lock before looking, and
//! a re-applied step whose marker appeared meanwhile is a no-op decided under the lock. A
//! step therefore runs at most once per run.
//!
//! An attempt that started but recorded no end — no marker and an empty `<key>.run` once
//! the lock is free: its shell was killed, or the marker could not be written because the
//! disk went read-only or full after the effect — is neither done nor not done. `observe`
//! says so as an error, and the engine records the step failed instead of re-applying it
//! blindly (a guard that shows it done still wins).
//!
//! Undo gets the same treatment: `undo:` runs under the same lock, in the same wrapper,
//! with `<key>.undone` as its completion marker and `<key>.undo.run` as its attempt
//! record, so an undo interrupted by a crash is never run twice (`observe_undo` waits for
//! it and reads the marker) nor beside a running apply of the step.
//!
//! Output: an apply writes to `<key>.apply.out|err`, an undo to `<key>.undo.out|err` (mode
//! 0600, since a step may print a secret it was given), of which the last
//! [`OUTPUT_LIMIT`] bytes are kept — redacted first, then cut, reading as far back as the
//! longest secret so one straddling the cut is masked whole; the files are emptied once
//! read. A step
//! printing gigabytes needs that much room in the state directory while it runs, and a
//! step printing after its effect into a full disk fails there (as any write would).
//!
//! Environment: unlike the `process` target's instances and proxies (which start from a
//! cleared environment, see [`crate::process`]), a step inherits `slipway`'s environment.
//! Steps are install commands the operator runs through `slipway deploy`, for the length
//! of the step, and they legitimately need the operator's credentials (an `aws s3 cp`, a
//! package registry login); `secret://env/NAME` values reach them this way, and what they
//! print passes through the [`Redactor`] before it is journaled. A step that starts a
//! long-running program hands it that environment on purpose: use `env -i` in the step to
//! start it clean.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use slipway_engine::target::action_kind;
use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::plan::StepAction;
use slipway_model::spec::ExecStep;
use slipway_package::Redactor;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Bytes of stdout and of stderr kept per command (the tail).
pub const OUTPUT_LIMIT: usize = 8 * 1024;

/// Default step timeout when neither the step nor the target sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the wrapper shell prints when the completion marker already exists.
const MARKER_SENTINEL: &str = "slipway: completion marker present, nothing to do";

/// What the wrapper shell prints when the undo's completion marker already exists.
const UNDONE_SENTINEL: &str = "slipway: undo completion marker present, nothing to do";

/// The wrapper run under the lock, for an apply and for an undo alike: `$1` completion
/// marker, `$2` command, `$3` sentinel, `$4` attempt record. Skip if the marker exists;
/// else record the start (refusing to run when even that cannot be written: nothing
/// could tell afterwards whether it ran), run, and mark success or record the failure.
/// Only shell builtins besides the command: a process start is paid per step.
const WRAPPER: &str = r#"if [ -e "$1" ]; then echo "$3" >&2; exit 0; fi
if ! : > "$4"; then echo "slipway: cannot write $4, so the command was not started" >&2; exit 75; fi
sh -c "$2"
rc=$?
if [ "$rc" -eq 0 ]; then
  : > "$1" || echo "slipway: the command succeeded but its completion marker $1 could not be written" >&2
else
  echo "$rc" > "$4"
fi
exit "$rc""#;

/// The files of one step's apply or undo in the run's state directory.
struct StepFiles {
    lock: PathBuf,
    marker: PathBuf,
    record: PathBuf,
}

/// Runs steps as shell commands on this machine.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    workdir: PathBuf,
    state_dir: PathBuf,
    default_timeout: Duration,
    /// Known secret values masked in captured output before it reaches the journal.
    redactor: Redactor,
    /// The environment's rendered-config root (`crate::config`): a step of service S sees
    /// `SLIPWAY_CONFIG_DIR=<root>/S` when that directory exists.
    config_root: Option<PathBuf>,
}

impl ExecTarget {
    /// Commands run in `workdir`; locks and completion markers live under `state_dir`
    /// (by default `.slipway/exec` beside the store).
    pub fn new(workdir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            workdir: workdir.into(),
            state_dir: state_dir.into(),
            default_timeout: DEFAULT_TIMEOUT,
            redactor: Redactor::default(),
            config_root: None,
        }
    }

    /// Steps of a service whose config was rendered under `root` get its directory as
    /// `SLIPWAY_CONFIG_DIR`.
    pub fn with_config_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.config_root = Some(root.into());
        self
    }

    /// Masks these secret values in every captured stdout/stderr. A step may print a
    /// secret it was given through its environment; what the target returns is journaled
    /// and audited, and neither may hold a secret (ARCHITECTURE.md, slipway-package).
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// [`run`], with the captured output (also of a failure) passed through the redactor.
    /// `files`: where the command's output goes (see [`run`]).
    async fn run_redacted(
        &self,
        c: Command,
        timeout: Duration,
        files: Option<(PathBuf, PathBuf)>,
    ) -> Result<StepOutput, TargetError> {
        // `run` redacts the output before it cuts it to the limit; the message is ours.
        match run(c, timeout, files, &self.redactor).await {
            Ok(o) => Ok(o),
            Err(TargetError::Failed { message, output }) => Err(TargetError::Failed {
                message: self.redactor.redact(&message),
                output,
            }),
            Err(e) => Err(e),
        }
    }

    /// Timeout of steps that set none.
    pub fn with_default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// The run's state directory.
    fn run_dir(&self, ctx: &StepContext) -> PathBuf {
        self.state_dir.join(&ctx.run_id)
    }

    /// Lock, completion marker and attempt record of the step's apply.
    fn apply_files(&self, ctx: &StepContext) -> StepFiles {
        let dir = self.run_dir(ctx);
        StepFiles {
            lock: dir.join(format!("{}.lock", ctx.key)),
            marker: dir.join(format!("{}.done", ctx.key)),
            record: dir.join(format!("{}.run", ctx.key)),
        }
    }

    /// The same for the step's undo; the lock is the apply's, so an undo never runs
    /// beside an attempt of the step.
    fn undo_files(&self, ctx: &StepContext) -> StepFiles {
        let dir = self.run_dir(ctx);
        StepFiles {
            lock: dir.join(format!("{}.lock", ctx.key)),
            marker: dir.join(format!("{}.undone", ctx.key)),
            record: dir.join(format!("{}.undo.run", ctx.key)),
        }
    }

    /// The output files of the step's apply or undo (`what`). One pair per step and
    /// kind, reused by a later attempt: that one starts only after `observe` waited for
    /// the earlier attempt's lock, so nothing still writes to them.
    fn output_files(&self, ctx: &StepContext, what: &str) -> (PathBuf, PathBuf) {
        let dir = self.run_dir(ctx);
        (
            dir.join(format!("{}.{what}.out", ctx.key)),
            dir.join(format!("{}.{what}.err", ctx.key)),
        )
    }

    /// Run `command` in the wrapper under the step's lock, its output in files.
    async fn wrapped(
        &self,
        ctx: &StepContext,
        files: &StepFiles,
        command: &str,
        sentinel: &str,
        what: &str,
        timeout: Duration,
    ) -> Result<StepOutput, TargetError> {
        if let Some(dir) = files.lock.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        }
        let mut c = self.command(ctx, "flock");
        // `-o`: the lock is held by flock itself while the command runs, never inherited:
        // a step that starts a long-running program (a service) must not keep its step
        // locked for that program's life, or its undo and every observation would wait
        // for it forever.
        c.arg("-o")
            .arg(&files.lock)
            .arg("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("slipway-step")
            .arg(&files.marker)
            .arg(command)
            .arg(sentinel)
            .arg(&files.record);
        self.run_redacted(c, timeout, Some(self.output_files(ctx, what)))
            .await
    }

    /// Wait until no attempt holds the step's lock (one started by a dead orchestrator may
    /// still run).
    async fn wait_for_attempts(&self, lock: &Path) -> Result<(), TargetError> {
        if !lock.exists() {
            return Ok(());
        }
        let l = lock.to_owned();
        let waited = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&l)?;
            f.lock()?;
            f.unlock()
        })
        .await
        .map_err(|e| TargetError::Io(format!("wait for the step lock: {e}")))?;
        waited.map_err(|e| io("lock", lock, e))
    }

    fn step<'a>(&self, action: &'a StepAction) -> Result<&'a ExecStep, TargetError> {
        match action {
            StepAction::Exec(s) => Ok(s),
            other => Err(TargetError::Unsupported {
                target: "exec",
                action: action_kind(other),
            }),
        }
    }

    fn timeout(&self, step: &ExecStep) -> Result<Duration, TargetError> {
        match &step.timeout {
            None => Ok(self.default_timeout),
            Some(t) => t.get().map_err(|e| {
                TargetError::Io(format!("read timeout `{t}` of step `{}`: {e}", step.name))
            }),
        }
    }

    fn command(&self, ctx: &StepContext, program: &str) -> Command {
        let mut c = slipway_stdx::tokio_command(program);
        c.current_dir(&self.workdir)
            .env("SLIPWAY_RUN_ID", &ctx.run_id)
            .env("SLIPWAY_STEP", &ctx.step_id)
            .env("SLIPWAY_STEP_KEY", &ctx.key)
            .env("SLIPWAY_ATTEMPT", ctx.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills every process the command started,
            // and a SIGKILL of slipway does not interrupt a step half-way.
            .process_group(0);
        if let Some(root) = &self.config_root {
            let service = ctx.step_id.split('/').next().unwrap_or(&ctx.step_id);
            let dir = crate::config::service_dir(root, service);
            if dir.is_dir() {
                c.env("SLIPWAY_CONFIG_DIR", dir);
            }
        }
        c
    }

    /// The guard that shows the step already done, if any.
    async fn guard(
        &self,
        ctx: &StepContext,
        step: &ExecStep,
    ) -> Result<Option<String>, TargetError> {
        if let Some(p) = &step.creates {
            let path = self.workdir.join(p);
            if path.exists() {
                return Ok(Some(format!("creates: {} exists", path.display())));
            }
        }
        if let Some(cmd) = &step.unless {
            // A guard only looks, so its output may go through a pipe: killing it with
            // slipway changes nothing.
            let mut c = self.command(ctx, "sh");
            c.arg("-c").arg(cmd);
            let out = self.run_redacted(c, self.timeout(step)?, None).await?;
            if out.exit_code == Some(0) {
                return Ok(Some(format!("unless: `{cmd}` exited 0")));
            }
        }
        Ok(None)
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> TargetError {
    TargetError::Io(format!("{what} {}: {e}", path.display()))
}

/// Keep the last `limit` bytes of a stream.
async fn tail<R: AsyncRead + Unpin>(mut r: R, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut truncated = false;
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            let cut = buf.len() - limit;
            buf.drain(..cut);
            truncated = true;
        }
    }
    (buf, truncated)
}

/// The last `limit` bytes of a file, and whether there was more; then empties the file
/// (emptied, not removed: the next attempt or undo of the step reuses it, and creating
/// files where many were just removed is slow on ext4, whose inode allocator then skips
/// recently deleted inodes: 14 % of a 100-step deploy's samples in a kernel profile here).
fn tail_file(path: &Path, limit: usize) -> (Vec<u8>, bool) {
    let read = || -> std::io::Result<(Vec<u8>, bool)> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = f.metadata()?.len();
        let keep = len.min(limit as u64);
        f.seek(SeekFrom::Start(len - keep))?;
        let mut buf = Vec::with_capacity(keep as usize);
        (&mut f).take(keep).read_to_end(&mut buf)?;
        // Best effort: a full file only costs room.
        let _ = f.set_len(0);
        Ok((buf, len > keep))
    };
    read().unwrap_or_default()
}

/// A new file for a command's output, readable by its owner only.
fn output_file(path: &Path) -> Result<std::fs::File, TargetError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create the output file", path, e))
}

/// Run a command to completion or timeout, capturing bounded output: through pipes, or —
/// for commands with effects, which must outlive slipway — into `files` (stdout, stderr),
/// read once it exits.
async fn run(
    mut c: Command,
    timeout: Duration,
    files: Option<(PathBuf, PathBuf)>,
    redactor: &Redactor,
) -> Result<StepOutput, TargetError> {
    // Read past the limit by the longest secret, so that one straddling the limit is
    // whole when it is masked (see `Redactor::redact_tail`).
    let keep = OUTPUT_LIMIT + redactor.tail_margin();
    if let Some((out, err)) = &files {
        c.stdout(output_file(out)?).stderr(output_file(err)?);
    }
    let mut child = c
        .spawn()
        .map_err(|e| TargetError::Io(format!("start `sh`: {e}")))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let out = tokio::spawn(async move {
        match out {
            Some(o) => tail(o, keep).await,
            None => (Vec::new(), false),
        }
    });
    let err = tokio::spawn(async move {
        match err {
            Some(e) => tail(e, keep).await,
            None => (Vec::new(), false),
        }
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => Some(s.map_err(|e| TargetError::Io(format!("wait for `sh`: {e}")))?),
        Err(_) => {
            if let Some(pid) = child.id() {
                // The group id is the child's pid (process_group(0)).
                let _ = slipway_stdx::tokio_command("kill")
                    .arg("-KILL")
                    .arg("--")
                    .arg(format!("-{pid}"))
                    .status()
                    .await;
            }
            let _ = child.kill().await;
            None
        }
    };
    let ((o, ot), (e, et)) = match &files {
        Some((out, err)) => (tail_file(out, keep), tail_file(err, keep)),
        None => (out.await.unwrap_or_default(), err.await.unwrap_or_default()),
    };
    let (stdout, ot) = redactor.redact_tail(&String::from_utf8_lossy(&o), ot, OUTPUT_LIMIT);
    let (stderr, et) = redactor.redact_tail(&String::from_utf8_lossy(&e), et, OUTPUT_LIMIT);
    let output = StepOutput {
        exit_code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        truncated: ot || et,
    };
    match status {
        Some(_) => Ok(output),
        None => Err(TargetError::Failed {
            message: format!(
                "time out after {}; the command's process group was killed",
                slipway_model::duration::format_duration(timeout)
            ),
            output,
        }),
    }
}

/// What the attempt record says once no attempt holds the lock and there is no completion
/// marker: `Err` when an attempt started and recorded no end (see the module doc).
fn attempt_ended(record: &Path, what: &str) -> Result<String, TargetError> {
    match std::fs::read_to_string(record) {
        Err(_) => Ok("no attempt started under the lock".into()),
        Ok(text) if text.trim().is_empty() => Err(TargetError::Io(format!(
            "an attempt of this {what} started ({} exists) and recorded no end: its shell was killed, or it finished but its completion marker could not be written (a full or read-only disk); whether it took effect is unknown, so slipway does not run it again — check it by hand",
            record.display()
        ))),
        Ok(text) => Ok(format!(
            "the last attempt exited with status {}",
            text.trim()
        )),
    }
}

impl Target for ExecTarget {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let step = self.step(action)?;
            if let Some(guard) = self.guard(ctx, step).await? {
                return Ok(Applied::AlreadyDone { guard });
            }
            let files = self.apply_files(ctx);
            let out = self
                .wrapped(
                    ctx,
                    &files,
                    &step.run,
                    MARKER_SENTINEL,
                    "apply",
                    self.timeout(step)?,
                )
                .await?;
            if out.exit_code == Some(0) && out.stderr.trim_end() == MARKER_SENTINEL {
                return Ok(Applied::AlreadyDone {
                    guard: format!(
                        "completion marker {} of an earlier attempt",
                        files.marker.display()
                    ),
                });
            }
            match out.exit_code {
                Some(0) => Ok(Applied::Ran { output: out }),
                Some(code) => Err(TargetError::Failed {
                    message: format!("`{}` exited with status {code}", step.run),
                    output: out,
                }),
                None => Err(TargetError::Failed {
                    message: format!("`{}` was killed by a signal", step.run),
                    output: out,
                }),
            }
        })
    }

    fn observe<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            let step = self.step(action)?;
            let files = self.apply_files(ctx);
            // An attempt of a dead orchestrator may still be running: wait for it to
            // release the lock before judging.
            self.wait_for_attempts(&files.lock).await?;
            if files.marker.exists() {
                return Ok(Observation::Done {
                    evidence: format!(
                        "completion marker {} exists: an earlier attempt finished",
                        files.marker.display()
                    ),
                });
            }
            if let Some(guard) = self.guard(ctx, step).await? {
                return Ok(Observation::Done { evidence: guard });
            }
            let attempt = attempt_ended(&files.record, "step")?;
            Ok(Observation::NotDone {
                evidence: format!(
                    "no completion marker, and no creates/unless guard shows it done ({attempt})"
                ),
            })
        })
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async move {
            let step = self.step(action)?;
            let Some(cmd) = &step.undo else {
                return Ok(None);
            };
            let files = self.undo_files(ctx);
            let out = self
                .wrapped(
                    ctx,
                    &files,
                    cmd,
                    UNDONE_SENTINEL,
                    "undo",
                    self.timeout(step)?,
                )
                .await?;
            if out.exit_code != Some(0) {
                return Err(TargetError::Failed {
                    message: format!("undo `{cmd}` exited with {:?}", out.exit_code),
                    output: out,
                });
            }
            let marker = self.apply_files(ctx).marker;
            if let Err(e) = std::fs::remove_file(&marker)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io("remove", &marker, e));
            }
            Ok(Some(out))
        })
    }

    fn observe_undo<'a>(
        &'a self,
        ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        Box::pin(async move {
            self.step(action)?;
            let files = self.undo_files(ctx);
            // An undo of a dead orchestrator may still be running: wait for it.
            self.wait_for_attempts(&files.lock).await?;
            if files.marker.exists() {
                return Ok(Observation::Done {
                    evidence: format!(
                        "undo completion marker {} exists: an earlier undo finished",
                        files.marker.display()
                    ),
                });
            }
            let attempt = attempt_ended(&files.record, "undo")?;
            Ok(Observation::NotDone {
                evidence: format!("no undo completion marker ({attempt})"),
            })
        })
    }
}
