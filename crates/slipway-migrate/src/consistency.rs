//! Data consistency checks: the same measure taken on two sides (two databases, or two
//! tables of one) and compared with a tolerance, e.g. old vs new table in an
//! expand/contract migration, or primary vs replica.
//!
//! Measures: row count, sum of a column, and a sha256 checksum over rows in a declared
//! order (each value cast to text by the database). Text renderings differ between
//! PostgreSQL and SQLite for booleans and floating point, so checksums compare like with
//! like; counts and sums work across backends. `filter` is SQL from the spec author (a
//! trusted input, like the migrations themselves).

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::error::{Error, Result};
use crate::target::{Conn, Target, quote_ident};

/// Where a measure is taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub url: String,
    /// Table name, optionally `schema.table`.
    pub table: String,
    /// Optional SQL condition (without `WHERE`).
    #[serde(default)]
    pub filter: Option<String>,
}

/// What is measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Measure {
    /// Number of rows.
    RowCount,
    /// Sum of a numeric column (NULLs ignored, empty = 0).
    Sum { column: String },
    /// sha256 over `columns` of every row ordered by `order_by` (a unique key, so the order is
    /// total).
    Checksum {
        columns: Vec<String>,
        order_by: Vec<String>,
    },
}

/// A declared check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub measure: Measure,
    pub left: Side,
    pub right: Side,
    /// Largest accepted absolute difference for counts and sums (checksums must be equal).
    #[serde(default)]
    pub tolerance: f64,
}

/// A measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Value {
    Number { value: f64 },
    Checksum { digest: String, rows: u64 },
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number { value } => write!(f, "{value}"),
            Self::Checksum { digest, rows } => write!(f, "{digest} over {rows} rows"),
        }
    }
}

/// The result of one check; a failure carries both values.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: String,
    pub passed: bool,
    /// `url table` of each side, URL masked.
    pub left_source: String,
    pub right_source: String,
    pub left: Value,
    pub right: Value,
    /// |left - right| for numbers.
    pub difference: Option<f64>,
    pub tolerance: f64,
    pub message: String,
}

/// The first value of the first row `query` returns on the database at `url` (PostgreSQL
/// or SQLite), as text; `None` when it returns no row. A `sql` check (`equals`) compares
/// it. Read-only by intent, not by enforcement: the query is the spec author's, like the
/// migrations themselves.
pub async fn query_first(url: &str, query: &str) -> Result<Option<String>> {
    let target = Target::parse(url)?;
    let mut conn = target.connect(false).await?;
    let q = |source| Error::Query {
        what: "run the check's query".into(),
        url: target.display(),
        source,
    };
    fn text<R: Row>(r: &R) -> String
    where
        for<'c> String: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
        for<'c> i64: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
        for<'c> i32: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
        for<'c> bool: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
        for<'c> f64: sqlx::Decode<'c, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        // Any column type: the common ones in turn (a value cast to text in the query
        // always reads).
        r.try_get::<String, _>(0)
            .or_else(|_| r.try_get::<i64, _>(0).map(|v| v.to_string()))
            .or_else(|_| r.try_get::<i32, _>(0).map(|v| v.to_string()))
            .or_else(|_| r.try_get::<bool, _>(0).map(|v| v.to_string()))
            .or_else(|_| r.try_get::<f64, _>(0).map(|v| v.to_string()))
            .unwrap_or_else(|_| "<unreadable type; cast the column to text>".to_owned())
    }
    let sql = sqlx::AssertSqlSafe(query.to_owned());
    let value = match &mut conn {
        Conn::Pg(c) => sqlx::query(sql)
            .fetch_optional(&mut *c)
            .await
            .map_err(q)?
            .map(|r| text(&r)),
        Conn::Sqlite(c) => sqlx::query(sql)
            .fetch_optional(&mut *c)
            .await
            .map_err(q)?
            .map(|r| text(&r)),
    };
    conn.close().await;
    Ok(value)
}

/// Measure both sides and compare.
pub async fn run_check(check: &Check) -> Result<CheckOutcome> {
    let (left, right) = tokio::try_join!(
        measure(&check.left, &check.measure),
        measure(&check.right, &check.measure)
    )?;
    let (passed, difference) = match (&left, &right) {
        (Value::Number { value: l }, Value::Number { value: r }) => {
            let d = (l - r).abs();
            // NaN never passes: a comparison with NaN is false.
            (d <= check.tolerance, Some(d))
        }
        (a, b) => (a == b, None),
    };
    let source = |s: &Side| format!("{} {}", crate::target::mask_url(&s.url), s.table);
    let message = if passed {
        format!("{}: {left} = {right}", check.name)
    } else {
        format!(
            "{}: {} has {left}, {} has {right}{}",
            check.name,
            source(&check.left),
            source(&check.right),
            difference
                .map(|d| format!(" (difference {d}, tolerance {})", check.tolerance))
                .unwrap_or_default()
        )
    };
    Ok(CheckOutcome {
        name: check.name.clone(),
        passed,
        left_source: source(&check.left),
        right_source: source(&check.right),
        left,
        right,
        difference,
        tolerance: check.tolerance,
        message,
    })
}

async fn measure(side: &Side, m: &Measure) -> Result<Value> {
    let target = Target::parse(&side.url)?;
    let mut conn = target.connect(false).await?;
    let table = quote_ident(&side.table);
    let filter = side
        .filter
        .as_deref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let q = |source| Error::Query {
        what: format!("measure {}", side.table),
        url: target.display(),
        source,
    };
    let result = match m {
        Measure::RowCount | Measure::Sum { .. } => {
            let expr = match m {
                Measure::Sum { column } => format!("COALESCE(SUM({}), 0)", quote_ident(column)),
                _ => "COUNT(*)".to_owned(),
            };
            // DOUBLE PRECISION is a type in PostgreSQL and has REAL affinity in SQLite.
            let sql = format!("SELECT CAST({expr} AS DOUBLE PRECISION) FROM {table}{filter}");
            let r: Result<f64, sqlx::Error> = match &mut conn {
                Conn::Pg(c) => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .fetch_one(&mut *c)
                        .await
                }
                Conn::Sqlite(c) => {
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .fetch_one(&mut *c)
                        .await
                }
            };
            r.map(|value| Value::Number { value }).map_err(q)
        }
        Measure::Checksum { columns, order_by } => {
            let cols: Vec<String> = columns
                .iter()
                .map(|c| format!("CAST({} AS TEXT)", quote_ident(c)))
                .collect();
            let order: Vec<String> = order_by.iter().map(|c| quote_ident(c)).collect();
            if cols.is_empty() || order.is_empty() {
                return Err(Error::Unsupported(format!(
                    "run a checksum on {}: name the columns and a unique order_by",
                    side.table
                )));
            }
            let sql = format!(
                "SELECT {} FROM {table}{filter} ORDER BY {}",
                cols.join(", "),
                order.join(", ")
            );
            let mut h = Sha256::new();
            let mut rows = 0u64;
            let n = cols.len();
            // Unambiguous framing: each value is tagged NULL or length-prefixed.
            let mut feed = |vals: Vec<Option<String>>| {
                for v in vals {
                    match v {
                        None => h.update([0u8]),
                        Some(s) => {
                            h.update([1u8]);
                            h.update((s.len() as u64).to_le_bytes());
                            h.update(s.as_bytes());
                        }
                    }
                }
                rows += 1;
            };
            let r: Result<(), sqlx::Error> = match &mut conn {
                Conn::Pg(c) => {
                    async {
                        let mut s = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *c);
                        while let Some(row) = s.try_next().await? {
                            let v = (0..n)
                                .map(|i| row.try_get::<Option<String>, _>(i))
                                .collect::<Result<Vec<_>, _>>()?;
                            feed(v);
                        }
                        Ok(())
                    }
                    .await
                }
                Conn::Sqlite(c) => {
                    async {
                        let mut s = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *c);
                        while let Some(row) = s.try_next().await? {
                            let v = (0..n)
                                .map(|i| row.try_get::<Option<String>, _>(i))
                                .collect::<Result<Vec<_>, _>>()?;
                            feed(v);
                        }
                        Ok(())
                    }
                    .await
                }
            };
            r.map_err(q).map(|()| Value::Checksum {
                digest: format!("sha256:{}", hex::encode(h.finalize())),
                rows,
            })
        }
    };
    conn.close().await;
    result
}
