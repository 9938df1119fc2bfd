//! Integrity of a release's artifacts before promotion: each service's `artifact` must be
//! the file that was built (its sha256 equals the spec's) and, where signatures are
//! required, signed by a trusted key. The same check runs at plan time (as findings, so
//! `slipway plan` blocks) and at install time (the providers' verify-artifact target calls
//! [`verify_artifact`] immediately before the install), so a file swapped between plan and
//! deploy is still refused.

use std::path::{Path, PathBuf};

use slipway_model::plan::Finding;
use slipway_model::spec::ReleaseSpec;

use crate::digest::{parse_sha256, sha256_file};
use crate::error::{Error, Result};
use crate::sign::{self, PublicKey};

/// What a successful artifact verification proves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactVerified {
    /// The artifact file, as resolved.
    pub path: PathBuf,
    /// The sha256 the spec (and plan) expects, normalised.
    pub expected_sha256: String,
    /// The sha256 the file has now (equal to `expected_sha256`).
    pub actual_sha256: String,
    /// The trusted key that signed it, when a signature was checked.
    pub key_id: Option<String>,
}

/// Verifies one artifact. `base` is the directory relative paths resolve against (the
/// spec's directory); `trusted_keys` is `Some` when signatures are required (key file
/// paths, relative to `base`), `None` when they are not, in which case no signature is
/// read at all.
///
/// The digest is checked first so a tampered file is reported as such (with both digests)
/// even when its signature would also fail.
pub fn verify_artifact(
    base: &Path,
    path: &str,
    expected_sha256: &str,
    signature: Option<&str>,
    trusted_keys: Option<&[String]>,
) -> Result<ArtifactVerified> {
    let file = base.join(path);
    let expected = parse_sha256(expected_sha256)?;
    let actual = sha256_file(&file)?;
    if actual != expected {
        return Err(Error::DigestMismatch {
            path: file,
            expected,
            actual,
        });
    }
    let key_id = match trusted_keys {
        None => None,
        Some(keys) => {
            let Some(sig) = signature else {
                return Err(Error::Unsigned { file });
            };
            let keys = keys
                .iter()
                .map(|k| PublicKey::from_file(&base.join(k)))
                .collect::<Result<Vec<_>>>()?;
            Some(sign::verify(&file, &base.join(sig), &keys)?.key_id)
        }
    };
    Ok(ArtifactVerified {
        path: file,
        expected_sha256: expected,
        actual_sha256: actual,
        key_id,
    })
}

/// Plan-time check of every service artifact of `spec`, as plan findings (all `error`:
/// the install would be refused). `trusted_keys` is the plan's signature gate's keys when
/// the plan has one (`Plan::signature_keys`), `None` when signatures are not required.
///
/// Codes: `artifact-missing`, `artifact-digest-invalid`, `artifact-digest-mismatch`,
/// `artifact-unsigned`, `artifact-signature-invalid`, `artifact-untrusted-key`,
/// `artifact-unverifiable` (a key or signature file that cannot be read or parsed).
pub fn check_artifacts(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    trusted_keys: Option<&[String]>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (name, svc) in &spec.services {
        let Some(a) = &svc.artifact else {
            continue;
        };
        let Err(e) = verify_artifact(
            spec_dir,
            &a.path,
            &a.sha256,
            a.signature.as_deref(),
            trusted_keys,
        ) else {
            continue;
        };
        let code = match &e {
            Error::Io { path, .. } if *path == spec_dir.join(&a.path) => "artifact-missing",
            Error::InvalidDigest { .. } => "artifact-digest-invalid",
            Error::DigestMismatch { .. } => "artifact-digest-mismatch",
            Error::Unsigned { .. } => "artifact-unsigned",
            Error::BadSignature { .. } => "artifact-signature-invalid",
            Error::UntrustedKey { .. } => "artifact-untrusted-key",
            _ => "artifact-unverifiable",
        };
        findings.push(Finding {
            severity: "error".to_owned(),
            code: code.to_owned(),
            message: format!("service `{name}` (services.{name}.artifact): failed to {e}"),
        });
    }
    findings
}
