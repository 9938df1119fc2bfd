//! The load balancer in front of an ssh fleet, as the rolling deploy
//! ([`crate::ssh`]'s drain around each host) and the fleet canary ([`crate::fleet`]) use
//! it: one server (or one per instance) per host, named after the host.
//!
//! [`Balancer`] is all they need: each host's weight and whether it is in service, set
//! weights, drain a host (no new requests, then wait until the ones in flight finished),
//! put it back in service, and per-host counters (responses, 5xx) to take windows from.
//! Two implementations:
//!
//! - **HAProxy** ([`HaproxyRouter`]), over its runtime API: `set weight`, `set server
//!   state drain|ready`, `show servers state`, and `show stat` (`hrsp_*`, `scur`, so a
//!   drain waits for the host's sessions to end).
//! - **nginx** ([`NginxFleet`]): Slipway owns one upstream file (`server ADDR:PORT
//!   weight=W;` per instance, `down` for a host drained or at weight 0), written
//!   atomically, checked with `nginx -t` and reloaded (see [`crate::nginx`]'s install:
//!   done when the status socket answers from workers of the new generation). A drain is
//!   done once the workers of the old generation are gone too: nginx lets them finish
//!   their requests in flight and then exit, so that is the moment no request is left on
//!   the drained host. Counters come from an access log in the format
//!   [`NGINX_LOG_FORMAT`], read incrementally from the offset reached before.
//!
//! Neither keeps state beyond what it reads back from the balancer (HAProxy's runtime
//! state; the upstream file's header for nginx), except the access log's offset and
//! totals, which only make windows: a restarted `slipway` starts counting afresh, and
//! the controller discards a first window anyway.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_rollout::BoxFuture;

use crate::haproxy::HaproxyRouter;
use crate::nginx::{self, Install};

/// Longest wait for a drained host's requests in flight to finish before its instances
/// are replaced anyway (a long-lived connection must not hold a deploy forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One host as the balancer has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    /// Its weight (0: no new requests).
    pub weight: u64,
    /// Whether it is in service: not drained or in maintenance, and not seen down by
    /// the balancer's health checks where it has them.
    pub in_service: bool,
}

/// A host's counters since some origin (HAProxy's start; the first read of nginx's
/// access log by this `slipway`): windows are their differences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// HTTP responses.
    pub responses: u64,
    /// 5xx responses among them.
    pub errors: u64,
    /// Requests in flight now (`None`: the balancer cannot tell).
    pub in_flight: Option<u64>,
}

/// What the fleet needs from its load balancer (see the module docs). Hosts are named as
/// in the inventory.
pub trait Balancer: Send + Sync {
    /// The balancer, for messages: `HAProxy backend `web` (/run/haproxy.sock)`.
    fn describe(&self) -> String;
    /// A host's server as messages name it: `web/host1`.
    fn server(&self, host: &str) -> String;
    /// Every host's weight and service state (a host missing is not in the balancer).
    fn hosts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostState>, String>>;
    /// Set these hosts' weights, in this order (the caller orders them so the hosts in
    /// service never all weigh 0 in between).
    fn set_weights<'a>(&'a self, weights: &'a [(String, u64)])
    -> BoxFuture<'a, Result<(), String>>;
    /// Take a host out of service: no new request reaches it, then wait (up to
    /// [`DRAIN_TIMEOUT`]) until those in flight finished. Returns what was done, for
    /// the step's output.
    fn drain<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<String, String>>;
    /// Put a drained host back in service at its weight.
    fn restore<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Each host's counters now.
    fn counts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostCounts>, String>>;
}

/// Admin-state bits of a server drained (`FDRAIN`, `IDRAIN`) or in maintenance.
const OUT_OF_SERVICE: u32 = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x40;

/// A runtime API change that answers nothing when it worked.
async fn haproxy_change(router: &HaproxyRouter, cmd: &str) -> Result<(), String> {
    let out = router.command(cmd).await?;
    let t = out.trim();
    if t.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "HAProxy refused `{cmd}` on {}: {t}; fix: the backend needs one server per host, named as the host in the inventory",
            router.socket().display()
        ))
    }
}

impl Balancer for HaproxyRouter {
    fn describe(&self) -> String {
        format!(
            "HAProxy backend `{}` ({})",
            self.backend(),
            self.socket().display()
        )
    }

    fn server(&self, host: &str) -> String {
        format!("{}/{host}", self.backend())
    }

    fn hosts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostState>, String>> {
        Box::pin(async move {
            let servers = self.servers().await?;
            let stats = self.server_stats().await?;
            Ok(servers
                .into_iter()
                .map(|s| {
                    let down = stats.get(&s.name).is_some_and(|st| {
                        st.status.starts_with("DOWN") || st.status.starts_with("MAINT")
                    });
                    let state = HostState {
                        weight: s.weight,
                        in_service: s.admin_state & OUT_OF_SERVICE == 0 && !down,
                    };
                    (s.name, state)
                })
                .collect())
        })
    }

    fn set_weights<'a>(
        &'a self,
        weights: &'a [(String, u64)],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            for (host, w) in weights {
                // Absolute, never `%` (relative to the configured weight).
                haproxy_change(self, &format!("set weight {}/{host} {w}", self.backend())).await?;
            }
            Ok(())
        })
    }

    fn drain<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            haproxy_change(
                self,
                &format!("set server {}/{host} state drain", self.backend()),
            )
            .await?;
            let started = Instant::now();
            loop {
                let stats = self.server_stats().await?;
                let Some(n) = stats.get(host).map(|s| s.sessions) else {
                    return Err(format!(
                        "HAProxy backend `{}` has no server `{host}`; fix: name one server per host after the host in the inventory",
                        self.backend()
                    ));
                };
                if n == 0 {
                    return Ok(format!(
                        "drained {} in {} ms",
                        self.server(host),
                        started.elapsed().as_millis()
                    ));
                }
                if started.elapsed() >= DRAIN_TIMEOUT {
                    return Ok(format!(
                        "drained {}: {n} session(s) still open after {} s, replaced anyway",
                        self.server(host),
                        DRAIN_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn restore<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            haproxy_change(
                self,
                &format!("set server {}/{host} state ready", self.backend()),
            )
            .await
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostCounts>, String>> {
        Box::pin(async move {
            Ok(self
                .server_stats()
                .await?
                .into_iter()
                .map(|(name, s)| {
                    (
                        name,
                        HostCounts {
                            responses: s.requests,
                            errors: s.errors,
                            in_flight: Some(s.sessions),
                        },
                    )
                })
                .collect())
        })
    }
}

/// The access log format the nginx fleet balancer reads: the address of the upstream
/// server that answered, then the response's status. The user declares it in nginx's
/// `http` block as `log_format slipway '$upstream_addr $status';` and logs the requests
/// proxied to the fleet's upstream with `access_log PATH slipway;` (no `buffer=`, so
/// each line is there when the request ends).
pub const NGINX_LOG_FORMAT: &str = "'$upstream_addr $status'";

/// One host behind the nginx upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its inventory name.
    pub name: String,
    /// The address nginx connects to (the inventory's `address`).
    pub address: String,
    /// Its first instance's port (the next instances take the ports after it).
    pub port: u16,
}

/// What Slipway's upstream file records of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    weight: u64,
    drained: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            weight: 1,
            drained: false,
        }
    }
}

/// Where the access log was read up to, and what it counted.
#[derive(Debug, Default)]
struct LogCursor {
    /// The file's inode and the offset read up to (`None`: not read yet).
    at: Option<(u64, u64)>,
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    totals: BTreeMap<String, (u64, u64)>,
}

/// nginx in front of an ssh fleet (see the module docs): the upstream file Slipway owns,
/// with one `server` per instance of each host.
pub struct NginxFleet {
    file: PathBuf,
    upstream: String,
    test: String,
    reload: String,
    access_log: Option<PathBuf>,
    members: Vec<Member>,
    replicas: u16,
    /// Instance address → host, for the access log.
    by_addr: BTreeMap<SocketAddr, String>,
    /// One change at a time: each is a read-modify-write of the file and a reload.
    lock: tokio::sync::Mutex<()>,
    cursor: std::sync::Mutex<LogCursor>,
    /// How long a reload may take to show.
    pub reload_timeout: Duration,
}

impl std::fmt::Debug for NginxFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxFleet")
            .field("file", &self.file)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl NginxFleet {
    /// nginx's `upstream` in `file` for these hosts, `replicas` instances each; `test`
    /// and `reload` are shell commands (`None`: `nginx -t`, `nginx -s reload`);
    /// `access_log` the log in [`NGINX_LOG_FORMAT`] counters come from.
    pub fn new(
        file: impl Into<PathBuf>,
        upstream: impl Into<String>,
        test: Option<String>,
        reload: Option<String>,
        access_log: Option<PathBuf>,
        members: Vec<Member>,
        replicas: u32,
    ) -> Self {
        let replicas = u16::try_from(replicas.max(1)).unwrap_or(u16::MAX);
        let mut by_addr = BTreeMap::new();
        for m in &members {
            for k in 0..replicas {
                let port = m.port.saturating_add(k);
                // A name that does not resolve here cannot be matched in the log; nginx
                // resolves it itself at load.
                if let Ok(addrs) = (m.address.as_str(), port).to_socket_addrs() {
                    for a in addrs {
                        by_addr.insert(a, m.name.clone());
                    }
                }
            }
        }
        Self {
            file: file.into(),
            upstream: upstream.into(),
            test: test.unwrap_or_else(|| "nginx -t".into()),
            reload: reload.unwrap_or_else(|| "nginx -s reload".into()),
            access_log,
            members,
            replicas,
            by_addr,
            lock: tokio::sync::Mutex::new(()),
            cursor: std::sync::Mutex::default(),
            reload_timeout: Duration::from_secs(15),
        }
    }

    /// The upstream file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The state the file records, every member present (a member the file does not
    /// name yet: weight 1, in service).
    fn state(&self) -> BTreeMap<String, Entry> {
        let recorded = std::fs::read_to_string(&self.file)
            .map(|t| parse_entries(&t))
            .unwrap_or_default();
        self.members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    recorded.get(&m.name).copied().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The file's text for a state.
    fn render(&self, state: &BTreeMap<String, Entry>) -> String {
        let mut upstream = format!("upstream {} {{\n", self.upstream);
        let mut header = String::new();
        let mut servers = 0;
        for m in &self.members {
            let e = state.get(&m.name).copied().unwrap_or_default();
            header.push_str(&format!(
                "# slipway-host {} {} {}\n",
                m.name,
                e.weight,
                if e.drained { "drained" } else { "in" }
            ));
            for k in 0..self.replicas {
                servers += 1;
                let addr = format!("{}:{}", m.address, m.port.saturating_add(k));
                if e.drained || e.weight == 0 {
                    upstream.push_str(&format!(
                        "    server {addr} down; # {} {}\n",
                        m.name,
                        if e.drained { "drained" } else { "weight 0" }
                    ));
                } else {
                    upstream.push_str(&format!(
                        "    server {addr} weight={}; # {}\n",
                        e.weight.min(1000),
                        m.name
                    ));
                }
            }
        }
        if servers == 0 {
            upstream.push_str("    server 127.0.0.1:1 down; # no hosts\n");
        }
        upstream.push_str("}\n");
        // The status line names the generation: a digest of what nginx routes by.
        let digest = slipway_package::digest::sha256_bytes(upstream.as_bytes());
        let generation = digest.trim_start_matches("sha256:");
        let generation = &generation[..generation.len().min(16)];
        format!(
            "# Managed by slipway (fleet router nginx, upstream {up}): rewritten on every weight\n\
             # change and drain. Edits here are overwritten.\n{header}{upstream}\
             # Slipway reads the generation nginx serves from here after each reload.\n\
             server {{\n    listen unix:{sock};\n    access_log off;\n    location = {path} {{\n        return 200 \"fleet upstream={up} generation={generation} pid=$pid\";\n    }}\n}}\n",
            up = self.upstream,
            sock = nginx::status_socket(&self.file).display(),
            path = nginx::STATUS_PATH,
        )
    }

    /// Install a state: `Ok(pid)` of a worker serving it. Already served: nothing done.
    async fn install(&self, state: &BTreeMap<String, Entry>) -> Result<u32, String> {
        let text = self.render(state);
        let generation = text
            .split("generation=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        let want = format!("generation={generation}");
        let serves = |line: &str| line.split_whitespace().any(|f| f == want);
        if std::fs::read(&self.file).ok().as_deref() == Some(text.as_bytes())
            && let Ok(line) = nginx::status_line(&self.file).await
            && serves(&line)
            && let Some(pid) = nginx::status_pid(&line)
        {
            return Ok(pid);
        }
        nginx::install(
            &Install {
                file: &self.file,
                test: &self.test,
                reload: &self.reload,
                timeout: self.reload_timeout,
            },
            &text,
            serves,
            || format!("upstream `{}` generation {generation}", self.upstream),
        )
        .await
    }

    fn unknown(&self, host: &str) -> String {
        format!(
            "host `{host}` is not behind nginx upstream `{}` ({}): it is not in the inventory group",
            self.upstream,
            self.file.display()
        )
    }

    /// Read the access log from where the last read stopped; counts by host.
    fn read_log(&self) -> Result<BTreeMap<String, (u64, u64)>, String> {
        use std::io::{Read as _, Seek as _};
        use std::os::unix::fs::MetadataExt as _;
        let mut cursor = self
            .cursor
            .lock()
            .map_err(|_| "access log state poisoned".to_owned())?;
        let Some(path) = &self.access_log else {
            return Ok(cursor.totals.clone());
        };
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            // Not created yet (nothing logged): nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(cursor.totals.clone());
            }
            Err(e) => {
                return Err(format!(
                    "cannot read nginx's access log {}: {e}; fix: let the user running slipway read it",
                    path.display()
                ));
            }
        };
        let meta = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (ino, len) = (meta.ino(), meta.len());
        let from = match cursor.at {
            // First read: count from now on.
            None => {
                cursor.at = Some((ino, len));
                return Ok(cursor.totals.clone());
            }
            // Rotated or truncated: the new file from its start.
            Some((i, off)) if i != ino || off > len => {
                cursor.partial.clear();
                0
            }
            Some((_, off)) => off,
        };
        f.seek(std::io::SeekFrom::Start(from))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = Vec::new();
        f.take(len - from)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        cursor.at = Some((ino, from + buf.len() as u64));
        let mut data = std::mem::take(&mut cursor.partial);
        data.extend_from_slice(&buf);
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        cursor.partial = data[complete..].to_vec();
        for line in String::from_utf8_lossy(&data[..complete]).lines() {
            if let Some((addr, status)) = parse_log_line(line)
                && let Some(host) = self.by_addr.get(&addr)
            {
                let t = cursor.totals.entry(host.clone()).or_default();
                t.0 += 1;
                if (500..600).contains(&status) {
                    t.1 += 1;
                }
            }
        }
        Ok(cursor.totals.clone())
    }
}

/// The host entries of an upstream file's header.
fn parse_entries(text: &str) -> BTreeMap<String, Entry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("# slipway-host ")?.split_whitespace();
            let name = f.next()?.to_owned();
            let weight = f.next()?.parse().ok()?;
            let drained = f.next()? == "drained";
            Some((name, Entry { weight, drained }))
        })
        .collect()
}

/// `(address that answered, status)` of a line in [`NGINX_LOG_FORMAT`]. `$upstream_addr`
/// lists every server tried (`a, b`, or `a : b` across an internal redirect): the last
/// one answered. `None` for a request no upstream server answered (`-`).
fn parse_log_line(line: &str) -> Option<(SocketAddr, u16)> {
    let (addrs, status) = line.trim_end().rsplit_once(' ')?;
    let status = status.parse().ok()?;
    let last = addrs.rsplit(", ").next()?.rsplit(" : ").next()?.trim();
    last.parse().ok().map(|a| (a, status))
}

impl Balancer for NginxFleet {
    fn describe(&self) -> String {
        format!(
            "nginx upstream `{}` ({})",
            self.upstream,
            self.file.display()
        )
    }

    fn server(&self, host: &str) -> String {
        format!("{}/{host}", self.upstream)
    }

    fn hosts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostState>, String>> {
        Box::pin(async move {
            Ok(self
                .state()
                .into_iter()
                .map(|(h, e)| {
                    (
                        h,
                        HostState {
                            weight: e.weight,
                            in_service: !e.drained,
                        },
                    )
                })
                .collect())
        })
    }

    fn set_weights<'a>(
        &'a self,
        weights: &'a [(String, u64)],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let _one = self.lock.lock().await;
            let mut state = self.state();
            for (host, w) in weights {
                state
                    .get_mut(host)
                    .ok_or_else(|| self.unknown(host))?
                    .weight = *w;
            }
            // One file, one reload: the order does not matter, nginx swaps it whole.
            self.install(&state).await.map(|_| ())
        })
    }

    fn drain<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let _one = self.lock.lock().await;
            let started = Instant::now();
            let mut state = self.state();
            state
                .get_mut(host)
                .ok_or_else(|| self.unknown(host))?
                .drained = true;
            let pid = self.install(&state).await?;
            // The old generation's workers finish their requests in flight (some on
            // this host) and exit: then none is left here.
            loop {
                let old = nginx::shutting_down_workers(pid);
                if old.is_empty() {
                    return Ok(format!(
                        "drained {} in {} ms",
                        self.server(host),
                        started.elapsed().as_millis()
                    ));
                }
                if started.elapsed() >= DRAIN_TIMEOUT {
                    return Ok(format!(
                        "drained {}: {} old nginx worker(s) still finishing requests after {} s, replaced anyway",
                        self.server(host),
                        old.len(),
                        DRAIN_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn restore<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let _one = self.lock.lock().await;
            let mut state = self.state();
            state
                .get_mut(host)
                .ok_or_else(|| self.unknown(host))?
                .drained = false;
            self.install(&state).await.map(|_| ())
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<BTreeMap<String, HostCounts>, String>> {
        Box::pin(async move {
            let totals = self.read_log()?;
            Ok(self
                .members
                .iter()
                .map(|m| {
                    let (responses, errors) = totals.get(&m.name).copied().unwrap_or_default();
                    (
                        m.name.clone(),
                        HostCounts {
                            responses,
                            errors,
                            in_flight: None,
                        },
                    )
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(dir: &Path, log: Option<PathBuf>) -> NginxFleet {
        NginxFleet::new(
            dir.join("up.conf"),
            "web",
            None,
            None,
            log,
            vec![
                Member {
                    name: "host1".into(),
                    address: "127.0.0.1".into(),
                    port: 8001,
                },
                Member {
                    name: "host2".into(),
                    address: "127.0.0.1".into(),
                    port: 8011,
                },
            ],
            2,
        )
    }

    #[test]
    fn the_upstream_file_records_weights_and_drains_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), None);
        // No file yet: every host at weight 1, in service.
        let s = f.state();
        assert_eq!(s["host1"], Entry::default());
        let mut s2 = s.clone();
        s2.insert(
            "host1".into(),
            Entry {
                weight: 3,
                drained: false,
            },
        );
        s2.insert(
            "host2".into(),
            Entry {
                weight: 2,
                drained: true,
            },
        );
        let text = f.render(&s2);
        assert!(
            text.contains("server 127.0.0.1:8001 weight=3; # host1"),
            "{text}"
        );
        assert!(
            text.contains("server 127.0.0.1:8002 weight=3; # host1"),
            "{text}"
        );
        assert!(
            text.contains("server 127.0.0.1:8012 down; # host2 drained"),
            "{text}"
        );
        assert!(text.contains("generation="), "{text}");
        assert_eq!(parse_entries(&text), s2);
        // A different state is a different generation.
        assert_ne!(f.render(&s), text);
    }

    #[test]
    fn access_log_lines_name_the_server_that_answered() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            parse_log_line("127.0.0.1:8001 200"),
            Some((a("127.0.0.1:8001"), 200))
        );
        assert_eq!(
            parse_log_line("127.0.0.1:8001, 127.0.0.1:8011 502"),
            Some((a("127.0.0.1:8011"), 502))
        );
        assert_eq!(
            parse_log_line("127.0.0.1:8001 : 127.0.0.1:8002 500"),
            Some((a("127.0.0.1:8002"), 500))
        );
        assert_eq!(parse_log_line("- 404"), None);
        assert_eq!(parse_log_line("garbage"), None);
    }

    #[test]
    fn the_access_log_is_read_by_offset_from_the_first_read_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        std::fs::write(&log, "127.0.0.1:8001 500\n").unwrap();
        let f = fleet(dir.path(), Some(log.clone()));
        // What was logged before the first read is not counted.
        assert!(f.read_log().unwrap().is_empty());
        let append = |t: &str| {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .unwrap()
                .write_all(t.as_bytes())
                .unwrap();
        };
        append("127.0.0.1:8001 200\n127.0.0.1:8002 503\n127.0.0.1:8011 20");
        let t = f.read_log().unwrap();
        assert_eq!(t.get("host1"), Some(&(2, 1)));
        assert_eq!(t.get("host2"), None, "a partial line waits for its end");
        append("0\n- 502\n");
        let t = f.read_log().unwrap();
        assert_eq!(t.get("host2"), Some(&(1, 0)));
        // Rotated: the new file from its start.
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&log, "127.0.0.1:8012 500\n").unwrap();
        let t = f.read_log().unwrap();
        assert_eq!(t.get("host2"), Some(&(2, 1)));
    }
}
