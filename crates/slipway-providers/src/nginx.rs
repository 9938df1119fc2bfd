//! nginx as traffic router: Slipway owns one file the main config `include`s in its
//! `http` block, and changes weights and pools by rewriting it, validating the whole
//! config, and reloading.
//!
//! The file holds the `upstream NAME { ... }` block with the stable and canary servers,
//! and a small status server on the unix socket `<file>.sock` that answers
//! `GET /slipway-upstream` with the state the file describes (upstream, weight, pools).
//! A reload is asynchronous (the master starts new workers, old ones finish their
//! requests), so after `reload` the router polls that socket until it answers with the
//! new state — the observable proof that workers with the new file took over — with a
//! deadline, never a sleep. `verify_weight` reads the weight from the same socket: what
//! nginx serves, not what the file says.
//!
//! Each change: the new file is written beside the old one and renamed over it (a reader
//! never sees half a file), then `test` (default `nginx -t`) checks the whole config; if
//! it fails, the previous file is put back the same way and the error carries nginx's
//! own message; nginx is not reloaded, so traffic is unaffected. Only then `reload`
//! (default `nginx -s reload`).
//!
//! Weights: each stable server gets `(100-W)·canaries`, each canary `W·stables`, reduced,
//! so the canary pool's share is W% whatever the pool sizes. A pool at 0% is written with
//! its servers marked `down` (no request reaches them, and the upstream keeps a server);
//! an empty pool is left out.
//!
//! Nothing is kept here: the pools and weight are read back from the file (its header
//! comments) and nginx (the socket) on every call, so a `slipway` restarted after a crash
//! continues from what it finds. `canary_in_flight` is `None`: open-source nginx counts no
//! requests per upstream server (stub_status has only connection totals), so a rollback
//! behind nginx does not wait for a drain it cannot see; old workers finish their requests
//! after the reload and a canary instance is stopped gracefully (`stop_grace`). Nor does
//! it measure: canary analysis behind nginx needs a Prometheus or HTTP provider (the
//! spec's validation refuses builtin metrics with this router).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use slipway_model::analysis::Window;
use slipway_proxy::Routes;
use slipway_rollout::{BoxFuture, MetricSource, RolloutError, TrafficRouter};

/// Longest `test` or `reload` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The path the status server answers on.
pub const STATUS_PATH: &str = "/slipway-upstream";

/// What the upstream file describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamState {
    /// Percent of requests to the canary.
    pub weight: u8,
    /// Stable servers.
    pub stable: Vec<SocketAddr>,
    /// Canary servers.
    pub canary: Vec<SocketAddr>,
    /// The token of the canary whose match routes and session affinity are in force
    /// (`None`: only the weight routes). Set when a canary pool appears, cleared when a
    /// rollback begins or the canary pool empties; never set again for the same canary.
    pub routes: Option<String>,
    /// The canary servers whose routes ended (cleared by a rollback, or the pool
    /// emptied): the same canary put back in its pool (to drain it, by an undo) never
    /// gets its routes again.
    pub ended: Vec<SocketAddr>,
}

impl UpstreamState {
    /// Whether nginx serving `self` serves `other` (what the status line shows: all but
    /// the ended canary, which only the file keeps).
    pub fn serves_as(&self, other: &Self) -> bool {
        self.weight == other.weight
            && self.stable == other.stable
            && self.canary == other.canary
            && self.routes == other.routes
    }

    /// The status line the socket answers with for this state.
    pub fn status_line(&self, upstream: &str) -> String {
        let list = |v: &[SocketAddr]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        format!(
            "upstream={upstream} weight={} stable={} canary={} routes={}",
            self.weight,
            list(&self.stable),
            list(&self.canary),
            self.routes.as_deref().unwrap_or("-")
        )
    }

    /// Read a status line back.
    pub fn parse_status(line: &str) -> Option<Self> {
        let mut s = Self::default();
        let addrs = |v: &str| -> Option<Vec<SocketAddr>> {
            if v == "-" {
                return Some(Vec::new());
            }
            v.split(',').map(|a| a.parse().ok()).collect()
        };
        let mut weight = None;
        for part in line.split_whitespace() {
            let (k, v) = part.split_once('=')?;
            match k {
                "weight" => weight = v.parse().ok(),
                "stable" => s.stable = addrs(v)?,
                "canary" => s.canary = addrs(v)?,
                "routes" if v != "-" => s.routes = Some(v.to_owned()),
                _ => {}
            }
        }
        s.weight = weight?;
        Some(s)
    }
}

/// Per-server weights `(stable, canary)` for `weight`% to the canary; 0 means `down`.
pub fn server_weights(weight: u8, stables: usize, canaries: usize) -> (u64, u64) {
    let w = u64::from(weight.min(100));
    let (ns, nc) = (stables as u64, canaries as u64);
    if nc == 0 {
        return (1, 0);
    }
    if ns == 0 {
        return (0, 1);
    }
    let (s, c) = ((100 - w) * nc, w * ns);
    let g = gcd(s, c).max(1);
    (s / g, c / g)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The upstream file's text for a state, with the canary's match routes and session
/// affinity (`routes`) in force while `state.routes` holds a token and a canary serves.
pub fn render(upstream: &str, file: &Path, state: &UpstreamState, routes: &Routes) -> String {
    let (ws, wc) = server_weights(state.weight, state.stable.len(), state.canary.len());
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        "# Managed by slipway (router nginx, upstream {upstream}): rewritten on every weight\n\
         # or pool change. Edits here are overwritten.\n\
         # slipway-weight {}\n# slipway-stable {}\n# slipway-canary {}\n# slipway-routes {}\n# slipway-routes-ended {}\nupstream {upstream} {{\n",
        state.weight,
        list(&state.stable),
        list(&state.canary),
        state.routes.as_deref().unwrap_or("-"),
        list(&state.ended)
    );
    let mut servers = 0;
    for (pool, w, role) in [(&state.stable, ws, "stable"), (&state.canary, wc, "canary")] {
        for a in pool {
            servers += 1;
            if w == 0 {
                out.push_str(&format!("    server {a} down; # {role}, 0%\n"));
            } else {
                out.push_str(&format!("    server {a} weight={w}; # {role}\n"));
            }
        }
    }
    if servers == 0 {
        // nginx refuses an upstream without servers; nothing is deployed yet.
        out.push_str("    server 127.0.0.1:1 down; # no instances yet\n");
    }
    out.push_str("}\n");
    out.push_str(&render_routes(upstream, state, routes));
    out.push_str(&format!(
        "# Slipway reads the state nginx serves from here after each reload.\nserver {{\n    listen unix:{};\n    access_log off;\n    location = {STATUS_PATH} {{\n        return 200 \"{} pid=$pid\";\n    }}\n}}\n",
        status_socket(file).display(),
        state.status_line(upstream)
    ));
    out
}

/// The name nginx variables of an upstream end with: its name with every character
/// but letters, digits and `_` as `_` (`api-v2` → `api_v2`).
pub fn var_suffix(upstream: &str) -> String {
    upstream
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A literal as a PCRE pattern nginx's config parser leaves alone: letters and digits
/// as they are, every other byte as `\xHH` (no quote, `$`, `{` or space to escape).
fn literal(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// The per-pool upstreams and the `map`s that route a request: `$slipway_NAME` names
/// the upstream to `proxy_pass` to (the weighted one, or a pool a match rule or the
/// affinity cookie chose), `$slipway_route_NAME` says why (`matched`, `sticky`,
/// `weighted`: log it or pass it to your metrics to keep testers out of the verdict),
/// `$slipway_cookie_NAME` is the affinity `Set-Cookie` for a weighted response during
/// a canary (empty otherwise, so `add_header` sends nothing). Always written, so the
/// user's `proxy_pass http://$slipway_NAME;` works with or without rules.
fn render_routes(upstream: &str, state: &UpstreamState, routes: &Routes) -> String {
    let id = var_suffix(upstream);
    let (stable_up, canary_up) = pool_upstreams(upstream);
    let mut out = String::new();
    for (name, pool) in [(&stable_up, &state.stable), (&canary_up, &state.canary)] {
        out.push_str(&format!("upstream {name} {{\n"));
        for a in pool {
            out.push_str(&format!("    server {a};\n"));
        }
        if pool.is_empty() {
            out.push_str("    server 127.0.0.1:1 down; # empty pool\n");
        }
        out.push_str("}\n");
    }
    let token = state
        .routes
        .as_deref()
        .filter(|_| !state.canary.is_empty() && !routes.is_empty());
    let Some(token) = token else {
        out.push_str(&format!(
            "# No canary routes in force: the weight alone routes.\n\
             map $host $slipway_{id} {{ default {upstream}; }}\n\
             map $host $slipway_route_{id} {{ default weighted; }}\n\
             map $host $slipway_cookie_{id} {{ default \"\"; }}\n\
             add_header Set-Cookie $slipway_cookie_{id} always;\n"
        ));
        return out;
    };
    out.push_str(&format!("# Canary routes of rollout {token}.\n"));
    // Each rule is a chain of maps, one per condition, over "<previous flag><value>":
    // the flag is one character, so a value can never fake it.
    let mut flags = Vec::new();
    for (i, rule) in routes.matches.iter().enumerate() {
        let mut conditions: Vec<(String, String)> = rule
            .headers
            .iter()
            .map(|h| {
                let var = format!("$http_{}", h.name.to_ascii_lowercase().replace('-', "_"));
                let pattern = match (&h.exact, &h.prefix) {
                    (Some(v), _) => format!("{}$", literal(v)),
                    (None, Some(p)) => literal(p),
                    // Validation requires one of them; a rule nginx cannot evaluate
                    // never matches.
                    (None, None) => "(?!)".to_owned(),
                };
                (var, pattern)
            })
            .collect();
        if let Some(c) = &rule.cookie {
            conditions.push((
                "$http_cookie".to_owned(),
                format!(
                    "(?:.*;)?[[:blank:]]*{}={}[[:blank:]]*(?:;.*)?$",
                    literal(&c.name),
                    literal(&c.value)
                ),
            ));
        }
        let mut previous = "1".to_owned();
        for (j, (var, pattern)) in conditions.iter().enumerate() {
            let flag = format!("$slipway_{id}_r{i}c{j}");
            out.push_str(&format!(
                "map \"{previous}{var}\" {flag} {{ \"~^1{pattern}\" 1; default 0; }}\n"
            ));
            previous = flag;
        }
        if !conditions.is_empty() {
            flags.push(previous);
        }
    }
    out.push_str(&format!(
        "map \"0{}\" $slipway_{id}_matched {{ \"~1\" 1; default 0; }}\n",
        flags.join("")
    ));
    let mut cookie = "map $host $slipway_cookie_{id} { default \"\"; }\n".replace("{id}", &id);
    if let Some(a) = &routes.affinity {
        let name = literal(&a.cookie);
        let token_re = literal(token);
        out.push_str(&format!(
            "map $http_cookie $slipway_{id}_sticky {{\n    \"~(?:^|;)[[:blank:]]*{name}={token_re}-canary[[:blank:]]*(?:;|$)\" canary;\n    \"~(?:^|;)[[:blank:]]*{name}={token_re}-stable[[:blank:]]*(?:;|$)\" stable;\n    default \"\";\n}}\n"
        ));
        let addrs = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| literal(&a.to_string()))
                .collect::<Vec<_>>()
                .join("|")
        };
        let set = |version: &str| {
            format!(
                "{}={token}-{version}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                a.cookie, a.max_age_secs
            )
        };
        // The version a weighted request reached is known once nginx picked a server:
        // the last address in `$upstream_addr` (earlier ones failed).
        let mut lines = format!(
            "map \"$slipway_route_{id}|$upstream_addr\" $slipway_cookie_{id} {{\n    \"~^weighted[|](?:.*, )?(?:{})$\" \"{}\";\n",
            addrs(&state.canary),
            set("canary")
        );
        if !state.stable.is_empty() {
            lines.push_str(&format!(
                "    \"~^weighted[|](?:.*, )?(?:{})$\" \"{}\";\n",
                addrs(&state.stable),
                set("stable")
            ));
        }
        lines.push_str("    default \"\";\n}\n");
        cookie = lines;
    } else {
        out.push_str(&format!(
            "map $host $slipway_{id}_sticky {{ default \"\"; }}\n"
        ));
    }
    out.push_str(&format!(
        "map \"$slipway_{id}_matched$slipway_{id}_sticky\" $slipway_{id} {{\n    \"~^1\" {canary_up};\n    0canary {canary_up};\n    0stable {stable_up};\n    default {upstream};\n}}\n\
         map \"$slipway_{id}_matched$slipway_{id}_sticky\" $slipway_route_{id} {{\n    \"~^1\" matched;\n    0canary sticky;\n    0stable sticky;\n    default weighted;\n}}\n"
    ));
    out.push_str(&cookie);
    out.push_str(&format!(
        "add_header Set-Cookie $slipway_cookie_{id} always;\n"
    ));
    out
}

/// The upstreams holding only the stable and only the canary servers.
pub fn pool_upstreams(upstream: &str) -> (String, String) {
    (
        format!("{upstream}__slipway_stable"),
        format!("{upstream}__slipway_canary"),
    )
}

/// A fresh token naming one canary's routes: the affinity cookie's value carries it, so
/// a cookie from an earlier canary means nothing to this one.
pub fn routes_token() -> String {
    let t = slipway_stdx::now();
    format!("{:x}", t.as_nanosecond())
}

/// The status socket of an upstream file.
pub fn status_socket(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sock");
    PathBuf::from(s)
}

/// Read the state from an upstream file's header comments.
pub fn parse_file(text: &str) -> Option<UpstreamState> {
    let mut s = UpstreamState::default();
    let mut weight = None;
    let addrs = |v: &str| -> Option<Vec<SocketAddr>> {
        v.split_whitespace().map(|a| a.parse().ok()).collect()
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# slipway-weight") {
            weight = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("# slipway-stable") {
            s.stable = addrs(v)?;
        } else if let Some(v) = line.strip_prefix("# slipway-canary") {
            s.canary = addrs(v)?;
        } else if let Some(v) = line.strip_prefix("# slipway-routes-ended") {
            s.ended = addrs(v)?;
        } else if let Some(v) = line.strip_prefix("# slipway-routes") {
            s.routes = Some(v.trim().to_owned()).filter(|t| !t.is_empty() && t != "-");
        }
    }
    s.weight = weight?;
    Some(s)
}

/// nginx as the rollout controller's router.
#[derive(Debug, Clone)]
pub struct NginxRouter {
    file: PathBuf,
    upstream: String,
    test: String,
    reload: String,
    /// The canary's match routes and session affinity, as the plan declares them.
    routes: Routes,
    /// How long a reload may take to show.
    pub reload_timeout: Duration,
}

impl NginxRouter {
    /// Drive `upstream` through the file `file`; `test` and `reload` are shell commands
    /// (`None`: `nginx -t`, `nginx -s reload`).
    pub fn new(
        file: impl Into<PathBuf>,
        upstream: impl Into<String>,
        test: Option<String>,
        reload: Option<String>,
    ) -> Self {
        Self {
            file: file.into(),
            upstream: upstream.into(),
            test: test.unwrap_or_else(|| "nginx -t".into()),
            reload: reload.unwrap_or_else(|| "nginx -s reload".into()),
            routes: Routes::default(),
            reload_timeout: Duration::from_secs(15),
        }
    }

    /// Give the canary these match routes and this session affinity (none by default).
    #[must_use]
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// The upstream file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The state the upstream file describes (`None`: no file, or not one of ours).
    pub fn file_state(&self) -> Option<UpstreamState> {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|t| parse_file(&t))
    }

    /// Write the file for a state without testing or reloading: for a first file that
    /// nginx's main config can `include` before nginx starts.
    pub fn write_initial(&self, state: &UpstreamState) -> Result<(), String> {
        write_atomic(
            &self.file,
            render(&self.upstream, &self.file, state, &self.routes).as_bytes(),
        )
    }

    /// The state nginx serves now, from the status socket.
    pub async fn served(&self) -> Result<UpstreamState, String> {
        self.served_by().await.map(|(s, _)| s)
    }

    /// The state nginx serves now and the pid of the worker that answered.
    async fn served_by(&self) -> Result<(UpstreamState, Option<u32>), String> {
        let sock = status_socket(&self.file);
        let line = status_line(&self.file).await?;
        let pid = status_pid(&line);
        UpstreamState::parse_status(&line)
            .map(|s| (s, pid))
            .ok_or_else(|| {
                format!(
                    "nginx's status socket {} answered `{line}`, not a Slipway upstream state",
                    sock.display()
                )
            })
    }

    /// Rewrite, test, reload, and wait until nginx serves `next`.
    pub async fn apply(&self, next: &UpstreamState) -> Result<(), RolloutError> {
        let text = render(&self.upstream, &self.file, next, &self.routes);
        if std::fs::read(&self.file).ok().as_deref() == Some(text.as_bytes())
            && self.served().await.is_ok_and(|s| s.serves_as(next))
        {
            return Ok(());
        }
        let upstream = &self.upstream;
        install(
            &Install {
                file: &self.file,
                test: &self.test,
                reload: &self.reload,
                timeout: self.reload_timeout,
            },
            &text,
            |line| UpstreamState::parse_status(line).is_some_and(|s| s.serves_as(next)),
            || format!("`{}`", next.status_line(upstream)),
        )
        .await
        .map(|_| ())
        .map_err(RolloutError::Router)
    }

    fn current(&self) -> UpstreamState {
        self.file_state().unwrap_or_default()
    }
}

/// Where and how an upstream file is installed.
pub(crate) struct Install<'a> {
    /// The upstream file.
    pub file: &'a Path,
    /// The config check (`nginx -t`).
    pub test: &'a str,
    /// The reload (`nginx -s reload`).
    pub reload: &'a str,
    /// How long the reload may take to show.
    pub timeout: Duration,
}

/// Install `text` as the upstream file: written atomically, the whole config checked by
/// `test` (on failure the previous file is put back and nginx is not reloaded), `reload`,
/// then wait until the status socket answers with a line `expect` accepts from a worker
/// of a generation none of whose accepting workers existed before (no request can meet
/// the old file after this returns). Returns the pid of the worker that answered.
/// `describe` names the expected state for the error at the deadline.
pub(crate) async fn install(
    at: &Install<'_>,
    text: &str,
    expect: impl Fn(&str) -> bool,
    describe: impl Fn() -> String,
) -> Result<u32, String> {
    let file = at.file;
    let previous = std::fs::read(file).ok();
    // The workers serving now: after the reload none of them may still accept, or a
    // request could meet the old upstream after we report the change done.
    let old_workers = match status_line(file).await.ok().as_deref().and_then(status_pid) {
        Some(pid) => active_workers(pid),
        None => Vec::new(),
    };
    write_atomic(file, text.as_bytes())?;
    let restore = || match &previous {
        Some(bytes) => write_atomic(file, bytes),
        None => std::fs::remove_file(file)
            .map_err(|e| format!("failed to remove {}: {e}", file.display())),
    };
    if let Err(e) = run(at.test).await {
        let restored = match restore() {
            Ok(()) => "the previous upstream file was restored".to_owned(),
            Err(r) => format!("restoring the previous upstream file failed too: {r}"),
        };
        return Err(format!(
            "`{}` refused the config with the new {} ({restored}; nginx was not reloaded, traffic is unchanged): {e}",
            at.test,
            file.display()
        ));
    }
    if let Err(e) = run(at.reload).await {
        let restored = match restore() {
            Ok(()) => "the previous upstream file was restored",
            Err(_) => "the previous upstream file could not be restored",
        };
        return Err(format!("`{}` failed ({restored}): {e}", at.reload));
    }
    let deadline = Instant::now() + at.timeout;
    loop {
        let served = status_line(file).await;
        if let Ok(line) = &served
            && expect(line)
            && let Some(pid) = status_pid(line)
            && active_workers(pid).iter().all(|w| !old_workers.contains(w))
        {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nginx did not serve the new {} ({}) within {:?} after `{}`: {}; see nginx's error log",
                file.display(),
                describe(),
                at.timeout,
                at.reload,
                match served {
                    Ok(s) => format!("it still answers `{s}`"),
                    Err(e) => e,
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The line nginx's status server for an upstream file answers with (the file's
/// `<file>.sock`, [`STATUS_PATH`]): proof of which config the answering worker serves.
pub(crate) async fn status_line(file: &Path) -> Result<String, String> {
    let sock = status_socket(file);
    let attempt = async {
        let stream = tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(STATUS_PATH)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>(String::from_utf8_lossy(&body).trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r)
        .map_err(|e| {
            format!(
                "nginx's status socket {} did not answer: {e} (is nginx running with {} included in its `http` block?)",
                sock.display(),
                file.display()
            )
        })
}

/// The pid of the worker that answered a status line (`pid=N`).
pub(crate) fn status_pid(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|p| p.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

/// The worker processes of the nginx master that `worker` belongs to which are still
/// finishing requests after a reload ("shutting down"), from /proc. Empty when /proc
/// cannot tell (nginx in another pid namespace).
pub(crate) fn shutting_down_workers(worker: u32) -> Vec<u32> {
    siblings(worker)
        .into_iter()
        .filter(|(_, t)| t.contains("worker process") && t.contains("shutting down"))
        .map(|(p, _)| p)
        .collect()
}

/// The children of `worker`'s parent (the nginx master) with their command lines.
fn siblings(worker: u32) -> Vec<(u32, String)> {
    let ppid = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 4, after the parenthesised command name (which may hold spaces).
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let Some(master) = ppid(worker) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ppid(*pid) == Some(master))
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&c).into_owned()))
        })
        .collect()
}

/// The worker processes of the nginx master that `worker` belongs to which still accept
/// requests (not "shutting down"), from /proc. Empty when /proc cannot tell (nginx in
/// another pid namespace): the status socket alone then confirms the reload.
fn active_workers(worker: u32) -> Vec<u32> {
    siblings(worker)
        .into_iter()
        .filter(|(_, t)| t.contains("worker process") && !t.contains("shutting down"))
        .map(|(p, _)| p)
        .collect()
}

/// Write `bytes` to a temporary file beside `path`, sync it, and rename it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.slipway-tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("failed to write {}: {e}", path.display()))
}

/// Run a shell command; `Err` carries its exit status and output.
pub(crate) async fn run(cmd: &str) -> Result<(), String> {
    let child = slipway_stdx::tokio_command("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child)
        .await
        .map_err(|_| format!("`{cmd}` did not finish within {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("failed to run `{cmd}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        text = format!("{text}\n{}", stdout.trim());
    }
    Err(format!("`{cmd}` exited with {}: {text}", out.status))
}

impl TrafficRouter for NginxRouter {
    fn set_pools<'a>(
        &'a self,
        stable: &'a [SocketAddr],
        canary: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            let mut next = self.current();
            // Routes start with a canary pool and end with it; in between only
            // `clear_routes` changes them, so once a rollback cleared them no later pool
            // or weight change can put them back.
            if canary.is_empty() {
                if !next.canary.is_empty() {
                    next.ended = std::mem::take(&mut next.canary);
                }
                next.routes = None;
            } else if next.canary.is_empty()
                && next.routes.is_none()
                && !self.routes.is_empty()
                && !canary.iter().any(|a| next.ended.contains(a))
            {
                next.routes = Some(routes_token());
            }
            next.stable = stable.to_vec();
            next.canary = canary.to_vec();
            self.apply(&next).await
        })
    }

    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            let mut next = self.current();
            next.weight = weight.min(100);
            self.apply(&next).await
        })
    }

    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        Box::pin(async move {
            let s = self.served().await.ok()?;
            // The share nginx actually gives the canary: its weight needs servers on both
            // sides; an empty pool leaves everything to the other.
            Some(match (s.stable.is_empty(), s.canary.is_empty()) {
                (_, true) => 0,
                (true, false) => 100,
                _ => s.weight,
            })
        })
    }

    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { None })
    }

    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            let mut next = self.current();
            if next.routes.is_none() {
                return Ok(());
            }
            next.routes = None;
            next.ended = next.canary.clone();
            self.apply(&next).await
        })
    }
}

impl MetricSource for NginxRouter {
    /// nginx measures nothing per upstream server; analysis behind it uses external
    /// providers, and this window is empty.
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        Box::pin(async { Ok(Window::default()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_and_the_status_line_read_back() {
        let s = UpstreamState {
            weight: 10,
            stable: vec!["127.0.0.1:8001".parse().unwrap()],
            canary: vec![
                "127.0.0.1:8002".parse().unwrap(),
                "127.0.0.1:8003".parse().unwrap(),
            ],
            routes: Some("abc1".into()),
            ended: vec!["127.0.0.1:8004".parse().unwrap()],
        };
        let text = render("app", Path::new("/tmp/up.conf"), &s, &Routes::default());
        assert!(text.contains("server 127.0.0.1:8001 weight=18;"), "{text}");
        assert!(text.contains("server 127.0.0.1:8002 weight=1;"), "{text}");
        assert!(text.contains("listen unix:/tmp/up.conf.sock;"), "{text}");
        assert!(
            text.contains("canary=127.0.0.1:8002,127.0.0.1:8003 routes=abc1 pid=$pid"),
            "{text}"
        );
        assert_eq!(parse_file(&text), Some(s.clone()));
        // The status line shows what nginx serves; the ended canary only the file keeps.
        let served = UpstreamState::parse_status(&s.status_line("app")).unwrap();
        assert!(
            served.serves_as(&s) && served.ended.is_empty(),
            "{served:?}"
        );
        let empty = UpstreamState::default();
        let text = render("app", Path::new("/tmp/up.conf"), &empty, &Routes::default());
        assert!(text.contains("server 127.0.0.1:1 down;"), "{text}");
        assert_eq!(parse_file(&text), Some(empty.clone()));
        assert_eq!(
            UpstreamState::parse_status(&empty.status_line("app")),
            Some(empty)
        );
        assert_eq!(server_weights(0, 1, 1), (1, 0));
        assert_eq!(server_weights(100, 2, 1), (0, 1));
        assert_eq!(server_weights(50, 2, 1), (1, 2));
    }
}
