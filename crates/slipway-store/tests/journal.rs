//! Journal effects: step states, control requests, approvals, claims, identities — on
//! both backends.

use slipway_engine::audit;
use slipway_engine::event::{Control, EngineEvent, RunState, StepStatus};
use slipway_engine::store::{Store, StoreError};

use crate::common::{Backend, on_both, populated_on, record};

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

on_both!(
    events_update_steps_runs_and_approvals,
    concurrent_commits_are_grouped_and_the_chain_stays_linear,
    a_second_claim_on_a_run_is_refused_until_released,
    erasing_a_person_keeps_the_chain_valid
);
