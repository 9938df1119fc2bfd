//! Retention and archive through the real binary: closed runs and the old audit chain move
//! into a signed bundle, the live store keeps a checkpoint, and `audit verify` passes over
//! the live store alone and with the bundle; a changed bundle, a wrong key or an edited
//! live row is refused with exit 7; a run still waiting is never archived; a crash between
//! writing the bundle and pruning loses nothing. The archive, its verification and the
//! crash run on SQLite and PostgreSQL alike (`…_on_postgres`).

use std::path::{Path, PathBuf};

use crate::slipway;

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    spec: PathBuf,
    store: String,
    db: PathBuf,
    /// The PostgreSQL database, when the store is one.
    pg: Option<String>,
}

impl Env {
    /// A fresh store: an SQLite file in a temp dir, or a database on the binary's
    /// PostgreSQL server (`postgres`).
    fn on(postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let spec = d.join("release.yaml");
        std::fs::write(
            &spec,
            "apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: patch }
services:
  api: { steps: [ { name: install, run: \"true\", undo: \"true\" } ] }
environments:
  staging: { target: { exec: {} } }
  prod: { target: { exec: {} }, approvals: { required: 1 } }
",
        )
        .unwrap();
        let db = d.join("s.db");
        let pg = postgres.then(|| crate::postgres_store_cli::pg::pg().new_db("archive"));
        Self {
            store: pg
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", db.display())),
            pg,
            db,
            spec,
            dir: d,
            _dir: dir,
        }
    }

    /// Where `slipway archive` writes bundles by default: beside an SQLite file, under
    /// `.slipway/` of the working directory for PostgreSQL.
    fn archive_dir(&self) -> PathBuf {
        match self.pg {
            Some(_) => self.dir.join(".slipway/archive"),
            None => self.dir.join("archive"),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        slipway()
            .current_dir(&self.dir)
            .env("SLIPWAY_STORE", &self.store)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn deploy(&self, env: &str) -> std::process::Output {
        let spec = self.spec.display().to_string();
        self.run(&[
            "deploy",
            "--env",
            env,
            "--no-wait",
            "--output",
            "json",
            "-f",
            &spec,
        ])
    }

    /// Change the store behind slipway's back (sqlite3 or psql).
    fn sql(&self, sql: &str) {
        if let Some(url) = &self.pg {
            let pg = crate::postgres_store_cli::pg::pg();
            pg.psql(crate::postgres_store_cli::pg::db_name(url), sql);
            return;
        }
        let o = std::process::Command::new("sqlite3")
            // Wait for a lock the store holds instead of failing at once with "database is
            // locked", as any other SQLite client of the store would.
            .args(["-cmd", ".timeout 10000"])
            .arg(&self.db)
            .arg(sql)
            .output()
            .expect("the sqlite3 CLI");
        assert!(o.status.success(), "{o:?}");
    }

    fn keys(&self, name: &str) -> (String, String) {
        let sk = self.dir.join(format!("{name}.key"));
        let pk = self.dir.join(format!("{name}.pub"));
        let o = slipway()
            .args(["key", "generate", "--unencrypted", "--secret-key"])
            .arg(&sk)
            .arg("--public-key")
            .arg(&pk)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        (sk.display().to_string(), pk.display().to_string())
    }

    fn live_policy(&self) {
        for kind in ["runs", "journal", "approvals", "checks", "audit"] {
            self.ok(&["retention", "set", kind, "--live", "0d", "--keep", "7y"]);
        }
    }

    fn history(&self) -> Vec<String> {
        let v = self.ok(&["history", "--output", "json"]);
        v.as_array()
            .or_else(|| v["runs"].as_array())
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn run_id(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Two closed runs around one still waiting for approval.
fn seeded() -> (Env, String, String, String) {
    seeded_on(false)
}

fn seeded_on(postgres: bool) -> (Env, String, String, String) {
    let e = Env::on(postgres);
    let a = e.deploy("staging");
    assert_eq!(a.status.code(), Some(0), "{a:?}");
    let w = e.deploy("prod");
    assert_eq!(w.status.code(), Some(3), "waits for an approval: {w:?}");
    let b = e.deploy("staging");
    assert_eq!(b.status.code(), Some(0), "{b:?}");
    (e, run_id(&a), run_id(&w), run_id(&b))
}

#[test]
fn archive_prunes_closed_runs_and_the_chain_verifies_live_and_with_the_bundle() {
    archive_prunes_closed_runs(false);
}

#[test]
fn archive_prunes_closed_runs_and_the_chain_verifies_live_and_with_the_bundle_on_postgres() {
    archive_prunes_closed_runs(true);
}

fn archive_prunes_closed_runs(postgres: bool) {
    let (e, a, w, b) = seeded_on(postgres);
    let (sk, pk) = e.keys("archive");

    // The default policy keeps runs live 90 days: nothing this young leaves.
    let v = e.ok(&[
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    assert_eq!(v["archived"], false, "{v}");

    e.live_policy();
    let v = e.ok(&[
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    assert_eq!(v["archived"], true, "{v}");
    let runs: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(runs, [a.as_str(), b.as_str()], "only the closed runs: {v}");
    // The chain prefix stops before the waiting run's first entry.
    let end = v["checkpoint"]["end_seq"].as_i64().unwrap();
    assert!(end > 0, "{v}");
    let bundle = v["bundle"].as_str().unwrap().to_owned();
    assert!(Path::new(&bundle).exists());
    assert!(Path::new(&format!("{bundle}.minisig")).exists());

    assert_eq!(e.history(), [w], "the waiting run stays live");
    let o = e.run(&["status", &a]);
    assert_ne!(o.status.code(), Some(0), "an archived run is gone: {o:?}");

    // Live alone: the chain starts at the checkpoint.
    let v = e.ok(&["audit", "verify", "--output", "json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["from_seq"].as_i64(), Some(end), "{v}");
    // Live + archive: one chain from genesis.
    let v = e.ok(&[
        "audit",
        "verify",
        "--archive",
        &bundle,
        "--pubkey",
        &pk,
        "--output",
        "json",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["from_seq"].as_i64(), Some(0), "{v}");
    let head = v["head_seq"].as_i64().unwrap();
    assert_eq!(v["entries"].as_i64(), Some(head), "every entry once: {v}");

    // The store keeps working after the prune: the chain goes on from its head.
    let o = e.deploy("staging");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    e.ok(&["audit", "verify"]);
    e.ok(&["audit", "verify", "--archive", &bundle, "--pubkey", &pk]);

    // The bundle holds the runs, their journal and the audit prefix.
    let tar = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{bundle}' | tar -tf -"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    for f in [
        "manifest.json",
        "runs.jsonl",
        "journal.jsonl",
        "approvals.jsonl",
        "checks.jsonl",
        "audit.jsonl",
    ] {
        assert!(listing.contains(f), "{f} missing from {listing}");
    }

    // An edited live row still fails, with the checkpoint in place.
    e.sql(&format!(
        "UPDATE audit SET outcome = 'forged' WHERE seq = {}",
        end + 2
    ));
    let o = e.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let o = e.run(&["audit", "verify", "--archive", &bundle, "--pubkey", &pk]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("entry {}", end + 2)),
        "{o:?}"
    );
}

#[test]
fn a_changed_bundle_or_a_wrong_key_is_refused() {
    let (e, _, _, _) = seeded();
    let (sk, pk) = e.keys("archive");
    let (_, other_pk) = e.keys("other");
    e.live_policy();
    let v = e.ok(&[
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    let bundle = v["bundle"].as_str().unwrap().to_owned();

    let o = e.run(&[
        "audit",
        "verify",
        "--archive",
        &bundle,
        "--pubkey",
        &other_pk,
    ]);
    assert_eq!(o.status.code(), Some(7), "another key: {o:?}");
    assert!(stderr(&o).contains("signature"), "{}", stderr(&o));

    // A flipped byte breaks the signature.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let original = bytes.clone();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x40;
    std::fs::write(&bundle, &bytes).unwrap();
    let o = e.run(&["audit", "verify", "--archive", &bundle, "--pubkey", &pk]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(stderr(&o).contains("signature"), "{}", stderr(&o));

    // Someone with the key re-signs a changed bundle: its digest matches no checkpoint.
    let o = slipway()
        .args(["sign", &bundle, "--key", &sk])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = e.run(&["audit", "verify", "--archive", &bundle, "--pubkey", &pk]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("matches no checkpoint") || err.contains("bundle"),
        "{err}"
    );

    // The original bytes with a valid signature verify again.
    std::fs::write(&bundle, &original).unwrap();
    let o = slipway()
        .args(["sign", &bundle, "--key", &sk])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    e.ok(&["audit", "verify", "--archive", &bundle, "--pubkey", &pk]);

    // A FIFO named as a bundle, with a signature beside it, is refused at once: nothing
    // ever writes to it, so a reader that opened it would wait for ever.
    let fifo = e.dir.join("fifo.tar.zst");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::copy(
        format!("{bundle}.minisig"),
        format!("{}.minisig", fifo.display()),
    )
    .unwrap();
    let o = slipway()
        .env("SLIPWAY_STORE", &e.store)
        .args(["audit", "verify", "--archive"])
        .arg(&fifo)
        .args(["--pubkey", &pk])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "refused, not blocked: {o:?}"
    );
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
}

#[test]
fn a_crash_between_the_bundle_and_the_prune_loses_nothing_and_a_rerun_finishes() {
    a_crash_before_the_prune(false);
}

#[test]
fn a_crash_between_the_bundle_and_the_prune_loses_nothing_on_postgres() {
    a_crash_before_the_prune(true);
}

fn a_crash_before_the_prune(postgres: bool) {
    let (e, a, w, b) = seeded_on(postgres);
    let (sk, pk) = e.keys("archive");
    e.live_policy();
    // Inside the prune's transaction first: nothing of it is kept.
    let o = slipway()
        .current_dir(&e.dir)
        .env("SLIPWAY_STORE", &e.store)
        .env("SLIPWAY_FAULT", "archive-inside-prune")
        .args(["archive", "--before", "2100-01-01", "--key", &sk])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault aborts: {o:?}");
    assert_eq!(e.history().len(), 3, "nothing was pruned");
    e.ok(&["audit", "verify"]);
    for p in std::fs::read_dir(e.archive_dir()).unwrap() {
        std::fs::remove_file(p.unwrap().path()).unwrap();
    }
    let o = slipway()
        .current_dir(&e.dir)
        .env("SLIPWAY_STORE", &e.store)
        .env("SLIPWAY_FAULT", "archive-before-prune")
        .args(["archive", "--before", "2100-01-01", "--key", &sk])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault aborts: {o:?}");
    let written: Vec<PathBuf> = std::fs::read_dir(e.archive_dir())
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .collect();
    assert_eq!(written.len(), 1, "the bundle was written before the crash");
    let crashed = std::fs::read(&written[0]).unwrap();

    // Nothing was pruned, and the chain is whole.
    let mut live = e.history();
    live.sort();
    let mut all = vec![a.clone(), w, b];
    all.sort();
    assert_eq!(live, all);
    e.ok(&["audit", "verify"]);

    let v = e.ok(&[
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    assert_eq!(v["archived"], true, "{v}");
    let bundle = v["bundle"].as_str().unwrap();
    assert_eq!(
        Path::new(bundle),
        written[0],
        "the re-run rebuilds the same bundle"
    );
    assert_eq!(std::fs::read(bundle).unwrap(), crashed, "byte for byte");
    assert!(!e.history().contains(&a));
    e.ok(&["audit", "verify", "--archive", bundle, "--pubkey", &pk]);
}

/// A forged archive checkpoint: to hide a run, a writer of the database deletes the live
/// chain's start and the run, records a checkpoint saying an archive took them, and appends
/// a correctly hashed entry committing to it (carrying the other records forward). Without
/// a key nothing can tell; against the checkpoint `slipway archive` signed of the real
/// start, `audit verify --pubkey` refuses (exit 7). A checkpoint row inserted without any
/// entry is named even without a key.
#[test]
fn a_forged_archive_checkpoint_is_caught() {
    use crate::evidence_cli::{Db, rehash};
    use slipway_engine::audit::AuditEntry;
    let (e, _, _, _) = seeded();
    let (sk, pk) = e.keys("archive");
    e.live_policy();
    e.ok(&["archive", "--before", "2100-01-01", "--key", &sk]);
    let hidden = run_id(&e.deploy("staging"));
    e.ok(&["audit", "verify", "--pubkey", &pk]);
    let db = Db::Sqlite(e.db.clone());
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        let o = e.run(&args);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        (o.status.code(), text)
    };

    // A checkpoint row alone: not in the chain.
    let backup = e.dir.join("pristine.db");
    db.sql(&format!("VACUUM INTO '{}'", backup.display()));
    db.sql("INSERT INTO records (kind, key, data, nonce, seq) SELECT kind, '7', data, nonce, seq FROM records WHERE kind = 'archive_checkpoint'");
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(7), "{text}");
    assert!(
        text.contains("archive_checkpoint record `7` was inserted"),
        "{text}"
    );
    std::fs::copy(&backup, &e.db).unwrap();
    let _ = std::fs::remove_file(e.db.with_extension("db-wal"));
    let _ = std::fs::remove_file(e.db.with_extension("db-shm"));

    // The whole forgery: a prefix can only go whole, so every live run goes with it (the
    // hidden one and the one still waiting).
    let gone: Vec<String> = db
        .sql("SELECT id FROM runs ORDER BY id")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(gone.contains(&hidden), "{gone:?}");
    let live = db.entries();
    let last = live.last().unwrap().clone();
    let cp1: serde_json::Value = serde_json::from_str(
        db.sql("SELECT data FROM records WHERE kind = 'archive_checkpoint' AND key = '1'")
            .trim(),
    )
    .unwrap();
    let cp2 =
        serde_json::json!({"id": 2, "start_seq": cp1["end_seq"], "start_hash": cp1["end_hash"],
        "end_seq": last.seq, "end_hash": last.hash, "bundle_sha256": "0".repeat(64),
        "bundle_name": "slipway-archive-forged.tar.zst", "before": "2100-01-01",
        "runs": gone, "created_at": last.at})
        .to_string();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(
        &std::process::Command::new("sqlite3")
            .arg("-json")
            .arg(&e.db)
            .arg("SELECT kind, key, nonce, data FROM records WHERE kind <> 'archive_checkpoint' OR key = '1'")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut refs: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            serde_json::json!({"kind": s("kind"), "key": s("key"),
                "sha256": slipway_engine::evidence::record_commitment(&s("kind"), &s("key"), &s("nonce"), &s("data"))})
        })
        .collect();
    refs.push(serde_json::json!({"kind": "archive_checkpoint", "key": "2",
        "sha256": slipway_engine::evidence::record_commitment("archive_checkpoint", "2", "00", &cp2)}));
    let detail = serde_json::json!({"event": "governance", "action": "archived",
        "detail": {"run_ids": gone, "records": refs}})
    .to_string();
    let mut forged = vec![
        last.clone(),
        AuditEntry {
            seq: last.seq + 1,
            at: last.at.clone(),
            actor: last.actor.clone(),
            action: "governance".into(),
            run_id: String::new(),
            digest: String::new(),
            outcome: "archived".into(),
            detail,
            prev_hash: String::new(),
            hash: String::new(),
            v: 2,
        },
    ];
    rehash(&mut forged, 1);
    db.rewrite(last.seq + 1, &forged[1..]);
    db.sql(&format!(
        "DELETE FROM audit WHERE seq <= {}; DELETE FROM runs;
         UPDATE records SET seq = {}; INSERT INTO records (kind, key, data, nonce, seq) VALUES ('archive_checkpoint', '2', '{}', '00', {});",
        last.seq,
        last.seq + 1,
        cp2.replace('\'', "''"),
        last.seq + 1
    ));
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(0), "without a key the forgery passes: {text}");
    assert!(e.history().is_empty());
    let (code, text) = verify(&["--pubkey", &pk]);
    assert_eq!(code, Some(7), "{text}");
    assert!(
        text.contains(&format!(
            "the live audit chain starts after entry {}",
            last.seq
        )) && text.contains("archive checkpoint was forged"),
        "{text}"
    );
}
