//! Safe unpacking: each unsafe construct, hand-crafted with raw tar headers, is refused,
//! and nothing is written anywhere (no destination, no temp dir, nothing outside).

use std::io::Write;
use std::path::{Path, PathBuf};

use slipway_package::{BuildOptions, Compression, Error, Limits, build_archive_with, unpack};
use tar::{EntryType, Header};

use crate::common::{tree, write};

/// One raw entry: the name and link name bytes go straight into the header, bypassing
/// the checks the `tar` crate's builder applies to paths.
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: &'a [u8],
}

fn raw(name: &str, kind: EntryType, link: &str, data: &[u8]) -> Raw<'static> {
    Raw {
        name: Box::leak(name.as_bytes().to_vec().into_boxed_slice()),
        kind,
        link: Box::leak(link.as_bytes().to_vec().into_boxed_slice()),
        data: Box::leak(data.to_vec().into_boxed_slice()),
    }
}

fn file(name: &str, data: &[u8]) -> Raw<'static> {
    raw(name, EntryType::Regular, "", data)
}

fn tar_bytes(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name);
        old.linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        builder.append(&h, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A sandbox: `archive.tar` and an empty `work/` in which `work/out` is the destination.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(archive: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("archive.tar"), archive);
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Sandbox { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn archive(&self) -> PathBuf {
        self.path().join("archive.tar")
    }
    fn dest(&self) -> PathBuf {
        self.path().join("work/out")
    }
    fn unpack(&self, limits: &Limits) -> Result<slipway_package::Unpacked, Error> {
        unpack(&self.archive(), &self.dest(), limits)
    }
    /// Nothing beyond the archive and the empty work dir exists in the sandbox.
    fn assert_untouched(&self) {
        assert_eq!(
            tree(self.path()),
            ["archive.tar", "work"],
            "something was written"
        );
    }
}

fn refused(entries: &[Raw<'_>], entry: &str, reason: &str) -> Sandbox {
    let sandbox = Sandbox::new(&tar_bytes(entries));
    let err = sandbox.unpack(&Limits::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnsafeEntry { .. }), "{msg}");
    assert!(
        msg.contains(&format!("entry '{entry}'")),
        "message does not name the entry: {msg}"
    );
    assert!(msg.contains(reason), "expected '{reason}' in: {msg}");
    sandbox.assert_untouched();
    sandbox
}

#[test]
fn path_traversal_is_refused() {
    refused(
        &[file("ok.txt", b"fine"), file("../../escaped.txt", b"x")],
        "../../escaped.txt",
        "'..'",
    );
    refused(
        &[file("a/../../escaped.txt", b"x")],
        "a/../../escaped.txt",
        "'..'",
    );
}

#[test]
fn absolute_paths_are_refused() {
    let probe = tempfile::tempdir().unwrap();
    let target = format!("{}/abs.txt", probe.path().display());
    refused(&[file(&target, b"x")], &target, "absolute");
    assert!(!Path::new(&target).exists());
}

#[test]
fn escaping_symlinks_are_refused() {
    refused(
        &[raw("link", EntryType::Symlink, "../../outside", b"")],
        "link",
        "escapes",
    );
    refused(
        &[raw("etc", EntryType::Symlink, "/etc", b"")],
        "etc",
        "escapes",
    );
    // Two links each fine on their own, escaping together: sub/up -> .. is the root,
    // esc -> sub/up/.. is lexically `sub`, really the parent of the destination.
    refused(
        &[
            raw("sub/", EntryType::Directory, "", b""),
            raw("sub/up", EntryType::Symlink, "..", b""),
            raw("esc", EntryType::Symlink, "sub/up/..", b""),
        ],
        "esc",
        "outside",
    );
    refused(
        &[raw("dangling", EntryType::Symlink, "nothing-here", b"")],
        "dangling",
        "not in the archive",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // Classic: a link to a directory inside, then a file "through" it; even an inside
    // link must not redirect later entries.
    refused(
        &[
            raw("real/", EntryType::Directory, "", b""),
            raw("alias", EntryType::Symlink, "real", b""),
            file("alias/file.txt", b"x"),
        ],
        "alias/file.txt",
        "through 'alias'",
    );
    // A link planted where a later file of the same name is written.
    refused(
        &[
            file("t.txt", b"t"),
            raw("l.txt", EntryType::Symlink, "t.txt", b""),
            file("l.txt", b"overwrite"),
        ],
        "l.txt",
        "appears twice",
    );
}

#[test]
fn escaping_hardlinks_are_refused() {
    refused(
        &[raw("h", EntryType::Link, "../../etc/passwd", b"")],
        "h",
        "hardlink to '../../etc/passwd'",
    );
    refused(
        &[raw("h", EntryType::Link, "/etc/passwd", b"")],
        "h",
        "escapes",
    );
    refused(
        &[raw("h", EntryType::Link, "missing.txt", b"")],
        "h",
        "not a file unpacked earlier",
    );
}

#[test]
fn device_and_fifo_entries_are_refused() {
    refused(
        &[raw("dev/null", EntryType::Char, "", b"")],
        "dev/null",
        "device or fifo",
    );
    refused(
        &[raw("disk", EntryType::Block, "", b"")],
        "disk",
        "device or fifo",
    );
    refused(
        &[raw("pipe", EntryType::Fifo, "", b"")],
        "pipe",
        "device or fifo",
    );
}

#[test]
fn decompression_bombs_are_refused() {
    // 64 MiB of zeros gzip to about 64 KiB: a 1000:1 ratio.
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let tar = tar_bytes(&[file("zeros.bin", &zeros)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let sandbox = Sandbox::new(&gz.finish().unwrap());
    let err = sandbox.unpack(&Limits::default()).unwrap_err();
    assert!(
        err.to_string().contains("entry 'zeros.bin'") && err.to_string().contains("ratio"),
        "{err}"
    );
    sandbox.assert_untouched();

    let tar = tar_bytes(&[file("big.bin", &[7u8; 4096])]);
    let sandbox = Sandbox::new(&tar);
    let limits = Limits {
        max_total_bytes: 4095,
        ..Limits::default()
    };
    let err = sandbox.unpack(&limits).unwrap_err();
    assert!(err.to_string().contains("limit of 4095 bytes"), "{err}");
    sandbox.assert_untouched();

    let many: Vec<Raw<'_>> = (0..20).map(|i| file(&format!("f{i}"), b"x")).collect();
    let sandbox = Sandbox::new(&tar_bytes(&many));
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = sandbox.unpack(&limits).unwrap_err();
    assert!(
        err.to_string().contains("entry 'f10'") && err.to_string().contains("10 entries"),
        "{err}"
    );
    sandbox.assert_untouched();
}

/// A `.tar.zst` of about 50 KB whose first header announces a 1 GiB GNU long name (or
/// PAX record) and carries it: the `tar` crate reads such extensions whole into memory
/// before handing out the entry they describe, so without a bound `unpack` and `inspect`
/// allocated the whole gigabyte (found while fuzzing `inspect`'s tar paths).
fn extension_bomb(kind: EntryType) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(1 << 30);
    h.set_cksum();
    let mut out = zstd::encode_all(h.as_bytes().as_slice(), 1).unwrap();
    // zstd frames concatenate; each of these is 49 bytes for 1 MiB.
    let frame = zstd::encode_all(&vec![b'a'; 1 << 20][..], 19).unwrap();
    for _ in 0..1024 {
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn tar_header_extension_bombs_are_refused_by_unpack_and_inspect() {
    for kind in [EntryType::GNULongName, EntryType::XHeader] {
        let bomb = extension_bomb(kind);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let sandbox = Sandbox::new(&bomb);
        let err = sandbox.unpack(&Limits::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Unpack { .. }), "{msg}");
        assert!(msg.contains("long name or PAX records"), "{kind:?}: {msg}");
        sandbox.assert_untouched();

        let err = slipway_package::inspect(&sandbox.archive()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("long name or PAX records"), "{kind:?}: {msg}");
        assert!(msg.contains("archive.tar"), "{msg}");
    }
}

/// A `.tar.zst` of about 200 KB holding one regular file of 4 GiB of zeros: what
/// `inspect` (which only counts files) used to stream through whole, for as long as the
/// bomb was big. It must stop where `unpack`'s ratio limit would.
#[test]
fn inspect_stops_reading_a_decompression_bomb() {
    let mut h = Header::new_gnu();
    h.set_path("zeros.bin").unwrap();
    h.set_entry_type(EntryType::Regular);
    h.set_size(4 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = zstd::encode_all(h.as_bytes().as_slice(), 1).unwrap();
    let frame = zstd::encode_all(&vec![0u8; 1 << 20][..], 19).unwrap();
    for _ in 0..4096 {
        out.extend_from_slice(&frame);
    }
    assert!(out.len() < 256 * 1024, "{}", out.len());
    let sandbox = Sandbox::new(&out);
    let err = slipway_package::inspect(&sandbox.archive()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("decompress to more than"), "{msg}");
    assert!(!msg.contains("corrupt or truncated"), "{msg}");
    assert!(msg.contains("archive.tar"), "{msg}");

    // An honest archive of the same shape, small enough, is still inspected.
    let tar = tar_bytes(&[file("zeros.bin", &[0u8; 1 << 20])]);
    let sandbox = Sandbox::new(&zstd::encode_all(&tar[..], 19).unwrap());
    let info = slipway_package::inspect(&sandbox.archive()).unwrap();
    assert_eq!(info.files, 1);
}

#[test]
fn existing_destination_is_refused() {
    let sandbox = Sandbox::new(&tar_bytes(&[file("a", b"a")]));
    std::fs::create_dir(sandbox.dest()).unwrap();
    let err = sandbox.unpack(&Limits::default()).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn slipway_archive_round_trips_with_links_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("bin/api"), b"#!/bin/sh\n");
    std::fs::set_permissions(src.join("bin/api"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&src.join("share/doc/readme.md"), b"hello");
    std::os::unix::fs::symlink("../bin/api", src.join("share/api")).unwrap();
    let archive = dir.path().join("api.tar.zst");
    let opts = BuildOptions {
        mtime: 0,
        compression: Some(Compression::Zstd),
        skip: Vec::new(),
    };
    build_archive_with(&src, "api", "1.0.0", &archive, &opts).unwrap();

    let dest = dir.path().join("out");
    let result = unpack(&archive, &dest, &Limits::default()).unwrap();
    assert_eq!(result.files, 3);
    assert_eq!(
        tree(&dest),
        [
            "bin",
            "bin/api",
            "share",
            "share/api",
            "share/doc",
            "share/doc/readme.md",
            "slipway-manifest.json"
        ]
    );
    assert_eq!(
        std::fs::read(dest.join("share/api")).unwrap(),
        b"#!/bin/sh\n"
    );
    let mode = std::fs::metadata(dest.join("bin/api"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    // Only `out` appeared next to the archive: the temp dir was renamed, not left behind.
    assert_eq!(
        tree(dir.path()).iter().filter(|p| !p.contains('/')).count(),
        3
    );

    // A hardlink to a file unpacked earlier is fine.
    let sandbox = Sandbox::new(&tar_bytes(&[
        file("a.txt", b"a"),
        raw("b.txt", EntryType::Link, "a.txt", b""),
    ]));
    sandbox.unpack(&Limits::default()).unwrap();
    assert_eq!(std::fs::read(sandbox.dest().join("b.txt")).unwrap(), b"a");
}
