//! Compliance evidence: a built-in control catalogue, each control a query over runs,
//! approvals and the audit chain, evaluated into an evidence pack (JSONL + HTML) that
//! lists every exception and names the audit chain head it was drawn from, so an auditor
//! can check the pack against `slipway audit export` later.
//!
//! The catalogue (a control passes when it has no exception in the period):
//! - SOX ITGC change management: `SOX-CM-1` authorized change (every production deploy
//!   approved on its plan digest before it ran), `SOX-CM-2` segregation of duties (no
//!   production deploy approved by its own author), `SOX-CM-3` testing before production
//!   (the same release version succeeded in a non-production environment first),
//!   `SOX-CM-4` emergency-change review (a hotfix or freeze override in production is
//!   approved by someone other than its author after it ran).
//! - HIPAA §164.312(b) audit controls: `HIPAA-AU-1` the audit chain verifies,
//!   `HIPAA-AU-2` every journaled event of a run is in the audit chain.
//! - GDPR: `GDPR-30` records of processing (every run names its author, environment and
//!   plan), `GDPR-32-1` integrity (the chain verifies), `GDPR-32-2` regular testing
//!   (production releases were tested in a non-production environment first).
//!
//! Archived runs: the per-run controls read a run's journal and approvals, which an
//! archive moves into its bundle; the live store keeps only a summary. So a pack never
//! examines an archived run's approvals, and never drops it silently either: every
//! archived run in the period is listed (`archived_run` lines, the HTML's "Archived runs")
//! with the bundle that holds its evidence, each control says how many archived runs of
//! its population it did not examine, and an archive whose runs left no summary at all is
//! named as not covered. Summaries do count as earlier tests for SOX-CM-3/GDPR-32-2: a
//! staging success that was archived still happened before the production run. Given the
//! bundles themselves (`slipway report compliance --archive B --pubkey K`), the archived
//! runs are read back whole ([`RunHistory::from_bundle`]) and examined like live ones,
//! and the chain is verified from the first bundle's start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;
use slipway_engine::audit::{self, AuditEntry};
use slipway_engine::{EngineEvent, RunState};

use crate::GovernError;
use crate::history::{RunHistory, Unsummarized};
use crate::html::{esc, page};

/// Format tag of the first JSONL line.
pub const EVIDENCE_FORMAT: &str = "slipway-evidence/1";

/// A control of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Control {
    /// Id (`SOX-CM-2`).
    pub id: &'static str,
    /// Framework (`sox`, `hipaa`, `gdpr`).
    pub framework: &'static str,
    /// The requirement, in the framework's terms.
    pub title: &'static str,
    /// The query that tests it, in words.
    pub query: &'static str,
}

const CATALOGUE: &[Control] = &[
    Control {
        id: "SOX-CM-1",
        framework: "sox",
        title: "Authorized change: production changes are approved before implementation",
        query: "every production run that started running has an approval of the digest it executed, recorded before it started",
    },
    Control {
        id: "SOX-CM-2",
        framework: "sox",
        title: "Segregation of duties: the author of a change does not approve it",
        query: "no production run has an approval by its own author",
    },
    Control {
        id: "SOX-CM-3",
        framework: "sox",
        title: "Testing before production",
        query: "every production run's release version succeeded in a non-production environment before the production run started",
    },
    Control {
        id: "SOX-CM-4",
        framework: "sox",
        title: "Emergency-change review",
        query: "every production hotfix or freeze override has an approval by someone other than its author, recorded after it started",
    },
    Control {
        id: "HIPAA-AU-1",
        framework: "hipaa",
        title: "§164.312(b) audit controls: activity records are tamper-evident",
        query: "the audit hash chain verifies up to its recorded head",
    },
    Control {
        id: "HIPAA-AU-2",
        framework: "hipaa",
        title: "§164.312(b) audit controls: every activity is recorded",
        query: "every journaled event of a run in the period has its audit entry",
    },
    Control {
        id: "GDPR-30",
        framework: "gdpr",
        title: "Art. 30 records of processing activities",
        query: "every run in the period records its (pseudonymous) author, environment and plan digest",
    },
    Control {
        id: "GDPR-32-1",
        framework: "gdpr",
        title: "Art. 32(1)(b) integrity of processing records",
        query: "the audit hash chain verifies up to its recorded head",
    },
    Control {
        id: "GDPR-32-2",
        framework: "gdpr",
        title: "Art. 32(1)(d) regular testing of changes",
        query: "every production run's release version succeeded in a non-production environment first",
    },
];

/// The controls of a framework.
pub fn catalogue(framework: &str) -> Result<Vec<&'static Control>, GovernError> {
    let v: Vec<&Control> = CATALOGUE
        .iter()
        .filter(|c| c.framework == framework)
        .collect();
    if v.is_empty() {
        return Err(GovernError::UnknownFramework(framework.to_owned()));
    }
    Ok(v)
}

/// One exception to a control.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exception {
    /// Control id.
    pub control: String,
    /// Run id ("" for chain-wide findings).
    pub run: String,
    /// What is wrong.
    pub detail: String,
}

/// A control's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlResult {
    /// The control.
    pub control: Control,
    /// Runs examined.
    pub examined: u32,
    /// Exceptions.
    pub exceptions: Vec<Exception>,
    /// Archived runs in the period this control would examine but cannot (their records
    /// are in an archive bundle; see [`Evidence::archived`]).
    pub archived_not_examined: u32,
}

/// An archived run of the period, listed with the bundle holding its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchivedRef {
    /// Run id.
    pub run: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Whether the environment is a production one.
    pub production: bool,
    /// Final state.
    pub state: String,
    /// The bundle holding its journal, approvals and audit entries.
    pub bundle: String,
    /// The bundle's sha256.
    pub bundle_sha256: String,
}

/// The evidence pack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Framework.
    pub framework: String,
    /// Period start.
    pub since: Timestamp,
    /// Period end.
    pub until: Timestamp,
    /// Audit chain head the evidence was drawn from (seq, hash).
    pub audit_head_seq: i64,
    /// Audit chain head hash.
    pub audit_head_hash: String,
    /// Whether the chain verified, or the first break.
    pub chain: String,
    /// Per control.
    pub results: Vec<ControlResult>,
    /// Archived runs of the period known only by their summary (not examined by the
    /// per-run controls).
    pub archived: Vec<ArchivedRef>,
    /// Bundles (given with `--archive`, verified) whose runs of the period were examined
    /// like live ones, and how many runs each contributed.
    pub examined_from_bundles: BTreeMap<String, u32>,
    /// Archives whose runs left no summary and may overlap the period: not covered at all.
    pub not_covered: Vec<Unsummarized>,
    /// Reviews after the fact (emergency changes) still open or overdue when the pack was
    /// made: each `{run, release, version, environment, due_at, state}`, filled by the
    /// caller from the store's review records.
    pub open_reviews: Vec<serde_json::Value>,
}

impl Evidence {
    /// Record archives whose runs left no summary (from
    /// [`crate::history::with_archived`]) that may overlap the period: their runs closed
    /// before the archive's `--before`, so an archive before `since` cannot.
    pub fn note_unsummarized(&mut self, unsummarized: &[Unsummarized]) {
        self.not_covered = unsummarized
            .iter()
            .filter(|u| {
                u.before
                    .parse::<Timestamp>()
                    .map_or(true, |b| self.since < b)
            })
            .cloned()
            .collect();
    }

    /// What the pack does not examine, in words ("" when it examines everything).
    pub fn coverage(&self) -> String {
        let mut parts = Vec::new();
        if !self.examined_from_bundles.is_empty() {
            parts.push(format!(
                "examined from archive bundles: {}",
                self.examined_from_bundles
                    .iter()
                    .map(|(b, n)| format!("{b} ({n} run(s))"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.archived.is_empty() {
            let mut bundles: Vec<&str> = self.archived.iter().map(|a| a.bundle.as_str()).collect();
            bundles.sort_unstable();
            bundles.dedup();
            parts.push(format!(
                "{} archived run(s) of the period are listed but not examined by the per-run controls; their evidence is in {} (examine them with `slipway report compliance --archive BUNDLE --pubkey KEY`)",
                self.archived.len(),
                bundles.join(", ")
            ));
        }
        for u in &self.not_covered {
            parts.push(format!(
                "NOT COVERED: {} run(s) archived in {} (closed before {}) left no summary and are not listed",
                u.runs.len(),
                u.bundle,
                u.before
            ));
        }
        parts.join("; ")
    }

    /// Every exception, in catalogue order.
    pub fn exceptions(&self) -> impl Iterator<Item = &Exception> {
        self.results.iter().flat_map(|r| &r.exceptions)
    }
}

fn running_at(run: &RunHistory) -> Option<Timestamp> {
    run.journal.iter().find_map(|n| match &n.event {
        EngineEvent::StateChanged {
            to: RunState::Running,
            ..
        } => Some(n.at),
        _ => None,
    })
}

fn is_emergency(run: &RunHistory) -> bool {
    run.release_type() == "hotfix" || run.record.override_reason.is_some()
}

/// Evaluate a framework over the runs created in `[since, until)`. `all_runs` is the whole
/// history (a test in staging may predate the period); `entries` and `head` the audit
/// chain as stored.
pub fn evaluate(
    framework: &str,
    all_runs: &[RunHistory],
    entries: &[AuditEntry],
    head: Option<(i64, String)>,
    since: Timestamp,
    until: Timestamp,
) -> Result<Evidence, GovernError> {
    evaluate_from(
        framework,
        all_runs,
        entries,
        (0, audit::GENESIS.to_owned()),
        head,
        since,
        until,
    )
}

/// [`evaluate`] over a live chain whose start was archived: `start` is the store's
/// checkpoint (`Store::audit_start`), so the chain verifies from there.
pub fn evaluate_from(
    framework: &str,
    all_runs: &[RunHistory],
    entries: &[AuditEntry],
    start: (i64, String),
    head: Option<(i64, String)>,
    since: Timestamp,
    until: Timestamp,
) -> Result<Evidence, GovernError> {
    let controls = catalogue(framework)?;
    let (period, archived): (Vec<&RunHistory>, Vec<&RunHistory>) = all_runs
        .iter()
        .filter(|r| r.record.created_at >= since && r.record.created_at < until)
        .partition(|r| r.archived.as_ref().is_none_or(|a| a.records));
    let archived_prod = archived.iter().filter(|r| r.production()).count() as u32;
    let prod: Vec<&RunHistory> = period
        .iter()
        .copied()
        .filter(|r| r.production() && running_at(r).is_some())
        .collect();
    let verified = audit::verify_from(
        entries,
        (start.0, start.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    );
    let chain = match &verified {
        Ok(v) => format!("verified: {} entries", v.entries),
        Err(b) => b.to_string(),
    };
    let (head_seq, head_hash) = head.unwrap_or((0, audit::GENESIS.to_owned()));
    let mut audited: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *audited.entry(e.run_id.as_str()).or_default() += 1;
    }
    let tested_first = |r: &RunHistory| -> bool {
        let start = running_at(r).unwrap_or(r.record.created_at);
        all_runs.iter().any(|o| {
            !o.production()
                && o.record.release == r.record.release
                && o.record.version == r.record.version
                && o.record.state == RunState::Succeeded
                && o.finished_at().is_some_and(|f| f <= start)
        })
    };
    let mut results = Vec::new();
    for c in controls {
        let mut ex = Vec::new();
        let mut push = |run: &str, detail: String| {
            ex.push(Exception {
                control: c.id.to_owned(),
                run: run.to_owned(),
                detail,
            });
        };
        let examined = match c.id {
            "SOX-CM-1" => {
                for r in &prod {
                    let start = running_at(r).unwrap_or(r.record.created_at);
                    let ok = r
                        .approvals
                        .iter()
                        .any(|a| a.digest == r.record.digest && a.at <= start);
                    if !ok {
                        push(
                            &r.record.id,
                            format!(
                                "production deploy of {} {} to {} ran without an approval of its plan digest",
                                r.record.release, r.record.version, r.record.environment
                            ),
                        );
                    }
                }
                prod.len()
            }
            "SOX-CM-2" => {
                for r in &prod {
                    if r.approvals.iter().any(|a| a.approver == r.record.author) {
                        push(
                            &r.record.id,
                            format!(
                                "production deploy of {} {} was approved by its author {}",
                                r.record.release, r.record.version, r.record.author
                            ),
                        );
                    }
                }
                prod.len()
            }
            "SOX-CM-3" | "GDPR-32-2" => {
                for r in &prod {
                    if !tested_first(r) {
                        push(
                            &r.record.id,
                            format!(
                                "{} {} reached production without succeeding in a non-production environment first",
                                r.record.release, r.record.version
                            ),
                        );
                    }
                }
                prod.len()
            }
            "SOX-CM-4" => {
                let emergencies: Vec<&&RunHistory> =
                    prod.iter().filter(|r| is_emergency(r)).collect();
                for r in &emergencies {
                    let start = running_at(r).unwrap_or(r.record.created_at);
                    let reviewed = r
                        .approvals
                        .iter()
                        .any(|a| a.approver != r.record.author && a.at >= start);
                    if !reviewed {
                        push(
                            &r.record.id,
                            format!(
                                "emergency change {} {} ({}) has no review by someone other than its author",
                                r.record.release,
                                r.record.version,
                                r.record
                                    .override_reason
                                    .as_deref()
                                    .map_or("hotfix".to_owned(), |o| format!(
                                        "freeze override: {o}"
                                    ))
                            ),
                        );
                    }
                }
                emergencies.len()
            }
            "HIPAA-AU-1" | "GDPR-32-1" => {
                if let Err(b) = &verified {
                    push("", format!("the audit chain does not verify: {b}"));
                }
                entries.len()
            }
            "HIPAA-AU-2" => {
                for r in &period {
                    let have = audited.get(r.record.id.as_str()).copied().unwrap_or(0);
                    if have < r.journal.len() {
                        push(
                            &r.record.id,
                            format!(
                                "{} journaled events but {have} audit entries",
                                r.journal.len()
                            ),
                        );
                    }
                }
                period.len()
            }
            _ => {
                // GDPR-30.
                for r in &period {
                    if r.record.author.is_empty()
                        || r.record.environment.is_empty()
                        || r.record.digest.is_empty()
                    {
                        push(
                            &r.record.id,
                            "the run does not record its author, environment and plan digest"
                                .into(),
                        );
                    }
                }
                period.len()
            }
        };
        let archived_not_examined = match c.id {
            "HIPAA-AU-1" | "GDPR-32-1" => 0,
            "HIPAA-AU-2" | "GDPR-30" => archived.len() as u32,
            _ => archived_prod,
        };
        results.push(ControlResult {
            control: c.clone(),
            examined: examined as u32,
            exceptions: ex,
            archived_not_examined,
        });
    }
    Ok(Evidence {
        open_reviews: Vec::new(),
        framework: framework.to_owned(),
        since,
        until,
        audit_head_seq: head_seq,
        audit_head_hash: head_hash,
        chain,
        results,
        archived: archived
            .iter()
            .map(|r| ArchivedRef {
                run: r.record.id.clone(),
                release: r.record.release.clone(),
                version: r.record.version.clone(),
                environment: r.record.environment.clone(),
                production: r.production(),
                state: r.record.state.as_str().to_owned(),
                bundle: r
                    .archived
                    .as_ref()
                    .map_or_else(String::new, |a| a.bundle.clone()),
                bundle_sha256: r
                    .archived
                    .as_ref()
                    .map_or_else(String::new, |a| a.bundle_sha256.clone()),
            })
            .collect(),
        not_covered: Vec::new(),
        examined_from_bundles: period
            .iter()
            .filter_map(|r| r.archived.as_ref().map(|a| a.bundle.clone()))
            .fold(BTreeMap::new(), |mut m, b| {
                *m.entry(b).or_insert(0) += 1;
                m
            }),
    })
}

/// The pack as JSONL: a header line, one line per control, one per exception.
pub fn to_jsonl(e: &Evidence) -> String {
    let mut s = serde_json::json!({
        "format": EVIDENCE_FORMAT,
        "framework": e.framework,
        "since": e.since,
        "until": e.until,
        "audit_head_seq": e.audit_head_seq,
        "audit_head_hash": e.audit_head_hash,
        "chain": e.chain,
        "archived_runs": e.archived.len(),
        "examined_from_bundles": e.examined_from_bundles,
        "not_covered": e.not_covered,
        "coverage": e.coverage(),
    })
    .to_string();
    s.push('\n');
    for r in &e.results {
        let line = serde_json::json!({
            "type": "control",
            "id": r.control.id,
            "title": r.control.title,
            "query": r.control.query,
            "examined": r.examined,
            "result": if r.exceptions.is_empty() { "pass" } else { "exception" },
            "exceptions": r.exceptions.len(),
            "archived_not_examined": r.archived_not_examined,
        });
        s.push_str(&line.to_string());
        s.push('\n');
        for x in &r.exceptions {
            let mut v = serde_json::to_value(x).unwrap_or_default();
            v["type"] = "exception".into();
            s.push_str(&v.to_string());
            s.push('\n');
        }
    }
    for a in &e.archived {
        let mut v = serde_json::to_value(a).unwrap_or_default();
        v["type"] = "archived_run".into();
        s.push_str(&v.to_string());
        s.push('\n');
    }
    for r in &e.open_reviews {
        let mut v = r.clone();
        v["type"] = "open_review".into();
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}

/// The readable summary.
pub fn to_html(e: &Evidence) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>Compliance evidence: {}</h1>",
        esc(&e.framework.to_uppercase())
    );
    let _ = writeln!(
        b,
        "<p>Period {} to {}. Drawn from audit chain head <code>{}</code> (entry {}); chain {}.</p>",
        esc(&e.since.to_string()),
        esc(&e.until.to_string()),
        esc(&e.audit_head_hash),
        e.audit_head_seq,
        esc(&e.chain)
    );
    let coverage = e.coverage();
    if !coverage.is_empty() {
        let class = if e.archived.is_empty() && e.not_covered.is_empty() {
            "good"
        } else {
            "bad"
        };
        let _ = writeln!(b, "<p class=\"{class}\">{}.</p>", esc(&coverage));
    }
    b.push_str("<table><tr><th>control</th><th>requirement</th><th>test</th><th>examined</th><th>archived, not examined</th><th>result</th></tr>\n");
    for r in &e.results {
        let ok = r.exceptions.is_empty();
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            r.control.id,
            esc(r.control.title),
            esc(r.control.query),
            r.examined,
            r.archived_not_examined,
            if ok { "good" } else { "bad" },
            if ok {
                "pass".to_owned()
            } else {
                format!("{} exception(s)", r.exceptions.len())
            }
        );
    }
    b.push_str("</table>\n<h2>Exceptions</h2>\n");
    let all: Vec<&Exception> = e.exceptions().collect();
    if all.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str("<table><tr><th>control</th><th>run</th><th>exception</th></tr>\n");
        for x in all {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&x.control),
                esc(&x.run),
                esc(&x.detail)
            );
        }
        b.push_str("</table>\n");
    }
    if !e.open_reviews.is_empty() {
        b.push_str("<h2>Reviews after the fact not completed</h2>\n<table><tr><th>run</th><th>release</th><th>environment</th><th>due</th><th>state</th></tr>\n");
        for r in &e.open_reviews {
            let f = |k: &str| esc(r[k].as_str().unwrap_or_default());
            let _ = writeln!(
                b,
                "<tr><td><code>{}</code></td><td>{} {}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td></tr>",
                f("run"),
                f("release"),
                f("version"),
                f("environment"),
                f("due_at"),
                f("state")
            );
        }
        b.push_str("</table>\n");
    }
    if !e.archived.is_empty() {
        b.push_str("<h2>Archived runs</h2>\n<p>Not examined by the per-run controls; their journal, approvals and audit entries are in the named bundle.</p>\n<table><tr><th>run</th><th>release</th><th>environment</th><th>state</th><th>bundle</th></tr>\n");
        for a in &e.archived {
            let _ = writeln!(
                b,
                "<tr><td><code>{}</code></td><td>{} {}</td><td>{}{}</td><td>{}</td><td><code>{}</code> (sha256 {})</td></tr>",
                esc(&a.run),
                esc(&a.release),
                esc(&a.version),
                esc(&a.environment),
                if a.production { " (production)" } else { "" },
                esc(&a.state),
                esc(&a.bundle),
                esc(&a.bundle_sha256)
            );
        }
        b.push_str("</table>\n");
    }
    page(
        &format!("Slipway compliance evidence ({})", e.framework),
        &b,
    )
}

/// Write `evidence.jsonl` and `summary.html` into `dir` (created if needed).
pub fn write_pack(e: &Evidence, dir: &Path) -> Result<(), GovernError> {
    let werr = |p: &Path, err: std::io::Error| GovernError::Write {
        path: p.display().to_string(),
        message: err.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|err| werr(dir, err))?;
    let j = dir.join("evidence.jsonl");
    std::fs::write(&j, to_jsonl(e)).map_err(|err| werr(&j, err))?;
    let h = dir.join("summary.html");
    std::fs::write(&h, to_html(e)).map_err(|err| werr(&h, err))?;
    Ok(())
}
