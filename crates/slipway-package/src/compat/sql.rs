//! Data backward compatibility: each SQL migration classified, statement by statement, as
//! **expand** (additive: the running version keeps working), **contract** (destructive:
//! the running version may break) or **unknown** (unparseable or unrecognised), with the
//! reason for each.
//!
//! The point is the expand/contract pattern: during a rollout the old and the new version
//! of the application run against the same database, so a release may only *expand* the
//! schema; *contracting* it (dropping, renaming, tightening) belongs in a later release,
//! once no running code needs the old shape. Statements are parsed with `sqlparser` in the
//! PostgreSQL or SQLite dialect. Column types seen earlier in the migration set (CREATE
//! TABLE, ADD COLUMN) are remembered so `ALTER COLUMN … TYPE` can tell widening from
//! narrowing; when the earlier type is unknown the statement is `unknown`, not guessed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnDef, ColumnOption, ObjectType, Statement,
};
use sqlparser::dialect::{Dialect as SqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use super::locks::{self, LockMode, LockReport, TxNeed, Work};
use crate::error::{Error, Result};

/// Largest migration file read.
const MAX_MIGRATION_BYTES: u64 = 16 * 1024 * 1024;
/// Statement text kept in reports, in characters.
const SHOWN_SQL_CHARS: usize = 120;

/// The SQL dialect migrations are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The dialect a database URL implies: `sqlite:` URLs are SQLite, anything else
    /// (including an unrendered `{{ vars.x }}`) is taken as PostgreSQL.
    pub fn from_database_url(url: &str) -> Dialect {
        if url.trim_start().starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    fn parser_dialect(self) -> Box<dyn SqlDialect> {
        match self {
            Dialect::Postgres => Box::new(PostgreSqlDialect {}),
            Dialect::Sqlite => Box::new(SQLiteDialect {}),
        }
    }
}

/// Expand, contract or unknown. Ordered by severity: a migration is as bad as its worst
/// statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Additive: the running version keeps working.
    Expand,
    /// Unparseable or unrecognised: a human must judge.
    Unknown,
    /// Destructive: the running version may break.
    Contract,
}

impl Class {
    /// Spelling in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Expand => "expand",
            Class::Unknown => "unknown",
            Class::Contract => "contract",
        }
    }
}

/// One statement's classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementReport {
    /// 1-based line where the statement starts, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The statement, shortened.
    pub sql: String,
    /// Its class.
    pub class: Class,
    /// Why, in words; several for ALTER TABLE with several operations.
    pub reasons: Vec<String>,
    /// PostgreSQL only: the table lock it takes, the work under it and whether that
    /// blocks reads or writes of a live table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockReport>,
    /// Where `migrate apply` runs it relative to the migration's transaction.
    #[serde(skip_serializing_if = "is_shared")]
    pub transaction: TxNeed,
}

fn is_shared(t: &TxNeed) -> bool {
    *t == TxNeed::Shared
}

impl StatementReport {
    /// Whether it blocks reads or writes of a live table for longer than a catalog change.
    pub fn blocking(&self) -> bool {
        self.lock.as_ref().is_some_and(|l| l.blocking)
    }
}

/// One migration file's classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// File name.
    pub file: String,
    /// The `N` of `V{N}__name.sql`, when the file is named that way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The worst class of its statements (`expand` for an empty file).
    pub class: Class,
    /// Every statement.
    pub statements: Vec<StatementReport>,
}

/// A directory of migrations, in the order they apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationSetReport {
    /// The dialect used.
    pub dialect: Dialect,
    /// The worst class of all migrations.
    pub class: Class,
    /// Every forward migration, in order.
    pub migrations: Vec<MigrationReport>,
    /// Undo scripts (`U{N}__*.sql`) found and not classified (they contract by design).
    pub skipped: Vec<String>,
}

impl MigrationSetReport {
    /// Whether any migration contracts the schema.
    pub fn has_contract(&self) -> bool {
        self.class == Class::Contract
    }

    /// A plain-text report for people and snapshots.
    pub fn to_text(&self) -> String {
        let mut out =
            format!("migrations ({:?}): {}\n", self.dialect, self.class.as_str()).to_lowercase();
        for m in &self.migrations {
            out.push_str(&format!("  {} {}\n", m.class.as_str(), m.file));
            for s in &m.statements {
                let line = s.line.map_or_else(|| "?".to_owned(), |l| l.to_string());
                out.push_str(&format!(
                    "    {:<8} line {line}: {}\n",
                    s.class.as_str(),
                    s.sql
                ));
                for r in &s.reasons {
                    out.push_str(&format!("             - {r}\n"));
                }
                if let Some(l) = &s.lock {
                    let referenced = if l.referenced.is_empty() {
                        String::new()
                    } else {
                        format!(" + SHARE ROW EXCLUSIVE on {}", l.referenced.join(", "))
                    };
                    out.push_str(&format!(
                        "             lock: {} on {}{referenced} ({}; blocks {}){}\n",
                        l.mode.as_str(),
                        l.tables.join(", "),
                        l.work.as_str(),
                        l.blocks.as_str(),
                        if l.blocking { " BLOCKING" } else { "" }
                    ));
                    if l.blocking {
                        out.push_str(&format!("               why: {}\n", l.why));
                        if let Some(a) = &l.alternative {
                            out.push_str(&format!("               instead: {a}\n"));
                        }
                    }
                }
                if s.transaction != TxNeed::Shared {
                    out.push_str(&format!("             runs {}\n", s.transaction.as_str()));
                }
            }
        }
        for s in &self.skipped {
            out.push_str(&format!("  skipped {s} (undo script)\n"));
        }
        out
    }
}

/// What the migration set has done so far: column types (table → column → type text,
/// lowercase), and for the lock classification the tables created in the current file, the
/// `CHECK (col IS NOT NULL)` constraints seen, and the blocking locks the current
/// transaction still holds.
#[derive(Debug, Default, Clone)]
pub struct SchemaMemory {
    pub(crate) tables: BTreeMap<String, BTreeMap<String, String>>,
    /// Tables created by the file being classified: nobody reads them yet.
    created_here: BTreeSet<String>,
    /// `CHECK (col IS NOT NULL) NOT VALID` constraints: name → (table, column).
    unvalidated_not_null: BTreeMap<String, (String, String)>,
    /// (table, column) pairs a valid `CHECK (col IS NOT NULL)` proves.
    pub(crate) proven_not_null: BTreeSet<(String, String)>,
    /// Locks that block reads or writes of existing tables, taken earlier in the current
    /// transaction: (table, mode, line).
    held: Vec<(String, LockMode, Option<usize>)>,
}

impl SchemaMemory {
    /// Whether `table` existed before the file being classified (and so may have readers,
    /// writers and rows).
    pub(crate) fn existing(&self, table: &str) -> bool {
        !self.created_here.contains(table)
    }

    /// A new migration file starts: it runs in a transaction of its own.
    fn start_file(&mut self) {
        self.created_here.clear();
        self.held.clear();
    }
}

pub(crate) fn norm(name: &impl std::fmt::Display) -> String {
    name.to_string().trim_matches('"').to_lowercase()
}

fn shorten(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > SHOWN_SQL_CHARS {
        let cut: String = one_line.chars().take(SHOWN_SQL_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// The statements of a SQL text with their 1-based start lines, as `migrate apply` runs
/// them one by one when a migration has statements that must run outside its transaction
/// (see [`super::locks::transaction_need`]). Comments are dropped; quotes, dollar quoting
/// and statement text are kept as written.
pub fn statements(text: &str) -> Vec<(usize, String)> {
    split_statements(text)
}

/// Splits SQL text into statements with their start lines, honouring quotes, comments and
/// PostgreSQL dollar quoting. Used for line numbers, and to classify statement by statement
/// when the file as a whole does not parse.
fn split_statements(text: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut line = 1;
    let mut start_line = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // Comments carry no statement content; skip them whole.
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        if !c.is_whitespace() && start_line.is_none() && c != ';' {
            start_line = Some(line);
        }
        if c == '\'' || c == '"' {
            cur.push(c);
            i += 1;
            while i < chars.len() {
                cur.push(chars[i]);
                if chars[i] == '\n' {
                    line += 1;
                }
                if chars[i] == c {
                    i += 1;
                    break;
                }
                i += 1;
            }
            continue;
        }
        if c == '$' {
            // $tag$ … $tag$ (PostgreSQL function bodies contain semicolons).
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if chars.get(j) == Some(&'$') {
                let tag: String = chars[i..=j].iter().collect();
                cur.push_str(&tag);
                i = j + 1;
                let rest: String = chars[i..].iter().collect();
                let end = rest.find(&tag).map_or(rest.len(), |e| e + tag.len());
                let body: String = rest.chars().take(rest[..end].chars().count()).collect();
                line += body.matches('\n').count();
                cur.push_str(&body);
                i += body.chars().count();
                continue;
            }
        }
        if c == '\n' {
            line += 1;
        }
        if c == ';' {
            if !cur.trim().is_empty() {
                out.push((start_line.unwrap_or(line), cur.trim().to_owned()));
            }
            cur.clear();
            start_line = None;
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push((start_line.unwrap_or(line), cur.trim().to_owned()));
    }
    out
}

/// Classifies the statements of one SQL text, updating `memory` with the column types it
/// creates.
pub fn classify_sql(
    text: &str,
    dialect: Dialect,
    memory: &mut SchemaMemory,
) -> Vec<StatementReport> {
    let d = dialect.parser_dialect();
    let pieces = split_statements(text);
    match Parser::parse_sql(d.as_ref(), text) {
        // The splitter only supplies line numbers; trust them when it agrees with the
        // parser on the number of statements (a SQLite trigger body, say, may not).
        Ok(statements) if pieces.len() == statements.len() => statements
            .iter()
            .zip(&pieces)
            .map(|(s, (line, sql))| classify_parsed(&[s], Some(*line), sql, dialect, memory))
            .collect(),
        Ok(statements) => statements
            .iter()
            .map(|s| classify_parsed(&[s], None, &s.to_string(), dialect, memory))
            .collect(),
        // One bad statement should not hide what the others do: go statement by statement.
        Err(_) => pieces
            .iter()
            .map(|(line, sql)| {
                let lexical = (dialect == Dialect::Postgres)
                    .then(|| locks::lexical(sql, &|t| memory.existing(t)))
                    .flatten();
                if let Some((reason, lock)) = lexical {
                    let class = if sql.to_uppercase().starts_with("DROP") {
                        Class::Contract
                    } else {
                        Class::Expand
                    };
                    let mut r = StatementReport {
                        line: Some(*line),
                        sql: shorten(sql),
                        class,
                        reasons: vec![reason],
                        lock: Some(lock),
                        transaction: locks::transaction_need(sql),
                    };
                    track_locks(&mut r, Some(*line), memory);
                    return r;
                }
                match Parser::parse_sql(d.as_ref(), sql) {
                    Ok(stmts) if !stmts.is_empty() => {
                        let refs: Vec<&Statement> = stmts.iter().collect();
                        classify_parsed(&refs, Some(*line), sql, dialect, memory)
                    }
                    Ok(_) => StatementReport {
                        line: Some(*line),
                        sql: shorten(sql),
                        class: Class::Unknown,
                        reasons: vec!["the parser found no statement here".into()],
                        lock: None,
                        transaction: TxNeed::Shared,
                    },
                    Err(e) => StatementReport {
                        line: Some(*line),
                        sql: shorten(sql),
                        class: Class::Unknown,
                        reasons: vec![format!(
                            "cannot parse as {dialect:?} SQL ({e}); review it by hand"
                        )],
                        lock: None,
                        transaction: if dialect == Dialect::Postgres {
                            locks::transaction_need(sql)
                        } else {
                            TxNeed::Shared
                        },
                    },
                }
            })
            .collect(),
    }
}

/// One statement (as the splitter cut it; the parser may find several in it) classified
/// for compatibility and, on PostgreSQL, for locks.
fn classify_parsed(
    stmts: &[&Statement],
    line: Option<usize>,
    text: &str,
    dialect: Dialect,
    memory: &mut SchemaMemory,
) -> StatementReport {
    let mut class = Class::Expand;
    let mut reasons = Vec::new();
    let mut lock: Option<LockReport> = None;
    let pg = dialect == Dialect::Postgres;
    for s in stmts {
        // The lock is judged against the schema as it was before the statement.
        if pg && let Some(l) = locks::of_statement(s, memory) {
            lock = Some(match lock {
                None => l,
                Some(acc) if l.blocking && !acc.blocking => l,
                Some(acc) => acc,
            });
        }
        let (c, r) = classify_statement(s, memory);
        class = class.max(c);
        reasons.extend(r);
        if let Statement::CreateTable(ct) = s {
            memory.created_here.insert(norm(&ct.name));
        }
        if pg {
            remember_not_null_checks(s, memory);
        }
    }
    let sql = if stmts.len() == 1 {
        shorten(&stmts[0].to_string())
    } else {
        shorten(text)
    };
    let mut r = StatementReport {
        line,
        sql,
        class,
        reasons,
        lock,
        transaction: if pg {
            locks::transaction_need(text)
        } else {
            TxNeed::Shared
        },
    };
    if pg {
        track_locks(&mut r, line, memory);
    }
    r
}

/// `CHECK (col IS NOT NULL)` constraints: added `NOT VALID` they wait for their
/// `VALIDATE CONSTRAINT`; valid, they let a later `SET NOT NULL` skip its scan.
fn remember_not_null_checks(s: &Statement, memory: &mut SchemaMemory) {
    let Statement::AlterTable(at) = s else {
        return;
    };
    let table = norm(&at.name);
    for op in &at.operations {
        match op {
            AlterTableOperation::AddConstraint {
                constraint: sqlparser::ast::TableConstraint::Check(c),
                not_valid,
            } => {
                let Some(col) = locks::not_null_check_column(&c.expr) else {
                    continue;
                };
                if *not_valid {
                    if let Some(name) = &c.name {
                        memory
                            .unvalidated_not_null
                            .insert(norm(name), (table.clone(), col));
                    }
                } else {
                    memory.proven_not_null.insert((table.clone(), col));
                }
            }
            AlterTableOperation::ValidateConstraint { name } => {
                if let Some(pair) = memory.unvalidated_not_null.remove(&norm(name)) {
                    memory.proven_not_null.insert(pair);
                }
            }
            _ => {}
        }
    }
}

/// The transaction a statement runs in holds the locks earlier statements took until it
/// commits: slow work while a lock that blocks reads or writes of a live table is held
/// blocks that table for as long. A statement run outside the shared transaction (or in
/// its own) ends it before and after.
fn track_locks(r: &mut StatementReport, line: Option<usize>, memory: &mut SchemaMemory) {
    if r.transaction != TxNeed::Shared {
        memory.held.clear();
    }
    if let Some(l) = &mut r.lock {
        let slow = l.work != Work::Metadata && l.tables.iter().any(|t| memory.existing(t));
        if slow && !memory.held.is_empty() && !l.blocking {
            let (t, mode, at) = &memory.held[0];
            let at = at.map_or_else(String::new, |n| format!(" at line {n}"));
            l.blocking = true;
            l.why = format!(
                "{}; but the {} lock on {t} taken{at} is still held, since the migration's statements share one transaction, so {} of {t} wait while this {}",
                l.why,
                mode.as_str(),
                mode.blocks().as_str(),
                l.work.as_str()
            );
            l.alternative = Some(format!(
                "put this statement in a migration of its own (or after the slow work), so the {} lock on {t} is released first",
                mode.as_str()
            ));
        }
        if r.transaction == TxNeed::Shared {
            let taken = l.tables.iter().map(|t| (t, l.mode)).chain(
                l.referenced
                    .iter()
                    .map(|t| (t, LockMode::ShareRowExclusive)),
            );
            for (t, mode) in taken {
                if mode.blocks() != locks::Blocks::Nothing
                    && memory.existing(t)
                    && !memory.held.iter().any(|(h, m, _)| h == t && *m >= mode)
                {
                    memory.held.push((t.clone(), mode, line));
                }
            }
        }
    }
    if r.transaction != TxNeed::Shared {
        memory.held.clear();
    }
}

fn column_not_null_without_default(c: &ColumnDef) -> (bool, bool) {
    let mut not_null = false;
    let mut default = false;
    for o in &c.options {
        match &o.option {
            ColumnOption::NotNull => not_null = true,
            ColumnOption::PrimaryKey(_) => not_null = true,
            ColumnOption::Default(_)
            | ColumnOption::Generated { .. }
            | ColumnOption::Identity(_) => default = true,
            _ => {}
        }
    }
    (not_null, default)
}

/// (family, size) of common column types, to tell widening from narrowing.
fn type_shape(t: &str) -> Option<(&'static str, u64)> {
    let t = t.trim().to_lowercase();
    let base = t.split('(').next().unwrap_or(&t).trim().to_owned();
    let len = t
        .split_once('(')
        .and_then(|(_, r)| r.split([')', ',']).next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    Some(match base.as_str() {
        "smallint" | "int2" | "smallserial" => ("int", 2),
        "integer" | "int" | "int4" | "serial" => ("int", 4),
        "bigint" | "int8" | "bigserial" => ("int", 8),
        "real" | "float4" => ("float", 4),
        "double precision" | "float8" | "double" | "float" => ("float", 8),
        "numeric" | "decimal" => ("numeric", len.unwrap_or(u64::MAX)),
        "varchar" | "character varying" | "char" | "character" | "nchar" | "nvarchar" => {
            ("text", len.unwrap_or(u64::MAX))
        }
        "text" | "clob" => ("text", u64::MAX),
        _ => return None,
    })
}

fn classify_type_change(
    table: &str,
    column: &str,
    old: Option<&String>,
    new: &str,
) -> (Class, String) {
    let Some(old) = old else {
        return (
            Class::Unknown,
            format!(
                "changes the type of {table}.{column} to {new}; its previous type is not in this migration set, so whether this narrows it cannot be told: review by hand"
            ),
        );
    };
    match (type_shape(old), type_shape(new)) {
        (Some((fo, so)), Some((fn_, sn))) if fo == fn_ && sn >= so => (
            Class::Expand,
            format!("widens {table}.{column} from {old} to {new}"),
        ),
        (Some((fo, _)), Some((fn_, _))) if fo == fn_ => (
            Class::Contract,
            format!(
                "narrows {table}.{column} from {old} to {new}: values the running version writes may no longer fit"
            ),
        ),
        _ if old.eq_ignore_ascii_case(new) => (
            Class::Expand,
            format!("keeps the type of {table}.{column} ({new})"),
        ),
        _ => (
            Class::Contract,
            format!(
                "changes {table}.{column} from {old} to {new}: the running version reads and writes the old type"
            ),
        ),
    }
}

/// Classifies one parsed statement, with reasons.
fn classify_statement(s: &Statement, memory: &mut SchemaMemory) -> (Class, Vec<String>) {
    match s {
        Statement::CreateTable(ct) => {
            let table = norm(&ct.name);
            let cols = memory.tables.entry(table.clone()).or_default();
            for c in &ct.columns {
                cols.insert(norm(&c.name), c.data_type.to_string().to_lowercase());
            }
            if ct.or_replace {
                (
                    Class::Contract,
                    vec![format!(
                        "replaces table {table}: its data and columns are redefined"
                    )],
                )
            } else {
                (Class::Expand, vec![format!("creates table {table}")])
            }
        }
        Statement::CreateIndex(ci) => {
            let mut why = format!(
                "creates {}index on {}",
                if ci.unique { "unique " } else { "" },
                norm(&ci.table_name)
            );
            if ci.unique {
                why.push_str(" (fails if existing rows have duplicates)");
            }
            (Class::Expand, vec![why])
        }
        Statement::CreateView(v) => {
            if v.or_replace {
                (
                    Class::Unknown,
                    vec![format!(
                        "replaces view {}: readers may see different columns",
                        norm(&v.name)
                    )],
                )
            } else {
                (
                    Class::Expand,
                    vec![format!("creates view {}", norm(&v.name))],
                )
            }
        }
        Statement::CreateSequence { name, .. } => (
            Class::Expand,
            vec![format!("creates sequence {}", norm(name))],
        ),
        Statement::CreateSchema { .. } => (Class::Expand, vec!["creates a schema".into()]),
        Statement::CreateExtension(_) => (Class::Expand, vec!["creates an extension".into()]),
        Statement::CreateType { name, .. } => {
            (Class::Expand, vec![format!("creates type {}", norm(name))])
        }
        Statement::Drop {
            object_type, names, ..
        } => {
            let names = names.iter().map(norm).collect::<Vec<_>>().join(", ");
            let what = object_type.to_string().to_lowercase();
            if *object_type == ObjectType::Table {
                for n in names.split(", ") {
                    memory.tables.remove(n);
                }
            }
            let why = match object_type {
                ObjectType::Table => {
                    format!("drops table {names}: the running version may still read or write it")
                }
                ObjectType::Index => format!(
                    "drops index {names}: the running version may rely on it for speed or uniqueness"
                ),
                _ => format!("drops {what} {names}: the running version may still use it"),
            };
            (Class::Contract, vec![why])
        }
        Statement::AlterTable(at) => {
            let table = norm(&at.name);
            let mut class = Class::Expand;
            let mut reasons = Vec::new();
            for op in &at.operations {
                let (c, r) = classify_alter(&table, op, memory);
                class = class.max(c);
                reasons.push(r);
            }
            (class, reasons)
        }
        Statement::Insert(_) => (
            Class::Expand,
            vec!["inserts rows (data, not schema)".into()],
        ),
        Statement::Update(_) => (
            Class::Expand,
            vec!["updates rows (a backfill; the schema is unchanged)".into()],
        ),
        Statement::Delete(_) => (
            Class::Contract,
            vec!["deletes rows: data the running version reads is removed".into()],
        ),
        Statement::Truncate(_) => (
            Class::Contract,
            vec!["truncates a table: all its rows are removed".into()],
        ),
        Statement::StartTransaction { .. } | Statement::Commit { .. } => {
            (Class::Expand, vec!["transaction control".into()])
        }
        Statement::Comment { .. } => (Class::Expand, vec!["sets a comment".into()]),
        Statement::Set(_) => (Class::Expand, vec!["sets a session setting".into()]),
        Statement::Vacuum(_) => (
            Class::Expand,
            vec!["maintenance (VACUUM): the schema is unchanged".into()],
        ),
        Statement::RefreshMaterializedView(r) => (
            Class::Expand,
            vec![format!("refreshes materialized view {}", norm(&r.name))],
        ),
        Statement::Lock(_) => (
            Class::Expand,
            vec!["locks tables until the migration commits".into()],
        ),
        Statement::AlterType(at) => match &at.operation {
            sqlparser::ast::AlterTypeOperation::AddValue(v) => (
                Class::Expand,
                vec![format!(
                    "adds value {} to enum type {} (older code never writes it)",
                    v.value,
                    norm(&at.name)
                )],
            ),
            _ => (
                Class::Unknown,
                vec![format!(
                    "`ALTER TYPE {}` changes a type the running version may use: review it by hand",
                    norm(&at.name)
                )],
            ),
        },
        Statement::Grant(_) => (Class::Expand, vec!["grants privileges".into()]),
        Statement::Revoke(_) => (
            Class::Contract,
            vec!["revokes privileges the running version may need".into()],
        ),
        other => {
            let text = other.to_string();
            let head: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            (
                Class::Unknown,
                vec![format!(
                    "`{head}` is not a statement Slipway classifies: review it by hand"
                )],
            )
        }
    }
}

fn classify_alter(
    table: &str,
    op: &AlterTableOperation,
    memory: &mut SchemaMemory,
) -> (Class, String) {
    match op {
        AlterTableOperation::AddColumn { column_def, .. } => {
            let col = norm(&column_def.name);
            memory
                .tables
                .entry(table.to_owned())
                .or_default()
                .insert(col.clone(), column_def.data_type.to_string().to_lowercase());
            match column_not_null_without_default(column_def) {
                (true, false) => (
                    Class::Contract,
                    format!(
                        "adds {table}.{col} NOT NULL without a default: inserts by the running version, which does not know the column, will fail; add a DEFAULT or make it nullable first"
                    ),
                ),
                (true, true) => (
                    Class::Expand,
                    format!("adds {table}.{col} NOT NULL with a default"),
                ),
                (false, _) => (Class::Expand, format!("adds nullable column {table}.{col}")),
            }
        }
        AlterTableOperation::DropColumn { column_names, .. } => {
            let cols: Vec<String> = column_names.iter().map(norm).collect();
            if let Some(t) = memory.tables.get_mut(table) {
                for c in &cols {
                    t.remove(c);
                }
            }
            (
                Class::Contract,
                format!(
                    "drops column {}: the running version may still read or write it",
                    cols.iter()
                        .map(|c| format!("{table}.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        }
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => {
            let (o, n) = (norm(old_column_name), norm(new_column_name));
            if let Some(t) = memory.tables.get_mut(table)
                && let Some(ty) = t.remove(&o)
            {
                t.insert(n.clone(), ty);
            }
            (
                Class::Contract,
                format!(
                    "renames {table}.{o} to {n}: the running version still uses the old name; add the new column, copy, and drop the old one in a later release"
                ),
            )
        }
        AlterTableOperation::RenameTable { table_name } => {
            let new = match table_name {
                sqlparser::ast::RenameTableNameKind::As(n)
                | sqlparser::ast::RenameTableNameKind::To(n) => norm(n),
            };
            if let Some(cols) = memory.tables.remove(table) {
                memory.tables.insert(new.clone(), cols);
            }
            (
                Class::Contract,
                format!(
                    "renames table {table} to {new}: the running version still uses the old name"
                ),
            )
        }
        AlterTableOperation::AlterColumn { column_name, op } => {
            let col = norm(column_name);
            match op {
                AlterColumnOperation::SetNotNull => (
                    Class::Contract,
                    format!(
                        "sets {table}.{col} NOT NULL: the running version may still write NULLs"
                    ),
                ),
                AlterColumnOperation::DropNotNull => {
                    (Class::Expand, format!("allows NULL in {table}.{col}"))
                }
                AlterColumnOperation::SetDefault { .. } => {
                    (Class::Expand, format!("sets a default on {table}.{col}"))
                }
                AlterColumnOperation::DropDefault => (
                    Class::Contract,
                    format!(
                        "drops the default of {table}.{col}: inserts by the running version that omit it may fail"
                    ),
                ),
                AlterColumnOperation::SetDataType { data_type, .. } => {
                    let new = data_type.to_string().to_lowercase();
                    let old = memory.tables.get(table).and_then(|t| t.get(&col)).cloned();
                    let r = classify_type_change(table, &col, old.as_ref(), &new);
                    if let Some(t) = memory.tables.get_mut(table) {
                        t.insert(col, new);
                    }
                    r
                }
                other => (
                    Class::Unknown,
                    format!("`ALTER COLUMN {col} {other}` is not classified: review it by hand"),
                ),
            }
        }
        AlterTableOperation::AddConstraint { constraint, .. } => (
            Class::Contract,
            format!(
                "adds constraint `{}` to {table}: rows the running version writes may now be rejected",
                shorten(&constraint.to_string())
            ),
        ),
        AlterTableOperation::ValidateConstraint { name } => (
            Class::Expand,
            format!(
                "validates constraint {} against the existing rows of {table} (new rows were already checked)",
                norm(name)
            ),
        ),
        AlterTableOperation::DropConstraint { name, .. } => (
            Class::Expand,
            format!(
                "drops constraint {} of {table} (accepts more rows)",
                norm(name)
            ),
        ),
        other => (
            Class::Unknown,
            format!(
                "`ALTER TABLE {table} {}` is not classified: review it by hand",
                shorten(&other.to_string())
            ),
        ),
    }
}

/// `V{N}__name.sql` → N.
fn forward_version(name: &str) -> Option<u32> {
    let (head, _) = name.split_once("__")?;
    head.strip_prefix('V')?.parse().ok()
}

fn is_undo(name: &str) -> bool {
    name.split_once("__")
        .and_then(|(h, _)| h.strip_prefix('U'))
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Classifies every forward migration of a directory: `V{N}__*.sql` in version order when
/// there are any, otherwise every `*.sql` in name order. `U{N}__*.sql` undo scripts are
/// listed as skipped.
pub fn classify_dir(dir: &Path, dialect: Dialect) -> Result<MigrationSetReport> {
    let err = |reason: String| Error::Migrations {
        path: dir.to_owned(),
        reason,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| {
        err(format!(
            "cannot list the directory ({e}); check the `migrations` path of the migration service"
        ))
    })?;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|e| err(format!("cannot list the directory ({e})")))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") && e.path().is_file() {
            files.push(name);
        }
    }
    let mut skipped: Vec<String> = files.iter().filter(|n| is_undo(n)).cloned().collect();
    skipped.sort();
    let mut forward: Vec<(Option<u32>, String)> = files
        .iter()
        .filter(|n| !is_undo(n))
        .map(|n| (forward_version(n), n.clone()))
        .collect();
    if forward.iter().any(|(v, _)| v.is_some()) {
        // Flyway-style naming: anything not V/U-named is not a migration of this set.
        forward.retain(|(v, _)| v.is_some());
    }
    forward.sort();

    let mut memory = SchemaMemory::default();
    let mut migrations = Vec::new();
    for (version, name) in forward {
        let path = dir.join(&name);
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("read", &path, e))?;
        if meta.len() > MAX_MIGRATION_BYTES {
            return Err(err(format!(
                "{name} is {} bytes, more than the {MAX_MIGRATION_BYTES}-byte limit",
                meta.len()
            )));
        }
        let text = slipway_stdx::fs::read_regular_string(&path, crate::MAX_TEXT_INPUT)
            .map_err(|e| Error::io("read", &path, e))?;
        migrations.push(classify_migration(
            &name,
            version,
            &text,
            dialect,
            &mut memory,
        ));
    }
    let class = migrations
        .iter()
        .map(|m| m.class)
        .max()
        .unwrap_or(Class::Expand);
    Ok(MigrationSetReport {
        dialect,
        class,
        migrations,
        skipped,
    })
}

/// Classifies one migration's text.
pub fn classify_migration(
    file: &str,
    version: Option<u32>,
    text: &str,
    dialect: Dialect,
    memory: &mut SchemaMemory,
) -> MigrationReport {
    memory.start_file();
    let statements = classify_sql(text, dialect, memory);
    let class = statements
        .iter()
        .map(|s| s.class)
        .max()
        .unwrap_or(Class::Expand);
    MigrationReport {
        file: file.to_owned(),
        version,
        class,
        statements,
    }
}
