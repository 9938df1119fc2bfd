//! Safe unpacking of tar archives (plain, gzip or zstd).
//!
//! Every entry is checked before anything is written: no absolute paths, no `..`, no
//! device or fifo files, no link whose target leaves the destination, and limits on entry
//! count, total size, compression ratio and the size of tar header extensions (long
//! names, PAX records) against decompression bombs. Extraction goes
//! to a temporary directory next to the destination, never writes through a symbolic
//! link, and is renamed into place only when the whole archive passed: a refused archive
//! leaves no destination at all.

use std::cell::Cell;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::archive::link_stays_inside;
use crate::error::{Error, Result};

/// Resource limits for one archive.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Total bytes of file content written.
    pub max_total_bytes: u64,
    /// Number of entries of any kind.
    pub max_entries: u64,
    /// Maximum unpacked bytes per byte of archive. Checked only once more than
    /// `ratio_grace_bytes` were unpacked, because tiny archives of small files
    /// legitimately compress far better than large ones.
    pub max_ratio: u64,
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 8 * 1024 * 1024 * 1024,
            max_entries: 200_000,
            // Real software archives rarely exceed 20:1; gzip can reach about 1000:1.
            max_ratio: 200,
            ratio_grace_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What was unpacked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unpacked {
    pub dest: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Wraps a possibly compressed tar stream in the right decoder, detecting gzip, zstd and
/// xz by their magic bytes; anything else is read as a plain tar.
pub(crate) fn decompressed<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::Decoder::with_buffer(reader)?))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Ok(Box::new(xz2::read::XzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Most bytes the `tar` crate may read on its own between two entries it hands out: the
/// next header with its GNU long name, long link and PAX records, which it reads whole into
/// memory before the entry they describe reaches any of the checks here. Real ones are a
/// few KiB; unbounded, a 50 KB `.tar.zst` declaring a 1 GiB long name made `inspect` and
/// `unpack` allocate 1 GiB (and a bigger declared size, as much as asked).
pub(crate) const TAR_EXTENSION_ALLOWANCE: u64 = 1 << 20;

/// How far the tar reader may read: shared between a [`Budgeted`] reader, owned by the
/// `tar::Archive`, and the loop over its entries, which raises the limit per entry.
#[derive(Clone, Debug)]
pub(crate) struct TarBudget(Rc<(Cell<u64>, Cell<u64>)>);

impl TarBudget {
    /// Wraps the (decompressed) tar stream; until the first entry it may read the first
    /// header and its extensions.
    pub(crate) fn wrap<R: Read>(inner: R) -> (Budgeted<R>, TarBudget) {
        let budget = TarBudget(Rc::new((Cell::new(0), Cell::new(TAR_EXTENSION_ALLOWANCE))));
        (
            Budgeted {
                inner,
                budget: budget.clone(),
            },
            budget,
        )
    }

    /// Called with each entry handed out: its data (read or skipped, padded to the tar
    /// block) may follow, then the next header and its extensions.
    pub(crate) fn entry(&self, size: u64) {
        let (consumed, limit) = &*self.0;
        limit.set(
            consumed
                .get()
                .saturating_add(size.div_ceil(512).saturating_mul(512))
                .saturating_add(TAR_EXTENSION_ALLOWANCE),
        );
    }
}

/// A reader that fails once its [`TarBudget`] is spent.
pub(crate) struct Budgeted<R> {
    inner: R,
    budget: TarBudget,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (consumed, limit) = &*self.budget.0;
        let room = limit.get().saturating_sub(consumed.get());
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "a tar header with its long name or PAX records takes more than \
                 {TAR_EXTENSION_ALLOWANCE} bytes, which no real archive needs (a decompression \
                 bomb or a corrupt archive)"
            )));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        consumed.set(consumed.get() + n as u64);
        Ok(n)
    }
}

/// Unpacks `archive` into `dest`, which must not exist yet.
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked> {
    let refuse = |reason: String| Error::Unpack {
        archive: archive.to_owned(),
        dest: dest.to_owned(),
        reason,
    };
    if fs::symlink_metadata(dest).is_ok() {
        return Err(refuse(format!(
            "the destination {} already exists; unpack into a new directory",
            dest.display()
        )));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dest_name = dest
        .file_name()
        .ok_or_else(|| refuse("the destination has no directory name".to_owned()))?;
    let file = crate::fsread::open_regular(archive)?.0;
    let archive_len = file
        .metadata()
        .map_err(|e| Error::io("read", archive, e))?
        .len()
        .max(1);
    let stream = decompressed(file).map_err(|e| Error::io("read", archive, e))?;
    let (stream, budget) = TarBudget::wrap(stream);
    // Dropping the TempDir on any error removes everything written so far.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.unpack-", dest_name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(|e| Error::io("create a temporary directory in", parent, e))?;
    let mut state = State {
        archive,
        dest,
        root: tmp.path(),
        limits,
        archive_len,
        entries: 0,
        files: 0,
        bytes: 0,
        symlinks: Vec::new(),
    };
    let mut tar = tar::Archive::new(stream);
    let entries = tar
        .entries()
        .map_err(|e| refuse(format!("it is not a tar archive ({e})")))?;
    for entry in entries {
        let entry = entry.map_err(|e| refuse(format!("it is corrupt or truncated ({e})")))?;
        budget.entry(entry.size());
        state.entry(entry)?;
    }
    state.check_symlinks()?;
    let unpacked = Unpacked {
        dest: dest.to_owned(),
        entries: state.entries,
        files: state.files,
        bytes: state.bytes,
    };
    let kept = tmp.keep();
    fs::rename(&kept, dest).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        Error::io("move the unpacked tree to", dest, e)
    })?;
    Ok(unpacked)
}

struct State<'a> {
    archive: &'a Path,
    dest: &'a Path,
    root: &'a Path,
    limits: &'a Limits,
    archive_len: u64,
    entries: u64,
    files: u64,
    bytes: u64,
    /// Links created, with their archive path, checked again once the tree is complete.
    symlinks: Vec<(String, PathBuf)>,
}

impl State<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            archive: self.archive.to_owned(),
            dest: self.dest.to_owned(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.unsafe_entry(
                &shown,
                format!(
                    "exceeds the limit of {} entries (a decompression bomb or a far bigger archive than expected)",
                    self.limits.max_entries
                ),
            ));
        }
        let rel = self.safe_relative(&shown, &raw)?;
        if rel.as_os_str().is_empty() {
            // "./" itself: the destination root, which exists already.
            return Ok(());
        }
        if kind.is_dir() {
            self.create_parents(&shown, &rel, true)?;
            return Ok(());
        }
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            return Err(
                self.unsafe_entry(&shown, "is a device or fifo, which archives may not create")
            );
        }
        let target_path = self.root.join(&rel);
        if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(|e| {
                    self.unsafe_entry(&shown, format!("has an unreadable link target ({e})"))
                })?
                .ok_or_else(|| self.unsafe_entry(&shown, "is a link without a target"))?
                .into_owned();
            let rel_str = rel.to_string_lossy();
            if !link_stays_inside(&rel_str, &link) {
                return Err(self.unsafe_entry(
                    &shown,
                    format!(
                        "is a symlink to '{}', which escapes the destination",
                        link.display()
                    ),
                ));
            }
            self.create_parents(&shown, &rel, false)?;
            std::os::unix::fs::symlink(&link, &target_path)
                .map_err(|e| self.write_error(&shown, &target_path, e))?;
            self.symlinks.push((shown, target_path));
            return Ok(());
        }
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| {
                    self.unsafe_entry(&shown, format!("has an unreadable link target ({e})"))
                })?
                .ok_or_else(|| self.unsafe_entry(&shown, "is a link without a target"))?
                .into_owned();
            let link_bytes = link.as_os_str().as_encoded_bytes().to_vec();
            let link_rel = self.safe_relative(&shown, &link_bytes).map_err(|_| {
                self.unsafe_entry(
                    &shown,
                    format!(
                        "is a hardlink to '{}', which escapes the destination",
                        link.display()
                    ),
                )
            })?;
            let source = self.root.join(&link_rel);
            self.no_symlink_on_the_way(&shown, &link_rel)?;
            match fs::symlink_metadata(&source) {
                Ok(m) if m.is_file() => {}
                _ => {
                    return Err(self.unsafe_entry(
                        &shown,
                        format!(
                            "is a hardlink to '{}', which is not a file unpacked earlier from this archive",
                            link.display()
                        ),
                    ));
                }
            }
            self.create_parents(&shown, &rel, false)?;
            fs::hard_link(&source, &target_path)
                .map_err(|e| self.write_error(&shown, &target_path, e))?;
            return Ok(());
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(self.unsafe_entry(
                &shown,
                format!("has the unsupported tar entry type {:?}", kind),
            ));
        }
        self.create_parents(&shown, &rel, false)?;
        let mode = entry.header().mode().unwrap_or(0o644);
        // create_new refuses an existing file or link at this path, so a later entry can
        // neither overwrite an earlier one nor write through a planted link.
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(
            &mut options,
            if mode & 0o111 != 0 { 0o755 } else { 0o644 },
        );
        let mut out = options
            .open(&target_path)
            .map_err(|e| self.write_error(&shown, &target_path, e))?;
        let remaining = self.limits.max_total_bytes.saturating_sub(self.bytes);
        // Read one byte more than allowed to tell "exactly at the limit" from "over it";
        // the header's size is not trusted.
        let copied = io::copy(
            &mut (&mut entry).take(remaining.saturating_add(1)),
            &mut out,
        )
        .map_err(|e| self.write_error(&shown, &target_path, e))?;
        self.bytes += copied;
        self.files += 1;
        if self.bytes > self.limits.max_total_bytes {
            return Err(self.unsafe_entry(
                &shown,
                format!(
                    "takes the unpacked size over the limit of {} bytes (a decompression bomb or a far bigger archive than expected)",
                    self.limits.max_total_bytes
                ),
            ));
        }
        if self.bytes > self.limits.ratio_grace_bytes
            && self.bytes / self.archive_len > self.limits.max_ratio
        {
            return Err(self.unsafe_entry(
                &shown,
                format!(
                    "takes the unpacked size to {} bytes from a {}-byte archive, a ratio above the limit of {}:1 (a decompression bomb)",
                    self.bytes, self.archive_len, self.limits.max_ratio
                ),
            ));
        }
        Ok(())
    }

    fn write_error(&self, shown: &str, path: &Path, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::AlreadyExists {
            self.unsafe_entry(
                shown,
                "appears twice in the archive (or collides with a link)",
            )
        } else {
            Error::Unpack {
                archive: self.archive.to_owned(),
                dest: self.dest.to_owned(),
                reason: format!("writing entry '{shown}' to {} failed ({e})", path.display()),
            }
        }
    }

    /// Turns an entry path into a relative path with only normal components, refusing
    /// absolute paths and `..` outright (even when they would stay inside: no honest
    /// archive needs them).
    fn safe_relative(&self, shown: &str, raw: &[u8]) -> Result<PathBuf> {
        if raw.contains(&0) {
            return Err(self.unsafe_entry(shown, "has a NUL byte in its path"));
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(raw));
        let mut rel = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(c) => rel.push(c),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.unsafe_entry(shown, "has a '..' component (path traversal)"));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(shown, "has an absolute path"));
                }
            }
        }
        Ok(rel)
    }

    /// Creates the directories leading to `rel` (and `rel` itself when `include_self`),
    /// refusing to go through anything that is not a real directory: a link unpacked
    /// earlier must never redirect a later entry.
    fn create_parents(&self, shown: &str, rel: &Path, include_self: bool) -> Result<()> {
        let components: Vec<_> = rel.components().collect();
        let upto = if include_self {
            components.len()
        } else {
            components.len().saturating_sub(1)
        };
        let mut current = self.root.to_path_buf();
        for component in &components[..upto] {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.unsafe_entry(
                        shown,
                        format!(
                            "would be written through '{}', which is a link or a file, not a directory",
                            current.strip_prefix(self.root).unwrap_or(&current).display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current).map_err(|e| self.write_error(shown, &current, e))?;
                }
                Err(e) => return Err(self.write_error(shown, &current, e)),
            }
        }
        Ok(())
    }

    fn no_symlink_on_the_way(&self, shown: &str, rel: &Path) -> Result<()> {
        let mut current = self.root.to_path_buf();
        for component in rel.components() {
            current.push(component);
            if fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(self.unsafe_entry(shown, "is a hardlink through a symlink"));
            }
        }
        Ok(())
    }

    /// Each link was checked lexically when it was created, but links can chain (a link
    /// through another link's `..`). Now that the tree is complete, resolve every link
    /// for real and refuse any that leaves the root or points at nothing.
    fn check_symlinks(&self) -> Result<()> {
        let root = self
            .root
            .canonicalize()
            .map_err(|e| Error::io("read", self.root, e))?;
        for (shown, path) in &self.symlinks {
            match path.canonicalize() {
                Ok(resolved) if resolved.starts_with(&root) => {}
                Ok(_) => {
                    return Err(self.unsafe_entry(
                        shown,
                        "is a symlink that resolves outside the destination through other links",
                    ));
                }
                Err(_) => {
                    return Err(self.unsafe_entry(
                        shown,
                        "is a symlink whose target is not in the archive (dangling links are refused because what they point to cannot be checked)",
                    ));
                }
            }
        }
        Ok(())
    }
}
