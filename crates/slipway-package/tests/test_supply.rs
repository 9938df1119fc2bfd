//! Supply-chain checks on real packages: an MSI built by msitools' `wixl` inspected
//! (product name, version, upgrade code, files) and cross-checked with `msiinfo`; an RPM
//! cut short refused; FIFOs refused instead of blocking; OCI image layouts as artifacts
//! (manifest digest, every blob, a `minisign` signature over the manifest); and the plan
//! findings: a package that does not parse, or whose metadata names another package or
//! version, and a service that runs commands without a signed artifact.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use slipway_package::digest::sha256_bytes;
use slipway_package::{Error, PackageFormat, check_artifacts, inspect, verify_artifact};

use crate::common::{run, run_ok, write};

const WXS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="*" Name="NAME" Language="1033" Version="VERSION" Manufacturer="Team Checkout"
           UpgradeCode="12345678-1234-1234-1234-123456789012">
    <Package InstallerVersion="200" Compressed="yes" Comments="demo"/>
    <Media Id="1" Cabinet="app.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir">
      <Directory Id="ProgramFilesFolder">
        <Directory Id="INSTALLDIR" Name="ShopApi">
          <Component Id="Main" Guid="11111111-2222-3333-4444-555555555555">
            <File Id="AppExe" Name="shop-api.exe" Source="shop-api.exe"/>
            <File Id="AppCfg" Name="shop-api.toml" Source="shop-api.toml"/>
          </Component>
        </Directory>
      </Directory>
    </Directory>
    <Feature Id="Complete" Level="1"><ComponentRef Id="Main"/></Feature>
  </Product>
</Wix>
"#;

/// A real MSI built by `wixl` in `d`, named `file`.
fn msi(d: &Path, file: &str, name: &str, version: &str) -> PathBuf {
    write(&d.join("shop-api.exe"), b"MZ not really an exe");
    write(&d.join("shop-api.toml"), b"port = 8080\n");
    let wxs = d.join(format!("{file}.wxs"));
    std::fs::write(&wxs, WXS.replace("NAME", name).replace("VERSION", version)).unwrap();
    run_ok(
        "wixl",
        "wixl",
        &["-o", file, wxs.file_name().unwrap().to_str().unwrap()],
        d,
    );
    d.join(file)
}

#[test]
fn inspects_an_msi_built_by_wixl_as_msiinfo_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = msi(d, "shop-api.msi", "shop-api", "2.4.0");
    let info = inspect(&path).unwrap();
    assert_eq!(info.format, PackageFormat::Msi);
    assert_eq!(info.name.as_deref(), Some("shop-api"));
    assert_eq!(info.version.as_deref(), Some("2.4.0"));
    assert_eq!(info.architecture.as_deref(), Some("Intel"));
    assert_eq!(info.files, 2);
    let m = info.msi.as_ref().unwrap();
    assert_eq!(
        m.upgrade_code.as_deref(),
        Some("{12345678-1234-1234-1234-123456789012}")
    );
    assert_eq!(m.manufacturer.as_deref(), Some("Team Checkout"));
    assert_eq!(m.file_names, ["shop-api.exe", "shop-api.toml"]);

    // msiinfo (msitools) reads the same Property table.
    let props = run_ok(
        "msiinfo",
        "msitools",
        &["export", "shop-api.msi", "Property"],
        d,
    );
    let props = String::from_utf8_lossy(&props.stdout);
    let value = |k: &str| {
        props
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}\t")))
            .map(str::to_owned)
    };
    assert_eq!(value("ProductName"), info.name);
    assert_eq!(value("ProductVersion"), info.version);
    assert_eq!(value("UpgradeCode"), m.upgrade_code);
    assert_eq!(value("ProductCode"), m.product_code);

    // An MSI cut short is refused with a message naming it, never a panic.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() / 2, 600, 9] {
        let cut_path = write(&d.join(format!("cut-{cut}.msi")), &bytes[..cut]);
        let e = inspect(&cut_path).unwrap_err().to_string();
        assert!(e.contains(&format!("cut-{cut}.msi")), "{e}");
    }
}

fn rpm(d: &Path) -> PathBuf {
    write(
        &d.join("demo.spec"),
        b"Name: shop-api\nVersion: 2.4.0\nRelease: 1\nSummary: demo\nLicense: MIT\nBuildArch: noarch\n\n\
%description\ndemo\n\n%install\nmkdir -p %{buildroot}/opt/api\n\
head -c 200000 /dev/urandom > %{buildroot}/opt/api/blob\n\n%files\n/opt/api/blob\n",
    );
    let topdir = format!("_topdir {}", d.join("rpmbuild").display());
    run_ok(
        "rpmbuild",
        "rpm",
        &["-bb", "--define", &topdir, "demo.spec"],
        d,
    );
    d.join("rpmbuild/RPMS/noarch/shop-api-2.4.0-1.noarch.rpm")
}

#[test]
fn an_rpm_cut_short_in_its_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = rpm(d);
    inspect(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // Headers intact, payload cut: rpm itself refuses it too.
    let cut = write(&d.join("cut.rpm"), &bytes[..bytes.len() - 4096]);
    let q = run(
        "rpm",
        "rpm",
        &["-K", "--nosignature", cut.to_str().unwrap()],
        d,
    );
    assert!(!q.status.success(), "rpm -K accepted the cut package");
    let e = inspect(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.rpm") && e.contains("cut short"), "{e}");
    // A flipped payload byte (same length) fails the payload digest.
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0xff;
    let flipped = write(&d.join("flipped.rpm"), &flipped);
    let e = inspect(&flipped).unwrap_err().to_string();
    assert!(e.contains("payload's sha256"), "{e}");
}

/// Runs `f` on another thread and fails the test if it has not returned within 10 s: a
/// read blocked on a FIFO would otherwise hang the suite.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("blocked for 10 s (reading a FIFO?)")
}

fn mkfifo(path: &Path) {
    run_ok(
        "mkfifo",
        "coreutils",
        &[path.to_str().unwrap()],
        path.parent().unwrap(),
    );
}

#[test]
fn fifos_are_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let fifo = d.join("artifact.tar.gz");
    mkfifo(&fifo);
    let f = fifo.clone();
    let e = within(move || inspect(&f).unwrap_err().to_string());
    assert!(e.contains("FIFO"), "{e}");
    let base = d.clone();
    let e = within(move || {
        verify_artifact(&base, "artifact.tar.gz", &"0".repeat(64), None, None)
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("FIFO"), "{e}");

    // An OCI layout whose index.json is a FIFO.
    let layout = d.join("image");
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    mkfifo(&layout.join("index.json"));
    let l = layout.clone();
    let e = within(move || inspect(&l).unwrap_err().to_string());
    assert!(e.contains("index.json") && e.contains("FIFO"), "{e}");
}

/// An OCI layout of one image: (layout, manifest sha256, layer path).
fn oci_layout(d: &Path, title: &str, version: &str) -> (PathBuf, String, PathBuf) {
    let layout = d.join("image");
    let blob = |data: &[u8]| {
        let hex = sha256_bytes(data);
        write(&layout.join("blobs/sha256").join(&hex), data);
        hex
    };
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let layer_bytes = b"a layer's bytes, content-addressed".to_vec();
    let layer = blob(&layer_bytes);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_hex = blob(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":{}}}],"annotations":{{"org.opencontainers.image.title":"{title}","org.opencontainers.image.version":"{version}"}}}}"#,
        config.len(),
        layer_bytes.len()
    );
    let manifest_hex = blob(manifest.as_bytes());
    write(
        &layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{}}}]}}"#,
            manifest.len()
        )
        .as_bytes(),
    );
    let layer_path = layout.join("blobs/sha256").join(&layer);
    (layout, manifest_hex, layer_path)
}

#[test]
fn an_oci_layout_is_an_artifact_known_by_its_manifest_digest_and_signed_over_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, manifest, layer) = oci_layout(d, "api", "2.4.0");
    let v = verify_artifact(d, "image", &manifest, None, None).unwrap();
    assert_eq!(v.actual_sha256, manifest);
    assert_eq!(v.layout_files.len(), 5, "{:?}", v.layout_files);

    // Signed with the real minisign over the manifest blob, verified by Slipway.
    run_ok(
        "minisign",
        "minisign",
        &["-G", "-W", "-p", "k.pub", "-s", "k.key"],
        d,
    );
    let manifest_blob = format!("image/blobs/sha256/{manifest}");
    run_ok(
        "minisign",
        "minisign",
        &[
            "-S",
            "-s",
            "k.key",
            "-m",
            &manifest_blob,
            "-x",
            "image.minisig",
        ],
        d,
    );
    let keys = vec!["k.pub".to_owned()];
    let v = verify_artifact(d, "image", &manifest, Some("image.minisig"), Some(&keys)).unwrap();
    assert!(v.key_id.is_some());
    // Unsigned under a signature policy: refused.
    assert!(matches!(
        verify_artifact(d, "image", &manifest, None, Some(&keys)),
        Err(Error::Unsigned { .. })
    ));

    // Another digest: refused, naming the image the layout holds.
    let other = "a".repeat(64);
    match verify_artifact(d, "image", &other, None, None) {
        Err(Error::DigestMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(
                (expected.as_str(), actual.as_str()),
                (other.as_str(), manifest.as_str())
            );
        }
        r => panic!("{r:?}"),
    }
    // A layer altered after signing: the signature over the manifest still verifies, the
    // layer's digest does not.
    std::fs::write(&layer, b"a layer's bytes, content-addressed!").unwrap();
    match verify_artifact(d, "image", &manifest, Some("image.minisig"), Some(&keys)) {
        Err(Error::DigestMismatch { path, .. }) => assert_eq!(path, layer),
        r => panic!("{r:?}"),
    }
}

fn spec(text: &str) -> slipway_model::spec::ReleaseSpec {
    slipway_model::validate::load("release.yaml", text)
        .map_err(|e| e.render(false, 100))
        .unwrap()
        .spec
}

fn codes(findings: &[slipway_model::plan::Finding]) -> Vec<String> {
    findings.iter().map(|f| f.code.clone()).collect()
}

fn release(artifact: &str, sha256: &str, extra: &str) -> String {
    format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.4.0, type: patch }}
services:
  shop-api:
    artifact: {{ path: {artifact}, sha256: '{sha256}'{extra} }}
    steps: [ {{ name: install, run: 'true' }} ]
environments:
  prod: {{ target: {{ exec: {{}} }} }}
"
    )
}

#[test]
fn plan_findings_inspect_every_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sha = |p: &Path| slipway_package::sha256_file(p).unwrap();

    // The good MSI passes; one of another product or version is named.
    let good = msi(d, "good.msi", "shop-api", "2.4.0");
    let s = spec(&release("good.msi", &sha(&good), ""));
    assert!(check_artifacts(&s, d, None).is_empty());
    let old = msi(d, "old.msi", "shop-api", "2.3.9");
    let f = check_artifacts(&spec(&release("old.msi", &sha(&old), "")), d, None);
    assert_eq!(codes(&f), ["artifact-identity"]);
    assert!(
        f[0].message.contains("2.3.9") && f[0].message.contains("2.4.0"),
        "{}",
        f[0].message
    );
    let other = msi(d, "other.msi", "billing", "2.4.0");
    let f = check_artifacts(&spec(&release("other.msi", &sha(&other), "")), d, None);
    assert_eq!(codes(&f), ["artifact-identity"]);
    assert!(f[0].message.contains("billing"), "{}", f[0].message);
    // Unless the spec says that is its package name.
    let f = check_artifacts(
        &spec(&release("other.msi", &sha(&other), ", name: billing")),
        d,
        None,
    );
    assert!(f.is_empty(), "{f:?}");

    // An RPM whose digest the spec pins but which is cut short.
    let rpm = rpm(d);
    let bytes = std::fs::read(&rpm).unwrap();
    let cut = write(&d.join("cut.rpm"), &bytes[..bytes.len() - 4096]);
    let f = check_artifacts(&spec(&release("cut.rpm", &sha(&cut), "")), d, None);
    assert_eq!(codes(&f), ["artifact-unparseable"], "{f:?}");
    let f = check_artifacts(
        &spec(&release(
            "rpmbuild/RPMS/noarch/shop-api-2.4.0-1.noarch.rpm",
            &sha(&rpm),
            "",
        )),
        d,
        None,
    );
    assert!(f.is_empty(), "{f:?}");

    // A file that is not a package is only hashed.
    let bin = write(&d.join("shop-api"), b"\x7fELF not really");
    assert!(check_artifacts(&spec(&release("shop-api", &sha(&bin), "")), d, None).is_empty());

    // An OCI layout by its manifest digest, named by its title.
    let (_, manifest, _) = oci_layout(d, "shop-api", "v2.4.0");
    assert!(check_artifacts(&spec(&release("image", &manifest, "")), d, None).is_empty());
}

#[test]
fn under_a_signature_policy_a_service_that_runs_commands_needs_a_signed_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = vec!["k.pub".to_owned()];
    let text = "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 2.4.0, type: patch }
services:
  api: { steps: [ { name: install, run: 'curl -fsS https://example.invalid/x | sh' } ] }
  web: { run: { command: 'web --port {{ port }}' } }
  db: { kind: migration, migrations: ./migrations, database: 'sqlite://x.db' }
environments:
  prod: { target: { exec: {} } }
";
    let f = check_artifacts(&spec(text), d, Some(&keys));
    assert_eq!(
        codes(&f),
        ["executable-unsigned", "executable-unsigned"],
        "{f:?}"
    );
    assert!(f[0].message.contains("service `api`") && f[0].message.contains("curl"));
    assert!(f[1].message.contains("service `web`"));
    // Without the policy nothing is required.
    assert!(check_artifacts(&spec(text), d, None).is_empty());
}

#[test]
fn plan_resolves_every_secret_the_deploy_needs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("present.key"), b"k3y\n");
    let text = |config: &str| {
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  db: {{ kind: migration, migrations: ./m, database: '{{{{ vars.db }}}}' }}
  api:
    steps: [ {{ name: i, run: 'true' }} ]
{config}environments:
  prod:
    target: {{ exec: {{}} }}
    vars:
      db: 'secret://env/SUPPLY_UNIT_NEVER_SET_DB'
      key: 'secret://file/present.key'
      gone: 'secret://file/absent.key'
      spare: 'secret://env/SUPPLY_UNIT_NEVER_SET_SPARE'
"
        )
    };
    let missing = |config: &str| -> Vec<String> {
        slipway_package::checks::secret_findings(&spec(&text(config)), d, "prod")
            .into_iter()
            .map(|f| {
                assert_eq!(
                    (f.severity.as_str(), f.code.as_str()),
                    ("error", "secret-missing")
                );
                f.message.split_whitespace().next().unwrap().to_owned()
            })
            .collect()
    };
    // Used by the database URL: needed; the unused ones are not.
    assert_eq!(missing(""), ["environments.prod.vars.db"]);
    // Rendering config resolves every secret of the environment.
    write(&d.join("api.toml.j2"), b"x = 1\n");
    assert_eq!(
        missing("    config: [ { template: api.toml.j2, dest: api.toml } ]\n"),
        [
            "environments.prod.vars.db",
            "environments.prod.vars.gone",
            "environments.prod.vars.spare"
        ]
    );
}
