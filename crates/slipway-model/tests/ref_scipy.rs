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
//!
//! The builtin `error-rate` judge's one-sided exact binomial tests against
//! `scipy.stats.binomtest(k, n, p, alternative='greater'|'less')` on generated counts, and
//! the judge's verdict (through `measure_builtin`) against scipy's p-value at the metric's
//! confidence.

use serde_json::json;
use slipway_model::analysis::{
    Limits, MAX_COMPARE_SAMPLES, Phase, SAMPLE_SEED, VersionWindow, Window, binomial_p_greater,
    binomial_p_less, mann_whitney_greater, measure_builtin, reservoir,
};
use slipway_model::spec::{Metric, Scalar};

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

const SCIPY_BINOM: &str = r#"
import json, sys
from scipy.stats import binomtest
out = []
for k, n, p in json.load(sys.stdin):
    out.append([float(binomtest(k, n, p, alternative="greater").pvalue),
                float(binomtest(k, n, p, alternative="less").pvalue)])
print(json.dumps(out))
"#;

/// Generated (errors, requests, rate) cases: window-sized and analysis-sized counts,
/// rates from rare to even, errors around, far below and far above the expected count,
/// and the edges (no error, every request an error, one request).
fn binomial_cases() -> Vec<(u64, u64, f64)> {
    let mut g = Gen(0xb1_0a1a_1715);
    let mut cases = Vec::new();
    for i in 0..400 {
        let n = match i % 4 {
            0 => 1 + g.below(60),
            1 => 50 + g.below(150),
            2 => 200 + g.below(2_000),
            _ => 5_000 + g.below(50_000),
        };
        let p = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9][g.below(8) as usize];
        let k = match g.below(5) {
            0 => 0,
            1 => n,
            2 => g.below(n + 1),
            // Around the expected count, where verdicts flip.
            _ => {
                let mean = (n as f64 * p).round() as u64;
                (mean + g.below(2 * (n as f64 * p).sqrt() as u64 + 4)).min(n)
            }
        };
        cases.push((k, n, p));
    }
    cases.extend([
        (0, 1, 0.05),
        (1, 1, 0.05),
        (3, 50, 0.05),
        (6, 50, 0.05),
        (50, 50, 0.05),
    ]);
    cases.extend([(10, 100, 0.05), (9, 100, 0.05), (1, 1_000_000, 0.000_001)]);
    cases
}

fn scipy_binom(cases: &[(u64, u64, f64)]) -> Vec<[f64; 2]> {
    let input: Vec<_> = cases.iter().map(|(k, n, p)| json!([k, n, p])).collect();
    let out = reference::python(SCIPY_BINOM, &serde_json::to_string(&input).unwrap());
    serde_json::from_str(out.trim()).unwrap()
}

fn close_binom(ours: f64, theirs: f64) -> bool {
    // Both go through the regularised incomplete beta function (scipy's binom.sf/cdf,
    // statrs's beta_reg): agreement to ~1e-9 relative, absolute far in the tail.
    (ours - theirs).abs() <= 1e-12 + 1e-8 * theirs.abs()
}

#[test]
fn binomial_p_values_match_scipy_binomtest() {
    if !scipy_available() {
        return;
    }
    let cases = binomial_cases();
    let theirs = scipy_binom(&cases);
    assert_eq!(theirs.len(), cases.len());
    for ((k, n, p), [greater, less]) in cases.iter().zip(&theirs) {
        let ours_g = binomial_p_greater(*k, *n, *p).expect("p-value");
        let ours_l = binomial_p_less(*k, *n, *p).expect("p-value");
        assert!(
            close_binom(ours_g, *greater),
            "k = {k}, n = {n}, p = {p}: greater: Slipway {ours_g:e}, scipy {greater:e}"
        );
        assert!(
            close_binom(ours_l, *less),
            "k = {k}, n = {n}, p = {p}: less: Slipway {ours_l:e}, scipy {less:e}"
        );
    }
}

#[test]
fn error_rate_verdicts_match_scipy_binomtest() {
    if !scipy_available() {
        return;
    }
    let cases = binomial_cases();
    let theirs = scipy_binom(&cases);
    let limits = Limits {
        interval_ms: 1000,
        min_samples: 1,
        failure_limit: 0,
        inconclusive_limit: 0,
        consecutive_error_limit: 4,
    };
    let (mut failed, mut passed) = (0, 0);
    for ((k, n, p), [greater, less]) in cases.iter().zip(&theirs) {
        for confidence in [0.9, 0.95, 0.99] {
            let alpha: f64 = 1.0 - confidence;
            // A p-value within rounding of α has no well-defined verdict to compare.
            if (greater - alpha).abs() < 1e-9 || (less - alpha).abs() < 1e-9 {
                continue;
            }
            let w = Window {
                canary: VersionWindow {
                    requests: *n,
                    errors: *k,
                    seconds: 1.0,
                    ..VersionWindow::default()
                },
                ..Window::default()
            };
            for (max, min, reference) in [
                (Some(p.to_string()), None, *greater),
                (None, Some(p.to_string()), *less),
            ] {
                let m = Metric {
                    name: "error-rate".into(),
                    provider: "builtin".into(),
                    query: None,
                    max: max.map(Scalar),
                    min: min.map(Scalar),
                    compare: None,
                    confidence: Some(confidence),
                };
                let r = measure_builtin(&m, &w, &limits);
                let expected = if reference < alpha {
                    failed += 1;
                    Phase::Failed
                } else {
                    passed += 1;
                    Phase::Successful
                };
                assert_eq!(
                    r.phase, expected,
                    "k = {k}, n = {n}, {m:?}: scipy p = {reference:e}; {}",
                    r.detail
                );
                assert_eq!(r.value, Some(*k as f64 / *n as f64));
            }
        }
    }
    // Both verdicts well represented among the cases.
    assert!(
        failed > 300 && passed > 300,
        "{failed} failed, {passed} passed"
    );
}
