//! Performance regression with the real demo-app binary: two identical instances side
//! by side pass; a candidate with 30 ms added latency fails on p50/p95 and on the
//! Mann-Whitney test, and the report carries both distributions.

use std::time::Duration;

use slipway_checks::Outcome;
use slipway_checks::perf::{Load, Tolerance, compare_side_by_side};

use crate::common::demo_app;

fn load() -> Load {
    Load {
        // demo-app adds --latency to `/` only; the distributions are pooled over paths.
        paths: vec!["/".into()],
        rate: 60,
        workers: 6,
        duration: Duration::from_secs(3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30ms_slower_candidate_fails_and_an_equal_one_passes() {
    let baseline = demo_app(&[]);
    let same = demo_app(&[]);
    let slow = demo_app(&["--latency", "30ms"]);
    let r = compare_side_by_side(&baseline.addr, &slow.addr, &load(), Tolerance::default()).await;
    let get = |r: &slipway_checks::perf::Report, c: &str| {
        r.rows.iter().find(|v| v.check == c).unwrap().clone()
    };
    assert_eq!(get(&r, "perf.p50").verdict, Outcome::Fail, "{:#?}", r.rows);
    assert_eq!(
        get(&r, "perf.distribution").verdict,
        Outcome::Fail,
        "{:#?}",
        r.rows
    );
    assert!(
        r.candidate.p50 >= 30.0 && r.baseline.p50 < 30.0,
        "{:?} {:?}",
        r.candidate,
        r.baseline
    );
    assert!(r.candidate.ok > 100 && r.baseline.ok > 100);
    let r = compare_side_by_side(&baseline.addr, &same.addr, &load(), Tolerance::default()).await;
    for c in ["perf.throughput", "perf.p50", "perf.distribution"] {
        assert_eq!(get(&r, c).verdict, Outcome::Pass, "{c}: {:#?}", r.rows);
    }
}
