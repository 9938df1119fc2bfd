//! Integrity of a release's artifacts before promotion: each service's `artifact` must be
//! the file that was built (its sha256 equals the spec's) and, where signatures are
//! required, signed by a trusted key. The same check runs at plan time (as findings, so
//! `slipway plan` blocks) and at install time (the providers' verify-artifact target calls
//! [`verify_artifact`] immediately before the install), so a file swapped between plan and
//! deploy is still refused.
//!
//! An artifact may be an OCI image layout directory: its sha256 is the image manifest's
//! digest, every blob is checked ([`crate::oci`]), and its signature is over the manifest
//! blob. At plan time each artifact is also **inspected**: one in a package format
//! (deb, rpm, MSI, Slipway archive, tarball, OCI layout) must parse, and its own metadata
//! must name the service (or `artifact.name`) and the version the release ships. Under
//! `signature: required`, a service that runs commands (`steps:`, `run:`) without an
//! artifact is refused: nothing signed says what those commands install.

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
    /// For an OCI layout, the files the image consists of (relative to it), which a copy
    /// of the artifact must keep; empty for a file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layout_files: Vec<PathBuf>,
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
    let (actual, signed, layout_files) = if file.is_dir() {
        let image = match crate::oci::verify_layout(&file, Some(&expected)) {
            Ok(image) => image,
            // Not in the layout: say which image it holds instead.
            Err(Error::Inspect { reason, .. }) if reason.starts_with("no manifest") => {
                let first = crate::oci::verify_layout(&file, None)?;
                return Err(Error::DigestMismatch {
                    path: file,
                    expected,
                    actual: first.manifest_digest,
                });
            }
            Err(e) => return Err(e),
        };
        (image.manifest_digest, image.manifest_path, image.files)
    } else {
        (sha256_file(&file)?, file.clone(), Vec::new())
    };
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
            Some(sign::verify(&signed, &base.join(sig), &keys)?.key_id)
        }
    };
    Ok(ArtifactVerified {
        path: file,
        expected_sha256: expected,
        actual_sha256: actual,
        key_id,
        layout_files,
    })
}

/// Plan-time check of every service artifact of `spec`, as plan findings (all `error`:
/// the install would be refused). `trusted_keys` is the plan's signature gate's keys when
/// the plan has one (`Plan::signature_keys`), `None` when signatures are not required.
///
/// Codes: `artifact-missing`, `artifact-digest-invalid`, `artifact-digest-mismatch`,
/// `artifact-unsigned`, `artifact-signature-invalid`, `artifact-untrusted-key`,
/// `artifact-unverifiable` (a key or signature file that cannot be read or parsed),
/// `artifact-unparseable` (a package that does not parse: cut short, corrupt),
/// `artifact-identity` (its own metadata names another package or version),
/// `executable-unsigned` (signatures required, a service runs commands without an
/// artifact).
pub fn check_artifacts(
    spec: &ReleaseSpec,
    spec_dir: &Path,
    trusted_keys: Option<&[String]>,
) -> Vec<Finding> {
    let error = |code: &str, message: String| Finding {
        severity: slipway_model::plan::FindingSeverity::Error,
        code: code.to_owned(),
        message,
    };
    let mut findings = Vec::new();
    for (name, svc) in &spec.services {
        let Some(a) = &svc.artifact else {
            if trusted_keys.is_some() && (svc.run.is_some() || !svc.steps.is_empty()) {
                let what = match &svc.run {
                    Some(r) => format!("runs `{}`", r.command),
                    None => format!(
                        "runs {} install step{} (`{}`…)",
                        svc.steps.len(),
                        if svc.steps.len() == 1 { "" } else { "s" },
                        svc.steps[0].run
                    ),
                };
                findings.push(error(
                    "executable-unsigned",
                    format!(
                        "service `{name}` {what} but has no artifact: this environment requires signatures (`signature: required`), and nothing signed says what those commands install. Package what it runs as an artifact and sign it (`slipway package sign`), then set services.{name}.artifact {{ path, sha256, signature }}"
                    ),
                ));
            }
            continue;
        };
        let verified = verify_artifact(
            spec_dir,
            &a.path,
            &a.sha256,
            a.signature.as_deref(),
            trusted_keys,
        );
        let e = match verified {
            Ok(_) => {
                findings.extend(identity(spec, name, spec_dir));
                continue;
            }
            Err(e) => e,
        };
        let code = match &e {
            Error::Io { path, .. } if *path == spec_dir.join(&a.path) => "artifact-missing",
            Error::InvalidDigest { .. } => "artifact-digest-invalid",
            Error::DigestMismatch { .. } => "artifact-digest-mismatch",
            Error::Unsigned { .. } => "artifact-unsigned",
            Error::BadSignature { .. } => "artifact-signature-invalid",
            Error::UntrustedKey { .. } => "artifact-untrusted-key",
            Error::Inspect { .. } => "artifact-unparseable",
            _ => "artifact-unverifiable",
        };
        findings.push(error(
            code,
            format!("service `{name}` (services.{name}.artifact): failed to {e}"),
        ));
    }
    findings
}

/// The source commit each service's artifact records (OCI `image.revision`, RPM VCS tag),
/// for the plan's release-tag check (`slipway_model::plan::Facts::artifact_revisions`).
/// Artifacts that cannot record one, or do not parse, are left out.
pub fn artifact_revisions(
    spec: &ReleaseSpec,
    spec_dir: &Path,
) -> std::collections::BTreeMap<String, String> {
    spec.services
        .iter()
        .filter_map(|(name, svc)| {
            let path = spec_dir.join(&svc.artifact.as_ref()?.path);
            let can_record = path.is_dir() || path.extension().is_some_and(|e| e == "rpm");
            if !can_record {
                return None;
            }
            let rev = crate::inspect::inspect(&path).ok()?.revision?;
            Some((name.clone(), rev))
        })
        .collect()
}

/// Whether an artifact file claims to be a package (by its name or its first bytes), so
/// that failing to parse it is a finding. Other files (a binary, a jar) are only hashed.
fn claims_a_package(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let by_name = [
        ".deb", ".rpm", ".msi", ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz",
    ]
    .iter()
    .any(|ext| name.ends_with(ext));
    let mut head = [0u8; 262];
    let n = crate::fsread::open_regular(path)
        .ok()
        .and_then(|(mut f, _)| std::io::Read::read(&mut f, &mut head).ok())
        .unwrap_or(0);
    let head = &head[..n];
    by_name
        || head.starts_with(b"!<arch>\n")
        || head.starts_with(&[0xed, 0xab, 0xee, 0xdb])
        || head.starts_with(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1])
        || (head.len() >= 262 && &head[257..262] == b"ustar")
}

/// The artifact of service `name`, inspected: a package that does not parse, or whose own
/// metadata names another package or version, as findings.
fn identity(spec: &ReleaseSpec, name: &str, spec_dir: &Path) -> Vec<Finding> {
    let Some(svc) = spec.services.get(name) else {
        return Vec::new();
    };
    let Some(a) = &svc.artifact else {
        return Vec::new();
    };
    let path = spec_dir.join(&a.path);
    if !path.is_dir() && !claims_a_package(&path) {
        return Vec::new();
    }
    let info = match crate::inspect::inspect(&path) {
        Ok(info) => info,
        Err(e) => {
            return vec![Finding {
                severity: slipway_model::plan::FindingSeverity::Error,
                code: "artifact-unparseable".to_owned(),
                message: format!(
                    "service `{name}` (services.{name}.artifact): failed to {e}; a package that does not parse is refused at plan time rather than failing on the hosts: rebuild or fetch it again (its sha256 matched, so the spec names the broken file too)"
                ),
            }];
        }
    };
    let mut out = Vec::new();
    let expected_name = a.name.as_deref().unwrap_or(name);
    if let Some(found) = &info.name
        && !found.eq_ignore_ascii_case(expected_name)
    {
        out.push(Finding {
            severity: slipway_model::plan::FindingSeverity::Error,
            code: "artifact-identity".to_owned(),
            message: format!(
                "service `{name}`: {} is the {} package `{found}`, not `{expected_name}`: it is another package. Point services.{name}.artifact.path at the right one, or, if `{found}` is this service's package name, set services.{name}.artifact.name: {found}",
                a.path, info.format
            ),
        });
    }
    let expected_version = svc.version.as_deref().unwrap_or(&spec.metadata.version);
    if let Some(found) = &info.version
        && !version_matches(info.format, found, expected_version)
    {
        out.push(Finding {
            severity: slipway_model::plan::FindingSeverity::Error,
            code: "artifact-identity".to_owned(),
            message: format!(
                "service `{name}`: {} says it is version {found}, but this release ships `{name}` {expected_version} ({}): build the artifact of {expected_version}, or correct the version",
                a.path,
                if svc.version.is_some() {
                    format!("services.{name}.version")
                } else {
                    "metadata.version".to_owned()
                }
            ),
        });
    }
    out
}

/// Whether a package's own version is the release's: an epoch (`1:`) and a leading `v` are
/// ignored; a deb or rpm may add its packaging revision (`2.4.0-1`, `~` for a pre-release);
/// an MSI's `major.minor.build` may add zero components (`2.4.0.0`).
pub fn version_matches(format: crate::inspect::PackageFormat, found: &str, expected: &str) -> bool {
    use crate::inspect::PackageFormat as F;
    let strip = |v: &str| -> String {
        let v = match v.split_once(':') {
            Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => rest,
            _ => v,
        };
        v.strip_prefix('v').unwrap_or(v).to_owned()
    };
    let (found, expected) = (strip(found), strip(expected));
    if found == expected {
        return true;
    }
    match format {
        F::Deb | F::Rpm => {
            found
                .rsplit_once('-')
                .is_some_and(|(upstream, _)| upstream.replace('~', "-") == expected)
                || found.replace('~', "-") == expected
        }
        F::Msi => {
            let parts =
                |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
            match (parts(&found), parts(&expected)) {
                (Some(mut a), Some(mut b)) => {
                    let n = a.len().max(b.len());
                    a.resize(n, 0);
                    b.resize(n, 0);
                    a == b
                }
                _ => false,
            }
        }
        _ => false,
    }
}
