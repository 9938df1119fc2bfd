//! Accounts: a real unix user created with `useradd` (removed on drop) and one that does
//! not exist; grant parsing.

use std::process::Command;

use slipway_checks::Outcome;
use slipway_checks::accounts::{parse_grant, unix_user};

struct User(String);

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

#[test]
fn a_real_user_passes_and_a_missing_one_fails_with_the_fix() {
    let name = format!("swchk{}", std::process::id());
    let ok = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "useradd failed (needs root)");
    let user = User(name.clone());
    let v = unix_user(&name);
    assert_eq!(v.verdict, Outcome::Pass, "{v:?}");
    assert!(v.measured.starts_with("uid "));
    drop(user);
    let v = unix_user(&name);
    assert_eq!(v.verdict, Outcome::Fail, "{v:?}");
    assert!(v.hint.unwrap().contains("useradd"));
}

#[test]
fn grants_parse_into_privileges_and_objects() {
    let g = parse_grant("select, insert ON orders").unwrap();
    assert_eq!(g.privileges, ["SELECT", "INSERT"]);
    assert_eq!((g.kind, g.object.as_str()), ("table", "orders"));
    let g = parse_grant("USAGE ON SCHEMA app").unwrap();
    assert_eq!((g.kind, g.object.as_str()), ("schema", "app"));
    assert!(parse_grant("SELECT orders").is_err());
}
