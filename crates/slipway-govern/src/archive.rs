//! Retention and archive bundles: the retention policy per record kind, and the bundle an
//! archive writes (a deterministic `tar.zst` with a manifest of per-file sha256 digests)
//! and reads back for `slipway audit verify --archive`.
//!
//! Where retention is declared: in the store (`slipway archive policy`), not in a release
//! spec. The records it governs — runs of every release, the one audit chain — belong to
//! the store, and two specs sharing a store must not disagree about how long the shared
//! chain lives; an auditor asks "how long do you keep X" once per system. A policy change
//! is itself appended to the audit chain.
//!
//! Each kind has a *live* period (the least time a record stays in the live store; an
//! archive never takes anything younger, whatever `--before` says) and a *keep* period (how
//! long it must exist at all; the bundle records the date until which it must be kept).
//! A run's journal, steps, approvals and check results leave together with the run, so
//! every bundle is self-contained: a run is archived only once it is older than the live
//! period of all four kinds. The audit chain leaves as a prefix under its own period.
//!
//! The bundle holds no timestamp of its own making: archiving the same records twice gives
//! the same bytes, which is what makes a re-run after a crash between writing the bundle
//! and pruning safe. This module builds and reads bytes; the CLI writes, fsyncs and signs.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::rc::Rc;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_engine::audit::AuditEntry;
use slipway_store::archive::{PolicyRow, Selection};

/// The manifest's `format`.
pub const BUNDLE_FORMAT: &str = "slipway-archive/1";

/// The record kinds a policy covers, in the order they are shown.
pub const KINDS: &[&str] = &["runs", "journal", "approvals", "checks", "audit"];

/// The row files every bundle has, each listed and counted in its manifest.
const ROW_FILES: &[&str] = &[
    "runs.jsonl",
    "journal.jsonl",
    "steps.jsonl",
    "approvals.jsonl",
    "checks.jsonl",
    "audit.jsonl",
];

/// Largest bundle content read back (after decompression): a bomb stops here.
const MAX_UNPACKED: u64 = 2 << 30;

/// Why an archive cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A policy value that does not parse.
    #[error("read retention `{value}`: {message}")]
    BadPolicy {
        /// What was given.
        value: String,
        /// Why.
        message: String,
    },
    /// The bundle is not a readable slipway archive.
    #[error("read the archive bundle: {0}")]
    Unreadable(String),
    /// The bundle reads but its content does not match its own manifest.
    #[error("verify the archive bundle: {0}")]
    Tampered(String),
}

/// One kind's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Days a record stays live at least.
    pub live_days: u32,
    /// Days a record must be kept in all.
    pub keep_days: u32,
}

/// The retention policy: one rule per kind in [`KINDS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Kind → rule.
    pub rules: BTreeMap<String, Rule>,
}

impl RetentionPolicy {
    /// The defaults: run records stay live 90 days, the audit chain a year, and
    /// everything is kept seven years (SOX §802 record retention).
    pub fn defaults() -> Self {
        let mut rules = BTreeMap::new();
        for k in KINDS {
            let live_days = if *k == "audit" { 365 } else { 90 };
            rules.insert(
                (*k).to_owned(),
                Rule {
                    live_days,
                    keep_days: 7 * 365,
                },
            );
        }
        Self { rules }
    }

    /// The defaults overridden by what the store holds.
    pub fn from_rows(rows: &[PolicyRow]) -> Self {
        let mut p = Self::defaults();
        for r in rows {
            if p.rules.contains_key(&r.kind) {
                p.rules.insert(
                    r.kind.clone(),
                    Rule {
                        live_days: r.live_days,
                        keep_days: r.keep_days,
                    },
                );
            }
        }
        p
    }

    fn rule(&self, kind: &str) -> Rule {
        self.rules.get(kind).copied().unwrap_or(Rule {
            live_days: 0,
            keep_days: 0,
        })
    }

    /// The cutoffs an archive at `now` with `--before before` uses: (runs, audit). A run
    /// must have closed before the first, an audit entry be older than the second.
    pub fn cutoffs(&self, now: Timestamp, before: Timestamp) -> (Timestamp, Timestamp) {
        let run_live = ["runs", "journal", "approvals", "checks"]
            .iter()
            .map(|k| self.rule(k).live_days)
            .max()
            .unwrap_or(0);
        (
            before.min(days_before(now, run_live)),
            before.min(days_before(now, self.rule("audit").live_days)),
        )
    }
}

fn days_before(now: Timestamp, days: u32) -> Timestamp {
    now.checked_sub(SignedDuration::from_hours(i64::from(days) * 24))
        .unwrap_or(Timestamp::MIN)
}

/// Parse a retention period: `0d`, `90d`, `7y` (365 days), `12w`.
pub fn parse_days(value: &str) -> Result<u32, ArchiveError> {
    let bad = |m: &str| ArchiveError::BadPolicy {
        value: value.to_owned(),
        message: m.to_owned(),
    };
    let v = value.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let too_long = || bad(&format!("the longest period is {} days", u32::MAX));
    let n: u32 = num.parse().map_err(|_| {
        if num.is_empty() {
            bad("write a whole number of days, weeks or years: 90d, 12w, 7y")
        } else {
            too_long()
        }
    })?;
    let per = match unit {
        "d" => 1,
        "w" => 7,
        "y" => 365,
        _ => return Err(bad("the unit must be d, w or y (e.g. 90d, 12w, 7y)")),
    };
    n.checked_mul(per).ok_or_else(too_long)
}

/// The chain range a bundle covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRange {
    /// The position the bundle starts after (0: genesis).
    pub start_seq: i64,
    /// Hash at `start_seq`.
    pub start_hash: String,
    /// The last position in the bundle.
    pub end_seq: i64,
    /// Hash at `end_seq`.
    pub end_hash: String,
}

/// `manifest.json` of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The `--before` date.
    pub before: String,
    /// The policy in force.
    pub policy: RetentionPolicy,
    /// Per kind, the date until which the records in this bundle must be kept.
    pub keep_until: BTreeMap<String, String>,
    /// Ids of the runs in the bundle.
    pub runs: Vec<String>,
    /// Rows per file.
    pub counts: BTreeMap<String, usize>,
    /// The audit chain range in `audit.jsonl`.
    pub chain: ChainRange,
    /// File name → hex sha256 of its bytes.
    pub files: BTreeMap<String, String>,
}

/// A bundle read back and checked against its own manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    /// The archived audit entries, by seq.
    pub audit: Vec<AuditEntry>,
    /// The archived run rows.
    pub runs: Vec<serde_json::Value>,
    /// The archived runs' journal rows.
    pub journal: Vec<serde_json::Value>,
    /// The archived runs' approval rows.
    pub approvals: Vec<serde_json::Value>,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn jsonl<T: Serialize>(rows: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        // Serializing plain rows and entries to JSON cannot fail (no maps with non-string
        // keys, no custom serializers that error).
        out.extend(serde_json::to_vec(r).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

/// Check results of the archived runs, drawn from their journal rows, so an auditor reads
/// them without replaying the journal.
fn check_rows(journal: &[serde_json::Value]) -> Vec<serde_json::Value> {
    journal
        .iter()
        .filter(|r| {
            matches!(
                r.get("event").and_then(|e| e.as_str()),
                Some("check_ran" | "check_skipped")
            )
        })
        .map(|r| {
            let data = r
                .get("data")
                .and_then(|d| d.as_str())
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({"run_id": r.get("run_id"), "at": r.get("at"), "result": data})
        })
        .collect()
}

fn latest(times: impl Iterator<Item = Timestamp>) -> Option<Timestamp> {
    times.max()
}

/// Build the bundle bytes (`tar.zst`) for a selection: the rows as JSONL, `checks.jsonl`,
/// the audit prefix, `extra` files (a run's lock and infrastructure records, under
/// `files/RUN/`), and the manifest. Deterministic for the same input.
pub fn build_bundle(
    sel: &Selection,
    extra: &[(String, Vec<u8>)],
    before: &str,
    policy: &RetentionPolicy,
) -> Result<(Vec<u8>, Manifest), ArchiveError> {
    let checks = check_rows(&sel.journal);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("runs.jsonl".into(), jsonl(&sel.runs)),
        ("journal.jsonl".into(), jsonl(&sel.journal)),
        ("steps.jsonl".into(), jsonl(&sel.steps)),
        ("approvals.jsonl".into(), jsonl(&sel.approvals)),
        ("checks.jsonl".into(), jsonl(&checks)),
        ("audit.jsonl".into(), jsonl(&sel.audit)),
    ];
    let mut counts = BTreeMap::new();
    counts.insert("runs.jsonl".to_owned(), sel.runs.len());
    counts.insert("journal.jsonl".to_owned(), sel.journal.len());
    counts.insert("steps.jsonl".to_owned(), sel.steps.len());
    counts.insert("approvals.jsonl".to_owned(), sel.approvals.len());
    counts.insert("checks.jsonl".to_owned(), checks.len());
    counts.insert("audit.jsonl".to_owned(), sel.audit.len());
    let mut extra: Vec<(String, Vec<u8>)> = extra.to_vec();
    extra.sort();
    files.extend(extra);

    let run_time = latest(sel.runs.iter().filter_map(|r| {
        r.get("updated_at")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
    }));
    let audit_time = latest(sel.audit.iter().filter_map(|e| e.at.parse().ok()));
    let mut keep_until = BTreeMap::new();
    for k in KINDS {
        let base = if *k == "audit" { audit_time } else { run_time };
        if let (Some(t), Some(rule)) = (base, policy.rules.get(*k)) {
            let until = t
                .checked_add(SignedDuration::from_hours(i64::from(rule.keep_days) * 24))
                .unwrap_or(Timestamp::MAX);
            keep_until.insert((*k).to_owned(), until.to_string());
        }
    }
    let (end_seq, end_hash) = sel.end();
    let manifest = Manifest {
        format: BUNDLE_FORMAT.to_owned(),
        before: before.to_owned(),
        policy: policy.clone(),
        keep_until,
        runs: sel.run_ids(),
        counts,
        chain: ChainRange {
            start_seq: sel.start.0,
            start_hash: sel.start.1.clone(),
            end_seq,
            end_hash,
        },
        files: files
            .iter()
            .map(|(n, b)| (n.clone(), sha256_hex(b)))
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ArchiveError::Unreadable(format!("write the manifest: {e}")))?;
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in std::iter::once(("manifest.json".to_owned(), manifest_bytes)).chain(files)
    {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        tar.append_data(&mut h, &name, bytes.as_slice())
            .map_err(|e| ArchiveError::Unreadable(format!("add {name} to the bundle: {e}")))?;
    }
    let raw = tar
        .into_inner()
        .map_err(|e| ArchiveError::Unreadable(format!("finish the bundle: {e}")))?;
    let mut z = zstd::Encoder::new(Vec::new(), 9)
        .map_err(|e| ArchiveError::Unreadable(format!("compress the bundle: {e}")))?;
    z.write_all(&raw)
        .map_err(|e| ArchiveError::Unreadable(format!("compress the bundle: {e}")))?;
    let compressed = z
        .finish()
        .map_err(|e| ArchiveError::Unreadable(format!("compress the bundle: {e}")))?;
    Ok((compressed, manifest))
}

/// The hex sha256 of a bundle file's bytes: what a checkpoint records.
pub fn bundle_digest(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// Most bytes the `tar` crate may read on its own between two entries: the next header
/// with its GNU long name and PAX records, which it reads whole into memory before handing
/// out the entry. Slipway writes a few hundred bytes there.
const TAR_EXTENSION_ALLOWANCE: u64 = 1 << 20;

/// The decompressed stream under the tar reader, failing once it has given `limit` bytes;
/// the loop over the entries moves the limit (shared through the `Rc`) entry by entry.
struct Budgeted<R> {
    inner: R,
    /// (bytes given, limit).
    budget: Rc<(Cell<u64>, Cell<u64>)>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (given, limit) = &*self.budget;
        let room = limit.get().saturating_sub(given.get());
        if room == 0 && !buf.is_empty() {
            return Err(std::io::Error::other(format!(
                "a tar header with its long name or PAX records takes more than \
                 {TAR_EXTENSION_ALLOWANCE} bytes, which Slipway never writes (a decompression \
                 bomb or not a bundle Slipway wrote)"
            )));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        given.set(given.get() + n as u64);
        Ok(n)
    }
}

/// The bytes of the bundle file at `path`, for [`read_bundle`] and [`bundle_digest`]:
/// a regular file only (a FIFO in its place is refused instead of blocking the reader)
/// of at most the unpacked cap (a zstd bundle is smaller than what it unpacks to).
pub fn read_bundle_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    slipway_stdx::fs::read_regular(path, MAX_UNPACKED)
}

/// Read a bundle and check it against its own manifest: every file's digest, the row
/// counts, the run ids, and that `audit.jsonl` covers exactly the manifest's chain range.
/// What it unpacks to is capped at 2 GiB (see [`read_bundle_within`]).
pub fn read_bundle(bytes: &[u8]) -> Result<Bundle, ArchiveError> {
    read_bundle_within(bytes, MAX_UNPACKED)
}

/// [`read_bundle`] with the cap on the unpacked size (file contents and tar headers) given:
/// a file whose declared size would pass it is refused before it is read, so a
/// decompression bomb costs neither the memory nor the time of unpacking it.
pub fn read_bundle_within(bytes: &[u8], max_unpacked: u64) -> Result<Bundle, ArchiveError> {
    let dec = zstd::Decoder::new(bytes)
        .map_err(|e| ArchiveError::Unreadable(format!("not a zstd stream: {e}")))?;
    let budget = Rc::new((Cell::new(0), Cell::new(TAR_EXTENSION_ALLOWANCE)));
    let mut ar = tar::Archive::new(Budgeted {
        inner: dec,
        budget: Rc::clone(&budget),
    });
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let entries = ar
        .entries()
        .map_err(|e| ArchiveError::Unreadable(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Unreadable(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| ArchiveError::Unreadable(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let (given, limit) = &*budget;
        let size = entry.size();
        let padded = size.div_ceil(512).saturating_mul(512);
        if given.get().saturating_add(padded) > max_unpacked {
            return Err(ArchiveError::Unreadable(format!(
                "it unpacks to more than {max_unpacked} bytes ({name} alone declares {size}): \
                 a decompression bomb, or not a bundle Slipway wrote"
            )));
        }
        limit.set(given.get() + padded + TAR_EXTENSION_ALLOWANCE);
        if files.contains_key(&name) {
            // Readers disagree on which copy counts; Slipway writes each name once.
            return Err(ArchiveError::Tampered(format!(
                "{name} appears twice in the bundle"
            )));
        }
        let mut b = Vec::new();
        entry
            .read_to_end(&mut b)
            .map_err(|e| ArchiveError::Unreadable(format!("read {name}: {e}")))?;
        files.insert(name, b);
    }
    let manifest: Manifest = serde_json::from_slice(
        files
            .get("manifest.json")
            .ok_or_else(|| ArchiveError::Unreadable("it has no manifest.json".into()))?,
    )
    .map_err(|e| ArchiveError::Unreadable(format!("manifest.json: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(ArchiveError::Unreadable(format!(
            "format `{}` is not `{BUNDLE_FORMAT}`",
            manifest.format
        )));
    }
    for (name, want) in &manifest.files {
        let got = files
            .get(name)
            .map(|b| sha256_hex(b))
            .ok_or_else(|| ArchiveError::Tampered(format!("{name} is missing")))?;
        if &got != want {
            return Err(ArchiveError::Tampered(format!(
                "{name} does not match its digest in manifest.json"
            )));
        }
    }
    if let Some(extra) = files
        .keys()
        .find(|n| *n != "manifest.json" && !manifest.files.contains_key(*n))
    {
        return Err(ArchiveError::Tampered(format!(
            "{extra} is not listed in manifest.json"
        )));
    }
    if let Some(missing) = ROW_FILES
        .iter()
        .find(|n| !manifest.files.contains_key(**n) || !manifest.counts.contains_key(**n))
    {
        return Err(ArchiveError::Tampered(format!(
            "manifest.json does not list {missing}, which every bundle has"
        )));
    }
    let parse = |name: &str| -> Result<Vec<serde_json::Value>, ArchiveError> {
        let text =
            String::from_utf8_lossy(files.get(name).map_or(&[][..], |b| b.as_slice())).into_owned();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| ArchiveError::Unreadable(format!("{name}: {e}")))
            })
            .collect()
    };
    let mut rows: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (name, want) in &manifest.counts {
        if !manifest.files.contains_key(name) {
            return Err(ArchiveError::Tampered(format!(
                "manifest.json counts rows of {name}, which it does not list"
            )));
        }
        let got = parse(name)?;
        if got.len() != *want {
            return Err(ArchiveError::Tampered(format!(
                "{name} has {} rows, manifest.json counts {want}",
                got.len()
            )));
        }
        rows.insert(name, got);
    }
    let mut take = |name: &str| rows.remove(name).unwrap_or_default();
    let audit: Vec<AuditEntry> = take("audit.jsonl")
        .into_iter()
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| ArchiveError::Unreadable(format!("audit.jsonl: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let runs = take("runs.jsonl");
    let ids: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.get("id").and_then(|v| v.as_str()))
        .collect();
    if ids != manifest.runs {
        return Err(ArchiveError::Tampered(
            "the runs in runs.jsonl are not the runs manifest.json lists".into(),
        ));
    }
    let c = &manifest.chain;
    let (first, last) = (audit.first(), audit.last());
    let range_ok = match (first, last) {
        (Some(f), Some(l)) => {
            c.start_seq.checked_add(1) == Some(f.seq)
                && f.prev_hash == c.start_hash
                && l.seq == c.end_seq
                && l.hash == c.end_hash
        }
        _ => c.start_seq == c.end_seq && c.start_hash == c.end_hash,
    };
    if !range_ok {
        return Err(ArchiveError::Tampered(format!(
            "audit.jsonl does not cover the chain range {}..={} named in manifest.json",
            c.start_seq.saturating_add(1),
            c.end_seq
        )));
    }
    let journal = take("journal.jsonl");
    let approvals = take("approvals.jsonl");
    Ok(Bundle {
        manifest,
        audit,
        runs,
        journal,
        approvals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_in_days() {
        assert_eq!(parse_days("0d").unwrap(), 0);
        assert_eq!(parse_days("12w").unwrap(), 84);
        assert_eq!(parse_days("7y").unwrap(), 2555);
        assert!(parse_days("7 years").is_err());
        assert!(parse_days("d").is_err());
        // A number too big said "write a whole number", which it is.
        for long in ["99999999999d", "4294967295w"] {
            let err = parse_days(long).unwrap_err().to_string();
            assert!(
                err.contains("the longest period is 4294967295 days"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_live_period_holds_records_back_whatever_before_says() {
        let now: Timestamp = "2026-11-26T00:00:00Z".parse().unwrap();
        let before: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let (runs, audit) = RetentionPolicy::defaults().cutoffs(now, before);
        assert_eq!(runs, "2026-08-28T00:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(audit, "2025-11-26T00:00:00Z".parse::<Timestamp>().unwrap());
        let early: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(RetentionPolicy::defaults().cutoffs(now, early).0, early);
    }
}
