//! Handover and retrospective of recorded demo runs (insta snapshots, redacted), and the
//! git facts they draw on from a real repository.

use slipway_govern::git::{self, release_notes};
use slipway_govern::history::{RunHistory, load_runs, previous_run};
use slipway_govern::{handover, retro};

use crate::common::*;

async fn demo_runs() -> (tempfile::TempDir, Vec<RunHistory>, Vec<Option<RunHistory>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    seed_demo(&store, &dir.path().display().to_string()).await;
    let runs = load_runs(&store, None).await.unwrap();
    let mut prevs = Vec::new();
    for r in &runs {
        prevs.push(previous_run(&store, r).await.unwrap());
    }
    (dir, runs, prevs)
}

#[tokio::test]
async fn handover_of_the_rolled_back_demo_run() {
    let (_dir, runs, prevs) = demo_runs().await;
    let (run, prev) = (&runs[2], prevs[2].as_ref());
    assert_eq!(run.record.version, "2.5.0");
    assert_eq!(prev.unwrap().record.version, "2.4.0");
    let md = handover::render(run, prev, &release_notes(run, prev));
    assert!(
        md.contains("--error-rate 0.25"),
        "the command change is listed:\n{md}"
    );
    redacted().bind(|| insta::assert_snapshot!("handover_rolled_back", md));
}

#[tokio::test]
async fn handover_of_the_first_demo_run() {
    let (_dir, runs, prevs) = demo_runs().await;
    assert!(prevs[0].is_none());
    let md = handover::render(&runs[0], None, &release_notes(&runs[0], None));
    assert!(md.contains("First release of shop here."));
    redacted().bind(|| insta::assert_snapshot!("handover_first", md));
}

#[tokio::test]
async fn retro_of_the_rolled_back_demo_run() {
    let (_dir, runs, _) = demo_runs().await;
    let r = retro::build(&runs[2]);
    assert!(
        r.anomalies
            .iter()
            .any(|a| a.kind == "rollback" && a.detail.contains("error-rate"))
    );
    assert_eq!(r.measurements.get("failed"), Some(&2));
    assert_eq!(r.measurements.get("inconclusive"), Some(&1));
    redacted().bind(|| insta::assert_snapshot!("retro_rolled_back", retro::render_markdown(&r)));
}

#[tokio::test]
async fn retro_of_the_promoted_demo_run_counts_its_measurements() {
    let (_dir, runs, _) = demo_runs().await;
    let r = retro::build(&runs[1]);
    assert_eq!(r.state, "succeeded");
    assert!(r.measurements.get("successful").copied().unwrap_or(0) > 5);
    assert!(!r.anomalies.iter().any(|a| a.kind == "rollback"));
}

#[tokio::test]
async fn release_notes_and_lead_time_come_from_real_git_tags() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git_repo(
        &repo,
        &[
            ("first release", "v2.4.0", "2026-11-01T10:00:00Z"),
            ("fix the checkout total", "", "2026-11-02T10:00:00Z"),
            ("speed up search", "v2.5.0", "2026-11-03T10:00:00Z"),
        ],
    );
    let store = open(dir.path()).await;
    let p1 = plan(SHOP_FEATURE, "prod");
    let p2 = plan(&SHOP_FEATURE.replace("2.4.0", "2.5.0"), "prod");
    let wd = repo.display().to_string();
    seed_in(&store, "g1", &p1, &wd, "2026-11-04T09:00:00Z").await;
    seed_in(&store, "g2", &p2, &wd, "2026-11-05T09:00:00Z").await;
    let runs = load_runs(&store, None).await.unwrap();
    let notes = release_notes(&runs[1], Some(&runs[0]));
    assert_eq!(notes.range, "v2.4.0..v2.5.0");
    let subjects: Vec<&str> = notes.commits.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["speed up search", "fix the checkout total"]);
    let origin = git::change_origin(&runs[1]).unwrap();
    assert_eq!(origin.source, "tag v2.5.0");
    assert_eq!(origin.commit.time, t("2026-11-03T10:00:00Z"));
    // Without a tag, the last commit before the run stands in, and says so.
    let p3 = plan(&SHOP_FEATURE.replace("2.4.0", "2.6.0"), "prod");
    seed_in(&store, "g3", &p3, &wd, "2026-11-06T09:00:00Z").await;
    let run3 = RunHistory::load(&store, "g3").await.unwrap();
    let origin = git::change_origin(&run3).unwrap();
    assert_eq!(origin.source, "last commit before the run (no tag v2.6.0)");
    assert_eq!(origin.commit.subject, "speed up search");
    let md = handover::render(&runs[1], Some(&runs[0]), &notes);
    assert!(md.contains("fix the checkout total"));
}

async fn seed_in(
    store: &slipway_store::SqliteStore,
    id: &str,
    plan: &slipway_model::plan::Plan,
    workdir: &str,
    at: &str,
) {
    use slipway_engine::store::{JournalRecord, NewRun, Store};
    store
        .create_run(
            NewRun {
                id: id.into(),
                plan_json: serde_json::to_string(plan).unwrap(),
                digest: plan.digest.clone(),
                release: plan.release.name.clone(),
                version: plan.release.version.clone(),
                environment: plan.environment.clone(),
                author: "op-bob".into(),
                override_reason: None,
                created_at: t(at),
                workdir: workdir.into(),
            },
            JournalRecord {
                run_id: id.into(),
                digest: plan.digest.clone(),
                at: t(at),
                actor: "op-bob".into(),
                event: slipway_engine::EngineEvent::RunCreated {
                    release: plan.release.name.clone(),
                    version: plan.release.version.clone(),
                    environment: plan.environment.clone(),
                    digest: plan.digest.clone(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            },
        )
        .await
        .unwrap();
}
