//! Cross-check of the canary judge's Mann-Whitney U test against scipy
//! (`scipy.stats.mannwhitneyu(canary, stable, alternative='greater',
//! method='asymptotic', use_continuity=True)`), the reference implementation.
//!
//! Generated samples (seeded): quantised latencies with many ties, unequal sizes, all
//! values equal, shifted and unshifted sides, and sides above the cap. Below the cap
//! both get the same samples; above it both get the samples Slipway's reservoir drew
//! (the p-values must agree), and for the scenarios the sampling exists for (a late
//! regression, a slower half, equal distributions of different sizes) Slipway's verdict on
//! its sample must be scipy's verdict on *all* samples.

use serde_json::json;
use slipway_model::analysis::{MAX_COMPARE_SAMPLES, SAMPLE_SEED, mann_whitney_greater, reservoir};

use crate::reference;

const SCIPY: &str = r#"
import json, sys
from scipy.stats import mannwhitneyu
out = []
for case in json.load(sys.stdin):
    r = mannwhitneyu(case["c"], case["s"], alternative="greater",
                     method="asymptotic", use_continuity=True)
    out.append(float(r.pvalue))
print(json.dumps(out))
"#;

fn scipy_available() -> bool {
    reference::available(
        "scipy Mann-Whitney",
        &["python3", "-c", "import scipy.stats"],
        "`python3 -m pip install scipy`",
    )
}

fn scipy(cases: &[(Vec<f64>, Vec<f64>)]) -> Vec<f64> {
    let input: Vec<_> = cases.iter().map(|(c, s)| json!({"c": c, "s": s})).collect();
    let out = reference::python(SCIPY, &serde_json::to_string(&input).unwrap());
    serde_json::from_str(out.trim()).unwrap()
}

/// A small deterministic generator (xorshift64*), so the cases are the same every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A latency-like value: log-normal-ish around `median` ms, quantised to `step` ms
    /// (so ties are common, as with real timers).
    fn latency(&mut self, median: f64, step: f64) -> f64 {
        let z = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        (median * (0.4 * z).exp() / step).round() * step
    }
    fn side(&mut self, n: usize, median: f64, step: f64) -> Vec<f64> {
        (0..n).map(|_| self.latency(median, step)).collect()
    }
}

fn close(ours: f64, theirs: f64) -> bool {
    // statrs computes 1 - cdf(z) where scipy computes the survival function, so far in the
    // tail (p < 1e-12) ours rounds towards 0: an absolute tolerance covers that.
    (ours - theirs).abs() <= 1e-10 + 1e-9 * theirs.abs()
}

#[test]
fn p_values_match_scipy_on_generated_samples() {
    if !scipy_available() {
        return;
    }
    let mut g = Gen(0x5eed_1234_abcd_ef01);
    let mut cases = Vec::new();
    for i in 0..150 {
        let n1 = 2 + g.below(250) as usize;
        let n2 = 2 + g.below(250) as usize;
        let step = [0.001, 0.1, 1.0, 5.0][i % 4];
        let shift = [1.0, 1.0, 1.05, 1.3, 0.9][g.below(5) as usize];
        let c = g.side(n1, 20.0 * shift, step);
        let s = g.side(n2, 20.0, step);
        cases.push((c, s));
    }
    // Degenerate shapes: every value equal, one side constant, tiny sides, huge ties.
    cases.push((vec![5.0; 40], vec![5.0; 60]));
    cases.push((vec![5.0; 40], g.side(50, 5.0, 1.0)));
    cases.push((vec![1.0, 2.0], vec![1.0, 2.0, 3.0]));
    cases.push((vec![3.0, 3.0, 4.0], vec![1.0, 1.0]));
    // Sides above the cap: both implementations get Slipway's reservoir sample.
    for (n1, n2, shift) in [(4000, 2500, 1.0), (1501, 9000, 1.02), (3000, 3000, 1.1)] {
        let c = g.side(n1, 20.0 * shift, 0.1);
        let s = g.side(n2, 20.0, 0.1);
        cases.push((c, s));
    }
    let sampled: Vec<_> = cases
        .iter()
        .map(|(c, s)| {
            (
                reservoir(c, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
                reservoir(s, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
            )
        })
        .collect();
    let theirs = scipy(&sampled);
    assert_eq!(theirs.len(), sampled.len());
    let mut checked = 0;
    for ((c, s), p_ref) in sampled.iter().zip(&theirs) {
        let ours = mann_whitney_greater(c, s).expect("p-value");
        assert!(
            close(ours, *p_ref),
            "n = {}/{}: Slipway p = {ours:e}, scipy p = {p_ref:e}",
            c.len(),
            s.len()
        );
        checked += 1;
    }
    assert_eq!(checked, 157);
}

#[test]
fn verdicts_on_a_uniform_sample_match_scipy_on_all_samples() {
    if !scipy_available() {
        return;
    }
    let mut g = Gen(0x0dd_ba11);
    // (name, canary, stable, slower?) — every side above the cap.
    let mut late = g.side(4000, 20.0, 0.1);
    for x in late.iter_mut().skip(1500) {
        *x *= 1.15;
    }
    let mut half = g.side(3000, 20.0, 0.1);
    for x in half.iter_mut().step_by(2) {
        *x *= 4.0;
    }
    half.sort_by(f64::total_cmp);
    let mut same_small = g.side(2000, 20.0, 0.1);
    let mut same_big = g.side(3000, 20.0, 0.1);
    same_small.sort_by(f64::total_cmp);
    same_big.sort_by(f64::total_cmp);
    let scenarios = [
        (
            "regression late in the window",
            late,
            g.side(4000, 20.0, 0.1),
            true,
        ),
        ("slower half, sorted", half, g.side(3000, 20.0, 0.1), true),
        (
            "same distribution, 2000 vs 3000 sorted",
            same_small,
            same_big,
            false,
        ),
    ];
    let all: Vec<_> = scenarios
        .iter()
        .map(|(_, c, s, _)| (c.clone(), s.clone()))
        .collect();
    let theirs = scipy(&all);
    let alpha = 0.01;
    for ((name, c, s, slower), p_all) in scenarios.iter().zip(theirs) {
        let ours = mann_whitney_greater(
            &reservoir(c, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
            &reservoir(s, MAX_COMPARE_SAMPLES, SAMPLE_SEED),
        )
        .unwrap();
        assert_eq!(
            p_all < alpha,
            *slower,
            "{name}: scipy on all samples p = {p_all:e}"
        );
        assert_eq!(
            ours < alpha,
            p_all < alpha,
            "{name}: Slipway on its sample p = {ours:e}, scipy on all p = {p_all:e}"
        );
    }
}
