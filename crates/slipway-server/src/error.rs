//! The one error shape of the API: `{"error": …, "fix": …}` with a status code that says
//! whose problem it is (4xx the caller's, 5xx the store's).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use slipway_engine::store::StoreError;

/// An error answered as JSON.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub error: String,
    /// What to do about it.
    pub fix: String,
    /// Seconds a client should wait before trying again (429), sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// More fields of the answer beside `error` and `fix` (a refused plan's `findings`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with its status, message and fix.
    pub fn new(status: StatusCode, error: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            fix: fix.into(),
            retry_after: None,
            details: serde_json::Map::new(),
        }
    }

    /// The error with `key: value` in its answer too.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.details.insert(key.to_owned(), value);
        self
    }

    /// 429: this token id failed too often lately (see `slipway_govern::access`).
    pub fn too_many_failures(error: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after.as_secs() + 1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                error,
                "wait, then send a live token; an admin creates one with `slipway access token create --user NAME`",
            )
        }
    }

    /// 401: no token, or one the store does not accept.
    pub fn unauthenticated(error: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            error,
            "send `Authorization: Bearer slw_…` with a live token; an admin creates one with `slipway access token create --user NAME`",
        )
    }

    /// 404 for a run id the store does not have.
    pub fn no_such_run(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("run `{id}` does not exist"),
            "list runs with GET /api/v1/runs",
        )
    }

    /// 400 for a query parameter that does not parse.
    pub fn bad_parameter(name: &str, value: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("parameter `{name}` is `{value}`, not {expected}"),
            format!("pass `{name}` as {expected}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchRun(id) => Self::no_such_run(&id),
            other => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store failed: {other}"),
                "check that the store `slipway serve` was started with is reachable; the CLI's `slipway history --store …` shows the same error",
            ),
        }
    }
}

impl From<slipway_ops::OpsError> for ApiError {
    fn from(e: slipway_ops::OpsError) -> Self {
        use slipway_ops::{ErrorKind, Hint};
        let refused_role = e.hints.iter().any(|h| matches!(h, Hint::AskGrant { .. }));
        let status = match e.kind {
            ErrorKind::Input => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Blocked if refused_role => StatusCode::FORBIDDEN,
            ErrorKind::Blocked | ErrorKind::Evidence => StatusCode::CONFLICT,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Store => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Failure | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let fix = e
            .hints
            .iter()
            .map(|h| match h {
                Hint::Text { text } => text.clone(),
                Hint::ListRuns => "list runs with GET /api/v1/runs".to_owned(),
                Hint::AskGrant {
                    subject,
                    role,
                    environment,
                } => format!(
                    "ask an admin for `slipway access grant {subject} {role} --env {environment}`"
                ),
                Hint::Run { run, .. } => format!("see GET /api/v1/runs/{run}"),
                other => serde_json::to_string(other).unwrap_or_default(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Self::new(status, e.message, fix)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), self.error.into());
        body.insert("fix".into(), self.fix.into());
        let body = serde_json::Value::Object(body);
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}
