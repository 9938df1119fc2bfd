//! `slipway audit verify | export | checkpoint`: check the hash chain and every record it
//! vouches for in the store (or the chain in an export file), write the chain as JSONL
//! with its head hash, and anchor the head with a signed checkpoint.
//!
//! A checkpoint is a minisign signature (by a key the deployers do not hold) of one line
//! naming the head seq and hash, the live entry count and where the live chain starts
//! (`slipway_engine::evidence::AnchorPayload`). It is kept beside the chain in the store
//! and, with `--witness FILE`, appended to a file on other storage (and POSTed to
//! `--webhook URL`s). `audit verify --pubkey KEY` then holds the chain to every checkpoint
//! it finds in the store and in `--witness` files: a chain cut before a signed head, a
//! chain re-hashed after an edit, or a live start (an archive checkpoint) that the newest
//! signed checkpoint does not name is refused (exit 7). Deleting checkpoint rows from the
//! database is caught by the witness copy.

use std::path::{Path, PathBuf};

use serde_json::json;
use slipway_engine::audit::{self, StoreVerification};
use slipway_engine::evidence::{self, AnchorPayload, Anchors};
use slipway_engine::store::{Anchor, Store};
use slipway_model::exit;
use slipway_package as pkg;

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway audit …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit chain (exit 7 and the first bad entry when it does not).
    Verify(VerifyArgs),
    /// Write the audit chain as JSONL with its head hash.
    Export(ExportArgs),
    /// Sign the chain's head (seq, hash, entry count, start) with a key the deployers do
    /// not hold; keep it in the store and append it to witness files. Idempotent: an
    /// already signed head signs nothing new (witnesses still get what they lack).
    #[command(
        after_help = "Examples:\n  slipway audit checkpoint --key audit.key --witness /mnt/worm/slipway-checkpoints.jsonl\n  slipway audit verify --pubkey audit.pub --witness /mnt/worm/slipway-checkpoints.jsonl\n\nOn a schedule (cron): */15 * * * * cd /srv/slipway && slipway audit checkpoint --key /etc/slipway/audit.key --witness /mnt/worm/checkpoints.jsonl"
    )]
    Checkpoint(CheckpointArgs),
}

/// `slipway audit checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The minisign secret key that signs checkpoints (`slipway key generate`); keep it
    /// away from the people and machines that deploy.
    #[arg(long, short = 's')]
    pub key: PathBuf,
    /// Name of an environment variable holding the secret key's password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Append the checkpoint (and any checkpoint of the store it lacks) to this JSONL file,
    /// kept on other storage; repeat for several.
    #[arg(long, value_name = "FILE")]
    pub witness: Vec<PathBuf>,
    /// POST each new checkpoint as JSON to this URL (signed with SLIPWAY_WEBHOOK_SECRET
    /// when set, retried like notifications); repeat for several.
    #[arg(long, value_name = "URL")]
    pub webhook: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
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
    /// A trusted public key archive bundles and checkpoints are signed with; repeat for
    /// several. With it, the chain is held to every signed checkpoint found in the store
    /// and the `--witness` files.
    #[arg(long, value_name = "KEY.pub")]
    pub pubkey: Vec<PathBuf>,
    /// A witness file of checkpoints (`audit checkpoint --witness`) to hold the chain to as
    /// well; repeat for several.
    #[arg(long, value_name = "FILE", requires = "pubkey")]
    pub witness: Vec<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Output file.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Run an audit subcommand.
pub fn audit(c: AuditCommand, out: &Output) -> Result<i32, CliError> {
    match c {
        AuditCommand::Verify(a) => verify(a, out),
        AuditCommand::Export(a) => export(a, out),
        AuditCommand::Checkpoint(a) => checkpoint(a, out),
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
        return Ok(crate::audit_view::report(
            StoreVerification::of_chain(0, result),
            &f.display().to_string(),
            out,
        ));
    }
    let rt = runtime()?;
    if let Some(c) = crate::cli_util::remote()? {
        return rt.block_on(verify_remote(&c, &a, out));
    }
    rt.block_on(async {
        let (store, _) =
            crate::cli_util::open_store_to_read(&a.store, "read the audit chain").await?;
        if !a.archive.is_empty() {
            return crate::audit_view::verify_with_archives(&store, &a.archive, &a.pubkey, out)
                .await;
        }
        let anchors = if a.pubkey.is_empty() {
            Anchors::default()
        } else {
            let keys = load_keys(&a.pubkey)?;
            let found = trusted_anchors(store.as_ref(), &a.witness, &keys).await?;
            Anchors::new(&found)
        };
        let v = evidence::verify_store_anchored(store.as_ref(), &anchors)
            .await
            .map_err(CliError::from)?;
        Ok(crate::audit_view::report(v, &store.location(), out))
    })
}

/// `audit verify` through a server: the server verifies its store's chain
/// (`GET /api/v1/audit/verify`, viewer everywhere) and answers 409 with the break when it
/// does not hold. Bundles, keys and witness files are files of this machine, which the
/// server never reads: refused with the way to check them.
async fn verify_remote(
    c: &slipway_server::client::Client,
    a: &VerifyArgs,
    out: &Output,
) -> Result<i32, CliError> {
    if !a.archive.is_empty() || !a.pubkey.is_empty() {
        return Err(CliError::input(
            "failed to verify archive bundles or signed checkpoints through a server: bundles, keys and witness files are files of this machine, the server verifies its store's chain only",
            "drop --archive/--pubkey/--witness to verify the server's chain, or run `slipway audit verify` without --server, with --store naming the server's store",
        ));
    }
    let (v, ok) = match c.get("/audit/verify").await {
        Ok(v) => (v, true),
        Err(slipway_server::client::ClientError::Api {
            status: 409, body, ..
        }) => (body, false),
        Err(e) => return Err(e.into()),
    };
    if out.json() {
        out.json_value(&v);
    } else {
        let source = format!(
            "{} ({})",
            v["source"].as_str().unwrap_or_default(),
            c.server()
        );
        if ok {
            out.line(&format!(
                "{} audit chain of {source}: {} entries, head {} {}",
                out.paint("OK", crate::out::Style::Good),
                v["entries"],
                v["head_seq"],
                v["head_hash"].as_str().unwrap_or_default()
            ));
        } else {
            out.line(&format!(
                "{} {source}: {}",
                out.paint("TAMPERED", crate::out::Style::Bad),
                v["message"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(if ok { exit::SUCCESS } else { exit::TAMPERED })
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<pkg::PublicKey>, CliError> {
    paths
        .iter()
        .map(|k| pkg::PublicKey::from_file(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::cli_util::package_error(&e))
}

/// One line of a witness file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WitnessLine {
    format: String,
    seq: i64,
    hash: String,
    payload: String,
    signature: String,
}

fn witness_lines(path: &Path) -> Result<Vec<WitnessLine>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::input(
                format!("failed to read the witness file {}: {e}", path.display()),
                "pass the file `slipway audit checkpoint --witness` writes",
            ));
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                CliError::new(
                    exit::TAMPERED,
                    format!(
                        "failed to read the witness file {} line {}: {e}",
                        path.display(),
                        i + 1
                    ),
                    Some("the witness file was damaged or edited; keep it and investigate".into()),
                )
            })
        })
        .collect()
}

/// Every checkpoint in the store and the witness files whose signature a trusted key
/// makes: one that names a trusted key but does not verify is a forgery (exit 7); one by
/// another key proves nothing and is left out.
async fn trusted_anchors(
    store: &dyn Store,
    witnesses: &[PathBuf],
    keys: &[pkg::PublicKey],
) -> Result<Vec<AnchorPayload>, CliError> {
    let mut all: Vec<(String, Anchor)> = store
        .anchors()
        .await
        .map_err(CliError::from)?
        .into_iter()
        .map(|a| (format!("the store's checkpoint of entry {}", a.seq), a))
        .collect();
    for w in witnesses {
        for l in witness_lines(w)? {
            all.push((
                format!("{}'s checkpoint of entry {}", w.display(), l.seq),
                Anchor {
                    seq: l.seq,
                    hash: l.hash,
                    payload: l.payload,
                    signature: l.signature,
                },
            ));
        }
    }
    signed_by(all, keys)
}

/// The checkpoints of `all` (each with where it was found) whose signature one of `keys`
/// makes; one that names a trusted key but does not verify is a forgery (exit 7).
fn signed_by(
    all: Vec<(String, Anchor)>,
    keys: &[pkg::PublicKey],
) -> Result<Vec<AnchorPayload>, CliError> {
    let mut out = Vec::new();
    for (what, a) in all {
        let forged = |why: String| {
            CliError::new(
                exit::TAMPERED,
                format!("failed to verify {what}: {why}"),
                Some("a checkpoint was forged or edited; keep the store and the witness files and investigate".into()),
            )
        };
        match pkg::sign::verify_bytes(
            a.payload.as_bytes(),
            Path::new("checkpoint"),
            &a.signature,
            Path::new("checkpoint.minisig"),
            keys,
        ) {
            Ok(_) => {}
            // Signed by a key nobody trusts here: it proves nothing either way.
            Err(pkg::Error::UntrustedKey { .. }) => continue,
            Err(e) => return Err(forged(format!("its signature does not verify: {e}"))),
        }
        let p = AnchorPayload::parse(&a.payload)
            .map_err(|e| forged(format!("its payload is not a checkpoint: {e}")))?;
        if (p.seq, p.hash.as_str()) != (a.seq, a.hash.as_str()) {
            return Err(forged(
                "its row names another head than its signed payload".into(),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// A checkpoint signed (or found already signed) and every checkpoint the store keeps
/// after it: what the witnesses are brought up to.
struct Signed {
    anchor: Anchor,
    new: bool,
    payload: AnchorPayload,
    all: Vec<Anchor>,
}

/// Sign the head of the store `arg` names, after verifying it.
async fn checkpoint_store(arg: &StoreArg, sk: &pkg::SecretKey) -> Result<Signed, CliError> {
    // Signing a checkpoint vouches for the whole chain: the signer must be able to read
    // all of it (viewer on `*`), as a verified person.
    let (store, _) = crate::cli_util::open_store_to_read(arg, "checkpoint the audit chain").await?;
    let store = store.as_ref();
    let mine = trusted_anchors(store, &[], &[sk.public_key()]).await?;
    let start = store.audit_start().await.map_err(CliError::from)?;
    // Only what was added since the newest checkpoint of this key is verified (a chain
    // that does not verify is never signed: that would launder the tampering); the
    // whole live chain when there is none, or the live start moved past it.
    let prev = mine
        .iter()
        .filter(|p| p.seq > start.0 && p.start_seq == start.0)
        .max_by_key(|p| p.seq);
    let anchors = Anchors::new(&mine);
    let verified = match prev {
        Some(p) => evidence::verify_chain_since(store, &(p.seq, p.hash.clone()))
            .await
            .map_err(CliError::from)?,
        None => {
            evidence::verify_store_anchored(store, &anchors)
                .await
                .map_err(CliError::from)?
                .result
        }
    };
    let v = verified.map_err(|b| {
        CliError::new(
            exit::TAMPERED,
            format!("failed to sign a checkpoint: the audit chain does not verify: {b}"),
            Some("nothing was signed; investigate with `slipway audit verify --pubkey KEY`".into()),
        )
    })?;
    let payload = AnchorPayload {
        seq: v.head_seq,
        hash: v.head_hash.clone(),
        entries: v.head_seq - start.0,
        start_seq: start.0,
        start_hash: start.1.clone(),
        at: slipway_stdx::now().to_string(),
    };
    let existing = store
        .anchors()
        .await
        .map_err(CliError::from)?
        .into_iter()
        .find(|x| x.seq == payload.seq && x.hash == payload.hash);
    let (anchor, new) = match existing {
        Some(x) => (x, false),
        None => (
            crate::audit_view::sign_anchor(store, sk, &payload).await?,
            true,
        ),
    };
    let all = store.anchors().await.map_err(CliError::from)?;
    Ok(Signed {
        anchor,
        new,
        payload,
        all,
    })
}

/// Refuse to sign: the chain does not verify (nothing was signed).
fn unsigned(why: impl std::fmt::Display) -> CliError {
    CliError::new(
        exit::TAMPERED,
        format!("failed to sign a checkpoint: {why}"),
        Some("nothing was signed; investigate with `slipway audit verify --pubkey KEY`".into()),
    )
}

/// `slipway --server URL audit checkpoint`: the key stays on this machine. The server
/// vouches that the records its chain covers hold (`/audit/verify`); the chain itself is
/// exported and verified here, from where it starts, and held to every checkpoint of this
/// key the server keeps — a signature vouches for what its signer checked, not for what a
/// server says. The signed checkpoint is then kept by the server (`POST /audit/anchors`,
/// admin on `*`).
async fn checkpoint_remote(
    c: &slipway_server::client::Client,
    sk: &pkg::SecretKey,
) -> Result<Signed, CliError> {
    use slipway_server::client::ClientError;
    match c.get("/audit/verify").await {
        Ok(_) => {}
        Err(ClientError::Api {
            status: 409, body, ..
        }) => {
            return Err(unsigned(format!(
                "the audit chain of {} does not verify: {}",
                c.server(),
                body["message"].as_str().unwrap_or_default()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let doc = c.get("/audit/anchors").await?;
    let bad = |e: &dyn std::fmt::Display| crate::run_remote::unexpected(c, e);
    let start: (i64, String) = (
        doc["start"]["seq"]
            .as_i64()
            .ok_or_else(|| bad(&"no start"))?,
        doc["start"]["hash"]
            .as_str()
            .ok_or_else(|| bad(&"no start"))?
            .to_owned(),
    );
    let stored: Vec<Anchor> =
        serde_json::from_value(doc["anchors"].clone()).map_err(|e| bad(&e))?;
    let bytes = c.get_bytes("/audit/export").await?;
    let text = String::from_utf8(bytes).map_err(|e| bad(&e))?;
    let (header, entries) = audit::parse_jsonl(&text).map_err(|e| unsigned(&e))?;
    let v = audit::verify_from(
        &entries,
        (start.0, &start.1),
        Some((header.head_seq, &header.head_hash)),
    )
    .map_err(|b| unsigned(format!("the audit chain does not verify: {b}")))?;
    let labelled = stored
        .iter()
        .map(|a| {
            (
                format!("{}'s checkpoint of entry {}", c.server(), a.seq),
                a.clone(),
            )
        })
        .collect();
    for p in signed_by(labelled, &[sk.public_key()])?
        .iter()
        .filter(|p| p.start_seq == start.0 && p.seq > start.0)
    {
        if !entries.iter().any(|e| e.seq == p.seq && e.hash == p.hash) {
            return Err(unsigned(format!(
                "the audit chain no longer holds entry {} as this key signed it",
                p.seq
            )));
        }
    }
    let payload = AnchorPayload {
        seq: v.head_seq,
        hash: v.head_hash.clone(),
        entries: v.head_seq - start.0,
        start_seq: start.0,
        start_hash: start.1.clone(),
        at: slipway_stdx::now().to_string(),
    };
    let mut all = stored;
    if let Some(x) = all
        .iter()
        .find(|x| x.seq == payload.seq && x.hash == payload.hash)
    {
        return Ok(Signed {
            anchor: x.clone(),
            new: false,
            payload,
            all,
        });
    }
    let line = payload.line();
    let signature = pkg::sign::sign_bytes(line.as_bytes(), Path::new("checkpoint"), sk, &line)
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let anchor = Anchor {
        seq: payload.seq,
        hash: payload.hash.clone(),
        payload: line,
        signature,
    };
    let (_, added) = c.post("/audit/anchors", &json!(anchor)).await?;
    all.push(anchor.clone());
    Ok(Signed {
        anchor,
        new: added["added"] != json!(false),
        payload,
        all,
    })
}

/// Run `slipway audit checkpoint`.
fn checkpoint(a: CheckpointArgs, out: &Output) -> Result<i32, CliError> {
    let pw = crate::cli_util::password_from_env(a.password_env.as_deref())?;
    let sk = pkg::SecretKey::from_file(&a.key, pw.as_deref())
        .map_err(|e| crate::cli_util::package_error(&e))?;
    let rt = runtime()?;
    rt.block_on(async {
        let signed = match crate::cli_util::remote()? {
            Some(c) => checkpoint_remote(&c, &sk).await?,
            None => checkpoint_store(&a.store, &sk).await?,
        };
        // Witnesses get every checkpoint of the store they lack, so a witness added later
        // (or one that missed a run) catches up.
        let Signed { anchor, new, payload, all } = signed;
        let mut appended = Vec::new();
        for w in &a.witness {
            let have: std::collections::HashSet<(i64, String)> = witness_lines(w)?
                .into_iter()
                .map(|l| (l.seq, l.hash))
                .collect();
            let mut text = String::new();
            for x in all.iter().filter(|x| !have.contains(&(x.seq, x.hash.clone()))) {
                let l = WitnessLine {
                    format: evidence::ANCHOR_FORMAT.to_owned(),
                    seq: x.seq,
                    hash: x.hash.clone(),
                    payload: x.payload.clone(),
                    signature: x.signature.clone(),
                };
                text.push_str(&serde_json::to_string(&l).unwrap_or_default());
                text.push('\n');
            }
            if !text.is_empty() {
                append_durably(w, &text)?;
            }
            appended.push(json!({"witness": w, "appended": text.lines().count()}));
        }
        let mut sent = Vec::new();
        if new {
            let settings = slipway_govern::notify::NotifySettings {
                webhook_secret: std::env::var(slipway_govern::notify::SECRET_ENV).ok(),
                ..Default::default()
            };
            let body = json!({"format": evidence::ANCHOR_FORMAT, "seq": anchor.seq,
                "hash": anchor.hash, "payload": anchor.payload, "signature": anchor.signature})
            .to_string();
            for url in &a.webhook {
                let (attempts, error) = slipway_govern::notify::post_json(url, &body, &settings).await;
                sent.push(json!({"webhook": slipway_model::text::mask_url(url), "attempts": attempts, "error": error}));
            }
        }
        let failed = sent.iter().any(|s| !s["error"].is_null());
        if out.json() {
            out.json_value(&json!({"anchored": new, "seq": payload.seq, "hash": payload.hash,
                "entries": payload.entries, "start_seq": payload.start_seq, "key": sk.key_id(),
                "witnesses": appended, "webhooks": sent}));
        } else {
            out.line(&format!(
                "{} head {} {} ({} live entries) signed with key {}",
                if new { "checkpoint:" } else { "already checkpointed:" },
                payload.seq,
                payload.hash,
                payload.entries,
                sk.key_id()
            ));
            for w in &appended {
                out.line(&format!("  witness {}: {} line(s) appended", w["witness"].as_str().unwrap_or_default(), w["appended"]));
            }
            for s in &sent {
                match s["error"].as_str() {
                    None => out.line(&format!("  webhook {}: sent", s["webhook"].as_str().unwrap_or_default())),
                    Some(e) => out.line(&format!("  webhook {}: NOT sent: {e}", s["webhook"].as_str().unwrap_or_default())),
                }
            }
        }
        Ok(if failed { exit::FAILURE } else { exit::SUCCESS })
    })
}

/// Append to a witness file and fsync it: a checkpoint that is not durable there proves
/// nothing after a crash.
fn append_durably(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| {
        CliError::new(
            exit::FAILURE,
            format!(
                "failed to append to the witness file {}: {e}",
                path.display()
            ),
            Some("check the path exists on writable storage".into()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

fn export(a: ExportArgs, out: &Output) -> Result<i32, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let (text, entries) = match crate::cli_util::remote()? {
            // Through a server: its chain, exported there (`GET /api/v1/audit/export`,
            // viewer on `*`), the same file a local export writes.
            Some(c) => {
                let bytes = c.get_bytes("/audit/export").await?;
                let text = String::from_utf8(bytes)
                    .map_err(|e| crate::run_remote::unexpected(&c, &e))?;
                let (_, entries) = audit::parse_jsonl(&text)
                    .map_err(|e| crate::run_remote::unexpected(&c, &e))?;
                (text, entries)
            }
            None => {
                let (store, _) =
                    crate::cli_util::open_store_to_read(&a.store, "read the audit chain").await?;
                let entries = store.audit_entries().await.map_err(CliError::from)?;
                (audit::export_jsonl(&entries), entries)
            }
        };
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
