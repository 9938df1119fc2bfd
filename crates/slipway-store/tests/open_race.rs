//! Many openers of one brand-new store at the same moment: every one succeeds and the
//! schema is created once (found by CI as a lease-test flake between two processes) — an
//! SQLite file and a PostgreSQL database alike.

use crate::common::{Backend, Fresh, on_both};

async fn concurrent_opens_of_a_fresh_store_all_succeed(b: Backend) {
    for round in 0..5 {
        let fresh = std::sync::Arc::new(Fresh::new(b));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let f = fresh.clone();
            tasks.push(tokio::spawn(async move { f.open().await.map(|_| ()) }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

on_both!(concurrent_opens_of_a_fresh_store_all_succeed);
