//! Supply-chain gaps closed, through the real binary: the release tag must be HEAD with a
//! clean tree; under `signature: required` a service that runs commands needs a signed
//! artifact; every artifact is inspected at plan time (a cut-short RPM, a deb of another
//! version refused; a real MSI from `wixl` and a real deb pass); an OCI image layout is an
//! artifact (verified, signed over its manifest, kept in the artifact store by a deploy);
//! `{{ vars.x }}` in a step command is filled per environment or refused; a missing secret
//! is found by `plan`, so `deploy` refuses before its migration runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::slipway;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(path: &Path) -> String {
    slipway_package::sha256_file(path).unwrap()
}

fn plan(spec: &Path, env: &str) -> (i32, serde_json::Value) {
    plan_with(spec, env, &[])
}

fn plan_with(spec: &Path, env: &str, vars: &[(&str, &str)]) -> (i32, serde_json::Value) {
    let mut c = slipway();
    c.args(["plan", "--env", env, "--output", "json", "-f"])
        .arg(spec);
    for (k, v) in vars {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no plan JSON ({e}): {}", text(&o)));
    (o.status.code().unwrap(), v)
}

/// `(severity, code)` of the findings whose code is one of `codes`.
fn found(v: &serde_json::Value, codes: &[&str]) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| codes.contains(&f["code"].as_str().unwrap()))
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn message(v: &serde_json::Value, code: &str) -> String {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .map(|f| f["message"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {code} finding in {v:#}"))
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=ci", "-c", "user.email=ci@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", text(&o));
}

fn err(severity: &str, code: &str) -> (String, String) {
    (severity.to_owned(), code.to_owned())
}

#[test]
fn the_release_tag_must_be_head_with_a_clean_tree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("release.yaml");
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch, tag: 'v{{version}}' }}
services:
  api: {{ steps: [ {{ name: install, run: 'touch {}/installed' }} ] }}
environments:
  staging: {{ target: {{ exec: {{}} }} }}
",
            out.path().display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "1.0.0\n").unwrap();
    git(d, &["init", "-q"]);
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "release 1.0.0"]);
    git(d, &["tag", "v1.0.0"]);
    let codes = ["tag-missing", "tag-not-head", "tree-dirty"];

    let (code, v) = plan(&spec, "staging");
    assert_eq!((code, found(&v, &codes)), (0, vec![]), "{v:#}");

    // An edit not committed: what would be deployed is in no commit.
    std::fs::write(d.join("notes.txt"), "1.0.0 and a fix\n").unwrap();
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 3);
    assert_eq!(found(&v, &codes), [err("error", "tree-dirty")]);
    assert!(message(&v, "tree-dirty").contains("notes.txt"));

    // Committed, one past the tag: still not the tag.
    git(d, &["commit", "-qam", "a fix"]);
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 3);
    assert_eq!(found(&v, &codes), [err("error", "tag-not-head")]);
    assert!(
        message(&v, "tag-not-head").contains("1 commit after tag v1.0.0"),
        "{}",
        message(&v, "tag-not-head")
    );

    // The tag checked out: clean. A deploy's own `.slipway/` state does not count.
    git(d, &["checkout", "-q", "v1.0.0"]);
    let o = slipway()
        .current_dir(d)
        .args(["deploy", "--env", "staging", "-f", "release.yaml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join(".slipway").exists());
    let (code, v) = plan(&spec, "staging");
    assert_eq!((code, found(&v, &codes)), (0, vec![]), "{v:#}");
}

fn keypair(dir: &Path) {
    let o = slipway()
        .current_dir(dir)
        .args([
            "key",
            "generate",
            "--unencrypted",
            "--secret-key",
            "k.key",
            "--public-key",
            "k.pub",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn sign(dir: &Path, file: &str) {
    let o = slipway()
        .current_dir(dir)
        .args(["sign", "--key", "k.key", file])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn under_signature_required_a_service_running_commands_needs_a_signed_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keypair(d);
    std::fs::write(d.join("tool.sh"), "echo installed\n").unwrap();
    sign(d, "tool.sh");
    let write = |artifact: &str| {
        let spec = d.join("release.yaml");
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
{artifact}    steps: [ {{ name: install, run: 'sh tool.sh' }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    signature: {{ required: true, keys: [k.pub] }}
"
            ),
        )
        .unwrap();
        spec
    };
    let (code, v) = plan(&write(""), "staging");
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(
        found(&v, &["executable-unsigned"]),
        [err("error", "executable-unsigned")]
    );
    assert!(message(&v, "executable-unsigned").contains("sh tool.sh"));
    let (code, v) = plan(
        &write(&format!(
            "    artifact: {{ path: tool.sh, sha256: '{}', signature: tool.sh.minisig }}\n",
            sha256(&d.join("tool.sh"))
        )),
        "staging",
    );
    assert_eq!(code, 0, "{v:#}");
}

fn artifact_spec(d: &Path, path: &str, sha: &str, extra: &str) -> PathBuf {
    let spec = d.join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.4.0, type: patch }}
services:
  shop-api:
    artifact: {{ path: '{path}', sha256: '{sha}'{extra} }}
    steps: [ {{ name: install, run: 'touch {}/installed' }} ]
environments:
  staging: {{ target: {{ exec: {{}} }} }}
",
            d.display()
        ),
    )
    .unwrap();
    spec
}

fn run_ok(program: &str, args: &[&str], cwd: &Path) {
    let o = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); scripts/test.sh installs it"));
    assert!(o.status.success(), "{program} {args:?}: {}", text(&o));
}

#[test]
fn every_artifact_is_inspected_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let codes = ["artifact-unparseable", "artifact-identity"];

    // A real MSI from wixl, of this service and version: passes.
    std::fs::write(d.join("api.exe"), b"MZ").unwrap();
    std::fs::write(
        d.join("api.wxs"),
        r#"<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="*" Name="shop-api" Language="1033" Version="2.4.0" Manufacturer="Team" UpgradeCode="12345678-1234-1234-1234-123456789012">
    <Package InstallerVersion="200" Compressed="yes"/>
    <Media Id="1" Cabinet="a.cab" EmbedCab="yes"/>
    <Directory Id="TARGETDIR" Name="SourceDir"><Directory Id="INSTALLDIR" Name="Api">
      <Component Id="Main" Guid="11111111-2222-3333-4444-555555555555"><File Id="Exe" Name="api.exe" Source="api.exe"/></Component>
    </Directory></Directory>
    <Feature Id="Complete" Level="1"><ComponentRef Id="Main"/></Feature>
  </Product>
</Wix>
"#,
    )
    .unwrap();
    run_ok("wixl", &["-o", "shop-api.msi", "api.wxs"], d);
    let msi = d.join("shop-api.msi");
    let (code, v) = plan(
        &artifact_spec(d, "shop-api.msi", &sha256(&msi), ""),
        "staging",
    );
    assert_eq!((code, found(&v, &codes)), (0, vec![]), "{v:#}");

    // A real deb of the previous version: another package than the release ships.
    std::fs::create_dir_all(d.join("pkg/DEBIAN")).unwrap();
    std::fs::write(
        d.join("pkg/DEBIAN/control"),
        "Package: shop-api\nVersion: 2.3.0-1\nArchitecture: all\nMaintainer: Ops <ops@example.invalid>\nDescription: api\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("pkg/opt/api")).unwrap();
    std::fs::write(d.join("pkg/opt/api/a"), "a").unwrap();
    run_ok(
        "dpkg-deb",
        &["--root-owner-group", "--build", "pkg", "old.deb"],
        d,
    );
    let deb = d.join("old.deb");
    let (code, v) = plan(&artifact_spec(d, "old.deb", &sha256(&deb), ""), "staging");
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(found(&v, &codes), [err("error", "artifact-identity")]);
    assert!(message(&v, "artifact-identity").contains("2.3.0-1"));
    // Rebuilt as 2.4.0-1: the Debian revision is the packaging's, not the release's.
    std::fs::write(
        d.join("pkg/DEBIAN/control"),
        "Package: shop-api\nVersion: 2.4.0-1\nArchitecture: all\nMaintainer: Ops <ops@example.invalid>\nDescription: api\n",
    )
    .unwrap();
    run_ok(
        "dpkg-deb",
        &["--root-owner-group", "--build", "pkg", "new.deb"],
        d,
    );
    let deb = d.join("new.deb");
    let (code, v) = plan(&artifact_spec(d, "new.deb", &sha256(&deb), ""), "staging");
    assert_eq!((code, found(&v, &codes)), (0, vec![]), "{v:#}");

    // A real RPM cut short after its headers (the spec pins the cut file's digest).
    std::fs::write(
        d.join("api.spec"),
        "Name: shop-api\nVersion: 2.4.0\nRelease: 1\nSummary: api\nLicense: MIT\nBuildArch: noarch\n\n%description\napi\n\n%install\nmkdir -p %{buildroot}/opt/api\nhead -c 100000 /dev/urandom > %{buildroot}/opt/api/bin\n\n%files\n/opt/api/bin\n",
    )
    .unwrap();
    let topdir = format!("_topdir {}", d.join("rpmbuild").display());
    run_ok("rpmbuild", &["-bb", "--define", &topdir, "api.spec"], d);
    let rpm = std::fs::read(d.join("rpmbuild/RPMS/noarch/shop-api-2.4.0-1.noarch.rpm")).unwrap();
    std::fs::write(d.join("cut.rpm"), &rpm[..rpm.len() - 5000]).unwrap();
    let (code, v) = plan(
        &artifact_spec(d, "cut.rpm", &sha256(&d.join("cut.rpm")), ""),
        "staging",
    );
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(found(&v, &codes), [err("error", "artifact-unparseable")]);
    assert!(message(&v, "artifact-unparseable").contains("cut short"));
}

#[test]
fn an_oci_layout_is_an_artifact_signed_over_its_manifest_and_kept_by_a_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = d.join("image");
    let blob = |data: &[u8]| {
        let hex = slipway_package::digest::sha256_bytes(data);
        let p = layout.join("blobs/sha256").join(&hex);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        hex
    };
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let layer = blob(b"layer");
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_hex = blob(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":5}}],"annotations":{{"org.opencontainers.image.title":"shop-api","org.opencontainers.image.version":"2.4.0"}}}}"#,
        config.len()
    );
    let manifest_hex = blob(manifest.as_bytes());
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    keypair(d);
    // Signed with the real minisign CLI over the manifest blob.
    run_ok(
        "minisign",
        &[
            "-S",
            "-s",
            "k.key",
            "-m",
            &format!("image/blobs/sha256/{manifest_hex}"),
            "-x",
            "image.minisig",
        ],
        d,
    );
    let spec = d.join("release.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.4.0, type: patch }}
services:
  shop-api:
    artifact: {{ path: image, sha256: '{manifest_hex}', signature: image.minisig }}
    steps: [ {{ name: install, run: 'touch {}/installed' }} ]
environments:
  staging:
    target: {{ exec: {{}} }}
    signature: {{ required: true, keys: [k.pub] }}
",
            d.display()
        ),
    )
    .unwrap();
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 0, "{v:#}");

    let o = slipway()
        .current_dir(d)
        .args(["deploy", "--env", "staging", "-f", "release.yaml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("installed").exists());
    // Kept in the artifact store under its manifest digest, as a layout of exactly its files.
    let kept = d.join(".slipway/artifacts/sha256").join(&manifest_hex);
    assert!(kept.join("index.json").is_file(), "{}", kept.display());
    assert!(kept.join("blobs/sha256").join(&layer).is_file());
    slipway_package::verify_artifact(
        d,
        &format!(".slipway/artifacts/sha256/{manifest_hex}"),
        &manifest_hex,
        None,
        None,
    )
    .unwrap();

    // A layer changed after signing: the manifest's signature still holds, the image not.
    std::fs::write(layout.join("blobs/sha256").join(&layer), b"LAYER").unwrap();
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 3, "{v:#}");
    assert!(message(&v, "artifact-digest-mismatch").contains(&layer));
}

#[test]
fn step_placeholders_are_filled_per_environment_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |run: &str, staging_vars: &str| {
        let spec = d.join("release.yaml");
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api: {{ steps: [ {{ name: install, run: '{run}' }} ] }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {staging_vars}
"
            ),
        )
        .unwrap();
        spec
    };
    let marker = d.join("staging-marker");
    let spec = write(
        "touch {{ vars.out }}",
        &format!("{{ out: '{}' }}", marker.display()),
    );
    let o = slipway()
        .args(["validate", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["steps"][0]["action"]["run"],
        format!("touch {}", marker.display())
    );
    let o = slipway()
        .current_dir(d)
        .args(["deploy", "--env", "staging", "-f", "release.yaml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(marker.exists(), "the step ran with its placeholder filled");

    // A typo and a secret are refused by `validate` (exit 2), naming what to write.
    let spec = write("touch {{ vars.outt }}", "{ out: /tmp/x }");
    let o = slipway()
        .args(["validate", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("did you mean `out`"), "{}", text(&o));
    let spec = write("curl -u u:{{ vars.pw }} x", "{ pw: 'secret://env/API_PW' }");
    let o = slipway()
        .args(["validate", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("\"$API_PW\""), "{}", text(&o));
}

#[test]
fn a_missing_secret_is_found_by_plan_so_deploy_refuses_before_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("migrations")).unwrap();
    std::fs::write(
        d.join("migrations/V1__t.sql"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY);\n",
    )
    .unwrap();
    std::fs::write(d.join("api.toml.j2"), "token = \"{{ vars.api_token }}\"\n").unwrap();
    let spec = d.join("release.yaml");
    std::fs::write(
        &spec,
        "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  db: { kind: migration, migrations: ./migrations, database: 'sqlite://app.db', irreversible: true }
  api:
    depends_on: [db]
    config: [ { template: api.toml.j2, dest: api.toml } ]
    steps: [ { name: install, run: 'true' } ]
environments:
  staging:
    target: { exec: {} }
    vars: { api_token: 'secret://env/SUPPLY_TEST_API_TOKEN' }
",
    )
    .unwrap();
    let (code, v) = plan(&spec, "staging");
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(
        found(&v, &["secret-missing"]),
        [err("error", "secret-missing")]
    );
    let m = message(&v, "secret-missing");
    assert!(
        m.contains("SUPPLY_TEST_API_TOKEN") && m.contains("api.toml.j2"),
        "{m}"
    );
    let o = slipway()
        .current_dir(d)
        .args(["deploy", "--env", "staging", "-f", "release.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        !d.join("app.db").exists(),
        "the migration ran before the missing secret was found"
    );
    // Set: planned clean, deployed, migrated.
    let (code, v) = plan_with(&spec, "staging", &[("SUPPLY_TEST_API_TOKEN", "t0ken")]);
    assert_eq!(code, 0, "{v:#}");
    let o = slipway()
        .current_dir(d)
        .env("SUPPLY_TEST_API_TOKEN", "t0ken")
        .args(["deploy", "--env", "staging", "-f", "release.yaml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("app.db").exists());
}
