//! Slipway's artifacts: deterministic archives with an embedded manifest, inspection of
//! archives and distribution packages, safe unpacking, digests, minisign signatures and
//! signed release manifests; config templates rendered per environment with secrets kept
//! as references; dependency resolution; backward-compatibility checks of APIs and
//! migrations.
//!
//! Architecture invariant: this crate reads and writes files but never touches the
//! network, spawns no processes and never reads the clock; callers pass times in.

pub mod archive;
pub mod artifacts;
pub mod bundle;
pub mod checks;
pub mod compat;
pub mod deps;
pub mod digest;
pub mod error;
mod fsread;
pub mod image;
pub mod inspect;
pub mod manifest;
pub mod oci;
pub mod render;
pub mod sign;
pub mod unpack;

pub use archive::{
    ArchiveManifest, BuildOptions, BuiltArchive, Compression, build_archive, build_archive_with,
};
pub use artifacts::{ArtifactVerified, artifact_revisions, check_artifacts, verify_artifact};
pub use checks::{CheckFacts, PlanChecks, plan_checks};
pub use deps::{Conflict, LockedVersion, Resolution, VersionLock, VersionSource, resolve};
pub use digest::{parse_sha256, sha256_file, verify_digest};
pub use error::{Error, ErrorClass, Result};
pub use image::{BuiltImage, ImageOptions, build_image};
pub use inspect::{PackageFormat, PackageInfo, inspect};
pub use manifest::{
    ManifestArtifact, ReleaseManifest, VerifiedManifest, sign_manifest, verify_manifest,
};
pub use render::{
    EnvFileResolver, Problem, Redactor, RenderOptions, RenderedFile, ResolvedSecrets, SecretMode,
    SecretRef, SecretResolver, Severity, check_placeholders, render_environment, resolve_secrets,
};
pub use sign::{
    GeneratedKey, PublicKey, SecretKey, Verified, generate_keypair, sign, sign_to, verify,
};
pub use unpack::{Limits, Unpacked, unpack};

/// The largest text file (an OpenAPI document, a migration) read whole for a check.
pub(crate) const MAX_TEXT_INPUT: u64 = 64 * 1024 * 1024;
