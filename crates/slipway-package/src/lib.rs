//! Slipway's artifacts: deterministic archives with an embedded manifest, inspection of
//! archives and distribution packages, safe unpacking, digests, minisign signatures and
//! signed release manifests.
//!
//! Architecture invariant: this crate reads and writes files but never touches the
//! network, spawns no processes and never reads the clock; callers pass times in.

pub mod archive;
pub mod digest;
pub mod error;
pub mod inspect;
pub mod manifest;
pub mod sign;
pub mod unpack;

pub use archive::{
    ArchiveManifest, BuildOptions, BuiltArchive, Compression, build_archive, build_archive_with,
};
pub use digest::{parse_sha256, sha256_file, verify_digest};
pub use error::{Error, ErrorClass, Result};
pub use inspect::{PackageFormat, PackageInfo, inspect};
pub use manifest::{
    ManifestArtifact, ReleaseManifest, VerifiedManifest, sign_manifest, verify_manifest,
};
pub use sign::{
    GeneratedKey, PublicKey, SecretKey, Verified, generate_keypair, sign, sign_to, verify,
};
pub use unpack::{Limits, Unpacked, unpack};
