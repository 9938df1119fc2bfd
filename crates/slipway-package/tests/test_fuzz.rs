//! Property tests of the parsers that read untrusted bytes: packages given to `inspect`,
//! signatures, public keys, release manifests, digests and secret references.
//!
//! Inputs are arbitrary bytes and mutations of real, valid inputs (made by the same tools
//! and code the other tests use): bytes replaced, removed, inserted or cut off, in the
//! outer file or, for compressed tarballs, in the tar inside it. Every property asserts
//! no panic, an error that names the file, and — where something is signed or digested —
//! that a mutated input is never accepted as the original. `PROPTEST_CASES` runs them
//! longer (the defaults keep the suite fast).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;
use slipway_package::digest::sha256_bytes;
use slipway_package::sign::signature_path;
use slipway_package::{
    BuildOptions, Error, PackageFormat, PublicKey, ReleaseManifest, SecretKey, SecretRef,
    build_archive_with, generate_keypair, inspect, parse_sha256, sign_manifest, verify,
    verify_manifest,
};

use crate::common::{run, run_ok, write};

/// Cases per property: `default` in the normal suite, `PROPTEST_CASES` for long runs.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // Shrinking re-runs the property many times; a failure prints its input anyway.
        max_shrink_iters: 256,
        // Failures are turned into named regression tests, not files beside the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit: replace, remove or insert a byte at an index, or cut the input there.
fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..16), 1..6)
}

fn mutate(bytes: &[u8], edits: &[(Index, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (at, byte, kind) in edits {
        if out.is_empty() {
            out.push(*byte);
            continue;
        }
        let i = at.index(out.len());
        match kind {
            0..=7 => out[i] = *byte,
            8..=10 => {
                out.remove(i);
            }
            11..=13 => out.insert(i, *byte),
            // A cut is rarer: it ends every other edit's chance to matter.
            _ => out.truncate(i),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Packages for `inspect`.

struct Packages {
    /// A Slipway archive, gzip and zstd.
    slipway_gz: Vec<u8>,
    slipway_zst: Vec<u8>,
    /// The same archive's tar, uncompressed: mutated, then compressed again.
    raw_tar: Vec<u8>,
    /// From dpkg-deb, with xz members and with uncompressed ones.
    deb_xz: Vec<u8>,
    deb_plain: Vec<u8>,
    /// From rpmbuild.
    rpm: Vec<u8>,
    /// From msitools' wixl.
    msi: Vec<u8>,
    /// An OCI layout: relative path -> content.
    oci: BTreeMap<String, Vec<u8>>,
}

static PACKAGES: LazyLock<Packages> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("src/a.txt"), b"a");
    write(&d.join("src/sub/b.txt"), b"b");
    let read = |p: &Path| std::fs::read(p).unwrap();
    let gz = d.join("api.tar.gz");
    let zst = d.join("api.tar.zst");
    for out in [&gz, &zst] {
        build_archive_with(
            &d.join("src"),
            "api",
            "2.4.0",
            out,
            &BuildOptions::default(),
        )
        .unwrap();
    }
    let mut raw_tar = Vec::new();
    flate2::read::GzDecoder::new(&read(&gz)[..])
        .read_to_end(&mut raw_tar)
        .unwrap();

    write(
        &d.join("pkg/DEBIAN/control"),
        b"Package: demo\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Ops <ops@example.invalid>\n\
Depends: libc6 (>= 2.34)\nDescription: demo\n",
    );
    write(&d.join("pkg/usr/share/demo/a.txt"), b"a");
    run_ok(
        "dpkg-deb",
        "dpkg-dev",
        &["--root-owner-group", "--build", "pkg", "xz.deb"],
        d,
    );
    run_ok(
        "dpkg-deb",
        "dpkg-dev",
        &[
            "--root-owner-group",
            "-Znone",
            "--build",
            "pkg",
            "plain.deb",
        ],
        d,
    );

    write(
        &d.join("demo.spec"),
        b"Name: demo\nVersion: 2.0.1\nRelease: 3\nSummary: demo\nLicense: MIT\nBuildArch: noarch\n\
Requires: bash >= 5.0\n\n%description\ndemo\n\n%install\nmkdir -p %{buildroot}/opt/demo\n\
echo a > %{buildroot}/opt/demo/a.txt\n\n%files\n/opt/demo/a.txt\n",
    );
    let topdir = format!("_topdir {}", d.join("rpmbuild").display());
    run_ok(
        "rpmbuild",
        "rpm",
        &["-bb", "--define", &topdir, "demo.spec"],
        d,
    );

    write(&d.join("app.txt"), b"app");
    write(
        &d.join("app.wxs"),
        br#"<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="*" Name="demo" Language="1033" Version="1.0.0" Manufacturer="Ops" UpgradeCode="12345678-1234-1234-1234-123456789012">
    <Package InstallerVersion="200" Compressed="yes"/>
    <Media Id="1" Cabinet="app.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir"><Directory Id="INSTALLDIR" Name="Demo">
      <Component Id="Main" Guid="11111111-2222-3333-4444-555555555555"><File Id="App" Name="app.txt" Source="app.txt"/></Component>
    </Directory></Directory>
    <Feature Id="Complete" Level="1"><ComponentRef Id="Main"/></Feature>
  </Product>
</Wix>
"#,
    );
    run_ok("wixl", "wixl", &["-o", "demo.msi", "app.wxs"], d);

    let mut oci = BTreeMap::new();
    let mut blob = |data: &[u8]| {
        let hex = sha256_bytes(data);
        oci.insert(format!("blobs/sha256/{hex}"), data.to_vec());
        format!("sha256:{hex}")
    };
    let layer = blob(b"layer bytes");
    let config = br#"{"architecture":"arm64","os":"linux","config":{"Labels":{"org.opencontainers.image.version":"2.4.0"}}}"#;
    let config_digest = blob(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{config_digest}","size":{}}},"layers":[{{"digest":"{layer}","size":11}}],"annotations":{{"org.opencontainers.image.title":"shop-api"}}}}"#,
        config.len()
    );
    let manifest_digest = blob(manifest.as_bytes());
    oci.insert(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    oci.insert(
        "index.json".to_owned(),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{}}}]}}"#, manifest.len()).into_bytes(),
    );

    Packages {
        slipway_gz: read(&gz),
        slipway_zst: read(&zst),
        raw_tar,
        deb_xz: read(&d.join("xz.deb")),
        deb_plain: read(&d.join("plain.deb")),
        rpm: read(&d.join("rpmbuild/RPMS/noarch/demo-2.0.1-3.noarch.rpm")),
        msi: read(&d.join("demo.msi")),
        oci,
    }
});

/// Inspects `bytes` written to a fresh file and checks the outcome: an error names the
/// file; a success reports the digest of exactly these bytes.
fn inspect_bytes(bytes: &[u8], name: &str) -> Result<slipway_package::PackageInfo, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir.path().join(name), bytes);
    match inspect(&path) {
        Ok(info) => {
            assert_eq!(
                info.digest,
                sha256_bytes(bytes),
                "inspect must report the digest of the bytes it read"
            );
            Ok(info)
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "the error does not name the file: {msg}"
            );
            Err(msg)
        }
    }
}

fn recompress(tar: &[u8], codec: u8) -> Vec<u8> {
    match codec % 4 {
        0 => tar.to_vec(),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        2 => zstd::encode_all(tar, 1).unwrap(),
        _ => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn inspect_never_panics_on_arbitrary_bytes(
        prefix in 0usize..7,
        rest in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        // Start with each format's magic sometimes, so the bytes reach that format's parser.
        let magic: &[u8] = [
            &b""[..],
            b"!<arch>\n",
            &[0xed, 0xab, 0xee, 0xdb],
            &[0x1f, 0x8b],
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0xfd, b'7', b'z', b'X', b'Z', 0],
            &[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1],
        ][prefix];
        let mut bytes = magic.to_vec();
        bytes.extend(rest);
        let _ = inspect_bytes(&bytes, "junk.bin");
    }

    #[test]
    fn inspect_never_panics_on_mutated_packages(which in 0usize..6, edits in edits()) {
        let p = &*PACKAGES;
        let (bytes, name) = [
            (&p.slipway_gz, "api.tar.gz"),
            (&p.slipway_zst, "api.tar.zst"),
            (&p.deb_xz, "demo.deb"),
            (&p.deb_plain, "demo.deb"),
            (&p.rpm, "demo.rpm"),
            (&p.msi, "demo.msi"),
        ][which];
        let _ = inspect_bytes(&mutate(bytes, &edits), name);
    }

    #[test]
    fn inspect_never_panics_on_mutated_tars_inside_compression(
        codec in 0u8..4,
        edits in edits(),
    ) {
        let p = &*PACKAGES;
        let mutated = mutate(&p.raw_tar, &edits);
        if let Ok(info) = inspect_bytes(&recompress(&mutated, codec), "api.tar") {
            // The manifest entry is the first one; an edit there either keeps it a
            // manifest or makes the archive a plain tarball, never half of each.
            prop_assert!(matches!(info.format, PackageFormat::Slipway | PackageFormat::Tar));
            if info.format == PackageFormat::Slipway {
                prop_assert!(info.name.is_some() && info.version.is_some());
            }
        }
    }

    #[test]
    fn inspect_oci_never_accepts_a_changed_manifest_or_config(
        which in any::<Index>(),
        edits in edits(),
    ) {
        let p = &*PACKAGES;
        let names: Vec<&String> = p.oci.keys().collect();
        let target = names[which.index(names.len())].clone();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("image");
        for (name, content) in &p.oci {
            let content = if *name == target { mutate(content, &edits) } else { content.clone() };
            write(&layout.join(name), &content);
        }
        let changed = mutate(&p.oci[&target], &edits) != p.oci[&target];
        match inspect(&layout) {
            Ok(info) => {
                // Whatever was edited, what is reported is a blob whose content has the
                // digest reported.
                let blob = std::fs::read(layout.join("blobs/sha256").join(&info.digest)).unwrap();
                prop_assert_eq!(sha256_bytes(&blob), info.digest.clone());
                // Every blob (manifest, config and layer) is checked against its digest.
                prop_assert!(
                    !(changed && target.starts_with("blobs/")),
                    "edited {target} was accepted: {info:?}"
                );
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&layout.display().to_string()), "{msg}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signatures, public keys and release manifests.

struct Keys {
    secret: SecretKey,
    public: PublicKey,
    public_text: String,
    /// An artifact and its signature by `secret`.
    file: Vec<u8>,
    signature: String,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate_keypair(&d.join("k.key"), &d.join("k.pub"), None).unwrap();
    let secret = SecretKey::from_file(&d.join("k.key"), None).unwrap();
    let public_text = std::fs::read_to_string(d.join("k.pub")).unwrap();
    let file = b"api 2.4.0 artifact bytes\n".to_vec();
    let path = write(&d.join("api.tar.gz"), &file);
    let sig = slipway_package::sign(&path, &secret, "release shop 2.4.0").unwrap();
    Keys {
        public: PublicKey::parse(&public_text).unwrap(),
        secret,
        public_text,
        file,
        signature: std::fs::read_to_string(sig).unwrap(),
    }
});

/// Verifies `file` against `signature` with the trusted key, both written to a fresh dir.
/// Returns the outcome and the directory (kept alive for a cross-check with minisign).
fn verify_bytes(
    file: &[u8],
    signature: &[u8],
) -> (Result<slipway_package::Verified, Error>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir.path().join("api.tar.gz"), file);
    let sig = write(&signature_path(&path), signature);
    write(&dir.path().join("k.pub"), KEYS.public_text.as_bytes());
    let outcome = verify(&path, &sig, std::slice::from_ref(&KEYS.public));
    if let Err(e) = &outcome {
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.path().display().to_string()),
            "the error does not name the file: {msg}"
        );
    }
    (outcome, dir)
}

/// The signed parts of a signature (its second, third and fourth lines), decoded: what
/// must not change for a signature to still verify.
fn signed_parts(text: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    use ct_codecs::{Base64, Decoder};
    let start = text.iter().position(|&b| b == b'\n')? + 1;
    let text = std::str::from_utf8(&text[start..]).ok()?;
    // As minisign reads them: without the carriage returns ending a line.
    let lines: Vec<&str> = std::iter::once("")
        .chain(text.lines().map(|l| l.trim_end_matches('\r')))
        .collect();
    Some((
        Base64::decode_to_vec(lines.get(1)?.trim(), None).ok()?,
        lines.get(2)?.as_bytes().to_vec(),
        Base64::decode_to_vec(lines.get(3)?.trim(), None).ok()?,
    ))
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn a_mutated_signature_never_verifies_and_minisign_agrees(edits in edits()) {
        let original = KEYS.signature.as_bytes();
        let mutated = mutate(original, &edits);
        let (outcome, dir) = verify_bytes(&KEYS.file, &mutated);
        if let Ok(v) = &outcome {
            // Only the untrusted comment is outside the signature.
            prop_assert_eq!(signed_parts(&mutated), signed_parts(original), "a signature whose signed lines changed verified: {:?}", String::from_utf8_lossy(&mutated));
            prop_assert_eq!(v.trusted_comment.as_str(), "release shop 2.4.0");
        }
        // The real minisign judges the same files. Slipway refuses (by name) a trusted
        // comment that is not UTF-8, which minisign accepts.
        let cli = run(
            "minisign",
            "minisign",
            &["-V", "-q", "-m", "api.tar.gz", "-p", "k.pub"],
            dir.path(),
        );
        let after_first_line = mutated.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &mutated[i..]);
        let utf8_refusal = matches!(&outcome, Err(e @ Error::SignatureFormat { .. }) if e.to_string().contains("not UTF-8"));
        prop_assert_eq!(utf8_refusal, std::str::from_utf8(after_first_line).is_err());
        // Slipway never refuses what minisign accepts; it may accept what minisign refuses
        // only for its formatting (checked above: the signed parts are the original ones),
        // e.g. two carriage returns ending the signature line, which overflow minisign's
        // line buffer.
        prop_assert!(
            !cli.status.success() || outcome.is_ok() || utf8_refusal,
            "slipway says {:?}, minisign says {}",
            outcome.as_ref().map(|_| ()).map_err(ToString::to_string),
            String::from_utf8_lossy(&cli.stderr)
        );
    }

    #[test]
    fn a_mutated_file_never_verifies(edits in edits()) {
        let mutated = mutate(&KEYS.file, &edits);
        prop_assume!(mutated != KEYS.file);
        let (outcome, _dir) = verify_bytes(&mutated, KEYS.signature.as_bytes());
        prop_assert!(matches!(outcome, Err(Error::BadSignature { .. })), "{:?}", outcome);
    }

    #[test]
    fn arbitrary_signature_text_is_a_format_error(
        text in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let (outcome, _dir) = verify_bytes(&KEYS.file, &text);
        prop_assert!(outcome.is_err());
    }

    #[test]
    fn public_key_parse_never_panics_and_a_changed_key_verifies_nothing(
        edits in edits(),
        arbitrary in ".{0,120}",
    ) {
        if let Err(reason) = PublicKey::parse(&arbitrary) {
            prop_assert!(!reason.is_empty());
        }
        let mutated = String::from_utf8_lossy(&mutate(KEYS.public_text.as_bytes(), &edits)).into_owned();
        match PublicKey::parse(&mutated) {
            Err(reason) => prop_assert!(!reason.is_empty()),
            Ok(key) if key.base64() != KEYS.public.base64() => {
                let dir = tempfile::tempdir().unwrap();
                let file = write(&dir.path().join("f"), &KEYS.file);
                let sig = write(&signature_path(&file), KEYS.signature.as_bytes());
                let outcome = verify(&file, &sig, std::slice::from_ref(&key));
                prop_assert!(outcome.is_err(), "key {} verified the original signature", key.base64());
            }
            Ok(_) => {}
        }
    }

    #[test]
    fn release_manifest_parse_never_panics_and_an_unsigned_edit_never_verifies(
        edits in edits(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let api = write(&d.join("api.tar.gz"), b"api");
        let web = write(&d.join("web.tar.gz"), b"web");
        let m = ReleaseManifest::from_artifacts("shop", "2.4.0", &[api.clone(), web.clone()]).unwrap();
        let out = d.join("release.json");
        let sig = sign_manifest(&m, &out, &KEYS.secret).unwrap();
        let original = std::fs::read(&out).unwrap();
        let mutated = mutate(&original, &edits);
        std::fs::write(&out, &mutated).unwrap();
        let keys = std::slice::from_ref(&KEYS.public);
        let artifacts = [api.clone(), web.clone()];

        // Edited after signing: never verifies.
        let outcome = verify_manifest(&out, &sig, keys, &artifacts);
        if mutated != original {
            prop_assert!(matches!(outcome, Err(Error::BadSignature { .. })), "{:?}", outcome);
        }

        // Signed as edited (a key holder's mistake, or a compromised key): the parser sees
        // the bytes and must answer with a manifest error naming the file, or accept a
        // document that still binds both artifacts by digest.
        let signed = write(&d.join("signed.json"), &mutated);
        let sig2 = signature_path(&signed);
        slipway_package::sign::sign_to(&signed, &KEYS.secret, "c", &sig2).unwrap();
        match verify_manifest(&signed, &sig2, keys, &artifacts) {
            Ok(v) => {
                for a in &artifacts {
                    let entry = v.check_artifact(a).unwrap();
                    prop_assert_eq!(parse_sha256(&entry.sha256).unwrap(), sha256_bytes(&std::fs::read(a).unwrap()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&d.display().to_string()), "{msg}");
                prop_assert!(
                    matches!(e, Error::Manifest { .. } | Error::NotInManifest { .. } | Error::ManifestMismatch { .. }),
                    "{msg}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Digests and secret references: strings from specs and flags.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parse_sha256_accepts_exactly_64_hex_digits(
        value in prop_oneof![
            ".{0,80}",
            "(sha256:)?[0-9a-fA-F]{60,68}",
            " ?(sha256:)?[0-9a-fA-F]{64} ?",
        ],
    ) {
        match parse_sha256(&value) {
            Ok(hex) => {
                prop_assert_eq!(hex.len(), 64);
                prop_assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                let bare = value.trim();
                let bare = bare.strip_prefix("sha256:").unwrap_or(bare);
                prop_assert_eq!(hex, bare.to_ascii_lowercase());
            }
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidDigest { .. }), "{}", e);
                prop_assert!(e.to_string().contains(&value), "{e}");
            }
        }
    }

    #[test]
    fn secret_ref_parse_round_trips_or_names_the_reference(
        value in prop_oneof![
            ".{0,40}",
            "secret://[a-z]{0,6}/?.{0,20}",
            "secret://(env|file)/[A-Za-z0-9_./-]{0,20}",
        ],
    ) {
        match SecretRef::parse(&value) {
            Ok(None) => prop_assert!(!value.starts_with("secret://")),
            Ok(Some(r)) => prop_assert_eq!(r.to_string(), value),
            Err(reason) => prop_assert!(reason.contains(&value), "{reason}"),
        }
    }
}
