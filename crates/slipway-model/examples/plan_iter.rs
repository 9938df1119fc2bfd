//! One workload of the planning benchmark, N times, for instruction counts and page faults:
//! `plan_iter FILE (read|validate|plan|both) N`. criterion reports time; this lets
//! callgrind, `perf stat` and `/usr/bin/time -v` see one iteration's work (run N = 1 and
//! N = 3 and take the difference over 2 to leave the setup out). It allocates with
//! mimalloc, like the `slipway` binary and the criterion benchmark.
#![allow(clippy::expect_used, reason = "benchmark tool: a panic is a failure")]

use slipway_model::{plan, validate, yaml};

// The `slipway` binary's allocator, so the counts are those of what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let file = args.next().expect("usage: plan_iter FILE MODE N");
    let mode = args.next().expect("usage: plan_iter FILE MODE N");
    let n: usize = args
        .next()
        .expect("usage: plan_iter FILE MODE N")
        .parse()
        .expect("N is a number");
    let text = std::fs::read_to_string(&file).expect("reads the spec");
    let loaded = validate::load(&file, &text).expect("the spec is valid");
    for _ in 0..n {
        match mode.as_str() {
            "read" => {
                std::hint::black_box(yaml::parse(&text).expect("parses"));
            }
            "validate" => {
                std::hint::black_box(validate::load(&file, &text).expect("valid"));
            }
            "plan" => {
                std::hint::black_box(
                    plan::plan(&loaded.spec, "prod", &plan::Facts::default()).expect("plans"),
                );
            }
            "both" => {
                let l = validate::load(&file, &text).expect("valid");
                std::hint::black_box(
                    plan::plan(&l.spec, "prod", &plan::Facts::default()).expect("plans"),
                );
            }
            other => panic!("unknown mode {other}"),
        }
    }
}
