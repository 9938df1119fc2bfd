//! OCI image layouts (a directory with `oci-layout`, `index.json` and `blobs/sha256/…`) as
//! artifacts. An image is identified by the sha256 of its **manifest** — the digest
//! registries, `skopeo` and container runtimes name it by — so that is what a spec's
//! `artifact.sha256` holds for a layout, and what a signature covers: a minisign
//! signature of the manifest blob's bytes (`minisign -Sm LAYOUT/blobs/sha256/<digest>`).
//! Signing the manifest covers the whole image, because the manifest names its config and
//! every layer by digest and [`verify_layout`] checks each of them.
//!
//! Why the manifest bytes and not the digest string: the real `minisign` CLI then signs and
//! verifies the file as it is, with nothing for a user to re-type, and a signature can never
//! be confused with one over some other string.
//!
//! Every file is opened as a regular file without blocking (a FIFO or device is refused),
//! JSON documents are capped, and a blob must have exactly its descriptor's size.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::{sha256_bytes, sha256_reader};
use crate::error::{Error, Result};
use crate::fsread::{open_regular, read_regular};

/// Largest JSON document read (`oci-layout`, `index.json`, manifests, configs); the OCI
/// distribution spec recommends 4 MiB for manifests.
const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How deep image indexes may nest.
const MAX_DEPTH: usize = 8;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A verified image of a layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OciImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// Lowercase hex sha256 of the selected manifest (an image manifest, or an image index
    /// for a multi-platform image).
    pub manifest_digest: String,
    /// The selected manifest's blob: the file a signature covers.
    pub manifest_path: PathBuf,
    /// Its media type.
    pub media_type: String,
    /// Every file the image consists of, relative to the layout: `oci-layout`,
    /// `index.json` and each blob it needs.
    pub files: Vec<PathBuf>,
    /// `org.opencontainers.image.title` (or `ref.name`) of the first image.
    pub name: Option<String>,
    /// `org.opencontainers.image.version` of the first image.
    pub version: Option<String>,
    /// The first image's platform (`amd64`, `arm64/v8`).
    pub architecture: Option<String>,
    /// `org.opencontainers.image.revision`: the source commit it was built from.
    pub revision: Option<String>,
    /// Layers of all its images.
    pub layers: u64,
}

fn fail(layout: &Path, reason: impl Into<String>) -> Error {
    Error::Inspect {
        path: layout.to_owned(),
        reason: reason.into(),
    }
}

fn json(data: &[u8], layout: &Path, what: &str) -> Result<serde_json::Value> {
    serde_json::from_slice(data)
        .map_err(|e| fail(layout, format!("{what} is not valid JSON ({e})")))
}

fn annotation(value: &serde_json::Value, key: &str) -> Option<String> {
    value
        .get("annotations")?
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

/// A descriptor's digest as 64 lowercase hex characters (only sha256 is accepted).
fn descriptor_hex(layout: &Path, descriptor: &serde_json::Value) -> Result<String> {
    let digest = descriptor
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| fail(layout, "a descriptor has no digest"))?;
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| {
            fail(
                layout,
                format!(
                    "descriptor digest '{digest}' is not a sha256 digest (only sha256 is supported)"
                ),
            )
        })
}

struct Walk<'a> {
    layout: &'a Path,
    files: Vec<PathBuf>,
    name: Option<String>,
    version: Option<String>,
    architecture: Option<String>,
    revision: Option<String>,
    layers: u64,
}

impl Walk<'_> {
    fn blob_path(&mut self, hex: &str) -> PathBuf {
        let rel = Path::new("blobs").join("sha256").join(hex);
        if !self.files.contains(&rel) {
            self.files.push(rel.clone());
        }
        self.layout.join(rel)
    }

    /// Reads a JSON blob, checking its size against the descriptor and its digest.
    fn document(&mut self, descriptor: &serde_json::Value) -> Result<(Vec<u8>, String)> {
        let hex = descriptor_hex(self.layout, descriptor)?;
        let path = self.blob_path(&hex);
        let data = read_regular(&path, MAX_DOCUMENT_BYTES, "the blob")?;
        self.check(
            &path,
            &hex,
            descriptor,
            data.len() as u64,
            sha256_bytes(&data),
        )?;
        Ok((data, hex))
    }

    /// Streams a (layer) blob through sha256, checking size and digest.
    fn blob(&mut self, descriptor: &serde_json::Value) -> Result<()> {
        let hex = descriptor_hex(self.layout, descriptor)?;
        let path = self.blob_path(&hex);
        let (file, _) = open_regular(&path)?;
        let declared = descriptor.get("size").and_then(serde_json::Value::as_u64);
        // Read at most one byte past the declared size: a blob longer than its
        // descriptor is wrong already, and need not be hashed to the end.
        let limit = declared.map_or(u64::MAX, |s| s.saturating_add(1));
        let (actual, len) =
            sha256_reader(file.take(limit)).map_err(|e| Error::io("read", &path, e))?;
        self.check(&path, &hex, descriptor, len, actual)
    }

    fn check(
        &self,
        path: &Path,
        hex: &str,
        descriptor: &serde_json::Value,
        len: u64,
        actual: String,
    ) -> Result<()> {
        // Content first: a blob that is not what its name says is tampered with, whatever
        // its size.
        if actual != hex {
            return Err(Error::DigestMismatch {
                path: path.to_owned(),
                expected: hex.to_owned(),
                actual,
            });
        }
        if let Some(size) = descriptor.get("size").and_then(serde_json::Value::as_u64)
            && size != len
        {
            return Err(fail(
                self.layout,
                format!(
                    "blob sha256:{hex} is {len} bytes but its descriptor says {size}: the descriptor is wrong"
                ),
            ));
        }
        Ok(())
    }

    /// Verifies a manifest or index and everything it references.
    fn manifest(&mut self, descriptor: &serde_json::Value, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(fail(
                self.layout,
                format!("its indexes nest more than {MAX_DEPTH} levels deep"),
            ));
        }
        let (data, hex) = self.document(descriptor)?;
        let doc = json(&data, self.layout, &format!("manifest sha256:{hex}"))?;
        let media_type = media_type(descriptor, &doc);
        if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
            let children = doc
                .get("manifests")
                .and_then(|m| m.as_array())
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    fail(
                        self.layout,
                        format!("index sha256:{hex} lists no manifests"),
                    )
                })?
                .clone();
            for child in &children {
                self.manifest(child, depth + 1)?;
            }
            return Ok(());
        }
        let config_desc = doc
            .get("config")
            .ok_or_else(|| fail(self.layout, format!("manifest sha256:{hex} has no config")))?
            .clone();
        let (config_data, _) = self.document(&config_desc)?;
        let config = json(&config_data, self.layout, "the image config")?;
        let layers = doc
            .get("layers")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        for layer in &layers {
            self.blob(layer)?;
        }
        self.layers += layers.len() as u64;
        if self.name.is_none() && self.version.is_none() && self.architecture.is_none() {
            let label = |key: &str| {
                config
                    .get("config")
                    .and_then(|c| c.get("Labels"))
                    .and_then(|l| l.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let pick = |key: &str| {
                annotation(&doc, key)
                    .or_else(|| annotation(descriptor, key))
                    .or_else(|| label(key))
            };
            self.name = pick("org.opencontainers.image.title")
                .or_else(|| pick("org.opencontainers.image.ref.name"));
            self.version = pick("org.opencontainers.image.version");
            self.revision = pick("org.opencontainers.image.revision");
            self.architecture = config
                .get("architecture")
                .and_then(|a| a.as_str())
                .map(
                    |arch| match config.get("variant").and_then(|v| v.as_str()) {
                        Some(variant) => format!("{arch}/{variant}"),
                        None => arch.to_owned(),
                    },
                );
        }
        Ok(())
    }
}

fn media_type(descriptor: &serde_json::Value, doc: &serde_json::Value) -> String {
    descriptor
        .get("mediaType")
        .or_else(|| doc.get("mediaType"))
        .and_then(|m| m.as_str())
        .unwrap_or(OCI_MANIFEST)
        .to_owned()
}

/// Verifies the image of a layout that `manifest` (a sha256, `sha256:` prefix optional)
/// names — an entry of `index.json` or of an index nested in it — or, without one, the
/// first entry of `index.json`: the marker file, the index, the manifest and everything it
/// references (config and layers, or each platform's manifest of an image index), each
/// blob's size and sha256 against its descriptor.
pub fn verify_layout(layout: &Path, manifest: Option<&str>) -> Result<OciImage> {
    let marker = layout.join("oci-layout");
    let marker_data = read_regular(&marker, MAX_DOCUMENT_BYTES, "oci-layout").map_err(|e| {
        match e {
            Error::Io { .. } => fail(
                layout,
                "it is a directory without an oci-layout file; only OCI image layouts can be artifacts or inspected as directories",
            ),
            other => other,
        }
    })?;
    let marker_json = json(&marker_data, layout, "oci-layout")?;
    if marker_json
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(fail(
            layout,
            "its oci-layout file has no imageLayoutVersion",
        ));
    }
    let index_path = layout.join("index.json");
    let index_data = read_regular(&index_path, MAX_DOCUMENT_BYTES, "index.json")?;
    let index = json(&index_data, layout, "index.json")?;
    let top: Vec<serde_json::Value> = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    if top.is_empty() {
        return Err(fail(layout, "its index lists no manifests"));
    }
    let wanted = manifest.map(crate::digest::parse_sha256).transpose()?;
    let descriptor = match &wanted {
        None => top[0].clone(),
        Some(hex) => find(layout, &top, hex, 0)?.ok_or_else(|| {
            fail(
                layout,
                format!(
                    "no manifest sha256:{hex} in its index.json (it lists {}); the spec's sha256 of an OCI layout is its image manifest's digest",
                    top.iter()
                        .filter_map(|d| d.get("digest").and_then(|d| d.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
    };
    let mut walk = Walk {
        layout,
        files: vec![PathBuf::from("oci-layout"), PathBuf::from("index.json")],
        name: None,
        version: None,
        architecture: None,
        revision: None,
        layers: 0,
    };
    walk.manifest(&descriptor, 0)?;
    let hex = descriptor_hex(layout, &descriptor)?;
    let manifest_path = layout.join("blobs").join("sha256").join(&hex);
    // Annotations on the index entry (where tools put the tag) name the image too.
    let name = walk
        .name
        .or_else(|| annotation(&descriptor, "org.opencontainers.image.title"))
        .or_else(|| annotation(&descriptor, "org.opencontainers.image.ref.name"))
        .or_else(|| annotation(&index, "org.opencontainers.image.title"));
    let version = walk
        .version
        .or_else(|| annotation(&descriptor, "org.opencontainers.image.version"))
        .or_else(|| annotation(&index, "org.opencontainers.image.version"));
    let revision = walk
        .revision
        .or_else(|| annotation(&descriptor, "org.opencontainers.image.revision"))
        .or_else(|| annotation(&index, "org.opencontainers.image.revision"));
    let media_type = media_type(&descriptor, &serde_json::Value::Null);
    Ok(OciImage {
        layout: layout.to_owned(),
        manifest_digest: hex,
        manifest_path,
        media_type,
        files: walk.files,
        name,
        version,
        architecture: walk.architecture,
        revision,
        layers: walk.layers,
    })
}

/// The descriptor with digest `hex` in `descriptors` or in an index they reference.
fn find(
    layout: &Path,
    descriptors: &[serde_json::Value],
    hex: &str,
    depth: usize,
) -> Result<Option<serde_json::Value>> {
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    for d in descriptors {
        if descriptor_hex(layout, d)? == hex {
            return Ok(Some(d.clone()));
        }
    }
    for d in descriptors {
        let mt = d.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST {
            let path = layout
                .join("blobs")
                .join("sha256")
                .join(descriptor_hex(layout, d)?);
            let data = read_regular(&path, MAX_DOCUMENT_BYTES, "the index blob")?;
            let doc = json(&data, layout, "a nested index")?;
            let children: Vec<serde_json::Value> = doc
                .get("manifests")
                .and_then(|m| m.as_array())
                .cloned()
                .unwrap_or_default();
            if let Some(found) = find(layout, &children, hex, depth + 1)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}
