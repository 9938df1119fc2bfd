//! What every command shares: the global `--store` argument, the async runtime, the
//! session (store + actor) an operation runs in, and the one mapping from the operations
//! layer's errors to exit codes and hints as a person at a shell reads them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use slipway_model::exit;
use slipway_model::validate::LoadedSpec;
use slipway_ops::planning::{PlanError, Planned};
use slipway_ops::{Credentials, ErrorKind, Hint, OpsError, RunAction, Session};
use slipway_store::AnyStore;

use crate::out::{CliError, Output};

/// `--store`, shared by every command that reads or writes runs.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// Where runs are kept: sqlite://PATH (default .slipway/slipway.db here) or
    /// postgres://USER:PASSWORD@HOST:PORT/DB (shared by a team).
    #[arg(long, env = "SLIPWAY_STORE")]
    pub store: Option<String>,
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                exit::INTERNAL,
                format!("failed to start the async runtime: {e}"),
                None,
            )
        })
}

/// What this process presents to act as someone: `--token` / `SLIPWAY_TOKEN`, set once by
/// `main`.
static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// Variables that once declared an identity; they never do now (identity is verified).
const DECLARED_IDENTITY: &[(&str, &str)] = &[
    (
        "SLIPWAY_USER",
        "a name in an environment variable is not an identity: without access control slipway acts as the operating-system user; with it, as the subject of your API token (--token or SLIPWAY_TOKEN; an admin creates one with `slipway access token create --user NAME`)",
    ),
    (
        "SLIPWAY_GROUPS",
        "group membership is kept in the store by admins (`slipway access group add GROUP USER`), never declared by the caller",
    ),
];

/// Record the caller's credentials for every session of this process; refuse a declared
/// identity (exit 9).
pub fn set_credentials(token: Option<String>) -> Result<(), CliError> {
    for (var, why) in DECLARED_IDENTITY {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            return Err(CliError::new(
                exit::UNAUTHENTICATED,
                format!("refusing to act: {var} is set, but {why}"),
                Some(format!("unset {var}")),
            ));
        }
    }
    let _ = CREDENTIALS.set(match token {
        Some(t) => Credentials::Token(t),
        None => Credentials::None,
    });
    Ok(())
}

fn credentials() -> Credentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// Open the session of a command: the store `--store` names, acting as the verified
/// subject of the caller's token, or the local user while access control is off.
pub async fn session(store: &StoreArg) -> Result<Session, CliError> {
    Ok(Session::open(store.store.as_deref(), &credentials()).await?)
}

/// The verified user this process acts as in the store `store` names.
pub fn whoami(store: &StoreArg) -> Result<String, CliError> {
    let rt = runtime()?;
    let s = rt.block_on(session(store));
    rt.shutdown_background();
    Ok(s?.actor.user)
}

/// Open the session of a command that only reads, or acts on records that must already
/// exist (a run id): the store must be there. A mistyped `--store` is then exit 8 naming
/// the path, never a new empty store answering "no runs" (only commands that write — a
/// deploy, a grant — create one).
pub async fn read_session(store: &StoreArg) -> Result<Session, CliError> {
    Ok(Session::open_existing(store.store.as_deref(), &credentials()).await?)
}

/// The store of a command that only reads ([`read_session`]) and the path whose directory
/// holds this machine's files of its runs.
pub async fn read_store(arg: &StoreArg) -> Result<(Arc<AnyStore>, PathBuf), CliError> {
    let s = read_session(arg).await?;
    let anchor = s.layout.dir().join("slipway.db");
    Ok((s.store, anchor))
}

/// A hint as a shell user acts on it.
pub fn render_hint(h: &Hint) -> String {
    match h {
        Hint::Text { text } => text.clone(),
        Hint::ListRuns => "list runs with `slipway history`".into(),
        Hint::ChooseStore => "choose another store with --store (or SLIPWAY_STORE): sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB".into(),
        Hint::ShowPlan { file, environment } => {
            format!("see `slipway plan -f {} --env {environment}`", file.display())
        }
        Hint::Check {
            file,
            environment,
            only,
        } => format!(
            "`slipway check -f {} --env {environment} --only {only}`",
            file.display()
        ),
        Hint::Run { action, run } => match action {
            RunAction::Resume => format!("continue with `slipway resume {run}`"),
            RunAction::Approve => format!("approve with `slipway approve {run}`"),
            RunAction::Abort => format!("retry `slipway abort {run}`"),
            RunAction::Rollback => format!("roll back with `slipway rollback {run} --reason TEXT`"),
            RunAction::Status => format!("review the current plan with `slipway status {run}`"),
        },
        Hint::WaitForLease { .. } => "wait with `slipway deploy --wait`".into(),
        Hint::ForceRelease { environment } => format!(
            "when its holder crashed: it is reclaimed at expiry (or `slipway env release {environment} --force`)"
        ),
        Hint::AskGrant {
            subject,
            role,
            environment,
        } => format!("ask an admin for `slipway access grant {subject} {role} --env {environment}`"),
        Hint::GetToken => "pass an API token with --token or SLIPWAY_TOKEN; an admin creates one with `slipway access token create --user NAME`".into(),
    }
}

/// The exit code of an error kind.
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Input | ErrorKind::NotFound => exit::INVALID_INPUT,
        ErrorKind::Blocked => exit::BLOCKED,
        ErrorKind::Failure => exit::FAILURE,
        ErrorKind::Store => exit::STORE,
        ErrorKind::Unauthenticated => exit::UNAUTHENTICATED,
        ErrorKind::Evidence => exit::TAMPERED,
        ErrorKind::Internal => exit::INTERNAL,
    }
}

impl From<OpsError> for CliError {
    fn from(e: OpsError) -> Self {
        let hint = (!e.hints.is_empty()).then(|| {
            e.hints
                .iter()
                .map(render_hint)
                .collect::<Vec<_>>()
                .join("; ")
        });
        CliError::new(exit_code(e.kind), e.message, hint)
    }
}

impl From<slipway_engine::StoreError> for CliError {
    fn from(e: slipway_engine::StoreError) -> Self {
        OpsError::from(e).into()
    }
}

impl From<slipway_govern::GovernError> for CliError {
    fn from(e: slipway_govern::GovernError) -> Self {
        OpsError::from(e).into()
    }
}

/// Read and validate a spec (`slipway_ops::planning::load_spec`), printing its warnings,
/// or its diagnostics when it does not validate.
pub fn load_spec(path: &Path, out: &Output) -> Result<LoadedSpec, CliError> {
    match slipway_ops::planning::load_spec(path) {
        Ok(l) => {
            warn_spec(&l, out);
            Ok(l)
        }
        Err(e) => Err(spec_error(e, out)),
    }
}

/// Make the plan of a spec file for an environment (`slipway_ops::planning::plan_file`),
/// printing the spec's warnings, or its diagnostics when it does not validate. Runs its
/// own runtime: call it before entering a command's.
pub fn planned(
    file: &Path,
    env: &str,
    store: Option<&str>,
    out: &Output,
) -> Result<Planned, CliError> {
    planned_with(file, env, store, &Default::default(), out)
}

/// [`planned`] with options (an override of the promotion evidence).
pub fn planned_with(
    file: &Path,
    env: &str,
    store: Option<&str>,
    options: &slipway_ops::planning::PlanOptions,
    out: &Output,
) -> Result<Planned, CliError> {
    let rt = runtime()?;
    let planned = rt.block_on(slipway_ops::planning::plan_file_with(
        file, env, store, options,
    ));
    rt.shutdown_background();
    match planned {
        Ok(p) => {
            warn_spec(&p.loaded, out);
            Ok(p)
        }
        Err(e) => Err(spec_error(e, out)),
    }
}

fn warn_spec(l: &LoadedSpec, out: &Output) {
    if !l.warnings.is_empty() && !out.json() {
        out.eline(&slipway_model::diag::render_all(
            &l.file,
            &l.source,
            &l.warnings,
            out.color_err,
            100,
        ));
    }
}

/// A planning error as the CLI reports it: a spec that does not validate prints every
/// diagnostic — under `--output json` as the one JSON document of the command (so the
/// returned error is silent: a second document would make stdout two).
fn spec_error(e: PlanError, out: &Output) -> CliError {
    let errs = match e {
        PlanError::Ops(e) => return e.into(),
        PlanError::Spec(errs) => errs,
    };
    if out.json() {
        out.json_value(&serde_json::json!({
            "ok": false,
            "exit_code": exit::INVALID_INPUT,
            "file": errs.file,
            "diagnostics": errs.diagnostics,
        }));
        return CliError::new(exit::INVALID_INPUT, String::new(), None);
    }
    out.eline(&errs.render(out.color_err, 100));
    CliError::new(
        exit::INVALID_INPUT,
        format!(
            "{} has {} error{}",
            errs.file,
            errs.error_count(),
            if errs.error_count() == 1 { "" } else { "s" }
        ),
        // The hint is in each diagnostic.
        None,
    )
}

/// [`open_store`] for a command that reads records of every environment (reports, the
/// audit chain): the caller needs the viewer role on `*` once access control is on.
pub async fn open_store_to_read(
    arg: &StoreArg,
    what: &str,
) -> Result<(Arc<AnyStore>, PathBuf), CliError> {
    let s = read_session(arg).await?;
    slipway_ops::access::require(&s, slipway_govern::access::Role::Viewer, what, "*").await?;
    let anchor = s.layout.dir().join("slipway.db");
    Ok((s.store, anchor))
}

/// Require `role` in `environment` of the session's actor (see `slipway_ops::access`).
pub async fn enforce(
    session: &Session,
    role: slipway_govern::access::Role,
    action: &str,
    environment: &str,
) -> Result<(), CliError> {
    Ok(slipway_ops::access::require(session, role, action, environment).await?)
}

/// A packaging error (signatures, digests, archives) with its exit code and what to do.
pub fn package_error(e: &slipway_package::Error) -> CliError {
    let (code, hint) = match e.class() {
        slipway_package::ErrorClass::Tampered => (
            exit::TAMPERED,
            "do not deploy this file; find out how it changed",
        ),
        slipway_package::ErrorClass::Refused => (
            exit::FAILURE,
            "the check refused the input; see the message",
        ),
        slipway_package::ErrorClass::Input => {
            (exit::INVALID_INPUT, "check the paths and files given")
        }
    };
    CliError::new(code, format!("failed to {e}"), Some(hint.to_owned()))
}

/// The password in the environment variable a `--password-env VAR` names.
pub fn password_from_env(var: Option<&str>) -> Result<Option<String>, CliError> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Err(CliError::input(
            format!("the password variable {var} is not set or empty"),
            format!("export {var}=… before running, or drop --password-env for an unencrypted key"),
        )),
    }
}

/// A database migration error with its exit code and what to do.
pub fn migrate_error(e: slipway_migrate::Error) -> CliError {
    use slipway_migrate::Error as E;
    let (code, hint) = match &e {
        E::BadUrl { .. } | E::BadMigrations { .. } | E::Io { .. } | E::Unsupported(_) => {
            (exit::INVALID_INPUT, None)
        }
        E::ChecksumMismatch { .. }
        | E::ResumeChanged { .. }
        | E::OutOfOrder { .. }
        | E::Irreversible { .. }
        | E::UndoMissing { .. } => (exit::INVALID_INPUT, Some("nothing was changed".to_owned())),
        E::BackupDigest { .. } => (exit::TAMPERED, None),
        E::Connect { .. } => (
            exit::FAILURE,
            Some("check the URL, that the server is up and reachable".to_owned()),
        ),
        _ => (exit::FAILURE, None),
    };
    CliError::new(code, format!("failed to {e}"), hint)
}

/// Check rows as a table: check, host (when a row was measured on a target host), target,
/// verdict, measured, expected, time.
pub fn verdict_table(rows: &[slipway_checks::Verdict]) -> String {
    let hosts = rows.iter().any(|r| r.host.is_some());
    let mut t = comfy_table::Table::new();
    t.force_no_tty();
    let mut header = vec!["check"];
    if hosts {
        header.push("host");
    }
    header.extend(["target", "verdict", "measured", "expected", "time"]);
    t.set_header(header);
    for r in rows {
        let mut row = vec![r.check.clone()];
        if hosts {
            row.push(r.host.clone().unwrap_or_else(|| "this machine".into()));
        }
        row.extend([
            r.target.clone(),
            r.verdict.as_str().to_owned(),
            r.measured.clone(),
            r.expected.clone(),
            format!("{}ms", r.duration_ms),
        ]);
        t.add_row(row);
    }
    t.to_string()
}

/// `--server URL` / `SLIPWAY_SERVER`, set once by `main`: run commands then act through
/// that server's API instead of a store.
static SERVER: OnceLock<Option<String>> = OnceLock::new();

/// Record the server every run command of this process talks to.
pub fn set_server(url: Option<String>) {
    let _ = SERVER.set(url.filter(|u| !u.trim().is_empty()));
}

/// The API client when `--server` is given (with the caller's token), else `None`: the
/// command works on a store as before.
pub fn remote() -> Result<Option<slipway_server::client::Client>, CliError> {
    let Some(url) = SERVER.get().cloned().flatten() else {
        return Ok(None);
    };
    let token = match credentials() {
        Credentials::Token(t) => Some(t),
        Credentials::None => None,
    };
    slipway_server::client::Client::new(&url, token)
        .map(Some)
        .map_err(CliError::from)
}

/// A run id as one path segment of an API URL.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl From<slipway_server::client::ClientError> for CliError {
    fn from(e: slipway_server::client::ClientError) -> Self {
        use slipway_server::client::ClientError as E;
        match e {
            E::Url { .. } => CliError::input(
                e.to_string(),
                "pass the server as --server http://HOST:PORT (or SLIPWAY_SERVER)",
            ),
            E::Unreachable { .. } => CliError::new(
                exit::STORE,
                e.to_string(),
                Some("check that `slipway serve` runs there and --server names it".into()),
            ),
            // The exit codes the same refusal has in local mode, from the status the
            // server answered it with.
            E::Api {
                status, error, fix, ..
            } => {
                let code = match status {
                    400 | 404 | 405 | 422 => exit::INVALID_INPUT,
                    401 => exit::UNAUTHENTICATED,
                    403 | 409 | 429 => exit::BLOCKED,
                    503 => exit::STORE,
                    _ => exit::INTERNAL,
                };
                CliError::new(code, error, (!fix.is_empty()).then_some(fix))
            }
        }
    }
}

/// clap's parser of an environment name given on the command line without a spec to
/// look it up in (`env lease`, `proxy stop`): the spec's rule
/// ([`slipway_model::text::is_safe_name`]), so nothing outside it reaches the store, a
/// path or a terminal.
pub fn env_name(s: &str) -> Result<String, String> {
    if slipway_model::text::is_safe_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{}` is not an environment name: use 1 to {} letters, digits, `-` and `_`, starting with a letter or digit",
            s.escape_default(),
            slipway_model::text::NAME_MAX
        ))
    }
}

/// [`env_name`], or `*` for every environment (grants).
pub fn env_name_or_all(s: &str) -> Result<String, String> {
    if s == "*" {
        Ok(s.to_owned())
    } else {
        env_name(s).map_err(|e| format!("{e}; or `*` for every environment"))
    }
}

/// clap's parser of a service name given without a spec (`proxy stop SERVICE`): the
/// spec's rule, as [`env_name`].
pub fn service_name(s: &str) -> Result<String, String> {
    env_name(s).map_err(|e| e.replace("an environment name", "a service name"))
}
