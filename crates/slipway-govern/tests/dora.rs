//! DORA figures against a hand-computed history.
//!
//! Period 2026-11-01 .. 2026-11-11 (10 days), production only:
//! - r1 feature (api, web): runs 11-02 10:00–10:30, succeeded; tag commit 11-01 10:30
//!   → lead time 24 h.
//! - r2 feature: runs 11-03 09:00–09:10, rolled back → recovery 600 s.
//! - r3 patch (api): runs 11-04 12:00–12:05, failed; restored by r4 at 14:00 → 7200 s.
//! - r4 patch (api): runs 11-04 13:30–14:00, succeeded; commit 11-04 11:00 → 3 h.
//! - r5 patch: aborted (not a deployment).
//! - r6 staging (out of scope), r0 before the period (out of scope).

use std::collections::BTreeMap;

use slipway_engine::RunState;
use slipway_govern::dora::{self, DoraQuery};
use slipway_govern::git::{ChangeOrigin, Commit};
use slipway_govern::history::load_runs;

use crate::common::*;

async fn seeded() -> (tempfile::TempDir, Vec<slipway_govern::RunHistory>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let feature = plan(SHOP_FEATURE, "prod");
    let patch = plan(SHOP_PATCH, "prod");
    let staging = plan(SHOP_FEATURE, "staging");
    seed(
        &store,
        "r0",
        &feature,
        "op-bob",
        "2026-10-20T10:00:00Z",
        lifecycle(
            "2026-10-20T10:00:00Z",
            "2026-10-20T10:05:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    seed(
        &store,
        "r1",
        &feature,
        "op-bob",
        "2026-11-02T09:55:00Z",
        lifecycle(
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:30:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    seed(
        &store,
        "r2",
        &feature,
        "op-bob",
        "2026-11-03T09:00:00Z",
        lifecycle(
            "2026-11-03T09:00:00Z",
            "2026-11-03T09:10:00Z",
            RunState::RolledBack,
        ),
    )
    .await;
    seed(
        &store,
        "r3",
        &patch,
        "op-bob",
        "2026-11-04T12:00:00Z",
        lifecycle(
            "2026-11-04T12:00:00Z",
            "2026-11-04T12:05:00Z",
            RunState::Failed,
        ),
    )
    .await;
    seed(
        &store,
        "r4",
        &patch,
        "op-bob",
        "2026-11-04T13:30:00Z",
        lifecycle(
            "2026-11-04T13:30:00Z",
            "2026-11-04T14:00:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    seed(
        &store,
        "r5",
        &patch,
        "op-bob",
        "2026-11-05T08:00:00Z",
        lifecycle(
            "2026-11-05T08:00:00Z",
            "2026-11-05T08:01:00Z",
            RunState::Aborted,
        ),
    )
    .await;
    seed(
        &store,
        "r6",
        &staging,
        "op-bob",
        "2026-11-05T09:00:00Z",
        lifecycle(
            "2026-11-05T09:00:00Z",
            "2026-11-05T09:01:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    let runs = load_runs(&store, None).await.unwrap();
    (dir, runs)
}

fn origins() -> BTreeMap<&'static str, ChangeOrigin> {
    let c = |sha: &str, at: &str| ChangeOrigin {
        commit: Commit {
            sha: sha.into(),
            time: t(at),
            subject: "change".into(),
        },
        source: "tag".into(),
    };
    BTreeMap::from([
        ("r1", c("aaaa", "2026-11-01T10:30:00Z")),
        ("r4", c("bbbb", "2026-11-04T11:00:00Z")),
    ])
}

fn report(query: DoraQuery) -> dora::DoraReport {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, runs) = rt.block_on(seeded());
    let origins = origins();
    dora::compute(&runs, &query, t("2026-11-11T00:00:00Z"), &|r| {
        origins.get(r.record.id.as_str()).cloned()
    })
}

fn period() -> DoraQuery {
    DoraQuery {
        since: Some(t("2026-11-01T00:00:00Z")),
        ..DoraQuery::default()
    }
}

#[test]
fn overall_figures_match_the_hand_computed_history() {
    let r = report(period());
    let f = &r.overall;
    assert_eq!(r.scope, "production environments");
    let ids: Vec<&str> = r.deployments.iter().map(|d| d.run.as_str()).collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4"]);
    assert_eq!(
        (
            f.deployments,
            f.succeeded,
            f.failed,
            f.rolled_back,
            f.aborted
        ),
        (4, 2, 1, 1, 1)
    );
    assert!((f.deployment_frequency_per_day - 0.2).abs() < 1e-9);
    assert_eq!(f.lead_time_median_seconds, Some(48_600.0));
    assert_eq!(f.lead_time_mean_seconds, Some(48_600.0));
    assert_eq!(f.lead_time_unknown, 0);
    assert_eq!(f.change_failure_rate, Some(0.5));
    assert_eq!(f.recovery_median_seconds, Some(3_900.0));
    assert_eq!(f.mttr_seconds, Some(3_900.0));
    assert_eq!(f.unrecovered, 0);
    assert_eq!(f.success_rate, Some(0.5));
    assert_eq!(f.rollback_frequency, Some(0.25));
}

#[test]
fn figures_split_by_release_type_and_service() {
    let r = report(period());
    let feature = &r.by_type["feature"];
    assert_eq!(
        (feature.deployments, feature.succeeded, feature.rolled_back),
        (2, 1, 1)
    );
    assert_eq!(feature.lead_time_median_seconds, Some(86_400.0));
    assert_eq!(feature.recovery_median_seconds, Some(600.0));
    let patch = &r.by_type["patch"];
    assert_eq!((patch.deployments, patch.failed, patch.aborted), (2, 1, 1));
    assert_eq!(patch.lead_time_median_seconds, Some(10_800.0));
    assert_eq!(patch.recovery_median_seconds, Some(7_200.0));
    assert_eq!(r.by_service["api"].deployments, 4);
    assert_eq!(r.by_service["web"].deployments, 2);
    assert_eq!(r.by_service["web"].change_failure_rate, Some(0.5));
}

#[test]
fn filters_narrow_the_history() {
    let r = report(DoraQuery {
        service: Some("web".into()),
        ..period()
    });
    assert_eq!(r.overall.deployments, 2);
    let r = report(DoraQuery {
        release_type: Some("patch".into()),
        ..period()
    });
    assert_eq!(r.overall.deployments, 2);
    assert_eq!(r.overall.mttr_seconds, Some(7_200.0));
    let r = report(DoraQuery {
        environment: Some("staging".into()),
        ..period()
    });
    assert_eq!(r.overall.deployments, 1);
    assert_eq!(r.overall.lead_time_unknown, 1, "r6 has no git facts");
}

#[test]
fn text_and_html_carry_the_figures_and_no_script() {
    let r = report(period());
    let text = dora::render_text(&r);
    assert!(
        text.contains("change failure rate              50%"),
        "{text}"
    );
    assert!(text.contains("0.20 per day"), "{text}");
    let html = dora::render_html(&r);
    assert!(html.contains("<svg"));
    assert!(html.contains("rolled_back"));
    assert!(!html.contains("<script"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["overall"]["change_failure_rate"], 0.5);
}

/// Archive r0..r3 (r3 failed and was restored by r4, which stays live) the way
/// `slipway archive` does — summaries from the loaded runs, pruned in one transaction —
/// and report again: every figure is the one from before, and the report names the
/// summaries it counted; the live runs alone would have undercounted.
#[test]
fn archiving_changes_no_figure_and_the_report_names_the_bundle() {
    use slipway_govern::RunHistory;
    use slipway_govern::history::{summarize, with_archived};
    use slipway_store::archive::ArchiveDb;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (dir, all) = seeded().await;
        let origins = origins();
        let origin = |r: &RunHistory| origins.get(r.record.id.as_str()).cloned();
        let now = t("2026-11-11T00:00:00Z");
        let before = dora::compute(&all, &period(), now, &origin);
        assert_eq!(before.archive.runs_from_summaries, 0);

        let store = open(dir.path()).await;
        let db = ArchiveDb::open(&dir.path().join("slipway.db"))
            .await
            .unwrap();
        let cut = t("2026-11-04T13:00:00Z");
        let sel = db.select(cut, cut).await.unwrap();
        assert_eq!(sel.run_ids(), ["r0", "r1", "r2", "r3"]);
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
                "feed",
                "b.tar.zst",
                &cut.to_string(),
                now,
                "op-archiver",
            )
            .await
            .unwrap();

        let since = period().since;
        let live = load_runs(&store, since).await.unwrap();
        let ids: Vec<&str> = live.iter().map(|r| r.record.id.as_str()).collect();
        assert_eq!(ids, ["r4", "r5", "r6"]);
        let live_only = dora::compute(&live, &period(), now, &origin);
        assert_eq!(live_only.overall.deployments, 1, "what reports did before");

        let (runs, unsummarized) = with_archived(
            live,
            &db.summaries().await.unwrap(),
            &db.checkpoints().await.unwrap(),
            since,
        );
        assert!(unsummarized.is_empty());
        let after = dora::compute(&runs, &period(), now, &origin);
        assert_eq!(after.overall, before.overall);
        assert_eq!(after.by_service, before.by_service);
        assert_eq!(after.by_type, before.by_type);
        assert_eq!(after.scope, before.scope);
        let strip = |r: &dora::DoraReport| {
            r.deployments
                .iter()
                .map(|d| dora::Deployment {
                    archived_in: None,
                    ..d.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&after), strip(&before));
        let archived: Vec<(&str, Option<&str>)> = after
            .deployments
            .iter()
            .map(|d| (d.run.as_str(), d.archived_in.as_deref()))
            .collect();
        assert_eq!(
            archived,
            [
                ("r1", Some("b.tar.zst")),
                ("r2", Some("b.tar.zst")),
                ("r3", Some("b.tar.zst")),
                ("r4", None)
            ]
        );
        // r0 is before the period: archived but not counted.
        assert_eq!(after.archive.runs_from_summaries, 3);
        assert_eq!(after.archive.bundles.len(), 1);
        assert_eq!(after.archive.bundles[0].checkpoint, cp.id);
        assert_eq!(after.archive.bundles[0].sha256, "feed");
        assert_eq!(after.archive.bundles[0].runs, 3);
        let text = dora::render_text(&after);
        assert!(
            text.contains("archived runs: 3 counted from archive summaries (bundle b.tar.zst: 3)"),
            "{text}"
        );
    });
}

/// An archive made before summaries existed (its checkpoint lists runs no summary
/// covers): the report cannot count them and says so for any period it may overlap.
#[test]
fn runs_archived_without_summaries_are_named_as_not_counted() {
    use slipway_govern::history::Unsummarized;
    let old = Unsummarized {
        bundle: "old.tar.zst".into(),
        sha256: "aaaa".into(),
        before: "2026-11-03T00:00:00Z".into(),
        runs: vec!["x1".into(), "x2".into()],
    };
    let r = report(DoraQuery {
        unsummarized: vec![old.clone()],
        ..period()
    });
    assert_eq!(r.archive.not_counted, std::slice::from_ref(&old));
    let text = dora::render_text(&r);
    assert!(
        text.contains("NOT COUNTED: 2 run(s) archived in old.tar.zst"),
        "{text}"
    );
    // A period starting after that archive's cutoff cannot hold its runs.
    let r = report(DoraQuery {
        since: Some(t("2026-11-03T00:00:00Z")),
        unsummarized: vec![old],
        ..DoraQuery::default()
    });
    assert!(r.archive.not_counted.is_empty());
}
