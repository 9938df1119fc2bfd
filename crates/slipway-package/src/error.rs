//! The one error type of this crate. Messages are lowercase fragments that read after
//! "failed to …", name the file involved and, where there is one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong while packaging, inspecting, unpacking, signing or
/// verifying. Use [`Error::class`] to map an error onto an exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "verify the digest of {path}: expected sha256 {expected}, found sha256 {actual}; the file \
         is not the one that was built: fetch or rebuild the artifact, or correct the digest"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "parse the sha256 digest '{value}': write it as 64 hexadecimal characters, optionally prefixed with 'sha256:'"
    )]
    InvalidDigest { value: String },

    #[error("read the key {path}: {reason}")]
    Key { path: PathBuf, reason: String },

    #[error(
        "write the key {path}: the file already exists; remove it or choose another path \
         (keys are never overwritten)"
    )]
    KeyExists { path: PathBuf },

    #[error("sign {path}: {reason}")]
    Sign { path: PathBuf, reason: String },

    #[error(
        "parse the signature {path}: {reason}; a minisign signature has four lines (untrusted \
         comment, signature, trusted comment, global signature): re-sign the file"
    )]
    SignatureFormat { path: PathBuf, reason: String },

    #[error(
        "verify {file}: the signature {signature} was made with key {key_id}, which is not trusted \
         (trusted: {trusted}); add that public key to the trusted keys if it is legitimate"
    )]
    UntrustedKey {
        file: PathBuf,
        signature: PathBuf,
        key_id: String,
        trusted: String,
    },

    #[error(
        "verify {file}: the signature {signature} (key {key_id}) does not match its content; the \
         file was modified after signing or the signature belongs to another file"
    )]
    BadSignature {
        file: PathBuf,
        signature: PathBuf,
        key_id: String,
    },

    #[error("read the release manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error(
        "verify {artifact} against the release manifest {manifest}: the manifest of release \
         {release} lists sha256 {expected} for this artifact, the file has sha256 {actual}; \
         artifacts cannot be mixed across releases: use the artifact built for this release"
    )]
    ManifestMismatch {
        artifact: PathBuf,
        manifest: PathBuf,
        /// Release name and version, e.g. `shop 2.4.0`.
        release: String,
        expected: String,
        actual: String,
    },

    #[error(
        "verify {artifact} against the release manifest {manifest}: no artifact of that name is \
         part of release {release} (it lists: {known})"
    )]
    NotInManifest {
        artifact: PathBuf,
        manifest: PathBuf,
        /// Release name and version, e.g. `shop 2.4.0`.
        release: String,
        known: String,
    },

    #[error("build the archive {path}: {reason}")]
    Build { path: PathBuf, reason: String },

    #[error("inspect {path}: {reason}")]
    Inspect { path: PathBuf, reason: String },

    #[error("unpack {archive}: entry '{entry}' {reason}; nothing was written to {dest}")]
    UnsafeEntry {
        archive: PathBuf,
        dest: PathBuf,
        entry: String,
        reason: String,
    },

    #[error("unpack {archive}: {reason}; nothing was written to {dest}")]
    Unpack {
        archive: PathBuf,
        dest: PathBuf,
        reason: String,
    },

    /// Config templates that cannot be rendered: undefined placeholders, syntax errors,
    /// unreadable templates or malformed secret references. Every problem is listed.
    #[error("render the config templates: {}", summarize(problems))]
    Placeholders {
        problems: Vec<crate::render::Problem>,
    },

    #[error("resolve the secret {reference}: {reason}")]
    Secret { reference: String, reason: String },

    #[error(
        "verify {file}: signatures are required here but the artifact has no signature; \
         sign it (`slipway sign {file}`) and set `signature:` on the service's artifact"
    )]
    Unsigned { file: PathBuf },

    #[error("read the OpenAPI document {path}: {reason}")]
    OpenApi { path: PathBuf, reason: String },

    #[error("read the migrations in {path}: {reason}")]
    Migrations { path: PathBuf, reason: String },
}

/// The first problem and how many more, so a one-line error still says where to look.
fn summarize(problems: &[crate::render::Problem]) -> String {
    match problems {
        [] => "no problems recorded".to_owned(),
        [one] => one.message.clone(),
        [first, rest @ ..] => format!("{} (and {} more)", first.message, rest.len()),
    }
}

/// How a caller should treat an error, e.g. to pick an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad input: a missing file, an unreadable key, a malformed signature or manifest.
    Input,
    /// Content does not match what was signed or recorded: a digest or signature mismatch.
    Tampered,
    /// A check refused the input: an untrusted key, an artifact outside the release, an
    /// unsafe archive.
    Refused,
}

impl Error {
    /// Classifies the error so a CLI can choose between "bad input", "tampered" and
    /// "refused" without matching on every variant.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::DigestMismatch { .. }
            | Error::BadSignature { .. }
            | Error::ManifestMismatch { .. } => ErrorClass::Tampered,
            Error::UntrustedKey { .. }
            | Error::Unsigned { .. }
            | Error::NotInManifest { .. }
            | Error::UnsafeEntry { .. }
            | Error::Unpack { .. } => ErrorClass::Refused,
            _ => ErrorClass::Input,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
