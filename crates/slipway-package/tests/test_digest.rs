//! Streaming digests and their verification.

use slipway_package::{Error, ErrorClass, sha256_file, verify_digest};

#[test]
fn digest_matches_sha256sum_and_accepts_prefix_and_upper_case() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::common::write(&dir.path().join("a.bin"), b"hello slipway\n");
    let out = crate::common::run_ok(
        "sha256sum",
        "coreutils",
        &[file.to_str().unwrap()],
        dir.path(),
    );
    let expected = String::from_utf8(out.stdout).unwrap()[..64].to_owned();
    assert_eq!(sha256_file(&file).unwrap(), expected);
    verify_digest(&file, &expected).unwrap();
    verify_digest(&file, &format!("sha256:{}", expected.to_uppercase())).unwrap();
}

#[test]
fn mismatch_carries_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::common::write(&dir.path().join("a.bin"), b"built");
    let expected = sha256_file(&file).unwrap();
    std::fs::write(&file, b"swapped").unwrap();
    let err = verify_digest(&file, &expected).unwrap_err();
    let actual = sha256_file(&file).unwrap();
    match &err {
        Error::DigestMismatch {
            expected: e,
            actual: a,
            ..
        } => {
            assert_eq!(e, &expected);
            assert_eq!(a, &actual);
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(err.class(), ErrorClass::Tampered);
    let msg = err.to_string();
    assert!(msg.contains(&expected) && msg.contains(&actual), "{msg}");
}

#[test]
fn malformed_expected_digest_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::common::write(&dir.path().join("a.bin"), b"x");
    let err = verify_digest(&file, "9f2c").unwrap_err();
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Input);
}
