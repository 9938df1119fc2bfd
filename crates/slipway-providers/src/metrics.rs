//! External metric providers for canary analysis: Prometheus (a PromQL instant query over
//! the HTTP API) and HTTP JSON (a number at a JSON pointer of a GET's answer), behind
//! [`slipway_rollout::ExternalMetrics`]. The controller decides when to ask and judges
//! the answers; this module asks and reads.
//!
//! What counts as an answer is strict, because a canary that passes on an answer nobody
//! meant is the failure this exists to prevent: a Prometheus result must be exactly one
//! sample (none is *no data*, judged Inconclusive and never a pass; several is an error
//! telling the author to aggregate), NaN and infinities are no data, and anything that is
//! not the documented shape is an error carrying Prometheus's own `errorType`/`error`.
//!
//! Each request is bounded by its provider's `timeout` (default [`DEFAULT_TIMEOUT`]) and
//! its connection by [`CONNECT_TIMEOUT`]. A provider URL may carry credentials
//! (`https://user:{{ vars.prom_password }}@host`, the password a `secret://env/…`
//! variable resolved by the caller, [`ProviderSet::with_secrets`]): they are sent as HTTP
//! basic auth, and every text leaving this module (query shown in the journal, errors)
//! names the URL without them and passes through [`Redactor`]s of their values and of
//! every resolved secret.
//!
//! `https://` providers are verified (chain and host name, rustls with ring as elsewhere)
//! against the system's roots — `SSL_CERT_FILE`/`SSL_CERT_DIR` replace them, e.g. with a
//! private CA — or the roots given by [`ProviderSet::with_roots`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::CertificateDer;
use slipway_model::analysis::Reading;
use slipway_model::metric_query::{QueryVars, render};
use slipway_model::plan::Plan;
use slipway_model::spec::{Metric, Provider};
use slipway_package::render::Redactor;
use slipway_rollout::{Asked, BoxFuture, ExternalMetrics};

/// A provider's request timeout when the spec gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection may take, whatever the provider's timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of an unexpected answer an error quotes.
const QUOTE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prometheus,
    Http,
}

/// One declared provider.
#[derive(Clone)]
struct Client {
    name: String,
    kind: Kind,
    /// As written in the spec, credentials included (never shown).
    url: String,
    timeout: Duration,
}

impl Client {
    fn source(&self) -> String {
        match self.kind {
            Kind::Prometheus => format!("prometheus `{}`", self.name),
            Kind::Http => format!("http `{}`", self.name),
        }
    }
}

/// The plan's metric providers, ready to be asked.
#[derive(Clone, Default)]
pub struct ProviderSet {
    clients: BTreeMap<String, Client>,
    /// Roots `https://` providers are verified with (`None`: the system's).
    roots: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The environment's variables for `{{ vars.NAME }}`, secret ones once resolved.
    vars: BTreeMap<String, String>,
    /// Variables that are secret references not resolved here, with the reference.
    unresolved: BTreeMap<String, String>,
    /// Masks resolved secret values in everything this returns.
    secrets: Redactor,
}

impl ProviderSet {
    /// The providers a plan declares (validation has checked their URLs and timeouts; an
    /// unreadable timeout falls back to [`DEFAULT_TIMEOUT`]).
    pub fn from_plan(plan: &Plan) -> Self {
        let mut set = Self::new(&plan.providers);
        for (k, v) in &plan.env.vars {
            if v.as_str().starts_with("secret://") {
                set.unresolved.insert(k.clone(), v.as_str().to_owned());
            } else {
                set.vars.insert(k.clone(), v.as_str().to_owned());
            }
        }
        set
    }

    /// The values of the environment's secret variables (`NAME` → value), resolved by the
    /// caller at deploy time: they fill `{{ vars.NAME }}` and are masked in every text
    /// this returns.
    pub fn with_secrets(mut self, secrets: BTreeMap<String, String>) -> Self {
        self.secrets = Redactor::from_values(secrets.values().cloned());
        for (k, v) in secrets {
            self.unresolved.remove(&k);
            self.vars.insert(k, v);
        }
        self
    }

    /// Fill the placeholders of `text`; an unresolved secret variable is named.
    fn render(&self, text: &str, vars: &QueryVars) -> Result<String, String> {
        render(text, vars).map_err(|e| {
            match self
                .unresolved
                .iter()
                .find(|(k, _)| text.contains(&format!("vars.{k}")))
            {
                Some((k, r)) => format!(
                    "`{{{{ vars.{k} }}}}` is the secret `{r}`, not resolved by this process (is the variable set where `slipway deploy` runs?)"
                ),
                None => e,
            }
        })
    }

    /// These providers, by name.
    pub fn new(providers: &BTreeMap<String, Provider>) -> Self {
        let clients = providers
            .iter()
            .filter_map(|(name, p)| {
                let (kind, u) = match (&p.prometheus, &p.http) {
                    (Some(u), _) => (Kind::Prometheus, u),
                    (None, Some(u)) => (Kind::Http, u),
                    (None, None) => return None,
                };
                let timeout = u
                    .timeout
                    .as_ref()
                    .and_then(|t| t.get().ok())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_TIMEOUT);
                Some((
                    name.clone(),
                    Client {
                        name: name.clone(),
                        kind,
                        url: u.url.clone(),
                        timeout,
                    },
                ))
            })
            .collect();
        Self {
            clients,
            ..Self::default()
        }
    }

    /// Verify `https://` providers against these roots instead of the system's.
    pub fn with_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots = Some(Arc::new(roots));
        self
    }

    /// Whether no provider is declared.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Ask one metric's provider now.
    pub async fn read_one(&self, metric: &Metric, vars: &QueryVars) -> Asked {
        let query_text = metric.query.clone().unwrap_or_default();
        let Some(client) = self.clients.get(&metric.provider) else {
            return Asked {
                source: format!("provider `{}`", metric.provider),
                query: query_text,
                reading: Reading::Error(format!(
                    "no provider `{}` is declared under `providers:`",
                    metric.provider
                )),
            };
        };
        let source = client.source();
        let vars = &QueryVars {
            vars: self.vars.clone(),
            ..vars.clone()
        };
        let query = match self.render(&query_text, vars) {
            Ok(q) => q,
            Err(e) => {
                return Asked {
                    source,
                    query: query_text,
                    reading: Reading::Error(e),
                };
            }
        };
        let url = self.render(&client.url, vars);
        let target = url.and_then(|u| Target::parse(&u));
        let (shown, reading) = match target {
            Err(e) => (
                self.secrets.redact(&query),
                Reading::Error(self.secrets.redact(&e)),
            ),
            Ok(mut t) => {
                let redactor = t.redactor();
                let (shown, reading) = match client.kind {
                    Kind::Prometheus => {
                        t.url.set_path(&format!(
                            "{}/api/v1/query",
                            t.url.path().trim_end_matches('/')
                        ));
                        t.url.query_pairs_mut().append_pair("query", &query);
                        let reading =
                            match get(&t, client.timeout, self.roots.as_deref().map(Vec::as_slice))
                                .await
                            {
                                Ok((status, body)) => parse_prometheus(status, &body),
                                Err(e) => Reading::Error(e),
                            };
                        (query.clone(), reading)
                    }
                    Kind::Http => {
                        let reading =
                            match get(&t, client.timeout, self.roots.as_deref().map(Vec::as_slice))
                                .await
                            {
                                Ok((status, body)) => parse_json(status, &body, &query),
                                Err(e) => Reading::Error(e),
                            };
                        (format!("GET {} → {query}", t.url), reading)
                    }
                };
                let mask = |t: &str| self.secrets.redact(&redactor.redact(t));
                let reading = match reading {
                    Reading::Error(e) => Reading::Error(mask(&e)),
                    Reading::NoData(e) => Reading::NoData(mask(&e)),
                    v => v,
                };
                (mask(&shown), reading)
            }
        };
        Asked {
            source,
            query: shown,
            reading,
        }
    }
}

impl ExternalMetrics for ProviderSet {
    fn read<'a>(
        &'a self,
        metrics: &'a [&'a Metric],
        vars: &'a QueryVars,
    ) -> BoxFuture<'a, Vec<Asked>> {
        // All at once: one slow provider costs one timeout per measurement, not one each.
        Box::pin(futures_util::future::join_all(
            metrics.iter().map(|m| self.read_one(m, vars)),
        ))
    }
}

/// Where a request goes: the URL without credentials, and the credentials apart.
struct Target {
    /// No userinfo: safe to show.
    url: url::Url,
    /// `user:password`, percent-decoded, for basic auth.
    credentials: Option<(String, String)>,
}

impl Target {
    fn parse(text: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(text).map_err(|e| {
            // The URL may hold a password: say what is wrong without quoting it.
            format!("the provider URL is not a URL ({e})")
        })?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!url.username().is_empty() || url.password().is_some()).then(|| {
            (
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        // Clearing userinfo only fails for URLs that cannot have it (no host).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        match url.scheme() {
            "http" | "https" => Ok(Self { url, credentials }),
            other => Err(format!("{url}: `{other}` is not an http(s) URL")),
        }
    }

    /// Masks the credentials wherever a text could carry them (raw and decoded forms).
    fn redactor(&self) -> Redactor {
        let Some((user, password)) = &self.credentials else {
            return Redactor::default();
        };
        let mut values = vec![format!("{user}:{password}")];
        if !password.is_empty() {
            values.push(password.clone());
            values.push(utf8_percent(password));
        }
        Redactor::from_values(values)
    }
}

fn utf8_percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// GET a URL over HTTP/1.1 (over TLS for `https://`, verified against `roots` or the
/// system's): status and body, within `timeout`, connected within [`CONNECT_TIMEOUT`].
async fn get(
    t: &Target,
    timeout: Duration,
    roots: Option<&[CertificateDer<'static>]>,
) -> Result<(u16, Bytes), String> {
    let host = t
        .url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let https = t.url.scheme() == "https";
    let port = t
        .url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let shown = t.url.to_string();
    let connect_limit = timeout.min(CONNECT_TIMEOUT);
    let path = match t.url.query() {
        Some(q) => format!("{}?{q}", t.url.path()),
        None => t.url.path().to_owned(),
    };
    let authority = match t.url.port() {
        Some(p) => format!("{}:{p}", t.url.host_str().unwrap_or_default()),
        None => t.url.host_str().unwrap_or_default().to_owned(),
    };
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json");
    if let Some((user, password)) = &t.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.header(hyper::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {shown}: {e}"))?;
    let attempt = async {
        let tcp = match tokio::time::timeout(
            connect_limit,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
            Err(_) => return Err(format!("no connection within {connect_limit:?}")),
        };
        if https {
            let tls = tls_connect(tcp, &host, roots).await?;
            exchange(tls, req).await
        } else {
            exchange(tcp, req).await
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(|e| format!("GET {shown}: {e}")),
        Err(_) => Err(format!(
            "GET {shown}: no answer within the provider's timeout {timeout:?}"
        )),
    }
}

/// A TLS session with certificate chain and host name verified (rustls, ring).
pub(crate) async fn tls_connect(
    tcp: tokio::net::TcpStream,
    host: &str,
    roots: Option<&[CertificateDer<'static>]>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let certs = match roots {
        Some(r) => r.to_vec(),
        // SSL_CERT_FILE / SSL_CERT_DIR replace the system's roots, as for other tools.
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(
            "no trusted CA certificate to verify the provider with (install ca-certificates, or point SSL_CERT_FILE at the provider's CA)"
                .into(),
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("set up TLS: {e}"))?
    .with_root_certificates(store)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a TLS server name: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// One request on a fresh HTTP/1.1 connection over `io`.
async fn exchange<IO>(io: IO, req: hyper::Request<Empty<Bytes>>) -> Result<(u16, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// The start of an answer, for an error that must show what came back.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Read a Prometheus `/api/v1/query` answer: exactly one sample is a value.
pub fn parse_prometheus(status: u16, body: &[u8]) -> Reading {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Reading::Error(if (200..300).contains(&status) {
            format!("not a Prometheus API answer (not JSON): {}", quote(body))
        } else {
            format!("HTTP {status}: {}", quote(body))
        });
    };
    if v["status"] != "success" {
        // Prometheus explains a refused query with errorType and error (HTTP 400/422/503).
        let kind = v["errorType"].as_str().unwrap_or("error");
        return Reading::Error(match v["error"].as_str() {
            Some(e) => format!("Prometheus refused the query (HTTP {status}): {kind}: {e}"),
            None => format!(
                "HTTP {status}, not a Prometheus API answer: {}",
                quote(body)
            ),
        });
    }
    let data = &v["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => sample_value(result),
        Some("vector") => {
            let Some(series) = result.as_array() else {
                return Reading::Error(format!("a vector without a result list: {}", quote(body)));
            };
            match series.as_slice() {
                [] => Reading::NoData(
                    "the query returned no sample (an empty vector: no matching series, or no traffic yet)"
                        .into(),
                ),
                [one] => sample_value(&one["value"]),
                many => Reading::Error(format!(
                    "the query returned {} series ({}{}); a metric must be one number: aggregate them, e.g. with sum() or max()",
                    many.len(),
                    many.iter()
                        .take(3)
                        .map(|s| labels(&s["metric"]))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if many.len() > 3 { ", …" } else { "" }
                )),
            }
        }
        Some("matrix") => Reading::Error(
            "the query returned a range vector (matrix); use an instant expression, e.g. rate(x[1m]) rather than x[1m]"
                .into(),
        ),
        other => Reading::Error(format!(
            "the query returned a {}, not a number",
            other.unwrap_or("result of no type")
        )),
    }
}

/// `[ <time>, "<value>" ]` → the value; NaN and infinities are no data.
fn sample_value(sample: &serde_json::Value) -> Reading {
    let Some(text) = sample.get(1).and_then(|v| v.as_str()) else {
        return Reading::Error(format!("a sample without a value: {sample}"));
    };
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Reading::Value(x),
        Ok(_) => Reading::NoData(format!(
            "the query returned {text} (e.g. 0/0 when nothing was counted)"
        )),
        Err(_) => Reading::Error(format!("the sample value `{text}` is not a number")),
    }
}

/// `{job="api",instance="x"}`, the way Prometheus writes a series.
fn labels(metric: &serde_json::Value) -> String {
    let pairs: Vec<String> = metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!("{{{}}}", pairs.join(","))
}

/// Read the number at a JSON pointer (RFC 6901) of an answer.
pub fn parse_json(status: u16, body: &[u8], pointer: &str) -> Reading {
    if !(200..300).contains(&status) {
        return Reading::Error(format!("HTTP {status}: {}", quote(body)));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Reading::Error(format!("the answer is not JSON: {}", quote(body)));
    };
    let at = if pointer.is_empty() {
        "the answer"
    } else {
        pointer
    };
    match v.pointer(pointer) {
        None => Reading::NoData(format!("`{at}` is not in the answer")),
        Some(serde_json::Value::Null) => Reading::NoData(format!("`{at}` is null")),
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() => Reading::Value(x),
            _ => Reading::Error(format!("`{at}` is {n}, not a finite number")),
        },
        Some(serde_json::Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Reading::Value(x),
            Ok(_) => Reading::NoData(format!("`{at}` is \"{s}\"")),
            Err(_) => Reading::Error(format!("`{at}` is the string \"{s}\", not a number")),
        },
        Some(other) => Reading::Error(format!(
            "`{at}` is {} {}, not a number; point `query` at a number inside it",
            match other {
                serde_json::Value::Bool(_) => "the boolean",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            },
            quote(other.to_string().as_bytes())
        )),
    }
}

#[cfg(test)]
mod tests;
