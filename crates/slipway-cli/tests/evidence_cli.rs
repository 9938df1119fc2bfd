//! Evidence that verifies, through the real binary, on SQLite (edited with the real
//! `sqlite3`) and on PostgreSQL (edited with the real `psql`): every kind of record a gate,
//! `status`, `logs` or a report reads — runs (state, plan, author), journal entries (steps,
//! approvals, the rollback reason), access grants, tokens and reviews — edited, deleted,
//! inserted or reordered is named by `audit verify` (exit 7) and refused by the reports
//! (exit 7). Against a signed checkpoint (`audit checkpoint`), a chain re-hashed after an
//! edit and a truncated tail are caught, also when the checkpoint rows were deleted from the
//! database and only the witness file keeps them — while the same forgeries pass a verify
//! without the key, which is why the checkpoint exists.

use std::path::{Path, PathBuf};
use std::process::Output;

use slipway_engine::audit::AuditEntry;

use crate::postgres_store_cli::pg::{self, pg};
use crate::slipway;

const SPEC: &str = r#"apiVersion: slipway/v1
kind: Release
metadata: { name: shop, version: 1.0.0, type: hotfix }
services:
  api:
    steps:
      - { name: install, run: "true", undo: "true" }
      - { name: migrate, run: "test ! -f FAIL", undo: "true" }
environments:
  staging: { target: { exec: {} } }
  prod: { production: true, target: { exec: {} } }
"#;

/// A store on either backend.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(PathBuf),
    /// The URL (with the test server's password).
    Pg(String),
}

impl Db {
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{}", p.display()),
            Self::Pg(u) => u.clone(),
        }
    }

    /// Run SQL with the backend's own CLI; its output.
    pub(crate) fn sql(&self, sql: &str) -> String {
        match self {
            Self::Sqlite(p) => {
                let o = std::process::Command::new("sqlite3")
                    .args(["-cmd", ".timeout 10000"])
                    .arg(p)
                    .arg(sql)
                    .output()
                    .expect("the sqlite3 CLI is installed");
                assert!(o.status.success(), "{sql}: {o:?}");
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
            Self::Pg(u) => pg().psql(pg::db_name(u), sql),
        }
    }

    /// A copy of the store to tamper with.
    fn copy(&self, name: &str, dir: &Path) -> Db {
        match self {
            Self::Sqlite(_) => {
                let to = dir.join(format!("{name}.db"));
                self.sql(&format!("VACUUM INTO '{}'", to.display()));
                Self::Sqlite(to)
            }
            Self::Pg(u) => {
                let url = pg().new_db(name);
                let db = pg::db_name(&url).to_owned();
                pg().psql("postgres", &format!("DROP DATABASE \"{db}\""));
                pg().psql(
                    "postgres",
                    &format!("CREATE DATABASE \"{db}\" TEMPLATE \"{}\"", pg::db_name(u)),
                );
                Self::Pg(url)
            }
        }
    }

    fn scalar(&self, sql: &str) -> String {
        self.sql(sql).trim().to_owned()
    }

    /// The audit rows, as entries.
    pub(crate) fn entries(&self) -> Vec<AuditEntry> {
        let cols =
            "seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv AS v";
        let text = match self {
            Self::Sqlite(p) => {
                let o = std::process::Command::new("sqlite3")
                    .arg("-json")
                    .arg(p)
                    .arg(format!("SELECT {cols} FROM audit ORDER BY seq"))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
            Self::Pg(_) => self.sql(&format!(
                "SELECT coalesce(json_agg(t ORDER BY seq), '[]') FROM (SELECT {cols} FROM audit) t"
            )),
        };
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&text).unwrap()
    }

    /// Replace the rows from `entries[0].seq` on with `entries` and record their head: what
    /// a forger with write access to the database does after re-hashing.
    pub(crate) fn rewrite(&self, from_seq: i64, entries: &[AuditEntry]) {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = format!("BEGIN; DELETE FROM audit WHERE seq >= {from_seq};");
        for e in entries {
            sql.push_str(&format!(
                "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {});",
                e.seq,
                q(&e.at),
                q(&e.actor),
                q(&e.action),
                q(&e.run_id),
                q(&e.digest),
                q(&e.outcome),
                q(&e.detail),
                q(&e.prev_hash),
                q(&e.hash),
                e.v
            ));
        }
        let head = self.entries_after_write_head(entries);
        sql.push_str(&format!(
            "UPDATE meta SET value = {} WHERE key = 'audit_head'; COMMIT;",
            q(&head)
        ));
        self.sql(&sql);
    }

    fn entries_after_write_head(&self, written: &[AuditEntry]) -> String {
        let e = written.last().unwrap();
        format!("{}:{}", e.seq, e.hash)
    }
}

/// Re-link and re-hash `entries` from index `from` on (each entry's link is the previous
/// one's new hash): a forger's tool, since the hash function has no secret.
pub(crate) fn rehash(entries: &mut [AuditEntry], from: usize) {
    for i in from..entries.len() {
        if i > 0 {
            entries[i].prev_hash = entries[i - 1].hash.clone();
        }
        entries[i].hash = entries[i].compute_hash();
    }
}

/// A test's directory with the spec, and a store on `db`.
struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    db: Db,
    /// Each person's API token (access control is on from the first grant).
    tokens: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Env {
    fn new(sqlite: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        std::fs::write(d.join("release.yaml"), SPEC).unwrap();
        let db = if sqlite {
            Db::Sqlite(d.join("s.db"))
        } else {
            Db::Pg(pg().new_db("evidence"))
        };
        Self {
            _dir: dir,
            dir: d,
            db,
            tokens: Default::default(),
        }
    }

    fn run_on(&self, db: &Db, user: &str, args: &[&str]) -> Output {
        let mut cmd = slipway();
        match self.tokens.borrow().get(user) {
            Some(t) => cmd.env("SLIPWAY_TOKEN", t),
            None => cmd.env_remove("SLIPWAY_TOKEN"),
        };
        cmd.current_dir(&self.dir)
            .env("SLIPWAY_STORE", db.url())
            .args(args)
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap()
    }

    fn ok(&self, user: &str, args: &[&str]) -> serde_json::Value {
        let o = self.run_on(&self.db, user, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A store with an approved production run, a rolled-back staging run, grants, a
    /// token and an access review: every kind of record the reports and gates read.
    fn populate(&self) -> (String, String) {
        // Access control on: alice is the first admin (grant 1, her token printed), bob
        // approves in prod (grant 2), the auditor reads; each signs in with a token.
        let v = self.ok(
            "alice",
            &[
                "access",
                "grant",
                "user:alice",
                "admin",
                "--env",
                "*",
                "--output",
                "json",
            ],
        );
        let token = v["token"].as_str().unwrap().to_owned();
        self.tokens.borrow_mut().insert("alice".into(), token);
        for (who, role, env) in [("bob", "approver", "prod"), ("auditor", "viewer", "*")] {
            self.ok(
                "alice",
                &[
                    "access",
                    "grant",
                    &format!("user:{who}"),
                    role,
                    "--env",
                    env,
                ],
            );
            let v = self.ok(
                "alice",
                &[
                    "access", "token", "create", "--user", who, "--output", "json",
                ],
            );
            let token = v["token"].as_str().unwrap().to_owned();
            self.tokens.borrow_mut().insert(who.into(), token);
        }
        let deploy = |env: &str| {
            self.run_on(
                &self.db,
                "alice",
                &[
                    "deploy",
                    "-f",
                    "release.yaml",
                    "--env",
                    env,
                    "--no-wait",
                    "--output",
                    "json",
                ],
            )
        };
        let id = |o: &Output| {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
            v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned()
        };
        // A hotfix needs one approval in production: alice deploys, bob approves.
        let o = deploy("prod");
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let approved = id(&o);
        self.ok("bob", &["approve", &approved]);
        self.ok("alice", &["resume", &approved]);
        // A failing step: rolled back, with the reason in the journal.
        std::fs::write(self.dir.join("FAIL"), "").unwrap();
        let o = deploy("staging");
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        let rolled = id(&o);
        std::fs::remove_file(self.dir.join("FAIL")).unwrap();
        self.ok("alice", &["access", "review", "start", "q4"]);
        let v = self.ok("alice", &["audit", "verify", "--output", "json"]);
        assert_eq!(v["ok"], true, "{v}");
        (approved, rolled)
    }

    /// Tamper a copy of the store with `sql`; `audit verify` must name the record (exit 7,
    /// `names` in its output) and a report must refuse to be drawn from it (exit 7).
    fn tampered_is_named(&self, case: &str, sql: &str, names: &str) {
        let db = self.db.copy(case, &self.dir);
        db.sql(sql);
        // The auditor verifies: alice's own grant is among the records tampered with.
        let o = self.run_on(&db, "auditor", &["audit", "verify"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(7), "{case}: {text}");
        assert!(
            text.contains("TAMPERED") && text.contains(names),
            "{case}: `{names}` not in: {text}"
        );
        let o = self.run_on(&db, "auditor", &["report", "dora", "--since", "2000-01-01"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(7), "{case}: report: {o:?}");
        assert!(
            err.contains("does not verify") && err.contains(names),
            "{case}: report: {err}"
        );
    }
}

/// Every kind of record tampered on `backend`: named by verify, refused by reports.
fn every_kind_is_named(sqlite: bool) {
    let e = Env::new(sqlite);
    let (approved, rolled) = e.populate();
    let seq_of = |action: &str, more: &str| {
        e.db.scalar(&format!(
            "SELECT min(seq) FROM audit WHERE action = '{action}' {more}"
        ))
    };
    let approval = seq_of("approved", "");
    let step = seq_of("step_succeeded", "");
    let failed = seq_of("step_failed", "");
    let last = e.db.scalar("SELECT max(seq) FROM audit");

    // Runs: the change failure rate's input, the approved plan, who deployed.
    e.tampered_is_named(
        "run_state",
        &format!("UPDATE runs SET state = 'succeeded' WHERE id = '{rolled}'"),
        &format!("runs record `{rolled}` was edited: its state is succeeded"),
    );
    e.tampered_is_named(
        "run_plan",
        &format!("UPDATE runs SET plan_json = replace(plan_json, 'test ! -f FAIL', 'true') WHERE id = '{approved}'"),
        &format!("runs record `{approved}` was edited: its plan_json"),
    );
    e.tampered_is_named(
        "run_author",
        &format!("UPDATE runs SET author = 'op-someone' WHERE id = '{approved}'"),
        &format!("runs record `{approved}` was edited: its author"),
    );
    e.tampered_is_named(
        "run_deleted",
        &format!("DELETE FROM runs WHERE id = '{rolled}'"),
        &format!("runs record `{rolled}` was deleted"),
    );
    e.tampered_is_named(
        "run_inserted",
        &format!(
            "INSERT INTO runs (id, digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir)
             SELECT 'forged-run', digest, release, version, environment, author, state, override_reason, plan_json, created_at, updated_at, workdir FROM runs WHERE id = '{approved}'"
        ),
        "runs record `forged-run` was inserted",
    );
    // The journal: a step, the rollback reason, an approval slipped in, one removed, two
    // swapped.
    e.tampered_is_named(
        "step_edited",
        &format!("UPDATE audit SET detail = replace(detail, 'applied', 'already_done') WHERE seq = {step}"),
        &format!("audit entry {step} was edited"),
    );
    e.tampered_is_named(
        "reason_edited",
        &format!(
            "UPDATE audit SET detail = replace(detail, 'exit', 'timeout') WHERE seq = {failed}"
        ),
        &format!("audit entry {failed} was edited"),
    );
    e.tampered_is_named(
        "approval_inserted",
        &format!(
            "INSERT INTO audit (seq, at, actor, action, run_id, digest, outcome, detail, prev_hash, hash, hv)
             SELECT {last} + 1, at, 'op-mallory', action, run_id, digest, outcome, replace(detail, actor, 'op-mallory'), hash, hash, hv FROM audit WHERE seq = {approval}"
        ),
        &format!("audit entry {} was inserted", last.parse::<i64>().unwrap() + 1),
    );
    e.tampered_is_named(
        "approval_deleted",
        &format!("DELETE FROM audit WHERE seq = {approval}"),
        &format!("audit entry {approval} was deleted"),
    );
    e.tampered_is_named(
        "reordered",
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -3;",
        "audit entry 3 was reordered",
    );
    // Access: a role raised, a grant slipped in, one removed, a token's hash replaced, a
    // review decided by hand.
    e.tampered_is_named(
        "grant_edited",
        "UPDATE records SET data = replace(data, '\"approver\"', '\"admin\"') WHERE kind = 'access_grant' AND key = '2'",
        "access_grant record `2` was edited",
    );
    e.tampered_is_named(
        "grant_inserted",
        "INSERT INTO records (kind, key, data, nonce, seq) SELECT kind, '9', replace(data, 'user:bob', 'user:mallory'), nonce, seq FROM records WHERE kind = 'access_grant' AND key = '2'",
        "access_grant record `9` was inserted",
    );
    e.tampered_is_named(
        "grant_deleted",
        "DELETE FROM records WHERE kind = 'access_grant' AND key = '1'",
        "access_grant record `1` was deleted",
    );
    e.tampered_is_named(
        "token_edited",
        "UPDATE records SET data = replace(data, '$argon2id$', '$argon2id$x') WHERE kind = 'access_token' AND data LIKE '%\"user:bob\"%'",
        "access_token record",
    );
    e.tampered_is_named(
        "review_edited",
        "UPDATE records SET data = replace(data, '\"decision\":null', '\"decision\":\"confirm\"') WHERE kind = 'access_review'",
        "access_review record `q4` was edited",
    );
}

#[test]
fn every_kind_of_record_tampered_in_sqlite_is_named_and_refused() {
    every_kind_is_named(true);
}

#[test]
fn every_kind_of_record_tampered_in_postgres_is_named_and_refused() {
    every_kind_is_named(false);
}

/// A minisign key pair in `dir`: (secret, public).
pub(crate) fn keys(dir: &Path, name: &str) -> (String, String) {
    let sk = dir.join(format!("{name}.key"));
    let pk = dir.join(format!("{name}.pub"));
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

/// Re-hashing after an edit and cutting the tail fool a verify without the key, and are
/// caught against a signed checkpoint — from the witness file when the forger also
/// deleted the checkpoint rows.
fn checkpoints_catch_rehash_and_truncation(sqlite: bool) {
    let e = Env::new(sqlite);
    e.populate();
    let (sk, pk) = keys(&e.dir, "audit");
    let witness = e.dir.join("worm/checkpoints.jsonl");
    let w = witness.display().to_string();
    let v = e.ok(
        "auditor",
        &[
            "audit",
            "checkpoint",
            "--key",
            &sk,
            "--witness",
            &w,
            "--output",
            "json",
        ],
    );
    assert_eq!(v["anchored"], true, "{v}");
    let head: i64 = e.db.scalar("SELECT max(seq) FROM audit").parse().unwrap();
    assert_eq!(v["seq"], head, "{v}");
    // Idempotent: nothing new to sign, nothing appended twice.
    let again = e.ok(
        "auditor",
        &[
            "audit",
            "checkpoint",
            "--key",
            &sk,
            "--witness",
            &w,
            "--output",
            "json",
        ],
    );
    assert_eq!(again["anchored"], false, "{again}");
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap().lines().count(),
        1
    );
    // The signed line verifies with the real minisign.
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&witness)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let msg = e.dir.join("payload.txt");
    std::fs::write(&msg, line["payload"].as_str().unwrap()).unwrap();
    std::fs::write(
        e.dir.join("payload.txt.minisig"),
        line["signature"].as_str().unwrap(),
    )
    .unwrap();
    let m = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(&msg)
        .arg("-p")
        .arg(&pk)
        .output()
        .expect("minisign is installed");
    assert!(m.status.success(), "{m:?}");
    e.ok(
        "auditor",
        &["audit", "verify", "--pubkey", &pk, "--witness", &w],
    );

    let verify = |db: &Db, extra: &[&str]| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        let o = e.run_on(db, "auditor", &args);
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };

    // Re-hashed: an entry's detail edited and every hash after it recomputed.
    let db = e.db.copy("rehashed", &e.dir);
    let mut entries = db.entries();
    let i = entries
        .iter()
        .position(|x| x.action == "step_succeeded")
        .unwrap();
    entries[i].detail = entries[i].detail.replace("applied", "already_done");
    rehash(&mut entries, i);
    db.rewrite(entries[i].seq, &entries[i..]);
    let (code, text) = verify(&db, &[]);
    assert_eq!(code, Some(0), "without the key the forgery passes: {text}");
    let (code, text) = verify(&db, &["--pubkey", &pk]);
    assert_eq!(code, Some(7), "{text}");
    assert!(
        text.contains(&format!("entry {head} has hash")) && text.contains("rewritten"),
        "{text}"
    );

    // Truncated: the last change (the access review started) cut, with the record it
    // wrote, so the rest is consistent; the checkpoint rows deleted too, so only the
    // witness keeps it.
    let db = e.db.copy("truncated", &e.dir);
    let entries = db.entries();
    let keep = &entries[..entries.len() - 1];
    db.sql(&format!(
        "DELETE FROM audit WHERE seq = {head}; DELETE FROM records WHERE kind = 'access_review';
         UPDATE meta SET value = '{}:{}' WHERE key = 'audit_head'; DELETE FROM audit_anchors;",
        keep.last().unwrap().seq,
        keep.last().unwrap().hash
    ));
    let (code, text) = verify(&db, &[]);
    assert_eq!(code, Some(0), "without the key the cut passes: {text}");
    let (code, text) = verify(&db, &["--pubkey", &pk]);
    assert_eq!(
        code,
        Some(0),
        "the store's own checkpoints were deleted: {text}"
    );
    let (code, text) = verify(&db, &["--pubkey", &pk, "--witness", &w]);
    assert_eq!(code, Some(7), "{text}");
    assert!(
        text.contains(&format!(
            "truncated: a signed checkpoint covers entry {head}"
        )),
        "{text}"
    );

    // A checkpoint forged without the key (signed by another) proves nothing; one whose
    // signature names the trusted key but does not verify is refused.
    let db = e.db.copy("forged_anchor", &e.dir);
    db.sql("UPDATE audit_anchors SET signature = replace(signature, substr(signature, length(signature) - 10, 4), 'AAAA')");
    let (code, text) = verify(&db, &["--pubkey", &pk]);
    assert_eq!(code, Some(7), "{text}");
    assert!(text.contains("signature does not verify"), "{text}");
}

#[test]
fn a_signed_checkpoint_catches_a_rehashed_chain_and_a_cut_tail_in_sqlite() {
    checkpoints_catch_rehash_and_truncation(true);
}

#[test]
fn a_signed_checkpoint_catches_a_rehashed_chain_and_a_cut_tail_in_postgres() {
    checkpoints_catch_rehash_and_truncation(false);
}
