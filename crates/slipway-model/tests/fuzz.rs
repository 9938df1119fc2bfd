//! Property tests: loading never panics or hangs, whatever the input.
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
    }
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
