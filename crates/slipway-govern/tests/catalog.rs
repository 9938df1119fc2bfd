//! Backstage entities and the dependency map of the shop example, lifecycles from a
//! seeded run history.

use slipway_engine::RunState;
use slipway_govern::catalog;
use slipway_govern::history::load_runs;

use crate::common::*;

fn shop() -> slipway_model::spec::ReleaseSpec {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/release.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    slipway_model::validate::load("release.yaml", &text)
        .unwrap()
        .spec
}

#[tokio::test]
async fn entities_carry_owner_dependencies_and_lifecycle_from_history() {
    let spec = shop();
    let none = catalog::entities(&spec, &[]);
    let api = none.iter().find(|e| e.name == "shop-api").unwrap();
    assert_eq!(api.kind, "Component");
    assert_eq!(api.lifecycle.as_deref(), Some("experimental"));
    assert_eq!(api.owner, "team-checkout");
    assert_eq!(api.depends_on, ["resource:shop-db"]);
    let db = none.iter().find(|e| e.name == "shop-db").unwrap();
    assert_eq!(
        (db.kind.as_str(), db.entity_type.as_deref()),
        ("Resource", Some("database"))
    );

    // A production run of the feature spec (api + web) that succeeded.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let p = plan(SHOP_FEATURE, "prod");
    seed(
        &store,
        "p1",
        &p,
        "op-bob",
        "2026-11-02T10:00:00Z",
        lifecycle(
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:10:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    let runs = load_runs(&store, None).await.unwrap();
    let with = catalog::entities(&spec, &runs);
    let api = with.iter().find(|e| e.name == "shop-api").unwrap();
    assert_eq!(api.lifecycle.as_deref(), Some("production"));

    let yaml = catalog::to_yaml(&with);
    let docs: Vec<serde_json::Value> = yaml
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 4, "a System and three services:\n{yaml}");
    let web = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "shop-web")
        .unwrap();
    assert_eq!(web["apiVersion"], "backstage.io/v1alpha1");
    assert_eq!(web["spec"]["dependsOn"][0], "component:shop-api");
    assert_eq!(web["spec"]["lifecycle"], "production");
    assert_eq!(web["spec"]["system"], "shop");
}

#[tokio::test]
async fn entities_carry_the_version_that_runs_in_each_environment_from_history() {
    let spec = shop();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let p = plan(SHOP_FEATURE, "prod");
    seed(
        &store,
        "p1",
        &p,
        "op-bob",
        "2026-11-02T10:00:00Z",
        lifecycle(
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:10:00Z",
            RunState::Succeeded,
        ),
    )
    .await;
    // A newer release that rolled back there: what runs is still p1's.
    let mut newer = p.clone();
    newer.release.version = "2.5.0".into();
    seed(
        &store,
        "p2",
        &newer,
        "op-bob",
        "2026-11-03T10:00:00Z",
        lifecycle(
            "2026-11-03T10:00:00Z",
            "2026-11-03T10:10:00Z",
            RunState::RolledBack,
        ),
    )
    .await;
    let runs = load_runs(&store, None).await.unwrap();
    let with = catalog::entities(&spec, &runs);
    let annotation = |entity: &str, key: &str| {
        with.iter()
            .find(|e| e.name == entity)
            .unwrap()
            .annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        annotation("shop-api", "slipway.dev/deployed.prod").as_deref(),
        Some(p.release.version.as_str())
    );
    assert_eq!(
        annotation("shop-api", "slipway.dev/deployed-run.prod").as_deref(),
        Some("p1")
    );
    assert_eq!(annotation("shop-api", "slipway.dev/deployed.staging"), None);
    assert_eq!(
        annotation("shop", "slipway.dev/spec-version").as_deref(),
        Some(spec.metadata.version.as_str())
    );
    let yaml = catalog::to_yaml(&with);
    assert!(
        yaml.contains(&format!(
            "\"slipway.dev/deployed.prod\": \"{}\"",
            p.release.version
        )),
        "{yaml}"
    );
}

#[test]
fn dependency_map_is_dot() {
    let dot = catalog::to_dot(&shop());
    assert!(dot.starts_with("digraph \"shop\" {"), "{dot}");
    assert!(dot.contains("\"api\" -> \"db\";"), "{dot}");
    assert!(dot.contains("\"web\" -> \"api\";"), "{dot}");
    assert!(
        dot.contains("\"db\" [label=\"db\", shape=cylinder];"),
        "{dot}"
    );
}
