//! The `Store` trait: the durable home of runs, the audit chain (which *is* the journal:
//! a run's journal, step states, approvals and check results are read back from its chain
//! entries), governance records and the erasable identity mapping. `slipway-store`
//! implements it (SQLite, PostgreSQL).
//!
//! Every write goes through [`Store::commit`]: a batch of journal records applied in one
//! transaction, each also appended to the audit chain. An implementation may merge the
//! batches of concurrent callers into one transaction (group commit), but must not return
//! from `commit` before the caller's records are durable.
//!
//! Governance records (access grants, tokens, reviews, rehearsals, checklist
//! acknowledgements, retention rules, archive checkpoints and run summaries — and any kind
//! added later) go through [`Store::append_governance`]: the record's row and a chain entry
//! committing to it are written in one transaction, so `slipway audit verify` can tell
//! every row from the chain (see `crate::evidence`). A new kind needs no schema: a kind
//! name, a key, a JSON document, and a readable summary for the chain.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::audit::AuditEntry;
use crate::event::{Control, EngineEvent, Notice, RunState, StepStatus};
use crate::target::StepOutput;

/// One event to journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRecord {
    /// Run id ("" for events outside a run).
    pub run_id: String,
    /// Plan digest the event concerns ("" when none).
    pub digest: String,
    /// When.
    pub at: Timestamp,
    /// Pseudonymous actor id.
    pub actor: String,
    /// The event.
    pub event: EngineEvent,
}

/// A new run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Run id.
    pub id: String,
    /// The plan, as JSON.
    pub plan_json: String,
    /// Plan digest.
    pub digest: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Pseudonymous id of the author.
    pub author: String,
    /// `--override-freeze` reason.
    pub override_reason: Option<String>,
    /// When.
    pub created_at: Timestamp,
    /// Absolute directory relative paths of the plan resolve against (the spec's).
    pub workdir: String,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Plan digest.
    pub digest: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Pseudonymous id of the author.
    pub author: String,
    /// Current state.
    pub state: RunState,
    /// Pending control request.
    pub control: Option<Control>,
    /// `--override-freeze` reason.
    pub override_reason: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Absolute directory relative paths of the plan resolve against.
    pub workdir: String,
    /// The plan JSON (omitted from listings).
    #[serde(skip)]
    pub plan_json: String,
}

/// A step's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step id.
    pub step_id: String,
    /// Idempotency key.
    pub key: String,
    /// Status.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Last captured output.
    pub output: Option<StepOutput>,
    /// Last change.
    pub updated_at: Timestamp,
}

/// A recorded approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Pseudonymous approver id.
    pub approver: String,
    /// Digest approved.
    pub digest: String,
    /// Groups the approver declared.
    pub groups: Vec<String>,
    /// When.
    pub at: Timestamp,
}

/// A lease on an environment: while it is live, no other run deploys there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The environment leased.
    pub environment: String,
    /// The holder: the id of the run that deploys there.
    pub holder: String,
    /// What the holder deploys (`name version`), for the refusal message.
    pub release: String,
    /// When the holder first took it.
    pub acquired_at: Timestamp,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// Ask for (or renew) a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The environment.
    pub environment: String,
    /// The run asking.
    pub holder: String,
    /// `name version` of the release.
    pub release: String,
    /// The caller's clock (expiry is judged against it, so tests can move time).
    pub now: Timestamp,
    /// How long the lease lasts from `now`.
    pub ttl: std::time::Duration,
}

/// The answer to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Granted or renewed. `reclaimed` names the expired holder it replaced, if any.
    Granted {
        /// The lease now held.
        lease: LeaseRecord,
        /// The holder whose lease had expired and was taken over.
        reclaimed: Option<LeaseRecord>,
    },
    /// Another run holds a live lease.
    Held(LeaseRecord),
}

/// The key of a governance record: given by the caller, or the next integer of its kind
/// (allocated inside the writing transaction, like an autoincrement id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKey {
    /// This key.
    Given(String),
    /// One more than the largest integer key of the kind (1 for the first).
    Next,
}

/// A change to one governance record, written with the chain entry that commits to it.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernanceRecord {
    /// The record kind (`access_grant`, `rehearsal`, …): lowercase, `[a-z0-9_]`.
    pub kind: String,
    /// Which record of the kind.
    pub key: RecordKey,
    /// The record's new content; `None` deletes it.
    pub data: Option<serde_json::Value>,
    /// The chain entry's outcome (`access_granted`, `rehearsal_recorded`, …).
    pub action: String,
    /// What the chain entry shows a reader besides the commitment: the facts of the change
    /// with people as pseudonyms, never a secret (the data itself is only committed to by
    /// its salted sha256, so a name or a token hash in it never enters the chain).
    pub summary: serde_json::Value,
    /// Pseudonymous actor.
    pub actor: String,
    /// When.
    pub at: Timestamp,
    /// Optimistic concurrency: `Some(0)` writes only if the record does not exist,
    /// `Some(seq)` only if its current version was written by chain entry `seq`; `None`
    /// writes whatever is there. A failed condition fails the whole append with
    /// [`StoreError::Conflict`]: read again and retry.
    pub if_seq: Option<i64>,
}

/// A governance record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: String,
    /// The content, as the JSON text that was committed to.
    pub data: String,
    /// Random salt of the commitment, so a digest of low-entropy data (a name) cannot be
    /// guessed from the chain.
    pub nonce: String,
    /// The chain entry that wrote this version.
    pub seq: i64,
}

impl StoredRecord {
    /// The content as JSON.
    pub fn value(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.data).map_err(|e| {
            StoreError::Query(format!(
                "read {} record `{}`: its data is not JSON ({e})",
                self.kind, self.key
            ))
        })
    }

    /// The salted sha256 the chain entry carries ([`crate::evidence::record_commitment`]).
    pub fn commitment(&self) -> String {
        crate::evidence::record_commitment(&self.kind, &self.key, &self.nonce, &self.data)
    }
}

/// A `runs` row as stored, text as it is (a value no reader would accept still compares),
/// with the digest of its plan: what `slipway audit verify` compares with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunEvidence {
    /// Run id.
    pub id: String,
    /// Plan digest.
    pub digest: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Author (pseudonym).
    pub author: String,
    /// State as stored.
    pub state: String,
    /// Pending control as stored.
    pub control: Option<String>,
    /// `--override-freeze` reason.
    pub override_reason: Option<String>,
    /// Creation time as stored.
    pub created_at: String,
    /// Last change as stored.
    pub updated_at: String,
    /// Working directory.
    pub workdir: String,
    /// sha256 (hex) of the stored plan JSON.
    pub plan_sha256: String,
}

/// The seqs present in the audit table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditBounds {
    /// Smallest seq, if any row.
    pub min: Option<i64>,
    /// Largest seq, if any row.
    pub max: Option<i64>,
}

/// A signed statement of the chain's head (`slipway audit checkpoint`), kept beside the
/// chain (never in it: it would move the head it signs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The head's seq.
    pub seq: i64,
    /// The head's hash.
    pub hash: String,
    /// The signed text (`crate::evidence::AnchorPayload`'s line).
    pub payload: String,
    /// The minisign signature of `payload`.
    pub signature: String,
}

/// Held while a process drives a run; dropping it lets another driver take over.
pub trait RunClaim: Send + Sync {}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened or written.
    #[error("use the store at {location}: {message}")]
    Unavailable {
        /// Path or URL.
        location: String,
        /// Why.
        message: String,
    },
    /// The journal was written by a version this build refuses.
    #[error("{0}")]
    Incompatible(String),
    /// A run id that does not exist.
    #[error("find run `{0}`; list runs with `slipway history`")]
    NoSuchRun(String),
    /// Another process drives this run.
    #[error(
        "drive run `{0}`: another slipway process is driving it; watch it with `slipway logs -f {0}`"
    )]
    Claimed(String),
    /// Another run of the same plan is live (not terminal) in the environment: a plan
    /// digest has at most one live run per environment, a rule the store enforces.
    #[error(
        "start another run of plan {digest} in `{environment}`: a run of this plan is still live there (one plan has at most one live run per environment); continue that run (`slipway history` shows it) or end it first"
    )]
    LiveRunExists {
        /// The plan digest.
        digest: String,
        /// The environment.
        environment: String,
    },
    /// A query failed.
    #[error("{0}")]
    Query(String),
    /// A conditional governance write found the record changed (or present, or absent).
    #[error("{0}")]
    Conflict(String),
    /// The store does not keep this kind of record.
    #[error("{0}")]
    Unsupported(String),
}

/// Durable state of runs. See the module doc for the commit contract.
pub trait Store: Send + Sync {
    /// Where the store lives, for messages (`sqlite:///path`).
    fn location(&self) -> String;
    /// Create a run and journal its first event, atomically. Fails with
    /// [`StoreError::LiveRunExists`] (creating nothing) while another run of the same
    /// digest is live in the environment, however many processes race to create one; so
    /// does a state change that would make a second run of a digest live there.
    fn create_run<'a>(
        &'a self,
        run: NewRun,
        first: JournalRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Durably journal events (and their step / state / approval effects, and audit
    /// entries) in one transaction. Returns once durable.
    fn commit(&self, records: Vec<JournalRecord>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// One run.
    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>>;
    /// Most recent runs first.
    fn runs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>>;
    /// Per release and environment, its newest run and its newest succeeded run (one row
    /// when they are the same), plans included, newest first: what runs where and what
    /// was last tried, however many runs the store holds. The stores answer it with one
    /// query over an index; this default scans every run.
    fn latest_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>> {
        Box::pin(async move {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for r in self.runs(u32::MAX).await? {
                let newest = seen.insert((r.release.clone(), r.environment.clone(), false));
                let succeeded = r.state == RunState::Succeeded
                    && seen.insert((r.release.clone(), r.environment.clone(), true));
                if (newest || succeeded)
                    && let Some(whole) = self.run(&r.id).await?
                {
                    out.push(whole);
                }
            }
            Ok(out)
        })
    }
    /// The newest non-terminal run of this digest in this environment.
    fn active_run<'a>(
        &'a self,
        digest: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>>;
    /// The pending control request of a run (cheap: polled between steps).
    fn control<'a>(&'a self, run_id: &'a str)
    -> BoxFuture<'a, Result<Option<Control>, StoreError>>;
    /// Step states of a run.
    fn steps<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Vec<StepRecord>, StoreError>>;
    /// Journal entries of a run after `after_seq`, oldest first.
    fn journal<'a>(
        &'a self,
        run_id: &'a str,
        after_seq: i64,
    ) -> BoxFuture<'a, Result<Vec<Notice>, StoreError>>;
    /// Approvals of a run (of any digest).
    fn approvals<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, StoreError>>;
    /// The pseudonymous id of a person, created on first use.
    fn pseudonym<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, StoreError>>;
    /// The person behind a pseudonymous id, unless erased.
    fn identity<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Erase a person's mapping; the chain keeps only the pseudonym. Returns whether one
    /// existed.
    fn erase_identity<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The whole audit chain, by seq.
    fn audit_entries(&self) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;
    /// The head (seq, hash) recorded beside the chain, to detect a truncated tail.
    fn audit_head(&self) -> BoxFuture<'_, Result<Option<(i64, String)>, StoreError>>;
    /// Where the live chain starts: the (seq, hash) of the last archive checkpoint (the
    /// first live entry links to it), or `(0, GENESIS)` when nothing was ever archived.
    fn audit_start(&self) -> BoxFuture<'_, Result<(i64, String), StoreError>> {
        Box::pin(async { Ok((0, crate::audit::GENESIS.to_owned())) })
    }
    /// Claim the right to drive a run; fails with [`StoreError::Claimed`] while another
    /// live process holds it. Released on drop or when the process dies.
    fn claim<'a>(&'a self, run_id: &'a str)
    -> BoxFuture<'a, Result<Box<dyn RunClaim>, StoreError>>;
    /// Whether a live process holds the claim on `run_id` now. A reader (`status`, a
    /// takeover scan) asks this; it must neither hold up a driver claiming at that instant
    /// nor take another reader for a driver, so a store should answer without taking the
    /// claim. This default takes it and lets it go at once, as a store whose claims are
    /// cheap and uncontended may.
    fn driven<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.claim(run_id).await {
                Ok(_claim) => Ok(false),
                Err(StoreError::Claimed(_)) => Ok(true),
                Err(e) => Err(e),
            }
        })
    }
    /// Take, renew or reclaim the lease on `req.environment`, as one compare-and-swap:
    /// granted when the environment is free, the lease is the caller's own, or the
    /// current lease expired at `req.now`; otherwise [`LeaseOutcome::Held`].
    fn acquire_lease(&self, req: LeaseRequest) -> BoxFuture<'_, Result<LeaseOutcome, StoreError>>;
    /// Give the lease on an environment up. With `holder`, only if that run holds it;
    /// without, whoever holds it (by hand). Returns the lease removed.
    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<LeaseRecord>, StoreError>>;
    /// Every lease recorded, live or expired, by environment.
    fn leases(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>>;

    /// Smallest and largest seq in the audit table.
    fn audit_bounds(&self) -> BoxFuture<'_, Result<AuditBounds, StoreError>> {
        Box::pin(async {
            let e = self.audit_entries().await?;
            Ok(AuditBounds {
                min: e.first().map(|e| e.seq),
                max: e.last().map(|e| e.seq),
            })
        })
    }
    /// The audit rows with `after < seq <= upto`, in seq order, framed
    /// ([`crate::audit::parse_framed`]). Stores read many rows per query; this default
    /// frames [`Store::audit_entries`].
    fn audit_framed(&self, after: i64, upto: i64) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for e in self.audit_entries().await? {
                if e.seq > after && e.seq <= upto {
                    crate::audit::frame(&e, &mut out);
                }
            }
            Ok(out)
        })
    }
    /// The audit rows with `after < seq <= upto` checked where they are read
    /// ([`crate::audit::Segment`]), keeping those at `keep_seqs` (sorted) besides the ones
    /// the projections fold. This default checks [`Store::audit_framed`]'s rows on the
    /// blocking pool; a store that can step over its rows on a thread of its own hashes
    /// them there, from the column values.
    fn audit_segment<'a>(
        &'a self,
        after: i64,
        upto: i64,
        keep_seqs: &'a [i64],
    ) -> BoxFuture<'a, Result<crate::audit::Segment, StoreError>> {
        Box::pin(async move {
            let buf = self.audit_framed(after, upto).await?;
            let keep = keep_seqs.to_vec();
            tokio::task::spawn_blocking(move || crate::audit::Segment::of_framed(&buf, &keep))
                .await
                .map_err(|e| {
                    StoreError::Query(format!(
                        "verify audit entries {}..={upto}: the hashing task failed: {e}",
                        after.saturating_add(1)
                    ))
                })
        })
    }
    /// Every run row with its plan's digest, for verification.
    fn run_evidence(&self) -> BoxFuture<'_, Result<Vec<RunEvidence>, StoreError>> {
        Box::pin(async { Err(unsupported(self.location(), "run evidence")) })
    }
    /// Append governance records and their chain entries in one transaction; returns the
    /// records as stored (keys allocated).
    fn append_governance(
        &self,
        records: Vec<GovernanceRecord>,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StoreError>> {
        let _ = records;
        Box::pin(async { Err(unsupported(self.location(), "governance records")) })
    }
    /// The records of one kind (every kind with `None`), by kind and key.
    fn records<'a>(
        &'a self,
        kind: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredRecord>, StoreError>> {
        let _ = kind;
        Box::pin(async { Err(unsupported(self.location(), "governance records")) })
    }
    /// One record.
    fn record<'a>(
        &'a self,
        kind: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .records(Some(kind))
                .await?
                .into_iter()
                .find(|r| r.key == key))
        })
    }
    /// The signed head anchors kept beside the chain, oldest first.
    fn anchors(&self) -> BoxFuture<'_, Result<Vec<Anchor>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Keep a signed head anchor (a second one for the same head is not added).
    fn add_anchor(&self, anchor: Anchor) -> BoxFuture<'_, Result<bool, StoreError>> {
        let _ = anchor;
        Box::pin(async { Err(unsupported(self.location(), "audit anchors")) })
    }
}

fn unsupported(location: String, what: &str) -> StoreError {
    StoreError::Unsupported(format!(
        "use {what} in the store at {location}: it keeps none"
    ))
}
