//! Release bundles: a spec and the files beside it that it references (migrations, config
//! templates, inventories, artifacts, rehearsal and policy files), packed as one
//! deterministic archive ([`crate::archive`]: sorted entries, fixed mtime and owners, an
//! embedded manifest of every file's path, SHA-256 and size) so a server can plan and
//! drive a release another machine prepared.
//!
//! A bundle is the spec's directory — the directory every relative path of the spec
//! resolves against — without the local store directory (`.slipway`) and `.git`. The same
//! tree gives the same bytes and so the same digest, which is the bundle's name in the
//! store. [`open`] is the receiving side: it unpacks with the safe unpacker (no absolute
//! path, no `..`, no link leaving the tree, no device; size and entry limits) and then
//! checks every file against the embedded manifest, so a bundle whose files were changed
//! after packing is refused whole.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::{
    ARCHIVE_MANIFEST_NAME, ARCHIVE_MANIFEST_SCHEMA, ArchiveManifest, BuildOptions, Compression,
    build_archive_with,
};
use crate::digest::sha256_file;
use crate::error::{Error, Result};
use crate::unpack::{Limits, unpack};

/// Most bytes a packed bundle may have: a release's spec and files, not its images (an
/// artifact that large belongs in a registry the spec points at).
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes a bundle may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;

/// Top-level entries of the spec's directory a bundle leaves out: the local store (its
/// database, run files, proxies' state) and version control.
pub const SKIPPED: &[&str] = &[".slipway", ".git"];

/// The `name` a bundle's embedded manifest carries.
const BUNDLE_NAME: &str = "slipway-bundle";

/// A packed bundle.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The archive (gzip'd tar).
    pub bytes: Vec<u8>,
    /// Its SHA-256, hex: the bundle's name.
    pub sha256: String,
    /// Every file with its digest and size.
    pub manifest: ArchiveManifest,
    /// The spec's path inside the bundle.
    pub spec: String,
}

/// Pack `spec_file` and its directory into a bundle.
pub fn pack(spec_file: &Path) -> Result<Packed> {
    let build_error = |reason: String| Error::Build {
        path: spec_file.to_owned(),
        reason,
    };
    let spec_file = spec_file
        .canonicalize()
        .map_err(|e| Error::io("read", spec_file, e))?;
    let (Some(dir), Some(name)) = (spec_file.parent(), spec_file.file_name()) else {
        return Err(build_error("the spec names no file".into()));
    };
    let spec = name
        .to_str()
        .ok_or_else(|| build_error("the spec's file name is not UTF-8; rename it".into()))?
        .to_owned();
    if SKIPPED.contains(&spec.as_str()) {
        return Err(build_error(format!("a spec cannot be named {spec}")));
    }
    let tmp = tempfile::tempdir().map_err(|e| Error::io("create", std::env::temp_dir(), e))?;
    let out = tmp.path().join("bundle.tar.gz");
    let built = build_archive_with(
        dir,
        BUNDLE_NAME,
        &spec,
        &out,
        &BuildOptions {
            // Fixed, not SOURCE_DATE_EPOCH: the same tree is the same bundle everywhere.
            mtime: 0,
            compression: Some(Compression::Gzip),
            skip: SKIPPED.iter().map(|s| (*s).to_owned()).collect(),
        },
    )?;
    if built.size > MAX_BUNDLE_BYTES {
        return Err(build_error(format!(
            "the bundle of {} is {} bytes, more than the {MAX_BUNDLE_BYTES} a bundle may have; \
             keep large artifacts in a registry or store the spec references, not beside it",
            dir.display(),
            built.size
        )));
    }
    let bytes = fs::read(&out).map_err(|e| Error::io("read", &out, e))?;
    Ok(Packed {
        bytes,
        sha256: built.sha256,
        manifest: built.manifest,
        spec,
    })
}

/// Unpack the bundle at `archive` into `dest` (which must not exist) and check every file
/// against the manifest it carries: the manifest's files are exactly the tree's regular
/// files, each with its listed SHA-256 and size. A refused bundle leaves nothing at `dest`.
pub fn open(archive: &Path, dest: &Path) -> Result<ArchiveManifest> {
    let size = fs::metadata(archive)
        .map_err(|e| Error::io("read", archive, e))?
        .len();
    let refuse = |reason: String| Error::Unpack {
        archive: archive.to_owned(),
        dest: dest.to_owned(),
        reason,
    };
    if size > MAX_BUNDLE_BYTES {
        return Err(refuse(format!(
            "the bundle is {size} bytes, more than the {MAX_BUNDLE_BYTES} a bundle may have"
        )));
    }
    unpack(
        archive,
        dest,
        &Limits {
            max_total_bytes: MAX_UNPACKED_BYTES,
            max_entries: 50_000,
            ..Limits::default()
        },
    )?;
    let checked = check_tree(dest);
    if let Err(reason) = checked {
        // Nothing of a refused bundle stays behind to be planned from.
        let _ = fs::remove_dir_all(dest);
        return Err(refuse(reason));
    }
    checked.map_err(refuse)
}

/// The manifest of an unpacked bundle, once every file matches it.
fn check_tree(dest: &Path) -> std::result::Result<ArchiveManifest, String> {
    let raw = fs::read(dest.join(ARCHIVE_MANIFEST_NAME))
        .map_err(|e| format!("it has no readable {ARCHIVE_MANIFEST_NAME}: {e}"))?;
    let manifest: ArchiveManifest = serde_json::from_slice(&raw)
        .map_err(|e| format!("its {ARCHIVE_MANIFEST_NAME} does not parse: {e}"))?;
    if manifest.schema != ARCHIVE_MANIFEST_SCHEMA || manifest.name != BUNDLE_NAME {
        return Err(format!(
            "it is not a release bundle (manifest schema `{}`, name `{}`); pack it with `slipway --server URL deploy`",
            manifest.schema, manifest.name
        ));
    }
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        let path = dest.join(&f.path);
        let meta = fs::symlink_metadata(&path)
            .map_err(|_| format!("`{}` is listed in its manifest but missing", f.path))?;
        if !meta.is_file() || meta.len() != f.size {
            return Err(format!(
                "`{}` is not the {}-byte file its manifest lists",
                f.path, f.size
            ));
        }
        let actual = sha256_file(&path).map_err(|e| e.to_string())?;
        if actual != f.sha256 {
            return Err(format!(
                "`{}` has sha256 {actual}, its manifest lists {}: the bundle was changed after it was packed",
                f.path, f.sha256
            ));
        }
        listed.insert(PathBuf::from(&f.path));
    }
    let mut present = Vec::new();
    regular_files(dest, dest, &mut present).map_err(|e| format!("read the tree: {e}"))?;
    if let Some(extra) = present
        .iter()
        .find(|p| p.as_path() != Path::new(ARCHIVE_MANIFEST_NAME) && !listed.contains(*p))
    {
        return Err(format!(
            "`{}` is in the bundle but not in its manifest",
            extra.display()
        ));
    }
    if !manifest
        .files
        .iter()
        .any(|f| f.path == manifest.version && !f.path.contains('/'))
    {
        return Err(format!(
            "its spec `{}` is not one of its files",
            manifest.version
        ));
    }
    Ok(manifest)
}

/// Every regular file under `dir`, relative to `root` (links are not followed).
fn regular_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            regular_files(root, &entry.path(), out)?;
        } else if kind.is_file() {
            let path = entry.path();
            // Under `root` by construction of the walk.
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_owned());
            }
        }
    }
    Ok(())
}

/// The spec's path inside an opened bundle (its manifest's `version` field names it).
pub fn spec_of(manifest: &ArchiveManifest) -> &str {
    &manifest.version
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("release.yaml"), "kind: Release\n").unwrap();
        fs::create_dir_all(d.path().join("migrations")).unwrap();
        fs::write(d.path().join("migrations/V1__a.sql"), "select 1;\n").unwrap();
        fs::create_dir_all(d.path().join(".slipway")).unwrap();
        fs::write(d.path().join(".slipway/slipway.db"), "store").unwrap();
        d
    }

    #[test]
    fn the_same_tree_packs_to_the_same_bytes_without_the_store_dir() {
        let d = tree();
        let a = pack(&d.path().join("release.yaml")).unwrap();
        let b = pack(&d.path().join("release.yaml")).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.bytes, b.bytes);
        let paths: Vec<_> = a.manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["migrations/V1__a.sql", "release.yaml"]);
        assert_eq!(a.spec, "release.yaml");

        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        fs::write(&archive, &a.bytes).unwrap();
        let m = open(&archive, &out.path().join("x")).unwrap();
        assert_eq!(spec_of(&m), "release.yaml");
        assert!(out.path().join("x/migrations/V1__a.sql").is_file());
    }

    #[test]
    fn a_file_changed_after_packing_is_refused_and_nothing_stays() {
        let d = tree();
        let a = pack(&d.path().join("release.yaml")).unwrap();
        // Repack the same tree with a changed file but the original manifest.
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        fs::write(&archive, &a.bytes).unwrap();
        let x = out.path().join("x");
        open(&archive, &x).unwrap();
        // Same size, other bytes.
        fs::write(x.join("migrations/V1__a.sql"), "drop t ;\n\n").unwrap();
        let e = check_tree(&x).unwrap_err();
        assert!(e.contains("changed after it was packed"), "{e}");
    }
}
