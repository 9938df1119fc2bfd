//! Journal effects: step states, control requests, approvals, claims, identities — on
//! both backends.

use slipway_engine::audit;
use slipway_engine::event::{Control, EngineEvent, RunState, StepStatus};
use slipway_engine::store::{Store, StoreError};

use crate::common::{Backend, on_both, on_disk, populated_on, record};

async fn events_update_steps_runs_and_approvals(b: Backend) {
    let (_f, store) = populated_on(b, 2).await;
    store
        .commit(vec![
            record(
                "r1",
                10,
                EngineEvent::StepSucceeded {
                    step: "svc/s0".into(),
                    key: "k0".into(),
                    completion: slipway_engine::event::StepCompletion::Applied,
                    output: None,
                },
            ),
            record(
                "r1",
                11,
                EngineEvent::ControlRequested {
                    control: Control::Pause,
                    reason: None,
                },
            ),
            record(
                "r1",
                12,
                EngineEvent::Approved {
                    approver: "op-b".into(),
                    digest: "d1".into(),
                    groups: vec!["release".into()],
                },
            ),
        ])
        .await
        .unwrap();
    let steps = store.steps("r1").await.unwrap();
    let s0 = steps.iter().find(|s| s.step_id == "svc/s0").unwrap();
    assert_eq!((s0.status, s0.attempts), (StepStatus::Succeeded, 1));
    let s1 = steps.iter().find(|s| s.step_id == "svc/s1").unwrap();
    assert_eq!(s1.status, StepStatus::Started);
    assert_eq!(store.control("r1").await.unwrap(), Some(Control::Pause));
    let a = store.approvals("r1").await.unwrap();
    assert_eq!(a[0].groups, vec!["release".to_string()]);

    store
        .commit(vec![record(
            "r1",
            13,
            EngineEvent::StateChanged {
                from: RunState::Running,
                to: RunState::Paused,
                reason: None,
            },
        )])
        .await
        .unwrap();
    let run = store.run("r1").await.unwrap().unwrap();
    assert_eq!((run.state, run.control), (RunState::Paused, None));
    let journal = store.journal("r1", 0).await.unwrap();
    assert_eq!(journal.len(), 7);
    assert!(journal.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.journal("r1", journal[5].seq).await.unwrap().len(), 1);
}

async fn concurrent_commits_are_grouped_and_the_chain_stays_linear(b: Backend) {
    let (_f, store) = populated_on(b, 0).await;
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![record(
                "r1",
                i,
                EngineEvent::StepStarted {
                    step: format!("svc/{i}"),
                    key: format!("k{i}"),
                    attempt: 1,
                },
            )])
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries = store.audit_entries().await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    let v = audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    assert_eq!(v.entries, 201);
    assert_eq!(store.steps("r1").await.unwrap().len(), 200);
}

async fn a_second_claim_on_a_run_is_refused_until_released(b: Backend) {
    let (_f, store) = populated_on(b, 0).await;
    let claim = store.claim("r1").await.unwrap();
    assert!(matches!(
        store.claim("r1").await,
        Err(StoreError::Claimed(_))
    ));
    drop(claim);
    store.claim("r1").await.unwrap();
}

/// `driven` answers whether a live process holds a run's claim without taking it: another
/// reader asking at that instant (a shared hold on the claim's lock) is not a driver — a
/// reader that took the claim to ask saw every other reader as one, and held up drivers
/// (`status` under 50 clients answered in a second on PostgreSQL) — while a held claim
/// reads as driven from any handle, and a released one as free.
async fn a_reader_asks_whether_a_run_is_driven_without_claiming_it(b: Backend) {
    let (f, store) = populated_on(b, 0).await;
    assert!(!store.driven("r1").await.unwrap());
    // Another reader, mid-question: the shared lock each backend's claim excludes.
    let reader: Option<Box<dyn std::any::Any>> = match b {
        Backend::Sqlite => {
            let path = f.url.strip_prefix("sqlite://").unwrap();
            let dir = std::path::Path::new(path).with_extension("locks");
            std::fs::create_dir_all(&dir).unwrap();
            let file = std::fs::File::create(dir.join("r1.lock")).unwrap();
            file.try_lock_shared().unwrap();
            Some(Box::new(file))
        }
        Backend::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&f.url).await.unwrap();
            let got: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock_shared(('x' || substr(md5('slipway-run:' || $1), 1, 16))::bit(64)::bigint)",
            )
            .bind("r1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert!(got);
            Some(Box::new(conn))
        }
        Backend::Memory => None,
    };
    assert!(
        !store.driven("r1").await.unwrap(),
        "another reader was taken for a driver"
    );
    drop(reader);
    let claim = store.claim("r1").await.unwrap();
    assert!(store.driven("r1").await.unwrap());
    let other = f.open().await.unwrap();
    assert!(
        other.driven("r1").await.unwrap(),
        "another handle sees the claim"
    );
    drop(claim);
    // PostgreSQL lets an advisory lock go once it notices the claim's session closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.driven("r1").await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the claim was released 10 s ago and still reads as held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn erasing_a_person_keeps_the_chain_valid(b: Backend) {
    let (_f, store) = populated_on(b, 1).await;
    let id = store.pseudonym("alice").await.unwrap();
    assert_eq!(store.pseudonym("alice").await.unwrap(), id);
    assert_ne!(store.pseudonym("bob").await.unwrap(), id);
    store
        .commit(vec![record(
            "r1",
            5,
            EngineEvent::Approved {
                approver: id.clone(),
                digest: "d1".into(),
                groups: vec![],
            },
        )])
        .await
        .unwrap();
    assert!(store.erase_identity("alice").await.unwrap());
    assert_eq!(store.identity(&id).await.unwrap(), None);
    let entries = store.audit_entries().await.unwrap();
    assert!(entries.iter().all(|e| !e.detail.contains("alice")));
    let head = store.audit_head().await.unwrap().unwrap();
    audit::verify(&entries, Some((head.0, &head.1))).unwrap();
    assert!(!store.erase_identity("alice").await.unwrap());
}

fn step(i: usize) -> slipway_engine::store::JournalRecord {
    record(
        "r1",
        i as i64,
        EngineEvent::StepStarted {
            step: format!("svc/{i}"),
            key: format!("k{i}"),
            attempt: 1,
        },
    )
}

/// Two handles on one store (two processes: each its own writer, each keeping the head of
/// its last commit) append in turns, runs of several commits each, so each writer's
/// kept head goes stale again and again: every entry lands once, in one linear chain.
async fn writers_taking_turns_keep_one_linear_chain(b: Backend) {
    let (fresh, a) = populated_on(b, 0).await;
    let other = fresh.open().await.unwrap();
    let mut n = 0;
    for turn in 0..12 {
        let w = if turn % 2 == 0 { &a } else { &other };
        for _ in 0..=(turn % 3) {
            n += 1;
            w.commit(vec![step(n)]).await.unwrap();
        }
    }
    for s in [&a, &other] {
        let v = audit::verify_store(s).await.unwrap();
        assert_eq!(v.result.map(|v| v.entries), Ok(1 + n as u64));
    }
    assert_eq!(a.steps("r1").await.unwrap().len(), n);
}

/// Two handles on one store (two processes, each its own writer keeping the head of its
/// last commit) append at the same time: one only step events (the kept-head path), the
/// other steps and, every third commit, a control request (the path that reads the head
/// under the write lock). Every entry lands once, in one chain that verifies from both,
/// and each writer's entries keep their order.
async fn two_writers_at_once_keep_one_linear_chain(b: Backend) {
    let (fresh, a) = populated_on(b, 0).await;
    let other = fresh.open().await.unwrap();
    const EACH: usize = 80;
    async fn go(store: &slipway_store::AnyStore, w: usize) {
        for i in 0..EACH {
            let mut group = vec![record(
                "r1",
                i as i64,
                EngineEvent::StepStarted {
                    step: format!("w{w}/s{i}"),
                    key: format!("k{w}-{i}"),
                    attempt: 1,
                },
            )];
            if w == 1 && i % 3 == 0 {
                group.push(record(
                    "r1",
                    i as i64,
                    EngineEvent::ControlRequested {
                        control: Control::Pause,
                        reason: None,
                    },
                ));
            }
            store.commit(group).await.unwrap();
        }
    }
    tokio::join!(go(&a, 0), go(&other, 1));
    let controls = EACH.div_ceil(3);
    for s in [&a, &other] {
        let v = audit::verify_store(s).await.unwrap();
        assert_eq!(
            v.result.map(|v| v.entries),
            Ok((1 + 2 * EACH + controls) as u64)
        );
    }
    let journal = a.journal("r1", 0).await.unwrap();
    for w in 0..2 {
        let order: Vec<String> = journal
            .iter()
            .filter_map(|e| match &e.event {
                EngineEvent::StepStarted { step, .. } if step.starts_with(&format!("w{w}/")) => {
                    Some(step.clone())
                }
                _ => None,
            })
            .collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("w{w}/s{i}")).collect();
        assert_eq!(order, want, "writer {w}");
    }
}

/// A commit that fails inside its transaction (a trigger refuses one entry) reaches its
/// caller as an error, leaves nothing behind, and the writer goes on from the head the
/// store really has: the next commits land and the chain verifies.
async fn a_failed_commit_leaves_the_writer_on_the_true_head(b: Backend) {
    let (fresh, store) = populated_on(b, 0).await;
    for i in 1..=3 {
        store.commit(vec![step(i)]).await.unwrap();
    }
    let refuse = match b {
        Backend::Postgres => {
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse BEFORE INSERT ON audit FOR EACH ROW WHEN (NEW.seq = 5) EXECUTE FUNCTION refuse();"
        }
        _ => {
            "CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.seq = 5 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        }
    };
    fresh.sql(refuse);
    let err = store.commit(vec![step(4)]).await.unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert_eq!(store.audit_head().await.unwrap().map(|h| h.0), Some(4));
    fresh.sql(match b {
        Backend::Postgres => "DROP TRIGGER refuse ON audit",
        _ => "DROP TRIGGER refuse",
    });
    for i in 4..=6 {
        store.commit(vec![step(i)]).await.unwrap();
    }
    let v = audit::verify_store(&store).await.unwrap();
    assert_eq!(v.result.map(|v| (v.entries, v.head_seq)), Ok((7, 7)));
    assert_eq!(store.steps("r1").await.unwrap().len(), 6);
}

on_disk!(a_failed_commit_leaves_the_writer_on_the_true_head);

on_both!(
    writers_taking_turns_keep_one_linear_chain,
    two_writers_at_once_keep_one_linear_chain,
    events_update_steps_runs_and_approvals,
    concurrent_commits_are_grouped_and_the_chain_stays_linear,
    a_second_claim_on_a_run_is_refused_until_released,
    a_reader_asks_whether_a_run_is_driven_without_claiming_it,
    erasing_a_person_keeps_the_chain_valid
);
