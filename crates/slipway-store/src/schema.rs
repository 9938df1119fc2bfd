//! Slipway's own schema (SQLite migrations and the PostgreSQL schema), versioned by the
//! journal format kept in the `meta` table.
//!
//! Compatibility policy (reader/writer matrix): this build reads format
//! [`JOURNAL_FORMAT`] and migrates every format from [`OLDEST_MIGRATABLE`] up, in one
//! transaction. A newer format is refused ("written by a newer slipway"), an older
//! unmigratable one is refused with what to do; neither is ever read as if it were current.
//!
//! Format 6 makes the audit chain the evidence: the journal, step and approval tables are
//! dropped (their contents are the runs' chain entries, which is where they are read from
//! now), new entries hash framed fields (`audit.hv = 2`), and every governance table
//! (access grants, tokens, reviews, checklist acknowledgements, retention rules, archive
//! checkpoints, run summaries) becomes rows of `records`, each version committed to by a
//! chain entry. The migration moves the rows an older store has into `records` and commits
//! to them with one `evidence_baseline` entry (`crate::legacy`): from the upgrade on, an
//! edit of any of them is caught; what was edited before it cannot be.

/// The journal format this build writes.
pub const JOURNAL_FORMAT: u32 = 7;
/// The oldest format this build can migrate.
pub const OLDEST_MIGRATABLE: u32 = 1;

/// Migration `i` (0-based) brings format `i` to format `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // Format 1: runs, the journal, step states, approvals, the audit chain.
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    release TEXT NOT NULL,
    version TEXT NOT NULL,
    environment TEXT NOT NULL,
    author TEXT NOT NULL,
    state TEXT NOT NULL,
    override_reason TEXT,
    plan_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX runs_by_digest ON runs (digest, environment);
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX journal_by_run ON journal (run_id, seq);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    digest TEXT NOT NULL,
    groups TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    run_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"#,
    // Format 2: control requests (pause/abort from another process), the run's working
    // directory (so `resume` needs no spec file) and the erasable
    // identity mapping behind pseudonymous operator ids.
    r#"
ALTER TABLE runs ADD COLUMN control TEXT;
ALTER TABLE runs ADD COLUMN workdir TEXT NOT NULL DEFAULT '';
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    created_at TEXT NOT NULL
);
"#,
    // Format 3: environment leases (one live holder per environment; expiry in epoch
    // milliseconds so a take-over compares numbers inside one transaction).
    r#"
CREATE TABLE leases (
    environment TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    release TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
"#,
    // Format 4: one summary row per archived run, written in the prune's transaction, so
    // reports over a period count runs whose records moved into an archive bundle. A
    // format bump rather than `CREATE TABLE IF NOT EXISTS`: an older slipway would read
    // such a store's reports without the archived runs (a silent undercount) and could
    // archive without writing summaries; it refuses the store instead.
    r#"
CREATE TABLE run_summaries (
    run_id TEXT PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL,
    release TEXT NOT NULL,
    version TEXT NOT NULL,
    release_type TEXT NOT NULL,
    environment TEXT NOT NULL,
    production INTEGER NOT NULL,
    services TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    workdir TEXT NOT NULL,
    tag TEXT,
    keep_until TEXT
);
CREATE INDEX run_summaries_by_checkpoint ON run_summaries (checkpoint_id);
"#,
    // Format 5: one live run per plan digest and environment, enforced by the store, so
    // two deploys of one plan racing each other cannot both create a run (the loser
    // continues the winner's). Before it, the migration aborts the older live duplicates
    // an earlier build let in (see [`LIVE_DUPLICATES`]), journaled and audited. A format
    // bump: an older slipway would meet the index as an unexplained error where it creates
    // a run, and could not read the undo observations (`step_observed` decisions
    // `abandon`, `undo_complete`, `undo_again`) this format's engine journals.
    LIVE_RUN_INDEX,
    // Format 6: the chain is the journal (see the module doc). The legacy governance
    // tables are moved into `records` by `crate::legacy` in the same transaction, after
    // this SQL.
    FORMAT_6,
    // Format 7: see [`FORMAT_7`].
    FORMAT_7,
];

/// The partial unique index of format 5 (same text on SQLite and PostgreSQL). The list of
/// terminal states is `RunState::is_terminal`'s.
pub const LIVE_RUN_INDEX: &str = r#"
CREATE UNIQUE INDEX runs_one_live ON runs (digest, environment)
    WHERE state NOT IN ('succeeded', 'failed', 'rolled_back', 'aborted');
"#;

/// The index's name, as a violation names it (PostgreSQL's `constraint`).
pub const LIVE_RUN_INDEX_NAME: &str = "runs_one_live";

/// Live runs sharing a digest and environment, newest first within each pair: what the
/// format 5 migration resolves (it keeps the newest, the one `deploy` continues, and
/// aborts the others) before it creates [`LIVE_RUN_INDEX`].
pub const LIVE_DUPLICATES: &str = r#"
SELECT id, digest, environment, state FROM runs r
WHERE state NOT IN ('succeeded', 'failed', 'rolled_back', 'aborted')
  AND EXISTS (SELECT 1 FROM runs o WHERE o.digest = r.digest AND o.environment = r.environment
              AND o.id <> r.id AND o.state NOT IN ('succeeded', 'failed', 'rolled_back', 'aborted'))
ORDER BY digest, environment, created_at DESC, id DESC
"#;

/// The format whose migration creates [`LIVE_RUN_INDEX`].
pub const LIVE_RUN_FORMAT: u32 = 5;

/// The actor of the journal entries a migration writes.
pub const MIGRATION_ACTOR: &str = "slipway-migration";

/// Format 7: resume and promote requests for a live canary are journal events
/// (`intervention_requested`, `intervention_settled`) instead of request files beside the
/// store, so a request reaches the run's driver on any machine sharing the store. No table
/// changes; a format bump so that an older slipway refuses the store with "written by a
/// newer slipway" instead of failing on an event it cannot read.
const FORMAT_7: &str = "SELECT 1;";

/// Format 6, the same SQL on both backends.
const FORMAT_6: &str = r#"
ALTER TABLE audit ADD COLUMN hv INTEGER NOT NULL DEFAULT 1;
CREATE INDEX audit_by_run ON audit (run_id, seq);
DROP TABLE journal;
DROP TABLE steps;
DROP TABLE approvals;
DROP TABLE run_summaries;
CREATE TABLE records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    nonce TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE audit_anchors (
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (seq, hash)
);
CREATE TABLE token_use (
    id TEXT PRIMARY KEY,
    last_used_at TEXT NOT NULL
);
"#;

/// Release bundles a server received (`slipway --server URL deploy`), content-addressed
/// by their SHA-256. Created when a store is opened, not by a format bump: nothing an
/// older slipway reads depends on them (it keeps reading and writing runs as before), and a
/// bundle is a blob beside the journal, not evidence — the run's plan, digest and journal
/// are. SQLite's form.
pub const BUNDLES_SQLITE: &str = "CREATE TABLE IF NOT EXISTS bundles (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at TEXT NOT NULL
)";

/// [`BUNDLES_SQLITE`] on PostgreSQL.
pub const BUNDLES_PG: &str = "CREATE TABLE IF NOT EXISTS bundles (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at TEXT NOT NULL
)";

/// The index `Store::latest_runs` reads (the newest run, and the newest succeeded one, of
/// each release in each environment), the same text on both backends. Created when a store
/// is opened, like the bundles table: an index changes nothing an older slipway reads.
pub const RUNS_LATEST_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS runs_latest ON runs (release, environment, state, created_at)";

/// The oldest journal format a PostgreSQL store can have: PostgreSQL support started at
/// format 4, so a fresh database gets [`PG_SCHEMA`] (format 4) in one transaction, and
/// later formats add their PostgreSQL migration to [`PG_MIGRATIONS`].
pub const PG_FIRST_FORMAT: u32 = 4;

/// The PostgreSQL schema of journal format [`PG_FIRST_FORMAT`]: the same tables and
/// columns as the SQLite migrations 1–4 produce, with PostgreSQL types (identity columns
/// for the journal and approvals, `BIGINT` for counters and milliseconds). Times stay RFC
/// 3339 text as in SQLite, so both backends hash and compare the same strings.
pub const PG_SCHEMA: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    release TEXT NOT NULL,
    version TEXT NOT NULL,
    environment TEXT NOT NULL,
    author TEXT NOT NULL,
    state TEXT NOT NULL,
    override_reason TEXT,
    plan_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    control TEXT,
    workdir TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_digest ON runs (digest, environment);
CREATE TABLE journal (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX journal_by_run ON journal (run_id, seq);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    output TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE approvals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    digest TEXT NOT NULL,
    groups TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    run_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE leases (
    environment TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    release TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE run_summaries (
    run_id TEXT PRIMARY KEY,
    checkpoint_id BIGINT NOT NULL,
    release TEXT NOT NULL,
    version TEXT NOT NULL,
    release_type TEXT NOT NULL,
    environment TEXT NOT NULL,
    production BIGINT NOT NULL,
    services TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    workdir TEXT NOT NULL,
    tag TEXT,
    keep_until TEXT
);
CREATE INDEX run_summaries_by_checkpoint ON run_summaries (checkpoint_id);
"#;

/// PostgreSQL migration `i` brings format `PG_FIRST_FORMAT + i` to the next one.
pub const PG_MIGRATIONS: &[&str] = &[
    // Format 5: see the SQLite migration (the same index, after the same clean-up).
    LIVE_RUN_INDEX,
    // Format 6: the same SQL as SQLite's.
    FORMAT_6,
    // Format 7: no SQL either.
    FORMAT_7,
];

// Whoever bumps JOURNAL_FORMAT must also say how a PostgreSQL store gets there.
const _: () = assert!(PG_FIRST_FORMAT as usize + PG_MIGRATIONS.len() == JOURNAL_FORMAT as usize);
