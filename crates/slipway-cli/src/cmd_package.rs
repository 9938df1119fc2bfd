//! `slipway key generate`, `slipway sign`, `slipway verify` and `slipway package
//! build|inspect`: thin wrappers over `slipway-package` that choose paths, read
//! passwords from the environment and map errors to exit codes.

use std::path::{Path, PathBuf};

use slipway_model::exit;
use slipway_package as pkg;

use crate::out::{CliError, Output, Style};

/// `slipway key …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generate an Ed25519 key pair in minisign's formats (the real `minisign` reads both).
    Generate(KeyGenerateArgs),
}

/// `slipway key generate`.
#[derive(Debug, clap::Args)]
pub struct KeyGenerateArgs {
    /// Where to write the secret key (never overwritten).
    #[arg(long, default_value = "slipway.key")]
    pub secret_key: PathBuf,
    /// Where to write the public key (never overwritten).
    #[arg(long, default_value = "slipway.pub")]
    pub public_key: PathBuf,
    /// Name of an environment variable holding the password that encrypts the secret key.
    #[arg(long, value_name = "VAR", conflicts_with = "unencrypted")]
    pub password_env: Option<String>,
    /// Write the secret key without a password (for automation, like `minisign -G -W`).
    #[arg(long)]
    pub unencrypted: bool,
}

/// `slipway sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The file to sign; the signature is written to FILE.minisig.
    pub file: PathBuf,
    /// The secret key.
    #[arg(long, short = 's', default_value = "slipway.key")]
    pub key: PathBuf,
    /// Name of an environment variable holding the secret key's password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// The trusted comment (signed with the file); default: minisign's timestamp and file name.
    #[arg(long, short = 't')]
    pub trusted_comment: Option<String>,
}

/// `slipway verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The file to verify.
    pub file: PathBuf,
    /// The signature (default: FILE.minisig).
    #[arg(long, short = 'x')]
    pub signature: Option<PathBuf>,
    /// A trusted public key file; repeat for several (key rotation).
    #[arg(long, short = 'p', required = true)]
    pub key: Vec<PathBuf>,
}

/// `slipway package …`.
#[derive(Debug, clap::Subcommand)]
pub enum PackageCommand {
    /// Build a deterministic archive (same input, same bytes) with an embedded manifest.
    Build(BuildArgs),
    /// Show name, version, architecture, dependencies and digest of a tarball, .deb, .rpm
    /// or OCI layout.
    Inspect(InspectArgs),
    /// Build a deterministic OCI image from a directory (its root file system), without a
    /// daemon: an OCI image layout, or an oci-archive when OUT ends in `.tar`. Prints the
    /// digest a spec's `artifact.sha256` takes (the manifest's for a layout, the file's for
    /// an archive); sign a layout with `slipway sign OUT/blobs/sha256/<manifest digest>`.
    Image(ImageArgs),
}

/// `slipway package image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The directory that becomes the image's root file system.
    pub dir: PathBuf,
    /// Image name (`org.opencontainers.image.title`).
    #[arg(long)]
    pub name: String,
    /// Image version (`org.opencontainers.image.version`).
    #[arg(long)]
    pub version: String,
    /// The entrypoint: the program, then its first arguments, each given once
    /// (`--entrypoint /bin/api --entrypoint serve`).
    #[arg(long, value_name = "ARG")]
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint (a container service's `run.command`
    /// replaces them), each given once.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// A variable of the image's environment, NAME=value; repeat for several.
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The source commit it is built from (`org.opencontainers.image.revision`).
    #[arg(long)]
    pub revision: Option<String>,
    /// Output: a directory to create (an OCI layout), or FILE.tar (an oci-archive).
    /// Default: NAME-VERSION.oci.
    #[arg(long, short = 'o', value_name = "OUT")]
    pub out: Option<PathBuf>,
}

/// `slipway package build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The directory to package.
    pub dir: PathBuf,
    /// Package name.
    #[arg(long)]
    pub name: String,
    /// Package version.
    #[arg(long)]
    pub version: String,
    /// Output file, .tar.gz or .tar.zst (default: NAME-VERSION.tar.gz).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `slipway package inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The package file, or OCI image layout directory.
    pub file: PathBuf,
}

/// Runs `slipway key …`.
pub fn key(command: KeyCommand, out: &Output) -> Result<i32, CliError> {
    let KeyCommand::Generate(a) = command;
    if a.password_env.is_none() && !a.unencrypted {
        return Err(CliError::input(
            "refusing to write a secret key without deciding on its protection",
            "pass --password-env VAR to encrypt it, or --unencrypted for automation",
        ));
    }
    let pw = crate::cli_util::password_from_env(a.password_env.as_deref())?;
    let generated = pkg::generate_keypair(&a.secret_key, &a.public_key, pw.as_deref())
        .map_err(|e| crate::cli_util::package_error(&e))?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "key_id": generated.key_id,
            "secret_key": generated.secret_key,
            "public_key": generated.public_key,
            "encrypted": generated.encrypted,
        }));
    } else {
        out.line(&format!(
            "generated key {} ({})",
            out.paint(&generated.key_id, Style::Bold),
            if generated.encrypted {
                "password-protected"
            } else {
                "unencrypted"
            }
        ));
        out.line(&format!("  secret key: {}", generated.secret_key.display()));
        out.line(&format!("  public key: {}", generated.public_key.display()));
    }
    Ok(exit::SUCCESS)
}

/// Runs `slipway sign`.
pub fn sign(a: SignArgs, out: &Output) -> Result<i32, CliError> {
    let pw = crate::cli_util::password_from_env(a.password_env.as_deref())?;
    let sk = pkg::SecretKey::from_file(&a.key, pw.as_deref())
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let comment = match a.trusted_comment {
        Some(c) => c,
        None => {
            let now = u64::try_from(slipway_stdx::now().as_second()).unwrap_or(0);
            pkg::sign::default_trusted_comment(&a.file, now)
        }
    };
    let sig = pkg::sign(&a.file, &sk, &comment).map_err(|e| crate::cli_util::package_error(&e))?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "file": a.file,
            "signature": sig,
            "key_id": sk.key_id(),
            "trusted_comment": comment,
        }));
    } else {
        out.line(&format!(
            "signed {} with key {} -> {}",
            a.file.display(),
            sk.key_id(),
            sig.display()
        ));
    }
    Ok(exit::SUCCESS)
}

/// Runs `slipway verify`.
pub fn verify(a: VerifyArgs, out: &Output) -> Result<i32, CliError> {
    let keys = a
        .key
        .iter()
        .map(|k| pkg::PublicKey::from_file(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let sig = a
        .signature
        .unwrap_or_else(|| pkg::sign::signature_path(&a.file));
    let verified =
        pkg::verify(&a.file, &sig, &keys).map_err(|e| crate::cli_util::package_error(&e))?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "file": a.file,
            "signature": sig,
            "key_id": verified.key_id,
            "trusted_comment": verified.trusted_comment,
        }));
    } else {
        out.line(&format!(
            "{} {} is signed by trusted key {}",
            out.paint("verified:", Style::Good),
            a.file.display(),
            verified.key_id
        ));
        out.line(&format!("  trusted comment: {}", verified.trusted_comment));
    }
    Ok(exit::SUCCESS)
}

/// Runs `slipway package …`.
pub fn package(command: PackageCommand, out: &Output) -> Result<i32, CliError> {
    match command {
        PackageCommand::Build(a) => build(a, out),
        PackageCommand::Inspect(a) => inspect(&a.file, out),
        PackageCommand::Image(a) => image(a, out),
    }
}

fn image(a: ImageArgs, out: &Output) -> Result<i32, CliError> {
    let target = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.oci", a.name, a.version)));
    let options = pkg::ImageOptions {
        name: a.name,
        version: a.version,
        entrypoint: a.entrypoint,
        cmd: a.cmd,
        env: a.env,
        revision: a.revision,
        mtime: 0,
    }
    .with_env_mtime();
    let built = pkg::build_image(&a.dir, &target, &options)
        .map_err(|e| crate::cli_util::package_error(&e))?;
    // What `artifact.sha256` takes: a layout is known by its manifest, a file by its bytes.
    let artifact_sha256 = built
        .archive_sha256
        .clone()
        .unwrap_or_else(|| built.manifest_digest.clone());
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "path": built.path,
            "artifact_sha256": artifact_sha256,
            "manifest_digest": built.manifest_digest,
            "config_digest": built.config_digest,
            "layer_digest": built.layer_digest,
            "layer_size": built.layer_size,
            "archive_sha256": built.archive_sha256,
        }));
    } else {
        out.line(&format!(
            "built image {} ({} bytes in one layer)",
            built.path.display(),
            built.layer_size
        ));
        out.line(&format!(
            "  manifest: sha256:{}",
            out.paint(&built.manifest_digest, Style::Bold)
        ));
        if let Some(sha) = &built.archive_sha256 {
            out.line(&format!("  archive sha256 (artifact.sha256): {sha}"));
        } else {
            out.line(&format!(
                "  sign it: slipway sign {}",
                built
                    .path
                    .join("blobs/sha256")
                    .join(&built.manifest_digest)
                    .display()
            ));
        }
    }
    Ok(exit::SUCCESS)
}

fn build(a: BuildArgs, out: &Output) -> Result<i32, CliError> {
    let target = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.tar.gz", a.name, a.version)));
    let built = pkg::build_archive(&a.dir, &a.name, &a.version, &target)
        .map_err(|e| crate::cli_util::package_error(&e))?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": true,
            "path": built.path,
            "sha256": built.sha256,
            "size": built.size,
            "compression": built.compression,
            "files": built.manifest.files.len(),
            "manifest": built.manifest,
        }));
    } else {
        out.line(&format!(
            "built {} ({} files, {} bytes)",
            built.path.display(),
            built.manifest.files.len(),
            built.size
        ));
        out.line(&format!(
            "  sha256: {}",
            out.paint(&built.sha256, Style::Bold)
        ));
    }
    Ok(exit::SUCCESS)
}

fn inspect(file: &Path, out: &Output) -> Result<i32, CliError> {
    let info = pkg::inspect(file).map_err(|e| crate::cli_util::package_error(&e))?;
    if out.json() {
        out.json_value(&info);
        return Ok(exit::SUCCESS);
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    out.line(&out.paint(&file.display().to_string(), Style::Bold));
    out.line(&format!("  format:       {}", info.format));
    out.line(&format!("  name:         {}", dash(&info.name)));
    out.line(&format!("  version:      {}", dash(&info.version)));
    out.line(&format!("  architecture: {}", dash(&info.architecture)));
    out.line(&format!("  sha256:       {}", info.digest));
    out.line(&format!("  files:        {}", info.files));
    if let Some(m) = &info.msi {
        out.line(&format!("  upgrade code: {}", dash(&m.upgrade_code)));
        out.line(&format!("  product code: {}", dash(&m.product_code)));
        out.line(&format!("  manufacturer: {}", dash(&m.manufacturer)));
        for f in &m.file_names {
            out.line(&format!("    {f}"));
        }
    }
    if info.dependencies.is_empty() {
        out.line("  dependencies: -");
    } else {
        out.line("  dependencies:");
        for d in &info.dependencies {
            out.line(&format!("    {d}"));
        }
    }
    Ok(exit::SUCCESS)
}
