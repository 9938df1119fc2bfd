//! Evidence that verifies: every record a gate, `status`, `logs` or a report reads is
//! either a chain entry itself or a row the chain vouches for, and [`verify_store`] checks
//! all of it.
//!
//! - **Read from the chain.** A run's journal, its step states, its approvals and its
//!   check results are read back from the run's audit entries (the store keeps no other
//!   copy since journal format 6), so the chain's verification covers them.
//! - **Projections recomputed.** The `runs` table (listed without reading every journal)
//!   is what the run's entries fold to: identity, author, plan digest and working
//!   directory from `run_created`, state and pending control from `state_changed` and
//!   `control_requested` ([`RunFold`], the same rules the stores apply). Verification folds
//!   the chain again and compares every row, field by field.
//! - **Committed records.** Governance records (access grants, tokens, reviews,
//!   rehearsals, checklist acknowledgements, retention rules, archive checkpoints, run
//!   summaries, and any kind added later) are rows of one table; each version is written
//!   with a `governance` chain entry whose detail carries `record: {kind, key, sha256}` —
//!   a salted digest ([`record_commitment`]) of the row's exact JSON, so names and token
//!   hashes never enter the chain while any edit of the row is caught. The latest entry
//!   per (kind, key) must match the row; a row no entry wrote is inserted, an entry whose
//!   row is gone names a deleted record.
//! - **Anchored head.** Signed checkpoints of (seq, hash) — kept beside the chain or in a
//!   witness file — must still be in the chain: a chain that ends before one was
//!   truncated, one whose entry there has another hash was rewritten (re-hashed).
//!
//! A kind of record joins by writing through `Store::append_governance` and reading
//! through `Store::records`; nothing here names the kinds, so it is covered at once.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::task::Poll;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::audit::{
    self, ChainBreak, ChainScan, Framed, RecordEdit, StoreVerification, Verified, parse_framed,
};
use crate::event::{Control, RunState};
use crate::store::{RunEvidence, Store, StoreError, StoredRecord};

/// Rows read per range while verifying: large enough that a range's fixed costs (a
/// prepared statement, a hand-off to a reader thread: tens of microseconds) are small
/// against its rows' (about a millisecond), small enough that a store that frames its rows
/// holds well under a MiB per range in flight.
const CHUNK: i64 = 1_024;

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The salted digest a governance record's chain entry carries: sha256 over a domain tag,
/// the kind, the key, the nonce and the exact stored JSON, NUL-separated (none of the
/// first four may hold a NUL; JSON text never does).
pub fn record_commitment(kind: &str, key: &str, nonce: &str, data: &str) -> String {
    let mut h = Sha256::new();
    for part in ["slipway-record/1", kind, key, nonce] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(data.as_bytes());
    hex::encode(h.finalize())
}

/// What a run's entries say its `runs` row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFold {
    /// The `run_created` entry.
    pub seq: i64,
    /// Plan digest.
    pub digest: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// The actor who created the run.
    pub author: String,
    /// `--override-freeze` reason.
    pub override_reason: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Digest of the stored plan (runs created since journal format 6).
    pub plan_sha256: Option<String>,
    /// Working directory (runs created since journal format 6).
    pub workdir: Option<String>,
    /// State after the last `state_changed`.
    pub state: RunState,
    /// Pending control request.
    pub control: Option<Control>,
    /// Time of the last state change or control request.
    pub updated_at: String,
    /// The entry that last changed state, control or time.
    pub last_seq: i64,
}

impl RunFold {
    /// A state change: the stores clear the pending control when the run reaches a
    /// terminal, paused or aborted state, or leaves Paused (the request was acted on).
    pub fn state_changed(&mut self, from: RunState, to: RunState, at: &str, seq: i64) {
        if to.is_terminal()
            || matches!(to, RunState::Paused | RunState::Aborted)
            || from == RunState::Paused
        {
            self.control = None;
        }
        self.state = to;
        at.clone_into(&mut self.updated_at);
        self.last_seq = seq;
    }

    /// A control request.
    pub fn control_requested(&mut self, control: Control, at: &str, seq: i64) {
        self.control = Some(control);
        at.clone_into(&mut self.updated_at);
        self.last_seq = seq;
    }
}

/// The parts of an event detail the projections read (unknown fields ignored).
#[derive(Debug, Deserialize)]
struct Lite {
    #[serde(default)]
    from: Option<RunState>,
    #[serde(default)]
    to: Option<RunState>,
    #[serde(default)]
    control: Option<Control>,
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    override_freeze: Option<String>,
    #[serde(default)]
    plan_sha256: Option<String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

/// A chain entry's reference to one governance record version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct RecordRef {
    /// Kind.
    pub kind: String,
    /// Key.
    pub key: String,
    /// The commitment; absent when the entry deleted the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What the live chain says the covered tables hold, folded entry by entry.
#[derive(Debug, Default, Clone)]
pub struct Projection {
    runs: BTreeMap<String, RunFold>,
    /// (kind, key) → (entry, commitment or `None` when deleted).
    records: BTreeMap<(String, String), (i64, Option<String>)>,
    archived_runs: HashSet<String>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether the entries of `action` change what the projections hold (the rows a
/// [`audit::Segment`] keeps for them).
pub(crate) fn projected(action: &[u8]) -> bool {
    matches!(
        action,
        b"run_created" | b"state_changed" | b"control_requested" | b"governance"
    )
}

impl Projection {
    /// Fold one verified entry in (entries must come in chain order).
    pub fn observe(&mut self, row: &Framed<'_>) {
        let action = row.action();
        if !projected(action) {
            return;
        }
        // The entry verified, so its detail is what slipway wrote; an unreadable one is
        // skipped here and the rows it would explain show up as not in the chain.
        let Ok(e) = serde_json::from_slice::<Lite>(row.fields[6]) else {
            return;
        };
        let at = std::str::from_utf8(row.fields[0]).unwrap_or_default();
        let run_id = text(row.fields[3]);
        match action {
            b"run_created" => {
                self.runs.insert(
                    run_id,
                    RunFold {
                        seq: row.seq,
                        digest: e.digest.unwrap_or_default(),
                        release: e.release.unwrap_or_default(),
                        version: e.version.unwrap_or_default(),
                        environment: e.environment.unwrap_or_default(),
                        author: text(row.fields[1]),
                        override_reason: e.override_freeze,
                        created_at: at.to_owned(),
                        plan_sha256: e.plan_sha256,
                        workdir: e.workdir,
                        state: RunState::Pending,
                        control: None,
                        updated_at: at.to_owned(),
                        last_seq: row.seq,
                    },
                );
            }
            b"state_changed" => {
                if let (Some(run), Some(from), Some(to)) =
                    (self.runs.get_mut(&run_id), e.from, e.to)
                {
                    run.state_changed(from, to, at, row.seq);
                }
            }
            b"control_requested" => {
                if let (Some(run), Some(c)) = (self.runs.get_mut(&run_id), e.control) {
                    run.control_requested(c, at, row.seq);
                }
            }
            _ => {
                let Some(d) = e.detail else { return };
                let refs = d
                    .get("record")
                    .into_iter()
                    .cloned()
                    .chain(
                        d.get("records")
                            .and_then(serde_json::Value::as_array)
                            .into_iter()
                            .flatten()
                            .cloned(),
                    )
                    .filter_map(|v| serde_json::from_value::<RecordRef>(v).ok());
                for r in refs {
                    self.records.insert((r.kind, r.key), (row.seq, r.sha256));
                }
                if e.action.as_deref() == Some("archived")
                    && let Some(ids) = d.get("run_ids").and_then(serde_json::Value::as_array)
                {
                    self.archived_runs
                        .extend(ids.iter().filter_map(|i| i.as_str().map(str::to_owned)));
                }
            }
        }
    }

    /// The runs the chain knows, by id.
    pub fn runs(&self) -> &BTreeMap<String, RunFold> {
        &self.runs
    }

    /// The latest entry per record, `(kind, key) → (seq, commitment or None if deleted)`.
    pub fn records(&self) -> &BTreeMap<(String, String), (i64, Option<String>)> {
        &self.records
    }

    /// The first `runs` row that differs from the chain, in id order.
    pub fn compare_runs(&self, rows: &[RunEvidence]) -> Option<ChainBreak> {
        let mut seen = HashSet::new();
        let mut rows: Vec<&RunEvidence> = rows.iter().collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        for run in rows {
            seen.insert(run.id.as_str());
            let Some(want) = self.runs.get(&run.id) else {
                return Some(ChainBreak::RecordInserted {
                    table: "runs".into(),
                    row: run.id.clone(),
                });
            };
            let none = || "(none)".to_owned();
            let opt = |o: &Option<String>| o.clone().unwrap_or_else(none);
            let control = want.control.map_or_else(none, |c| c.as_str().to_owned());
            let mut checks: Vec<(&str, String, String, i64)> = vec![
                ("digest", run.digest.clone(), want.digest.clone(), want.seq),
                (
                    "release",
                    run.release.clone(),
                    want.release.clone(),
                    want.seq,
                ),
                (
                    "version",
                    run.version.clone(),
                    want.version.clone(),
                    want.seq,
                ),
                (
                    "environment",
                    run.environment.clone(),
                    want.environment.clone(),
                    want.seq,
                ),
                ("author", run.author.clone(), want.author.clone(), want.seq),
                (
                    "override_reason",
                    opt(&run.override_reason),
                    opt(&want.override_reason),
                    want.seq,
                ),
                (
                    "created_at",
                    run.created_at.clone(),
                    want.created_at.clone(),
                    want.seq,
                ),
                (
                    "state",
                    run.state.clone(),
                    want.state.as_str().to_owned(),
                    want.last_seq,
                ),
                ("control", opt(&run.control), control, want.last_seq),
                (
                    "updated_at",
                    run.updated_at.clone(),
                    want.updated_at.clone(),
                    want.last_seq,
                ),
            ];
            // Runs created before journal format 6 carry no plan digest or directory in
            // their entry: those two fields are not covered for them.
            if let Some(sha) = &want.plan_sha256 {
                checks.push((
                    "plan_json",
                    format!("sha256 {}", run.plan_sha256),
                    format!("sha256 {sha}"),
                    want.seq,
                ));
            }
            if let Some(w) = &want.workdir {
                checks.push(("workdir", run.workdir.clone(), w.clone(), want.seq));
            }
            for (field, found, expected, seq) in checks {
                if found != expected {
                    return Some(ChainBreak::RecordEdited(Box::new(RecordEdit {
                        table: "runs".into(),
                        row: run.id.clone(),
                        field: field.into(),
                        found,
                        expected,
                        seq,
                    })));
                }
            }
        }
        for (id, want) in &self.runs {
            if !seen.contains(id.as_str()) && !self.archived_runs.contains(id) {
                return Some(ChainBreak::RecordDeleted {
                    table: "runs".into(),
                    row: id.clone(),
                    seq: want.seq,
                });
            }
        }
        None
    }

    /// The first governance record that differs from the chain, in (kind, key) order.
    pub fn compare_records(&self, rows: &[StoredRecord]) -> Option<ChainBreak> {
        let mut seen = HashSet::new();
        let mut rows: Vec<&StoredRecord> = rows.iter().collect();
        rows.sort_by(|a, b| (&a.kind, &a.key).cmp(&(&b.kind, &b.key)));
        for r in rows {
            seen.insert((r.kind.as_str(), r.key.as_str()));
            match self.records.get(&(r.kind.clone(), r.key.clone())) {
                Some((seq, Some(sha))) => {
                    let found = r.commitment();
                    if &found != sha {
                        return Some(ChainBreak::RecordEdited(Box::new(RecordEdit {
                            table: r.kind.clone(),
                            row: r.key.clone(),
                            field: "data".into(),
                            found: format!("sha256 {found}"),
                            expected: format!("sha256 {sha}"),
                            seq: *seq,
                        })));
                    }
                }
                _ => {
                    return Some(ChainBreak::RecordInserted {
                        table: r.kind.clone(),
                        row: r.key.clone(),
                    });
                }
            }
        }
        for ((kind, key), (seq, sha)) in &self.records {
            if sha.is_some() && !seen.contains(&(kind.as_str(), key.as_str())) {
                return Some(ChainBreak::RecordDeleted {
                    table: kind.clone(),
                    row: key.clone(),
                    seq: *seq,
                });
            }
        }
        None
    }
}

/// The first line of a signed checkpoint's payload.
pub const ANCHOR_FORMAT: &str = "slipway-audit-checkpoint/1";

/// What `slipway audit checkpoint` signs: the head (seq, hash), how many entries the live
/// chain holds, where it starts (the archive checkpoint, or genesis) and when. One line, so
/// it is also the minisign trusted comment and can be checked by hand with `minisign -V`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AnchorPayload {
    /// Head seq.
    pub seq: i64,
    /// Head hash.
    pub hash: String,
    /// Entries of the live chain (head seq minus start seq).
    pub entries: i64,
    /// Seq the live chain starts after.
    pub start_seq: i64,
    /// Hash it starts from.
    pub start_hash: String,
    /// When it was signed (RFC 3339).
    pub at: String,
}

impl AnchorPayload {
    /// The signed line.
    pub fn line(&self) -> String {
        format!(
            "{ANCHOR_FORMAT} seq={} hash={} entries={} start={}:{} at={}",
            self.seq, self.hash, self.entries, self.start_seq, self.start_hash, self.at
        )
    }

    /// Read a signed line back.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut parts = line.split(' ');
        if parts.next() != Some(ANCHOR_FORMAT) {
            return Err(format!("it does not start with `{ANCHOR_FORMAT}`"));
        }
        let mut get = |k: &str| -> Result<String, String> {
            parts
                .next()
                .and_then(|p| p.strip_prefix(k))
                .and_then(|p| p.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| format!("its `{k}=` field is missing or out of place"))
        };
        let num = |v: String, k: &str| {
            v.parse::<i64>()
                .map_err(|_| format!("its {k} is not a number"))
        };
        let seq = num(get("seq")?, "seq")?;
        let hash = get("hash")?;
        let entries = num(get("entries")?, "entries")?;
        let start = get("start")?;
        let at = get("at")?;
        let (ss, sh) = start
            .split_once(':')
            .ok_or_else(|| "its start is not SEQ:HASH".to_owned())?;
        Ok(Self {
            seq,
            hash,
            entries,
            start_seq: num(ss.to_owned(), "start")?,
            start_hash: sh.to_owned(),
            at,
        })
    }
}

/// Signed heads to hold the chain to, whose signatures the caller checked: each head must
/// still be in the chain, and the newest one says where the live chain must start.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    sorted: Vec<(i64, String)>,
    /// (seq, start) of the newest anchor.
    newest_start: Option<(i64, (i64, String))>,
}

impl Anchors {
    /// Anchors from trusted payloads.
    pub fn new(payloads: &[AnchorPayload]) -> Self {
        let mut sorted: Vec<(i64, String)> =
            payloads.iter().map(|p| (p.seq, p.hash.clone())).collect();
        sorted.sort();
        sorted.dedup();
        let newest_start = payloads
            .iter()
            .max_by_key(|p| (p.seq, p.start_seq))
            .map(|p| (p.seq, (p.start_seq, p.start_hash.clone())));
        Self {
            sorted,
            newest_start,
        }
    }

    /// How many distinct heads.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    fn check_row(&self, next: &mut usize, row: &Framed<'_>) -> Option<ChainBreak> {
        while let Some((seq, hash)) = self.sorted.get(*next) {
            if *seq > row.seq {
                return None;
            }
            *next += 1;
            if *seq == row.seq && hash.as_bytes() != row.hash {
                return Some(ChainBreak::Rewritten {
                    seq: *seq,
                    signed: hash.clone(),
                    found: text(row.hash),
                });
            }
        }
        None
    }
}

/// Verify the store as `slipway audit verify` does: the live chain from the last archive
/// checkpoint (or genesis) against the recorded head, read in framed chunks and hashed
/// on every core; then every `runs` row and every governance record against what the
/// chain says. See [`verify_store_anchored`] for signed heads.
pub async fn verify_store(store: &dyn Store) -> Result<StoreVerification, StoreError> {
    verify_store_anchored(store, &Anchors::default()).await
}

/// [`verify_store`], also holding the chain to signed `anchors`: one past the head means
/// the tail was cut, one whose entry has another hash means the chain was rewritten. An
/// anchor at or before the live start (its entry was archived) cannot be checked here and
/// is listed in [`StoreVerification::anchors_archived`].
pub async fn verify_store_anchored(
    store: &dyn Store,
    anchors: &Anchors,
) -> Result<StoreVerification, StoreError> {
    let start = store.audit_start().await?;
    let head = store.audit_head().await?;
    let bounds = store.audit_bounds().await?;
    let head_ref = head.as_ref().map(|(s, h)| (*s, h.as_str()));
    let anchors_archived: Vec<i64> = anchors
        .sorted
        .iter()
        .filter(|(s, _)| *s <= start.0)
        .map(|(s, _)| *s)
        .collect();
    // A row at or before the start was slipped in (or moved) below the live chain.
    let below = bounds.min.is_some_and(|m| m <= start.0);
    let Scanned {
        fast_ok,
        scan,
        mut projection,
        mut anchor_break,
    } = scan_rows(
        store,
        &start,
        head.as_ref().map(|h| h.0),
        !below,
        bounds.max,
        anchors,
    )
    .await?;
    let chain = if fast_ok { scan.finish(head_ref) } else { None };
    let result = match chain {
        Some(v) => Ok(v),
        None => {
            // Something does not follow: the exact classifier names it.
            let entries = store.audit_entries().await?;
            match audit::verify_from(&entries, (start.0, &start.1), head_ref) {
                Err(b) => Err(b),
                Ok(v) => {
                    // Only the framing failed (a value the fast read cannot carry): fold
                    // the projections from the entries themselves.
                    projection = Projection::default();
                    let mut next_anchor = 0;
                    anchor_break = None;
                    let mut buf = Vec::new();
                    for e in &entries {
                        buf.clear();
                        audit::frame(e, &mut buf);
                        if let Ok(rows) = parse_framed(&buf) {
                            for r in &rows {
                                if anchor_break.is_none() && r.seq > start.0 {
                                    anchor_break = anchors.check_row(&mut next_anchor, r);
                                }
                                projection.observe(r);
                            }
                        }
                    }
                    Ok(v)
                }
            }
        }
    };
    let result = result.and_then(|v| {
        if let Some(b) = anchor_break {
            return Err(b);
        }
        if let Some((seq, _)) = anchors.sorted.last()
            && *seq > v.head_seq
        {
            return Err(ChainBreak::Truncated {
                signed_seq: *seq,
                head_seq: v.head_seq,
            });
        }
        // The live start moves only with an archive, which signs a checkpoint of the new
        // start itself: a start the newest signed checkpoint does not name was forged (or
        // that checkpoint deleted).
        if let Some((signed_seq, (s_seq, s_hash))) = &anchors.newest_start
            && (*s_seq != start.0 || *s_hash != start.1)
        {
            return Err(ChainBreak::StartUnanchored {
                start_seq: start.0,
                signed_seq: *signed_seq,
                signed_start: *s_seq,
            });
        }
        Ok(v)
    });
    let result = match result {
        Ok(v) => match compare_tables(store, &projection).await? {
            Some(b) => Err(b),
            None => Ok(v),
        },
        Err(b) => Err(b),
    };
    Ok(StoreVerification {
        from_seq: start.0,
        result,
        anchors_checked: anchors.sorted.len() - anchors_archived.len(),
        anchors_archived,
    })
}

/// What one pass over the framed rows found.
struct Scanned {
    fast_ok: bool,
    scan: ChainScan,
    projection: Projection,
    anchor_break: Option<ChainBreak>,
}

/// Ranges read at once: each is read and hashed on a thread of its own (the store's
/// reader, or the blocking pool for stores that frame rows in the database). Two per core:
/// with only one, a core idles from the moment its range is done until the walk has taken
/// the range before it and handed out the next one (measured on 1M SQLite entries, 2
/// cores, quiet, alternated: 2 in flight ≈ 845k entries/s, 4 ≈ 970k, 8 ≈ 1.0M). A range
/// in flight holds only the rows it keeps (SQLite) or well under a MiB of framed rows
/// (PostgreSQL), so 16 at most is still small.
fn reads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().saturating_mul(2).clamp(4, 16))
}

/// One range being read.
struct Read<'a> {
    fut: crate::BoxFuture<'a, Result<audit::Segment, StoreError>>,
    done: Option<Result<audit::Segment, StoreError>>,
}

/// Read the rows after `from` up to `upto` in ranges of [`CHUNK`], [`reads`] at a time,
/// each checked where it is read ([`Store::audit_segment`]); walk the range boundaries in
/// seq order, check anchors and fold the projections from the rows the segments keep.
/// `fast_ok` is false at the first range that does not follow (the caller then asks the
/// exact classifier) or when `go` is false.
async fn scan_rows(
    store: &dyn Store,
    from: &(i64, String),
    head_seq: Option<i64>,
    go: bool,
    upto: Option<i64>,
    anchors: &Anchors,
) -> Result<Scanned, StoreError> {
    let mut scan = ChainScan::new((from.0, &from.1), head_seq);
    let mut projection = Projection::default();
    let mut fast_ok = go;
    let mut anchor_break = None;
    let mut next_anchor = anchors
        .sorted
        .iter()
        .position(|(s, _)| *s > from.0)
        .unwrap_or(anchors.sorted.len());
    // The seqs whose rows the anchors compare (sorted, as `anchors.sorted` is).
    let mut anchor_seqs: Vec<i64> = anchors.sorted.iter().map(|(s, _)| *s).collect();
    anchor_seqs.dedup();
    let anchor_seqs = anchor_seqs.as_slice();
    let upto = upto.unwrap_or(from.0);
    let mut after = from.0;
    let reads = reads();
    let mut inflight: VecDeque<Read<'_>> = VecDeque::with_capacity(reads);
    while fast_ok {
        while inflight.len() < reads && after < upto {
            let to = after.saturating_add(CHUNK).min(upto);
            let lo = anchor_seqs.partition_point(|s| *s <= after);
            let hi = anchor_seqs.partition_point(|s| *s <= to);
            inflight.push_back(Read {
                fut: store.audit_segment(after, to, &anchor_seqs[lo..hi]),
                done: None,
            });
            after = to;
        }
        if inflight.is_empty() {
            break;
        }
        // Poll every range in flight (each starts its reader when first polled); take the
        // first one in seq order once it is done.
        let seg = std::future::poll_fn(|cx| {
            for r in &mut inflight {
                if r.done.is_none()
                    && let Poll::Ready(v) = r.fut.as_mut().poll(cx)
                {
                    r.done = Some(v);
                }
            }
            match inflight.front_mut().and_then(|r| r.done.take()) {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            }
        })
        .await;
        inflight.pop_front();
        let seg = seg?;
        if !scan.push_segment(&seg) {
            fast_ok = false;
            break;
        }
        let Ok(rows) = parse_framed(&seg.kept) else {
            fast_ok = false;
            break;
        };
        for r in &rows {
            if anchor_break.is_none() {
                anchor_break = anchors.check_row(&mut next_anchor, r);
            }
            projection.observe(r);
        }
    }
    Ok(Scanned {
        fast_ok,
        scan,
        projection,
        anchor_break,
    })
}

/// Verify only the chain after `since` (a head this process trusts, e.g. the previous
/// signed checkpoint): entries follow, link and hash right up to the recorded head. What
/// `slipway audit checkpoint` checks before it signs, so its cost is the entries added since.
pub async fn verify_chain_since(
    store: &dyn Store,
    since: &(i64, String),
) -> Result<Result<Verified, ChainBreak>, StoreError> {
    let head = store.audit_head().await?;
    let head_ref = head.as_ref().map(|(s, h)| (*s, h.as_str()));
    let bounds = store.audit_bounds().await?;
    let scanned = scan_rows(
        store,
        since,
        head.as_ref().map(|h| h.0),
        true,
        bounds.max,
        &Anchors::default(),
    )
    .await?;
    if scanned.fast_ok
        && let Some(v) = scanned.scan.finish(head_ref)
    {
        return Ok(Ok(v));
    }
    let entries: Vec<_> = store
        .audit_entries()
        .await?
        .into_iter()
        .filter(|e| e.seq > since.0)
        .collect();
    Ok(audit::verify_from(&entries, (since.0, &since.1), head_ref))
}

/// Compare the store's `runs` rows and governance records with the projection; a store
/// that keeps neither (a test double) has nothing to compare.
async fn compare_tables(
    store: &dyn Store,
    projection: &Projection,
) -> Result<Option<ChainBreak>, StoreError> {
    match store.run_evidence().await {
        Ok(rows) => {
            if let Some(b) = projection.compare_runs(&rows) {
                return Ok(Some(b));
            }
        }
        Err(StoreError::Unsupported(_)) => {}
        Err(e) => return Err(e),
    }
    match store.records(None).await {
        Ok(rows) => Ok(projection.compare_records(&rows)),
        Err(StoreError::Unsupported(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Verified: a chain and its tables, for callers that only need the verdict.
pub fn verified(v: &StoreVerification) -> Result<&Verified, &ChainBreak> {
    v.result.as_ref()
}
