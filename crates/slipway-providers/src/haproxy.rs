//! HAProxy as traffic router and metric source, over its runtime API on the admin unix
//! socket (`stats socket PATH mode 600 level admin`), spoken directly (no socat).
//!
//! The backend must hold *server slots* Slipway fills, named by two prefixes (default
//! `stable` and `canary`), e.g.
//!
//! ```text
//! backend app
//!     balance roundrobin
//!     server-template stable 4 127.0.0.1:1 disabled
//!     server-template canary 4 127.0.0.1:1 disabled
//! ```
//!
//! A pool's instances go into its first slots (`set server B/S addr IP port P`, then
//! `state ready`); unused slots are put in `maint`. The canary weight W% is spread over
//! the servers in use with *absolute* weights (`set weight B/S N`, never `N%`, which is
//! relative to the configured weight): each stable server gets `(100-W)·canaries` and each
//! canary `W·stables`, reduced, so the canary pool's share is exactly W%. A pool at 0% has
//! weight 0 on every server: HAProxy sends it no new request, in-flight ones complete.
//!
//! Nothing is kept here: the pools and the weight in force are read back from
//! `show servers state BACKEND` on every call, so a `slipway` restarted after a crash
//! drives the same HAProxy from what it finds. The one thing held in memory is the
//! previous `show stat` counters, for the difference a metric window is; a new router's
//! first window is discarded by the controller anyway.
//!
//! What the router last set (pools and weight) is remembered only to hold HAProxy to
//! it: a reload forgets everything the runtime API was told (addresses, weights,
//! `state ready`, the dynamic-cookie key, map entries), so at each analysis interval
//! ([`TrafficRouter::reconcile`]) the router reads HAProxy back and sets again what
//! differs — the pools and weight, dynamic cookies with the same key (the same cookies:
//! pinned users stay pinned), the routes — and the controller journals what was lost.
//!
//! Session affinity (`strategy.canary.session_affinity`) is HAProxy's own cookie
//! persistence with *dynamic* server cookies: the backend declares the cookie once
//! (`cookie NAME insert indirect nocache ...`, no `dynamic`, so HAProxy starts with no
//! server pinned), and while a canary serves with a weight above 0 Slipway sets the
//! backend's `dynamic-cookie-key` to the plan's token and enables dynamic cookies; each
//! server's cookie is then a hash of that key and its address, so a user pinned by one
//! canary means nothing to the next (a new key), and the same plan resumed keeps its
//! users (the same key, the same cookies). HAProxy still sends persistent requests to a
//! server of weight 0, so whenever the weight goes to 0 (a rollback, a promotion) the
//! dynamic cookies are disabled *in the same socket write* as the weights: from then on
//! no request is pinned anywhere, and a rolled-back canary draining at weight 0 gets no
//! user back. No memory is needed: nothing pins at weight 0, and only a canary pool at
//! a weight above 0 pins again.
//!
//! Metrics: per-server `hrsp_*` counters give requests and 5xx per pool (`error-rate`,
//! `request-rate`); HAProxy keeps no latency distribution per server, so latency metrics
//! need another provider (the spec's validation says so). `canary_in_flight` is the sum of
//! the canary slots' current sessions (`scur`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slipway_model::analysis::{VersionWindow, Window};
use slipway_proxy::matching::{Affinity, MatchRule};
use slipway_rollout::{BoxFuture, MetricSource, RolloutError, TrafficRouter};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest a runtime API command may take (it answers from memory).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Admin-state bits that take a server out of service (forced, inherited, resolution and
/// hostname maintenance). `0x04`, "configured disabled", stays set after `state ready`.
const MAINT_MASK: u32 = 0x01 | 0x02 | 0x20 | 0x40;

/// The routes map's key recording the canary whose routes ended: a pattern no request
/// matches.
const ENDED_KEY: &str = "(?!)slipway-ended";

/// `ip:port` of the slots in use.
fn in_use_addrs(slots: &[Slot]) -> Vec<String> {
    slots
        .iter()
        .filter(|s| s.in_use())
        .map(|s| format!("{}:{}", s.addr, s.port))
        .collect()
}

/// HAProxy's largest server weight.
const MAX_WEIGHT: u64 = 256;

/// One server slot as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Server name, e.g. `canary1`.
    pub name: String,
    /// Address it points at.
    pub addr: String,
    /// Port.
    pub port: u16,
    /// `srv_admin_state` bits.
    pub admin_state: u32,
    /// Current (user) weight.
    pub weight: u64,
}

impl Slot {
    /// Whether the slot takes part in load balancing (not in maintenance).
    pub fn in_use(&self) -> bool {
        self.admin_state & MAINT_MASK == 0
    }
}

/// The slots of a backend, by pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    /// Stable slots in slot order.
    pub stable: Vec<Slot>,
    /// Canary slots in slot order.
    pub canary: Vec<Slot>,
}

impl Slots {
    /// The canary's share of the weight of the servers in use, in percent; `None` when no
    /// server is in use or all weights are 0.
    pub fn weight(&self) -> Option<u8> {
        let sum = |v: &[Slot]| -> u64 {
            v.iter()
                .filter(|s| s.in_use())
                .map(|s| s.weight)
                .sum::<u64>()
        };
        let (s, c) = (sum(&self.stable), sum(&self.canary));
        if s + c == 0 {
            return None;
        }
        u8::try_from((c * 100 + (s + c) / 2) / (s + c)).ok()
    }
}

/// Per-server weights `(stable, canary)` that give the canary pool `weight`% of new
/// requests with `stables` and `canaries` servers in use.
pub fn server_weights(weight: u8, stables: usize, canaries: usize) -> (u64, u64) {
    let w = u64::from(weight.min(100));
    let (ns, nc) = (stables as u64, canaries as u64);
    if nc == 0 {
        return (1, 0);
    }
    if ns == 0 {
        return (0, 1);
    }
    let (mut s, mut c) = ((100 - w) * nc, w * ns);
    let g = gcd(s, c).max(1);
    s /= g;
    c /= g;
    let top = s.max(c);
    if top > MAX_WEIGHT {
        // Scale into HAProxy's range; a non-zero weight stays non-zero.
        let scale = |x: u64| {
            if x == 0 {
                0
            } else {
                ((x * MAX_WEIGHT + top / 2) / top).max(1)
            }
        };
        (s, c) = (scale(s), scale(c));
    }
    (s, c)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One server's counters as `show stat` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStat {
    /// HTTP responses of every class (`hrsp_*`), since HAProxy started.
    pub requests: u64,
    /// 5xx responses (`hrsp_5xx`).
    pub errors: u64,
    /// Current sessions (`scur`).
    pub sessions: u64,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, `no check`, ….
    pub status: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    errors: u64,
}

/// The `show stat` columns of HTTP responses by class: their sum is a server's requests.
const RESPONSE_COLUMNS: [&str; 6] = [
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
];

/// The rows of one backend in HAProxy's `show stat` CSV (its servers, `BACKEND`), each
/// field read by column name: the columns move between HAProxy versions.
struct Stat<'a> {
    header: Vec<&'a str>,
    rows: Vec<Vec<&'a str>>,
}

impl<'a> Stat<'a> {
    /// `out` as `show stat` answers (`# pxname,svname,...` then a row a line), the rows
    /// of `backend` kept.
    fn parse(out: &'a str, backend: &str) -> Result<Self, String> {
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .map(|h| h.split(',').collect())
            .ok_or_else(|| format!("HAProxy answered `show stat` with: {}", out.trim()))?;
        let px = header.iter().position(|h| *h == "pxname");
        let rows = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| px.and_then(|i| f.get(i)) == Some(&backend))
            .collect();
        Ok(Self { header, rows })
    }

    /// Each row: a field by column name ("" where the column or the field is missing).
    fn rows(&self) -> impl Iterator<Item = StatRow<'_>> {
        self.rows.iter().map(|fields| StatRow {
            header: &self.header,
            fields,
        })
    }
}

/// One row of a [`Stat`].
struct StatRow<'s> {
    header: &'s [&'s str],
    fields: &'s [&'s str],
}

impl StatRow<'_> {
    fn get(&self, column: &str) -> &str {
        self.header
            .iter()
            .position(|h| *h == column)
            .and_then(|i| self.fields.get(i))
            .copied()
            .unwrap_or("")
    }

    /// A counter (0 where HAProxy leaves it empty).
    fn num(&self, column: &str) -> u64 {
        self.get(column).parse().unwrap_or(0)
    }

    /// Responses of every class: the requests the server answered.
    fn requests(&self) -> u64 {
        RESPONSE_COLUMNS.iter().map(|c| self.num(c)).sum()
    }
}

/// HAProxy's runtime API as the rollout controller's router and metric source.
pub struct HaproxyRouter {
    socket: PathBuf,
    backend: String,
    stable_prefix: String,
    canary_prefix: String,
    /// The canary's match rules and the map file they go into.
    routes: Option<(Vec<MatchRule>, PathBuf)>,
    /// Session affinity by HAProxy's dynamic cookies (the backend's `cookie` line).
    affinity: Option<Affinity>,
    last: Mutex<Option<(Instant, Counts, Counts, Counts)>>,
    /// The pools and weight this router last set, to set again when HAProxy lost them.
    desired: Mutex<Option<Desired>>,
}

/// What a router set: the pools (in slot order) and the canary's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desired {
    stable: Vec<std::net::SocketAddr>,
    canary: Vec<std::net::SocketAddr>,
    weight: u8,
}

/// What HAProxy lost of what a router set.
#[derive(Debug, Default)]
struct Lost {
    /// The servers in service are not the pools (everything else goes with them).
    pools: bool,
    /// The routes map lost the canary's rules.
    routes: bool,
    /// Each loss, in words.
    what: Vec<String>,
}

/// `ip:port` of each address, sorted (to compare with [`in_use_addrs`]).
fn addr_list(addrs: &[std::net::SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs
        .iter()
        .map(|a| format!("{}:{}", a.ip(), a.port()))
        .collect();
    v.sort();
    v
}

impl HaproxyRouter {
    /// Drive `backend` through the admin socket at `socket`, with slots named by the
    /// given prefixes (`stable`, `canary` by default in the spec).
    pub fn new(
        socket: impl Into<PathBuf>,
        backend: impl Into<String>,
        stable_prefix: impl Into<String>,
        canary_prefix: impl Into<String>,
    ) -> Self {
        Self {
            socket: socket.into(),
            backend: backend.into(),
            stable_prefix: stable_prefix.into(),
            canary_prefix: canary_prefix.into(),
            routes: None,
            affinity: None,
            last: Mutex::new(None),
            desired: Mutex::new(None),
        }
    }

    /// What this router last set (a poisoned lock still holds plain data).
    fn desired(&self) -> std::sync::MutexGuard<'_, Option<Desired>> {
        self.desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether HAProxy lost the affinity of a canary serving above 0: dynamic cookies on
    /// give every canary server in use a cookie (`show stat`), a reload forgets the key
    /// and leaves them without one.
    async fn affinity_lost(&self, slots: &Slots) -> Result<bool, String> {
        let out = self.command("show stat").await?;
        let canary: Vec<&str> = slots
            .canary
            .iter()
            .filter(|s| s.in_use())
            .map(|s| s.name.as_str())
            .collect();
        Ok(Stat::parse(&out, &self.backend)?
            .rows()
            .any(|r| canary.contains(&r.get("svname")) && r.get("cookie").is_empty()))
    }

    /// What HAProxy lost of `want`.
    async fn lost(&self, want: &Desired, slots: &Slots) -> Result<Lost, String> {
        let mut lost = Lost::default();
        let have_s = {
            let mut v = in_use_addrs(&slots.stable);
            v.sort();
            v
        };
        let have_c = {
            let mut v = in_use_addrs(&slots.canary);
            v.sort();
            v
        };
        if have_s != addr_list(&want.stable) || have_c != addr_list(&want.canary) {
            lost.pools = true;
            lost.what.push(format!(
                "the pools ({} stable and {} canary server(s) in service instead of {} and {})",
                have_s.len(),
                have_c.len(),
                want.stable.len(),
                want.canary.len()
            ));
            // Everything else goes back with the pools.
            return Ok(lost);
        }
        let (ws, wc) = server_weights(want.weight, have_s.len(), have_c.len());
        let off = |v: &[Slot], w: u64| v.iter().filter(|s| s.in_use()).any(|s| s.weight != w);
        if off(&slots.stable, ws) || off(&slots.canary, wc) {
            lost.what.push(format!(
                "the weights (the canary at {}% instead of {}%)",
                slots.weight().unwrap_or(0),
                want.weight
            ));
        }
        let canary_serves = !want.canary.is_empty() && want.weight > 0;
        if self.affinity.is_some() && canary_serves && self.affinity_lost(slots).await? {
            lost.what
                .push("the session affinity (dynamic cookies off or without their key)".into());
        }
        if let Some((_, map)) = &self.routes
            && !want.canary.is_empty()
            && !self.routes_in_force().await?
            && !self
                .ended_canary(map)
                .await?
                .iter()
                .any(|a| have_c.contains(a))
        {
            lost.routes = true;
            lost.what
                .push(format!("the match routes (map {} empty)", map.display()));
        }
        Ok(lost)
    }

    /// Give the canary these match rules through the map file `map` (which the backend
    /// reads with `req.hdrs,map_reg(MAP)`); no rules, no map.
    #[must_use]
    pub fn with_routes(mut self, rules: Vec<MatchRule>, map: impl Into<PathBuf>) -> Self {
        self.routes = (!rules.is_empty()).then(|| (rules, map.into()));
        self
    }

    /// Give the canary session affinity by HAProxy's dynamic server cookies (the
    /// backend's `cookie` line names `affinity.cookie`; the key is `affinity.token`).
    #[must_use]
    pub fn with_affinity(mut self, affinity: Option<Affinity>) -> Self {
        self.affinity = affinity;
        self
    }

    /// The backend line that declares the affinity cookie (for messages and docs).
    pub fn affinity_snippet(affinity: &Affinity) -> String {
        format!(
            "cookie {} insert indirect nocache httponly attr \"SameSite=Lax\" attr \"Max-Age={}\"",
            affinity.cookie, affinity.max_age_secs
        )
    }

    /// The commands that turn affinity on (a canary serves at a weight above 0) or off;
    /// none without affinity.
    fn affinity_commands(&self, on: bool) -> Result<Vec<String>, RolloutError> {
        let Some(a) = &self.affinity else {
            return Ok(Vec::new());
        };
        let b = &self.backend;
        if !on {
            return Ok(vec![format!("disable dynamic-cookie backend {b}")]);
        }
        // The key goes on the runtime API's command line: a plan digest is hex.
        if a.token.is_empty() || !a.token.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(RolloutError::Router(format!(
                "the session affinity token `{}` is not letters and digits (it is the plan digest's start; re-plan the release)",
                a.token
            )));
        }
        Ok(vec![
            format!("set dynamic-cookie-key backend {b} {}", a.token),
            format!("enable dynamic-cookie backend {b}"),
        ])
    }

    /// Check the backend declares the affinity cookie the spec names (`show stat` gives
    /// a backend's cookie name), before any canary gets a user.
    async fn check_affinity_cookie(&self) -> Result<(), RolloutError> {
        let Some(a) = &self.affinity else {
            return Ok(());
        };
        let out = self
            .command("show stat")
            .await
            .map_err(RolloutError::Router)?;
        let cookie = Stat::parse(&out, &self.backend)
            .map_err(RolloutError::Router)?
            .rows()
            .find_map(|r| (r.get("svname") == "BACKEND").then(|| r.get("cookie").to_owned()));
        let has = match cookie.as_deref() {
            Some(c) if c == a.cookie => return Ok(()),
            Some("") | None => "declares no cookie".to_owned(),
            Some(c) => format!("declares cookie `{c}`"),
        };
        Err(RolloutError::Router(format!(
            "HAProxy backend `{b}` ({s}) {has}, and `strategy.canary.session_affinity.cookie` asks for `{name}`: HAProxy pins users by its own cookie persistence; add to `backend {b}`:\n  {line}\nthen reload HAProxy (Slipway enables dynamic cookies while a canary serves; docs/rollout.md), or remove `session_affinity:`",
            b = self.backend,
            s = self.socket.display(),
            name = a.cookie,
            line = Self::affinity_snippet(a),
        )))
    }

    /// The backend lines that apply the match routes of `map` (for messages and docs).
    pub fn routes_snippet(&self, map: &Path) -> String {
        format!(
            "stick-table type integer size 1 store http_req_cnt,http_fail_cnt\n  \
             http-request set-var(txn.slipway) req.hdrs,map_reg({m})\n  \
             http-request track-sc0 int(0) if {{ var(txn.slipway) -m str matched }}\n  \
             use-server {c}1 if {{ var(txn.slipway) -m str matched }} {{ srv_is_up({b}/{c}1) }}\n  \
             (one `use-server` line per `{c}` slot)",
            m = map.display(),
            b = self.backend,
            c = self.canary_prefix
        )
    }

    /// Whether the canary's match routes are in force (the map holds entries).
    pub async fn routes_in_force(&self) -> Result<bool, String> {
        let Some((_, map)) = &self.routes else {
            return Ok(false);
        };
        let out = self.command(&format!("show map {}", map.display())).await?;
        if out.contains("Unknown map identifier") || out.contains("unknown map") {
            return Err(self.map_unknown(map));
        }
        Ok(out.lines().any(|l| l.contains(" matched")))
    }

    fn map_unknown(&self, map: &Path) -> String {
        format!(
            "HAProxy at {} does not read the routes map {}: create the file (empty) and add to `backend {}`:\n  {}\nthen reload HAProxy",
            self.socket.display(),
            map.display(),
            self.backend,
            self.routes_snippet(map)
        )
    }

    /// Fill the routes map with the canary's rules (a canary pool appeared).
    async fn install_routes(&self) -> Result<(), RolloutError> {
        let Some((rules, map)) = &self.routes else {
            return Ok(());
        };
        self.clear_map(map).await?;
        for rule in rules {
            let out = self
                .command(&format!(
                    "add map {} {} matched",
                    map.display(),
                    rule_pattern(rule)
                ))
                .await
                .map_err(RolloutError::Router)?;
            if !out.trim().is_empty() {
                return Err(RolloutError::Router(format!(
                    "HAProxy refused a match route in {}: {}",
                    map.display(),
                    out.trim()
                )));
            }
        }
        Ok(())
    }

    /// Empty the map but for a record of the canary whose routes ended (`ENDED_KEY`, a
    /// pattern that matches no request): the same canary put back in its pool (to drain
    /// it, by an undo) never gets its routes again.
    async fn end_routes(&self, map: &Path, canary: &[String]) -> Result<(), RolloutError> {
        self.clear_map(map).await?;
        if canary.is_empty() {
            return Ok(());
        }
        let out = self
            .command(&format!(
                "add map {} {ENDED_KEY} {}",
                map.display(),
                canary.join(",")
            ))
            .await
            .map_err(RolloutError::Router)?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(RolloutError::Router(format!(
                "HAProxy refused to record the ended canary in {}: {}",
                map.display(),
                out.trim()
            )))
        }
    }

    /// The canary servers (`ip:port`) whose routes ended, from the map.
    async fn ended_canary(&self, map: &Path) -> Result<Vec<String>, String> {
        let out = self.command(&format!("show map {}", map.display())).await?;
        if out.contains("Unknown map identifier") || out.contains("unknown map") {
            return Err(self.map_unknown(map));
        }
        Ok(out
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace().skip(1);
                (f.next() == Some(ENDED_KEY)).then(|| f.next().unwrap_or("").to_owned())
            })
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default())
    }

    async fn clear_map(&self, map: &Path) -> Result<(), RolloutError> {
        let out = self
            .command(&format!("clear map {}", map.display()))
            .await
            .map_err(RolloutError::Router)?;
        let t = out.trim();
        if t.is_empty() {
            Ok(())
        } else if t.contains("Unknown map identifier") || t.contains("unknown map") {
            Err(RolloutError::Router(self.map_unknown(map)))
        } else {
            Err(RolloutError::Router(format!(
                "HAProxy refused `clear map {}`: {t}",
                map.display()
            )))
        }
    }

    /// Matched requests and their failures so far (the backend's stick table, which
    /// counts only what the routes map sent to the canary); zero without routes.
    async fn matched_counts(&self) -> Result<Counts, String> {
        if self.routes.is_none() {
            return Ok(Counts::default());
        }
        let out = self
            .command(&format!("show table {}", self.backend))
            .await?;
        if !out.starts_with("# table:") {
            return Err(format!(
                "HAProxy backend `{}` has no stick table counting matched requests ({}); add `stick-table type integer size 1 store http_req_cnt,http_fail_cnt` and `http-request track-sc0 int(0) if {{ var(txn.slipway) -m str matched }}` to it",
                self.backend,
                out.trim()
            ));
        }
        let field = |name: &str| -> u64 {
            out.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Counts {
            requests: field("http_req_cnt"),
            errors: field("http_fail_cnt"),
        })
    }

    /// The admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The backend.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Send one runtime API command and return HAProxy's answer.
    pub async fn command(&self, cmd: &str) -> Result<String, String> {
        let attempt = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            // Without `prompt`, HAProxy answers one line of commands and closes.
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok::<_, String>(out)
        };
        match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(format!(
                "HAProxy runtime API `{cmd}` on {} failed: {e} (is HAProxy running with `stats socket {} mode 600 level admin`?)",
                self.socket.display(),
                self.socket.display()
            )),
            Err(_) => Err(format!(
                "HAProxy runtime API `{cmd}` on {} timed out after {CALL_TIMEOUT:?}",
                self.socket.display()
            )),
        }
    }

    /// A command that answers nothing (or only a confirmation) when it worked.
    async fn change(&self, cmd: &str) -> Result<(), RolloutError> {
        self.changes(&[cmd.to_owned()]).await
    }

    /// Commands sent in one write (`a; b; c`), which HAProxy runs one after the other
    /// before it reads anything else from the socket: what must change together does.
    /// Each answers nothing (or a confirmation) when it worked.
    async fn changes(&self, cmds: &[String]) -> Result<(), RolloutError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let line = cmds.join("; ");
        let out = self.command(&line).await.map_err(RolloutError::Router)?;
        let refused: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|t| {
                !(t.is_empty() || t.contains("changed from") || t.starts_with("no need to change"))
            })
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(RolloutError::Router(format!(
                "HAProxy refused `{line}` on {}: {}",
                self.socket.display(),
                refused.join("; ")
            )))
        }
    }

    /// Every server of the backend as `show servers state` reports it, in HAProxy's
    /// order (one server per host in front of an ssh fleet).
    pub async fn servers(&self) -> Result<Vec<Slot>, String> {
        let out = self
            .command(&format!("show servers state {}", self.backend))
            .await?;
        let mut header: Vec<&str> = Vec::new();
        let mut servers = Vec::new();
        for line in out.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                header = h.split_whitespace().collect();
                continue;
            }
            if header.is_empty() {
                if line.contains("Can't find backend") || line.contains("No such backend") {
                    return Err(format!(
                        "HAProxy at {} has no backend `{}`; add a `backend {}` section with server slots (`server-template {} 4 127.0.0.1:1 disabled` and `server-template {} 4 127.0.0.1:1 disabled`), or fix `router.haproxy.backend`",
                        self.socket.display(),
                        self.backend,
                        self.backend,
                        self.stable_prefix,
                        self.canary_prefix
                    ));
                }
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < header.len() {
                continue;
            }
            let get = |name: &str| {
                header
                    .iter()
                    .position(|h| *h == name)
                    .and_then(|i| fields.get(i).copied())
                    .unwrap_or("")
            };
            if get("be_name") != self.backend {
                continue;
            }
            servers.push(Slot {
                name: get("srv_name").to_owned(),
                addr: get("srv_addr").to_owned(),
                port: get("srv_port").parse().unwrap_or(0),
                admin_state: get("srv_admin_state").parse().unwrap_or(0),
                weight: get("srv_uweight").parse().unwrap_or(0),
            });
        }
        if header.is_empty() {
            return Err(format!(
                "HAProxy at {} answered `show servers state {}` with: {}",
                self.socket.display(),
                self.backend,
                out.trim()
            ));
        }
        Ok(servers)
    }

    /// The backend's slots, read back from HAProxy.
    pub async fn slots(&self) -> Result<Slots, String> {
        let mut slots = Slots::default();
        for slot in self.servers().await? {
            if slot.name.starts_with(&self.canary_prefix) {
                slots.canary.push(slot);
            } else if slot.name.starts_with(&self.stable_prefix) {
                slots.stable.push(slot);
            }
        }
        // `stable10` after `stable9`: order by the number the template appended.
        let key = |s: &Slot, p: &str| {
            let n: u64 = s.name[p.len()..].parse().unwrap_or(u64::MAX);
            (n, s.name.clone())
        };
        slots.stable.sort_by_key(|s| key(s, &self.stable_prefix));
        slots.canary.sort_by_key(|s| key(s, &self.canary_prefix));
        Ok(slots)
    }

    /// Per-server counters of the backend from `show stat`, by server name.
    pub async fn server_stats(&self) -> Result<BTreeMap<String, ServerStat>, String> {
        let out = self.command("show stat").await?;
        let mut stats = BTreeMap::new();
        for r in Stat::parse(&out, &self.backend)?.rows() {
            let name = r.get("svname");
            if name == "BACKEND" || name == "FRONTEND" {
                continue;
            }
            stats.insert(
                name.to_owned(),
                ServerStat {
                    requests: r.requests(),
                    errors: r.num("hrsp_5xx"),
                    sessions: r.num("scur"),
                    status: r.get("status").to_owned(),
                },
            );
        }
        Ok(stats)
    }

    fn missing_slots(&self, pool: &str, prefix: &str, have: usize, need: usize) -> RolloutError {
        RolloutError::Router(format!(
            "HAProxy backend `{}` has {have} `{prefix}*` server slot(s) but the {pool} pool has {need} instance(s); add `server-template {prefix} {need} 127.0.0.1:1 disabled` (or more) to `backend {}` and reload HAProxy, or set `router.haproxy.servers.{pool}` to the prefix your slots use",
            self.backend, self.backend
        ))
    }

    async fn apply_weights(&self, slots: &Slots, weight: u8) -> Result<(), RolloutError> {
        let ns = slots.stable.iter().filter(|s| s.in_use()).count();
        let nc = slots.canary.iter().filter(|s| s.in_use()).count();
        let (ws, wc) = server_weights(weight, ns, nc);
        let stable = slots.stable.iter().filter(|s| s.in_use()).map(|s| (s, ws));
        let canary = slots.canary.iter().filter(|s| s.in_use()).map(|s| (s, wc));
        // The pool gaining weight first, so the servers in use never all weigh 0.
        let current_c = slots.weight().unwrap_or(0);
        let order: Vec<(&Slot, u64)> = if weight >= current_c {
            canary.chain(stable).collect()
        } else {
            stable.chain(canary).collect()
        };
        let mut cmds: Vec<String> = order
            .into_iter()
            .filter(|(slot, w)| slot.weight != *w)
            .map(|(slot, w)| format!("set weight {}/{} {w}", self.backend, slot.name))
            .collect();
        // Affinity pins only while a canary serves at a weight above 0. Switched off
        // before the weights in the same write (a weight-0 server still takes the
        // requests pinned to it: a rolled-back canary must get none), on after them.
        let on = weight > 0 && nc > 0;
        let affinity = self.affinity_commands(on)?;
        if on {
            cmds.extend(affinity);
        } else {
            cmds.splice(0..0, affinity);
        }
        self.changes(&cmds).await
    }

    async fn counts(&self) -> Result<(Counts, Counts, Option<u64>), String> {
        let out = self.command("show stat").await?;
        let (mut stable, mut canary) = (Counts::default(), Counts::default());
        let mut in_flight = None;
        for r in Stat::parse(&out, &self.backend)?.rows() {
            let name = r.get("svname");
            let pool = if name.starts_with(&self.canary_prefix) {
                *in_flight.get_or_insert(0) += r.num("scur");
                &mut canary
            } else if name.starts_with(&self.stable_prefix) {
                &mut stable
            } else {
                continue;
            };
            pool.requests += r.requests();
            pool.errors += r.num("hrsp_5xx");
        }
        Ok((stable, canary, in_flight))
    }
}

impl TrafficRouter for HaproxyRouter {
    fn set_pools<'a>(
        &'a self,
        stable: &'a [std::net::SocketAddr],
        canary: &'a [std::net::SocketAddr],
    ) -> BoxFuture<'a, Result<(), RolloutError>> {
        Box::pin(async move {
            let slots = self.slots().await.map_err(RolloutError::Router)?;
            if stable.len() > slots.stable.len() {
                return Err(self.missing_slots(
                    "stable",
                    &self.stable_prefix,
                    slots.stable.len(),
                    stable.len(),
                ));
            }
            if canary.len() > slots.canary.len() {
                return Err(self.missing_slots(
                    "canary",
                    &self.canary_prefix,
                    slots.canary.len(),
                    canary.len(),
                ));
            }
            // Routes start with a canary pool and end with it; in between only
            // `clear_routes` changes them, so once a rollback cleared them no later pool
            // or weight change can put them back.
            if let Some((_, map)) = &self.routes {
                let had = in_use_addrs(&slots.canary);
                if canary.is_empty() {
                    if !had.is_empty() {
                        self.end_routes(map, &had).await?;
                    }
                } else if had.is_empty() {
                    let ended = self.ended_canary(map).await.map_err(RolloutError::Router)?;
                    if !canary.iter().any(|a| ended.contains(&a.to_string())) {
                        self.install_routes().await?;
                    }
                }
            }
            // The weight in force carries over to the new pools.
            let weight = if canary.is_empty() {
                0
            } else if stable.is_empty() {
                100
            } else {
                slots.weight().unwrap_or(0)
            };
            // Affinity: refused before a new canary pool is in service if the backend
            // lacks the cookie; off before anything moves when no canary (or no weight)
            // is left, on once the pools are in place.
            let affinity_on = !canary.is_empty() && weight > 0;
            if self.affinity.is_some() {
                if !canary.is_empty() && !slots.canary.iter().any(Slot::in_use) {
                    self.check_affinity_cookie().await?;
                }
                if !affinity_on {
                    self.changes(&self.affinity_commands(false)?).await?;
                }
            }
            let (ws, wc) = server_weights(weight, stable.len(), canary.len());
            let mut after = slots.clone();
            // New servers first (address, weight, ready), then the slots no longer used
            // go to maintenance: the backend never lacks a server in between.
            for (pool, addrs, w) in [
                (&mut after.stable, stable, ws),
                (&mut after.canary, canary, wc),
            ] {
                for (slot, addr) in pool.iter_mut().zip(addrs) {
                    let ip = addr.ip().to_string();
                    if slot.addr != ip || slot.port != addr.port() {
                        self.change(&format!(
                            "set server {}/{} addr {ip} port {}",
                            self.backend,
                            slot.name,
                            addr.port()
                        ))
                        .await?;
                    }
                    if slot.weight != w {
                        self.change(&format!("set weight {}/{} {w}", self.backend, slot.name))
                            .await?;
                    }
                    if !slot.in_use() {
                        self.change(&format!(
                            "set server {}/{} state ready",
                            self.backend, slot.name
                        ))
                        .await?;
                    }
                    slot.admin_state &= !MAINT_MASK;
                    slot.weight = w;
                }
            }
            for (pool, n) in [(&after.stable, stable.len()), (&after.canary, canary.len())] {
                for slot in pool.iter().skip(n).filter(|s| s.in_use()) {
                    self.change(&format!(
                        "set server {}/{} state maint",
                        self.backend, slot.name
                    ))
                    .await?;
                }
            }
            if affinity_on {
                self.changes(&self.affinity_commands(true)?).await?;
            }
            *self.desired() = Some(Desired {
                stable: stable.to_vec(),
                canary: canary.to_vec(),
                weight,
            });
            Ok(())
        })
    }

    fn set_weight(&self, weight: u8) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            let slots = self.slots().await.map_err(RolloutError::Router)?;
            self.apply_weights(&slots, weight).await?;
            if let Some(d) = self.desired().as_mut() {
                d.weight = weight;
            }
            Ok(())
        })
    }

    fn reconcile(&self) -> BoxFuture<'_, Result<Option<String>, RolloutError>> {
        Box::pin(async move {
            // Only what this router set: a router that set nothing yet (a new process
            // before its first change) has nothing to hold HAProxy to.
            let want = self.desired().clone();
            let Some(want) = want else {
                return Ok(None);
            };
            let slots = self.slots().await.map_err(RolloutError::Router)?;
            let lost = self
                .lost(&want, &slots)
                .await
                .map_err(RolloutError::Router)?;
            if lost.what.is_empty() {
                return Ok(None);
            }
            if lost.pools {
                // Weight 0, the pools (their routes installed anew), then the weight with
                // its affinity: the order of a canary's start, so nothing reaches the
                // canary before its share is set. The same key gives the same cookies:
                // users pinned before the loss stay where they were.
                self.set_weight(0).await?;
                self.set_pools(&want.stable, &want.canary).await?;
                self.set_weight(want.weight).await?;
            } else {
                // The weights, and with them the affinity (its key sent again).
                self.apply_weights(&slots, want.weight).await?;
                if lost.routes {
                    self.install_routes().await?;
                }
            }
            Ok(Some(format!(
                "HAProxy backend `{}` ({}) had lost {}; the canary at {}% again",
                self.backend,
                self.socket.display(),
                lost.what.join(", "),
                want.weight
            )))
        })
    }

    fn verify_weight(&self) -> BoxFuture<'_, Option<u8>> {
        Box::pin(async move {
            let slots = self.slots().await.ok()?;
            if !slots.canary.iter().any(Slot::in_use) {
                // No canary pool: everything goes to stable.
                return slots.stable.iter().any(Slot::in_use).then_some(0);
            }
            slots.weight()
        })
    }

    fn canary_in_flight(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move { self.counts().await.ok().and_then(|(_, _, n)| n) })
    }

    fn clear_routes(&self) -> BoxFuture<'_, Result<(), RolloutError>> {
        Box::pin(async move {
            // The rollback's weight 0 already switched affinity off; said again, so a
            // rollback never leaves it on whatever came before.
            self.changes(&self.affinity_commands(false)?).await?;
            let Some((_, map)) = &self.routes else {
                return Ok(());
            };
            let slots = self.slots().await.map_err(RolloutError::Router)?;
            self.end_routes(map, &in_use_addrs(&slots.canary)).await
        })
    }
}

/// A match rule as one `map_reg` key over `req.hdrs` (every header line, `name: value`):
/// a lookahead per condition, header names case-insensitive, values exact. Letters and
/// digits as they are, every other byte `\\xHH` (the runtime API takes `\\` for `\`), so
/// no space, quote or `#` reaches the command line.
pub fn rule_pattern(rule: &MatchRule) -> String {
    let lit = |t: &str| -> String {
        t.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("\\\\x{b:02x}")
                }
            })
            .collect()
    };
    let eol = "[[:blank:]\\\\x0d]*$";
    let mut out = "(?m)\\\\A".to_owned();
    for h in &rule.headers {
        let value = match (&h.exact, &h.prefix) {
            (Some(v), _) => format!("{}{eol}", lit(v)),
            (None, Some(p)) => lit(p),
            (None, None) => "(?!)".to_owned(),
        };
        out.push_str(&format!(
            "(?=(?s:.*)^(?i:{}):[[:blank:]]*{value})",
            lit(&h.name)
        ));
    }
    if let Some(c) = &rule.cookie {
        out.push_str(&format!(
            "(?=(?s:.*)^(?i:cookie):(?:[^\\\\x0a]*\\\\x3b)?[[:blank:]]*{}={}[[:blank:]]*(?:\\\\x3b|{eol}))",
            lit(&c.name),
            lit(&c.value)
        ));
    }
    out
}

impl MetricSource for HaproxyRouter {
    fn window(&self) -> BoxFuture<'_, Result<Window, String>> {
        Box::pin(async move {
            let (stable, canary, _) = self.counts().await?;
            let matched = self.matched_counts().await?;
            let now = Instant::now();
            let previous = self
                .last
                .lock()
                .map_err(|_| "metric state poisoned".to_owned())?
                .replace((now, stable, canary, matched));
            let (since, ps, pc, pm) =
                previous.unwrap_or((now, Counts::default(), Counts::default(), Counts::default()));
            // Counters restart with HAProxy: a smaller total is a fresh start.
            let diff = |now: Counts, before: Counts| {
                if now.requests < before.requests {
                    now
                } else {
                    Counts {
                        requests: now.requests - before.requests,
                        errors: now.errors.saturating_sub(before.errors),
                    }
                }
            };
            let seconds = now.duration_since(since).as_secs_f64();
            let v = |c: Counts| VersionWindow {
                requests: c.requests,
                errors: c.errors,
                p50_ms: None,
                p95_ms: None,
                p99_ms: None,
                seconds,
                samples_ms: Vec::new(),
            };
            // Matched requests reached canary slots too: the stick table counts them, and
            // they are taken out of what the analysis judges and reported apart.
            let m = diff(matched, pm);
            let c = diff(canary, pc);
            let judged = Counts {
                requests: c.requests.saturating_sub(m.requests),
                errors: c.errors.saturating_sub(m.errors),
            };
            Ok(Window {
                canary: v(judged),
                stable: v(diff(stable, ps)),
                matched_requests: m.requests,
                matched_errors: m.errors,
            })
        })
    }
}

/// Slot names by pool, for messages (`stable1 stable2 | canary1`).
pub fn describe(slots: &Slots) -> String {
    let names = |v: &[Slot]| -> String {
        let m: BTreeMap<&str, String> = v
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    format!(
                        "{}{}:{} w{}",
                        if s.in_use() { "" } else { "(maint) " },
                        s.addr,
                        s.port,
                        s.weight
                    ),
                )
            })
            .collect();
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "stable: {}; canary: {}",
        names(&slots.stable),
        names(&slots.canary)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_weights_give_the_canary_its_share() {
        assert_eq!(server_weights(10, 1, 1), (9, 1));
        assert_eq!(server_weights(50, 2, 1), (1, 2));
        assert_eq!(server_weights(0, 2, 2), (1, 0));
        assert_eq!(server_weights(100, 2, 2), (0, 1));
        assert_eq!(server_weights(33, 1, 0), (1, 0));
        for (w, ns, nc) in [(1, 3, 4), (99, 4, 3), (37, 2, 3), (5, 4, 4)] {
            let (s, c) = server_weights(w, ns, nc);
            assert!(s <= MAX_WEIGHT && c <= MAX_WEIGHT && s > 0 && c > 0);
            let share = (c * nc as u64) as f64 / ((s * ns as u64 + c * nc as u64) as f64) * 100.0;
            assert!(
                (share - f64::from(w)).abs() < 1.0,
                "{w}% {ns}/{nc}: {share}"
            );
        }
    }
}
