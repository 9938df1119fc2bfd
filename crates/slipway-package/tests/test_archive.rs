//! Deterministic archives: same input, same bytes; normalised headers; embedded manifest.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use slipway_package::archive::ARCHIVE_MANIFEST_NAME;
use slipway_package::{BuildOptions, Compression, build_archive_with, sha256_file};

use crate::common::{run_ok, write};

fn sample_tree(root: &Path, exec_mode: u32, plain_mode: u32) {
    write(&root.join("bin/api"), b"#!/bin/sh\necho api\n");
    std::fs::set_permissions(
        root.join("bin/api"),
        std::fs::Permissions::from_mode(exec_mode),
    )
    .unwrap();
    write(&root.join("config/api.toml"), b"port = 8080\n");
    std::fs::set_permissions(
        root.join("config/api.toml"),
        std::fs::Permissions::from_mode(plain_mode),
    )
    .unwrap();
    write(&root.join("a-b.txt"), b"sorted before a/ and after a\n");
    write(
        &root.join(format!("deep/{}/long-name.txt", "x".repeat(120))),
        b"long path\n",
    );
    std::fs::create_dir_all(root.join("empty")).unwrap();
    symlink("bin/api", root.join("api-link")).unwrap();
}

fn options(compression: Compression, mtime: u64) -> BuildOptions {
    BuildOptions {
        mtime,
        compression: Some(compression),
        skip: Vec::new(),
    }
}

#[test]
fn same_input_gives_identical_bytes_across_copies_mtimes_and_owners() {
    for (compression, ext) in [
        (Compression::Gzip, "tar.gz"),
        (Compression::Zstd, "tar.zst"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (src, copy) = (dir.path().join("src"), dir.path().join("copy"));
        sample_tree(&src, 0o755, 0o644);
        sample_tree(&copy, 0o700, 0o600);
        // Different mtimes and owners in the copy.
        run_ok(
            "touch",
            "coreutils",
            &[
                "-d",
                "2001-02-03 04:05:06",
                "copy/bin/api",
                "copy/config/api.toml",
                "copy/config",
            ],
            dir.path(),
        );
        run_ok(
            "chown",
            "coreutils",
            &["-R", "65534:65534", "copy"],
            dir.path(),
        );

        let out1 = dir.path().join(format!("a1.{ext}"));
        let out2 = dir.path().join(format!("a2.{ext}"));
        let out3 = dir.path().join(format!("a3.{ext}"));
        let b1 = build_archive_with(&src, "api", "2.4.0", &out1, &options(compression, 0)).unwrap();
        let b2 = build_archive_with(&src, "api", "2.4.0", &out2, &options(compression, 0)).unwrap();
        let b3 =
            build_archive_with(&copy, "api", "2.4.0", &out3, &options(compression, 0)).unwrap();
        assert_eq!(b1.sha256, sha256_file(&out1).unwrap());
        assert_eq!(b1.sha256, b2.sha256, "{ext}: two builds differ");
        assert_eq!(
            b1.sha256, b3.sha256,
            "{ext}: a copy with other mtimes/owners/modes differs"
        );
        assert_eq!(std::fs::read(&out1).unwrap(), std::fs::read(&out3).unwrap());

        // A different SOURCE_DATE_EPOCH or content changes the bytes: the comparison bites.
        let out4 = dir.path().join(format!("a4.{ext}"));
        let b4 = build_archive_with(
            &src,
            "api",
            "2.4.0",
            &out4,
            &options(compression, 1_700_000_000),
        )
        .unwrap();
        assert_ne!(b1.sha256, b4.sha256);
        std::fs::write(src.join("config/api.toml"), b"port = 8081\n").unwrap();
        let b5 = build_archive_with(&src, "api", "2.4.0", &out4, &options(compression, 0)).unwrap();
        assert_ne!(b1.sha256, b5.sha256);
    }
}

#[test]
fn headers_are_normalised_sorted_and_manifest_lists_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src, 0o750, 0o640);
    let out = dir.path().join("api.tar.gz");
    let built = build_archive_with(
        &src,
        "api",
        "2.4.0",
        &out,
        &options(Compression::Gzip, 1_234_567),
    )
    .unwrap();

    let file = std::fs::File::open(&out).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut paths = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.gid().unwrap(), 0);
        assert_eq!(h.mtime().unwrap(), 1_234_567);
        assert!(h.username_bytes().is_none_or(|u| u.is_empty()));
        assert!(h.groupname_bytes().is_none_or(|g| g.is_empty()));
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = h.mode().unwrap();
        match h.entry_type() {
            tar::EntryType::Directory => assert_eq!(mode, 0o755, "{path}"),
            tar::EntryType::Symlink => assert_eq!(
                entry.link_name().unwrap().unwrap().to_str(),
                Some("bin/api")
            ),
            _ if path == "bin/api" => assert_eq!(mode, 0o755),
            _ => assert_eq!(mode, 0o644, "{path}"),
        }
        paths.push(path);
    }
    assert_eq!(paths[0], ARCHIVE_MANIFEST_NAME);
    let mut sorted = paths[1..].to_vec();
    sorted.sort();
    assert_eq!(paths[1..], sorted[..]);
    assert!(
        paths
            .iter()
            .any(|p| p.ends_with("long-name.txt") && p.len() > 100)
    );
    assert!(paths.contains(&"empty/".to_owned()) || paths.contains(&"empty".to_owned()));

    let m = &built.manifest;
    assert_eq!((m.name.as_str(), m.version.as_str()), ("api", "2.4.0"));
    let listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(listed.len(), 4);
    assert!(listed.contains(&"config/api.toml"));
    for f in &m.files {
        assert_eq!(
            f.sha256,
            sha256_file(&src.join(&f.path)).unwrap(),
            "{}",
            f.path
        );
        assert_eq!(f.size, std::fs::metadata(src.join(&f.path)).unwrap().len());
    }
    assert_eq!(m.symlinks.len(), 1);

    // GNU tar reads it and lists the same entries without user names.
    let listing = run_ok("tar", "tar", &["-tvzf", out.to_str().unwrap()], dir.path());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("root/root") || listing.contains("0/0"),
        "{listing}"
    );
}

#[test]
fn escaping_symlinks_reserved_names_and_bad_output_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.txt"), b"a");
    let err = build_archive_with(
        &src,
        "api",
        "1",
        &dir.path().join("x.zip"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains(".tar.gz"), "{err}");
    let err = build_archive_with(
        &src,
        "api",
        "1",
        &src.join("x.tar.gz"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("inside the input"), "{err}");

    symlink("/etc/passwd", src.join("passwd")).unwrap();
    let err = build_archive_with(
        &src,
        "api",
        "1",
        &dir.path().join("x.tar.gz"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    std::fs::remove_file(src.join("passwd")).unwrap();

    write(&src.join(ARCHIVE_MANIFEST_NAME), b"{}");
    let err = build_archive_with(
        &src,
        "api",
        "1",
        &dir.path().join("x.tar.gz"),
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(!dir.path().join("x.tar.gz").exists());
}
