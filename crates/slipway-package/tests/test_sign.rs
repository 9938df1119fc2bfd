//! Minisign signatures, checked against the real `minisign` CLI in both directions.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use slipway_package::sign::{default_trusted_comment, signature_path};
use slipway_package::{Error, PublicKey, SecretKey, generate_keypair, sign, verify};

use crate::common::{run, run_ok, write};

fn minisign(args: &[&str], cwd: &Path) -> std::process::Output {
    run("minisign", "minisign", args, cwd)
}

fn slipway_key(dir: &Path, name: &str) -> (SecretKey, PublicKey) {
    let sk = dir.join(format!("{name}.key"));
    let pk = dir.join(format!("{name}.pub"));
    generate_keypair(&sk, &pk, None).unwrap();
    (
        SecretKey::from_file(&sk, None).unwrap(),
        PublicKey::from_file(&pk).unwrap(),
    )
}

#[test]
fn slipway_signature_verifies_with_minisign_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let generated = generate_keypair(&d.join("k.key"), &d.join("k.pub"), None).unwrap();
    let sk = SecretKey::from_file(&d.join("k.key"), None).unwrap();
    assert_eq!(sk.key_id(), generated.key_id);
    let file = write(&d.join("api-2.4.0.tar.gz"), b"artifact bytes");
    let sig = sign(&file, &sk, "release shop 2.4.0").unwrap();
    assert_eq!(sig, d.join("api-2.4.0.tar.gz.minisig"));
    let out = run_ok(
        "minisign",
        "minisign",
        &["-Vm", "api-2.4.0.tar.gz", "-p", "k.pub"],
        d,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Trusted comment: release shop 2.4.0"),
        "{stdout}"
    );

    // And minisign notices tampering too, so the check above is not vacuous.
    std::fs::write(&file, b"artifact bytes!").unwrap();
    assert!(
        !minisign(&["-Vm", "api-2.4.0.tar.gz", "-p", "k.pub"], d)
            .status
            .success()
    );
}

#[test]
fn password_protected_key_signs_and_minisign_cli_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let generated =
        generate_keypair(&d.join("k.key"), &d.join("k.pub"), Some("correct horse")).unwrap();
    assert!(generated.encrypted);
    let err = SecretKey::from_file(&d.join("k.key"), None).unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    let err = SecretKey::from_file(&d.join("k.key"), Some("wrong")).unwrap_err();
    assert!(matches!(err, Error::Key { .. }), "{err}");
    let sk = SecretKey::from_file(&d.join("k.key"), Some("correct horse")).unwrap();
    let file = write(&d.join("f"), b"data");
    sign(&file, &sk, &default_trusted_comment(&file, 1_700_000_000)).unwrap();
    let out = run_ok("minisign", "minisign", &["-Vm", "f", "-p", "k.pub"], d);
    assert!(String::from_utf8_lossy(&out.stdout).contains("timestamp:1700000000\tfile:f\thashed"));
}

#[test]
fn minisign_cli_signature_and_key_verify_with_slipway() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        "minisign",
        "minisign",
        &["-G", "-W", "-p", "m.pub", "-s", "m.key"],
        d,
    );
    let file = write(&d.join("web.tar.gz"), b"web artifact");
    run_ok(
        "minisign",
        "minisign",
        &[
            "-S",
            "-s",
            "m.key",
            "-m",
            "web.tar.gz",
            "-t",
            "built by ci #42",
        ],
        d,
    );
    let pk = PublicKey::from_file(&d.join("m.pub")).unwrap();
    let verified = verify(&file, &signature_path(&file), std::slice::from_ref(&pk)).unwrap();
    assert_eq!(verified.trusted_comment, "built by ci #42");
    assert_eq!(verified.key_id, pk.key_id());
    // The key id is the one minisign itself prints in the public key file (minisign
    // prints it without leading zeros; Slipway always shows all 16 digits).
    let pub_text = std::fs::read_to_string(d.join("m.pub")).unwrap();
    let shown = pub_text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap();
    assert_eq!(
        u64::from_str_radix(shown, 16).unwrap(),
        u64::from_str_radix(pk.key_id(), 16).unwrap(),
        "{pub_text} vs {}",
        pk.key_id()
    );

    // A secret key written by minisign -W also signs through Slipway.
    let sk = SecretKey::from_file(&d.join("m.key"), None).unwrap();
    assert_eq!(sk.key_id(), pk.key_id());
    let other = write(&d.join("other"), b"signed by slipway with minisign's key");
    sign(&other, &sk, "c").unwrap();
    run_ok("minisign", "minisign", &["-Vm", "other", "-p", "m.pub"], d);

    // A corrupted minisign key is refused rather than producing bad signatures.
    let key_text = std::fs::read_to_string(d.join("m.key")).unwrap();
    let mut lines: Vec<String> = key_text.lines().map(str::to_owned).collect();
    let mut chars: Vec<char> = lines[1].chars().collect();
    chars[120] = if chars[120] == 'A' { 'B' } else { 'A' };
    lines[1] = chars.into_iter().collect();
    write(&d.join("broken.key"), lines.join("\n").as_bytes());
    let err = SecretKey::from_file(&d.join("broken.key"), None).unwrap_err();
    assert!(matches!(err, Error::Key { .. }), "{err}");
}

#[test]
fn minisign_cli_signs_with_a_slipway_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate_keypair(&d.join("s.key"), &d.join("s.pub"), None).unwrap();
    write(&d.join("f"), b"data");
    run_ok("minisign", "minisign", &["-S", "-s", "s.key", "-m", "f"], d);
    run_ok("minisign", "minisign", &["-Vm", "f", "-p", "s.pub"], d);
    verify(
        &d.join("f"),
        &d.join("f.minisig"),
        &[PublicKey::from_file(&d.join("s.pub")).unwrap()],
    )
    .unwrap();
}

#[test]
fn tampered_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = slipway_key(dir.path(), "k");
    let file = write(&dir.path().join("f"), b"original");
    let sig = sign(&file, &sk, "c").unwrap();
    std::fs::write(&file, b"originaL").unwrap();
    let err = verify(&file, &sig, &[pk]).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match its content"),
        "{err}"
    );
}

#[test]
fn signature_of_another_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = slipway_key(dir.path(), "k");
    let a = write(&dir.path().join("a"), b"release A");
    let b = write(&dir.path().join("b"), b"release B");
    let sig_a = sign(&a, &sk, "a").unwrap();
    sign(&b, &sk, "b").unwrap();
    verify(&a, &sig_a, std::slice::from_ref(&pk)).unwrap();
    let err = verify(&b, &sig_a, &[pk]).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn untrusted_key_is_refused_naming_found_and_trusted_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, _) = slipway_key(dir.path(), "attacker");
    let (_, trusted1) = slipway_key(dir.path(), "release-2025");
    let (_, trusted2) = slipway_key(dir.path(), "release-2026");
    let file = write(&dir.path().join("f"), b"data");
    let sig = sign(&file, &sk, "c").unwrap();
    let err = verify(&file, &sig, &[trusted1.clone(), trusted2.clone()]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UntrustedKey { .. }), "{msg}");
    assert!(msg.contains(sk.key_id()), "{msg}");
    assert!(
        msg.contains(trusted1.key_id()) && msg.contains(trusted2.key_id()),
        "{msg}"
    );
    let err = verify(&file, &sig, &[]).unwrap_err();
    assert!(err.to_string().contains("none configured"), "{err}");
}

#[test]
fn rotation_any_trusted_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (_, old) = slipway_key(dir.path(), "old");
    let (sk, new) = slipway_key(dir.path(), "new");
    let file = write(&dir.path().join("f"), b"data");
    let sig = sign(&file, &sk, "c").unwrap();
    assert_eq!(
        verify(&file, &sig, &[old, new.clone()]).unwrap().key_id,
        new.key_id()
    );
}

#[test]
fn truncated_garbled_and_foreign_signatures_are_refused_as_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = slipway_key(dir.path(), "k");
    let file = write(&dir.path().join("f"), b"data");
    let sig = sign(&file, &sk, "c").unwrap();
    let text = std::fs::read_to_string(&sig).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    let cases: Vec<(&str, String)> = vec![
        ("two lines", format!("{}\n{}\n", lines[0], lines[1])),
        (
            "cut base64",
            format!(
                "{}\n{}\n{}\n{}\n",
                lines[0],
                &lines[1][..40],
                lines[2],
                lines[3]
            ),
        ),
        (
            "garbled base64",
            format!(
                "{}\n{}*{}\n{}\n{}\n",
                lines[0],
                &lines[1][..20],
                &lines[1][21..],
                lines[2],
                lines[3]
            ),
        ),
        (
            "gpg",
            "-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n".to_owned(),
        ),
        ("empty", String::new()),
    ];
    for (label, content) in cases {
        let bad = write(&dir.path().join("bad.minisig"), content.as_bytes());
        let err = verify(&file, &bad, std::slice::from_ref(&pk)).unwrap_err();
        assert!(
            matches!(err, Error::SignatureFormat { .. }),
            "{label}: {err}"
        );
        assert!(err.to_string().contains("bad.minisig"), "{label}: {err}");
    }

    // A modified trusted comment keeps the format but breaks the global signature.
    let forged = text.replace("trusted comment: c", "trusted comment: approved by cab");
    let bad = write(&dir.path().join("forged.minisig"), forged.as_bytes());
    let err = verify(&file, &bad, &[pk]).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn malformed_public_key_and_existing_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        &dir.path().join("bad.pub"),
        b"untrusted comment: x\nnot-base64!!\n",
    );
    assert!(matches!(
        PublicKey::from_file(&bad).unwrap_err(),
        Error::Key { .. }
    ));
    slipway_key(dir.path(), "k");
    let err = generate_keypair(
        &dir.path().join("k.key"),
        &dir.path().join("other.pub"),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }), "{err}");
    assert!(!dir.path().join("other.pub").exists());
}

#[test]
fn multi_line_trusted_comment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, _) = slipway_key(dir.path(), "k");
    let file = write(&dir.path().join("f"), b"data");
    let err = sign(&file, &sk, "a\nb").unwrap_err();
    assert!(err.to_string().contains("line break"), "{err}");
}

/// Found by fuzzing: minisign neither signs nor checks the untrusted comment, so a byte
/// that is not UTF-8 there (a Latin-1 comment) must not make a good signature unreadable;
/// it used to fail as an I/O error ("stream did not contain valid UTF-8"). A trusted
/// comment that is not UTF-8 is refused as a format error that says so: it is signed as
/// bytes, and reading it lossily would report a genuine signature as tampered.
#[test]
fn comments_that_are_not_utf8_read_like_minisign_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        "minisign",
        "minisign",
        &["-G", "-W", "-p", "m.pub", "-s", "m.key"],
        d,
    );
    let file = write(&d.join("f"), b"data");
    run_ok("minisign", "minisign", &["-S", "-s", "m.key", "-m", "f"], d);
    let latin1 = |text: &[u8]| {
        let end = text.iter().position(|&b| b == b'\n').unwrap();
        let mut out = b"untrusted comment: caf\xe9".to_vec();
        out.extend_from_slice(&text[end..]);
        out
    };
    let sig = signature_path(&file);
    std::fs::write(&sig, latin1(&std::fs::read(&sig).unwrap())).unwrap();
    std::fs::write(
        d.join("m.pub"),
        latin1(&std::fs::read(d.join("m.pub")).unwrap()),
    )
    .unwrap();
    run_ok("minisign", "minisign", &["-Vm", "f", "-p", "m.pub"], d);
    let pk = PublicKey::from_file(&d.join("m.pub")).unwrap();
    verify(&file, &sig, std::slice::from_ref(&pk)).unwrap();

    // The same key signs with a Latin-1 trusted comment: minisign accepts it, Slipway says
    // what it cannot check.
    let arg = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = std::process::Command::new("minisign")
        .args(["-S", "-s", "m.key", "-m", "f", "-t"])
        .arg(arg)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    run_ok("minisign", "minisign", &["-Vm", "f", "-p", "m.pub"], d);
    let err = verify(&file, &sig, &[pk]).unwrap_err();
    assert!(matches!(err, Error::SignatureFormat { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("not UTF-8") && msg.contains("f.minisig"),
        "{msg}"
    );
}

/// Found by the long fuzz run against the minisign CLI: minisign drops every carriage
/// return ending a line, Slipway dropped one, so a signature whose lines end in "\r\r\n"
/// verified with minisign and was refused here as garbled (or, on the trusted comment
/// line, reported as tampered).
#[test]
fn lines_ending_in_several_carriage_returns_read_like_minisign_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        "minisign",
        "minisign",
        &["-G", "-W", "-p", "m.pub", "-s", "m.key"],
        d,
    );
    let file = write(&d.join("f"), b"data");
    run_ok(
        "minisign",
        "minisign",
        &["-S", "-s", "m.key", "-m", "f", "-t", "built by ci"],
        d,
    );
    let sig = signature_path(&file);
    let text = std::fs::read_to_string(&sig).unwrap();
    // minisign reads the signature line into a buffer of its exact size, so only the
    // other three lines may carry more than one.
    let crlf: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 1 {
                format!("{l}\r\n")
            } else {
                format!("{l}\r\r\n")
            }
        })
        .collect();
    std::fs::write(&sig, crlf.concat()).unwrap();
    run_ok("minisign", "minisign", &["-Vm", "f", "-p", "m.pub"], d);
    let pk = PublicKey::from_file(&d.join("m.pub")).unwrap();
    let verified = verify(&file, &sig, &[pk]).unwrap();
    assert_eq!(verified.trusted_comment, "built by ci");
}
