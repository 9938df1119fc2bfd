//! Reports across an archive, through the real binary: a DORA report over a period whose
//! runs were partly (then wholly) archived gives the same deployments, change failure
//! rate, rollback frequency, recovery and lead times as before the archive, and says how
//! many runs it read from archive summaries and which bundles hold them. A crash inside
//! the prune's transaction leaves neither summaries nor a prune; a compliance pack lists
//! the archived runs of its period with their bundle instead of dropping them, and given
//! the bundles examines them whole.

use std::path::{Path, PathBuf};

use crate::slipway;

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    spec: PathBuf,
    store: String,
    db: PathBuf,
}

impl Env {
    /// A spec in a git repository (so lead times are known): `api/install` is undone by
    /// a command that fails while `UNDOFAIL` exists, `api/migrate` fails while `FAIL`
    /// exists.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let spec = d.join("release.yaml");
        let fail = d.join("FAIL");
        let undo_fail = d.join("UNDOFAIL");
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    steps:
      - {{ name: install, run: \"true\", undo: \"test ! -e {undo}\" }}
      - {{ name: migrate, run: \"test ! -e {fail}\", undo: \"true\" }}
environments:
  staging: {{ target: {{ exec: {{}} }} }}
  prod: {{ target: {{ exec: {{}} }}, approvals: {{ required: 1 }} }}
",
                undo = undo_fail.display(),
                fail = fail.display()
            ),
        )
        .unwrap();
        for args in [
            &["init", "-q"][..],
            &["add", "release.yaml"],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "commit",
                "-qm",
                "spec",
            ],
        ] {
            let o = std::process::Command::new("git")
                .arg("-C")
                .arg(&d)
                .args(args)
                .output()
                .expect("git");
            assert!(o.status.success(), "git {args:?}: {o:?}");
        }
        let db = d.join("s.db");
        Self {
            store: format!("sqlite://{}", db.display()),
            db,
            spec,
            dir: d,
            _dir: dir,
        }
    }

    fn cmd(&self) -> assert_cmd::Command {
        let mut c = slipway();
        c.env("SLIPWAY_STORE", &self.store)
            .timeout(std::time::Duration::from_secs(120));
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Deploy, expecting `code`; returns the run id.
    fn deploy(&self, env: &str, code: i32) -> String {
        let spec = self.spec.display().to_string();
        let o = self.run(&[
            "deploy",
            "--env",
            env,
            "--no-wait",
            "--output",
            "json",
            "-f",
            &spec,
        ]);
        assert_eq!(o.status.code(), Some(code), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned()
    }

    fn sqlite(&self, sql: &str) -> String {
        let o = std::process::Command::new("sqlite3")
            // Wait for a lock the store holds instead of failing at once with "database is
            // locked", as any other SQLite client of the store would.
            .args(["-cmd", ".timeout 10000"])
            .arg(&self.db)
            .arg(sql)
            .output()
            .expect("the sqlite3 CLI");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn keys(&self) -> (String, String) {
        let sk = self.dir.join("archive.key");
        let pk = self.dir.join("archive.pub");
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

    fn history(&self) -> Vec<serde_json::Value> {
        let v = self.ok(&["history", "--output", "json"]);
        v.as_array()
            .or_else(|| v["runs"].as_array())
            .unwrap()
            .clone()
    }

    /// The DORA report over a fixed period (a fixed end, so frequency does not move with
    /// the clock).
    fn dora(&self) -> serde_json::Value {
        self.ok(&[
            "report",
            "dora",
            "--since",
            "2020-01-01",
            "--until",
            "2100-01-01",
            "--output",
            "json",
        ])
    }

    fn summaries(&self) -> i64 {
        self.sqlite("SELECT count(*) FROM records WHERE kind = 'run_summary'")
            .parse()
            .unwrap()
    }
}

/// Every figure of two reports, and their deployments without the `archived_in` marker.
fn figures(v: &serde_json::Value) -> serde_json::Value {
    let mut deployments = v["deployments"].clone();
    for d in deployments.as_array_mut().unwrap() {
        d.as_object_mut().unwrap().remove("archived_in");
    }
    serde_json::json!({
        "scope": v["scope"],
        "overall": v["overall"],
        "by_service": v["by_service"],
        "by_type": v["by_type"],
        "deployments": deployments,
    })
}

/// S1 succeeded, R rolled back, F failed (its undo failed), S2 succeeded (restores F), W
/// aborted while waiting for approval, then S3 succeeded. Returns the env and the ids.
fn seeded() -> (Env, Vec<String>) {
    let e = Env::new();
    let s1 = e.deploy("staging", 0);
    std::fs::write(e.dir.join("FAIL"), "").unwrap();
    let r = e.deploy("staging", 4);
    std::fs::write(e.dir.join("UNDOFAIL"), "").unwrap();
    let f = e.deploy("staging", 1);
    std::fs::remove_file(e.dir.join("FAIL")).unwrap();
    std::fs::remove_file(e.dir.join("UNDOFAIL")).unwrap();
    let s2 = e.deploy("staging", 0);
    let w = e.deploy("prod", 3);
    e.ok(&["abort", &w]);
    let s3 = e.deploy("staging", 0);
    (e, vec![s1, r, f, s2, w, s3])
}

fn bundle_name(v: &serde_json::Value) -> String {
    Path::new(v["bundle"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn dora_figures_are_the_same_before_and_after_an_archive_and_a_crash_inside_the_prune_keeps_neither()
 {
    let (e, ids) = seeded();
    let states: Vec<String> = {
        let h = e.history();
        ids.iter()
            .map(|id| {
                h.iter()
                    .find(|r| r["id"] == id.as_str())
                    .map(|r| r["state"].as_str().unwrap().to_owned())
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        states,
        [
            "succeeded",
            "rolled_back",
            "failed",
            "succeeded",
            "aborted",
            "succeeded"
        ]
    );
    let before = e.dora();
    let o = &before["overall"];
    assert_eq!(
        (
            o["deployments"].as_u64(),
            o["succeeded"].as_u64(),
            o["failed"].as_u64(),
            o["rolled_back"].as_u64(),
            o["aborted"].as_u64()
        ),
        (Some(5), Some(3), Some(1), Some(1), Some(1)),
        "{before}"
    );
    assert_eq!(o["change_failure_rate"], 0.4);
    assert_eq!(o["rollback_frequency"], 0.2);
    assert!(o["recovery_median_seconds"].is_f64(), "{before}");
    assert!(
        o["lead_time_median_seconds"].is_f64(),
        "git facts: {before}"
    );
    assert_eq!(o["unrecovered"], 0, "F is restored by S2: {before}");
    assert_eq!(before["archive"]["runs_from_summaries"], 0);

    // Archive everything closed before S3 was created: S3 stays live.
    let s3_created = e
        .history()
        .into_iter()
        .find(|r| r["id"] == ids[5].as_str())
        .unwrap()["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (sk, pk) = e.keys();
    e.live_policy();

    // A crash inside the prune's transaction, after the summaries were inserted and the
    // runs deleted: SQLite keeps neither.
    let crashed = e
        .cmd()
        .env("SLIPWAY_FAULT", "archive-inside-prune")
        .args(["archive", "--before", &s3_created, "--key", &sk])
        .output()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            crashed.status.signal(),
            Some(6),
            "the fault point inside the prune aborts (SIGABRT): {crashed:?}"
        );
    }
    assert_eq!(e.summaries(), 0, "no summary without the prune");
    assert_eq!(e.history().len(), 6, "no prune without the summaries");
    assert_eq!(
        e.sqlite("SELECT count(*) FROM records WHERE kind = 'archive_checkpoint'"),
        "0"
    );
    e.ok(&["audit", "verify"]);
    assert_eq!(figures(&e.dora()), figures(&before));

    let first = e.ok(&[
        "archive",
        "--before",
        &s3_created,
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    assert_eq!(first["archived"], true, "{first}");
    assert_eq!(first["runs"].as_array().unwrap().len(), 5, "{first}");
    assert_eq!(first["summaries"], 5);
    assert_eq!(e.summaries(), 5);
    let live: Vec<serde_json::Value> = e.history();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], ids[5].as_str());
    e.ok(&["audit", "verify"]);
    let bundle1 = first["bundle"].as_str().unwrap().to_owned();
    e.ok(&["audit", "verify", "--archive", &bundle1, "--pubkey", &pk]);

    let after = e.dora();
    assert_eq!(figures(&after), figures(&before), "{after}");
    assert_eq!(after["archive"]["runs_from_summaries"], 5, "{after}");
    let bundles = after["archive"]["bundles"].as_array().unwrap();
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0]["bundle"], bundle_name(&first).as_str());
    assert_eq!(bundles[0]["sha256"], first["sha256"]);
    assert_eq!(bundles[0]["runs"], 5);
    let text = e.run(&[
        "report",
        "dora",
        "--since",
        "2020-01-01",
        "--until",
        "2100-01-01",
    ]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "archived runs: 5 counted from archive summaries (bundle {}: 5)",
            bundle_name(&first)
        )),
        "{text}"
    );

    // The handover of the live S3 finds its archived predecessor S2 and does not diff
    // against a plan it no longer has.
    let o = e.run(&["report", "handover", &ids[5]]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains(&format!(
            "(run `{}`, succeeded, archived in {})",
            ids[3],
            bundle_name(&first)
        )),
        "{md}"
    );
    assert!(
        md.contains("Not shown: the previous run's plan is in archive bundle"),
        "{md}"
    );
    assert!(!md.contains("service added"), "{md}");

    // Archive the rest: every run now comes from a summary, across two bundles.
    let second = e.ok(&[
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--output",
        "json",
    ]);
    assert_eq!(second["archived"], true, "{second}");
    assert!(e.history().is_empty());
    let all_archived = e.dora();
    assert_eq!(figures(&all_archived), figures(&before), "{all_archived}");
    assert_eq!(all_archived["archive"]["runs_from_summaries"], 6);
    assert_eq!(
        all_archived["archive"]["bundles"].as_array().unwrap().len(),
        2
    );
    let bundle2 = second["bundle"].as_str().unwrap().to_owned();
    e.ok(&[
        "audit",
        "verify",
        "--archive",
        &bundle1,
        "--archive",
        &bundle2,
        "--pubkey",
        &pk,
    ]);

    // Compliance examines archived runs whole from their bundles, but only from a chain
    // without gaps: the first bundle alone leaves the second's entries out.
    let out = e.dir.join("evidence-full").display().to_string();
    let compliance = |bundles: &[&str]| {
        let mut args = vec![
            "report",
            "compliance",
            "--framework",
            "gdpr",
            "--since",
            "2020-01-01",
            "--out",
            &out,
            "--pubkey",
            &pk,
            "--output",
            "json",
        ];
        for b in bundles {
            args.extend(["--archive", b]);
        }
        e.run(&args)
    };
    let gap = compliance(&[&bundle1]);
    assert_eq!(gap.status.code(), Some(2), "{gap:?}");
    assert!(
        String::from_utf8_lossy(&gap.stdout).contains(&format!("missing {}", bundle_name(&second))),
        "{gap:?}"
    );
    let full = compliance(&[&bundle2, &bundle1]);
    assert_eq!(full.status.code(), Some(0), "{full:?}");
    let pack: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    assert_eq!(pack["archived_runs"], serde_json::json!([]), "{pack}");
    assert_eq!(
        pack["examined_from_bundles"][bundle_name(&first)],
        5,
        "{pack}"
    );
    assert_eq!(
        pack["examined_from_bundles"][bundle_name(&second)],
        1,
        "{pack}"
    );
    assert!(
        pack["chain"].as_str().unwrap().starts_with("verified"),
        "the chain from genesis through both bundles and the live entries: {pack}"
    );

    // The catalog's lifecycles read the same history and say so.
    let spec = e.spec.display().to_string();
    let cat = e.dir.join("catalog").display().to_string();
    let v = e.ok(&[
        "catalog", "export", "-f", &spec, "--out", &cat, "--output", "json",
    ]);
    assert_eq!(v["archive"]["runs_from_summaries"], 6, "{v}");

    // A per-run report of an archived run names the bundle instead of "no such run".
    let o = e.run(&["report", "retro", &ids[1]]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("it was archived into"), "{err}");
    assert!(err.contains(&bundle_name(&first)), "{err}");
}

#[test]
fn a_compliance_pack_lists_the_archived_runs_of_its_period_with_their_bundle() {
    let (e, ids) = seeded();
    let (sk, _) = e.keys();
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
    let out = e.dir.join("evidence");
    let out_s = out.display().to_string();
    let o = e.run(&[
        "report",
        "compliance",
        "--framework",
        "gdpr",
        "--since",
        "2020-01-01",
        "--out",
        &out_s,
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let pack: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed: Vec<&str> = pack["archived_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut got = listed.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "{pack}");
    let name = bundle_name(&v);
    assert!(
        pack["archived_runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["bundle"] == name.as_str() && r["bundle_sha256"] == v["sha256"]),
        "{pack}"
    );
    assert!(
        pack["coverage"]
            .as_str()
            .unwrap()
            .contains("6 archived run(s) of the period are listed but not examined"),
        "{pack}"
    );
    let jsonl = std::fs::read_to_string(out.join("evidence.jsonl")).unwrap();
    assert_eq!(
        jsonl
            .lines()
            .filter(|l| l.contains("\"archived_run\""))
            .count(),
        6,
        "{jsonl}"
    );
    assert!(jsonl.contains("\"archived_not_examined\":6"), "{jsonl}");
    let html = std::fs::read_to_string(out.join("summary.html")).unwrap();
    assert!(html.contains("Archived runs"), "{html}");
}
