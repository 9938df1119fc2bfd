//! Schema snapshots and their comparison, to tell whether undo scripts restore the schema.
//!
//! PostgreSQL: `pg_catalog` (columns with `format_type`, defaults with `pg_get_expr`,
//! `pg_indexes.indexdef`, `pg_get_constraintdef`), every schema except the system ones.
//! SQLite: `sqlite_schema` + `pragma_table_info`, `pragma_index_list`/`pragma_index_info`,
//! `pragma_foreign_key_list`, and the normalized SQL of views and triggers. SQLite keeps
//! CHECK constraints only inside the `CREATE TABLE` text, which `ALTER TABLE` rewrites, so
//! they are not compared. Column order is not compared either (re-adding a dropped column
//! appends it). The history table is left out: it is ours, not the application's.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::target::{Conn, Target, quote_literal};

/// A column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub data_type: String,
    pub nullable: bool,
    pub default: Option<String>,
}

/// A table (or view) with its columns, indexes and constraints, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Table {
    pub kind: String,
    pub columns: BTreeMap<String, Column>,
    pub indexes: BTreeMap<String, String>,
    pub constraints: BTreeMap<String, String>,
}

/// A whole schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
    /// Views and triggers (SQLite), by name, as normalized SQL.
    pub other: BTreeMap<String, String>,
}

/// Differences between two schemas, one human-readable line each.
pub type SchemaDiff = Vec<String>;

impl Schema {
    /// What changed from `self` (before) to `after`; empty when identical.
    pub fn diff(&self, after: &Self) -> SchemaDiff {
        let mut out = Vec::new();
        diff_maps(
            &self.tables,
            &after.tables,
            "table",
            &mut out,
            |name, b, a, out| {
                if b.kind != a.kind {
                    out.push(format!("table {name}: kind {} → {}", b.kind, a.kind));
                }
                diff_maps(
                    &b.columns,
                    &a.columns,
                    &format!("column {name}."),
                    out,
                    |c, b, a, out| {
                        if b.data_type != a.data_type {
                            out.push(format!(
                                "column {name}.{c}: type {} → {}",
                                b.data_type, a.data_type
                            ));
                        }
                        if b.nullable != a.nullable {
                            let n = |x: bool| if x { "NULL" } else { "NOT NULL" };
                            out.push(format!(
                                "column {name}.{c}: {} → {}",
                                n(b.nullable),
                                n(a.nullable)
                            ));
                        }
                        if b.default != a.default {
                            out.push(format!(
                                "column {name}.{c}: default {:?} → {:?}",
                                b.default, a.default
                            ));
                        }
                    },
                );
                diff_strings(&b.indexes, &a.indexes, &format!("index on {name}"), out);
                diff_strings(
                    &b.constraints,
                    &a.constraints,
                    &format!("constraint on {name}"),
                    out,
                );
            },
        );
        diff_strings(&self.other, &after.other, "object", &mut out);
        out
    }
}

fn diff_maps<T>(
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
    what: &str,
    out: &mut Vec<String>,
    mut both: impl FnMut(&str, &T, &T, &mut Vec<String>),
) {
    let sep = if what.ends_with('.') { "" } else { " " };
    for (k, b) in before {
        match after.get(k) {
            None => out.push(format!("{what}{sep}{k}: missing after undo")),
            Some(a) => both(k, b, a, out),
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        out.push(format!("{what}{sep}{k}: left over after undo"));
    }
}

fn diff_strings(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
    out: &mut Vec<String>,
) {
    diff_maps(before, after, what, out, |k, b, a, out| {
        if b != a {
            out.push(format!("{what} {k}: `{b}` → `{a}`"));
        }
    });
}

const PG_EXCLUDED: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

/// Read the schema of the connected database.
pub(crate) async fn snapshot(conn: &mut Conn, target: &Target) -> Result<Schema> {
    let q = |source| Error::Query {
        what: "read the schema".into(),
        url: target.display(),
        source,
    };
    match conn {
        Conn::Pg(c) => pg_snapshot(c).await.map_err(q),
        Conn::Sqlite(c) => sqlite_snapshot(c).await.map_err(q),
    }
}

async fn pg_snapshot(c: &mut sqlx::PgConnection) -> Result<Schema, sqlx::Error> {
    let mut s = Schema::default();
    let rel = format!(
        "SELECT n.nspname::text || '.' || c.relname::text, c.relkind::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {PG_EXCLUDED} \
         AND NOT (n.nspname = 'public' AND c.relname IN ('slipway_schema_history', 'slipway_schema_progress'))"
    );
    for r in sqlx::query(sqlx::AssertSqlSafe(rel))
        .fetch_all(&mut *c)
        .await?
    {
        let name: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        s.tables.insert(
            name,
            Table {
                kind,
                ..Table::default()
            },
        );
    }
    let cols = format!(
        "SELECT n.nspname::text || '.' || c.relname::text, a.attname::text, \
         format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {PG_EXCLUDED}"
    );
    for r in sqlx::query(sqlx::AssertSqlSafe(cols))
        .fetch_all(&mut *c)
        .await?
    {
        let table: String = r.try_get(0)?;
        if let Some(t) = s.tables.get_mut(&table) {
            t.columns.insert(
                r.try_get(1)?,
                Column {
                    data_type: r.try_get(2)?,
                    nullable: r.try_get(3)?,
                    default: r.try_get(4)?,
                },
            );
        }
    }
    let idx = "SELECT schemaname::text || '.' || tablename::text, indexname::text, indexdef FROM pg_indexes \
               WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
    for r in sqlx::query(idx).fetch_all(&mut *c).await? {
        let table: String = r.try_get(0)?;
        if let Some(t) = s.tables.get_mut(&table) {
            t.indexes.insert(r.try_get(1)?, r.try_get(2)?);
        }
    }
    let cons = format!(
        "SELECT n.nspname::text || '.' || c.relname::text, con.conname::text, pg_get_constraintdef(con.oid) \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {PG_EXCLUDED}"
    );
    for r in sqlx::query(sqlx::AssertSqlSafe(cons))
        .fetch_all(&mut *c)
        .await?
    {
        let table: String = r.try_get(0)?;
        if let Some(t) = s.tables.get_mut(&table) {
            t.constraints.insert(r.try_get(1)?, r.try_get(2)?);
        }
    }
    Ok(s)
}

async fn sqlite_snapshot(c: &mut sqlx::SqliteConnection) -> Result<Schema, sqlx::Error> {
    let mut s = Schema::default();
    let objects = "SELECT type, name, tbl_name, sql FROM sqlite_schema \
                   WHERE name NOT LIKE 'sqlite_%' AND tbl_name NOT IN ('slipway_schema_history', 'slipway_schema_progress') ORDER BY name";
    let rows = sqlx::query(objects).fetch_all(&mut *c).await?;
    for r in &rows {
        let kind: String = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let sql: Option<String> = r.try_get(3)?;
        match kind.as_str() {
            "table" => {
                s.tables.insert(
                    name,
                    Table {
                        kind,
                        ..Table::default()
                    },
                );
            }
            "view" | "trigger" => {
                s.other.insert(
                    format!("{kind} {name}"),
                    normalize_sql(sql.as_deref().unwrap_or("")),
                );
            }
            _ => {}
        }
    }
    let names: Vec<String> = s.tables.keys().cloned().collect();
    for name in names {
        let lit = quote_literal(&name);
        let mut table = Table {
            kind: "table".into(),
            ..Table::default()
        };
        let cols =
            format!("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info({lit})");
        for r in sqlx::query(sqlx::AssertSqlSafe(cols))
            .fetch_all(&mut *c)
            .await?
        {
            let col: String = r.try_get(0)?;
            let notnull: i64 = r.try_get(2)?;
            let pk: i64 = r.try_get(4)?;
            table.columns.insert(
                col.clone(),
                Column {
                    data_type: r.try_get::<String, _>(1)?.to_uppercase(),
                    nullable: notnull == 0,
                    default: r.try_get(3)?,
                },
            );
            if pk > 0 {
                table.constraints.insert(format!("primary key #{pk}"), col);
            }
        }
        let idx = format!("SELECT name, \"unique\", origin, partial FROM pragma_index_list({lit})");
        for r in sqlx::query(sqlx::AssertSqlSafe(idx))
            .fetch_all(&mut *c)
            .await?
        {
            let iname: String = r.try_get(0)?;
            let unique: i64 = r.try_get(1)?;
            let origin: String = r.try_get(2)?;
            let partial: i64 = r.try_get(3)?;
            let info = format!(
                "SELECT name FROM pragma_index_info({}) ORDER BY seqno",
                quote_literal(&iname)
            );
            let cols: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(info))
                .fetch_all(&mut *c)
                .await?;
            let cols: Vec<String> = cols
                .into_iter()
                .map(|c| c.unwrap_or_else(|| "<expr>".into()))
                .collect();
            let index_sql = rows.iter().find_map(|r| {
                let n: String = r.try_get(1).ok()?;
                (n == iname)
                    .then(|| r.try_get::<Option<String>, _>(3).ok().flatten())
                    .flatten()
            });
            // Auto-indexes of UNIQUE/PRIMARY KEY constraints get generated names that depend on
            // their position; key them by what they cover instead.
            let key = if iname.starts_with("sqlite_autoindex_") {
                format!("{origin} ({})", cols.join(", "))
            } else {
                iname
            };
            table.indexes.insert(
                key,
                format!(
                    "{}({}) origin={origin} partial={partial}{}",
                    if unique != 0 { "UNIQUE " } else { "" },
                    cols.join(", "),
                    index_sql
                        .map(|s| format!(" {}", normalize_sql(&s)))
                        .unwrap_or_default()
                ),
            );
        }
        let fks = format!(
            "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list({lit}) ORDER BY id, seq"
        );
        for r in sqlx::query(sqlx::AssertSqlSafe(fks))
            .fetch_all(&mut *c)
            .await?
        {
            let to_table: String = r.try_get(1)?;
            let from: String = r.try_get(2)?;
            let to: Option<String> = r.try_get(3)?;
            let upd: String = r.try_get(4)?;
            let del: String = r.try_get(5)?;
            table.constraints.insert(
                format!("foreign key {from}"),
                format!(
                    "REFERENCES {to_table}({}) ON UPDATE {upd} ON DELETE {del}",
                    to.unwrap_or_default()
                ),
            );
        }
        s.tables.insert(name, table);
    }
    Ok(s)
}

/// Collapse whitespace and case of keywords are kept: two scripts that differ only in layout
/// compare equal.
fn normalize_sql(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_every_change() {
        let mut before = Schema::default();
        let mut t = Table {
            kind: "r".into(),
            ..Table::default()
        };
        t.columns.insert(
            "id".into(),
            Column {
                data_type: "integer".into(),
                nullable: false,
                default: None,
            },
        );
        before.tables.insert("public.a".into(), t.clone());
        let mut after = before.clone();
        assert!(before.diff(&after).is_empty());
        let a = after.tables.get_mut("public.a").unwrap();
        a.columns.insert(
            "extra".into(),
            Column {
                data_type: "text".into(),
                nullable: true,
                default: None,
            },
        );
        a.columns.get_mut("id").unwrap().nullable = true;
        a.indexes.insert("a_extra".into(), "CREATE INDEX".into());
        after.tables.insert("public.b".into(), Table::default());
        let d = before.diff(&after);
        assert_eq!(
            d,
            vec![
                "column public.a.id: NOT NULL → NULL",
                "column public.a.extra: left over after undo",
                "index on public.a a_extra: left over after undo",
                "table public.b: left over after undo",
            ]
        );
    }
}
