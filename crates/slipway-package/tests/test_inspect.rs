//! Inspection of packages made by the real tools: dpkg-deb, rpmbuild, GNU tar, plus an
//! OCI layout written here and Slipway's own archives.

use std::path::Path;

use slipway_package::digest::sha256_bytes;
use slipway_package::{
    BuildOptions, Error, PackageFormat, build_archive_with, inspect, sha256_file,
};

use crate::common::{run_ok, write};

#[test]
fn inspects_a_deb_built_by_dpkg_deb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("pkg/DEBIAN/control"),
        b"Package: slipway-demo\nVersion: 1.2.3-1\nArchitecture: all\nMaintainer: Ops <ops@example.invalid>\n\
Pre-Depends: dpkg (>= 1.19)\nDepends: libc6 (>= 2.34), adduser\nDescription: demo package\n a longer description\n",
    );
    write(&d.join("pkg/usr/share/slipway-demo/a.txt"), b"a");
    write(&d.join("pkg/usr/share/slipway-demo/b.txt"), b"b");
    run_ok(
        "dpkg-deb",
        "dpkg-dev",
        &["--root-owner-group", "--build", "pkg", "demo.deb"],
        d,
    );
    let info = inspect(&d.join("demo.deb")).unwrap();
    assert_eq!(info.format, PackageFormat::Deb);
    assert_eq!(info.name.as_deref(), Some("slipway-demo"));
    assert_eq!(info.version.as_deref(), Some("1.2.3-1"));
    assert_eq!(info.architecture.as_deref(), Some("all"));
    assert_eq!(
        info.dependencies,
        ["dpkg (>= 1.19)", "libc6 (>= 2.34)", "adduser"]
    );
    assert_eq!(info.files, 2);
    assert_eq!(info.digest, sha256_file(&d.join("demo.deb")).unwrap());
}

/// Found in the fuzz runs' errors: a deb cut short between its members said "it is not a
/// Debian package", which sends one looking for the wrong problem.
#[test]
fn a_deb_cut_between_its_members_says_it_may_be_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("pkg/DEBIAN/control"),
        b"Package: demo\nVersion: 1\nArchitecture: all\nMaintainer: Ops <ops@example.invalid>\nDescription: demo\n",
    );
    write(&d.join("pkg/usr/share/demo/a.txt"), b"a");
    run_ok(
        "dpkg-deb",
        "dpkg-dev",
        &["--root-owner-group", "--build", "pkg", "demo.deb"],
        d,
    );
    let deb = std::fs::read(d.join("demo.deb")).unwrap();
    let data_member = deb.windows(8).position(|w| w == b"data.tar").unwrap();
    let cut = write(&d.join("cut.deb"), &deb[..data_member]);
    let msg = inspect(&cut).unwrap_err().to_string();
    assert!(
        msg.contains("cut.deb") && msg.contains("no data.tar member: it is cut short"),
        "{msg}"
    );
}

#[test]
fn inspects_an_rpm_built_by_rpmbuild() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("demo.spec"),
        b"Name: slipway-demo\nVersion: 2.0.1\nRelease: 3\nSummary: demo\nLicense: MIT\nBuildArch: noarch\n\
Requires: bash >= 5.0\nRequires: coreutils\n\n%description\ndemo package\n\n%install\n\
mkdir -p %{buildroot}/opt/demo\necho a > %{buildroot}/opt/demo/a.txt\necho b > %{buildroot}/opt/demo/b.txt\n\
echo c > %{buildroot}/opt/demo/c.txt\n\n%files\n/opt/demo/a.txt\n/opt/demo/b.txt\n/opt/demo/c.txt\n",
    );
    let topdir = format!("_topdir {}", d.join("rpmbuild").display());
    run_ok(
        "rpmbuild",
        "rpm",
        &["-bb", "--define", &topdir, "demo.spec"],
        d,
    );
    let rpm = d.join("rpmbuild/RPMS/noarch/slipway-demo-2.0.1-3.noarch.rpm");
    let info = inspect(&rpm).unwrap();
    assert_eq!(info.format, PackageFormat::Rpm);
    assert_eq!(info.name.as_deref(), Some("slipway-demo"));
    assert_eq!(info.version.as_deref(), Some("2.0.1-3"));
    assert_eq!(info.architecture.as_deref(), Some("noarch"));
    assert!(
        info.dependencies.contains(&"bash >= 5.0".to_owned()),
        "{:?}",
        info.dependencies
    );
    assert!(
        info.dependencies.contains(&"coreutils".to_owned()),
        "{:?}",
        info.dependencies
    );
    assert!(
        !info.dependencies.iter().any(|d| d.starts_with("rpmlib(")),
        "{:?}",
        info.dependencies
    );
    assert_eq!(info.files, 3);
    assert_eq!(info.digest, sha256_file(&rpm).unwrap());

    // rpm itself agrees on the fields.
    let q = run_ok(
        "rpm",
        "rpm",
        &[
            "-qp",
            "--qf",
            "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}",
            rpm.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(
        String::from_utf8_lossy(&q.stdout),
        "slipway-demo 2.0.1-3 noarch"
    );
}

fn put_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_bytes(data);
    write(&layout.join("blobs/sha256").join(&hex), data);
    format!("sha256:{hex}")
}

#[test]
fn inspects_an_oci_image_layout() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let layer = put_blob(&layout, b"not really a layer, but content-addressed");
    let config = br#"{"architecture":"arm64","variant":"v8","os":"linux","config":{"Labels":{"org.opencontainers.image.version":"from-label"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = put_blob(&layout, config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},
"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":41}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":41}}],
"annotations":{{"org.opencontainers.image.title":"shop-api","org.opencontainers.image.version":"2.4.0"}}}}"#,
        config.len()
    );
    let manifest_digest = put_blob(&layout, manifest.as_bytes());
    write(
        &layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{}}}]}}"#, manifest.len()).as_bytes(),
    );
    let info = inspect(&layout).unwrap();
    assert_eq!(info.format, PackageFormat::Oci);
    assert_eq!(info.name.as_deref(), Some("shop-api"));
    assert_eq!(info.version.as_deref(), Some("2.4.0"));
    assert_eq!(info.architecture.as_deref(), Some("arm64/v8"));
    assert_eq!(info.files, 2);
    assert_eq!(format!("sha256:{}", info.digest), manifest_digest);

    // A blob whose content no longer matches its digest is refused.
    let config_path = layout
        .join("blobs/sha256")
        .join(config_digest.trim_start_matches("sha256:"));
    std::fs::write(&config_path, br#"{"architecture":"amd64"}"#).unwrap();
    let err = inspect(&layout).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[test]
fn inspects_slipway_archives_and_plain_tarballs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("src/a.txt"), b"a");
    write(&d.join("src/sub/b.txt"), b"b");
    let out = d.join("api.tar.gz");
    build_archive_with(
        &d.join("src"),
        "api",
        "2.4.0",
        &out,
        &BuildOptions::default(),
    )
    .unwrap();
    let info = inspect(&out).unwrap();
    assert_eq!(info.format, PackageFormat::Slipway);
    assert_eq!(
        (info.name.as_deref(), info.version.as_deref()),
        (Some("api"), Some("2.4.0"))
    );
    assert_eq!(info.files, 2);

    for (flag, name) in [
        ("-czf", "plain.tar.gz"),
        ("-cf", "plain.tar"),
        ("-cJf", "plain.tar.xz"),
    ] {
        run_ok("tar", "tar", &[flag, name, "-C", "src", "."], d);
        let info = inspect(&d.join(name)).unwrap();
        assert_eq!(info.format, PackageFormat::Tar, "{name}");
        assert_eq!(info.files, 2, "{name}");
        assert_eq!(info.name, None);
    }

    let junk = write(&d.join("junk.bin"), b"definitely not a package");
    let err = inspect(&junk).unwrap_err();
    assert!(err.to_string().contains("not a tarball"), "{err}");
    let not_oci = d.join("src");
    assert!(
        inspect(&not_oci)
            .unwrap_err()
            .to_string()
            .contains("oci-layout")
    );
}
