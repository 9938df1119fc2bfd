//! Property tests: loading never panics or hangs, whatever the input, and no input reaches
//! an `internal` diagnostic (a spec the schema accepts always reads into the Rust types).
//!
//! Cases come from three generators: arbitrary bytes, YAML-looking text built from spec
//! tokens, and mutations of the real examples. `PROPTEST_CASES` scales the run.

use proptest::prelude::*;
use slipway_model::{plan, validate};

/// 512 cases per property in the normal suite; `PROPTEST_CASES` for long fuzzing runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn check(bytes: &[u8]) {
    if let Ok(l) = validate::load_bytes("fuzz.yaml", bytes) {
        // A spec that validates must also plan for each of its environments.
        for env in l.spec.environments.keys() {
            plan::plan(&l.spec, env, &plan::Facts::default()).unwrap();
        }
    } else if let Err(e) = validate::load_bytes("fuzz.yaml", bytes) {
        // Rendering must not panic either, whatever positions the diagnostics carry.
        let _ = e.render(false, 80);
        let internal: Vec<_> = e
            .diagnostics
            .iter()
            .filter(|d| d.code == "internal")
            .collect();
        assert!(
            internal.is_empty(),
            "input reached an internal error: {internal:?}\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Every pointer to a value inside `v`.
fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, c) in o {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Values a user might write where another was expected: big, negative, fractional and
/// whole-float numbers, the integer limits of the Rust types and just past them, strings,
/// booleans, nothing, lists and mappings.
fn odd_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        (0u32..200).prop_map(|n| json!(f64::from(n))),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(100),
            json!(101),
            json!(0.5),
            json!(1.0),
            json!(10.0),
            json!(255),
            json!(256),
            json!(65535),
            json!(65536),
            json!(4_294_967_295_u64),
            json!(4_294_967_296_u64),
            json!(99_999_999_999_u64),
            json!(5_000_000_000_u64),
            json!(9_007_199_254_740_991_u64),
            json!(9_007_199_254_740_993_u64),
            json!(u64::MAX),
            json!(1e300),
            json!(-0.0),
            json!(""),
            json!("x"),
            json!("25%"),
            json!("1h"),
            json!(true),
            json!(null),
            json!([]),
            json!({}),
            json!(["a"]),
            json!({"a": 1}),
        ]),
        "[a-z%0-9 .:-]{0,12}".prop_map(|s| json!(s)),
    ]
}

/// The typed side of the examples: a value replaced anywhere by an odd one, as JSON text
/// (JSON is YAML).
fn mutated_value(which: usize, edits: &[(prop::sample::Index, serde_json::Value)]) -> String {
    let name = ["shop", "security-patch", "hotfix"][which];
    let text = std::fs::read_to_string(crate::repo_path(&format!("examples/{name}/release.yaml")))
        .unwrap();
    let mut v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for (at, new) in edits {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        let p = &all[at.index(all.len())];
        if let Some(slot) = v.pointer_mut(p) {
            *slot = new.clone();
        }
    }
    serde_json::to_string_pretty(&v).unwrap()
}

const TOKENS: &[&str] = &[
    "apiVersion: slipway/v1\n",
    "kind: Release\n",
    "metadata:\n",
    "  name: x\n",
    "  version: 1.0.0\n",
    "  type: patch\n",
    "services:\n",
    "  a:\n",
    "    depends_on: [a, b]\n",
    "  b: { steps: [ { name: i, run: x } ] }\n",
    "environments:\n",
    "  e: { target: { exec: {} } }\n",
    "&x ",
    "*x",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "'",
    "\"",
    "\n",
    "  ",
    "---\n",
    "? ",
    "!!str ",
    "windows: [ { cron: '* * * * *', timezone: UTC, duration: 1h } ]\n",
    "\t",
    "#",
    "|\n",
    ">\n",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn yaml_shaped_text_never_panics(parts in proptest::collection::vec(0..TOKENS.len(), 0..64)) {
        let text: String = parts.iter().map(|i| TOKENS[*i]).collect();
        check(text.as_bytes());
    }

    #[test]
    fn odd_values_anywhere_never_reach_an_internal_error(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), odd_value()), 1..4),
    ) {
        check(mutated_value(which, &edits).as_bytes());
    }

    #[test]
    fn mutated_examples_never_panic(
        which in 0usize..3,
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let name = ["shop", "security-patch", "hotfix"][which];
        let mut bytes = std::fs::read(crate::repo_path(&format!("examples/{name}/release.yaml"))).unwrap();
        for (at, b) in cuts {
            let i = at.index(bytes.len());
            match b % 3 {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b),
            }
        }
        check(&bytes);
    }
}
