//! Dependency resolution against the release and the environment, with explanations.

use std::collections::BTreeMap;

use slipway_package::deps::{VersionSource, resolve};

fn spec(requires: &str, deployed: &str) -> slipway_model::spec::ReleaseSpec {
    let text = format!(
        r#"
apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 2.4.0, type: feature }}
services:
  api:
    run: {{ command: api }}
    requires: {requires}
  web:
    version: 1.9.0
    run: {{ command: web }}
    requires: {{ api: ">=2.4, <3" }}
environments:
  prod:
    target: {{ process: {{}} }}
    deployed: {deployed}
"#
    );
    // Validation warns about deployed services outside the release, which is the point.
    match slipway_model::validate::load("release.yaml", &text) {
        Ok(l) => l.spec,
        Err(e) => panic!("{}", e.render(false, 100)),
    }
}

#[test]
fn deployed_version_outside_the_release_is_explained() {
    let s = spec(r#"{ db: ">=3" }"#, "{ db: 2.9.1, api: 2.3.0 }");
    let r = resolve(&s, "prod", &BTreeMap::new()).unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:#?}");
    let c = &r.conflicts[0];
    assert!(
        c.message.starts_with(
            "api 2.4.0 requires db >=3, but prod runs db 2.9.1 and this release does not ship db"
        ),
        "{}",
        c.message
    );
    assert_eq!(c.found.as_deref(), Some("2.9.1"));
    assert_eq!(c.source, Some(VersionSource::Deployed));
    // The release ships api 2.4.0, which satisfies web; the deployed api 2.3.0 is replaced.
    let plain = r.lock.plain();
    assert_eq!(
        plain,
        BTreeMap::from([
            ("api".to_owned(), "2.4.0".to_owned()),
            ("db".to_owned(), "2.9.1".to_owned()),
            ("web".to_owned(), "1.9.0".to_owned()),
        ])
    );
    assert_eq!(r.lock.versions["api"].source, VersionSource::Release);
    assert_eq!(r.lock.digest.len(), 64);
}

#[test]
fn observed_versions_override_the_spec_and_change_the_lock_digest() {
    let s = spec(r#"{ db: ">=3" }"#, "{ db: 2.9.1 }");
    let before = resolve(&s, "prod", &BTreeMap::new()).unwrap();
    let observed = BTreeMap::from([("db".to_owned(), "3.1.0".to_owned())]);
    let after = resolve(&s, "prod", &observed).unwrap();
    assert!(after.ok(), "{after:#?}");
    assert_ne!(before.lock.digest, after.lock.digest);
    // Same inputs, same digest.
    assert_eq!(after.lock, resolve(&s, "prod", &observed).unwrap().lock);
}

#[test]
fn prerelease_mismatch_explains_the_cargo_rule() {
    let s = spec(r#"{ db: ">=1.2.0, <2" }"#, "{ db: 1.2.3-rc.1 }");
    let r = resolve(&s, "prod", &BTreeMap::new()).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    let m = &r.conflicts[0].message;
    assert!(
        m.contains("pre-release 1.2.3-rc.1 does not match") && m.contains(">=1.2.3-rc.1"),
        "{m}"
    );
}

#[test]
fn unknown_required_service_and_unknown_environment() {
    let s = spec(r#"{ db: ">=3" }"#, "{ db: 3.0.0 }");
    let r = resolve(&s, "prod", &BTreeMap::new()).unwrap();
    assert!(r.ok());
    let mut s2 = s.clone();
    s2.environments.get_mut("prod").unwrap().deployed.clear();
    let r = resolve(&s2, "prod", &BTreeMap::new()).unwrap();
    assert!(
        r.conflicts[0]
            .message
            .contains("prod runs no known version of db"),
        "{:?}",
        r.conflicts
    );
    assert!(
        resolve(&s, "nope", &BTreeMap::new())
            .unwrap_err()
            .contains("unknown environment")
    );
}
