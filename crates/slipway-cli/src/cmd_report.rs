//! `slipway report dora | handover | retro | compliance`: what supporters, auditors and
//! process owners need after a release, computed by `slipway-govern` from the store and
//! printed here (text, `--output json`, or an HTML file).
//!
//! Every report that counts or lists runs reads the live runs *and* the summaries
//! `slipway archive` left of archived ones (`slipway_ops::reports::history_with_archive`), so archiving never
//! changes a figure; each says how many runs came from summaries and which bundles hold
//! their records.

use std::path::PathBuf;

use slipway_govern::dora::{self, DoraQuery};
use slipway_govern::history::RunHistory;
use slipway_govern::{GovernError, history};
use slipway_model::exit;
use slipway_store::AnyStore;

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway report …`.
#[derive(Debug, clap::Subcommand)]
#[command(
    after_help = "Examples:\n  slipway report dora --since 2026-10-01\n  slipway report dora --since 2026-10-01 --html dora.html\n  slipway report handover RUN > HANDOVER.md\n  slipway report retro RUN\n  slipway report compliance --framework sox --since 2026-01-01 --out evidence/"
)]
pub enum ReportCommand {
    /// DORA and delivery figures: deployment frequency, lead time for changes, change
    /// failure rate, failed deployment recovery time, success rate, rollback frequency,
    /// MTTR — overall, by service and by release type.
    #[command(
        after_help = "Examples:\n  slipway report dora --since 2026-11-01\n  slipway report dora --since 2026-11-01 --service api --type feature --output json\n  slipway report dora --since 2026-11-01 --html dora.html"
    )]
    Dora(DoraArgs),
    /// The handover pack of a run as Markdown: release notes, configuration and endpoint
    /// changes, known issues, escalation contacts, runbook delta.
    #[command(
        after_help = "Examples:\n  slipway report handover 20261126-033517-03c801 > handover.md"
    )]
    Handover(RunReportArgs),
    /// The retrospective of a run as Markdown: timeline, analysis measurements, anomalies,
    /// action items.
    #[command(
        after_help = "Examples:\n  slipway report retro 20261126-033517-03c801\n  slipway report retro 20261126-033517-03c801 --output json"
    )]
    Retro(RunReportArgs),
    /// A compliance evidence pack (evidence.jsonl + summary.html) for SOX, HIPAA or GDPR,
    /// listing every exception and the audit chain head it was drawn from. Exit 1 when
    /// any control has an exception.
    #[command(
        after_help = "Examples:\n  slipway report compliance --framework sox --since 2026-10-01 --out evidence/sox-q4\n  slipway report compliance --framework sox --since 2026-01-01 --out evidence/sox-2026 --archive .slipway/archive/slipway-archive-1f2e.tar.zst --pubkey archive.pub"
    )]
    Compliance(ComplianceArgs),
}

/// `slipway catalog …`.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Write Backstage catalog-info.yaml entities (System, Components with dependsOn,
    /// owner and lifecycle) and the dependency map (dependencies.dot, and .svg when
    /// Graphviz `dot` is installed).
    #[command(
        after_help = "Examples:\n  slipway catalog export -f examples/shop/release.yaml --out catalog/"
    )]
    Export(CatalogExportArgs),
}

/// `slipway catalog export`.
#[derive(Debug, clap::Args)]
pub struct CatalogExportArgs {
    /// The release spec.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Output directory.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway report compliance`.
#[derive(Debug, clap::Args)]
pub struct ComplianceArgs {
    /// Control catalogue: sox, hipaa or gdpr.
    #[arg(long)]
    pub framework: String,
    /// Start of the period: YYYY-MM-DD (UTC midnight) or an RFC 3339 time.
    #[arg(long)]
    pub since: String,
    /// End of the period (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Directory for the evidence pack.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Archive bundles whose runs to examine like live ones (repeatable; give every bundle
    /// from the oldest wanted to the newest, so the chain is whole). Without it, archived
    /// runs are listed with their bundle but not examined.
    #[arg(long, value_name = "BUNDLE")]
    pub archive: Vec<PathBuf>,
    /// Public key the bundles were signed with (repeatable).
    #[arg(long, value_name = "KEY")]
    pub pubkey: Vec<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway report handover | retro`.
#[derive(Debug, clap::Args)]
pub struct RunReportArgs {
    /// Run id (see `slipway history`).
    pub run: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway report dora`.
#[derive(Debug, clap::Args)]
pub struct DoraArgs {
    /// Start of the period: YYYY-MM-DD (UTC midnight) or an RFC 3339 time.
    #[arg(long)]
    pub since: String,
    /// End of the period (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only runs that deploy this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only releases of this type (feature, patch, security, hotfix).
    #[arg(long = "type")]
    pub release_type: Option<String>,
    /// Only this environment (default: production environments).
    #[arg(long)]
    pub env: Option<String>,
    /// Also write the report as an HTML page with SVG charts to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run a report subcommand.
pub fn report(c: ReportCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        ReportCommand::Dora(a) => dora_cmd(a, out),
        ReportCommand::Handover(a) => handover_cmd(a, out),
        ReportCommand::Retro(a) => retro_cmd(a, out),
        ReportCommand::Compliance(a) => compliance_cmd(a, out),
    }
}

pub(crate) fn govern_error(e: GovernError) -> CliError {
    match e {
        GovernError::Store(s) => CliError::from(s),
        e @ (GovernError::NoSuchRun(_)
        | GovernError::BadDate { .. }
        | GovernError::UnknownFramework(_)) => {
            CliError::new(exit::INVALID_INPUT, format!("failed to {e}"), None)
        }
        e @ GovernError::Tampered(_) => CliError::new(
            exit::TAMPERED,
            format!("failed to {e}"),
            Some(
                "nothing was written; find what changed with `slipway audit verify` and restore it from a backup or an export".to_owned(),
            ),
        ),
        e @ GovernError::Write { .. } => CliError::new(
            exit::FAILURE,
            format!("failed to {e}"),
            Some("choose a writable --out directory".to_owned()),
        ),
    }
}

pub(crate) fn write_file(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("failed to write {}: {e}", path.display()),
            Some("choose a writable path".to_owned()),
        )
    })
}

/// The run summaries and archive checkpoints of the store (see
/// `slipway_ops::reports::archived`).
async fn archived(
    store: &AnyStore,
) -> Result<
    (
        Vec<slipway_store::archive::RunSummary>,
        Vec<slipway_store::archive::Checkpoint>,
    ),
    CliError,
> {
    Ok(slipway_ops::reports::archived(store).await?)
}

fn dora_cmd(a: DoraArgs, out: &Output) -> Result<i32, CliError> {
    let since = slipway_govern::parse_when(&a.since).map_err(govern_error)?;
    let until = a
        .until
        .as_deref()
        .map(slipway_govern::parse_when)
        .transpose()
        .map_err(govern_error)?;
    let rt = runtime()?;
    if let Some(c) = crate::cli_util::remote()? {
        // The server computes it (the operations layer's rules); it sends the text and
        // HTML renderings with the figures.
        let mut q = vec![("since", since.to_string())];
        let opt = [
            ("until", until.map(|u| u.to_string())),
            ("service", a.service.clone()),
            ("type", a.release_type.clone()),
            ("environment", a.env.clone()),
        ];
        q.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::cli_util::path_segment(v)))
            .collect();
        let v = rt.block_on(c.get(&format!("/reports/dora?{}", query.join("&"))))?;
        if let Some(path) = &a.html {
            write_file(path, v["html"].as_str().unwrap_or_default())?;
        }
        if out.json() {
            out.json_value(&v["report"]);
        } else {
            out.raw(v["text"].as_str().unwrap_or_default());
            if let Some(path) = &a.html {
                out.line(&format!("HTML report written to {}", path.display()));
            }
        }
        return Ok(exit::SUCCESS);
    }
    let report = rt.block_on(async {
        let s = crate::cli_util::read_session(&a.store).await?;
        let query = DoraQuery {
            since: Some(since),
            until,
            service: a.service.clone(),
            release_type: a.release_type.clone(),
            environment: a.env.clone(),
            unsummarized: Vec::new(),
        };
        Ok::<_, CliError>(slipway_ops::reports::dora(&s, query).await?)
    })?;
    if let Some(path) = &a.html {
        write_file(path, &dora::render_html(&report))?;
    }
    if out.json() {
        out.json_value(&report);
    } else {
        out.raw(&dora::render_text(&report));
        if let Some(path) = &a.html {
            out.line(&format!("HTML report written to {}", path.display()));
        }
    }
    Ok(exit::SUCCESS)
}

fn handover_cmd(a: RunReportArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let h = match crate::cli_util::remote()? {
        Some(c) => rt.block_on(c.get(&format!(
            "/reports/handover/{}",
            crate::cli_util::path_segment(&a.run)
        )))?,
        None => rt.block_on(async {
            let s = crate::cli_util::read_session(&a.store).await?;
            let h = slipway_ops::reports::handover(&s, &a.run).await?;
            Ok::<_, CliError>(serde_json::json!(h))
        })?,
    };
    if out.json() {
        out.json_value(&h);
    } else {
        out.raw(h["markdown"].as_str().unwrap_or_default());
    }
    Ok(exit::SUCCESS)
}

fn retro_cmd(a: RunReportArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    let (retro, markdown) = match crate::cli_util::remote()? {
        Some(c) => {
            let v = rt.block_on(c.get(&format!(
                "/reports/retro/{}",
                crate::cli_util::path_segment(&a.run)
            )))?;
            (
                v["retro"].clone(),
                v["markdown"].as_str().unwrap_or_default().to_owned(),
            )
        }
        None => rt.block_on(async {
            let s = crate::cli_util::read_session(&a.store).await?;
            let r = slipway_ops::reports::retro(&s, &a.run).await?;
            let md = slipway_govern::retro::render_markdown(&r);
            Ok::<_, CliError>((serde_json::json!(r), md))
        })?,
    };
    if out.json() {
        out.json_value(&retro);
    } else {
        out.raw(&markdown);
    }
    Ok(exit::SUCCESS)
}

fn compliance_cmd(a: ComplianceArgs, out: &Output) -> Result<i32, CliError> {
    let since = slipway_govern::parse_when(&a.since).map_err(govern_error)?;
    let until = match a.until.as_deref() {
        Some(u) => slipway_govern::parse_when(u).map_err(govern_error)?,
        None => slipway_stdx::now(),
    };
    slipway_govern::compliance::catalogue(&a.framework).map_err(govern_error)?;
    let rt = runtime()?;
    // The evidence as JSON, what it does not cover, and the pack's two files — computed by
    // the operations layer here or on the server, rendered the same way.
    let (evidence, coverage, jsonl, html) = match crate::cli_util::remote()? {
        Some(c) => {
            if !a.archive.is_empty() {
                return Err(CliError::input(
                    "failed to examine archive bundles through a server: the bundles are files on this machine, the server verifies only its store",
                    "drop --archive (archived runs are then listed with their bundle), or run it without --server with --store naming the server's store",
                ));
            }
            let v = rt.block_on(c.get(&format!(
                "/reports/compliance?framework={}&since={}&until={}",
                crate::cli_util::path_segment(&a.framework),
                crate::cli_util::path_segment(&since.to_string()),
                crate::cli_util::path_segment(&until.to_string())
            )))?;
            let text = |k: &str| v["files"][k].as_str().unwrap_or_default().to_owned();
            (
                v["evidence"].clone(),
                v["coverage"].as_str().unwrap_or_default().to_owned(),
                text("evidence.jsonl"),
                text("summary.html"),
            )
        }
        None => {
            let e = rt.block_on(async {
                let session = crate::cli_util::read_session(&a.store).await?;
                let bundles = if a.archive.is_empty() {
                    None
                } else {
                    Some(from_bundles(&session.store, &a.archive, &a.pubkey).await?)
                };
                Ok::<_, CliError>(
                    slipway_ops::reports::compliance(&session, &a.framework, since, until, bundles)
                        .await?,
                )
            })?;
            (
                serde_json::to_value(&e).unwrap_or_default(),
                e.coverage(),
                slipway_govern::compliance::to_jsonl(&e),
                slipway_govern::compliance::to_html(&e),
            )
        }
    };
    std::fs::create_dir_all(&a.out).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("failed to create {}: {e}", a.out.display()),
            Some("choose a writable --out directory".to_owned()),
        )
    })?;
    write_file(&a.out.join("evidence.jsonl"), &jsonl)?;
    write_file(&a.out.join("summary.html"), &html)?;
    let empty = Vec::new();
    let results = evidence["results"].as_array().unwrap_or(&empty);
    let exceptions: Vec<&serde_json::Value> = results
        .iter()
        .flat_map(|r| r["exceptions"].as_array().unwrap_or(&empty))
        .collect();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    if out.json() {
        out.json_value(&serde_json::json!({
            "framework": evidence["framework"],
            "out": a.out.display().to_string(),
            "audit_head_seq": evidence["audit_head_seq"],
            "audit_head_hash": evidence["audit_head_hash"],
            "chain": evidence["chain"],
            "exceptions": exceptions,
            "archived_runs": evidence["archived"],
            "examined_from_bundles": evidence["examined_from_bundles"],
            "not_covered": evidence["not_covered"],
            "coverage": coverage,
            "open_reviews": evidence["open_reviews"],
        }));
    } else {
        for r in results {
            let n = r["exceptions"].as_array().map_or(0, Vec::len);
            out.line(&format!(
                "{:<11} {:<10} {} ({} examined)",
                s(&r["control"]["id"]),
                if n == 0 {
                    "pass".to_owned()
                } else {
                    format!("{n} exc.")
                },
                s(&r["control"]["title"]),
                r["examined"]
            ));
        }
        for x in &exceptions {
            out.line(&format!(
                "  exception {} run {}: {}",
                s(&x["control"]),
                s(&x["run"]),
                s(&x["detail"])
            ));
        }
        for r in evidence["open_reviews"].as_array().unwrap_or(&empty) {
            out.line(&format!(
                "review after the fact {} of run {} ({} {} to {}), due {}",
                s(&r["state"]),
                s(&r["run"]),
                s(&r["release"]),
                s(&r["version"]),
                s(&r["environment"]),
                s(&r["due_at"])
            ));
        }
        if !coverage.is_empty() {
            out.line(&format!("coverage: {coverage}"));
        }
        out.line(&format!(
            "evidence pack written to {} (audit chain head {} at entry {}; {})",
            a.out.display(),
            s(&evidence["audit_head_hash"]),
            evidence["audit_head_seq"],
            s(&evidence["chain"])
        ));
    }
    Ok(if exceptions.is_empty() {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

/// The runs and chain of the `--archive` bundles, each verified against its signature
/// and this store's checkpoints, with no gap from the first to the live chain.
async fn from_bundles(
    store: &AnyStore,
    archive: &[PathBuf],
    pubkey: &[PathBuf],
) -> Result<slipway_ops::reports::FromBundles, CliError> {
    let mut verified = crate::audit_view::verified_bundles(store, archive, pubkey).await?;
    verified.sort_by_key(|v| v.checkpoint.id);
    let (_, checkpoints) = archived(store).await?;
    let first = verified.first().map_or(0, |v| v.checkpoint.id);
    let missing: Vec<&str> = checkpoints
        .iter()
        .filter(|c| c.id >= first && !verified.iter().any(|v| v.checkpoint.id == c.id))
        .map(|c| c.bundle_name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(CliError::input(
            format!(
                "failed to read the archived evidence: the bundles given leave a gap in the audit chain; missing {}",
                missing.join(", ")
            ),
            "give every bundle from the oldest wanted to the newest with --archive",
        ));
    }
    let mut runs = Vec::new();
    let mut audit = Vec::new();
    for v in &verified {
        runs.extend(RunHistory::from_bundle(&v.bundle, &v.checkpoint).map_err(govern_error)?);
        audit.extend(v.bundle.audit.iter().cloned());
    }
    let start = verified
        .first()
        .map(|v| &v.bundle.manifest.chain)
        .map_or_else(
            || (0, slipway_engine::audit::GENESIS.to_owned()),
            |c| (c.start_seq, c.start_hash.clone()),
        );
    Ok(slipway_ops::reports::FromBundles { runs, audit, start })
}

/// Run a catalog subcommand.
pub fn catalog(c: CatalogCommand, out: &Output) -> Result<i32, CliError> {
    let CatalogCommand::Export(a) = c;
    let loaded = crate::cli_util::load_spec(&a.file, out)?;
    // Lifecycles come from the run history (the server's, under --server) when a store
    // exists; none is created here.
    let cwd = std::env::current_dir().unwrap_or_default();
    let (yaml, count, archive, archive_text) = if let Some(c) = crate::cli_util::remote()? {
        let rt = runtime()?;
        let (_, v) = rt.block_on(c.post("/catalog", &serde_json::json!({"spec": loaded.spec})))?;
        (
            v["yaml"].as_str().unwrap_or_default().to_owned(),
            v["entities"].as_u64().unwrap_or(0),
            v["archive"].clone(),
            v["archive_text"].as_str().unwrap_or_default().to_owned(),
        )
    } else {
        let catalog = match slipway_store::resolve(a.store.store.as_deref(), &cwd) {
            Ok(loc)
                if matches!(&loc, slipway_store::StoreLocation::Postgres(_))
                    || matches!(&loc, slipway_store::StoreLocation::Sqlite(p) if p.exists()) =>
            {
                let rt = runtime()?;
                rt.block_on(async {
                    let s = crate::cli_util::read_session(&a.store).await?;
                    Ok::<_, CliError>(slipway_ops::reports::catalog(&s, &loaded.spec).await?)
                })?
            }
            _ => slipway_ops::reports::Catalog {
                entities: slipway_govern::catalog::entities(&loaded.spec, &[]),
                archive: history::ArchiveUse::default(),
            },
        };
        (
            slipway_govern::catalog::to_yaml(&catalog.entities),
            catalog.entities.len() as u64,
            serde_json::to_value(&catalog.archive).unwrap_or_default(),
            catalog.archive.describe(),
        )
    };
    std::fs::create_dir_all(&a.out).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("failed to create {}: {e}", a.out.display()),
            Some("choose a writable --out directory".to_owned()),
        )
    })?;
    let yaml_path = a.out.join("catalog-info.yaml");
    write_file(&yaml_path, &yaml)?;
    let dot = slipway_govern::catalog::to_dot(&loaded.spec);
    let dot_path = a.out.join("dependencies.dot");
    write_file(&dot_path, &dot)?;
    let svg_path = a.out.join("dependencies.svg");
    let svg = slipway_stdx::command("dot")
        .arg("-Tsvg")
        .arg(&dot_path)
        .arg("-o")
        .arg(&svg_path)
        .status()
        .is_ok_and(|s| s.success());
    if out.json() {
        out.json_value(&serde_json::json!({
            "entities": count,
            "catalog": yaml_path.display().to_string(),
            "dot": dot_path.display().to_string(),
            "svg": svg.then(|| svg_path.display().to_string()),
            "archive": archive,
        }));
    } else {
        out.line(&format!(
            "{} entities written to {}; dependency map {}{}",
            count,
            yaml_path.display(),
            dot_path.display(),
            if svg {
                format!(" and {}", svg_path.display())
            } else {
                " (install Graphviz `dot` for an SVG)".to_owned()
            }
        ));
        out.line(&format!("lifecycles from the run history; {archive_text}"));
    }
    Ok(exit::SUCCESS)
}
