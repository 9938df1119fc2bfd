//! The archive selection and prune on real SQLite and PostgreSQL stores (`on_disk!`): only
//! closed runs leave (never a running, paused or waiting one), the audit prefix stops
//! before the first entry of a run that stays, the prune is refused when the store moved
//! since the selection, a failure inside it keeps nothing, and after it the chain verifies
//! from the checkpoint and keeps growing from its head; the retention rules are records
//! committed to by the chain on both.

use slipway_engine::audit;
use slipway_engine::event::{EngineEvent, RunState};
use slipway_engine::store::{NewRun, Store};
use slipway_store::archive::{ArchiveDb, PolicyRow, RunSummary, Selection};
use slipway_store::schema::MIGRATIONS;
use slipway_store::{AnyStore, SqliteStore};

use crate::common::{Backend, Fresh, at, on_disk, record, sqlite3};

// They edit the store behind its back with its own CLI: files and databases only.
on_disk!(
    only_closed_runs_leave_and_the_chain_verifies_from_the_checkpoint,
    a_writers_kept_head_archived_away_is_not_appended_to,
    summaries_are_written_with_the_prune_or_not_at_all,
    retention_rules_are_records_the_chain_commits_to,
);

/// Summaries of the selected runs from their rows (the CLI derives them from the plan and
/// journal; the store only needs one per run).
fn summaries(sel: &Selection) -> Vec<RunSummary> {
    sel.runs
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            let created: jiff::Timestamp = s("created_at").parse().unwrap();
            RunSummary {
                run_id: s("id"),
                checkpoint_id: 0,
                release: s("release"),
                version: s("version"),
                release_type: "patch".into(),
                environment: s("environment"),
                production: false,
                services: vec!["api".into()],
                state: RunState::parse(&s("state")).unwrap(),
                created_at: created,
                started_at: created,
                finished_at: Some(s("updated_at").parse().unwrap()),
                workdir: s("workdir"),
                tag: None,
                keep_until: None,
            }
        })
        .collect()
}

async fn run(store: &impl Store, id: &str, secs: i64, states: &[RunState]) {
    store
        .create_run(
            NewRun {
                id: id.into(),
                plan_json: "{}".into(),
                // A plan of its own: two live runs of one plan cannot coexist.
                digest: format!("d-{id}"),
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                author: "op-test".into(),
                override_reason: None,
                created_at: at(secs),
                workdir: "/tmp".into(),
            },
            record(
                id,
                secs,
                EngineEvent::RunCreated {
                    release: "shop".into(),
                    version: "1.0.0".into(),
                    environment: "staging".into(),
                    digest: "d1".into(),
                    override_freeze: None,
                    plan_sha256: None,
                    workdir: None,
                },
            ),
        )
        .await
        .unwrap();
    let mut from = RunState::Pending;
    for (i, to) in states.iter().enumerate() {
        store
            .commit(vec![record(
                id,
                secs + i as i64 + 1,
                EngineEvent::StateChanged {
                    from,
                    to: *to,
                    reason: None,
                },
            )])
            .await
            .unwrap();
        from = *to;
    }
}

fn verify_live(
    entries: &[audit::AuditEntry],
    start: &(i64, String),
    head: &Option<(i64, String)>,
) -> Result<audit::Verified, audit::ChainBreak> {
    audit::verify_from(
        entries,
        (start.0, start.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    )
}

async fn only_closed_runs_leave_and_the_chain_verifies_from_the_checkpoint(backend: Backend) {
    let fresh = Fresh::new(backend);
    let store = fresh.open().await.unwrap();
    run(
        &store,
        "done-1",
        0,
        &[RunState::Running, RunState::Succeeded],
    )
    .await;
    run(&store, "failed", 10, &[RunState::Running, RunState::Failed]).await;
    run(&store, "running", 20, &[RunState::Running]).await;
    run(&store, "paused", 30, &[RunState::Running, RunState::Paused]).await;
    run(
        &store,
        "rolled",
        40,
        &[RunState::Running, RunState::RolledBack],
    )
    .await;

    let a = ArchiveDb::for_store(&store);
    let far = at(1_000_000);
    // The retention cut-off holds back what is younger: runs last changed at or after it
    // and audit entries from it on stay live.
    let held = a.select(at(12), at(12)).await.unwrap();
    assert_eq!(held.run_ids(), ["done-1"]);
    assert!(held.audit.iter().all(|e| e.at < at(12).to_string()));
    let sel = a.select(far, far).await.unwrap();
    assert_eq!(sel.run_ids(), ["done-1", "failed", "rolled"]);
    // The prefix stops before the running run's first entry (seq 7).
    assert_eq!(sel.audit.len(), 6, "{:?}", sel.audit);
    assert_eq!(sel.end().0, 6);

    // Something moved since the selection (another writer edited the prefix's last
    // entry): refused, nothing removed.
    fresh.sql("UPDATE audit SET hash = 'x' || hash WHERE seq = 6");
    let e = a
        .prune(
            &sel,
            &summaries(&sel),
            "digest",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await;
    assert!(e.is_err(), "{e:?}");
    fresh.sql("UPDATE audit SET hash = substr(hash, 2) WHERE seq = 6");
    assert_eq!(store.runs(10).await.unwrap().len(), 5);

    let cp = a
        .prune(
            &sel,
            &summaries(&sel),
            "digest",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await
        .unwrap();
    assert_eq!((cp.start_seq, cp.end_seq), (0, 6));
    let mut live: Vec<String> = store
        .runs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    live.sort();
    assert_eq!(live, ["paused", "running"]);
    assert!(store.journal("done-1", 0).await.unwrap().is_empty());

    let start = store.audit_start().await.unwrap();
    assert_eq!(start, (6, sel.audit[5].hash.clone()));
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap();
    assert_eq!(entries.first().map(|e| e.seq), Some(7));
    verify_live(&entries, &start, &head).unwrap();
    // From genesis the live rows alone do not verify: the checkpoint is what makes them.
    assert!(audit::verify(&entries, head.as_ref().map(|(s, h)| (*s, h.as_str()))).is_err());
    // Archived + live verify as one chain.
    let mut all = sel.audit.clone();
    all.extend(entries);
    audit::verify(&all, head.as_ref().map(|(s, h)| (*s, h.as_str()))).unwrap();

    // Close everything, archive the rest: the whole chain leaves, and the next entry still
    // links to the head rather than starting again from genesis.
    store
        .commit(vec![record(
            "running",
            200,
            EngineEvent::StateChanged {
                from: RunState::Running,
                to: RunState::Succeeded,
                reason: None,
            },
        )])
        .await
        .unwrap();
    store
        .commit(vec![record(
            "paused",
            201,
            EngineEvent::StateChanged {
                from: RunState::Paused,
                to: RunState::Aborted,
                reason: None,
            },
        )])
        .await
        .unwrap();
    let sel2 = a.select(far, far).await.unwrap();
    assert_eq!(sel2.start, start);
    a.prune(
        &sel2,
        &summaries(&sel2),
        "digest2",
        "c.tar.zst",
        "2030-01-01",
        at(300),
        "op-archiver",
    )
    .await
    .unwrap();
    // What stays live is the archive's own entry, committing to its checkpoint.
    let left = store.audit_entries().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].outcome, "archived");
    run(&store, "next", 400, &[RunState::Running]).await;
    let entries = store.audit_entries().await.unwrap();
    let start = store.audit_start().await.unwrap();
    assert_eq!(entries[0].seq, start.0 + 1);
    assert_eq!(entries[0].prev_hash, start.1);
    verify_live(&entries, &start, &store.audit_head().await.unwrap()).unwrap();
}

/// A writer keeps the head of its last commit and appends after it with a compare-and-set
/// on the head in `meta` (the SQLite writer's fast path). Here the rows after that kept
/// head, and the kept head's own row, are archived away by another handle, so their seqs
/// are free again: a writer that trusted its kept head would start a second chain there
/// (no key collides). The compare-and-set sees the head moved; the entry lands after the
/// live head instead, and the live chain verifies from the checkpoint on both handles.
async fn a_writers_kept_head_archived_away_is_not_appended_to(backend: Backend) {
    let fresh = Fresh::new(backend);
    let a = fresh.open().await.unwrap();
    let b = fresh.open().await.unwrap();
    let step = |run: &str, n: i64| {
        record(
            run,
            10 + n,
            EngineEvent::StepStarted {
                step: format!("api/s{n}"),
                key: format!("k{n}"),
                attempt: 1,
            },
        )
    };
    run(&a, "r1", 0, &[RunState::Running]).await;
    // The second one goes after the head `a` kept from the first.
    a.commit(vec![step("r1", 1)]).await.unwrap();
    a.commit(vec![step("r1", 2)]).await.unwrap();
    let kept = a.audit_head().await.unwrap().unwrap();
    b.commit(vec![step("r1", 3), step("r1", 4)]).await.unwrap();
    b.commit(vec![record(
        "r1",
        20,
        EngineEvent::StateChanged {
            from: RunState::Running,
            to: RunState::Succeeded,
            reason: None,
        },
    )])
    .await
    .unwrap();
    let arch = ArchiveDb::for_store(&b);
    let far = at(1_000_000);
    let sel = arch.select(far, far).await.unwrap();
    assert_eq!(sel.end().0, kept.0 + 3, "{:?}", sel.audit);
    arch.prune(
        &sel,
        &summaries(&sel),
        "digest",
        "a.tar.zst",
        "2030-01-01",
        at(100),
        "op-archiver",
    )
    .await
    .unwrap();
    let left = b.audit_entries().await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [kept.0 + 4],
        "only the archive's own entry stays live"
    );
    // A run of the same plan (`run`'s rows name a plan of their own, which
    // `verify_store` would report), created by the other handle.
    b.create_run(
        NewRun {
            id: "r2".into(),
            plan_json: "{}".into(),
            digest: "d1".into(),
            release: "shop".into(),
            version: "1.0.0".into(),
            environment: "staging".into(),
            author: "op-test".into(),
            override_reason: None,
            created_at: at(200),
            workdir: "/tmp".into(),
        },
        record(
            "r2",
            200,
            EngineEvent::RunCreated {
                release: "shop".into(),
                version: "1.0.0".into(),
                environment: "staging".into(),
                digest: "d1".into(),
                override_freeze: None,
                plan_sha256: None,
                workdir: None,
            },
        ),
    )
    .await
    .unwrap();
    b.commit(vec![record(
        "r2",
        201,
        EngineEvent::StateChanged {
            from: RunState::Pending,
            to: RunState::Running,
            reason: None,
        },
    )])
    .await
    .unwrap();
    a.commit(vec![step("r2", 5)]).await.unwrap();
    a.commit(vec![step("r2", 6)]).await.unwrap();
    let entries = a.audit_entries().await.unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (kept.0 + 4..=kept.0 + 8).collect::<Vec<_>>());
    for s in [&a, &b] {
        let v = audit::verify_store(s).await.unwrap();
        assert_eq!(v.from_seq, kept.0 + 3);
        assert_eq!(
            v.result.map(|v| (v.entries, v.head_seq)),
            Ok((5, kept.0 + 8))
        );
    }
}

fn count(fresh: &Fresh, sql: &str) -> i64 {
    fresh.sql(sql).trim().parse().unwrap()
}

async fn summaries_are_written_with_the_prune_or_not_at_all(backend: Backend) {
    let fresh = Fresh::new(backend);
    let store = fresh.open().await.unwrap();
    run(&store, "ok", 0, &[RunState::Running, RunState::Succeeded]).await;
    run(
        &store,
        "back",
        10,
        &[
            RunState::Running,
            RunState::RollingBack,
            RunState::RolledBack,
        ],
    )
    .await;
    let a = ArchiveDb::for_store(&store);
    let far = at(1_000_000);
    let sel = a.select(far, far).await.unwrap();
    let all = summaries(&sel);
    let live = |n: usize| {
        assert_eq!(count(&fresh, "SELECT count(*) FROM runs"), n as i64);
    };

    // One summary missing: refused before anything is written.
    let e = a
        .prune(
            &sel,
            &all[..1],
            "d",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("do not match the selected runs"),
        "{e}"
    );
    // A summary for a run not selected: refused too.
    let mut extra = all.clone();
    extra[1].run_id = "elsewhere".into();
    assert!(
        a.prune(
            &sel,
            &extra,
            "d",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver"
        )
        .await
        .is_err()
    );
    live(2);

    // The second summary's write fails inside the transaction (a trigger refuses it): the
    // deletes, the checkpoint, the first summary and the chain entry roll back with it.
    let audit_rows = count(&fresh, "SELECT count(*) FROM audit");
    let records = count(&fresh, "SELECT count(*) FROM records");
    fresh.sql(match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = 'back'
             BEGIN SELECT RAISE(ABORT, 'summary of run back refused'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'summary of run back refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON records FOR EACH ROW
             WHEN (NEW.key = 'back') EXECUTE FUNCTION refuse();"
        }
        Backend::Memory => unreachable!("on_disk! only"),
    });
    let e = a
        .prune(
            &sel,
            &all,
            "d",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("summary of run back"), "{e}");
    live(2);
    assert_eq!(count(&fresh, "SELECT count(*) FROM audit"), audit_rows);
    assert_eq!(count(&fresh, "SELECT count(*) FROM records"), records);
    fresh.sql(match backend {
        Backend::Sqlite => "DROP TRIGGER refuse",
        Backend::Postgres => "DROP TRIGGER refuse ON records",
        Backend::Memory => unreachable!("on_disk! only"),
    });

    let cp = a
        .prune(
            &sel,
            &all,
            "d",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await
        .unwrap();
    live(0);
    let got = a.summaries().await.unwrap();
    assert_eq!(got.len(), 2);
    for (g, want) in got.iter().zip(&all) {
        assert_eq!(g.checkpoint_id, cp.id);
        assert_eq!(
            RunSummary {
                checkpoint_id: 0,
                ..g.clone()
            },
            *want
        );
    }
    assert_eq!(got[1].state, RunState::RolledBack);
    // What the prune wrote is vouched for by the live chain alone.
    assert_eq!(
        slipway_engine::evidence::verify_store(&store)
            .await
            .unwrap()
            .result
            .map(|_| ()),
        Ok(())
    );
}

async fn retention_rules_are_records_the_chain_commits_to(backend: Backend) {
    let fresh = Fresh::new(backend);
    let store: AnyStore = fresh.open().await.unwrap();
    let a = ArchiveDb::for_store(&store);
    assert!(a.policy().await.unwrap().is_empty());
    let row = |kind: &str, live: u32| PolicyRow {
        kind: kind.into(),
        live_days: live,
        keep_days: 2555,
        set_by: "user:alice".into(),
        set_at: at(5).to_string(),
    };
    a.set_policy(&row("runs", 90)).await.unwrap();
    a.set_policy(&row("audit", 365)).await.unwrap();
    a.set_policy(&row("runs", 30)).await.unwrap();
    // Another handle (another process) reads what this one wrote.
    let other = ArchiveDb::for_store(&fresh.open().await.unwrap());
    assert_eq!(
        other.policy().await.unwrap(),
        [row("audit", 365), row("runs", 30)]
    );
    let entries = store.audit_entries().await.unwrap();
    let set: Vec<_> = entries
        .iter()
        .filter(|e| e.outcome == "retention_set")
        .collect();
    assert_eq!(set.len(), 3, "{entries:?}");
    // The actor is alice's pseudonym, never her name.
    assert!(set.iter().all(|e| !e.actor.contains("alice")));
    let v = slipway_engine::evidence::verify_store(&store)
        .await
        .unwrap();
    assert!(v.result.is_ok(), "{:?}", v.result);
    // A rule changed behind the chain's back is named by verification.
    fresh.sql("UPDATE records SET data = replace(data, '30', '3000') WHERE kind = 'retention'");
    let v = slipway_engine::evidence::verify_store(&store)
        .await
        .unwrap();
    assert!(v.result.is_err(), "a tampered retention rule verified");
}

/// The archive tables as a slipway of journal format 3 created them.
const V3_CHECKPOINTS: &str = "CREATE TABLE archive_checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT, start_seq INTEGER NOT NULL, start_hash TEXT NOT NULL,
    end_seq INTEGER NOT NULL, end_hash TEXT NOT NULL, bundle_sha256 TEXT NOT NULL,
    bundle_name TEXT NOT NULL, before TEXT NOT NULL, runs TEXT NOT NULL, created_at TEXT NOT NULL);";

#[tokio::test]
async fn a_format_3_store_with_an_old_archive_migrates_and_archives_with_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v3.db");
    for m in &MIGRATIONS[..3] {
        sqlite3(&db, m);
    }
    sqlite3(&db, V3_CHECKPOINTS);
    sqlite3(
        &db,
        &format!(
            "INSERT INTO meta VALUES ('journal_format', '3');
             INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir)
             VALUES ('old-run', 'd0', 'shop', '0.9.0', 'staging', 'op-x', 'succeeded', NULL, '{{}}', '2026-01-01T00:00:00Z', '2026-01-01T00:10:00Z', '/srv');
             INSERT INTO archive_checkpoints (start_seq, start_hash, end_seq, end_hash, bundle_sha256, bundle_name, before, runs, created_at)
             VALUES (0, '{g}', 0, '{g}', 'aaaa', 'slipway-archive-aaaa.tar.zst', '2025-12-01T00:00:00Z', '[\"gone-run\"]', '2025-12-02T00:00:00Z');",
            g = audit::GENESIS
        ),
    );

    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(
        sqlite3(&db, "SELECT value FROM meta WHERE key = 'journal_format'").trim(),
        slipway_store::schema::JOURNAL_FORMAT.to_string()
    );
    // The old checkpoint moved into the records, committed to by a baseline entry; the
    // one thing that does not verify is this fixture's run, written by hand with no chain
    // entry at all (a real store's runs always have their `run_created` entry).
    assert_eq!(
        slipway_engine::evidence::verify_store(&store)
            .await
            .unwrap()
            .result,
        Err(audit::ChainBreak::RecordInserted {
            table: "runs".into(),
            row: "old-run".into()
        })
    );
    let a = ArchiveDb::open(&db).await.unwrap();
    assert!(a.summaries().await.unwrap().is_empty());
    let cps = a.checkpoints().await.unwrap();
    assert_eq!(cps.len(), 1);
    assert_eq!(
        cps[0].runs,
        ["gone-run"],
        "the old archive's runs left no summary"
    );

    // The old run archives like a new one, and a run created after the migration too.
    run(&store, "new-run", 0, &[RunState::Running, RunState::Failed]).await;
    let far = at(1_000_000);
    let sel = a.select(far, far).await.unwrap();
    assert_eq!(sel.run_ids(), ["old-run", "new-run"]);
    let cp = a
        .prune(
            &sel,
            &summaries(&sel),
            "bbbb",
            "b.tar.zst",
            "2030-01-01",
            at(100),
            "op-archiver",
        )
        .await
        .unwrap();
    assert_eq!(cp.id, 2);
    assert!(store.runs(10).await.unwrap().is_empty());
    let got = a.summaries().await.unwrap();
    let ids: Vec<&str> = got.iter().map(|s| s.run_id.as_str()).collect();
    assert_eq!(ids, ["old-run", "new-run"]);
    assert!(got.iter().all(|s| s.checkpoint_id == 2));
    assert_eq!(got[0].workdir, "/srv");
    let start = store.audit_start().await.unwrap();
    verify_live(
        &store.audit_entries().await.unwrap(),
        &start,
        &store.audit_head().await.unwrap(),
    )
    .unwrap();
}
