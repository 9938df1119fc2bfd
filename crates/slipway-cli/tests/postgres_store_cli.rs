//! The real `slipway` binary on the PostgreSQL store (`--store postgres://…`), against one
//! real PostgreSQL server per test binary with password authentication: a deploy read back
//! by `status`, `history` and `audit verify` from other invocations; a row edited with
//! psql named by `audit verify` (exit 7); two concurrent deploys of one environment (one
//! refused on the lease, exit 3); clear errors for an unreachable server, a wrong password
//! and a newer journal format (exit 8); access control in the shared database; checklists,
//! retention and archives on the shared database, covered by its chain.
//! The password never appears in any output.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// One PostgreSQL server per test binary (slipway-testkit's): the other modules reach it
// through this one.
pub(crate) use slipway_testkit::pg;

use pg::{PASSWORD, db_name, pg};
use slipway_testkit::ports::fixed_port;

fn spec(dir: &Path, version: &str, step: &str) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: {{ name: shop, version: {version}, type: patch }}\n\
         services:\n  api:\n    steps:\n      - {{ name: work, run: \"{step}\" }}\n\
         environments:\n  prod:\n    target: {{ exec: {{}} }}\n"
    );
    let p = dir.join(format!("shop-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `slipway` in `dir` with the store given through `SLIPWAY_STORE` (as a team would set
/// it once), and a clean environment otherwise.
fn slipway(dir: &Path, store: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.current_dir(dir)
        .env("SLIPWAY_STORE", store)
        .env_remove("SLIPWAY_OUTPUT")
        .env_remove("SLIPWAY_TOKEN")
        .env("NO_COLOR", "1");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Make the database a slipway store with a command that writes (one that only reads,
/// like `history`, never creates a store): a lease taken and given back.
fn create_store(d: &Path, url: &str) {
    run(
        slipway(d, url).args(["env", "lease", "setup", "--reason", "create the store"]),
        0,
    );
    run(slipway(d, url).args(["env", "release", "setup"]), 0);
}

/// Run and check the exit code; the password must never be printed.
fn run(c: &mut Command, code: i32) -> Output {
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(code), "{t}");
    assert!(!t.contains(PASSWORD), "the password was printed: {t}");
    o
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn a_deploy_on_postgres_is_read_back_by_other_invocations_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = pg().new_db("cli");
    let file = spec(d, "1.0.0", "touch deployed");
    let o = run(
        slipway(d, &url)
            .arg("deploy")
            .arg("-f")
            .arg(&file)
            .args(["--env", "prod", "--output", "json"]),
        0,
    );
    let v = json(&o);
    let run_id = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    assert!(d.join("deployed").exists());

    // Another invocation (another process, another connection) reads the run back.
    let status = json(&run(
        slipway(d, &url).args(["status", &run_id, "--output", "json"]),
        0,
    ));
    assert_eq!(status["run"]["state"], "succeeded", "{status}");
    assert_eq!(status["steps_succeeded"], 1, "{status}");
    let history = run(slipway(d, &url).args(["history"]), 0);
    assert!(text(&history).contains(&run_id), "{}", text(&history));

    let verified = json(&run(
        slipway(d, &url).args(["audit", "verify", "--output", "json"]),
        0,
    ));
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["entries"].as_i64().unwrap() >= 4, "{verified}");
    let source = verified["source"].as_str().unwrap();
    assert!(
        source.starts_with("postgres://postgres:***@127.0.0.1:"),
        "{source}"
    );

    // The journal is in PostgreSQL, not in an SQLite file beside the spec.
    let rows = pg().psql(db_name(&url), "SELECT count(*) FROM runs");
    assert_eq!(rows.trim(), "1");
    assert!(!d.join(".slipway/slipway.db").exists());

    // An entry edited with psql is named, exit 7.
    pg().psql(
        db_name(&url),
        "UPDATE audit SET outcome = 'forged' WHERE seq = 2",
    );
    let o = run(slipway(d, &url).args(["audit", "verify"]), 7);
    let t = text(&o);
    assert!(t.contains("TAMPERED") && t.contains("entry 2"), "{t}");
}

/// `c` in the background, killed and reaped when dropped (a failing test leaves no
/// `slipway` behind).
fn spawn(mut c: Command) -> slipway_testkit::Reaped {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

/// Poll `cond` every 20 ms for at most `limit`.
fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_concurrent_deploys_of_one_environment_on_postgres_exactly_one_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = pg().new_db("cli_lease");
    let block = |v: &str| format!("touch started-{v}; while [ ! -e go ]; do sleep 0.02; done");
    let a = spec(d, "1.0.0", &block("1.0.0"));
    let b = spec(d, "1.0.1", &block("1.0.1"));
    let deploy = |file: &Path| {
        let mut c = slipway(d, &url);
        c.arg("deploy").arg("-f").arg(file).args(["--env", "prod"]);
        c
    };
    let mut ca = spawn(deploy(&a));
    let mut cb = spawn(deploy(&b));
    let mut refused = None;
    until(Duration::from_secs(60), "one deploy to be refused", || {
        for (name, c) in [("1.0.0", &mut ca), ("1.0.1", &mut cb)] {
            if c.try_wait().unwrap().is_some() {
                refused = Some(name);
                return true;
            }
        }
        false
    });
    let refused = refused.unwrap();
    let winner = if refused == "1.0.0" { "1.0.1" } else { "1.0.0" };
    let (mut loser, mut proceeding) = if refused == "1.0.0" {
        (ca, cb)
    } else {
        (cb, ca)
    };
    let lo = loser.wait_with_output().unwrap();
    let msg = text(&lo);
    assert_eq!(lo.status.code(), Some(3), "{msg}");
    assert!(msg.contains("environment is leased by"), "{msg}");
    assert!(msg.contains(&format!("shop {winner}")), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
    until(Duration::from_secs(60), "the winner's step", || {
        d.join(format!("started-{winner}")).exists()
    });
    assert!(!d.join(format!("started-{refused}")).exists());
    // The lease is in the shared database, seen by another invocation.
    let held = json(&run(
        slipway(d, &url).args(["env", "leases", "--output", "json"]),
        0,
    ));
    assert_eq!(held.as_array().unwrap().len(), 1, "{held}");
    assert_eq!(held[0]["release"], format!("shop {winner}"));
    std::fs::write(d.join("go"), "").unwrap();
    let wo = proceeding.wait_with_output().unwrap();
    assert_eq!(wo.status.code(), Some(0), "{}", text(&wo));
    let held = json(&run(
        slipway(d, &url).args(["env", "leases", "--output", "json"]),
        0,
    ));
    assert!(held.as_array().unwrap().is_empty(), "{held}");
}

#[test]
fn store_errors_name_the_masked_url_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Unreachable: nothing listens on the port.
    let url = format!(
        "postgres://app:{PASSWORD}@127.0.0.1:{}/slipway",
        fixed_port()
    );
    let t = text(&run(slipway(d, &url).arg("history"), 8));
    assert!(t.contains("postgres://app:***@127.0.0.1:"), "{t}");
    assert!(t.contains("start PostgreSQL"), "{t}");

    // Wrong password: the wrong one is not printed either.
    let good = pg().new_db("cli_err");
    let bad = good.replace(PASSWORD, "Wr0ng-pa55word");
    let t = text(&run(slipway(d, &bad).arg("history"), 8));
    assert!(t.contains("authentication failed"), "{t}");
    assert!(t.contains("correct the user and password"), "{t}");
    assert!(!t.contains("Wr0ng-pa55word"), "{t}");

    // A journal written by a newer slipway is refused, not misread.
    create_store(d, &good);
    pg().psql(
        db_name(&good),
        "UPDATE meta SET value = '99' WHERE key = 'journal_format'",
    );
    let t = text(&run(slipway(d, &good).arg("history"), 8));
    assert!(t.contains("written by a newer slipway"), "{t}");
    assert!(t.contains("upgrade slipway"), "{t}");
    assert!(t.contains("postgres://postgres:***@127.0.0.1:"), "{t}");
}

#[test]
fn access_control_works_on_postgres_and_its_changes_are_audited_there() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = pg().new_db("cli_access");
    let file = spec(d, "1.0.0", "true");
    // The first grant switches access control on, in the shared database, and gives alice
    // her first token; from then on everyone acts through a token of this database.
    let o = run(
        slipway(d, &url).args([
            "access",
            "grant",
            "user:alice",
            "admin",
            "--env",
            "*",
            "--output",
            "json",
        ]),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let alice = v["token"].as_str().unwrap().to_owned();
    let as_alice = || {
        let mut c = slipway(d, &url);
        c.env("SLIPWAY_TOKEN", &alice);
        c
    };
    let o = run(
        as_alice().args([
            "access", "token", "create", "--user", "carol", "--output", "json",
        ]),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let carol = v["token"].as_str().unwrap().to_owned();
    let as_carol = || {
        let mut c = slipway(d, &url);
        c.env("SLIPWAY_TOKEN", &carol);
        c
    };
    let o = run(
        as_carol()
            .arg("deploy")
            .arg("-f")
            .arg(&file)
            .args(["--env", "prod"]),
        3,
    );
    let t = text(&o);
    assert!(t.contains("lacks the `deployer` role"), "{t}");
    run(
        as_alice().args(["access", "grant", "user:carol", "deployer", "--env", "prod"]),
        0,
    );
    run(
        as_carol()
            .arg("deploy")
            .arg("-f")
            .arg(&file)
            .args(["--env", "prod"]),
        0,
    );
    // Both grants and both tokens issued are governance entries of the PostgreSQL chain,
    // which verifies; people are pseudonyms there.
    let n = pg().psql(
        db_name(&url),
        "SELECT count(*) FROM audit WHERE action = 'governance'",
    );
    assert_eq!(n.trim(), "4");
    assert!(
        !pg()
            .psql(db_name(&url), "SELECT detail FROM audit")
            .contains("carol")
    );
    run(as_alice().args(["audit", "verify"]), 0);
    // Without a token nobody acts any more, not even to read.
    run(slipway(d, &url).arg("history"), 9);
    // A token is checked against the tokens of this database: an unknown one exits 9.
    let t = text(&run(
        slipway(d, &url)
            .env("SLIPWAY_TOKEN", "slw_abc.def")
            .arg("history"),
        9,
    ));
    assert!(!t.contains("slw_abc.def"), "{t}");
    assert!(!d.join(".slipway/slipway.db").exists());
}

#[test]
fn checklists_retention_and_archives_work_on_postgres_and_the_chain_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = pg().new_db("cli_govern");
    let file = spec(d, "1.0.0", "true");
    let mut text_of_spec = std::fs::read_to_string(&file).unwrap();
    text_of_spec.push_str("checklist:\n  - { id: by-hand, text: \"clicked through the shop\" }\n");
    std::fs::write(&file, text_of_spec).unwrap();
    let f = file.display().to_string();

    // The checklist gate holds on PostgreSQL until the item is acknowledged.
    let o = run(
        slipway(d, &url).args(["deploy", "--env", "prod", "-f", &f]),
        3,
    );
    assert!(text(&o).contains("by-hand"), "{}", text(&o));
    run(
        slipway(d, &url).args(["checklist", "show", "--env", "prod", "-f", &f]),
        3,
    );
    run(
        slipway(d, &url).args([
            "checklist",
            "ack",
            "by-hand",
            "--env",
            "prod",
            "--note",
            "done",
            "-f",
            &f,
        ]),
        0,
    );
    let shown = json(&run(
        slipway(d, &url).args([
            "checklist",
            "show",
            "--env",
            "prod",
            "-f",
            &f,
            "--output",
            "json",
        ]),
        0,
    ));
    assert_eq!(shown[0]["state"], "acknowledged", "{shown}");
    let v = json(&run(
        slipway(d, &url).args(["deploy", "--env", "prod", "-f", &f, "--output", "json"]),
        0,
    ));
    let run_id = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();

    // The retention policy is kept in the database.
    let (sk, pk) = (d.join("a.key"), d.join("a.pub"));
    run(
        slipway(d, &url)
            .args(["key", "generate", "--unencrypted", "--secret-key"])
            .arg(&sk)
            .arg("--public-key")
            .arg(&pk),
        0,
    );
    let archive = |code: i32| {
        json(&run(
            slipway(d, &url)
                .args([
                    "archive",
                    "--before",
                    "2100-01-01",
                    "--output",
                    "json",
                    "--key",
                ])
                .arg(&sk),
            code,
        ))
    };
    // The default live period protects a run this young: nothing leaves.
    assert_eq!(archive(0)["archived"], false);
    for kind in ["runs", "journal", "approvals", "checks", "audit"] {
        run(
            slipway(d, &url).args(["retention", "set", kind, "--live", "0d", "--keep", "7y"]),
            0,
        );
    }
    let policy = json(&run(
        slipway(d, &url).args(["retention", "show", "--output", "json"]),
        0,
    ));
    assert_eq!(policy["rules"]["runs"]["live_days"], 0, "{policy}");
    let dora = || {
        json(&run(
            slipway(d, &url).args([
                "report",
                "dora",
                "--since",
                "2000-01-01",
                "--output",
                "json",
            ]),
            0,
        ))["deployments"]
            .as_array()
            .map(Vec::len)
    };
    let before = dora();
    let v = archive(0);
    assert_eq!(v["archived"], true, "{v}");
    assert_eq!(v["runs"][0], run_id.as_str(), "{v}");
    let bundle = v["bundle"].as_str().unwrap().to_owned();
    assert!(
        bundle.starts_with(&d.join(".slipway/archive").display().to_string()),
        "{bundle}"
    );
    let rows = pg().psql(db_name(&url), "SELECT count(*) FROM runs");
    assert_eq!(rows.trim(), "0", "the archived run left the database");
    // The archive's summary keeps the deployment in the figures.
    assert_eq!(dora(), before);
    // Live alone, and with the bundle from genesis.
    let live = json(&run(
        slipway(d, &url).args(["audit", "verify", "--output", "json"]),
        0,
    ));
    assert_eq!(live["ok"], true, "{live}");
    assert!(live["from_seq"].as_i64().unwrap() > 0, "{live}");
    let whole = json(&run(
        slipway(d, &url)
            .args([
                "audit",
                "verify",
                "--output",
                "json",
                "--archive",
                &bundle,
                "--pubkey",
            ])
            .arg(&pk),
        0,
    ));
    assert_eq!(whole["ok"], true, "{whole}");
    assert_eq!(whole["from_seq"].as_i64(), Some(0), "{whole}");
    // The compliance pack examines the archived run from its bundle.
    run(
        slipway(d, &url)
            .args([
                "report",
                "compliance",
                "--framework",
                "sox",
                "--since",
                "2000-01-01",
            ])
            .arg("--out")
            .arg(d.join("evidence"))
            .args(["--archive", &bundle, "--pubkey"])
            .arg(&pk),
        0,
    );
    assert!(d.join("evidence").read_dir().unwrap().next().is_some());
    // Everything written is in the chain: the bundle holds the acknowledgement's entry,
    // the live chain the rules and the archive's own entry.
    let actions = pg().psql(db_name(&url), "SELECT outcome FROM audit ORDER BY seq");
    assert!(actions.contains("archived"), "{actions}");
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{bundle}' | tar -xOf - audit.jsonl"))
        .output()
        .unwrap();
    let archived = String::from_utf8_lossy(&listing.stdout);
    assert!(archived.contains("checklist_acknowledged"), "{archived}");
    assert!(archived.contains("retention_set"), "{archived}");

    // A retention rule edited behind the chain's back is named (exit 7).
    pg().psql(
        db_name(&url),
        "UPDATE records SET data = replace(data, '\"live_days\":0', '\"live_days\":9') WHERE kind = 'retention' AND key = 'runs'",
    );
    let o = run(slipway(d, &url).args(["audit", "verify"]), 7);
    assert!(text(&o).contains("retention"), "{}", text(&o));
    assert!(!d.join(".slipway/slipway.db").exists());
}

#[test]
fn a_detached_deploy_on_postgres_gets_the_url_through_its_environment_never_argv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = pg().new_db("cli_detach");
    let file = spec(
        d,
        "1.0.0",
        "touch started; while [ ! -e go ]; do sleep 0.02; done",
    );
    let v = json(&run(
        slipway(d, &url)
            .arg("deploy")
            .arg("-f")
            .arg(&file)
            .args(["--env", "prod", "--detach", "--output", "json"]),
        0,
    ));
    let run_id = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    until(
        Duration::from_secs(60),
        "the detached driver's step",
        || d.join("started").exists(),
    );
    // The driver is a `slipway resume RUN` process: its command line is readable by every
    // user of the machine, so the URL (with its password) is only in its environment.
    let mark = d.display().to_string();
    let drivers: Vec<_> = crate::marked("SLIPWAY_STORE", &url)
        .into_iter()
        .chain(crate::marked("__NO_SUCH_VAR__", &mark))
        .filter(|m| m.argv.iter().any(|a| a == "resume") && m.argv.contains(&run_id))
        .collect();
    assert!(!drivers.is_empty(), "no detached driver found");
    for m in &drivers {
        assert!(
            !m.argv.iter().any(|a| a.contains(PASSWORD)),
            "password on a command line: {:?}",
            m.argv
        );
        assert_eq!(m.environ.get("SLIPWAY_STORE"), Some(&url));
    }
    std::fs::write(d.join("go"), "").unwrap();
    until(
        Duration::from_secs(60),
        "the detached run to succeed",
        || {
            let o = slipway(d, &url)
                .args(["status", &run_id, "--output", "json"])
                .output()
                .unwrap();
            o.status.success() && json(&o)["run"]["state"] == "succeeded"
        },
    );
}
