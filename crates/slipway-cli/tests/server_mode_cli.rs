//! Every top-level command under `--server` (issue 16): the commands that gained a route
//! this round (`plan show`, `audit verify`) answer the server's store for the caller's
//! token; a command on files runs here whether or not a server is named (none is
//! reached); a command that needs a store the API does not serve is refused before it
//! starts — exit 2, saying why and how to run it — and never opens a store of this
//! machine. The table itself is `slipway-cli/src/server_mode.rs`.

use std::time::Duration;

use serde_json::Value;

use crate::People;
use crate::server_deploy_cli::{World, exec_release, remote, spec_of};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn plan_show_and_audit_verify_go_through_the_server_and_store_commands_without_a_route_are_refused()
{
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people.add("bob", "deployer", "staging");
    let (alice, bob) = (
        people.token("alice").to_owned(),
        people.token("bob").to_owned(),
    );
    let server = world.serve();
    let addr = server.addr.as_str();
    let release = exec_release();
    let spec = spec_of(&release);
    let (code, out, err) = remote(
        addr,
        &bob,
        release.path(),
        &["deploy", "-f", &spec, "--env", "staging", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    let (code, out, err) = remote(addr, &bob, release.path(), &["wait", &run]);
    assert_eq!(code, 0, "{out}{err}");

    // `plan show RUN`: the server's document is the store's.
    let (code, out, err) = remote(
        addr,
        &bob,
        release.path(),
        &["plan", "show", &run, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let served = json(&out);
    let local = json(&people.ok("bob", &["plan", "show", &run, "--output", "json"]));
    assert_eq!(served, local);
    assert_eq!(served["plan"]["environment"], "staging", "{served}");
    let (code, out, err) = remote(addr, &bob, release.path(), &["plan", "show", &run]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the plan its approvals are bound to"), "{out}");

    // `audit verify`: the server's chain, viewer everywhere (bob is not).
    let (code, out, err) = remote(
        addr,
        &alice,
        release.path(),
        &["audit", "verify", "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let served = json(&out);
    let local = json(&people.ok("alice", &["audit", "verify", "--output", "json"]));
    assert_eq!(served["ok"], true, "{served}");
    assert_eq!(served["head_hash"], local["head_hash"], "{served} {local}");
    let (code, out, err) = remote(addr, &alice, release.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK audit chain of"), "{out}");
    let (code, _, err) = remote(addr, &bob, release.path(), &["audit", "verify"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("viewer"), "{err}");
    let (code, _, err) = remote(
        addr,
        &alice,
        release.path(),
        &["audit", "verify", "--pubkey", "k.pub"],
    );
    assert_eq!(code, 2, "keys are files of this machine: {err}");

    // Refused: each needs a store the API does not serve. The store named here must stay
    // unopened (never created), and the message names the command, why, and the way.
    let scratch = tempfile::tempdir().unwrap();
    let local_store = scratch.path().join("never.db");
    let refused: &[&[&str]] = &[
        &["check", "-f", &spec, "--env", "staging"],
        &["proxy", "list"],
        &["serve"],
        &["rehearse", "-f", &spec, "--env", "staging"],
        &["migrate", "dry-run", "--url", "sqlite://x.db", "--dir", "m"],
    ];
    for args in refused {
        let o = crate::slipway()
            .current_dir(scratch.path())
            .env("SLIPWAY_SERVER", format!("http://{addr}"))
            .env("SLIPWAY_TOKEN", &alice)
            .env(
                "SLIPWAY_STORE",
                format!("sqlite://{}", local_store.display()),
            )
            .args(*args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let named = err.contains(&format!("`slipway {}", args[0]));
        assert!(named && err.contains("through a server"), "{args:?}: {err}");
        assert!(
            err.contains("--store") || err.contains("without --server"),
            "{args:?}: the way: {err}"
        );
    }
    assert!(!local_store.exists(), "a refused command opened a store");
    assert!(!scratch.path().join(".slipway").exists());

    // Here: commands on files run as without a server, and reach none (nothing listens
    // on the URL named).
    for args in [vec!["validate", "-f", spec.as_str()], vec!["schema"]] {
        let o = crate::slipway()
            .current_dir(scratch.path())
            .env("SLIPWAY_SERVER", "http://127.0.0.1:9")
            .env_remove("SLIPWAY_TOKEN")
            .args(&args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
}
