//! Audit-chain verification as the CLI shows it, and the archive bundles it verifies
//! against: shared by `slipway audit`, `slipway archive` and `slipway report` (so no
//! `cmd_*` module reaches into another — the tidy test holds that line).

use std::path::{Path, PathBuf};

use slipway_engine::audit::{self, AuditEntry, StoreVerification};
use slipway_engine::evidence::AnchorPayload;
use slipway_engine::store::{Anchor, Store};
use slipway_govern::archive as garchive;
use slipway_model::exit;
use slipway_package as pkg;
use slipway_store::AnyStore;
use slipway_store::archive::ArchiveDb;

use crate::out::{CliError, Output, Style};

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
                if v.anchors_checked > 0 {
                    out.line(&format!(
                        "  held to {} signed checkpoint(s){}",
                        v.anchors_checked,
                        if v.anchors_archived.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; {} more are of archived entries (check them with --archive)",
                                v.anchors_archived.len()
                            )
                        }
                    ));
                }
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

/// Sign `payload` with `sk` and keep the checkpoint in the store (`slipway archive` signs
/// one for the start it moves the live chain to, with the archive's key).
pub(crate) async fn sign_anchor(
    store: &dyn Store,
    sk: &pkg::SecretKey,
    payload: &AnchorPayload,
) -> Result<Anchor, CliError> {
    let line = payload.line();
    let signature = pkg::sign::sign_bytes(line.as_bytes(), Path::new("checkpoint"), sk, &line)
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let anchor = Anchor {
        seq: payload.seq,
        hash: payload.hash.clone(),
        payload: line,
        signature,
    };
    store
        .add_anchor(anchor.clone())
        .await
        .map_err(CliError::from)?;
    Ok(anchor)
}

/// `slipway audit verify --archive …`: every bundle's signature (by a trusted key), its
/// content against its manifest, its digest against a checkpoint of this store, then the
/// archived entries and the live ones as one chain.
pub(crate) async fn verify_with_archives(
    store: &AnyStore,
    bundles: &[PathBuf],
    pubkeys: &[PathBuf],
    out: &Output,
) -> Result<i32, CliError> {
    let verified = verified_bundles(store, bundles, pubkeys).await?;
    let mut parts: Vec<(i64, String, Vec<AuditEntry>)> = verified
        .into_iter()
        .map(|v| {
            let c = &v.bundle.manifest.chain;
            (c.start_seq, c.start_hash.clone(), v.bundle.audit)
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let live_start = store.audit_start().await.map_err(CliError::from)?;
    let head = store.audit_head().await.map_err(CliError::from)?;
    let live = store.audit_entries().await.map_err(CliError::from)?;
    let first = parts
        .first()
        .map_or_else(|| live_start.clone(), |p| (p.0, p.1.clone()));
    let mut all: Vec<AuditEntry> = Vec::new();
    for (_, _, entries) in parts {
        all.extend(entries);
    }
    all.extend(live);
    let source = format!("{} + {} archive bundle(s)", store.location(), bundles.len());
    let result = audit::verify_from(
        &all,
        (first.0, first.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    );
    Ok(report(
        audit::StoreVerification::of_chain(first.0, result),
        &source,
        out,
    ))
}

/// An archive bundle whose signature, content and checkpoint were checked.
pub(crate) struct VerifiedBundle {
    /// The bundle as read.
    pub bundle: garchive::Bundle,
    /// The checkpoint of this store that names its digest.
    pub checkpoint: slipway_store::archive::Checkpoint,
}

/// Read `bundles` and check each: its minisign signature by one of `pubkeys`, its content
/// against its manifest, its digest against a checkpoint of this store and its chain
/// range against that checkpoint. Exit 7 on any mismatch.
pub(crate) async fn verified_bundles(
    store: &AnyStore,
    bundles: &[PathBuf],
    pubkeys: &[PathBuf],
) -> Result<Vec<VerifiedBundle>, CliError> {
    if pubkeys.is_empty() {
        return Err(CliError::input(
            "failed to verify archive bundles: no trusted key given",
            "pass the public key the bundles were signed with: --pubkey archive.pub",
        ));
    }
    let keys = pubkeys
        .iter()
        .map(|k| pkg::PublicKey::from_file(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let db = ArchiveDb::for_store(store);
    let checkpoints = db.checkpoints().await.map_err(CliError::from)?;
    let tampered = |path: &Path, why: String| {
        CliError::new(
            exit::TAMPERED,
            format!("failed to verify archive {}: {why}", path.display()),
            Some("the bundle or the store was altered; keep both and investigate".into()),
        )
    };
    let mut parts: Vec<VerifiedBundle> = Vec::new();
    for b in bundles {
        let sig = pkg::sign::signature_path(b);
        pkg::verify(b, &sig, &keys).map_err(|e| {
            tampered(
                b,
                format!("its signature does not verify with the trusted key(s): {e}"),
            )
        })?;
        let bytes = garchive::read_bundle_file(b).map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("failed to read {}: {e}", b.display()),
                Some("check the bundle path".into()),
            )
        })?;
        let digest = garchive::bundle_digest(&bytes);
        let bundle = garchive::read_bundle(&bytes).map_err(|e| tampered(b, e.to_string()))?;
        let cp = checkpoints
            .iter()
            .find(|c| c.bundle_sha256 == digest)
            .ok_or_else(|| {
                tampered(
                    b,
                    format!("its sha256 {digest} matches no checkpoint of this store (it was changed after the archive, or belongs to another store)"),
                )
            })?;
        let c = &bundle.manifest.chain;
        if (c.start_seq, c.end_seq, &c.end_hash) != (cp.start_seq, cp.end_seq, &cp.end_hash) {
            return Err(tampered(
                b,
                "its chain range differs from the checkpoint recorded for it".into(),
            ));
        }
        let checkpoint = cp.clone();
        parts.push(VerifiedBundle { bundle, checkpoint });
    }
    Ok(parts)
}
