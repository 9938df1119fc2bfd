//! `slipway audit verify | export`: check the hash chain in the store or in an export
//! file, and write the chain as JSONL with its head hash.

use std::path::PathBuf;

use serde_json::json;
use slipway_engine::audit::{self, StoreVerification};
use slipway_engine::store::Store;
use slipway_model::exit;

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output, Style};

/// `slipway audit …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit chain (exit 7 and the first bad entry when it does not).
    Verify(VerifyArgs),
    /// Write the audit chain as JSONL with its head hash.
    Export(ExportArgs),
}

/// `slipway audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Verify this export instead of the store.
    #[arg(long, conflicts_with = "archive")]
    pub file: Option<PathBuf>,
    /// Also verify these archive bundles (`slipway archive`) and the live chain after
    /// them as one chain; repeat for several.
    #[arg(long, value_name = "BUNDLE")]
    pub archive: Vec<PathBuf>,
    /// A trusted public key the bundles are signed with; repeat for several.
    #[arg(long, value_name = "KEY.pub", requires = "archive")]
    pub pubkey: Vec<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run an audit subcommand.
pub fn audit(c: AuditCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        AuditCommand::Verify(a) => verify(a, out),
        AuditCommand::Export(a) => export(a, out),
    }
}

/// Print a verification result (the JSON document is [`audit::StoreVerification::to_json`],
/// the server's too). Returns the exit code.
pub(crate) fn report(v: StoreVerification, source: &str, out: &Output) -> i32 {
    if out.json() {
        out.json_value(&v.to_json(source));
    } else {
        match &v.result {
            Ok(ok) => {
                let from = if v.from_seq == 0 {
                    String::new()
                } else {
                    format!(" from archive checkpoint {}", v.from_seq)
                };
                out.line(&format!(
                    "{} audit chain of {source}{from}: {} entries, head {} {}",
                    out.paint("OK", Style::Good),
                    ok.entries,
                    ok.head_seq,
                    ok.head_hash
                ));
            }
            Err(b) => out.line(&format!(
                "{} {source}: {b}",
                out.paint("TAMPERED", Style::Bad)
            )),
        }
    }
    if v.result.is_ok() {
        exit::SUCCESS
    } else {
        exit::TAMPERED
    }
}

fn verify(a: VerifyArgs, out: &Output) -> Result<i32, CliError> {
    if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            CliError::input(
                format!("failed to read {}: {e}", f.display()),
                "pass a file written by `slipway audit export --out FILE`",
            )
        })?;
        let result = audit::verify_export(&text).map_err(|e| {
            CliError::new(
                exit::TAMPERED,
                format!("failed to {e}"),
                Some("the export is damaged or not an audit export".into()),
            )
        })?;
        return Ok(report(
            StoreVerification {
                from_seq: 0,
                result,
            },
            &f.display().to_string(),
            out,
        ));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let (store, _) =
            crate::cli_util::open_store_to_read(&a.store, "read the audit chain").await?;
        if !a.archive.is_empty() {
            let db_path = crate::cli_util::sqlite_only(
                &store,
                "slipway audit verify --archive",
                "archive checkpoints",
            )?;
            return crate::cmd_archive::verify_with_archives(
                store.as_ref(),
                db_path,
                &a.archive,
                &a.pubkey,
                out,
            )
            .await;
        }
        let v = audit::verify_store(store.as_ref())
            .await
            .map_err(CliError::from)?;
        Ok(report(v, &store.location(), out))
    })
}

fn export(a: ExportArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, _) = crate::cli_util::open_store_to_read(&a.store, "read the audit chain").await?;
        let entries = store.audit_entries().await.map_err(CliError::from)?;
        let text = audit::export_jsonl(&entries);
        std::fs::write(&a.out, &text).map_err(|e| {
            CliError::input(format!("failed to write {}: {e}", a.out.display()), "choose a writable path for --out")
        })?;
        let head = entries.last().map(|e| (e.seq, e.hash.clone())).unwrap_or((0, audit::GENESIS.to_owned()));
        if out.json() {
            out.json_value(&json!({"out": a.out, "entries": entries.len(), "head_seq": head.0, "head_hash": head.1}));
        } else {
            out.line(&format!("wrote {} entries to {} (head {} {})", entries.len(), a.out.display(), head.0, head.1));
        }
        Ok(exit::SUCCESS)
    })
}
