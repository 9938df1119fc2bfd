//! The store commands that go through a server (issue 16: "every CLI command in --server
//! mode"), each against a real `slipway serve` and compared with the same command run on
//! the server's store directly: `plan` (the spec's directory packed as a deploy packs it,
//! planned by the server against its history and policy, nothing kept), `diff` (what runs
//! in each environment, from the server's store) and `env lease|release|leases` (audited
//! as the acting person). Roles are the operations layer's: a plan or diff needs viewer
//! in the environments, a lease deployer; a viewer's write is refused (403, exit 3).
//! Also through the server: `audit export|checkpoint` (the key stays here), `review`,
//! `checklist`, `retention` and `archive` (the bundle written and signed here); and the
//! read commands on a PostgreSQL store (`on_postgres_…`).

use serde_json::Value;

use crate::People;
use crate::server_deploy_cli::{World, exec_release, remote, spec_of};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The local command as `who`, on the server's store, from `cwd`: exit code, stdout,
/// stderr.
fn local(
    people: &People,
    who: &str,
    cwd: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let o = people
        .cmd(who)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn plan_diff_and_env_go_through_the_server_and_answer_as_on_its_store() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people
        .add("bob", "deployer", "staging")
        .add("vic", "viewer", "*");
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let spec = spec_of(&release);
    let cwd = release.path();
    let bob = people.token("bob").to_owned();
    let vic = people.token("vic").to_owned();

    // Staging runs 1.0.0 (deployed through the server): prod's plan depends on it (the
    // lifecycle's promotion evidence) and the diff sees it.
    let (code, out, err) = remote(
        addr,
        &bob,
        cwd,
        &["deploy", "-f", &spec, "--env", "staging", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    let (code, out, err) = remote(addr, &bob, cwd, &["wait", &run]);
    assert_eq!(code, 0, "{out}{err}");
    let bundles_before = std::fs::read_dir(world.dir.path().join("bundles"))
        .unwrap()
        .count();

    // `plan`: the server's plan is the store's, as JSON and as text, exit code included.
    for env in ["staging", "prod"] {
        let args = [
            "plan",
            "-f",
            spec.as_str(),
            "--env",
            env,
            "--output",
            "json",
        ];
        let (code, served, err) = remote(addr, &vic, cwd, &args);
        let (lcode, here, lerr) = local(&people, "vic", cwd, &args);
        assert_eq!((code, lcode), (0, 0), "{err}{lerr}");
        assert_eq!(json(&served), json(&here), "{env}");
        let args = ["plan", "-f", spec.as_str(), "--env", env];
        let (code, served, err) = remote(addr, &vic, cwd, &args);
        let (_, here, _) = local(&people, "vic", cwd, &args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(served, here, "{env}");
    }
    let planned = json(
        &remote(
            addr,
            &vic,
            cwd,
            &["plan", "-f", &spec, "--env", "prod", "--output", "json"],
        )
        .1,
    );
    let promotion = planned["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "promotion")
        .cloned()
        .unwrap_or_else(|| panic!("no promotion gate: {planned}"));
    assert!(
        promotion.to_string().contains(&run),
        "prod's promotion evidence is staging's run on the server's store: {promotion}"
    );
    // A plan keeps nothing on the server and starts no run.
    assert_eq!(
        std::fs::read_dir(world.dir.path().join("bundles"))
            .unwrap()
            .count(),
        bundles_before
    );
    let (_, out, _) = remote(addr, &vic, cwd, &["history", "--output", "json"]);
    assert_eq!(json(&out).as_array().map(Vec::len), Some(1), "{out}");
    // Bob may read staging only: prod's plan is refused, naming the grant to ask for.
    let (code, _, err) = remote(addr, &bob, cwd, &["plan", "-f", &spec, "--env", "prod"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("viewer --env prod"), "{err}");
    // A spec that does not validate is refused here, before anything is sent.
    let bad = cwd.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: slipway/v1\nkind: Release\n").unwrap();
    let (code, _, err) = remote(
        addr,
        &vic,
        cwd,
        &["plan", "-f", &bad.display().to_string(), "--env", "prod"],
    );
    assert_eq!(code, 2, "{err}");
    std::fs::remove_file(&bad).unwrap();

    // `diff`: what runs in each environment is the server's history.
    let args = [
        "diff", "-f", &spec, "--env", "staging", "--env", "prod", "--output", "json",
    ];
    let (code, served, err) = remote(addr, &vic, cwd, &args);
    let (_, here, _) = local(&people, "vic", cwd, &args);
    assert_eq!(code, 0, "{err}");
    let served = json(&served);
    assert_eq!(served, json(&here));
    assert_eq!(
        served["live"]["staging"]["versions"]["api"][1], run,
        "{served}"
    );
    let args = [
        "diff",
        "-f",
        &spec,
        "--env",
        "staging",
        "--env",
        "prod",
        "--fail-on-drift",
    ];
    let (code, served, _) = remote(addr, &vic, cwd, &args);
    let (lcode, here, _) = local(&people, "vic", cwd, &args);
    assert_eq!(
        (code, lcode),
        (1, 1),
        "staging runs 1.0.0, prod nothing: {served}"
    );
    assert_eq!(served, here);
    let (code, _, err) = remote(addr, &bob, cwd, &args);
    assert_eq!(code, 3, "bob may not read prod: {err}");

    // `env`: a lease taken through the server is the store's, held by the caller.
    let (code, out, err) = remote(
        addr,
        &bob,
        cwd,
        &[
            "env",
            "lease",
            "staging",
            "--reason",
            "maintenance",
            "--ttl",
            "30m",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("staging"), "{out}");
    let (code, served, err) = remote(addr, &vic, cwd, &["env", "leases", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let (_, here, _) = local(&people, "vic", cwd, &["env", "leases", "--output", "json"]);
    assert_eq!(json(&served), json(&here));
    assert_eq!(json(&served)[0]["holder"], "manual:bob", "{served}");
    // A viewer takes no lease; bob holds none in prod.
    let (code, _, err) = remote(addr, &vic, cwd, &["env", "lease", "staging"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("deployer"), "{err}");
    let (code, _, err) = remote(addr, &vic, cwd, &["env", "release", "staging", "--force"]);
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = remote(addr, &bob, cwd, &["env", "release", "staging"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("was held by `manual:bob`"), "{out}");
    let (code, _, err) = remote(addr, &bob, cwd, &["env", "release", "staging"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("you (manual:bob) hold no lease"), "{err}");
    let (_, served, _) = remote(addr, &vic, cwd, &["env", "leases", "--output", "json"]);
    assert_eq!(json(&served), serde_json::json!([]));

    // Both changes are in the audit chain as bob's: the actor of bob's own deploy.
    let export = cwd.join("chain.jsonl");
    people.ok(
        "alice",
        &["audit", "export", "--out", &export.display().to_string()],
    );
    let entries: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let actor_of = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        entries
            .iter()
            .filter(|e| pred(e))
            .map(|e| e["actor"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let bobs = actor_of(&|e| e["run_id"] == run.as_str());
    let leases = actor_of(&|e| {
        let s = e.to_string();
        s.contains("lease_taken") || s.contains("lease_released")
    });
    assert_eq!(leases.len(), 2, "{entries:?}");
    assert!(
        leases.iter().all(|a| bobs.contains(a)),
        "{leases:?} {bobs:?}"
    );
}

#[test]
fn audit_export_and_checkpoint_go_through_the_server_and_the_key_stays_here() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people
        .add("bob", "deployer", "staging")
        .add("vic", "viewer", "*");
    let server = world.serve();
    let addr = server.addr.as_str();
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    let path = |name: &str| cwd.join(name).display().to_string();
    let (alice, vic, bob) = (
        people.token("alice").to_owned(),
        people.token("vic").to_owned(),
        people.token("bob").to_owned(),
    );

    // `audit export`: the server's chain, byte for byte the local export's, and it
    // verifies as a file. Viewer on `*` (vic, the auditor); bob reads staging only.
    let (code, out, err) = remote(
        addr,
        &vic,
        cwd,
        &[
            "audit",
            "export",
            "--out",
            &path("served.jsonl"),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let served_doc = json(&out);
    let (code, here, err) = local(
        &people,
        "vic",
        cwd,
        &[
            "audit",
            "export",
            "--out",
            &path("local.jsonl"),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let here = json(&here);
    assert_eq!(served_doc["head_hash"], here["head_hash"]);
    assert_eq!(served_doc["entries"], here["entries"]);
    assert!(served_doc["entries"].as_u64().unwrap() >= 3, "{served_doc}");
    assert_eq!(
        std::fs::read(cwd.join("served.jsonl")).unwrap(),
        std::fs::read(cwd.join("local.jsonl")).unwrap()
    );
    let (code, out, err) = local(
        &people,
        "vic",
        cwd,
        &["audit", "verify", "--file", &path("served.jsonl")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = remote(
        addr,
        &bob,
        cwd,
        &["audit", "export", "--out", &path("b.jsonl")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("viewer"), "{err}");
    assert!(!cwd.join("b.jsonl").exists());

    // `audit checkpoint`: signed here, kept by the server (admin), witnessed here; the
    // same head twice signs nothing new.
    let (sk, pk) = crate::evidence_cli::keys(cwd, "audit");
    let witness = path("worm/checkpoints.jsonl");
    let args = [
        "audit",
        "checkpoint",
        "--key",
        &sk,
        "--witness",
        &witness,
        "--output",
        "json",
    ];
    let (code, out, err) = remote(addr, &vic, cwd, &args);
    assert_eq!(code, 3, "a viewer writes no checkpoint: {err}");
    assert!(out.contains("admin"), "{out}");
    let (code, out, err) = remote(addr, &alice, cwd, &args);
    assert_eq!(code, 0, "{out}{err}");
    let first = json(&out);
    assert_eq!(first["anchored"], true, "{first}");
    assert_eq!(first["hash"], here["head_hash"], "{first} {here}");
    assert_eq!(first["witnesses"][0]["appended"], 1, "{first}");
    let (code, out, err) = remote(addr, &alice, cwd, &args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["anchored"], false, "{out}");
    assert_eq!(json(&out)["witnesses"][0]["appended"], 0, "{out}");
    // The key never left this machine, and the checkpoint is the store's: a local verify
    // with the public key holds the chain to it, from the store and the witness file.
    let (code, out, err) = local(
        &people,
        "alice",
        cwd,
        &[
            "audit",
            "verify",
            "--pubkey",
            &pk,
            "--witness",
            &witness,
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        json(&out)["checkpoints_checked"].as_u64().unwrap() >= 1,
        "{out}"
    );

    // A chain edited behind slipway's back is never signed through the server either.
    let db = world.dir.path().join("s.db");
    let o = std::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg("UPDATE audit SET outcome = 'forged' WHERE seq = 2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let (code, out, err) = remote(addr, &alice, cwd, &args);
    assert_eq!(code, 7, "{out}{err}");
    assert!(
        out.contains("nothing was signed") && out.contains("does not verify"),
        "{out}"
    );
}

/// A production hotfix of `payfix` (its plan carries `post_review`), with `checklist`
/// items; its step fails when `fail`.
fn hotfix(dir: &std::path::Path, version: &str, fail: bool, checklist: &str) -> String {
    let p = dir.join(format!("hotfix-{version}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: payfix, version: {version}, type: hotfix, change: CHG-9 }}
services:
  pay:
    steps:
      - {{ name: install, run: \"{}\" }}
environments:
  live:
    production: true
    target: {{ exec: {{}} }}
policy:
  hotfix: {{ approvals: 0 }}
{checklist}",
            if fail { "false" } else { "echo installed" }
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn review_checklist_and_retention_go_through_the_server_with_the_store_commands_rules() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people
        .add("bob", "approver", "live")
        .add("vic", "viewer", "*");
    let server = world.serve();
    let addr = server.addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let (alice, bob, vic) = (
        people.token("alice").to_owned(),
        people.token("bob").to_owned(),
        people.token("vic").to_owned(),
    );
    let same = |who: &str, token: &str, args: &[&str]| -> (i32, String) {
        let (code, served, err) = remote(addr, token, cwd, args);
        let (lcode, here, lerr) = local(&people, who, cwd, args);
        assert_eq!(code, lcode, "{args:?}: {err} / {lerr}");
        assert_eq!(served, here, "{args:?}");
        (code, served)
    };

    // `checklist`: the item is open (exit 3 both ways) until an approver acknowledges it
    // through the server, as that person.
    let spec = hotfix(
        cwd,
        "1.0.1",
        false,
        "checklist:\n  - { id: keys, text: rotate the keys }\n",
    );
    let show = [
        "checklist",
        "show",
        "-f",
        spec.as_str(),
        "--env",
        "live",
        "--output",
        "json",
    ];
    let (code, out) = same("vic", &vic, &show);
    assert_eq!(code, 3, "{out}");
    assert_eq!(json(&out)[0]["state"], "open", "{out}");
    let ack = [
        "checklist",
        "ack",
        "keys",
        "-f",
        spec.as_str(),
        "--env",
        "live",
        "--note",
        "rotated",
    ];
    let (code, _, err) = remote(addr, &vic, cwd, &ack);
    assert_eq!(code, 3, "a viewer acknowledges nothing: {err}");
    assert!(err.contains("approver"), "{err}");
    let (code, out, err) = remote(addr, &bob, cwd, &ack);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = same("vic", &vic, &show);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)[0]["state"], "acknowledged", "{out}");
    assert!(out.contains("user:bob"), "{out}");

    // `review`: alice's hotfix (deployed through the server) owes a review by another
    // approver.
    let (code, out, err) = remote(
        addr,
        &alice,
        cwd,
        &["deploy", "-f", &spec, "--env", "live", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    let (code, out, err) = remote(addr, &alice, cwd, &["wait", &run]);
    assert_eq!(code, 0, "{out}{err}");
    let list = ["review", "list", "--output", "json"];
    let (_, out) = same("vic", &vic, &list);
    assert_eq!(json(&out)[0]["run"], run.as_str(), "{out}");
    assert_eq!(json(&out)[0]["state"], "open", "{out}");
    let complete = |token: &str| {
        remote(
            addr,
            token,
            cwd,
            &["review", "complete", &run, "--note", "root cause fixed"],
        )
    };
    let (code, _, err) = complete(&alice);
    assert_eq!(code, 3, "not by its author: {err}");
    assert!(err.contains("different person"), "{err}");
    let (code, _, err) = complete(&vic);
    assert_eq!(code, 3, "a viewer completes nothing: {err}");
    let (code, out, err) = complete(&bob);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out) = same(
        "vic",
        &vic,
        &["review", "list", "--open", "--output", "json"],
    );
    assert_eq!(out.trim(), "[]");
    let (_, out) = same("vic", &vic, &list);
    assert_eq!(json(&out)[0]["state"], "done", "{out}");

    // `checklist accept`: a failed run's retrospective (the server's) grows the spec here,
    // as it does on the store.
    let failing = hotfix(cwd, "0.9.0", true, "");
    let (code, out, err) = remote(
        addr,
        &alice,
        cwd,
        &["deploy", "-f", &failing, "--env", "live", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let failed = out.trim().to_owned();
    let (code, out, err) = remote(addr, &alice, cwd, &["wait", &failed]);
    assert_ne!(code, 0, "{out}{err}");
    let copy = cwd.join("copy.yaml");
    std::fs::copy(&spec, &copy).unwrap();
    let copy = copy.display().to_string();
    let (code, out, err) = remote(
        addr,
        &vic,
        cwd,
        &["checklist", "accept", &failed, "1", "-f", &spec],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = local(
        &people,
        "vic",
        cwd,
        &["checklist", "accept", &failed, "1", "-f", &copy],
    );
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains(&format!("retro-{failed}-1")), "{text}");
    assert_eq!(text, std::fs::read_to_string(&copy).unwrap());

    // `retention`: shown as on the store; set by an admin only, audited as that person.
    let (code, out) = same("vic", &vic, &["retention", "show", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["rules"]["runs"]["live_days"], 90, "{out}");
    let set = ["retention", "set", "runs", "--live", "30d", "--keep", "7y"];
    let (code, _, err) = remote(addr, &vic, cwd, &set);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("admin"), "{err}");
    let (code, out, err) = remote(addr, &alice, cwd, &set);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out) = same("vic", &vic, &["retention", "show", "--output", "json"]);
    assert_eq!(json(&out)["rules"]["runs"]["live_days"], 30, "{out}");
    let (code, _, err) = remote(
        addr,
        &alice,
        cwd,
        &["retention", "set", "runs", "--live", "1y", "--keep", "30d"],
    );
    assert_eq!(code, 2, "{err}");

    // Every write through the server is in the audit chain as the person who made it:
    // bob acknowledged and reviewed, alice (the author of the run) set the retention.
    let export = cwd.join("chain.jsonl");
    people.ok(
        "alice",
        &["audit", "export", "--out", &export.display().to_string()],
    );
    let entries: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let actors = |what: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e.to_string().contains(what))
            .map(|e| e["actor"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let alices = actors(&format!("\"run_id\":\"{run}\""));
    let (acked, reviewed, set) = (
        actors("checklist_acknowledged"),
        actors("review_completed"),
        actors("retention_set"),
    );
    assert_eq!(
        (acked.len(), reviewed.len(), set.len()),
        (1, 1, 1),
        "{entries:?}"
    );
    assert_eq!(acked, reviewed, "both bob's");
    assert!(alices.contains(&set[0]), "alice's: {set:?} {alices:?}");
    assert!(!alices.contains(&acked[0]), "not alice's: {acked:?}");
}

#[test]
fn archive_goes_through_the_server_and_the_bundle_is_signed_here() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people.add("vic", "viewer", "*");
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let cwd = release.path();
    let spec = spec_of(&release);
    let (alice, vic) = (
        people.token("alice").to_owned(),
        people.token("vic").to_owned(),
    );
    let (code, out, err) = remote(
        addr,
        &alice,
        cwd,
        &["deploy", "-f", &spec, "--env", "staging", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    let (code, out, err) = remote(addr, &alice, cwd, &["wait", &run]);
    assert_eq!(code, 0, "{out}{err}");
    let (sk, pk) = crate::evidence_cli::keys(cwd, "archive");
    let out_dir = cwd.join("arch").display().to_string();
    let archive = [
        "archive",
        "--before",
        "2100-01-01",
        "--key",
        &sk,
        "--out",
        &out_dir,
        "--output",
        "json",
    ];

    // The default policy keeps runs live 90 days: nothing this young leaves.
    let (code, out, err) = remote(addr, &alice, cwd, &archive);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["archived"], false, "{out}");
    for kind in ["runs", "journal", "approvals", "checks", "audit"] {
        let (code, _, err) = remote(
            addr,
            &alice,
            cwd,
            &["retention", "set", kind, "--live", "0d", "--keep", "7y"],
        );
        assert_eq!(code, 0, "{err}");
    }
    // Admin only; a dry run shows what would go and changes nothing.
    let (code, out, err) = remote(addr, &vic, cwd, &archive);
    assert_eq!(code, 3, "{err}");
    assert!(out.contains("admin"), "{out}");
    let mut dry = archive.to_vec();
    dry.push("--dry-run");
    let (code, out, err) = remote(addr, &alice, cwd, &dry);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["runs"], serde_json::json!([run]), "{out}");
    assert!(!cwd.join("arch").exists());

    let (code, out, err) = remote(addr, &alice, cwd, &archive);
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["archived"], true, "{v}");
    assert_eq!(v["runs"], serde_json::json!([run]), "{v}");
    let bundle = v["bundle"].as_str().unwrap().to_owned();
    assert!(bundle.starts_with(&out_dir), "written here: {v}");
    assert!(std::path::Path::new(&format!("{bundle}.minisig")).exists());
    let end = v["checkpoint"]["end_seq"].as_i64().unwrap();

    // The run is gone from the server's store; its chain starts at the checkpoint, whose
    // new start was signed here; the bundle and the live chain verify as one.
    let (_, out, _) = remote(addr, &vic, cwd, &["history", "--output", "json"]);
    assert!(!out.contains(&run), "{out}");
    let (code, out, err) = remote(addr, &vic, cwd, &["audit", "verify", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["from_seq"].as_i64(), Some(end), "{out}");
    let (code, out, err) = local(
        &people,
        "vic",
        cwd,
        &[
            "audit",
            "verify",
            "--archive",
            &bundle,
            "--pubkey",
            &pk,
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["from_seq"].as_i64(), Some(0), "{out}");
    let (code, out, err) = local(
        &people,
        "vic",
        cwd,
        &["audit", "verify", "--pubkey", &pk, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        json(&out)["checkpoints_checked"].as_u64().unwrap() >= 1,
        "{out}"
    );
}

#[test]
fn on_postgres_plan_diff_env_retention_and_the_audit_export_answer_as_on_the_store() {
    use crate::postgres_store_cli::pg::pg;
    let world = World::on(pg().new_db("storecmds"));
    let mut people = People::new(&world.store, "alice");
    people.add("vic", "viewer", "*");
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let cwd = release.path();
    let spec = spec_of(&release);
    let (alice, vic) = (
        people.token("alice").to_owned(),
        people.token("vic").to_owned(),
    );
    let (code, out, err) = remote(
        addr,
        &alice,
        cwd,
        &["deploy", "-f", &spec, "--env", "staging", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    let (code, out, err) = remote(addr, &alice, cwd, &["wait", &run]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = remote(
        addr,
        &alice,
        cwd,
        &["env", "lease", "prod", "--reason", "maintenance"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let export = |name: &str| cwd.join(name).display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = [
        vec!["plan", "-f", &spec, "--env", "prod", "--output", "json"],
        vec!["plan", "-f", &spec, "--env", "prod"],
        vec![
            "diff", "-f", &spec, "--env", "staging", "--env", "prod", "--output", "json",
        ],
        vec!["env", "leases", "--output", "json"],
        vec!["retention", "show", "--output", "json"],
    ]
    .iter()
    .map(|a| {
        let a: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        (a.clone(), a)
    })
    .chain([(
        vec![
            "audit".into(),
            "export".into(),
            "--out".into(),
            export("served.jsonl"),
        ],
        vec![
            "audit".into(),
            "export".into(),
            "--out".into(),
            export("local.jsonl"),
        ],
    )])
    .collect();
    for (served_args, local_args) in &cases {
        let s: Vec<&str> = served_args.iter().map(String::as_str).collect();
        let l: Vec<&str> = local_args.iter().map(String::as_str).collect();
        let (code, served, err) = remote(addr, &vic, cwd, &s);
        let (lcode, here, lerr) = local(&people, "vic", cwd, &l);
        assert_eq!((code, lcode), (0, 0), "{s:?}: {err} / {lerr}");
        if s[0] != "audit" {
            assert_eq!(served, here, "{s:?}");
        }
    }
    assert!(
        std::fs::read_to_string(cwd.join("served.jsonl"))
            .unwrap()
            .contains(&run)
    );
    assert_eq!(
        std::fs::read(cwd.join("served.jsonl")).unwrap(),
        std::fs::read(cwd.join("local.jsonl")).unwrap()
    );
}
