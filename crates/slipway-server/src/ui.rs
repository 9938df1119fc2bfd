//! The web UI: server-rendered pages (minijinja, HTML auto-escaping on, undefined values
//! an error), a login form that starts a server-side session (the cookie holds its id,
//! never the token), and the page's script served as a file so the
//! Content-Security-Policy can forbid inline script: whatever a spec puts in a name is
//! text, never code, twice over. The login page has no script: a token is typed (or
//! pasted) into the form, never taken from the URL, so no link can sign a browser in.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Deserialize;

use crate::api::{load_run, run_summary, visible_runs};
use crate::auth::{Caller, cookie, cookie_name};
use crate::{ApiError, AppState};

/// Scripts only from this origin, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Runs listed on the index page.
const INDEX_LIMIT: u32 = 100;

/// The page templates, parsed once.
pub(crate) fn templates() -> Result<Environment<'static>, ApiError> {
    let mut env = Environment::new();
    // `.html` names switch HTML auto-escaping on; undefined values are bugs, not blanks.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for (name, text) in [
        ("base.html", include_str!("../templates/base.html")),
        ("index.html", include_str!("../templates/index.html")),
        ("run.html", include_str!("../templates/run.html")),
        ("plan.html", include_str!("../templates/plan.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("inbox.html", include_str!("../templates/inbox.html")),
        (
            "environments.html",
            include_str!("../templates/environments.html"),
        ),
        ("error.html", include_str!("../templates/error.html")),
    ] {
        env.add_template(name, text).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("template {name}: {e}"),
                "this is a bug in slipway-server",
            )
        })?;
    }
    Ok(env)
}

/// An HTML page with the security headers every page gets.
fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn render(state: &AppState, name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    state
        .templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("render {name}: {e}"),
                "this is a bug in slipway-server",
            )
        })
}

/// An error as a page (same message and fix as the API's JSON).
pub(crate) fn error_page(state: &AppState, e: ApiError) -> Response {
    let body = render(
        state,
        "error.html",
        context! { user => None::<String>, status => e.status.as_u16(), error => &e.error, fix => &e.fix },
    );
    match body {
        Ok(b) => page(e.status, b),
        Err(e) => e.into_response(),
    }
}

/// `GET /`: recent runs.
pub(crate) async fn index(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let result = async {
        let runs = visible_runs(&state, &caller, INDEX_LIMIT).await?;
        let runs: Vec<_> = runs.iter().map(run_summary).collect();
        render(
            &state,
            "index.html",
            context! { user => &caller.user, runs => minijinja::Value::from(minijinja::value::Serde(&runs)) },
        )
    }
    .await;
    match result {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => error_page(&state, e),
    }
}

/// `GET /runs/{id}`: the run, its steps and approvals; the journal arrives by SSE.
pub(crate) async fn run_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let run = load_run(&state, &caller, &id).await?;
        let steps = slipway_ops::views::in_plan_order(
            slipway_ops::runs::plan_of(&run).as_ref(),
            state.store.steps(&id).await?,
        );
        let approvals = state.store.approvals(&id).await?;
        let actions = crate::control::actions_for(&state, &caller, &run).await?;
        let canary = slipway_ops::runs::plan_of(&run).is_some_and(|p| p.strategy.canary.is_some());
        let chart = if canary {
            Some(chart_of(&state, &run).await?)
        } else {
            None
        };
        // The session's anti-forgery value, for the action forms (none for a bearer caller).
        let csrf = crate::control::page_csrf(&caller);
        render(
            &state,
            "run.html",
            context! {
                user => &caller.user,
                run => minijinja::Value::from(minijinja::value::Serde(run_summary(&run))),
                steps => minijinja::Value::from(minijinja::value::Serde(&steps)),
                approvals => minijinja::Value::from(minijinja::value::Serde(&approvals)),
                actions => actions,
                csrf => csrf,
                // Built by `chart.rs`, which escapes every text it takes from outside.
                chart => chart.map(minijinja::Value::from_safe_string),
            },
        )
    }
    .await;
    match result {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => error_page(&state, e),
    }
}

/// The canary chart of `run` (`chart.rs`), from its journal.
async fn chart_of(
    state: &AppState,
    run: &slipway_engine::store::RunRecord,
) -> Result<String, ApiError> {
    let journal = state.store.journal(&run.id, 0).await?;
    let series = slipway_ops::console::canary_series(&journal);
    let stable = slipway_ops::console::stable_versions(state.store.as_ref(), run, &journal).await?;
    let planned: HashMap<String, String> = slipway_ops::runs::plan_of(run)
        .map(|p| {
            slipway_ops::deployed::planned_versions(&p)
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    Ok(crate::chart::render(&series, &|service| {
        crate::chart::Versions {
            canary: planned
                .get(service)
                .cloned()
                .unwrap_or_else(|| run.version.clone()),
            stable: stable.get(service).cloned(),
        }
    }))
}

/// `GET /runs/{id}/chart.svg`: the run's canary chart alone, what the run page's script
/// swaps in when the event stream journals a weight change or a measurement.
pub(crate) async fn chart_svg(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let run = load_run(&state, &caller, &id).await?;
        chart_of(&state, &run).await
    }
    .await;
    match result {
        Ok(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
                // Opened on its own, the SVG may neither run script nor load anything.
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
            ],
            svg,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs the inbox looks at (the dashboard reads `Store::latest_runs`, unbounded by this).
const CONSOLE_LIMIT: u32 = 500;

/// `GET /inbox`: plans waiting for an approval the signed-in person may give
/// (`slipway_ops::console::inbox`), each linking to its plan page.
pub(crate) async fn inbox_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let result = async {
        let session = caller.session(&state).await?;
        let waiting = slipway_ops::console::inbox(&session, CONSOLE_LIMIT).await?;
        let rows: Vec<_> = waiting
            .iter()
            .map(|w| {
                let mut v = run_summary(&w.run);
                v["required"] = w.required.into();
                v["given"] = w.given.into();
                v["groups"] = w.groups.clone().into();
                v["author"] = w.run.author.clone().into();
                v
            })
            .collect();
        render(
            &state,
            "inbox.html",
            context! { user => &caller.user, waiting => minijinja::Value::from(minijinja::value::Serde(&rows)) },
        )
    }
    .await;
    match result {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => error_page(&state, e),
    }
}

/// `GET /environments`: service × environment (`slipway_ops::console::dashboard`).
pub(crate) async fn environments_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let result = async {
        let session = caller.session(&state).await?;
        let cells = slipway_ops::console::dashboard(&session).await?;
        let mut environments: Vec<String> = cells.iter().map(|c| c.environment.clone()).collect();
        environments.dedup();
        let mut services: Vec<String> = cells.iter().map(|c| c.service.clone()).collect();
        services.sort_unstable();
        services.dedup();
        // One row per service, one column per environment.
        let rows: Vec<_> = services
            .iter()
            .map(|s| {
                let row: Vec<_> = environments
                    .iter()
                    .map(|e| cells.iter().find(|c| c.service == *s && c.environment == *e))
                    .collect();
                context! { service => s, cells => minijinja::Value::from(minijinja::value::Serde(&row)) }
            })
            .collect();
        render(
            &state,
            "environments.html",
            context! { user => &caller.user, environments => environments, rows => rows },
        )
    }
    .await;
    match result {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => error_page(&state, e),
    }
}

/// A gate as the plan page lists it: its name, what it asks in words, where it comes
/// from.
fn gate_row(g: &slipway_model::plan::Gate) -> minijinja::Value {
    use slipway_model::plan::GateKind;
    let detail = match &g.kind {
        GateKind::Approvals {
            required,
            groups,
            four_eyes,
        } => format!(
            "{required} approver{}{}{}",
            if *required == 1 { "" } else { "s" },
            if groups.is_empty() {
                String::new()
            } else {
                format!(" from {}", groups.join(", "))
            },
            if *four_eyes { ", never the author" } else { "" }
        ),
        GateKind::ChangeRecord { record } => record
            .as_ref()
            .map_or("change record MISSING".to_owned(), |r| {
                format!("change record {r}")
            }),
        GateKind::Signature { keys } => format!("signed by one of: {}", keys.join(", ")),
        GateKind::Canary => "canary strategy".to_owned(),
        GateKind::Soak { seconds } => format!("soak {seconds} s at full weight"),
        GateKind::Windows { windows } => windows
            .iter()
            .map(|w| format!("`{}` {} for {}", w.cron, w.timezone, w.duration))
            .collect::<Vec<_>>()
            .join("; "),
        GateKind::Freezes { freezes } => freezes
            .iter()
            .map(|f| format!("{}..{} ({})", f.from, f.to, f.reason))
            .collect::<Vec<_>>()
            .join("; "),
        GateKind::Checks { names, .. } => format!("checks: {}", names.join(", ")),
        GateKind::PostReview => "review after the fact".to_owned(),
        GateKind::Checklist { items } => items
            .iter()
            .map(|i| format!("{}: {}", i.id, i.text))
            .collect::<Vec<_>>()
            .join("; "),
        GateKind::Readiness { checks, advisory } => format!(
            "readiness checks: {}",
            checks
                .iter()
                .map(|c| if advisory.contains(c) {
                    format!("{} (advisory)", c.as_str())
                } else {
                    c.as_str().to_owned()
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // A gate kind this page has no words for yet: its fields as the plan records them.
        _ => {
            let mut v = serde_json::to_value(g).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.remove("gate");
                m.remove("source");
            }
            v.to_string()
        }
    };
    context! { name => g.kind.name(), detail => detail, source => &g.source }
}

/// `GET /runs/{id}/plan`: the plan a run's approvals are bound to, as its approvers review
/// it (`slipway_ops::views::plan_of_run`, what `slipway plan show` prints): what it
/// changes against what runs now, waves, gates with their sources, risk, findings — and
/// the approve button for an approver while the run waits for approvals.
pub(crate) async fn plan_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let session = caller.session(&state).await?;
        let shown = slipway_ops::views::plan_of_run(&session, &id).await?;
        let run = load_run(&state, &caller, &id).await?;
        let approve = crate::control::actions_for(&state, &caller, &run)
            .await?
            .contains(&"approve");
        let gates: Vec<minijinja::Value> = shown.plan.gates.iter().map(gate_row).collect();
        render(
            &state,
            "plan.html",
            context! {
                user => &caller.user,
                shown => minijinja::Value::from(minijinja::value::Serde(&shown)),
                plan => minijinja::Value::from(minijinja::value::Serde(&shown.plan)),
                gates => gates,
                approve => approve,
                csrf => crate::control::page_csrf(&caller),
            },
        )
    }
    .await;
    match result {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => error_page(&state, e),
    }
}

/// Where to go after signing in: a path of this site only, so the form cannot be made an
/// open redirect. Strict: printable ASCII without spaces or backslashes, starting with one
/// `/` — browsers drop tabs and newlines from a URL before resolving it (`/<TAB>/host` is
/// `//host`, another site) and read `\` as `/`; anything else is `/`. Every accepted
/// value is a valid `Location` header.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `GET /login?next=PATH`.
pub(crate) async fn login_form(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    match render(
        &state,
        "login.html",
        context! { user => None::<String>, next => next, error => None::<String> },
    ) {
        Ok(b) => page(StatusCode::OK, b),
        Err(e) => e.into_response(),
    }
}

/// The login form's fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Whether a browser says this request comes from another site: `Sec-Fetch-Site` other
/// than `same-origin`/`none`, or else an `Origin` whose host is not this `Host`. Login
/// CSRF is the reason: a cross-site form posting an attacker's token to `/login` would
/// sign the victim's browser in as the attacker (whose runs and audit they would then
/// read and act in). Clients that send neither header (curl, scripts) are not browsers
/// carrying someone's session, so they pass.
pub(crate) fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .trim_end_matches('/');
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn cross_site_refused(state: &AppState) -> Response {
    error_page(
        state,
        ApiError::new(
            StatusCode::FORBIDDEN,
            "a sign-in or sign-out posted from another site is refused",
            "open this server's own /login page and sign in there",
        ),
    )
}

/// `Set-Cookie` for a session id (or, empty with `Max-Age=0`, its removal): HttpOnly,
/// SameSite=Strict, the whole site; over TLS `Secure` under the `__Host-` name.
fn session_cookie(state: &AppState, value: &str, clear: bool) -> Option<HeaderValue> {
    let secure = if state.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let max_age = if clear {
        "; Max-Age=0".to_owned()
    } else {
        format!("; Max-Age={}", state.options.session_ttl.as_secs())
    };
    // A session id is hex: always a valid header value.
    HeaderValue::from_str(&format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{max_age}",
        cookie_name(state)
    ))
    .ok()
}

/// `POST /login`: verify the token, start a server-side session, set its id in the
/// cookie, go to `next`.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if cross_site(&headers) {
        return cross_site_refused(&state);
    }
    let next = safe_next(f.next.as_deref());
    let token = f.token.trim();
    let started = slipway_govern::access::start_session(
        &state.access,
        &state.sessions,
        token,
        slipway_stdx::now(),
        state.options.session_ttl,
        &state.verified,
    )
    .await
    .map_err(crate::auth::auth_error);
    match started {
        Ok(session) => {
            let Some(cookie) = session_cookie(&state, &session.id, false) else {
                return error_page(
                    &state,
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the session id is not a valid cookie",
                        "this is a bug in slipway-server",
                    ),
                );
            };
            let mut r = Redirect::to(&next).into_response();
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            r
        }
        Err(e)
            if matches!(
                e.status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ) =>
        {
            match render(
                &state,
                "login.html",
                context! { user => None::<String>, next => next, error => &e.error },
            ) {
                Ok(b) => {
                    let mut r = page(e.status, b);
                    if let Some(secs) = e.retry_after {
                        r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                    }
                    r
                }
                Err(e) => e.into_response(),
            }
        }
        Err(e) => error_page(&state, e),
    }
}

/// `POST /logout`: end the session on the server — its cookie, wherever copied, stops
/// working — and clear the cookie (not from another site: see [`cross_site`]).
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return cross_site_refused(&state);
    }
    if let Some(id) = cookie(&headers, cookie_name(&state)) {
        state.sessions.end(&id);
    }
    let mut r = Redirect::to("/login").into_response();
    if let Some(c) = session_cookie(&state, "", true) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// `GET /assets/{name}`: the stylesheet and the two scripts, compiled in.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "run.js" => (include_str!("../templates/run.js"), "text/javascript"),
        "slipway.css" => (include_str!("../templates/slipway.css"), "text/css"),
        _ => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no asset `{name}`"),
                "assets are run.js and slipway.css",
            )
            .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Percent-encode a path for a `next=` query value.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
