//! Property tests of archive bundles read back (`read_bundle`): the real bundle of
//! `archive_bundle` mutated in its zstd stream, in its tar, in one of its files and in its
//! manifest (a JSON value replaced), and cut short; and retention periods (`parse_days`).
//! Never a panic, and a bundle whose content no longer matches its manifest is never read
//! as if it did. `PROPTEST_CASES` runs them longer.

use proptest::prelude::*;
use proptest::sample::Index;
use slipway_govern::archive::{ArchiveError, parse_days, read_bundle};

use crate::archive_bundle::{FIXTURE, tar_of, zst};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

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
            _ => out.truncate(i),
        }
    }
    out
}

/// Reads `bytes`: an error must say something; a bundle read must hold exactly the
/// original records, and a manifest that differs only where nothing in the bundle can
/// check it (the `--before` date, the policy and the keep-until dates, which the bundle's
/// signature and checkpoint digest protect).
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match read_bundle(bytes) {
        Ok(b) => {
            let want = &FIXTURE.bundle;
            prop_assert_eq!(&b.audit, &want.audit);
            prop_assert_eq!(&b.runs, &want.runs);
            prop_assert_eq!(&b.journal, &want.journal);
            prop_assert_eq!(&b.approvals, &want.approvals);
            let (m, w) = (&b.manifest, &want.manifest);
            prop_assert_eq!(&m.format, &w.format);
            prop_assert_eq!(&m.files, &w.files);
            prop_assert_eq!(&m.counts, &w.counts);
            prop_assert_eq!(&m.runs, &w.runs);
            prop_assert_eq!(&m.chain, &w.chain);
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.len() > "read the archive bundle: ".len(), "{}", msg);
        }
    }
    Ok(())
}

/// A JSON value somewhere in the manifest replaced by another: what a forger who edits
/// `manifest.json` (and rebuilds the tar around it) can do.
fn replace_value(
    v: &mut serde_json::Value,
    path: &mut impl Iterator<Item = Index>,
    with: &serde_json::Value,
) {
    let next = path.next();
    match (v, next) {
        (serde_json::Value::Object(map), Some(i)) if !map.is_empty() => {
            let key = map.keys().nth(i.index(map.len())).unwrap().clone();
            replace_value(map.get_mut(&key).unwrap(), path, with);
        }
        (serde_json::Value::Array(items), Some(i)) if !items.is_empty() => {
            let n = items.len();
            replace_value(&mut items[i.index(n)], path, with);
        }
        (leaf, _) => *leaf = with.clone(),
    }
}

fn odd_values() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!([])),
        Just(json!({})),
        Just(json!("a1")),
        ".{0,12}".prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
    ]
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn arbitrary_bytes_never_panic(
        zstd_magic in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = if zstd_magic { vec![0x28, 0xb5, 0x2f, 0xfd] } else { Vec::new() };
        bytes.extend(rest);
        prop_assert!(read_bundle(&bytes).is_err());
    }

    #[test]
    fn a_mutated_zstd_stream_never_reads_as_other_records(edits in edits()) {
        check(&mutate(&FIXTURE.bytes, &edits))?;
    }

    #[test]
    fn a_mutated_tar_never_reads_as_other_records(edits in edits()) {
        let tar = tar_of(&FIXTURE.files);
        check(&zst(&mutate(&tar, &edits)))?;
    }

    #[test]
    fn a_mutated_file_in_the_bundle_never_reads_as_other_records(
        which in any::<Index>(),
        edits in edits(),
    ) {
        let mut files = FIXTURE.files.clone();
        let i = which.index(files.len());
        files[i].1 = mutate(&files[i].1, &edits);
        check(&zst(&tar_of(&files)))?;
    }

    #[test]
    fn an_edited_manifest_value_never_reads_as_other_records(
        path in proptest::collection::vec(any::<Index>(), 0..5),
        with in odd_values(),
    ) {
        let mut files = FIXTURE.files.clone();
        let (name, manifest) = &mut files[0];
        prop_assert_eq!(name.as_str(), "manifest.json");
        let mut value: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        replace_value(&mut value, &mut path.into_iter(), &with);
        *manifest = serde_json::to_vec_pretty(&value).unwrap();
        check(&zst(&tar_of(&files)))?;
    }

    #[test]
    fn parse_days_never_panics(value in prop_oneof![".{0,12}", "[0-9]{0,12}[dwy ]?"]) {
        match parse_days(&value) {
            Ok(days) => {
                let v = value.trim();
                let (num, unit) = v.split_at(v.len() - 1);
                let per = match unit { "d" => 1, "w" => 7, "y" => 365, _ => 0 };
                prop_assert_eq!(u64::from(days), num.parse::<u64>().unwrap() * per);
            }
            Err(e) => {
                prop_assert!(matches!(e, ArchiveError::BadPolicy { .. }), "{}", e);
                prop_assert!(e.to_string().contains(&format!("`{value}`")), "{}", e);
            }
        }
    }
}
