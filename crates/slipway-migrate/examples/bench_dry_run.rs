//! Benchmark driver: dry-run the migrations in DIR against URL and print the timings
//! (clone, apply, undo, drop) as one JSON line. Run by `benches/dry_run.sh`, which starts a
//! PostgreSQL server, loads a database of at least 100 MB and writes 50 migrations.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(clippy::print_stdout, reason = "benchmark output")]

use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: bench_dry_run URL DIR".into());
    };
    let start = Instant::now();
    let r = slipway_migrate::dry_run(&url, std::path::Path::new(&dir)).await?;
    let total_ms = start.elapsed().as_millis();
    if !r.passed() {
        return Err(format!("dry run did not pass: {r:#?}").into());
    }
    let slowest = r
        .steps
        .iter()
        .max_by_key(|s| s.apply_ms)
        .map(|s| (s.version, s.apply_ms));
    println!(
        "{}",
        serde_json::json!({
            "migrations": r.steps.len(),
            "clone_ms": r.clone_ms,
            "apply_ms": r.apply_ms,
            "undo_ms": r.undo_ms,
            "total_ms": total_ms,
            "drop_and_compare_ms": total_ms.saturating_sub(u128::from(r.clone_ms + r.apply_ms + r.undo_ms)),
            "slowest_apply": slowest,
            "undo_restores_schema": r.undo_restores_schema,
            "clone_dropped": r.clone_dropped,
        })
    );
    Ok(())
}
