//! Reviews after the fact: what the plan's `post_review` gate (an emergency change that
//! skipped its deployment windows) asks for once the run has changed production.
//!
//! When a run whose plan carries the gate ends having deployed (succeeded, partially
//! included), a review task is written to the store as a governance record of kind
//! [`REVIEW`] (key: the run id), committed to by the audit chain like every governance
//! record. Someone other than the run's author must complete it within [`REVIEW_WITHIN`]
//! (`slipway review complete RUN --note …`). An open review shows in `status` and the
//! compliance report; an overdue one is a blocking finding (`review-overdue`) for the
//! next production plan of the release, an open one a warning (`review-open`) — blocking
//! the fix of a fix while its review is still in time would punish the emergency path.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use slipway_engine::Store;
use slipway_engine::store::{GovernanceRecord, RecordKey, RunRecord};
use slipway_model::plan::{Finding, GateKind, Plan};

use crate::error::{ErrorKind, OpsError, OpsResult};
use crate::session::Session;

/// Record kind of a review task.
pub const REVIEW: &str = "review";

/// How long the reviewers have from the end of the run.
pub const REVIEW_WITHIN: Duration = Duration::from_secs(72 * 3600);

/// A review task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// The run reviewed.
    pub run: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// The run's author (pseudonym): never the reviewer.
    pub author: String,
    /// Why the review is required (the gate's source).
    pub required_by: String,
    /// When it was opened (the run's end).
    pub opened_at: Timestamp,
    /// When it is due.
    pub due_at: Timestamp,
    /// Who completed it (pseudonym).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// What the reviewer found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Review {
    /// `done`, `overdue` or `open` at `now`.
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.completed_at.is_some() {
            "done"
        } else if now > self.due_at {
            "overdue"
        } else {
            "open"
        }
    }
}

/// The `post_review` gate of a plan, if it has one: its source.
pub fn required_by(plan: &Plan) -> Option<&str> {
    plan.gates
        .iter()
        .find(|g| g.kind == GateKind::PostReview)
        .map(|g| g.source.as_str())
}

/// Open the review of `run` when its plan requires one (idempotent: a second call finds
/// the record and leaves it). Returns the review opened or found.
pub async fn open_for(
    store: &dyn Store,
    run: &RunRecord,
    plan: &Plan,
) -> OpsResult<Option<Review>> {
    let Some(source) = required_by(plan) else {
        return Ok(None);
    };
    if let Some(r) = store.record(REVIEW, &run.id).await? {
        return Ok(Some(parse(&r.data)?));
    }
    let now = slipway_stdx::now();
    let review = Review {
        run: run.id.clone(),
        release: run.release.clone(),
        version: run.version.clone(),
        environment: run.environment.clone(),
        author: run.author.clone(),
        required_by: source.to_owned(),
        opened_at: now,
        due_at: now
            .checked_add(jiff::SignedDuration::try_from(REVIEW_WITHIN).unwrap_or_default())
            .unwrap_or(now),
        completed_by: None,
        completed_at: None,
        note: None,
    };
    let appended = store
        .append_governance(vec![GovernanceRecord {
            kind: REVIEW.to_owned(),
            key: RecordKey::Given(run.id.clone()),
            data: Some(json(&review)?),
            action: "review_opened".to_owned(),
            summary: serde_json::json!({"run": run.id, "release": run.release,
                "version": run.version, "environment": run.environment,
                "due_at": review.due_at.to_string()}),
            actor: run.author.clone(),
            at: now,
            // Only if no other driver opened it meanwhile.
            if_seq: Some(0),
        }])
        .await;
    match appended {
        Ok(_) => Ok(Some(review)),
        Err(slipway_engine::StoreError::Conflict(_)) => {
            match store.record(REVIEW, &run.id).await? {
                Some(r) => Ok(Some(parse(&r.data)?)),
                None => Ok(Some(review)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Every review in the store, oldest first.
pub async fn list(store: &dyn Store) -> OpsResult<Vec<Review>> {
    let mut out = store
        .records(Some(REVIEW))
        .await?
        .iter()
        .map(|r| parse(&r.data))
        .collect::<OpsResult<Vec<_>>>()?;
    out.sort_by_key(|r| r.opened_at);
    Ok(out)
}

/// Complete the review of `run` as the session's actor, who must not be its author.
pub async fn complete(session: &Session, run: &str, note: &str) -> OpsResult<Review> {
    let store = session.store.as_ref();
    let Some(stored) = store.record(REVIEW, run).await? else {
        return Err(OpsError::new(
            ErrorKind::NotFound,
            format!("failed to complete the review of run {run}: no review is open for it"),
        )
        .hint(crate::error::Hint::text(
            "list the reviews with `slipway review list`",
        )));
    };
    let mut review = parse(&stored.data)?;
    crate::access::require(
        session,
        slipway_govern::access::Role::Approver,
        "complete a review",
        &review.environment,
    )
    .await?;
    if review.completed_at.is_some() {
        return Err(OpsError::input(format!(
            "failed to complete the review of run {run}: it was completed at {}",
            review
                .completed_at
                .map(|t| t.to_string())
                .unwrap_or_default()
        )));
    }
    let actor = session.actor_id().await?;
    if actor == review.author {
        return Err(OpsError::new(
            ErrorKind::Blocked,
            format!(
                "failed to complete the review of run {run}: you deployed it, and a review after the fact must be done by a different person"
            ),
        )
        .hint(crate::error::Hint::text(
            "ask another person to run `slipway review complete` with their own token",
        )));
    }
    if note.trim().is_empty() {
        return Err(OpsError::input(
            "failed to complete the review: --note is empty; write what was reviewed and found",
        ));
    }
    let now = slipway_stdx::now();
    review.completed_by = Some(actor.clone());
    review.completed_at = Some(now);
    review.note = Some(note.to_owned());
    store
        .append_governance(vec![GovernanceRecord {
            kind: REVIEW.to_owned(),
            key: RecordKey::Given(run.to_owned()),
            data: Some(json(&review)?),
            action: "review_completed".to_owned(),
            summary: serde_json::json!({"run": run, "late": now > review.due_at}),
            actor,
            at: now,
            if_seq: Some(stored.seq),
        }])
        .await?;
    Ok(review)
}

/// The findings reviews give a plan of `release` to a production environment: an overdue
/// review is an error (`review-overdue`), an open one a warning (`review-open`).
pub fn findings(reviews: &[Review], release: &str, now: Timestamp) -> Vec<Finding> {
    reviews
        .iter()
        .filter(|r| r.release == release)
        .filter_map(|r| {
            let (severity, code, when) = match r.state(now) {
                "overdue" => (slipway_model::plan::FindingSeverity::Error, "review-overdue", "was due"),
                "open" => (slipway_model::plan::FindingSeverity::Warning, "review-open", "is due"),
                _ => return None,
            };
            Some(Finding {
                severity,
                code: code.into(),
                message: format!(
                    "the review after the fact of run {} ({} {} to {}) {when} at {} and is not completed; another person completes it with `slipway review complete {} --note …`",
                    r.run, r.release, r.version, r.environment, r.due_at, r.run
                ),
            })
        })
        .collect()
}

/// The findings of the reviews in the store `store` names, for a production plan of
/// `release`; nothing when there is no store yet (planning never creates one).
pub async fn plan_findings(store: Option<&str>, release: &str) -> Vec<Finding> {
    let Some((loc, _)) = crate::session::layout_for(store) else {
        return Vec::new();
    };
    if matches!(&loc, slipway_store::StoreLocation::Sqlite(p) if !p.exists()) {
        return Vec::new();
    }
    let read = async {
        let s = slipway_store::open(&loc).await.map_err(|e| e.to_string())?;
        list(&s).await.map_err(|e| e.to_string())
    };
    match read.await {
        Ok(reviews) => findings(&reviews, release, slipway_stdx::now()),
        Err(e) => vec![Finding {
            severity: slipway_model::plan::FindingSeverity::Warning,
            code: "review-unknown".into(),
            message: format!(
                "the store's reviews could not be read, so open reviews are not known: {e}"
            ),
        }],
    }
}

fn parse(data: &str) -> OpsResult<Review> {
    serde_json::from_str(data).map_err(|e| OpsError::internal(format!("read a review record: {e}")))
}

fn json(r: &Review) -> OpsResult<serde_json::Value> {
    serde_json::to_value(r).map_err(|e| OpsError::internal(format!("write a review record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(due_in_hours: i64, done: bool) -> Review {
        let now = slipway_stdx::now();
        Review {
            run: "r1".into(),
            release: "pay".into(),
            version: "1.0.1".into(),
            environment: "prod".into(),
            author: "u1".into(),
            required_by: "policy".into(),
            opened_at: now,
            due_at: now + jiff::SignedDuration::from_hours(due_in_hours),
            completed_by: done.then(|| "u2".into()),
            completed_at: done.then_some(now),
            note: None,
        }
    }

    #[test]
    fn an_overdue_review_blocks_an_open_one_warns_a_done_one_is_silent() {
        let now = slipway_stdx::now();
        let codes = |r: Review| -> Vec<(String, String)> {
            findings(&[r], "pay", now)
                .into_iter()
                .map(|f| (f.severity.to_string(), f.code))
                .collect()
        };
        assert_eq!(
            codes(review(-1, false)),
            vec![("error".into(), "review-overdue".into())]
        );
        assert_eq!(
            codes(review(1, false)),
            vec![("warning".into(), "review-open".into())]
        );
        assert!(codes(review(-1, true)).is_empty());
        // Another release's review is not this plan's business.
        assert!(findings(&[review(-1, false)], "other", now).is_empty());
    }
}
