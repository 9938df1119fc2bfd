//! What a PostgreSQL migration statement does to the tables it touches while it runs: the
//! table lock it takes, the work done under that lock (a catalog change, a scan, an index
//! build, a rewrite of every row) and so whether readers or writers of a live table wait
//! for longer than a catalog change. Also whether a statement can run inside the
//! migration's transaction at all, which `slipway-migrate` uses to run
//! `CREATE INDEX CONCURRENTLY` and friends on their own.
//!
//! The lock modes and what each statement takes are PostgreSQL's (the "Explicit Locking"
//! chapter and each command's reference page, PostgreSQL 11 and later: a non-volatile
//! `DEFAULT` on `ADD COLUMN` is a catalog change since 11, `SET NOT NULL` skips its scan
//! when a valid `CHECK (col IS NOT NULL)` proves it since 12). A statement is **blocking**
//! when it holds a lock that stops reads or writes of a table that existed before the
//! migration (one created in the same file has no readers yet) while it scans, rewrites
//! or indexes that table — or while an earlier statement of the same transaction still
//! holds such a lock. Each blocking statement names the safe alternative.
//!
//! The statements `sqlparser` does not parse (`DROP INDEX CONCURRENTLY`, `REINDEX`,
//! `CLUSTER`, `ALTER TABLE … SET TABLESPACE`) are recognised from their leading words
//! ([`lexical`]), as is the transaction need ([`transaction_need`]): both must work on text
//! no parser accepts, since `migrate apply` must never run a statement in the wrong place.

use serde::Serialize;
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Expr, FromTable, LockTableMode,
    ObjectType, SetExpr, Statement, TableConstraint, TableFactor,
};

use super::sql::{SchemaMemory, norm};

/// PostgreSQL table-level lock modes, weakest first (the order of the documentation's
/// conflict table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    /// Taken by `UPDATE`, `DELETE`, `INSERT`; conflicts with SHARE and stronger.
    RowExclusive,
    /// `VACUUM`, `CREATE INDEX CONCURRENTLY`, `VALIDATE CONSTRAINT`: blocks neither
    /// reads nor writes.
    ShareUpdateExclusive,
    /// `CREATE INDEX`: blocks writes.
    Share,
    /// `CREATE TRIGGER`, foreign keys (on both tables): blocks writes.
    ShareRowExclusive,
    /// `REFRESH MATERIALIZED VIEW CONCURRENTLY`: blocks writes.
    Exclusive,
    /// Most `ALTER TABLE` forms, `DROP`, `TRUNCATE`, `VACUUM FULL`: blocks reads too.
    AccessExclusive,
}

impl LockMode {
    /// The name PostgreSQL uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::RowExclusive => "ROW EXCLUSIVE",
            LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockMode::Share => "SHARE",
            LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// What other sessions cannot do on the table while it is held.
    pub fn blocks(self) -> Blocks {
        match self {
            LockMode::RowExclusive | LockMode::ShareUpdateExclusive => Blocks::Nothing,
            LockMode::Share | LockMode::ShareRowExclusive | LockMode::Exclusive => Blocks::Writes,
            LockMode::AccessExclusive => Blocks::ReadsAndWrites,
        }
    }
}

/// What other sessions wait for while a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocks {
    /// Neither reads nor writes (other schema changes wait).
    Nothing,
    /// `INSERT`, `UPDATE`, `DELETE` wait; `SELECT` runs.
    Writes,
    /// Everything, `SELECT` included.
    ReadsAndWrites,
}

impl Blocks {
    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocks::Nothing => "neither reads nor writes",
            Blocks::Writes => "writes",
            Blocks::ReadsAndWrites => "reads and writes",
        }
    }
}

/// The work done while the lock is held, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// A catalog change: done in milliseconds whatever the table's size.
    Metadata,
    /// Every row is read (to validate a constraint, or changed by a data statement).
    Scan,
    /// An index is built from every row.
    IndexBuild,
    /// Every row is rewritten into a new copy of the table (and its indexes rebuilt).
    Rewrite,
}

impl Work {
    /// In words, as the object of "while it …".
    pub fn as_str(self) -> &'static str {
        match self {
            Work::Metadata => "changes only the catalog",
            Work::Scan => "reads every row",
            Work::IndexBuild => "builds an index from every row",
            Work::Rewrite => "rewrites every row",
        }
    }
}

/// One statement's lock, the work under it, and whether that blocks a live table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockReport {
    /// The strongest table lock the statement takes.
    pub mode: LockMode,
    /// The tables (or indexes, views) it takes `mode` on.
    pub tables: Vec<String>,
    /// Tables an inline foreign key references: SHARE ROW EXCLUSIVE on each (writes wait).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced: Vec<String>,
    /// The work done while the lock is held.
    pub work: Work,
    /// What other sessions wait for while it runs.
    pub blocks: Blocks,
    /// Whether reads or writes of a table that existed before this migration wait for
    /// longer than a catalog change.
    pub blocking: bool,
    /// Why, in words.
    pub why: String,
    /// The safe way to reach the same schema, when the statement is blocking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternative: Option<String>,
}

/// Whether a statement may run inside the migration's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TxNeed {
    /// Runs with the statements around it in one transaction.
    #[default]
    Shared,
    /// Runs in a transaction of its own, committed before it starts and after it ends:
    /// `VALIDATE CONSTRAINT`, whose long scan must not run while the stronger lock an
    /// earlier `ADD CONSTRAINT … NOT VALID` took is still held.
    Own,
    /// Refused inside a transaction block by PostgreSQL (`CREATE INDEX CONCURRENTLY`,
    /// `DROP INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY`, `VACUUM`, …), or unusable in
    /// the transaction that ran it (`ALTER TYPE … ADD VALUE`): run on its own, autocommit.
    Outside,
}

impl TxNeed {
    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            TxNeed::Shared => "in the migration's transaction",
            TxNeed::Own => "in a transaction of its own",
            TxNeed::Outside => "outside any transaction",
        }
    }
}

/// One token of a statement, as [`tokens`] cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The text as written (a string literal without its quotes, `''` unescaped; a quoted
    /// identifier without its quotes).
    pub text: String,
    /// What kind of token it is.
    pub kind: TokenKind,
}

/// The kinds of [`Token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A keyword or unquoted identifier (possibly dotted: `public.orders`).
    Word,
    /// A `"quoted"` identifier.
    Quoted,
    /// A `'string'` literal.
    String,
    /// Any other character.
    Symbol,
}

impl Token {
    /// How PostgreSQL names the object this token spells, ready for `to_regclass`: an
    /// unquoted identifier folds to lowercase, a quoted one is kept and re-quoted.
    pub fn as_identifier(&self) -> String {
        match self.kind {
            TokenKind::Quoted => format!("\"{}\"", self.text.replace('"', "\"\"")),
            _ => self.text.to_lowercase(),
        }
    }
}

/// The tokens of a statement, skipping comments and whitespace.
pub fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == c && chars.get(i + 1) == Some(&c) {
                    text.push(c);
                    i += 2;
                } else if chars[i] == c {
                    break;
                } else {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            i += 1;
            out.push(Token {
                text,
                kind: if c == '"' {
                    TokenKind::Quoted
                } else {
                    TokenKind::String
                },
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$' | '.'))
            {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                kind: TokenKind::Word,
            });
        } else {
            if !c.is_whitespace() {
                out.push(Token {
                    text: c.to_string(),
                    kind: TokenKind::Symbol,
                });
            }
            i += 1;
        }
    }
    out
}

/// The words of a statement, uppercased, with comments skipped, string literals reduced to
/// `'…'` and quoted identifiers to their text.
pub fn words(sql: &str) -> Vec<String> {
    tokens(sql)
        .into_iter()
        .map(|t| match t.kind {
            TokenKind::Word | TokenKind::Symbol => t.text.to_uppercase(),
            TokenKind::Quoted => t.text,
            TokenKind::String => "'…'".to_owned(),
        })
        .collect()
}

/// A statement run outside a transaction that `migrate apply` checks before running it
/// again after an interruption (see `slipway_migrate::migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumable {
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON …`: an interrupted build
    /// leaves an INVALID index of that name. `None` when the index has no name.
    CreateIndexConcurrently {
        /// The index, as [`Token::as_identifier`] gives it.
        name: Option<String>,
    },
    /// `DROP INDEX CONCURRENTLY [IF EXISTS] name`: done when the index is gone.
    DropIndexConcurrently {
        /// The index, as [`Token::as_identifier`] gives it.
        name: String,
    },
    /// `ALTER TYPE t ADD VALUE [IF NOT EXISTS] 'label'`: done when the label exists.
    AddEnumValue {
        /// The type, as [`Token::as_identifier`] gives it.
        type_name: String,
        /// The new label.
        label: String,
    },
    /// Anything else: run again as written.
    Other,
}

/// What [`Resumable`] a statement is.
pub fn resumable(sql: &str) -> Resumable {
    let t = tokens(sql);
    let up: Vec<String> = t
        .iter()
        .map(|t| match t.kind {
            TokenKind::Word => t.text.to_uppercase(),
            _ => String::new(),
        })
        .collect();
    let after = |mut i: usize| {
        while up
            .get(i)
            .is_some_and(|w| matches!(w.as_str(), "IF" | "NOT" | "EXISTS"))
        {
            i += 1;
        }
        i
    };
    let create = if starts(&up, &["CREATE", "INDEX", "CONCURRENTLY"]) {
        Some(3)
    } else if starts(&up, &["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]) {
        Some(4)
    } else {
        None
    };
    if let Some(at) = create {
        let i = after(at);
        let name = t
            .get(i)
            .filter(|_| up.get(i).is_none_or(|w| w != "ON"))
            .map(Token::as_identifier);
        return Resumable::CreateIndexConcurrently { name };
    }
    if starts(&up, &["DROP", "INDEX", "CONCURRENTLY"])
        && let Some(name) = t.get(after(3))
    {
        return Resumable::DropIndexConcurrently {
            name: name.as_identifier(),
        };
    }
    if starts(&up, &["ALTER", "TYPE"])
        && up.get(3).is_some_and(|w| w == "ADD")
        && up.get(4).is_some_and(|w| w == "VALUE")
        && let (Some(ty), Some(label)) = (t.get(2), t.get(after(5)))
        && label.kind == TokenKind::String
    {
        return Resumable::AddEnumValue {
            type_name: ty.as_identifier(),
            label: label.text.clone(),
        };
    }
    Resumable::Other
}

fn starts(w: &[String], head: &[&str]) -> bool {
    w.len() >= head.len() && w.iter().zip(head).all(|(a, b)| a == b)
}

/// `REINDEX [ ( options ) ] KIND [CONCURRENTLY] name`: the words after the options.
fn reindex_rest(w: &[String]) -> &[String] {
    let rest = &w[1..];
    if rest.first().is_some_and(|t| t == "(") {
        let close = rest
            .iter()
            .position(|t| t == ")")
            .map_or(rest.len(), |p| p + 1);
        &rest[close..]
    } else {
        rest
    }
}

/// Where a statement must run relative to the migration's transaction; see [`TxNeed`].
pub fn transaction_need(sql: &str) -> TxNeed {
    let w = words(sql);
    let has = |word: &str| w.iter().any(|t| t == word);
    if (starts(&w, &["CREATE", "INDEX"]) || starts(&w, &["CREATE", "UNIQUE", "INDEX"]))
        && has("CONCURRENTLY")
        || starts(&w, &["DROP", "INDEX", "CONCURRENTLY"])
        || starts(&w, &["REINDEX"]) && reindex_rest(&w).get(1).is_some_and(|t| t == "CONCURRENTLY")
        || starts(&w, &["VACUUM"])
        || starts(&w, &["CREATE", "DATABASE"])
        || starts(&w, &["DROP", "DATABASE"])
        || starts(&w, &["ALTER", "SYSTEM"])
        || starts(&w, &["CREATE", "TABLESPACE"])
        || starts(&w, &["DROP", "TABLESPACE"])
        || starts(&w, &["ALTER", "TABLE"]) && has("DETACH") && has("CONCURRENTLY")
        || starts(&w, &["ALTER", "TYPE"]) && has("ADD") && has("VALUE")
    {
        TxNeed::Outside
    } else if starts(&w, &["ALTER", "TABLE"]) && has("VALIDATE") && has("CONSTRAINT") {
        TxNeed::Own
    } else {
        TxNeed::Shared
    }
}

/// The object name after `words[at]`, skipping `IF EXISTS`, `IF NOT EXISTS`, `ONLY`.
fn name_after(w: &[String], at: usize) -> Option<String> {
    let mut i = at;
    loop {
        match w.get(i).map(String::as_str) {
            Some("IF") => i += 1,
            Some("NOT" | "EXISTS" | "ONLY" | "CONCURRENTLY") => i += 1,
            Some(t) => return Some(t.to_lowercase()),
            None => return None,
        }
    }
}

/// The lock of a statement `sqlparser` does not parse, recognised from its words; `None`
/// when the words are not one of those statements. `existing(table)` says whether a table
/// existed before this migration file.
pub fn lexical(sql: &str, existing: &dyn Fn(&str) -> bool) -> Option<(String, LockReport)> {
    let w = words(sql);
    if starts(&w, &["DROP", "INDEX", "CONCURRENTLY"]) {
        let name = name_after(&w, 3).unwrap_or_default();
        return Some((
            format!("drops index {name} without blocking reads or writes"),
            report(
                LockMode::ShareUpdateExclusive,
                vec![name],
                Work::Metadata,
                false,
                "waits for transactions using the index, then removes it; reads and writes go on"
                    .into(),
                None,
            ),
        ));
    }
    if starts(&w, &["REINDEX"]) {
        let rest = reindex_rest(&w);
        let concurrently = rest.get(1).is_some_and(|t| t == "CONCURRENTLY");
        let name = name_after(rest, 1).unwrap_or_default();
        let what = rest
            .first()
            .map_or("index".to_owned(), |k| k.to_lowercase());
        return Some(if concurrently {
            (
                format!("rebuilds {what} {name} concurrently"),
                report(
                    LockMode::ShareUpdateExclusive,
                    vec![name],
                    Work::IndexBuild,
                    false,
                    "builds the new index beside the old one, then swaps them; reads and writes go on".into(),
                    None,
                ),
            )
        } else {
            let blocking = what != "index" || existing(&name);
            (
                format!("rebuilds {what} {name}"),
                report(
                    LockMode::AccessExclusive,
                    vec![name.clone()],
                    Work::IndexBuild,
                    blocking,
                    format!(
                        "REINDEX blocks writes to the table and reads that use the index while it rebuilds {name} from every row"
                    ),
                    Some(format!(
                        "REINDEX {} CONCURRENTLY {name}",
                        what.to_uppercase()
                    )),
                ),
            )
        });
    }
    if starts(&w, &["CLUSTER"]) {
        let name = name_after(&w, 1).unwrap_or_default();
        return Some((
            format!("reorders table {name} by an index"),
            report(
                LockMode::AccessExclusive,
                vec![name.clone()],
                Work::Rewrite,
                existing(&name),
                format!("CLUSTER rewrites {name} under ACCESS EXCLUSIVE: nothing reads or writes it until the copy is done"),
                Some("do not CLUSTER a live table in a migration; reorder it online with pg_repack in a maintenance window".into()),
            ),
        ));
    }
    if starts(&w, &["ALTER", "TABLE"])
        && w.windows(2).any(|p| p[0] == "SET" && p[1] == "TABLESPACE")
    {
        let name = name_after(&w, 2).unwrap_or_default();
        return Some((
            format!("moves table {name} to another tablespace"),
            report(
                LockMode::AccessExclusive,
                vec![name.clone()],
                Work::Rewrite,
                existing(&name),
                format!("SET TABLESPACE copies every block of {name} under ACCESS EXCLUSIVE"),
                Some("create the table in the target tablespace and copy the data online (or pg_repack --tablespace)".into()),
            ),
        ));
    }
    None
}

/// A [`LockReport`] with `blocks` derived from the mode.
pub fn report(
    mode: LockMode,
    tables: Vec<String>,
    work: Work,
    blocking: bool,
    why: String,
    alternative: Option<String>,
) -> LockReport {
    LockReport {
        mode,
        blocks: mode.blocks(),
        tables,
        referenced: Vec::new(),
        work,
        // A lock that blocks nothing never blocks, however long the work.
        blocking: blocking && mode.blocks() != Blocks::Nothing,
        why,
        alternative: if blocking { alternative } else { None },
    }
}

/// Functions whose value PostgreSQL computes once per statement (STABLE or IMMUTABLE)
/// and so may fill every existing row from the catalog: a `DEFAULT` of these on
/// `ADD COLUMN` is metadata-only since PostgreSQL 11.
const STABLE_FUNCTIONS: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "transaction_timestamp",
    "statement_timestamp",
    "current_user",
    "current_schema",
    "session_user",
    "lower",
    "upper",
    "length",
    "coalesce",
    "concat",
    "to_jsonb",
    "jsonb_build_object",
    "json_build_object",
    "make_interval",
    "to_timestamp",
    "array",
];

/// Functions known to be VOLATILE: a `DEFAULT` calling one gives every existing row its
/// own value, so `ADD COLUMN` rewrites the table.
const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "setseed",
    "txid_current",
];

/// How a `DEFAULT` expression fills existing rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultKind {
    /// A constant or a STABLE/IMMUTABLE function: one value, kept in the catalog.
    Stable,
    /// Calls a VOLATILE function (named): every row is written.
    Volatile(String),
    /// Calls a function Slipway does not know (named): judged as volatile.
    Unknown(String),
}

/// Classifies a `DEFAULT` expression's text by the functions it calls.
pub fn default_kind(expr: &str) -> DefaultKind {
    let w = words(expr);
    let mut unknown = None;
    for (i, t) in w.iter().enumerate() {
        if w.get(i + 1).is_none_or(|n| n != "(") || t.starts_with('\'') {
            continue;
        }
        let name = t.rsplit('.').next().unwrap_or(t).to_lowercase();
        if VOLATILE_FUNCTIONS.contains(&name.as_str()) {
            return DefaultKind::Volatile(name);
        }
        if !STABLE_FUNCTIONS.contains(&name.as_str()) && unknown.is_none() {
            unknown = Some(name);
        }
    }
    match unknown {
        Some(f) => DefaultKind::Unknown(f),
        None => DefaultKind::Stable,
    }
}

/// Whether changing a column's type from `old` to `new` (lowercase type texts) is a
/// catalog change only (binary coercible, no check): `varchar(n)` → `varchar(m ≥ n)` or
/// `text`, `numeric(p, s)` → `numeric(q ≥ p, s)` or unconstrained, `varbit` likewise.
/// `None` when `old` is not known.
pub fn type_change_is_metadata(old: Option<&str>, new: &str) -> Option<bool> {
    let old = old?;
    let parse = |t: &str| -> (String, Vec<u64>) {
        let t = t.trim().to_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => (
                b.trim().to_owned(),
                rest.trim_end_matches(')')
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect(),
            ),
            None => (t.clone(), Vec::new()),
        };
        // Aliases of one type (a serial column is its integer type plus a default).
        let base = match base.as_str() {
            "character varying" => "varchar",
            "bit varying" => "varbit",
            "decimal" => "numeric",
            "int" | "int4" | "serial" | "serial4" => "integer",
            "int8" | "bigserial" | "serial8" => "bigint",
            "int2" | "smallserial" | "serial2" => "smallint",
            "float8" | "double" | "float" => "double precision",
            "float4" => "real",
            "bool" => "boolean",
            "timestamp with time zone" => "timestamptz",
            "timestamp without time zone" => "timestamp",
            other => other,
        }
        .to_owned();
        (base, args)
    };
    let (ob, oa) = parse(old);
    let (nb, na) = parse(new);
    if ob == nb && oa == na {
        return Some(true);
    }
    Some(match (ob.as_str(), nb.as_str()) {
        ("varchar", "text") | ("varchar", "varchar") | ("varbit", "varbit") => {
            match (oa.first(), na.first()) {
                (_, None) => true,
                (Some(o), Some(n)) => n >= o,
                (None, Some(_)) => false,
            }
        }
        ("numeric", "numeric") => match (oa.as_slice(), na.as_slice()) {
            (_, []) => true,
            ([op, os], [np, ns]) => ns == os && np >= op,
            ([op], [np]) => np >= op,
            _ => false,
        },
        ("cidr", "inet") => true,
        _ => false,
    })
}

/// What one parsed statement locks, given what the migration set created so far (`None`
/// for statements that lock no table: `CREATE TABLE` without foreign keys, sequences,
/// types, comments, settings).
pub(crate) fn of_statement(s: &Statement, mem: &SchemaMemory) -> Option<LockReport> {
    let existing = |t: &str| mem.existing(t);
    match s {
        Statement::CreateTable(ct) => {
            let refs: Vec<String> = ct
                .constraints
                .iter()
                .filter_map(|c| match c {
                    TableConstraint::ForeignKey(fk) => Some(norm(&fk.foreign_table)),
                    _ => None,
                })
                .chain(ct.columns.iter().flat_map(|c| {
                    c.options.iter().filter_map(|o| match &o.option {
                        ColumnOption::ForeignKey(fk) => Some(norm(&fk.foreign_table)),
                        _ => None,
                    })
                }))
                .collect();
            (!refs.is_empty()).then(|| {
                report(
                    LockMode::ShareRowExclusive,
                    refs.clone(),
                    Work::Metadata,
                    false,
                    format!(
                        "a new table's foreign keys take SHARE ROW EXCLUSIVE on {} briefly; the new table is empty, so nothing is validated",
                        refs.join(", ")
                    ),
                    None,
                )
            })
        }
        Statement::CreateIndex(ci) => {
            let table = norm(&ci.table_name);
            let name = ci.name.as_ref().map(norm);
            if ci.concurrently {
                Some(report(
                    LockMode::ShareUpdateExclusive,
                    vec![table],
                    Work::IndexBuild,
                    false,
                    "builds the index without blocking reads or writes (outside a transaction)"
                        .into(),
                    None,
                ))
            } else {
                let unique = if ci.unique { "UNIQUE " } else { "" };
                Some(report(
                    LockMode::Share,
                    vec![table.clone()],
                    Work::IndexBuild,
                    existing(&table),
                    format!(
                        "CREATE INDEX holds SHARE on {table}: inserts, updates and deletes wait until the index is built from every row"
                    ),
                    Some(format!(
                        "CREATE {unique}INDEX CONCURRENTLY {} ON {table} … (Slipway runs it outside the migration's transaction and resumes it after a crash; it needs a name)",
                        name.unwrap_or_else(|| "<name>".into())
                    )),
                ))
            }
        }
        Statement::Drop {
            object_type, names, ..
        } => {
            let names: Vec<String> = names.iter().map(norm).collect();
            match object_type {
                ObjectType::Index => Some(report(
                    LockMode::AccessExclusive,
                    names.clone(),
                    Work::Metadata,
                    false,
                    format!(
                        "DROP INDEX takes ACCESS EXCLUSIVE on the table of {} for a catalog change (DROP INDEX CONCURRENTLY avoids even that)",
                        names.join(", ")
                    ),
                    None,
                )),
                ObjectType::Table | ObjectType::View | ObjectType::MaterializedView => {
                    Some(report(
                        LockMode::AccessExclusive,
                        names,
                        Work::Metadata,
                        false,
                        "a drop is a catalog change under ACCESS EXCLUSIVE".into(),
                        None,
                    ))
                }
                _ => None,
            }
        }
        Statement::AlterTable(at) => {
            let table = norm(&at.name);
            let mut out: Option<LockReport> = None;
            for op in &at.operations {
                let r = alter_op(&table, op, mem);
                out = Some(match out {
                    None => r,
                    Some(acc) => merge(acc, r),
                });
            }
            out
        }
        Statement::Update(u) => {
            let table = match &u.table.relation {
                TableFactor::Table { name, .. } => norm(name),
                other => other.to_string(),
            };
            Some(report(
                LockMode::RowExclusive,
                vec![table],
                Work::Scan,
                false,
                "updates rows under row locks; other rows stay readable and writable".into(),
                None,
            ))
        }
        Statement::Delete(d) => {
            let tables: Vec<String> = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t
                    .iter()
                    .map(|t| match &t.relation {
                        TableFactor::Table { name, .. } => norm(name),
                        other => other.to_string(),
                    })
                    .collect(),
            };
            Some(report(
                LockMode::RowExclusive,
                tables,
                Work::Scan,
                false,
                "deletes rows under row locks".into(),
                None,
            ))
        }
        Statement::Insert(i) => {
            let table = i.table.to_string().trim_matches('"').to_lowercase();
            let from_query = i
                .source
                .as_ref()
                .is_some_and(|q| !matches!(*q.body, SetExpr::Values(_)));
            Some(report(
                LockMode::RowExclusive,
                vec![table],
                if from_query {
                    Work::Scan
                } else {
                    Work::Metadata
                },
                false,
                "inserts rows under ROW EXCLUSIVE".into(),
                None,
            ))
        }
        Statement::Truncate(t) => Some(report(
            LockMode::AccessExclusive,
            t.table_names.iter().map(|t| norm(&t.name)).collect(),
            Work::Metadata,
            false,
            "TRUNCATE swaps in empty files under ACCESS EXCLUSIVE".into(),
            None,
        )),
        Statement::CreateTrigger(t) => Some(report(
            LockMode::ShareRowExclusive,
            vec![norm(&t.table_name)],
            Work::Metadata,
            false,
            "CREATE TRIGGER is a catalog change under SHARE ROW EXCLUSIVE".into(),
            None,
        )),
        Statement::Vacuum(v) => {
            let table = v.table_name.as_ref().map(norm).unwrap_or_default();
            Some(if v.full {
                report(
                    LockMode::AccessExclusive,
                    vec![table.clone()],
                    Work::Rewrite,
                    table.is_empty() || existing(&table),
                    format!("VACUUM FULL rewrites {table} under ACCESS EXCLUSIVE"),
                    Some(
                        "plain VACUUM (it blocks nothing), or pg_repack for an online rewrite"
                            .into(),
                    ),
                )
            } else {
                report(
                    LockMode::ShareUpdateExclusive,
                    vec![table],
                    Work::Scan,
                    false,
                    "VACUUM blocks neither reads nor writes".into(),
                    None,
                )
            })
        }
        Statement::Lock(l) => {
            let mode = match l.lock_mode {
                Some(LockTableMode::AccessExclusive) | None => LockMode::AccessExclusive,
                Some(LockTableMode::Exclusive) => LockMode::Exclusive,
                Some(LockTableMode::ShareRowExclusive) => LockMode::ShareRowExclusive,
                Some(LockTableMode::Share) => LockMode::Share,
                Some(LockTableMode::ShareUpdateExclusive) => LockMode::ShareUpdateExclusive,
                Some(_) => LockMode::RowExclusive,
            };
            Some(report(
                mode,
                l.tables.iter().map(|t| norm(&t.name)).collect(),
                Work::Metadata,
                false,
                format!(
                    "LOCK TABLE takes {} until the migration commits",
                    mode.as_str()
                ),
                None,
            ))
        }
        Statement::RefreshMaterializedView(r) => {
            let view = norm(&r.name);
            Some(if r.concurrently {
                report(
                    LockMode::Exclusive,
                    vec![view],
                    Work::Scan,
                    false,
                    "REFRESH … CONCURRENTLY keeps the view readable while it recomputes".into(),
                    None,
                )
            } else {
                report(
                    LockMode::AccessExclusive,
                    vec![view.clone()],
                    Work::Rewrite,
                    existing(&view),
                    format!(
                        "REFRESH MATERIALIZED VIEW recomputes {view} under ACCESS EXCLUSIVE: nothing reads it meanwhile"
                    ),
                    Some(format!(
                        "REFRESH MATERIALIZED VIEW CONCURRENTLY {view} (needs a unique index on the view)"
                    )),
                )
            })
        }
        _ => None,
    }
}

/// Combines the reports of several `ALTER TABLE` operations: one statement, one lock (the
/// strongest), the heaviest work, blocking if any part is.
fn merge(a: LockReport, b: LockReport) -> LockReport {
    let mut tables = a.tables;
    for t in b.tables {
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    let mode = a.mode.max(b.mode);
    let mut referenced = a.referenced;
    referenced.extend(b.referenced);
    let alternative = match (a.alternative, b.alternative) {
        (Some(x), Some(y)) => Some(format!("{x}; {y}")),
        (x, y) => x.or(y),
    };
    LockReport {
        mode,
        blocks: mode.blocks(),
        tables,
        referenced,
        work: a.work.max(b.work),
        blocking: a.blocking || b.blocking,
        why: format!("{}; {}", a.why, b.why),
        alternative,
    }
}

/// `col IS NOT NULL`: the column a CHECK of that shape proves not null.
pub(crate) fn not_null_check_column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::IsNotNull(inner) => match inner.as_ref() {
            Expr::Identifier(i) => Some(norm(i)),
            Expr::CompoundIdentifier(parts) => parts.last().map(norm),
            _ => None,
        },
        Expr::Nested(inner) => not_null_check_column(inner),
        _ => None,
    }
}

fn alter_op(table: &str, op: &AlterTableOperation, mem: &SchemaMemory) -> LockReport {
    let existing = mem.existing(table);
    let ae = |work: Work, blocking: bool, why: String, alt: Option<String>| {
        report(
            LockMode::AccessExclusive,
            vec![table.to_owned()],
            work,
            blocking && existing,
            why,
            alt,
        )
    };
    let backfill = |col: &str, ty: &str| {
        format!(
            "add {table}.{col} as a plain nullable {ty} column, set the default for new rows with ALTER COLUMN {col} SET DEFAULT …, backfill existing rows in batches, then add NOT NULL through a validated CHECK"
        )
    };
    match op {
        AlterTableOperation::AddColumn { column_def, .. } => {
            let col = norm(&column_def.name);
            let ty = column_def.data_type.to_string().to_lowercase();
            let mut parts: Vec<LockReport> = Vec::new();
            if matches!(ty.as_str(), "serial" | "bigserial" | "smallserial" | "serial4" | "serial8" | "serial2") {
                let plain = match ty.as_str() {
                    "bigserial" | "serial8" => "bigint",
                    "smallserial" | "serial2" => "smallint",
                    _ => "integer",
                };
                parts.push(ae(
                    Work::Rewrite,
                    true,
                    format!(
                        "{ty} adds a nextval() default, which is volatile: every existing row of {table} gets its own value, so the table is rewritten under ACCESS EXCLUSIVE"
                    ),
                    Some(backfill(&col, plain)),
                ));
            }
            for o in &column_def.options {
                match &o.option {
                    ColumnOption::Default(e) => match default_kind(&e.to_string()) {
                        DefaultKind::Stable => {}
                        DefaultKind::Volatile(f) => parts.push(ae(
                            Work::Rewrite,
                            true,
                            format!(
                                "the default calls {f}(), which is volatile: every existing row of {table} is written with its own value under ACCESS EXCLUSIVE"
                            ),
                            Some(backfill(&col, &ty)),
                        )),
                        DefaultKind::Unknown(f) => parts.push(ae(
                            Work::Rewrite,
                            true,
                            format!(
                                "the default calls {f}(), whose volatility Slipway does not know: if it is VOLATILE every existing row of {table} is rewritten under ACCESS EXCLUSIVE (if it is STABLE or IMMUTABLE this is a catalog change: waive the finding with that reason)"
                            ),
                            Some(backfill(&col, &ty)),
                        )),
                    },
                    ColumnOption::Generated {
                        generation_expr: Some(_),
                        generation_expr_mode,
                        ..
                    } if !matches!(
                        generation_expr_mode,
                        Some(sqlparser::ast::GeneratedExpressionMode::Virtual)
                    ) => parts.push(ae(
                        Work::Rewrite,
                        true,
                        format!("a STORED generated column computes {table}.{col} for every existing row: the table is rewritten under ACCESS EXCLUSIVE"),
                        Some(format!("add {table}.{col} as a plain column, fill it in batches and keep it current with a trigger")),
                    )),
                    ColumnOption::Generated {
                        generation_expr: None,
                        ..
                    } => parts.push(ae(
                        Work::Rewrite,
                        true,
                        format!("an identity column numbers every existing row of {table}: the table is rewritten under ACCESS EXCLUSIVE"),
                        Some(backfill(&col, &ty)),
                    )),
                    ColumnOption::ForeignKey(fk) => {
                        let r = norm(&fk.foreign_table);
                        // A new column without a default is NULL in every row, and
                        // PostgreSQL skips validating a foreign key over it (checked on
                        // PostgreSQL 15: no scan of either table); with a default every
                        // row's value is checked.
                        let filled = column_def.options.iter().any(|o| {
                            matches!(&o.option, ColumnOption::Default(e) if e.to_string().to_uppercase() != "NULL")
                        });
                        let mut p = if filled {
                            ae(
                                Work::Scan,
                                true,
                                format!(
                                    "the inline REFERENCES {r} on a column with a default is validated at once: every row of {table} is checked under ACCESS EXCLUSIVE while writes to {r} wait (SHARE ROW EXCLUSIVE) until the migration commits"
                                ),
                                Some(format!(
                                    "add {table}.{col} without REFERENCES, then ALTER TABLE {table} ADD CONSTRAINT … FOREIGN KEY ({col}) REFERENCES {r} NOT VALID, then ALTER TABLE {table} VALIDATE CONSTRAINT … (Slipway commits before the validation)"
                                )),
                            )
                        } else {
                            ae(
                                Work::Metadata,
                                false,
                                format!(
                                    "the inline REFERENCES {r} adds a foreign key over a column that is NULL in every row, so nothing is validated; writes to {r} wait (SHARE ROW EXCLUSIVE) until the migration commits"
                                ),
                                None,
                            )
                        };
                        p.referenced.push(r);
                        parts.push(p);
                    }
                    ColumnOption::Unique(_) | ColumnOption::PrimaryKey(_) => parts.push(ae(
                        Work::IndexBuild,
                        true,
                        format!("an inline UNIQUE or PRIMARY KEY builds an index on {table} under ACCESS EXCLUSIVE"),
                        Some(format!(
                            "add {table}.{col} plainly, CREATE UNIQUE INDEX CONCURRENTLY … ON {table} ({col}), then ALTER TABLE {table} ADD CONSTRAINT … UNIQUE USING INDEX …"
                        )),
                    )),
                    ColumnOption::Check(_) => parts.push(ae(
                        Work::Scan,
                        true,
                        format!("an inline CHECK is validated against every existing row of {table} under ACCESS EXCLUSIVE"),
                        Some(format!(
                            "add {table}.{col} plainly, then ALTER TABLE {table} ADD CONSTRAINT … CHECK (…) NOT VALID, then VALIDATE CONSTRAINT …"
                        )),
                    )),
                    _ => {}
                }
            }
            parts.into_iter().reduce(merge).unwrap_or_else(|| {
                ae(
                    Work::Metadata,
                    false,
                    format!("adding {table}.{col} without a volatile default is a catalog change (PostgreSQL 11+)"),
                    None,
                )
            })
        }
        AlterTableOperation::AlterColumn { column_name, op } => {
            let col = norm(column_name);
            match op {
                AlterColumnOperation::SetNotNull => {
                    if mem.proven_not_null.contains(&(table.to_owned(), col.clone())) {
                        ae(
                            Work::Metadata,
                            false,
                            format!("a valid CHECK ({col} IS NOT NULL) already proves it, so SET NOT NULL skips the scan (PostgreSQL 12+)"),
                            None,
                        )
                    } else {
                        ae(
                            Work::Scan,
                            true,
                            format!("SET NOT NULL scans every row of {table} under ACCESS EXCLUSIVE to prove {col} has no NULL"),
                            Some(format!(
                                "ALTER TABLE {table} ADD CONSTRAINT {table}_{col}_not_null CHECK ({col} IS NOT NULL) NOT VALID; ALTER TABLE {table} VALIDATE CONSTRAINT {table}_{col}_not_null; then SET NOT NULL skips the scan (PostgreSQL 12+) and the CHECK can be dropped"
                            )),
                        )
                    }
                }
                AlterColumnOperation::SetDataType { data_type, using, .. } => {
                    let new = data_type.to_string().to_lowercase();
                    let old = mem.tables.get(table).and_then(|t| t.get(&col));
                    let alt = Some(format!(
                        "add a new column of type {new}, keep it in step with a trigger, backfill it in batches, switch the application over, then drop the old column in a later release"
                    ));
                    match (using, type_change_is_metadata(old.map(String::as_str), &new)) {
                        (None, Some(true)) => ae(
                            Work::Metadata,
                            false,
                            format!("{} → {new} is binary coercible: a catalog change", old.map_or("?", |s| s.as_str())),
                            None,
                        ),
                        (_, Some(_)) => ae(
                            Work::Rewrite,
                            true,
                            format!(
                                "changing {table}.{col} from {} to {new} rewrites every row of {table} (and rebuilds its indexes) under ACCESS EXCLUSIVE",
                                old.map_or("?", |s| s.as_str())
                            ),
                            alt,
                        ),
                        (_, None) => ae(
                            Work::Rewrite,
                            true,
                            format!(
                                "changing {table}.{col} to {new} rewrites every row under ACCESS EXCLUSIVE unless the change is binary coercible (varchar widening, varchar → text); its previous type is not in this migration set (if it is binary coercible, waive the finding with that reason)"
                            ),
                            alt,
                        ),
                    }
                }
                _ => ae(
                    Work::Metadata,
                    false,
                    format!("changing {table}.{col}'s default or nullability is a catalog change"),
                    None,
                ),
            }
        }
        AlterTableOperation::AddConstraint {
            constraint,
            not_valid,
        } => match constraint {
            TableConstraint::ForeignKey(fk) => {
                let r = norm(&fk.foreign_table);
                let tables = vec![table.to_owned(), r.clone()];
                if *not_valid {
                    report(
                        LockMode::ShareRowExclusive,
                        tables,
                        Work::Metadata,
                        false,
                        "a NOT VALID foreign key is a catalog change; new rows are checked, existing ones only by VALIDATE CONSTRAINT".into(),
                        None,
                    )
                } else {
                    report(
                        LockMode::ShareRowExclusive,
                        tables,
                        Work::Scan,
                        existing,
                        format!(
                            "the foreign key is validated at once: {table} is scanned while writes to {table} and {r} wait (SHARE ROW EXCLUSIVE on both)"
                        ),
                        Some(format!(
                            "ALTER TABLE {table} ADD CONSTRAINT … FOREIGN KEY … REFERENCES {r} NOT VALID, then ALTER TABLE {table} VALIDATE CONSTRAINT … (Slipway commits between them)"
                        )),
                    )
                }
            }
            TableConstraint::Check(c) => {
                if *not_valid {
                    ae(
                        Work::Metadata,
                        false,
                        "a NOT VALID CHECK is a catalog change; existing rows are checked by VALIDATE CONSTRAINT".into(),
                        None,
                    )
                } else {
                    ae(
                        Work::Scan,
                        true,
                        format!("the CHECK is validated against every row of {table} under ACCESS EXCLUSIVE"),
                        Some(format!(
                            "ALTER TABLE {table} ADD CONSTRAINT {} CHECK (…) NOT VALID, then ALTER TABLE {table} VALIDATE CONSTRAINT … (Slipway commits between them)",
                            c.name.as_ref().map_or("…".to_owned(), norm)
                        )),
                    )
                }
            }
            TableConstraint::PrimaryKey(_) | TableConstraint::Unique(_) => ae(
                Work::IndexBuild,
                true,
                format!("the constraint builds its unique index on {table} under ACCESS EXCLUSIVE"),
                Some(format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY … ON {table} (…), then ALTER TABLE {table} ADD CONSTRAINT … PRIMARY KEY|UNIQUE USING INDEX …"
                )),
            ),
            TableConstraint::Exclude(_) => ae(
                Work::IndexBuild,
                true,
                format!("an exclusion constraint builds its index on {table} under ACCESS EXCLUSIVE"),
                Some("there is no concurrent form: build it in a maintenance window, or enforce the rule in the application".into()),
            ),
            _ => ae(
                Work::Metadata,
                false,
                "attaching an existing index as a constraint is a catalog change".into(),
                None,
            ),
        },
        AlterTableOperation::ValidateConstraint { name } => report(
            LockMode::ShareUpdateExclusive,
            vec![table.to_owned()],
            Work::Scan,
            false,
            format!(
                "VALIDATE CONSTRAINT {} scans {table} under SHARE UPDATE EXCLUSIVE: reads and writes go on (Slipway runs it in a transaction of its own, so no stronger lock is held meanwhile)",
                norm(name)
            ),
            None,
        ),
        _ => ae(
            Work::Metadata,
            false,
            "a catalog change under ACCESS EXCLUSIVE".into(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_needs() {
        for sql in [
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "create unique index concurrently if not exists i on t (a)",
            "DROP INDEX CONCURRENTLY IF EXISTS i",
            "REINDEX (VERBOSE) INDEX CONCURRENTLY i",
            "VACUUM (ANALYZE) t",
            "ALTER TYPE mood ADD VALUE 'ok'",
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
        ] {
            assert_eq!(transaction_need(sql), TxNeed::Outside, "{sql}");
        }
        assert_eq!(
            transaction_need("ALTER TABLE t VALIDATE CONSTRAINT fk"),
            TxNeed::Own
        );
        for sql in [
            "CREATE INDEX i ON t (a)",
            "-- CREATE INDEX CONCURRENTLY\nCREATE INDEX i ON t (a)",
            "INSERT INTO log VALUES ('VACUUM')",
            "REINDEX INDEX i",
            "ALTER TYPE mood RENAME VALUE 'a' TO 'b'",
        ] {
            assert_eq!(transaction_need(sql), TxNeed::Shared, "{sql}");
        }
    }

    #[test]
    fn resumable_statements() {
        assert_eq!(
            resumable("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS Orders_Idx ON t (a)"),
            Resumable::CreateIndexConcurrently {
                name: Some("orders_idx".into())
            }
        );
        assert_eq!(
            resumable("create index concurrently \"Odd Name\" on t (a)"),
            Resumable::CreateIndexConcurrently {
                name: Some("\"Odd Name\"".into())
            }
        );
        assert_eq!(
            resumable("CREATE INDEX CONCURRENTLY ON t (a)"),
            Resumable::CreateIndexConcurrently { name: None }
        );
        assert_eq!(
            resumable("DROP INDEX CONCURRENTLY IF EXISTS public.i"),
            Resumable::DropIndexConcurrently {
                name: "public.i".into()
            }
        );
        assert_eq!(
            resumable("ALTER TYPE mood ADD VALUE IF NOT EXISTS 'it''s' AFTER 'a'"),
            Resumable::AddEnumValue {
                type_name: "mood".into(),
                label: "it's".into()
            }
        );
        assert_eq!(resumable("VACUUM t"), Resumable::Other);
    }

    #[test]
    fn defaults() {
        assert_eq!(default_kind("0"), DefaultKind::Stable);
        assert_eq!(default_kind("now()"), DefaultKind::Stable);
        assert_eq!(default_kind("'random()'"), DefaultKind::Stable);
        assert_eq!(
            default_kind("gen_random_uuid()"),
            DefaultKind::Volatile("gen_random_uuid".into())
        );
        assert_eq!(
            default_kind("pg_catalog.nextval('s'::regclass)"),
            DefaultKind::Volatile("nextval".into())
        );
        assert_eq!(
            default_kind("my_fn(1)"),
            DefaultKind::Unknown("my_fn".into())
        );
    }

    #[test]
    fn type_changes() {
        assert_eq!(
            type_change_is_metadata(Some("integer"), "bigint"),
            Some(false)
        );
        assert_eq!(
            type_change_is_metadata(Some("varchar(50)"), "varchar(100)"),
            Some(true)
        );
        assert_eq!(
            type_change_is_metadata(Some("varchar(100)"), "varchar(50)"),
            Some(false)
        );
        assert_eq!(
            type_change_is_metadata(Some("varchar(50)"), "text"),
            Some(true)
        );
        assert_eq!(
            type_change_is_metadata(Some("text"), "varchar(50)"),
            Some(false)
        );
        assert_eq!(
            type_change_is_metadata(Some("numeric(10,2)"), "numeric(12,2)"),
            Some(true)
        );
        assert_eq!(
            type_change_is_metadata(Some("numeric(10,2)"), "numeric(12,3)"),
            Some(false)
        );
        assert_eq!(type_change_is_metadata(None, "bigint"), None);
        assert_eq!(
            type_change_is_metadata(Some("bigserial"), "bigint"),
            Some(true)
        );
        assert_eq!(type_change_is_metadata(Some("int4"), "integer"), Some(true));
    }
}
