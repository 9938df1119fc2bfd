//! `slipway package image`'s library half: a directory becomes a deterministic OCI image
//! (layout or oci-archive) that Slipway's own verifier and the real `skopeo` read alike.

use std::path::Path;

use slipway_package::{ImageOptions, build_image, oci, verify_artifact};

use crate::common::{run_ok, write};

fn options(version: &str) -> ImageOptions {
    ImageOptions {
        name: "api".into(),
        version: version.into(),
        entrypoint: vec!["/bin/api".into()],
        cmd: vec!["--port".into(), "8080".into()],
        env: vec!["MODE=prod".into()],
        revision: Some("0123abcd".into()),
        mtime: 0,
    }
}

fn rootfs(at: &Path, payload: &[u8]) {
    write(&at.join("bin/api"), payload);
    write(&at.join("etc/api.toml"), b"port = 8080\n");
    std::os::unix::fs::symlink("../bin/api", at.join("etc/api-link")).unwrap();
}

#[test]
fn the_same_directory_gives_the_same_image_whenever_and_wherever_it_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    rootfs(&a, b"#!/bin/sh\necho api\n");
    // Another copy: other mtimes, other inode order, other path.
    rootfs(&b, b"#!/bin/sh\necho api\n");
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for f in ["bin/api", "etc/api.toml"] {
        std::fs::File::options()
            .write(true)
            .open(b.join(f))
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    let one = build_image(&a, &tmp.path().join("one"), &options("1.0.0")).unwrap();
    let two = build_image(&b, &tmp.path().join("two"), &options("1.0.0")).unwrap();
    assert_eq!(one.manifest_digest, two.manifest_digest);
    assert_eq!(one.layer_digest, two.layer_digest);

    // Slipway's verifier: every blob checked against its descriptor, the labels read.
    let image = oci::verify_layout(&one.path, Some(&one.manifest_digest)).unwrap();
    assert_eq!(image.name.as_deref(), Some("api"));
    assert_eq!(image.version.as_deref(), Some("1.0.0"));
    assert_eq!(image.revision.as_deref(), Some("0123abcd"));
    assert_eq!(image.layers, 1);
    // As an artifact, known by its manifest digest.
    verify_artifact(tmp.path(), "one", &one.manifest_digest, None, None).unwrap();

    // Another byte is another image.
    let c = tmp.path().join("c");
    rootfs(&c, b"#!/bin/sh\necho API\n");
    let three = build_image(&c, &tmp.path().join("three"), &options("1.0.0")).unwrap();
    assert_ne!(three.manifest_digest, one.manifest_digest);

    // The real skopeo reads it and names it by the same digest.
    let out = run_ok(
        "skopeo",
        "skopeo",
        &[
            "inspect",
            "--format",
            "{{.Digest}} {{.Architecture}}",
            &format!("oci:{}", one.path.display()),
        ],
        tmp.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("sha256:{} ", one.manifest_digest)),
        "skopeo: {text}"
    );
}

#[test]
fn an_oci_archive_is_a_deterministic_file_skopeo_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rootfs(&src, b"payload");
    let one = build_image(&src, &tmp.path().join("one.tar"), &options("2.0.0")).unwrap();
    let two = build_image(&src, &tmp.path().join("two.tar"), &options("2.0.0")).unwrap();
    let (sa, sb) = (
        one.archive_sha256.clone().unwrap(),
        two.archive_sha256.unwrap(),
    );
    assert_eq!(sa, sb);
    assert_eq!(one.manifest_digest, two.manifest_digest);
    // A file artifact: known by the archive's sha256.
    verify_artifact(tmp.path(), "one.tar", &sa, None, None).unwrap();
    let out = run_ok(
        "skopeo",
        "skopeo",
        &[
            "inspect",
            "--format",
            "{{.Digest}}",
            &format!("oci-archive:{}", one.path.display()),
        ],
        tmp.path(),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sha256:{}", one.manifest_digest)
    );
}

#[test]
fn an_image_is_never_built_over_an_existing_output_or_inside_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    rootfs(&src, b"payload");
    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    let e = build_image(&src, &tmp.path().join("taken"), &options("1.0.0")).unwrap_err();
    assert!(e.to_string().contains("exists already"), "{e}");
    let e = build_image(&src, &src.join("out"), &options("1.0.0")).unwrap_err();
    assert!(e.to_string().contains("inside the input"), "{e}");
    let mut bad = options("1.0.0");
    bad.env = vec!["NOEQUALS".into()];
    let e = build_image(&src, &tmp.path().join("x"), &bad).unwrap_err();
    assert!(e.to_string().contains("NAME=value"), "{e}");
}
