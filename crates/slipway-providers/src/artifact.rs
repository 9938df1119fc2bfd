//! `VerifyArtifact` steps: the install-time half of "integrity before promotion". The plan
//! checked the artifact when it was made; this target checks it again immediately before
//! the service's install steps run, so an artifact swapped or edited between `slipway plan`
//! and `slipway deploy` is refused. A refusal is a failed step, so the engine journals it
//! (with both digests) and it lands in the audit chain.
//!
//! The check changes nothing, so `apply` and `observe` are the same check and `undo` has
//! nothing to reverse.

use std::path::PathBuf;

use slipway_engine::{
    Applied, BoxFuture, Observation, StepContext, StepOutput, Target, TargetError,
};
use slipway_model::plan::StepAction;
use slipway_package::{ArtifactVerified, Error as PackageError, verify_artifact};

/// Verifies artifacts against the plan's digest and trusted keys.
pub struct ArtifactTarget {
    /// Where the plan's relative paths resolve: the spec file's directory.
    base: PathBuf,
    /// Content-addressed store every verified artifact is kept in (`sha256/<digest>`), so
    /// rolling back to this release never depends on fetching or rebuilding anything.
    store: Option<PathBuf>,
}

/// Where an artifact with this digest lives in a content-addressed store.
pub fn stored_path(store: &std::path::Path, sha256: &str) -> PathBuf {
    store.join("sha256").join(sha256.to_ascii_lowercase())
}

/// Copy a verified artifact (and its signature) into the store, atomically: a crash leaves
/// either nothing or the whole file under its digest, never a partial one. An OCI layout
/// is kept as a directory holding exactly the files of the verified image.
fn keep(
    store: &std::path::Path,
    base: &std::path::Path,
    path: &str,
    sha256: &str,
    signature: Option<&str>,
    layout_files: &[PathBuf],
) -> std::io::Result<PathBuf> {
    let dest = stored_path(store, sha256);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let copy = |from: &std::path::Path, to: &std::path::Path| -> std::io::Result<()> {
        let tmp = to.with_extension("partial");
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, to)
    };
    if !dest.exists() && layout_files.is_empty() {
        copy(&base.join(path), &dest)?;
    } else if !dest.exists() {
        let tmp = dest.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        for rel in layout_files {
            let to = tmp.join(rel);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(base.join(path).join(rel), &to)?;
            std::fs::File::open(&to)?.sync_all()?;
        }
        std::fs::rename(tmp, &dest)?;
    }
    if let Some(sig) = signature {
        let sig_dest = dest.with_extension("minisig");
        if !sig_dest.exists() {
            copy(&base.join(sig), &sig_dest)?;
        }
    }
    Ok(dest)
}

impl ArtifactTarget {
    /// A target resolving artifact, signature and key paths against `base` (the directory
    /// of the spec file, as the plan's paths are relative to it).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            store: None,
        }
    }

    /// Keep every verified artifact in this content-addressed store.
    pub fn with_store(mut self, store: impl Into<PathBuf>) -> Self {
        self.store = Some(store.into());
        self
    }

    async fn check(&self, action: &StepAction) -> Result<ArtifactVerified, TargetError> {
        let StepAction::VerifyArtifact {
            path,
            sha256,
            signature,
            keys,
        } = action
        else {
            return Err(TargetError::Unsupported {
                target: "artifact",
                action: slipway_engine::target::action_kind(action),
            });
        };
        let base = self.base.clone();
        let (path, sha256, signature, keys) = (
            path.clone(),
            sha256.clone(),
            signature.clone(),
            keys.clone(),
        );
        // Hashing a large artifact is blocking file IO; keep it off the runtime's workers.
        let res = tokio::task::spawn_blocking(move || {
            // No keys in the plan means signatures are not required in this environment.
            let trusted = (!keys.is_empty()).then_some(keys.as_slice());
            verify_artifact(&base, &path, &sha256, signature.as_deref(), trusted)
        })
        .await
        .map_err(|e| TargetError::Io(format!("artifact verification task failed: {e}")))?;
        res.map_err(|e| {
            let stderr = match &e {
                PackageError::DigestMismatch {
                    expected, actual, ..
                } => format!("expected sha256 {expected}\nactual sha256 {actual}\n"),
                _ => String::new(),
            };
            TargetError::Failed {
                message: format!("refused to install: failed to {e}"),
                output: StepOutput {
                    exit_code: None,
                    stdout: String::new(),
                    stderr,
                    truncated: false,
                },
            }
        })
    }
}

fn describe(v: &ArtifactVerified) -> String {
    let mut s = format!(
        "{}: expected sha256 {}, actual sha256 {}",
        v.path.display(),
        v.expected_sha256,
        v.actual_sha256
    );
    if let Some(k) = &v.key_id {
        s.push_str(&format!("; signed by trusted key {k}"));
    }
    s
}

impl Target for ArtifactTarget {
    fn kind(&self) -> &'static str {
        "artifact"
    }

    fn apply<'a>(
        &'a self,
        _ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let v = self.check(action).await?;
            let mut stdout = describe(&v);
            if let (
                Some(store),
                StepAction::VerifyArtifact {
                    path,
                    sha256,
                    signature,
                    ..
                },
            ) = (&self.store, action)
            {
                let kept = keep(
                    store,
                    &self.base,
                    path,
                    sha256,
                    signature.as_deref(),
                    &v.layout_files,
                )
                .map_err(|e| {
                    TargetError::Io(format!(
                        "keep {path} in the artifact store {}: {e}",
                        store.display()
                    ))
                })?;
                stdout.push_str(&format!("; kept as {}", kept.display()));
            }
            Ok(Applied::Ran {
                output: StepOutput {
                    exit_code: Some(0),
                    stdout,
                    stderr: String::new(),
                    truncated: false,
                },
            })
        })
    }

    fn observe<'a>(
        &'a self,
        _ctx: &'a StepContext,
        action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Observation, TargetError>> {
        // A verification has no lasting effect to observe: after a restart, re-check, so a
        // file swapped while the orchestrator was down is still caught.
        Box::pin(async move {
            match self.check(action).await {
                Ok(v) => Ok(Observation::Done {
                    evidence: describe(&v),
                }),
                Err(TargetError::Failed { message, .. }) => {
                    Ok(Observation::NotDone { evidence: message })
                }
                Err(e) => Err(e),
            }
        })
    }

    fn undo<'a>(
        &'a self,
        _ctx: &'a StepContext,
        _action: &'a StepAction,
    ) -> BoxFuture<'a, Result<Option<StepOutput>, TargetError>> {
        Box::pin(async { Ok(None) })
    }
}
