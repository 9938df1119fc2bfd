//! Consistency checks catch a lost row (count, sum, checksum; both values in the failure),
//! pass on equal data, honour the tolerance, and work across two databases.

use slipway_migrate::consistency::Value;
use slipway_migrate::{Check, Measure, Side, run_check};

use crate::common::{both, exec, pg, sqlite};

fn check(measure: Measure, left: Side, right: Side, tolerance: f64) -> Check {
    Check {
        name: "orders copied".into(),
        measure,
        left,
        right,
        tolerance,
    }
}

fn side(url: &str, table: &str) -> Side {
    Side {
        url: url.to_owned(),
        table: table.to_owned(),
        filter: None,
    }
}

fn measures() -> Vec<Measure> {
    vec![
        Measure::RowCount,
        Measure::Sum {
            column: "total".into(),
        },
        Measure::Checksum {
            columns: vec!["id".into(), "total".into(), "note".into()],
            order_by: vec!["id".into()],
        },
    ]
}

#[tokio::test]
async fn lost_row_between_two_tables_is_caught() {
    for (_guard, url) in both("consistency").await {
        exec(
            &url,
            "CREATE TABLE orders_old (id INTEGER PRIMARY KEY, total INTEGER NOT NULL, note TEXT);\n\
             CREATE TABLE orders_new (id INTEGER PRIMARY KEY, total INTEGER NOT NULL, note TEXT);\n\
             INSERT INTO orders_old VALUES (1, 10, 'a'), (2, 20, NULL), (3, 30, 'c');\n\
             INSERT INTO orders_new SELECT * FROM orders_old;",
        )
        .await;
        for m in measures() {
            let out = run_check(&check(
                m.clone(),
                side(&url, "orders_old"),
                side(&url, "orders_new"),
                0.0,
            ))
            .await
            .unwrap();
            assert!(out.passed, "{m:?}: {}", out.message);
        }
        exec(&url, "DELETE FROM orders_new WHERE id = 2;").await;
        let count = run_check(&check(
            Measure::RowCount,
            side(&url, "orders_old"),
            side(&url, "orders_new"),
            0.0,
        ))
        .await
        .unwrap();
        assert!(!count.passed);
        assert_eq!(
            (count.left.clone(), count.right.clone()),
            (Value::Number { value: 3.0 }, Value::Number { value: 2.0 })
        );
        assert!(
            count.message.contains("has 3") && count.message.contains("has 2"),
            "{}",
            count.message
        );
        let sum = run_check(&check(
            measures()[1].clone(),
            side(&url, "orders_old"),
            side(&url, "orders_new"),
            0.0,
        ))
        .await
        .unwrap();
        assert!(
            !sum.passed && sum.difference == Some(20.0),
            "{}",
            sum.message
        );
        let cs = run_check(&check(
            measures()[2].clone(),
            side(&url, "orders_old"),
            side(&url, "orders_new"),
            0.0,
        ))
        .await
        .unwrap();
        assert!(!cs.passed, "{}", cs.message);
        assert!(
            matches!(cs.left, Value::Checksum { rows: 3, .. })
                && matches!(cs.right, Value::Checksum { rows: 2, .. })
        );

        // A NULL vs empty string is a difference the checksum sees.
        exec(&url, "INSERT INTO orders_new VALUES (2, 20, '');").await;
        let cs = run_check(&check(
            measures()[2].clone(),
            side(&url, "orders_old"),
            side(&url, "orders_new"),
            0.0,
        ))
        .await
        .unwrap();
        assert!(!cs.passed, "NULL and '' must differ");
        // Within tolerance passes, outside fails.
        exec(&url, "UPDATE orders_new SET total = 21 WHERE id = 2;").await;
        let sum = |t| {
            check(
                measures()[1].clone(),
                side(&url, "orders_old"),
                side(&url, "orders_new"),
                t,
            )
        };
        assert!(run_check(&sum(1.0)).await.unwrap().passed);
        assert!(!run_check(&sum(0.5)).await.unwrap().passed);
        // A filter restricts both sides.
        let mut c = sum(0.0);
        c.left.filter = Some("id <> 2".into());
        c.right.filter = Some("id <> 2".into());
        assert!(run_check(&c).await.unwrap().passed);
    }
}

#[tokio::test]
async fn counts_compare_across_databases_and_backends() {
    let pg_url = pg().new_db("consistency_x").await;
    let (_d, sqlite_url) = sqlite();
    for url in [&pg_url, &sqlite_url] {
        exec(url, "CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER);\nINSERT INTO events VALUES (1, 5), (2, 7);").await;
    }
    let c = check(
        Measure::RowCount,
        side(&pg_url, "events"),
        side(&sqlite_url, "events"),
        0.0,
    );
    assert!(run_check(&c).await.unwrap().passed);
    exec(&sqlite_url, "DELETE FROM events WHERE id = 1;").await;
    let out = run_check(&c).await.unwrap();
    assert!(!out.passed);
    assert!(
        out.message.contains("postgres://") && out.message.contains("sqlite://"),
        "{}",
        out.message
    );
}
