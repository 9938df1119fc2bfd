//! The `exec` target: steps are `sh -c` commands on this machine, with Ansible-like
//! idempotency guards (`creates:` path, `unless:` command), bounded output capture, a
//! timeout that kills the whole process group, and an `undo:` command for rollback.
//!
//! Exactly-once across orchestrator crashes. Each attempt runs under `flock` on a lock file
//! of its (run, idempotency key), and the shell that holds the lock first checks the step's
//! completion marker, runs the command, and writes the marker when it exits 0. Killing
//! slipway does not kill that shell (it has its own process group), so an attempt in
//! flight finishes on its own; `observe` waits for the lock before looking, and a
//! re-applied step whose marker appeared meanwhile is a no-op decided under the lock. A
//! step therefore runs at most once per run, unless its command itself is killed (by its
//! timeout) — then it is re-applied, and its guards are what make that safe.
//!
//! Environment: unlike the `process` target's instances and proxies (which start from a
//! cleared environment, see [`crate::process`]), a step inherits `slipway`'s environment.
//! Steps are install commands the operator runs through `slipway deploy`, for the length
//! of the step, and they legitimately need the operator's credentials (an `aws s3 cp`, a
//! package registry login); `secret://env/NAME` values reach them this way, and what they
//! print passes through the [`Redactor`] before it is journaled. A step that starts a
//! long-running program hands it that environment on purpose: use `env -i` in the step to
//! start it clean.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use slipway_engine::target::action_kind;
use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::duration::parse_duration;
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

/// The wrapper: under the lock, skip if the marker exists; else run and mark on success.
const WRAPPER: &str = r#"if [ -e "$1" ]; then echo "$3" >&2; exit 0; fi
sh -c "$2"
rc=$?
if [ "$rc" -eq 0 ]; then : > "$1"; fi
exit "$rc""#;

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
    async fn run_redacted(&self, c: Command, timeout: Duration) -> Result<StepOutput, TargetError> {
        let redact = |o: StepOutput| StepOutput {
            stdout: self.redactor.redact(&o.stdout),
            stderr: self.redactor.redact(&o.stderr),
            ..o
        };
        match run(c, timeout).await {
            Ok(o) => Ok(redact(o)),
            Err(TargetError::Failed { message, output }) => Err(TargetError::Failed {
                message: self.redactor.redact(&message),
                output: redact(output),
            }),
            Err(e) => Err(e),
        }
    }

    /// Timeout of steps that set none.
    pub fn with_default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    fn paths(&self, ctx: &StepContext) -> (PathBuf, PathBuf) {
        let dir = self.state_dir.join(&ctx.run_id);
        (
            dir.join(format!("{}.lock", ctx.key)),
            dir.join(format!("{}.done", ctx.key)),
        )
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
            Some(t) => parse_duration(t).map_err(|e| {
                TargetError::Io(format!("read timeout `{t}` of step `{}`: {e}", step.name))
            }),
        }
    }

    fn command(&self, ctx: &StepContext, program: &str) -> Command {
        let mut c = Command::new(program);
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
            let mut c = self.command(ctx, "sh");
            c.arg("-c").arg(cmd);
            let out = self.run_redacted(c, self.timeout(step)?).await?;
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

/// Run a command to completion or timeout, capturing bounded output.
async fn run(mut c: Command, timeout: Duration) -> Result<StepOutput, TargetError> {
    let mut child = c
        .spawn()
        .map_err(|e| TargetError::Io(format!("start `sh`: {e}")))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let out = tokio::spawn(async move {
        match out {
            Some(o) => tail(o, OUTPUT_LIMIT).await,
            None => (Vec::new(), false),
        }
    });
    let err = tokio::spawn(async move {
        match err {
            Some(e) => tail(e, OUTPUT_LIMIT).await,
            None => (Vec::new(), false),
        }
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => Some(s.map_err(|e| TargetError::Io(format!("wait for `sh`: {e}")))?),
        Err(_) => {
            if let Some(pid) = child.id() {
                // The group id is the child's pid (process_group(0)).
                let _ = Command::new("kill")
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
    let (o, ot) = out.await.unwrap_or_default();
    let (e, et) = err.await.unwrap_or_default();
    let output = StepOutput {
        exit_code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
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
            let (lock, marker) = self.paths(ctx);
            if let Some(dir) = lock.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
            }
            let mut c = self.command(ctx, "flock");
            c.arg(&lock)
                .arg("sh")
                .arg("-c")
                .arg(WRAPPER)
                .arg("slipway-step")
                .arg(&marker)
                .arg(&step.run)
                .arg(MARKER_SENTINEL);
            let out = self.run_redacted(c, self.timeout(step)?).await?;
            if out.exit_code == Some(0) && out.stderr.trim_end() == MARKER_SENTINEL {
                return Ok(Applied::AlreadyDone {
                    guard: format!(
                        "completion marker {} of an earlier attempt",
                        marker.display()
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
            let (lock, marker) = self.paths(ctx);
            if lock.exists() {
                // An attempt of a dead orchestrator may still be running: wait for it to
                // release the lock before judging.
                let l = lock.clone();
                let waited = tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&l)?;
                    f.lock()?;
                    f.unlock()
                })
                .await
                .map_err(|e| TargetError::Io(format!("wait for the step lock: {e}")))?;
                waited.map_err(|e| io("lock", &lock, e))?;
            }
            if marker.exists() {
                return Ok(Observation::Done {
                    evidence: format!(
                        "completion marker {} exists: an earlier attempt finished",
                        marker.display()
                    ),
                });
            }
            if let Some(guard) = self.guard(ctx, step).await? {
                return Ok(Observation::Done { evidence: guard });
            }
            Ok(Observation::NotDone {
                evidence: "no completion marker, and no creates/unless guard shows it done".into(),
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
            let mut c = self.command(ctx, "sh");
            c.arg("-c").arg(cmd);
            let out = self.run_redacted(c, self.timeout(step)?).await?;
            if out.exit_code != Some(0) {
                return Err(TargetError::Failed {
                    message: format!("undo `{cmd}` exited with {:?}", out.exit_code),
                    output: out,
                });
            }
            let (_, marker) = self.paths(ctx);
            if let Err(e) = std::fs::remove_file(&marker)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io("remove", &marker, e));
            }
            Ok(Some(out))
        })
    }
}
