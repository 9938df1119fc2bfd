//! Retrospective action items become checklist gates through the real binary: a failed
//! run's retro lists an action, `checklist accept` adds it to the spec, the plan shows the
//! `checklist` gate, a deploy is blocked (exit 3) until the item is acknowledged for that
//! version and environment, and an acknowledgement for one version does not carry over.

use crate::slipway;

#[test]
fn an_accepted_retro_action_blocks_deploys_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = d.join("ok");
    let spec = d.join("release.yaml");
    let write_spec = |version: &str| {
        let text = std::fs::read_to_string(&spec).unwrap_or_default();
        let tail = text
            .find("checklist:")
            .map(|i| text[i..].to_owned())
            .unwrap_or_default();
        std::fs::write(
            &spec,
            format!(
                "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api: {{ steps: [ {{ name: install, run: \"test -f {}\", undo: \"true\" }} ] }}
environments:
  staging: {{ target: {{ exec: {{}} }} }}
{tail}",
                ok.display()
            ),
        )
        .unwrap();
    };
    write_spec("1.0.0");
    let store = format!("sqlite://{}/s.db", d.display());
    let run = |args: &[&str]| {
        slipway()
            .env("SLIPWAY_STORE", &store)
            .args(args)
            .output()
            .unwrap()
    };
    let f = spec.display().to_string();

    // A run that fails: its retrospective asks for a fix and a check.
    let o = run(&["deploy", "--env", "staging", "--output", "json", "-f", &f]);
    assert!(matches!(o.status.code(), Some(1 | 4)), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["run"].as_str().or(v["id"].as_str()).unwrap().to_owned();
    let o = run(&["report", "retro", &id, "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let retro: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let actions = retro["actions"].as_array().unwrap();
    let n = actions
        .iter()
        .position(|a| a.as_str().unwrap().starts_with("Fix the cause"))
        .expect("a failed run asks to fix its cause")
        + 1;

    let o = run(&["checklist", "accept", &id, &n.to_string(), "-f", &f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let item = format!("retro-{id}-{n}");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains(&format!("id: \"{item}\"")), "{text}");
    let o = run(&["checklist", "accept", &id, &n.to_string(), "-f", &f]);
    assert_eq!(o.status.code(), Some(2), "accepted once only: {o:?}");

    // The plan shows the gate; the spec still validates.
    let o = run(&["plan", "--env", "staging", "--output", "json", "-f", &f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gate = plan["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "checklist")
        .expect("a checklist gate");
    assert_eq!(gate["items"][0]["id"], item.as_str(), "{gate}");

    // Fixed, but not acknowledged: blocked.
    std::fs::write(&ok, "").unwrap();
    let o = run(&["deploy", "--env", "staging", "-f", &f]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&item) && err.contains("checklist ack"),
        "{err}"
    );
    let o = run(&["checklist", "show", "--env", "staging", "-f", &f]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");

    let o = run(&[
        "checklist",
        "ack",
        &item,
        "--env",
        "staging",
        "--note",
        "added the ok file and a check for it",
        "-f",
        &f,
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = run(&["deploy", "--env", "staging", "-f", &f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // The next version must be acknowledged again.
    write_spec("1.0.1");
    let o = run(&["deploy", "--env", "staging", "-f", &f]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");

    // The acknowledgement is in the audit chain, which still verifies.
    let o = run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // An acknowledgement for 1.0.1 slipped into the store by hand (copied from the real
    // one): named by `audit verify`, and the reports refuse the store.
    let sql = "INSERT INTO records (kind, key, data, nonce, seq)
               SELECT kind, replace(key, '1.0.0', '1.0.1'), replace(data, '\"1.0.0\"', '\"1.0.1\"'), nonce, seq
               FROM records WHERE kind = 'checklist_ack'";
    let s = std::process::Command::new("sqlite3")
        .arg(d.join("s.db"))
        .arg(sql)
        .output()
        .unwrap();
    assert!(s.status.success(), "{s:?}");
    let o = run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("checklist_ack record")
            && text.contains("1.0.1")
            && text.contains("was inserted"),
        "{text}"
    );
    let o = run(&["report", "dora", "--since", "2000-01-01"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
}
