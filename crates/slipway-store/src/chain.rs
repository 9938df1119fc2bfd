//! What both backends do the same way when they append to the audit chain: number and hash
//! the entries of one transaction (scheme 2, framed fields), fill in the run coverage of a
//! `run_created` event, build the chain entry of a governance record, fold a run's step
//! and approval events back into rows, and collapse a group's run updates into one per run.
//!
//! The SQL stays in `sqlite.rs` / `postgres.rs`; everything here is plain values, so the
//! two backends cannot disagree on what a chain entry or a derived row is.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use jiff::Timestamp;
use slipway_engine::audit::{AuditEntry, GENESIS, HASH_V2, canonical_v2, hash_v2_hex};
use slipway_engine::event::{Control, EngineEvent, RunState};
use slipway_engine::evidence::{RecordRef, record_commitment, sha256_hex};
use slipway_engine::store::{
    ApprovalRecord, GovernanceRecord, JournalRecord, NewRun, StepRecord, StoreError,
};

/// Numbers and hashes the entries one transaction appends, from the head it read.
#[derive(Debug)]
pub(crate) struct Appender {
    seq: i64,
    prev: String,
    /// The entries to insert, in chain order.
    pub entries: Vec<AuditEntry>,
}

impl Appender {
    /// Continue after `head` (genesis when `None`).
    pub fn new(head: Option<(i64, String)>) -> Self {
        let (seq, prev) = head.unwrap_or((0, GENESIS.to_owned()));
        Self {
            seq,
            prev,
            entries: Vec::new(),
        }
    }

    /// The head after what was appended.
    pub fn head(&self) -> (i64, &str) {
        (self.seq, &self.prev)
    }

    /// Append one journal record; returns its seq.
    pub fn push(&mut self, r: &JournalRecord) -> Result<i64, StoreError> {
        let text = Text::of(r)?;
        Ok(self.push_text(r, text))
    }

    /// Append one record made ready on its caller's task; returns its seq.
    pub fn push_ready(&mut self, r: &Ready) -> i64 {
        self.push_text(&r.record, r.text.clone())
    }

    fn push_text(&mut self, r: &JournalRecord, text: Text) -> i64 {
        self.seq += 1;
        let hash = hash_v2_hex(&self.prev, &text.canonical);
        let prev_hash = std::mem::replace(&mut self.prev, hash.clone());
        self.entries.push(AuditEntry {
            seq: self.seq,
            at: text.at,
            actor: r.actor.clone(),
            action: r.event.name().to_owned(),
            run_id: r.run_id.clone(),
            digest: r.digest.clone(),
            outcome: text.outcome,
            detail: text.detail,
            prev_hash,
            hash,
            v: HASH_V2,
        });
        self.seq
    }
}

/// The text of a journal record's chain entry that does not depend on its place in the
/// chain: its time, outcome and event JSON, and the scheme-2 canonical bytes of its seven
/// hashed fields. Made by whoever commits the record, on its own task, so the one writer
/// that numbers entries only hashes the link and those bytes ([`hash_v2_hex`]).
#[derive(Debug, Clone)]
pub(crate) struct Text {
    pub at: String,
    pub outcome: String,
    pub detail: String,
    /// [`canonical_v2`] of the seven fields in [`AuditEntry::fields`] order.
    pub canonical: Vec<u8>,
}

impl Text {
    pub fn of(r: &JournalRecord) -> Result<Self, StoreError> {
        let detail =
            serde_json::to_string(&r.event).map_err(|e| StoreError::Query(e.to_string()))?;
        let at = r.at.to_string();
        let outcome = r.event.outcome();
        let fields: [&[u8]; 7] = [
            at.as_bytes(),
            r.actor.as_bytes(),
            r.event.name().as_bytes(),
            r.run_id.as_bytes(),
            r.digest.as_bytes(),
            outcome.as_bytes(),
            detail.as_bytes(),
        ];
        // Seven short length prefixes besides the bytes.
        let mut canonical = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
        canonical_v2(fields, &mut canonical);
        Ok(Self {
            at,
            outcome,
            detail,
            canonical,
        })
    }
}

/// A journal record with its entry's [`Text`].
#[derive(Debug)]
pub(crate) struct Ready {
    pub record: JournalRecord,
    pub text: Text,
}

impl Ready {
    pub fn new(record: JournalRecord) -> Result<Self, StoreError> {
        let text = Text::of(&record)?;
        Ok(Self { record, text })
    }
}

/// Whether an event touches nothing but the chain (step events and the like): a state
/// change or control request also updates its run's row.
pub(crate) fn chain_only_event(e: &EngineEvent) -> bool {
    !matches!(
        e,
        EngineEvent::StateChanged { .. } | EngineEvent::ControlRequested { .. }
    )
}

/// The records of a group made only of journal commits (`Some(records)` per write, `None`
/// for any other write) whose events touch nothing but the chain (step events and the
/// like; a state change or control request also updates its run's row, and goes the
/// ordinary way); `None` otherwise. Such a group may go after a writer's kept head.
pub(crate) fn chain_only<'a>(
    writes: impl IntoIterator<Item = Option<&'a [Ready]>>,
) -> Option<Vec<&'a Ready>> {
    let mut out = Vec::new();
    for w in writes {
        for r in w? {
            if !chain_only_event(&r.record.event) {
                return None;
            }
            out.push(r);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `run_created` record of `run` with its coverage filled in: the plan's digest and the
/// working directory the row stores (what `audit verify` compares the row with). A record
/// that already names them must name the row's own.
pub(crate) fn covered_first(
    run: &NewRun,
    first: &JournalRecord,
) -> Result<JournalRecord, StoreError> {
    let mut first = first.clone();
    let sha = sha256_hex(run.plan_json.as_bytes());
    if let EngineEvent::RunCreated {
        plan_sha256,
        workdir,
        ..
    } = &mut first.event
    {
        if plan_sha256.as_ref().is_some_and(|s| *s != sha) {
            return Err(StoreError::Query(format!(
                "create run {}: its first event names another plan than the one stored",
                run.id
            )));
        }
        *plan_sha256 = Some(sha);
        workdir.get_or_insert_with(|| run.workdir.clone());
    }
    Ok(first)
}

/// A random hex nonce for a record commitment: two 64-bit SipHash outputs under keys the
/// standard library draws from the OS's random source, so the commitment of a short
/// value (a name, a role) cannot be recomputed from guesses.
pub(crate) fn nonce() -> String {
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// The stored form of a record version: its exact JSON text and a fresh nonce.
pub(crate) struct Staged {
    pub kind: String,
    pub key: String,
    pub data: Option<String>,
    pub nonce: String,
}

impl Staged {
    pub fn new(rec: &GovernanceRecord, key: String) -> Result<Self, StoreError> {
        check_kind(&rec.kind)?;
        if key.contains('\0') {
            return Err(StoreError::Query(format!(
                "write a {} record: its key holds a NUL byte",
                rec.kind
            )));
        }
        let data = rec
            .data
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Query(e.to_string()))?;
        Ok(Self {
            kind: rec.kind.clone(),
            key,
            data,
            nonce: nonce(),
        })
    }

    /// The chain entry's reference to this version.
    pub fn reference(&self) -> RecordRef {
        RecordRef {
            kind: self.kind.clone(),
            key: self.key.clone(),
            sha256: self
                .data
                .as_ref()
                .map(|d| record_commitment(&self.kind, &self.key, &self.nonce, d)),
        }
    }
}

fn check_kind(kind: &str) -> Result<(), StoreError> {
    if kind.is_empty()
        || !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::Query(format!(
            "write a governance record of kind `{kind}`: a kind is [a-z0-9_]+"
        )));
    }
    Ok(())
}

/// Append the chain entry of governance records (one entry for several, as the archive's
/// prune and the format-6 migration write them); returns its seq.
pub(crate) fn push_governance(
    app: &mut Appender,
    action: &str,
    actor: &str,
    at: Timestamp,
    summary: &serde_json::Value,
    refs: Vec<RecordRef>,
) -> Result<i64, StoreError> {
    let mut detail = match summary {
        serde_json::Value::Object(m) => m.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("summary".into(), other.clone());
            m
        }
    };
    let refs = serde_json::to_value(&refs).map_err(|e| StoreError::Query(e.to_string()))?;
    match refs {
        serde_json::Value::Array(mut a) if a.len() == 1 => {
            detail.insert("record".into(), a.remove(0));
        }
        other => {
            detail.insert("records".into(), other);
        }
    }
    app.push(&JournalRecord {
        run_id: String::new(),
        digest: String::new(),
        at,
        actor: actor.to_owned(),
        event: EngineEvent::Governance {
            action: action.to_owned(),
            detail: serde_json::Value::Object(detail),
        },
    })
}

/// The run updates of one transaction, collapsed to one per run: the last state and time,
/// and the control as the events leave it (kept, set, or cleared).
#[derive(Debug, Default)]
pub(crate) struct RunUpdates {
    pub by_run: BTreeMap<String, RunUpdate>,
}

/// One run's collapsed update.
#[derive(Debug, Default, Clone)]
pub(crate) struct RunUpdate {
    pub state: Option<RunState>,
    pub updated_at: Option<String>,
    /// `None`: keep the stored control; `Some(c)`: set it to `c`.
    pub control: Option<Option<Control>>,
    /// A finished run made live again (a rollback by hand): it may meet the one-live-run
    /// rule.
    pub revived: bool,
}

impl RunUpdates {
    /// Fold one record's effect on its run (the rules of `slipway_engine::evidence::RunFold`).
    pub fn apply(&mut self, r: &JournalRecord) {
        let at = || r.at.to_string();
        match &r.event {
            EngineEvent::StateChanged { from, to, .. } => {
                let u = self.by_run.entry(r.run_id.clone()).or_default();
                if to.is_terminal()
                    || matches!(to, RunState::Paused | RunState::Aborted)
                    || *from == RunState::Paused
                {
                    u.control = Some(None);
                }
                u.state = Some(*to);
                u.updated_at = Some(at());
                u.revived |= from.is_terminal() && !to.is_terminal();
            }
            EngineEvent::ControlRequested { control, .. } => {
                let u = self.by_run.entry(r.run_id.clone()).or_default();
                u.control = Some(Some(*control));
                u.updated_at = Some(at());
            }
            _ => {}
        }
    }
}

/// A run's step rows, folded from its step events `(at, event)` in chain order: what the
/// step table held before journal format 6, now read from the chain. Sorted by step id.
pub(crate) fn fold_steps(events: &[(String, EngineEvent)]) -> Vec<StepRecord> {
    let mut rows: HashMap<String, StepRecord> = HashMap::new();
    for (at, ev) in events {
        let Some((step, key, status)) = ev.step_effect() else {
            continue;
        };
        let updated_at = ts(at);
        let row = rows.entry(step.to_owned()).or_insert_with(|| StepRecord {
            step_id: step.to_owned(),
            key: key.to_owned(),
            status,
            attempts: 0,
            output: None,
            updated_at,
        });
        // The key stays the first one seen, as the step table kept it.
        row.status = status;
        row.updated_at = updated_at;
        match ev {
            EngineEvent::StepStarted { attempt, .. } => row.attempts = *attempt,
            EngineEvent::StepSucceeded {
                output: Some(o), ..
            }
            | EngineEvent::StepFailed {
                output: Some(o), ..
            } => row.output = Some(o.clone()),
            _ => {}
        }
    }
    let mut out: Vec<StepRecord> = rows.into_values().collect();
    out.sort_by(|a, b| a.step_id.cmp(&b.step_id));
    out
}

/// A run's approvals from its `approved` events `(at, event)`, in chain order.
pub(crate) fn fold_approvals(events: &[(String, EngineEvent)]) -> Vec<ApprovalRecord> {
    events
        .iter()
        .filter_map(|(at, ev)| match ev {
            EngineEvent::Approved {
                approver,
                digest,
                groups,
            } => Some(ApprovalRecord {
                approver: approver.clone(),
                digest: digest.clone(),
                groups: groups.clone(),
                at: ts(at),
            }),
            _ => None,
        })
        .collect()
}

/// The actions whose events make step rows.
pub(crate) const STEP_ACTIONS: &str = "'step_started', 'step_succeeded', 'step_failed', 'undo_started', 'undo_succeeded', 'undo_failed'";

/// Parse an event stored in the chain.
pub(crate) fn event(detail: &str) -> Result<EngineEvent, StoreError> {
    serde_json::from_str(detail)
        .map_err(|e| StoreError::Query(format!("read a journal event: {e}")))
}

/// A stored time; a hand-edited one that does not parse reads as the epoch rather than
/// failing a status display (`audit verify` names the edit).
pub(crate) fn ts(s: &str) -> Timestamp {
    Timestamp::from_str(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_entries_verify_as_a_chain() {
        let mut app = Appender::new(None);
        for i in 0..3 {
            app.push(&JournalRecord {
                run_id: "r".into(),
                digest: "d".into(),
                at: Timestamp::UNIX_EPOCH,
                actor: "op-x".into(),
                event: EngineEvent::WaveStarted { wave: i, steps: 1 },
            })
            .unwrap();
        }
        let (seq, hash) = app.head();
        let v = slipway_engine::audit::verify(&app.entries, Some((seq, hash))).unwrap();
        assert_eq!(v.entries, 3);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 32);
    }
}
