//! Signed release manifests: artifacts cannot be mixed across releases.

use slipway_package::manifest::RELEASE_MANIFEST_SCHEMA;
use slipway_package::{
    Error, PublicKey, ReleaseManifest, SecretKey, generate_keypair, sign_manifest, verify_manifest,
};

use crate::common::{run_ok, write};

#[test]
fn manifest_binds_artifacts_of_one_release() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate_keypair(&d.join("k.key"), &d.join("k.pub"), None).unwrap();
    let sk = SecretKey::from_file(&d.join("k.key"), None).unwrap();
    let pk = PublicKey::from_file(&d.join("k.pub")).unwrap();

    let a24 = write(&d.join("r24/api.tar.gz"), b"api 2.4");
    let w24 = write(&d.join("r24/web.tar.gz"), b"web 2.4");
    let a25 = write(&d.join("r25/api.tar.gz"), b"api 2.5");
    let m = ReleaseManifest::from_artifacts("shop", "2.4.0", &[w24.clone(), a24.clone()]).unwrap();
    assert_eq!(m.schema, RELEASE_MANIFEST_SCHEMA);
    assert_eq!(
        m.artifacts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["api.tar.gz", "web.tar.gz"]
    );
    let out = d.join("release.json");
    let sig = sign_manifest(&m, &out, &sk).unwrap();

    // The real minisign accepts the manifest signature too.
    let run = run_ok(
        "minisign",
        "minisign",
        &["-Vm", "release.json", "-p", "k.pub"],
        d,
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("slipway release manifest shop 2.4.0"));

    let verified = verify_manifest(
        &out,
        &sig,
        std::slice::from_ref(&pk),
        &[a24.clone(), w24.clone()],
    )
    .unwrap();
    assert_eq!(verified.manifest, m);

    // api 2.5 under the same name as api 2.4: refused with both digests.
    let err = verify_manifest(
        &out,
        &sig,
        std::slice::from_ref(&pk),
        std::slice::from_ref(&a25),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ManifestMismatch { .. }), "{msg}");
    assert!(msg.contains(&m.artifacts[0].sha256), "{msg}");
    assert!(
        msg.contains(&slipway_package::sha256_file(&a25).unwrap()),
        "{msg}"
    );

    let stray = write(&d.join("worker.tar.gz"), b"worker");
    let err = verify_manifest(&out, &sig, std::slice::from_ref(&pk), &[stray]).unwrap_err();
    assert!(matches!(err, Error::NotInManifest { .. }), "{err}");
    assert!(err.to_string().contains("api.tar.gz, web.tar.gz"), "{err}");

    // Editing the manifest to list api 2.5's digest breaks its signature.
    let edited = std::fs::read_to_string(&out).unwrap().replace(
        &m.artifacts[0].sha256,
        &slipway_package::sha256_file(&a25).unwrap(),
    );
    std::fs::write(&out, edited).unwrap();
    let err = verify_manifest(&out, &sig, &[pk], &[a25]).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn duplicate_artifact_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(&dir.path().join("x/api.tar.gz"), b"1");
    let b = write(&dir.path().join("y/api.tar.gz"), b"2");
    let err = ReleaseManifest::from_artifacts("shop", "1", &[a, b]).unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
}
