//! Compliance evidence over a seeded history with known exceptions.

use slipway_engine::RunState;
use slipway_engine::event::EngineEvent;
use slipway_engine::store::Store;
use slipway_govern::compliance;
use slipway_govern::history::load_runs;

use crate::common::*;

fn approved(
    at: &'static str,
    who: &'static str,
    digest: &str,
) -> (&'static str, &'static str, EngineEvent) {
    (
        at,
        who,
        EngineEvent::Approved {
            approver: who.into(),
            digest: digest.into(),
            groups: vec![],
        },
    )
}

#[tokio::test]
async fn sox_pack_lists_the_seeded_exceptions_and_the_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let staging = plan(SHOP_FEATURE, "staging");
    let prod = plan(SHOP_FEATURE, "prod");
    let patch = plan(SHOP_PATCH, "prod");
    let hotfix = plan(SHOP_HOTFIX, "prod");
    seed(
        &store,
        "c1",
        &staging,
        "op-bob",
        "2026-11-02T09:00:00Z",
        lifecycle(
            "2026-11-02T09:00:00Z",
            "2026-11-02T09:10:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    // Clean: tested in staging, approved by someone else before it ran.
    let mut ev = vec![approved("2026-11-02T10:00:00Z", "op-carol", &prod.digest)];
    ev.extend(lifecycle(
        "2026-11-02T10:05:00Z",
        "2026-11-02T10:30:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "c2", &prod, "op-bob", "2026-11-02T10:00:00Z", ev).await;
    // Self-approved, never tested outside production.
    let mut ev = vec![approved("2026-11-03T10:00:00Z", "op-bob", &patch.digest)];
    ev.extend(lifecycle(
        "2026-11-03T10:05:00Z",
        "2026-11-03T10:30:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "c3", &patch, "op-bob", "2026-11-03T10:00:00Z", ev).await;
    // An emergency change with no review by anyone else.
    let mut ev = vec![approved("2026-11-04T02:00:00Z", "op-dave", &hotfix.digest)];
    ev.extend(lifecycle(
        "2026-11-04T02:01:00Z",
        "2026-11-04T02:05:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "c4", &hotfix, "op-dave", "2026-11-04T02:00:00Z", ev).await;

    let runs = load_runs(&store, None).await.unwrap();
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let e = compliance::evaluate(
        "sox",
        &runs,
        &entries,
        head.clone(),
        t("2026-11-01T00:00:00Z"),
        t("2026-12-01T00:00:00Z"),
    )
    .unwrap();
    let found: Vec<(String, String)> = e
        .exceptions()
        .map(|x| (x.control.clone(), x.run.clone()))
        .collect();
    let has = |c: &str, r: &str| found.contains(&(c.to_owned(), r.to_owned()));
    assert!(has("SOX-CM-2", "c3"), "{found:?}");
    assert!(has("SOX-CM-2", "c4"), "{found:?}");
    assert!(has("SOX-CM-3", "c3"), "{found:?}");
    assert!(has("SOX-CM-4", "c4"), "{found:?}");
    assert!(
        !found.iter().any(|(_, r)| r == "c2"),
        "the clean deploy has no exception: {found:?}"
    );
    assert!(
        !found.iter().any(|(c, _)| c == "SOX-CM-1"),
        "every prod run was approved first"
    );
    let (seq, hash) = head.unwrap();
    assert_eq!(
        (e.audit_head_seq, e.audit_head_hash.as_str()),
        (seq, hash.as_str())
    );

    let out = dir.path().join("pack");
    compliance::write_pack(&e, &out).unwrap();
    let jsonl = std::fs::read_to_string(out.join("evidence.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["audit_head_hash"], hash);
    assert!(jsonl.lines().any(|l| l.contains("\"exception\"")
        && l.contains("c3")
        && l.contains("approved by its author")));
    let html = std::fs::read_to_string(out.join("summary.html")).unwrap();
    assert!(
        html.contains("emergency change shop 2.4.2 (hotfix) has no review"),
        "{html}"
    );
    assert!(html.contains(&hash));
}

#[tokio::test]
async fn hipaa_flags_a_tampered_chain_and_gdpr_passes_a_clean_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let staging = plan(SHOP_FEATURE, "staging");
    seed(
        &store,
        "h1",
        &staging,
        "op-bob",
        "2026-11-02T09:00:00Z",
        lifecycle(
            "2026-11-02T09:00:00Z",
            "2026-11-02T09:10:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    let runs = load_runs(&store, None).await.unwrap();
    let mut entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let (since, until) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
    let g = compliance::evaluate("gdpr", &runs, &entries, head.clone(), since, until).unwrap();
    assert_eq!(g.exceptions().count(), 0, "{:?}", g.results);
    entries[1].outcome = "edited".into();
    let h = compliance::evaluate("hipaa", &runs, &entries, head, since, until).unwrap();
    let x: Vec<&compliance::Exception> = h.exceptions().collect();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].control, "HIPAA-AU-1");
    assert!(
        x[0].detail.contains("audit entry 2 was edited"),
        "{}",
        x[0].detail
    );
    assert!(compliance::evaluate("pci", &runs, &entries, None, since, until).is_err());
}

/// A staging success archived before the production run's pack is drawn still counts as
/// the test before production (live runs alone would raise a false SOX-CM-3 exception),
/// and the archived run is listed with its bundle, not dropped.
#[tokio::test]
async fn an_archived_staging_success_still_tests_production_and_is_listed() {
    use slipway_govern::RunHistory;
    use slipway_govern::history::{summarize, with_archived};
    use slipway_store::archive::ArchiveDb;

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let staging = plan(SHOP_FEATURE, "staging");
    let prod = plan(SHOP_FEATURE, "prod");
    seed(
        &store,
        "t1",
        &staging,
        "op-bob",
        "2026-11-02T09:00:00Z",
        lifecycle(
            "2026-11-02T09:00:00Z",
            "2026-11-02T09:10:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    let mut ev = vec![approved("2026-11-02T10:00:00Z", "op-carol", &prod.digest)];
    ev.extend(lifecycle(
        "2026-11-02T10:05:00Z",
        "2026-11-02T10:30:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "p1", &prod, "op-bob", "2026-11-02T10:00:00Z", ev).await;

    let db = ArchiveDb::open(&dir.path().join("slipway.db"))
        .await
        .unwrap();
    let cut = t("2026-11-02T09:30:00Z");
    let sel = db.select(cut, cut).await.unwrap();
    assert_eq!(sel.run_ids(), ["t1"]);
    let sums = vec![summarize(
        &RunHistory::load(&store, "t1").await.unwrap(),
        None,
    )];
    db.prune(
        &sel,
        &sums,
        "cafe",
        "t.tar.zst",
        &cut.to_string(),
        cut,
        "op-archiver",
    )
    .await
    .unwrap();

    let live = load_runs(&store, None).await.unwrap();
    let start = store.audit_start().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let entries = store.audit_entries().await.unwrap();
    let (since, until) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
    let live_only = compliance::evaluate_from(
        "sox",
        &live,
        &entries,
        start.clone(),
        head.clone(),
        since,
        until,
    )
    .unwrap();
    assert!(
        live_only.exceptions().any(|x| x.control == "SOX-CM-3"),
        "without the summary the staging test is lost"
    );

    let (runs, _) = with_archived(
        live,
        &db.summaries().await.unwrap(),
        &db.checkpoints().await.unwrap(),
        None,
    );
    let e = compliance::evaluate_from("sox", &runs, &entries, start, head, since, until).unwrap();
    assert_eq!(e.exceptions().count(), 0, "{:?}", e.results);
    assert!(e.chain.starts_with("verified"), "{}", e.chain);
    assert_eq!(e.archived.len(), 1);
    assert_eq!(
        (e.archived[0].run.as_str(), e.archived[0].bundle.as_str()),
        ("t1", "t.tar.zst")
    );
    assert!(
        e.coverage().contains("1 archived run(s)"),
        "{}",
        e.coverage()
    );
    // A non-production run is outside the SOX controls' population.
    assert!(e.results.iter().all(|r| r.archived_not_examined == 0));
}

/// Runs archived with their exceptions: from summaries alone they are listed, not examined
/// (no exception can be claimed or cleared); read back from the bundle they are examined
/// like live runs — the self-approved, untested production run is an exception again — and
/// the chain verifies from genesis through the bundle's entries and the live ones.
#[tokio::test]
async fn archived_runs_read_back_from_their_bundle_are_examined_like_live_ones() {
    use slipway_govern::RunHistory;
    use slipway_govern::archive::{RetentionPolicy, build_bundle, bundle_digest, read_bundle};
    use slipway_govern::history::{summarize, with_archived};
    use slipway_store::archive::ArchiveDb;

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let prod = plan(SHOP_FEATURE, "prod");
    let patch = plan(SHOP_PATCH, "prod");
    let mut ev = vec![approved("2026-11-02T10:00:00Z", "op-carol", &prod.digest)];
    ev.extend(lifecycle(
        "2026-11-02T10:05:00Z",
        "2026-11-02T10:30:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "a1", &prod, "op-bob", "2026-11-02T10:00:00Z", ev).await;
    let mut ev = vec![approved("2026-11-03T10:00:00Z", "op-bob", &patch.digest)];
    ev.extend(lifecycle(
        "2026-11-03T10:05:00Z",
        "2026-11-03T10:30:00Z",
        RunState::Succeeded,
    ));
    seed(&store, "a2", &patch, "op-bob", "2026-11-03T10:00:00Z", ev).await;
    seed(
        &store,
        "live",
        &plan(SHOP_FEATURE, "staging"),
        "op-bob",
        "2026-11-05T10:00:00Z",
        lifecycle(
            "2026-11-05T10:00:00Z",
            "2026-11-05T10:01:00Z",
            RunState::Succeeded,
        ),
    )
    .await;

    let db = ArchiveDb::open(&dir.path().join("slipway.db"))
        .await
        .unwrap();
    let cut = t("2026-11-04T00:00:00Z");
    let sel = db.select(cut, cut).await.unwrap();
    assert_eq!(sel.run_ids(), ["a1", "a2"]);
    let (bytes, _) = build_bundle(&sel, &[], "2026-11-04", &RetentionPolicy::defaults()).unwrap();
    let mut sums = Vec::new();
    for id in sel.run_ids() {
        sums.push(summarize(
            &RunHistory::load(&store, &id).await.unwrap(),
            None,
        ));
    }
    let cp = db
        .prune(
            &sel,
            &sums,
            &bundle_digest(&bytes),
            "a.tar.zst",
            "2026-11-04",
            cut,
            "op-archiver",
        )
        .await
        .unwrap();

    let (since, until) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
    let (mut runs, _) = with_archived(
        load_runs(&store, None).await.unwrap(),
        &db.summaries().await.unwrap(),
        &db.checkpoints().await.unwrap(),
        None,
    );
    let start = store.audit_start().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let live = store.audit_entries().await.unwrap();
    let summary_only =
        compliance::evaluate_from("sox", &runs, &live, start, head.clone(), since, until).unwrap();
    assert_eq!(summary_only.exceptions().count(), 0);
    assert_eq!(summary_only.archived.len(), 2);
    let cm2 = &summary_only.results[1];
    assert_eq!((cm2.examined, cm2.archived_not_examined), (0, 2));

    let bundle = read_bundle(&bytes).unwrap();
    RunHistory::replace_from_bundles(&mut runs, RunHistory::from_bundle(&bundle, &cp).unwrap());
    let mut entries = bundle.audit.clone();
    entries.extend(live);
    let full = compliance::evaluate_from(
        "sox",
        &runs,
        &entries,
        (0, slipway_engine::audit::GENESIS.to_owned()),
        head,
        since,
        until,
    )
    .unwrap();
    let found: Vec<(String, String)> = full
        .exceptions()
        .map(|x| (x.control.clone(), x.run.clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("SOX-CM-2".to_owned(), "a2".to_owned()),
            ("SOX-CM-3".to_owned(), "a1".to_owned()),
            ("SOX-CM-3".to_owned(), "a2".to_owned())
        ],
        "a1 was never tested outside production either"
    );
    assert!(full.archived.is_empty());
    assert_eq!(full.examined_from_bundles["a.tar.zst"], 2);
    assert_eq!(
        (
            full.results[1].examined,
            full.results[1].archived_not_examined
        ),
        (2, 0)
    );
    assert!(full.chain.starts_with("verified"), "{}", full.chain);
    let hipaa = compliance::evaluate_from(
        "hipaa",
        &runs,
        &entries,
        (0, slipway_engine::audit::GENESIS.to_owned()),
        store.audit_head().await.unwrap(),
        since,
        until,
    )
    .unwrap();
    assert_eq!(hipaa.exceptions().count(), 0, "{:?}", hipaa.results);
}
