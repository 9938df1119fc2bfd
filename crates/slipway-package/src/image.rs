//! `slipway package image DIR`: a deterministic OCI image built from a directory, without
//! a daemon, a registry or root — the directory becomes the image's root file system.
//!
//! Same directory and options, same bytes, hence the same manifest digest, whoever builds
//! it and whenever: one uncompressed layer written like [`crate::archive`] writes archives
//! (entries sorted, uid/gid 0, no user names, one mtime — `SOURCE_DATE_EPOCH` or 0 —, modes
//! normalised to 0644/0755), a config without a creation time, and JSON documents with a
//! fixed key order. Why uncompressed: compressed bytes depend on the compressor's version,
//! so a gzip layer would be deterministic only for one build of the compressor; registries
//! and podman accept `application/vnd.oci.image.layer.v1.tar` as it is, and the artifact
//! store keeps one copy per digest anyway.
//!
//! The output is an OCI image layout directory (what [`crate::oci::verify_layout`] reads
//! and `podman run oci:DIR` runs) or, for an output name ending in `.tar`, the same
//! layout as one deterministic tar (an `oci-archive`, `podman run oci-archive:FILE`).
//! Either is written beside its final name and renamed into place, so a crash leaves
//! no half image under that name.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::archive::{Item, header, walk};
use crate::digest::{sha256_bytes, sha256_file};
use crate::error::{Error, Result};

/// How an image is built from a directory.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// `org.opencontainers.image.title`.
    pub name: String,
    /// `org.opencontainers.image.version` (and the layout's `ref.name`).
    pub version: String,
    /// The program and its first arguments (`Entrypoint`).
    pub entrypoint: Vec<String>,
    /// Default arguments (`Cmd`), replaced by a container service's `run.command`.
    pub cmd: Vec<String>,
    /// `NAME=value` variables; `PATH` gets the usual default when not given.
    pub env: Vec<String>,
    /// The source commit (`org.opencontainers.image.revision`), checked by the tag gate.
    pub revision: Option<String>,
    /// Every entry's mtime (seconds since the epoch).
    pub mtime: u64,
}

impl ImageOptions {
    /// Options with the mtime from `SOURCE_DATE_EPOCH` (0 when unset), as archives have.
    pub fn with_env_mtime(mut self) -> Self {
        self.mtime = crate::archive::BuildOptions::from_env().mtime;
        self
    }
}

/// What [`build_image`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuiltImage {
    /// The layout directory or oci-archive file.
    pub path: PathBuf,
    /// sha256 of the image manifest: the digest a spec's `artifact.sha256` holds for a
    /// layout, and what registries and podman name the image by.
    pub manifest_digest: String,
    /// sha256 of the image config (podman's image id).
    pub config_digest: String,
    /// sha256 and size of the one layer.
    pub layer_digest: String,
    /// Bytes of the layer.
    pub layer_size: u64,
    /// sha256 of the oci-archive file, when the output is one (its `artifact.sha256`).
    pub archive_sha256: Option<String>,
}

const PATH_DEFAULT: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI name of this machine's architecture (Go's `GOARCH` names, as the image spec).
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Builds the image of `dir` at `out` (a layout directory, or an oci-archive when `out`
/// ends in `.tar`). `out` must not exist yet.
pub fn build_image(dir: &Path, out: &Path, options: &ImageOptions) -> Result<BuiltImage> {
    let build_error = |reason: String| Error::Build {
        path: out.to_owned(),
        reason,
    };
    if options.name.trim().is_empty() || options.version.trim().is_empty() {
        return Err(build_error(
            "the image name and version must not be empty".into(),
        ));
    }
    if let Some(bad) = options.env.iter().find(|e| !e.contains('=')) {
        return Err(build_error(format!(
            "environment entry `{bad}` is not NAME=value"
        )));
    }
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("read", dir, e))?;
    if !meta.is_dir() {
        return Err(build_error(format!("{} is not a directory", dir.display())));
    }
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(build_error(
            "it exists already; remove it or name another output (an image is never built over another)".into(),
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The output inside the input would be packed into itself on the next build.
    if let (Ok(d), Ok(p)) = (dir.canonicalize(), parent.canonicalize())
        && p.starts_with(&d)
    {
        return Err(build_error(format!(
            "the output is inside the input directory {}; write it elsewhere",
            dir.display()
        )));
    }
    let archive = out.extension().is_some_and(|e| e == "tar");

    let mut items = Vec::new();
    walk(dir, dir, "", &mut items, out, &[])?;
    items.sort_by(|a, b| a.rel().cmp(b.rel()));

    let staging = tempfile::Builder::new()
        .prefix(".slipway-image-")
        .tempdir_in(parent)
        .map_err(|e| Error::io("create a temporary directory in", parent, e))?;
    let layout = staging.path().join("layout");
    let blobs = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("create", &blobs, e))?;
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |e: io::Error| Error::io("write", path, e)
    };

    // The layer: the directory as a tar, written once and hashed after.
    let layer_tmp = staging.path().join("layer.tar");
    {
        let file = std::fs::File::create(&layer_tmp).map_err(io_error(&layer_tmp))?;
        let file = write_layer(io::BufWriter::new(file), &items, options.mtime, out)?;
        file.into_inner()
            .map_err(|e| io_error(&layer_tmp)(e.into_error()))?
            .sync_all()
            .map_err(io_error(&layer_tmp))?;
    }
    let layer_digest = sha256_file(&layer_tmp)?;
    let layer_size = std::fs::metadata(&layer_tmp)
        .map_err(|e| Error::io("read", &layer_tmp, e))?
        .len();
    let layer_path = blobs.join(&layer_digest);
    std::fs::rename(&layer_tmp, &layer_path).map_err(io_error(&layer_path))?;

    let mut env = options.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, PATH_DEFAULT.to_owned());
    }
    let mut labels = serde_json::Map::new();
    labels.insert(
        "org.opencontainers.image.title".into(),
        options.name.clone().into(),
    );
    labels.insert(
        "org.opencontainers.image.version".into(),
        options.version.clone().into(),
    );
    if let Some(rev) = &options.revision {
        labels.insert(
            "org.opencontainers.image.revision".into(),
            rev.clone().into(),
        );
    }
    let mut container = serde_json::Map::new();
    container.insert("Env".into(), json!(env));
    if !options.entrypoint.is_empty() {
        container.insert("Entrypoint".into(), json!(options.entrypoint));
    }
    if !options.cmd.is_empty() {
        container.insert("Cmd".into(), json!(options.cmd));
    }
    container.insert("WorkingDir".into(), json!("/"));
    container.insert("Labels".into(), serde_json::Value::Object(labels.clone()));
    let config = json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "config": container,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [ { "created_by": "slipway package image", "comment": "the directory as one layer" } ],
    });
    let config_bytes = to_bytes(&config);
    let config_digest = sha256_bytes(&config_bytes);
    write_blob(&blobs, &config_digest, &config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [ {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        } ],
        "annotations": labels,
    });
    let manifest_bytes = to_bytes(&manifest);
    let manifest_digest = sha256_bytes(&manifest_bytes);
    write_blob(&blobs, &manifest_digest, &manifest_bytes)?;

    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [ {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "annotations": { "org.opencontainers.image.ref.name": options.version },
        } ],
    });
    let index_path = layout.join("index.json");
    std::fs::write(&index_path, to_bytes(&index)).map_err(io_error(&index_path))?;
    let marker = layout.join("oci-layout");
    std::fs::write(&marker, to_bytes(&json!({ "imageLayoutVersion": "1.0.0" })))
        .map_err(io_error(&marker))?;

    // Checked as any reader will check it: every blob against its descriptor.
    crate::oci::verify_layout(&layout, Some(&manifest_digest))?;

    let archive_sha256 = if archive {
        let tar_tmp = staging.path().join("image.tar");
        let mut layout_items = Vec::new();
        walk(&layout, &layout, "", &mut layout_items, out, &[])?;
        layout_items.sort_by(|a, b| a.rel().cmp(b.rel()));
        let file = std::fs::File::create(&tar_tmp).map_err(io_error(&tar_tmp))?;
        let file = write_layer(io::BufWriter::new(file), &layout_items, options.mtime, out)?;
        file.into_inner()
            .map_err(|e| io_error(&tar_tmp)(e.into_error()))?
            .sync_all()
            .map_err(io_error(&tar_tmp))?;
        crate::sign::set_public_mode(
            &std::fs::File::open(&tar_tmp).map_err(io_error(&tar_tmp))?,
            out,
        )?;
        std::fs::rename(&tar_tmp, out).map_err(io_error(out))?;
        Some(sha256_file(out)?)
    } else {
        std::fs::rename(&layout, out).map_err(io_error(out))?;
        None
    };
    Ok(BuiltImage {
        path: out.to_owned(),
        manifest_digest,
        config_digest,
        layer_digest,
        layer_size,
        archive_sha256,
    })
}

/// Compact JSON; keys keep the order they were written in (or sorted, without serde_json's
/// `preserve_order`) — either way the same on every build.
fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    // A `Value` always serialises.
    serde_json::to_vec(value).unwrap_or_else(|_| unreachable!("a JSON value always serialises"))
}

fn write_blob(blobs: &Path, hex: &str, bytes: &[u8]) -> Result<()> {
    let path = blobs.join(hex);
    std::fs::write(&path, bytes).map_err(|e| Error::io("write", &path, e))
}

/// A tar of `items` (sorted) with normalised headers; the writer back.
fn write_layer<W: Write>(writer: W, items: &[Item], mtime: u64, out: &Path) -> Result<W> {
    let io_error = |e: io::Error| Error::io("write", out, e);
    let mut builder = tar::Builder::new(writer);
    for item in items {
        match item {
            Item::Dir { rel } => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
                builder
                    .append_data(&mut h, format!("{rel}/"), io::empty())
                    .map_err(io_error)?;
            }
            Item::Symlink { rel, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                builder.append_link(&mut h, rel, target).map_err(io_error)?;
            }
            Item::File {
                rel,
                abs,
                size,
                mode,
            } => {
                let f = crate::fsread::open_regular(abs)?.0;
                let mut h = header(tar::EntryType::Regular, *mode, *size, mtime);
                // Exactly the size the walk saw: a file growing meanwhile must not make
                // the header lie (`append_data` fails if it shrank).
                builder
                    .append_data(&mut h, rel, io::Read::take(f, *size))
                    .map_err(|e| Error::Build {
                        path: out.to_owned(),
                        reason: format!(
                            "{} changed while it was being packed ({e}); build again from a tree nobody is writing to",
                            abs.display()
                        ),
                    })?;
            }
        }
    }
    builder.into_inner().map_err(io_error)
}
