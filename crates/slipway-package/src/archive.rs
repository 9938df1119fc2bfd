//! Deterministic archives: the same directory gives the same bytes, whoever builds it,
//! whenever, from whatever checkout.
//!
//! Entries are sorted by path; every header has uid/gid 0, no user or group names, one
//! fixed mtime (0 or `SOURCE_DATE_EPOCH`) and a mode normalised to 0644/0755; the gzip
//! header carries no time or OS. The first entry, `slipway-manifest.json`, lists every
//! file's SHA-256 and size so an unpacked tree can be checked file by file.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{HashingReader, sha256_file};
use crate::error::{Error, Result};

/// Name of the embedded manifest at the root of every Slipway archive.
pub const ARCHIVE_MANIFEST_NAME: &str = "slipway-manifest.json";

/// The `schema` value of embedded manifests this version writes.
pub const ARCHIVE_MANIFEST_SCHEMA: &str = "slipway.archive-manifest/v1";

/// The compression of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// Chooses the compression from the output file name (`.tar.gz`/`.tgz` or
    /// `.tar.zst`/`.tzst`).
    pub fn from_file_name(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Compression::Gzip)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// How to build an archive.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The mtime of every entry, in seconds since the epoch.
    pub mtime: u64,
    /// `None` chooses from the output file name.
    pub compression: Option<Compression>,
    /// Top-level entries of the directory left out (a release bundle leaves out the
    /// local store directory `.slipway` and `.git`).
    pub skip: Vec<String>,
}

impl BuildOptions {
    /// Options following the reproducible-builds convention: the mtime is
    /// `SOURCE_DATE_EPOCH` when set (and a number), 0 otherwise.
    pub fn from_env() -> Self {
        let mtime = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        BuildOptions {
            mtime,
            compression: None,
            skip: Vec::new(),
        }
    }
}

/// The manifest embedded in every Slipway archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    pub schema: String,
    pub name: String,
    pub version: String,
    /// Regular files, sorted by path.
    pub files: Vec<ArchiveFile>,
    /// Symbolic links, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symlinks: Vec<ArchiveSymlink>,
}

/// A regular file in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// `0644` or `0755`, as written in the archive.
    pub mode: String,
}

/// A symbolic link in the archive (always relative and inside the archive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSymlink {
    pub path: String,
    pub target: String,
}

/// What [`build_archive`] produced.
#[derive(Clone, Debug)]
pub struct BuiltArchive {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub compression: Compression,
    pub manifest: ArchiveManifest,
}

pub(crate) enum Item {
    Dir {
        rel: String,
    },
    File {
        rel: String,
        abs: PathBuf,
        size: u64,
        mode: u32,
    },
    Symlink {
        rel: String,
        target: String,
    },
}

impl Item {
    pub(crate) fn rel(&self) -> &str {
        match self {
            Item::Dir { rel } | Item::File { rel, .. } | Item::Symlink { rel, .. } => rel,
        }
    }
}

/// Builds a deterministic archive of `dir` at `out`, with the mtime from
/// `SOURCE_DATE_EPOCH` (or 0) and the compression chosen by `out`'s extension.
pub fn build_archive(dir: &Path, name: &str, version: &str, out: &Path) -> Result<BuiltArchive> {
    build_archive_with(dir, name, version, out, &BuildOptions::from_env())
}

/// [`build_archive`] with explicit options.
pub fn build_archive_with(
    dir: &Path,
    name: &str,
    version: &str,
    out: &Path,
    options: &BuildOptions,
) -> Result<BuiltArchive> {
    let build_error = |reason: String| Error::Build {
        path: out.to_owned(),
        reason,
    };
    let compression = match options
        .compression
        .or_else(|| Compression::from_file_name(out))
    {
        Some(c) => c,
        None => {
            return Err(build_error(
                "the output name must end in .tar.gz, .tgz, .tar.zst or .tzst".to_owned(),
            ));
        }
    };
    if name.trim().is_empty() || version.trim().is_empty() {
        return Err(build_error(
            "the package name and version must not be empty".to_owned(),
        ));
    }
    let meta = fs::metadata(dir).map_err(|e| Error::io("read", dir, e))?;
    if !meta.is_dir() {
        return Err(build_error(format!("{} is not a directory", dir.display())));
    }
    // The output inside the input would be archived into itself on the next build.
    if let (Ok(d), Some(parent)) = (dir.canonicalize(), out.parent()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if parent.canonicalize().is_ok_and(|p| p.starts_with(&d)) {
            return Err(build_error(format!(
                "the output is inside the input directory {}; write it elsewhere",
                dir.display()
            )));
        }
    }

    let mut items = Vec::new();
    walk(dir, dir, "", &mut items, out, &options.skip)?;
    items.sort_by(|a, b| a.rel().cmp(b.rel()));

    let mut manifest = ArchiveManifest {
        schema: ARCHIVE_MANIFEST_SCHEMA.to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
        files: Vec::new(),
        symlinks: Vec::new(),
    };
    for item in &items {
        match item {
            Item::File {
                rel,
                abs,
                size,
                mode,
            } => manifest.files.push(ArchiveFile {
                path: rel.clone(),
                sha256: sha256_file(abs)?,
                size: *size,
                mode: format!("{mode:04o}"),
            }),
            Item::Symlink { rel, target } => manifest.symlinks.push(ArchiveSymlink {
                path: rel.clone(),
                target: target.clone(),
            }),
            Item::Dir { .. } => {}
        }
    }
    // Plain strings and integers always serialise.
    let mut manifest_json = serde_json::to_vec_pretty(&manifest)
        .unwrap_or_else(|_| unreachable!("archive manifest fields always serialise"));
    manifest_json.push(b'\n');

    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(out_dir)
        .map_err(|e| Error::io("create a temporary file in", out_dir, e))?;
    let file = tmp
        .reopen()
        .map_err(|e| Error::io("open", tmp.path().to_owned(), e))?;
    let io_error = |e: io::Error| Error::io("write", out, e);
    match compression {
        Compression::Gzip => {
            // No file name, mtime 0 and a fixed OS byte: gzip headers otherwise vary
            // between machines.
            let encoder = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(file, flate2::Compression::best());
            let encoder = write_tar(
                encoder,
                &items,
                &manifest,
                &manifest_json,
                options.mtime,
                out,
            )?;
            encoder
                .finish()
                .map_err(io_error)?
                .sync_all()
                .map_err(io_error)?;
        }
        Compression::Zstd => {
            let encoder = zstd::Encoder::new(file, 19).map_err(io_error)?;
            let encoder = write_tar(
                encoder,
                &items,
                &manifest,
                &manifest_json,
                options.mtime,
                out,
            )?;
            encoder
                .finish()
                .map_err(io_error)?
                .sync_all()
                .map_err(io_error)?;
        }
    }
    crate::sign::set_public_mode(tmp.as_file(), out)?;
    tmp.persist(out)
        .map_err(|e| Error::io("write", out, e.error))?;
    let size = fs::metadata(out)
        .map_err(|e| Error::io("read", out, e))?
        .len();
    Ok(BuiltArchive {
        path: out.to_owned(),
        sha256: sha256_file(out)?,
        size,
        compression,
        manifest,
    })
}

pub(crate) fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    // A GNU header starts zeroed: no user or group names, device numbers 0.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn write_tar<W: Write>(
    writer: W,
    items: &[Item],
    manifest: &ArchiveManifest,
    manifest_json: &[u8],
    mtime: u64,
    out: &Path,
) -> Result<W> {
    let io_error = |e: io::Error| Error::io("write", out, e);
    let mut builder = tar::Builder::new(writer);
    let mut h = header(
        tar::EntryType::Regular,
        0o644,
        manifest_json.len() as u64,
        mtime,
    );
    builder
        .append_data(&mut h, ARCHIVE_MANIFEST_NAME, manifest_json)
        .map_err(io_error)?;
    let mut files = manifest.files.iter();
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
                // Files were pushed to the manifest in the same order as here.
                let expected = files
                    .next()
                    .unwrap_or_else(|| unreachable!("one manifest entry per file"));
                let f = crate::fsread::open_regular(abs)?.0;
                let mut reader = HashingReader::new(io::Read::take(f, *size));
                let mut h = header(tar::EntryType::Regular, *mode, *size, mtime);
                builder
                    .append_data(&mut h, rel, &mut reader)
                    .map_err(io_error)?;
                let (digest, count) = reader.finish();
                if digest != expected.sha256 || count != *size {
                    return Err(Error::Build {
                        path: out.to_owned(),
                        reason: format!(
                            "{} changed while it was being archived; build again from a tree nobody is writing to",
                            abs.display()
                        ),
                    });
                }
            }
        }
    }
    builder.into_inner().map_err(io_error)
}

pub(crate) fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    items: &mut Vec<Item>,
    out: &Path,
    skip: &[String],
) -> Result<()> {
    let build_error = |reason: String| Error::Build {
        path: out.to_owned(),
        reason,
    };
    let entries = fs::read_dir(dir).map_err(|e| Error::io("read the directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read the directory", dir, e))?;
        let abs = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| {
            build_error(format!(
                "{} has a name that is not UTF-8; rename it",
                abs.display()
            ))
        })?;
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        if prefix.is_empty() && skip.iter().any(|s| s == name) {
            continue;
        }
        if rel == ARCHIVE_MANIFEST_NAME {
            return Err(build_error(format!(
                "{} uses the reserved name {ARCHIVE_MANIFEST_NAME}; rename it",
                abs.display()
            )));
        }
        let meta = fs::symlink_metadata(&abs).map_err(|e| Error::io("read", &abs, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            items.push(Item::Dir { rel: rel.clone() });
            walk(root, &abs, &rel, items, out, &[])?;
        } else if kind.is_file() {
            items.push(Item::File {
                rel,
                abs,
                size: meta.len(),
                mode: normalised_mode(&meta),
            });
        } else if kind.is_symlink() {
            let target = fs::read_link(&abs).map_err(|e| Error::io("read the link", &abs, e))?;
            let target_str = target.to_str().ok_or_else(|| {
                build_error(format!(
                    "the link {} has a target that is not UTF-8",
                    abs.display()
                ))
            })?;
            if !link_stays_inside(&rel, &target) {
                return Err(build_error(format!(
                    "the link {} points to {target_str}, outside {}; archives only carry relative links that stay inside, so replace it with a copy or a relative link",
                    abs.display(),
                    root.display()
                )));
            }
            items.push(Item::Symlink {
                rel,
                target: target_str.to_owned(),
            });
        } else {
            return Err(build_error(format!(
                "{} is a device, fifo or socket; only files, directories and links can be archived",
                abs.display()
            )));
        }
    }
    Ok(())
}

/// Whether a link at archive path `rel` pointing at `target` resolves, lexically, inside
/// the archive root.
pub(crate) fn link_stays_inside(rel: &str, target: &Path) -> bool {
    let mut depth: i64 = rel.split('/').count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(unix)]
fn normalised_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(not(unix))]
fn normalised_mode(_meta: &fs::Metadata) -> u32 {
    0o644
}

#[cfg(test)]
mod tests {
    use super::link_stays_inside;
    use std::path::Path;

    #[test]
    fn links_are_judged_lexically_from_their_own_directory() {
        assert!(link_stays_inside("a/b", Path::new("../c")));
        assert!(link_stays_inside("a/b", Path::new("c/../../d")));
        assert!(!link_stays_inside("a/b", Path::new("../../c")));
        assert!(!link_stays_inside("b", Path::new("../c")));
        assert!(!link_stays_inside("b", Path::new("/etc/passwd")));
    }
}
