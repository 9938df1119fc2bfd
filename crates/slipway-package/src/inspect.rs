//! Reading what a package is without unpacking it: Slipway archives, plain tarballs,
//! Debian packages, RPM packages, MSI packages and OCI image layouts.
//!
//! Only metadata is parsed (the embedded manifest, the deb control file, the RPM header,
//! the MSI Property and File tables, the OCI manifest and config); payloads are streamed
//! to count their files and, where the format records one, checked against their digest
//! (an RPM's payload digest, every OCI blob), so a package cut short is refused. Only
//! regular files are read (a FIFO or device is refused, never waited on).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use crate::archive::{ARCHIVE_MANIFEST_NAME, ARCHIVE_MANIFEST_SCHEMA, ArchiveManifest};
use crate::digest::sha256_file;
use crate::error::{Error, Result};
use crate::unpack::{Limits, TarBudget, decompressed};

/// Metadata documents read into memory are capped; real ones are far smaller.
const MAX_METADATA_BYTES: u64 = 64 * 1024 * 1024;

/// The kind of package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    /// A Slipway archive: a tarball with `slipway-manifest.json`.
    Slipway,
    /// A tarball without a Slipway manifest.
    Tar,
    Deb,
    Rpm,
    /// A Windows Installer package.
    Msi,
    /// An OCI image layout directory.
    Oci,
}

impl std::fmt::Display for PackageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackageFormat::Slipway => "slipway",
            PackageFormat::Tar => "tar",
            PackageFormat::Deb => "deb",
            PackageFormat::Rpm => "rpm",
            PackageFormat::Msi => "msi",
            PackageFormat::Oci => "oci",
        })
    }
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageInfo {
    pub format: PackageFormat,
    pub name: Option<String>,
    /// For RPM packages `version-release`.
    pub version: Option<String>,
    pub architecture: Option<String>,
    /// As the format writes them (`libc6 (>= 2.34)`, `bash >= 5`).
    pub dependencies: Vec<String>,
    /// Lowercase hex SHA-256 of the file; for an OCI layout, of its image manifest (the
    /// digest registries and runtimes identify the image by).
    pub digest: String,
    /// Regular files in the payload; for an OCI image, its layers.
    pub files: u64,
    /// What only an MSI package has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msi: Option<MsiInfo>,
    /// The source commit the package records it was built from: an OCI image's
    /// `org.opencontainers.image.revision`, an RPM's VCS tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// The identity of an MSI package beyond name and version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MsiInfo {
    /// `UpgradeCode`: the GUID shared by every version of the product, which major
    /// upgrades find the installed version by.
    pub upgrade_code: Option<String>,
    /// `ProductCode`: this version's GUID.
    pub product_code: Option<String>,
    /// `Manufacturer`.
    pub manufacturer: Option<String>,
    /// The long names of the files the File table installs, sorted.
    pub file_names: Vec<String>,
}

/// Inspects the package at `path` (a file, or an OCI layout directory).
pub fn inspect(path: &Path) -> Result<PackageInfo> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
    if meta.is_dir() {
        return inspect_oci(path);
    }
    let mut head = [0u8; 512];
    let n = read_up_to(&mut crate::fsread::open_regular(path)?.0, &mut head)
        .map_err(|e| Error::io("read", path, e))?;
    let head = &head[..n];
    if head.starts_with(b"!<arch>\n") {
        inspect_deb(path)
    } else if head.starts_with(&[0xed, 0xab, 0xee, 0xdb]) {
        inspect_rpm(path)
    } else if head.starts_with(&CFB_MAGIC) {
        inspect_msi(path)
    } else {
        inspect_tar(path, head)
    }
}

/// The compound-file (OLE) signature MSI packages start with.
const CFB_MAGIC: [u8; 8] = [0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];

fn fail(path: &Path, reason: impl Into<String>) -> Error {
    Error::Inspect {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match reader.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Exactly `len` bytes, or an error when the input ends first. Memory grows with what is
/// actually read, so a header claiming 64 MiB in a 1 KiB file costs 1 KiB, not 64 MiB.
fn read_exactly(reader: &mut impl Read, len: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    reader.take(len).read_to_end(&mut data)?;
    if (data.len() as u64) < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} of {len} bytes present", data.len()),
        ));
    }
    Ok(data)
}

/// How much decompressed tar stream inspecting a compressed input of `input_len` bytes may
/// read: what [`crate::unpack::unpack`]'s default [`Limits`] would let it write (total
/// size, and the ratio to the input once past a grace), plus headroom for tar headers.
/// Inspecting only counts files, but streaming a decompression bomb's terabytes would
/// still take hours of CPU.
fn inflation_cap(input_len: u64) -> u64 {
    let l = Limits::default();
    let by_ratio = l
        .max_ratio
        .saturating_mul(input_len)
        .max(l.ratio_grace_bytes)
        // Headers and block padding of many small files are not file content.
        .saturating_mul(2);
    by_ratio.min(l.max_total_bytes)
}

/// A decompressed stream that fails once more than `cap` bytes were read from it.
struct Inflation<R> {
    inner: R,
    read: u64,
    cap: u64,
    input_len: u64,
}

impl<R> Inflation<R> {
    fn new(inner: R, input_len: u64) -> Self {
        Self {
            inner,
            read: 0,
            cap: inflation_cap(input_len),
            input_len,
        }
    }
}

/// The error [`Inflation`] stops with, found again under the `tar` crate's wrapping by
/// [`too_inflated`] so the message does not call the archive corrupt.
#[derive(Debug)]
struct InflationExceeded {
    input_len: u64,
    cap: u64,
}

impl std::fmt::Display for InflationExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its {} compressed bytes decompress to more than {} bytes, beyond what `package \
             unpack` accepts: a decompression bomb, or an archive over unpack's limits",
            self.input_len, self.cap
        )
    }
}

impl std::error::Error for InflationExceeded {}

/// The [`InflationExceeded`] somewhere inside `e`, if that is what stopped the read.
fn too_inflated(e: &io::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let inner = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(b) = candidate.downcast_ref::<InflationExceeded>() {
                return Some(b.to_string());
            }
        }
        cur = inner.or_else(|| err.source());
    }
    None
}

/// "the tar stream is corrupt" unless the read was stopped as a decompression bomb.
fn tar_failure(path: &Path, what: &str, e: &io::Error) -> Error {
    fail(
        path,
        too_inflated(e).unwrap_or_else(|| format!("{what} ({e})")),
    )
}

impl<R: Read> Read for Inflation<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.cap && !buf.is_empty() {
            return Err(io::Error::other(InflationExceeded {
                input_len: self.input_len,
                cap: self.cap,
            }));
        }
        let room = usize::try_from(self.cap - self.read).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        let n = self.inner.read(&mut buf[..take])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Counts entries against [`Limits::max_entries`], as unpacking would.
fn count_entry(entries: &mut u64) -> io::Result<()> {
    *entries += 1;
    let max = Limits::default().max_entries;
    if *entries > max {
        return Err(io::Error::other(format!(
            "it has more than {max} entries, beyond what `package unpack` accepts"
        )));
    }
    Ok(())
}

fn read_capped(reader: impl Read, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    reader
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| fail(path, format!("cannot read {what} ({e})")))?;
    if data.len() as u64 > MAX_METADATA_BYTES {
        return Err(fail(
            path,
            format!("{what} is larger than {MAX_METADATA_BYTES} bytes"),
        ));
    }
    Ok(data)
}

fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
}

fn inspect_tar(path: &Path, head: &[u8]) -> Result<PackageInfo> {
    let plain_tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if !plain_tar && !is_compressed(head) {
        return Err(fail(
            path,
            "it is not a tarball (.tar, .tar.gz, .tar.zst, .tar.xz), .deb, .rpm or OCI layout directory",
        ));
    }
    let (file, input_len) = crate::fsread::open_regular(path)?;
    let stream = decompressed(file).map_err(|e| Error::io("read", path, e))?;
    let (stream, budget) = TarBudget::wrap(Inflation::new(stream, input_len));
    let mut archive = tar::Archive::new(stream);
    let mut files = 0u64;
    let mut seen = 0u64;
    let mut manifest: Option<ArchiveManifest> = None;
    let entries = archive
        .entries()
        .map_err(|e| fail(path, format!("it is not a readable tar archive ({e})")))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| tar_failure(path, "the tar stream is corrupt or truncated", &e))?;
        count_entry(&mut seen).map_err(|e| fail(path, e.to_string()))?;
        budget.entry(entry.size());
        let entry_path = entry.path_bytes();
        let name = entry_path.strip_prefix(b"./").unwrap_or(&entry_path);
        if name == ARCHIVE_MANIFEST_NAME.as_bytes() {
            let data = read_capped(entry, path, ARCHIVE_MANIFEST_NAME)?;
            let parsed: ArchiveManifest = serde_json::from_slice(&data).map_err(|e| {
                fail(
                    path,
                    format!("its {ARCHIVE_MANIFEST_NAME} is not a Slipway archive manifest ({e})"),
                )
            })?;
            if parsed.schema != ARCHIVE_MANIFEST_SCHEMA {
                return Err(fail(
                    path,
                    format!(
                        "its {ARCHIVE_MANIFEST_NAME} has schema '{}', this version reads '{ARCHIVE_MANIFEST_SCHEMA}'",
                        parsed.schema
                    ),
                ));
            }
            manifest = Some(parsed);
        } else if entry.header().entry_type().is_file() {
            files += 1;
        }
    }
    Ok(match manifest {
        Some(m) => PackageInfo {
            format: PackageFormat::Slipway,
            name: Some(m.name),
            version: Some(m.version),
            architecture: None,
            dependencies: Vec::new(),
            digest: sha256_file(path)?,
            files,
            msi: None,
            revision: None,
        },
        None => PackageInfo {
            format: PackageFormat::Tar,
            name: None,
            version: None,
            architecture: None,
            dependencies: Vec::new(),
            digest: sha256_file(path)?,
            files,
            msi: None,
            revision: None,
        },
    })
}

fn inspect_deb(path: &Path) -> Result<PackageInfo> {
    let (file, _) = crate::fsread::open_regular(path)?;
    let mut ar = ar::Archive::new(file);
    let mut control: Option<String> = None;
    let mut files: Option<u64> = None;
    while let Some(member) = ar.next_entry() {
        let member =
            member.map_err(|e| fail(path, format!("its ar container is corrupt ({e})")))?;
        let id = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if id.starts_with("control.tar") {
            let stream = decompressed(member)
                .map_err(|e| fail(path, format!("cannot decompress {id} ({e})")))?;
            let (stream, budget) = TarBudget::wrap(stream);
            let mut tar = tar::Archive::new(stream);
            let entries = tar
                .entries()
                .map_err(|e| fail(path, format!("{id} is not a tar archive ({e})")))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail(path, format!("{id} is corrupt ({e})")))?;
                budget.entry(entry.size());
                let entry_path = entry.path_bytes();
                let name = entry_path.strip_prefix(b"./").unwrap_or(&entry_path);
                if name == b"control" {
                    let data = read_capped(entry, path, "the control file")?;
                    control = Some(String::from_utf8_lossy(&data).into_owned());
                    break;
                }
            }
        } else if id.starts_with("data.tar") {
            let input_len = member.header().size();
            let stream = decompressed(member)
                .map_err(|e| fail(path, format!("cannot decompress {id} ({e})")))?;
            let stream = Inflation::new(stream, input_len);
            files = Some(
                count_tar_files(stream)
                    .map_err(|e| tar_failure(path, &format!("{id} is corrupt"), &e))?,
            );
        }
    }
    let control = control.ok_or_else(|| {
        fail(
            path,
            "it has no control.tar member with a control file: it is cut short, or not a Debian package",
        )
    })?;
    let fields = parse_control(&control);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut dependencies = Vec::new();
    for key in ["Pre-Depends", "Depends"] {
        if let Some(value) = field(key) {
            dependencies.extend(
                value
                    .split(',')
                    .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
                    .filter(|d| !d.is_empty()),
            );
        }
    }
    Ok(PackageInfo {
        format: PackageFormat::Deb,
        name: field("Package"),
        version: field("Version"),
        architecture: field("Architecture"),
        dependencies,
        digest: sha256_file(path)?,
        files: files.ok_or_else(|| {
            fail(
                path,
                "it has no data.tar member: it is cut short (a download or copy that stopped), or not a Debian package",
            )
        })?,
        msi: None,
        revision: None,
    })
}

/// Parses a deb822 paragraph: `Key: value` lines, continuation lines start with a blank.
fn parse_control(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        } else if line.trim().is_empty() && !fields.is_empty() {
            // Only the first paragraph describes the binary package.
            break;
        }
    }
    fields
}

fn count_tar_files(stream: impl Read) -> io::Result<u64> {
    let (stream, budget) = TarBudget::wrap(stream);
    let mut archive = tar::Archive::new(stream);
    let mut files = 0;
    let mut seen = 0u64;
    for entry in archive.entries()? {
        let entry = entry?;
        count_entry(&mut seen)?;
        budget.entry(entry.size());
        if entry.header().entry_type().is_file() {
            files += 1;
        }
    }
    Ok(files)
}

// RPM header tags and types (rpm's lib/rpmtag.h).
const RPMTAG_NAME: u32 = 1000;
const RPMTAG_VERSION: u32 = 1001;
const RPMTAG_RELEASE: u32 = 1002;
const RPMTAG_EPOCH: u32 = 1003;
const RPMTAG_ARCH: u32 = 1022;
const RPMTAG_OLDFILENAMES: u32 = 1027;
const RPMTAG_REQUIREFLAGS: u32 = 1048;
const RPMTAG_REQUIRENAME: u32 = 1049;
const RPMTAG_REQUIREVERSION: u32 = 1050;
const RPMTAG_BASENAMES: u32 = 1117;
const RPM_INT32: u32 = 4;
const RPM_STRING: u32 = 6;
const RPM_STRING_ARRAY: u32 = 8;
const RPM_I18NSTRING: u32 = 9;
const RPMSENSE_LESS: u32 = 0x02;
const RPMSENSE_GREATER: u32 = 0x04;
const RPMSENSE_EQUAL: u32 = 0x08;
const HEADER_MAGIC: [u8; 3] = [0x8e, 0xad, 0xe8];

struct RpmHeader {
    index: Vec<(u32, u32, u32, u32)>,
    store: Vec<u8>,
}

impl RpmHeader {
    /// Reads one header structure; returns it and the bytes it occupied.
    fn read(reader: &mut impl Read, path: &Path, which: &str) -> Result<(Self, u64)> {
        let mut intro = [0u8; 16];
        reader
            .read_exact(&mut intro)
            .map_err(|e| fail(path, format!("the {which} header is truncated ({e})")))?;
        if intro[..3] != HEADER_MAGIC {
            return Err(fail(
                path,
                format!("the {which} header has no header magic; the RPM is corrupt"),
            ));
        }
        let count = u32::from_be_bytes([intro[8], intro[9], intro[10], intro[11]]);
        let size = u32::from_be_bytes([intro[12], intro[13], intro[14], intro[15]]);
        // rpm itself caps headers at 256 MiB and 64k entries; stay well within that.
        if count > 65_536 || u64::from(size) > MAX_METADATA_BYTES {
            return Err(fail(
                path,
                format!(
                    "the {which} header claims {count} entries and {size} bytes, more than any real package"
                ),
            ));
        }
        let raw = read_exactly(reader, u64::from(count) * 16)
            .map_err(|e| fail(path, format!("the {which} header index is truncated ({e})")))?;
        let index = raw
            .chunks_exact(16)
            .map(|c| {
                let word = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                (word(0), word(4), word(8), word(12))
            })
            .collect();
        let store = read_exactly(reader, u64::from(size))
            .map_err(|e| fail(path, format!("the {which} header data is truncated ({e})")))?;
        Ok((
            RpmHeader { index, store },
            16 + u64::from(count) * 16 + u64::from(size),
        ))
    }

    fn find(&self, tag: u32) -> Option<(u32, usize, u32)> {
        self.index
            .iter()
            .find(|(t, ..)| *t == tag)
            .map(|&(_, kind, offset, count)| (kind, offset as usize, count))
    }

    fn strings(&self, tag: u32) -> Vec<String> {
        let Some((kind, offset, count)) = self.find(tag) else {
            return Vec::new();
        };
        if !matches!(kind, RPM_STRING | RPM_STRING_ARRAY | RPM_I18NSTRING) {
            return Vec::new();
        }
        let count = if kind == RPM_STRING {
            1
        } else {
            count as usize
        };
        let mut out = Vec::with_capacity(count.min(4096));
        let mut rest = self.store.get(offset..).unwrap_or_default();
        for _ in 0..count {
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                break;
            };
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            rest = &rest[end + 1..];
        }
        out
    }

    fn string(&self, tag: u32) -> Option<String> {
        self.strings(tag).into_iter().next()
    }

    fn int32s(&self, tag: u32) -> Vec<u32> {
        let Some((RPM_INT32, offset, count)) = self.find(tag) else {
            return Vec::new();
        };
        self.store
            .get(offset..)
            .unwrap_or_default()
            .chunks_exact(4)
            .take(count as usize)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn int64s(&self, tag: u32) -> Vec<u64> {
        let Some((RPM_INT64, offset, count)) = self.find(tag) else {
            return Vec::new();
        };
        self.store
            .get(offset..)
            .unwrap_or_default()
            .chunks_exact(8)
            .take(count as usize)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }

    fn count(&self, tag: u32) -> Option<u64> {
        self.find(tag).map(|(_, _, count)| u64::from(count))
    }
}

fn inspect_rpm(path: &Path) -> Result<PackageInfo> {
    let mut file = io::BufReader::new(crate::fsread::open_regular(path)?.0);
    let mut lead = [0u8; 96];
    file.read_exact(&mut lead)
        .map_err(|e| fail(path, format!("the RPM lead is truncated ({e})")))?;
    let (signature, signature_len) = RpmHeader::read(&mut file, path, "signature")?;
    // The signature header is padded to a multiple of 8 bytes.
    let padding = (8 - signature_len % 8) % 8;
    io::copy(&mut (&mut file).take(padding), &mut io::sink())
        .map_err(|e| Error::io("read", path, e))?;
    let (header, header_len) = RpmHeader::read(&mut file, path, "main")?;
    check_rpm_payload(path, &mut file, &signature, &header, header_len)?;

    let version = match (header.string(RPMTAG_VERSION), header.string(RPMTAG_RELEASE)) {
        (Some(v), Some(r)) => Some(format!("{v}-{r}")),
        (v, _) => v,
    };
    let version = match (header.int32s(RPMTAG_EPOCH).first(), version) {
        (Some(epoch), Some(v)) => Some(format!("{epoch}:{v}")),
        (_, v) => v,
    };
    let names = header.strings(RPMTAG_REQUIRENAME);
    let flags = header.int32s(RPMTAG_REQUIREFLAGS);
    let versions = header.strings(RPMTAG_REQUIREVERSION);
    let mut dependencies = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // rpmlib(...) entries are features of rpm itself, not packages to install.
        if name.starts_with("rpmlib(") {
            continue;
        }
        let flag = flags.get(i).copied().unwrap_or(0);
        let op = match (
            flag & RPMSENSE_LESS != 0,
            flag & RPMSENSE_GREATER != 0,
            flag & RPMSENSE_EQUAL != 0,
        ) {
            (true, false, false) => "<",
            (true, false, true) => "<=",
            (false, true, false) => ">",
            (false, true, true) => ">=",
            (false, false, true) => "=",
            _ => "",
        };
        let dep = match versions.get(i) {
            Some(v) if !v.is_empty() && !op.is_empty() => format!("{name} {op} {v}"),
            _ => name.clone(),
        };
        if !dependencies.contains(&dep) {
            dependencies.push(dep);
        }
    }
    Ok(PackageInfo {
        format: PackageFormat::Rpm,
        name: header.string(RPMTAG_NAME),
        version,
        architecture: header.string(RPMTAG_ARCH),
        dependencies,
        digest: sha256_file(path)?,
        files: header
            .count(RPMTAG_BASENAMES)
            .or_else(|| header.count(RPMTAG_OLDFILENAMES))
            .unwrap_or(0),
        msi: None,
        revision: header.string(RPMTAG_VCS).filter(|v| !v.is_empty()),
    })
}

// Signature header tags (rpm's lib/rpmtag.h, RPMSIGTAG_*) and main header payload tags.
const RPMSIGTAG_SIZE: u32 = 1000;
const RPMSIGTAG_LONGSIZE: u32 = 270;
const RPMTAG_PAYLOADDIGEST: u32 = 5092;
/// `%{vcs}`: where the package was built from (rpm 4.15+).
const RPMTAG_VCS: u32 = 5034;
const RPMTAG_PAYLOADDIGESTALGO: u32 = 5093;
const RPM_INT64: u32 = 5;
/// `PGPHASHALGO_SHA256`.
const RPM_DIGEST_SHA256: u32 = 8;

/// The rest of an RPM after its headers is the compressed payload: its length must be what
/// the signature header records (header + payload) and, when the package records a sha256
/// payload digest (rpm 4.14+), its bytes must hash to it — a package cut short (a download
/// that stopped) or altered in its payload is refused here, not when it is installed.
fn check_rpm_payload(
    path: &Path,
    file: &mut impl Read,
    signature: &RpmHeader,
    header: &RpmHeader,
    header_len: u64,
) -> Result<()> {
    let (digest, payload_len) =
        crate::digest::sha256_reader(file).map_err(|e| Error::io("read", path, e))?;
    let recorded = signature
        .int64s(RPMSIGTAG_LONGSIZE)
        .first()
        .copied()
        .or_else(|| {
            signature
                .int32s(RPMSIGTAG_SIZE)
                .first()
                .map(|v| u64::from(*v))
        });
    if let Some(size) = recorded
        && header_len + payload_len != size
    {
        return Err(fail(
            path,
            format!(
                "its header and payload are {} bytes but the signature header records {size}: the package is cut short or has bytes appended",
                header_len + payload_len
            ),
        ));
    }
    let algo = header.int32s(RPMTAG_PAYLOADDIGESTALGO).first().copied();
    if let (Some(RPM_DIGEST_SHA256), Some(expected)) = (algo, header.string(RPMTAG_PAYLOADDIGEST))
        && !expected.eq_ignore_ascii_case(&digest)
    {
        return Err(fail(
            path,
            format!(
                "its payload's sha256 is {digest} but the header records {expected}: the payload is corrupt or cut short"
            ),
        ));
    }
    Ok(())
}

fn inspect_oci(layout: &Path) -> Result<PackageInfo> {
    let image = crate::oci::verify_layout(layout, None)?;
    Ok(PackageInfo {
        format: PackageFormat::Oci,
        name: image.name,
        version: image.version,
        architecture: image.architecture,
        dependencies: Vec::new(),
        digest: image.manifest_digest,
        files: image.layers,
        msi: None,
        revision: image.revision,
    })
}

/// Largest MSI read: the tables are small, but the container's allocation tables grow with
/// the embedded cabinets, and all of them are read.
const MAX_MSI_BYTES: u64 = 4 * 1024 * 1024 * 1024;

fn inspect_msi(path: &Path) -> Result<PackageInfo> {
    let (file, len) = crate::fsread::open_regular(path)?;
    if len > MAX_MSI_BYTES {
        return Err(fail(
            path,
            format!("it is {len} bytes, more than the {MAX_MSI_BYTES}-byte limit for MSI packages"),
        ));
    }
    // The msi crate reads untrusted bytes and may panic on some malformed inputs; a panic
    // there must be a refused package, never a crashed `slipway`.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_msi(file)));
    let (properties, file_names, arch) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(fail(
                path,
                format!("it is not a readable MSI package ({e}): cut short, or not an MSI"),
            ));
        }
        Err(_) => {
            return Err(fail(
                path,
                "it is not a readable MSI package (its structure is corrupt)",
            ));
        }
    };
    let prop = |k: &str| properties.get(k).cloned();
    let name = prop("ProductName");
    let version = prop("ProductVersion");
    if name.is_none() || version.is_none() {
        return Err(fail(
            path,
            "its Property table has no ProductName or ProductVersion, which every MSI package must have",
        ));
    }
    Ok(PackageInfo {
        format: PackageFormat::Msi,
        name,
        version,
        architecture: arch,
        dependencies: Vec::new(),
        digest: sha256_file(path)?,
        files: file_names.len() as u64,
        msi: Some(MsiInfo {
            upgrade_code: prop("UpgradeCode"),
            product_code: prop("ProductCode"),
            manufacturer: prop("Manufacturer"),
            file_names,
        }),
        revision: None,
    })
}

/// The Property table, the File table's long names (sorted) and the platform of an MSI.
type MsiTables = (
    std::collections::BTreeMap<String, String>,
    Vec<String>,
    Option<String>,
);

fn read_msi(file: File) -> io::Result<MsiTables> {
    let mut package = msi::Package::open(file)?;
    // The platform is the first part of the summary's template (`x64;1033`).
    let arch = package
        .summary_info()
        .arch()
        .map(|a| a.split(';').next().unwrap_or(a).to_owned())
        .filter(|a| !a.is_empty());
    let has = |p: &msi::Package<File>, table: &str, cols: &[&str]| {
        p.get_table(table)
            .is_some_and(|t| cols.iter().all(|c| t.has_column(c)))
    };
    let mut properties = std::collections::BTreeMap::new();
    if has(&package, "Property", &["Property", "Value"]) {
        for row in package.select_rows(msi::Select::table("Property"))? {
            if let (Some(k), Some(v)) = (row["Property"].as_str(), row["Value"].as_str()) {
                properties.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let mut names = Vec::new();
    if has(&package, "File", &["FileName"]) {
        for row in package.select_rows(msi::Select::table("File"))? {
            if let Some(n) = row["FileName"].as_str() {
                // `SHORT~1.TXT|long name.txt`: the long name is what users see.
                names.push(n.rsplit('|').next().unwrap_or(n).to_owned());
            }
        }
    }
    names.sort();
    Ok((properties, names, arch))
}
