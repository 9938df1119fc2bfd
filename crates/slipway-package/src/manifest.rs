//! Signed release manifests: one JSON document binding a release's name, version and the
//! name and SHA-256 of every artifact, signed like an artifact.
//!
//! Verifying the manifest's signature and then each artifact against it means an artifact
//! of release A cannot be slipped into release B, even when both are signed by the same key.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{parse_sha256, sha256_file};
use crate::error::{Error, Result};
use crate::sign::{self, PublicKey, SecretKey, Verified};

/// The `schema` value of manifests this version writes and reads.
pub const RELEASE_MANIFEST_SCHEMA: &str = "slipway.release-manifest/v1";

/// Manifests are small; a bigger file is refused before it is read into memory.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// The signed document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub schema: String,
    pub release: String,
    pub version: String,
    /// Sorted by name, names unique.
    pub artifacts: Vec<ManifestArtifact>,
}

/// One artifact of the release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestArtifact {
    /// The artifact's file name, without directories: where it is stored may differ
    /// between build and install.
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

impl ReleaseManifest {
    /// Builds the manifest of `release` `version` from the artifact files, hashing each.
    /// Names are file names and must be unique.
    pub fn from_artifacts(release: &str, version: &str, artifacts: &[PathBuf]) -> Result<Self> {
        let mut entries: Vec<ManifestArtifact> = Vec::with_capacity(artifacts.len());
        for path in artifacts {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Manifest {
                    path: path.clone(),
                    reason: "the artifact path has no UTF-8 file name".to_owned(),
                })?
                .to_owned();
            if entries.iter().any(|e| e.name == name) {
                return Err(Error::Manifest {
                    path: path.clone(),
                    reason: format!(
                        "two artifacts are named '{name}'; artifact file names must be unique within a release"
                    ),
                });
            }
            let size = std::fs::metadata(path)
                .map_err(|e| Error::io("read", path, e))?
                .len();
            entries.push(ManifestArtifact {
                name,
                sha256: sha256_file(path)?,
                size,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ReleaseManifest {
            schema: RELEASE_MANIFEST_SCHEMA.to_owned(),
            release: release.to_owned(),
            version: version.to_owned(),
            artifacts: entries,
        })
    }

    /// The canonical JSON text (pretty, trailing newline): what gets signed.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|_| unreachable!("manifest fields always serialise"));
        text.push('\n');
        text
    }

    fn parse(data: &[u8], path: &Path) -> Result<Self> {
        let manifest: ReleaseManifest =
            serde_json::from_slice(data).map_err(|e| Error::Manifest {
                path: path.to_owned(),
                reason: format!("it is not a release manifest ({e})"),
            })?;
        if manifest.schema != RELEASE_MANIFEST_SCHEMA {
            return Err(Error::Manifest {
                path: path.to_owned(),
                reason: format!(
                    "its schema is '{}', this version reads '{RELEASE_MANIFEST_SCHEMA}'",
                    manifest.schema
                ),
            });
        }
        for a in &manifest.artifacts {
            parse_sha256(&a.sha256).map_err(|_| Error::Manifest {
                path: path.to_owned(),
                reason: format!(
                    "artifact '{}' has a malformed sha256 '{}'",
                    a.name, a.sha256
                ),
            })?;
        }
        Ok(manifest)
    }
}

/// Writes `manifest` to `out` and its signature to `out.minisig`; returns the signature
/// path. The trusted comment names the release so `minisign -V` shows it too.
pub fn sign_manifest(
    manifest: &ReleaseManifest,
    out: &Path,
    secret_key: &SecretKey,
) -> Result<PathBuf> {
    let json = manifest.to_json();
    let comment = format!(
        "slipway release manifest {} {} ({} artifacts)",
        manifest.release,
        manifest.version,
        manifest.artifacts.len()
    );
    // Sign the exact bytes that are written, not a re-read of the file.
    let signature = sign::sign_bytes(json.as_bytes(), out, secret_key, &comment)?;
    sign::write_replace(out, json.as_bytes())?;
    let sig_path = sign::signature_path(out);
    sign::write_replace(&sig_path, signature.as_bytes())?;
    Ok(sig_path)
}

/// A manifest whose signature was verified.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    pub manifest: ReleaseManifest,
    pub signature: Verified,
    pub path: PathBuf,
}

impl VerifiedManifest {
    /// Checks that `artifact` is part of the release (by file name) and has exactly the
    /// recorded digest; returns the manifest entry.
    pub fn check_artifact(&self, artifact: &Path) -> Result<&ManifestArtifact> {
        let name = artifact
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let entry = self
            .manifest
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::NotInManifest {
                artifact: artifact.to_owned(),
                manifest: self.path.clone(),
                release: format!("{} {}", self.manifest.release, self.manifest.version),
                known: self
                    .manifest
                    .artifacts
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let actual = sha256_file(artifact)?;
        // Parsing succeeded when the manifest was read, so this normalises the case only.
        let expected = parse_sha256(&entry.sha256)?;
        if actual != expected {
            return Err(Error::ManifestMismatch {
                artifact: artifact.to_owned(),
                manifest: self.path.clone(),
                release: format!("{} {}", self.manifest.release, self.manifest.version),
                expected,
                actual,
            });
        }
        Ok(entry)
    }
}

/// Verifies the manifest's signature against the trusted keys, then every artifact in
/// `artifacts` against the manifest. The manifest is read once into memory so the bytes
/// verified are the bytes parsed.
pub fn verify_manifest(
    manifest: &Path,
    signature: &Path,
    trusted_public_keys: &[PublicKey],
    artifacts: &[PathBuf],
) -> Result<VerifiedManifest> {
    let file = crate::fsread::open_regular(manifest)?.0;
    let mut data = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read", manifest, e))?;
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::Manifest {
            path: manifest.to_owned(),
            reason: format!("it is larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    let sig_text = sign::read_signature(signature)?;
    let verified = sign::verify_bytes(&data, manifest, &sig_text, signature, trusted_public_keys)?;
    let verified = VerifiedManifest {
        manifest: ReleaseManifest::parse(&data, manifest)?,
        signature: verified,
        path: manifest.to_owned(),
    };
    for artifact in artifacts {
        verified.check_artifact(artifact)?;
    }
    Ok(verified)
}
