//! Planning a generated spec of 2,000 services and 10,000 dependency edges: validation
//! (all three passes) and planning, measured separately.
//!
//! The benchmark allocates with mimalloc, the global allocator of the `slipway` binary
//! (crates/slipway-cli/src/main.rs), so it measures the work as users run it: under glibc's
//! malloc, allocation was about a quarter of the profile and the figures were not the
//! CLI's.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(clippy::expect_used, reason = "benchmark setup: a panic is a failure")]

use std::fmt::Write;

use criterion::{Criterion, criterion_group, criterion_main};
use slipway_model::{plan, validate};

// The `slipway` binary's allocator (see the module doc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 2,000 services in 20 layers; each service depends on 5 services of earlier layers,
/// giving 10,000 edges (the first layer has none, so a few are added in later layers).
pub fn generated_spec(services: usize, edges: usize) -> String {
    let mut s = String::from(
        "apiVersion: slipway/v1\nkind: Release\nmetadata: { name: big, version: 1.0.0, type: feature }\nservices:\n",
    );
    let layers = 20;
    let per_layer = services / layers;
    let with_deps = services - per_layer;
    let mut remaining = edges;
    for i in 0..services {
        let layer = i / per_layer;
        let mut deps = Vec::new();
        if layer > 0 {
            let want = remaining.div_ceil(with_deps - (i - per_layer)).min(i);
            for k in 0..want {
                // Deterministic spread over all earlier services.
                let d = (i * 7919 + k * 104_729) % (layer * per_layer);
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
            remaining -= deps.len().min(remaining);
        }
        let deps: Vec<String> = deps.iter().map(|d| format!("s{d}")).collect();
        let _ = writeln!(
            s,
            "  s{i}: {{ depends_on: [{}], steps: [ {{ name: install, run: \"echo {i}\", undo: \"echo undo {i}\" }} ] }}",
            deps.join(", ")
        );
    }
    s.push_str("environments:\n  prod: { production: true, target: { exec: {} }, approvals: { required: 2 } }\n");
    s
}

fn bench(c: &mut Criterion) {
    let text = generated_spec(2_000, 10_000);
    let loaded = validate::load("big.yaml", &text).expect("generated spec is valid");
    let edges: usize = loaded
        .spec
        .services
        .values()
        .map(|s| s.depends_on.len())
        .sum();
    assert_eq!(loaded.spec.services.len(), 2_000);
    assert!(edges >= 9_900, "only {edges} edges");
    let mut g = c.benchmark_group("plan-2000-services-10000-edges");
    g.sample_size(10);
    g.bench_function("validate", |b| {
        b.iter(|| validate::load("big.yaml", &text).expect("valid"))
    });
    g.bench_function("plan", |b| {
        b.iter(|| plan::plan(&loaded.spec, "prod", &plan::Facts::default()).expect("plans"))
    });
    g.bench_function("validate+plan", |b| {
        b.iter(|| {
            let l = validate::load("big.yaml", &text).expect("valid");
            plan::plan(&l.spec, "prod", &plan::Facts::default()).expect("plans")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
