//! Archive bundles read back (`read_bundle`) when they are not what Slipway wrote:
//! decompression bombs of each kind, and bundles whose content no longer matches their
//! manifest. The properties over mutated bundles are in `archive_fuzz`; both use the real
//! bundle built here by `build_bundle` from a seeded store.

use std::io::Read;
use std::sync::LazyLock;

use slipway_engine::event::RunState;
use slipway_govern::archive::{
    ArchiveError, Bundle, RetentionPolicy, build_bundle, read_bundle, read_bundle_within,
};
use slipway_store::archive::ArchiveDb;

use crate::common::{SHOP_FEATURE, SHOP_PATCH, lifecycle, open, plan, seed, t};

/// A real bundle: two archived runs with their journals and audit entries, and one extra
/// file; its files in tar order, and what reading it gives.
pub struct Fixture {
    pub bytes: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
    pub bundle: Bundle,
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let feature = plan(SHOP_FEATURE, "prod");
        let patch = plan(SHOP_PATCH, "prod");
        seed(
            &store,
            "a1",
            &feature,
            "op-bob",
            "2026-11-02T10:00:00Z",
            lifecycle(
                "2026-11-02T10:05:00Z",
                "2026-11-02T10:30:00Z",
                RunState::Succeeded,
            ),
        )
        .await;
        seed(
            &store,
            "a2",
            &patch,
            "op-bob",
            "2026-11-03T10:00:00Z",
            lifecycle(
                "2026-11-03T10:05:00Z",
                "2026-11-03T10:30:00Z",
                RunState::RolledBack,
            ),
        )
        .await;
        let db = ArchiveDb::open(&dir.path().join("slipway.db"))
            .await
            .unwrap();
        let cut = t("2026-11-04T00:00:00Z");
        let sel = db.select(cut, cut).await.unwrap();
        assert_eq!(sel.run_ids(), ["a1", "a2"]);
        let extra = vec![(
            "files/a1/versions.lock.json".to_owned(),
            br#"{"api":"2.4.0"}"#.to_vec(),
        )];
        let (bytes, _) =
            build_bundle(&sel, &extra, "2026-11-04", &RetentionPolicy::defaults()).unwrap();
        let bundle = read_bundle(&bytes).unwrap();
        assert!(!bundle.audit.is_empty() && bundle.journal.len() > 4);
        Fixture {
            files: tar_files(&zstd::decode_all(&bytes[..]).unwrap()),
            bytes,
            bundle,
        }
    })
});

fn tar_files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (name, b)
        })
        .collect()
}

/// A tar with the headers `build_bundle` writes.
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

pub fn zst(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

/// A zstd stream of `header` followed by `zeros` bytes of zeros, built from concatenated
/// frames so a gigabytes-long stream takes a few hundred kilobytes.
fn bomb(header: &tar::Header, zeros: u64) -> Vec<u8> {
    let mut out = zstd::encode_all(header.as_bytes().as_slice(), 1).unwrap();
    let frame = zstd::encode_all(&vec![0u8; 1 << 20][..], 19).unwrap();
    for _ in 0..zeros >> 20 {
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn a_bundle_that_unpacks_beyond_the_limit_is_refused_before_it_is_read() {
    // One file of 3 GiB, above the 2 GiB limit, in 150 KB.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("runs.jsonl").unwrap();
    h.set_size(3 << 30);
    h.set_cksum();
    let bytes = bomb(&h, 3 << 30);
    assert!(bytes.len() < 200_000, "{}", bytes.len());
    let err = read_bundle(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("runs.jsonl alone declares 3221225472") && err.contains("decompression bomb"),
        "{err}"
    );

    // Files each below the limit that together pass it: the file that would pass it is
    // refused before it is read (a small limit stands in for 2 GiB).
    let err = read_bundle_within(&FIXTURE.bytes, 4096)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unpacks to more than 4096 bytes") && err.contains("alone declares"),
        "{err}"
    );
    read_bundle_within(&FIXTURE.bytes, 1 << 20).unwrap();

    // A 1 GiB GNU long name, which the tar reader reads whole before the entry it names.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    let err = read_bundle(&bomb(&h, 1 << 30)).unwrap_err().to_string();
    assert!(err.contains("long name or PAX records"), "{err}");
}

/// The fixture with `manifest.json` edited by `edit` (and the tar rebuilt around it).
fn with_manifest(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut files = FIXTURE.files.clone();
    assert_eq!(files[0].0, "manifest.json");
    let mut value: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    edit(&mut value);
    files[0].1 = serde_json::to_vec_pretty(&value).unwrap();
    zst(&tar_of(&files))
}

fn tampered(bytes: &[u8]) -> String {
    match read_bundle(bytes) {
        Err(e @ ArchiveError::Tampered(_)) => e.to_string(),
        other => panic!("expected a tampered bundle, got {other:?}"),
    }
}

/// Found by fuzzing: only the counts of runs.jsonl and audit.jsonl were compared with the
/// files, so a manifest whose other counts, count keys or run list no longer matched the
/// bundle's rows still read as good; and a name twice in the tar read as its last copy.
#[test]
fn a_manifest_that_no_longer_matches_the_rows_is_refused() {
    // The run list (fuzzed: a run id replaced by "").
    let msg = tampered(&with_manifest(|m| m["runs"][0] = "".into()));
    assert!(
        msg.contains("runs.jsonl") && msg.contains("manifest.json"),
        "{msg}"
    );
    // A count key (fuzzed: "approvals.jsonl" became "pprovals.jsonl").
    let msg = tampered(&with_manifest(|m| {
        let counts = m["counts"].as_object_mut().unwrap();
        let n = counts.remove("approvals.jsonl").unwrap();
        counts.insert("pprovals.jsonl".into(), n);
    }));
    assert!(msg.contains("approvals.jsonl"), "{msg}");
    // Another file's count.
    let msg = tampered(&with_manifest(|m| m["counts"]["journal.jsonl"] = 1.into()));
    assert!(
        msg.contains("journal.jsonl has 7 rows, manifest.json counts 1"),
        "{msg}"
    );
    // A row file dropped from the manifest and the tar together.
    let mut files = FIXTURE.files.clone();
    files.retain(|(n, _)| n != "checks.jsonl");
    let mut value: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    value["files"]
        .as_object_mut()
        .unwrap()
        .remove("checks.jsonl");
    value["counts"]
        .as_object_mut()
        .unwrap()
        .remove("checks.jsonl");
    files[0].1 = serde_json::to_vec_pretty(&value).unwrap();
    let msg = tampered(&zst(&tar_of(&files)));
    assert!(msg.contains("does not list checks.jsonl"), "{msg}");
    // A file twice: which copy counts depends on the reader.
    let mut files = FIXTURE.files.clone();
    let runs = files
        .iter()
        .find(|(n, _)| n == "runs.jsonl")
        .unwrap()
        .clone();
    files.push(runs);
    let msg = tampered(&zst(&tar_of(&files)));
    assert!(msg.contains("runs.jsonl appears twice"), "{msg}");
}

/// Found by fuzzing: a chain range starting at the largest seq overflowed `start_seq + 1`,
/// a panic in debug builds and a wrong comparison in release ones.
#[test]
fn a_chain_range_at_the_largest_seq_is_refused_not_a_panic() {
    let msg = tampered(&with_manifest(|m| {
        m["chain"]["start_seq"] = i64::MAX.into();
    }));
    assert!(
        msg.contains("audit.jsonl does not cover the chain range"),
        "{msg}"
    );
}
