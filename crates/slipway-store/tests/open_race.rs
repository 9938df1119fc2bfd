//! Many openers of one brand-new store at the same moment: every one succeeds and the
//! schema is created once (found by CI as a lease-test flake between two processes).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_of_a_fresh_store_all_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("fresh-{round}.db"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let p = path.clone();
            tasks.push(tokio::spawn(async move {
                slipway_store::SqliteStore::open(&p).await.map(|_| ())
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
