//! The server executes runs (issue 16 part 1), through the real binary against a real
//! `slipway serve`: `slipway --server URL deploy` from another directory packs the spec's
//! directory into a bundle, uploads it, and the server plans, gates and drives the run —
//! a process-target release whose instance then answers; the files the spec references
//! (an artifact with its digest, a config template) travel in the bundle; a refused plan
//! comes back with its findings and exit code 3; a viewer is refused (403, exit 3); a
//! bundle whose bytes are not the digest they were sent as, or with an entry named
//! `../…`, is refused and nothing is stored; on PostgreSQL a bundle uploaded to one
//! server is deployed through another, and a server killed with SIGKILL mid-canary under
//! live traffic has its run taken over and finished by another, no request failing.
//!
//! Processes the tests cause (the servers, proxies, instances) are found by their mark
//! and killed when each test ends (see `crate::marked`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::People;

const MARK_VAR: &str = "SLIPWAY_SERVER_DEPLOY_TEST";

/// A server's directory (its store, `bin/demo-app`, everything it unpacks and runs) and
/// the people of its store.
pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) store: String,
    mark: String,
}

impl World {
    pub(crate) fn sqlite() -> Self {
        let dir = crate::demo_app_dir();
        let store = format!("sqlite://{}/s.db", dir.path().display());
        let mark = dir.path().display().to_string();
        Self { dir, store, mark }
    }

    pub(crate) fn on(store: String) -> Self {
        let dir = crate::demo_app_dir();
        let mark = dir.path().display().to_string();
        Self { dir, store, mark }
    }

    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// `slipway serve` on this world's store, from its directory, demo-app on PATH.
    pub(crate) fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// [`World::serve`] with more arguments.
    pub(crate) fn serve_with(&self, extra: &[&str]) -> Server {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("slipway"))
            .current_dir(self.dir.path())
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_OUTPUT")
            .env("SLIPWAY_STORE", &self.store)
            .env("PATH", self.path_var())
            .env(MARK_VAR, &self.mark)
            .args(["serve", "--listen", "127.0.0.1:0", "--output", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line {line:?}: {e}; {:?}", child.try_wait()));
        Server {
            addr: ready["listening"].as_str().unwrap().to_owned(),
            child,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        crate::kill_marked(MARK_VAR, &self.mark);
    }
}

pub(crate) struct Server {
    pub(crate) addr: String,
    pub(crate) child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slipway --server http://ADDR ARGS` as `token`, from `cwd` (no store anywhere near):
/// exit code, stdout, stderr.
pub(crate) fn remote(addr: &str, token: &str, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let o = crate::slipway()
        .current_dir(cwd)
        .env("SLIPWAY_SERVER", format!("http://{addr}"))
        .env("SLIPWAY_TOKEN", token)
        .env("SLIPWAY_STORE", "sqlite:///nonexistent/slipway.db")
        .env(MARK_VAR, "client")
        .args(args)
        .timeout(Duration::from_secs(90))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `POST path` with raw bytes and headers over HTTP/1.0: status and JSON body.
pub(crate) fn post(addr: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    (status, v)
}

/// A plain `GET` of `http://addr/path` (HTTP/1.0): the body.
pub(crate) fn get_body(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The client's release directory: a process-target `api` (one demo-app instance).
pub(crate) fn process_release(version: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("release.yaml"),
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run: {{ command: \"demo-app --port {{{{ port }}}} --version {{{{ version }}}}\", replicas: 1 }}
    readiness: {{ http: /ready, timeout: 2s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
"
        ),
    )
    .unwrap();
    d
}

/// The client's release directory: an exec-target `api` installing `artifact.bin` (by
/// digest) and rendering `api.conf.j2`, with staging before prod in its lifecycle.
pub(crate) fn exec_release() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let artifact = b"api 1.0.0 build 1";
    std::fs::write(d.path().join("artifact.bin"), artifact).unwrap();
    std::fs::write(d.path().join("api.conf.j2"), "port = {{ vars.port }}\n").unwrap();
    std::fs::write(
        d.path().join("release.yaml"),
        format!(
            "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: 1.0.0, type: patch }}
services:
  api:
    artifact: {{ path: artifact.bin, sha256: \"{}\" }}
    config: [ {{ template: api.conf.j2, dest: api.conf }} ]
    steps: [ {{ name: install, run: \"cp artifact.bin installed\", undo: \"true\" }} ]
lifecycle: {{ order: [staging, prod] }}
environments:
  staging:
    target: {{ exec: {{}} }}
    vars: {{ port: 8081 }}
  prod:
    target: {{ exec: {{}} }}
    vars: {{ port: 80 }}
",
            slipway_engine::evidence::sha256_hex(artifact)
        ),
    )
    .unwrap();
    d
}

pub(crate) fn spec_of(d: &tempfile::TempDir) -> String {
    d.path().join("release.yaml").display().to_string()
}

/// The directories the server unpacked bundles into.
fn unpacked(world: &World) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(world.dir.path().join("bundles"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_process_target_deploy_through_the_server_runs_there_and_its_instance_answers() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people.add("vic", "viewer", "live");
    let server = world.serve();
    let a = server.addr.as_str();
    let release = process_release("1.0.0");
    // Some local state beside the spec that must not travel.
    std::fs::create_dir_all(release.path().join(".slipway")).unwrap();
    std::fs::write(release.path().join(".slipway/slipway.db"), "local").unwrap();

    // A viewer cannot deploy: refused before anything is stored or unpacked.
    let (code, out, err) = remote(
        a,
        people.token("vic"),
        release.path(),
        &["deploy", "-f", &spec_of(&release), "--env", "live"],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("slipway access grant user:vic deployer --env live"),
        "{err}"
    );
    assert!(unpacked(&world).is_empty());

    let (code, out, err) = remote(
        a,
        people.token("alice"),
        release.path(),
        &["deploy", "-f", &spec_of(&release), "--env", "live"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("uploaded to"), "{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with("succeeded"), "{out}");
    let run = last.split_whitespace().nth(1).unwrap().to_owned();
    // The journal was followed live: its entries were printed before the outcome.
    assert!(out.lines().count() > 3, "{out}");

    // The run is the server's: in its store, unpacked under its directory (without the
    // client's local store), its instance and proxy started by it.
    let dirs = unpacked(&world);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join("release.yaml").is_file());
    assert!(!dirs[0].join(".slipway").exists());
    let proxy = slipway_providers::remote::read_state(
        &world.dir.path().join("process/live/proxies/api.json"),
    )
    .expect("the server's deploy started the api proxy");
    let answered = get_body(&proxy.traffic.to_string(), "/version");
    assert_eq!(answered.as_deref().map(str::trim), Some("1.0.0"));
    let (code, out, _) = remote(
        a,
        people.token("vic"),
        release.path(),
        &["status", &run, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["run"]["state"], "succeeded", "{v}");

    // The same bytes again are the same bundle (not stored twice); --detach answers with
    // the run id at once, and `wait` gives the outcome.
    let release2 = process_release("1.1.0");
    let (code, out, err) = remote(
        a,
        people.token("alice"),
        release2.path(),
        &[
            "deploy",
            "-f",
            &spec_of(&release2),
            "--env",
            "live",
            "--detach",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run2 = out.trim().to_owned();
    let (code, out, err) = remote(a, people.token("alice"), release2.path(), &["wait", &run2]);
    assert_eq!(code, 0, "{out}{err}");
    let answered = get_body(&proxy.traffic.to_string(), "/version");
    assert_eq!(answered.as_deref().map(str::trim), Some("1.1.0"));
    let (code, out, err) = remote(
        a,
        people.token("alice"),
        release.path(),
        &[
            "deploy",
            "-f",
            &spec_of(&release),
            "--env",
            "live",
            "--detach",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("already on"), "{err}");
    let (code, out, err) = remote(
        a,
        people.token("alice"),
        release.path(),
        &["wait", out.trim()],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_refused_plan_comes_back_with_its_findings_and_the_bundle_carries_the_referenced_files() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "admin");
    people
        .add("dev", "deployer", "staging")
        .add("dev", "deployer", "prod");
    let server = world.serve();
    let a = server.addr.as_str();
    let release = exec_release();
    let spec = spec_of(&release);
    let dev = people.token("dev");

    // Nothing in staging yet: prod is refused with the planner's finding and exit 3.
    let (code, out, err) = remote(
        a,
        dev,
        release.path(),
        &["deploy", "-f", &spec, "--env", "prod", "--output", "json"],
    );
    assert_eq!(code, 3, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["exit_code"], 3);
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["code"] == "promotion-unproven" && f["severity"] == "error"),
        "{v:#}"
    );
    assert!(
        v["error"].as_str().unwrap().contains("promotion-unproven"),
        "{v}"
    );
    let (code, out, err) = remote(
        a,
        dev,
        release.path(),
        &["deploy", "-f", &spec, "--env", "prod"],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("finding promotion-unproven (error)"), "{err}");

    // Staging through the server: the artifact (checked by digest) and the template came
    // in the bundle and were used there.
    let (code, out, err) = remote(
        a,
        dev,
        release.path(),
        &["deploy", "-f", &spec, "--env", "staging"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let dirs = unpacked(&world);
    // The two refused plans left nothing behind.
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let staged = dirs
        .iter()
        .find(|d| d.join("installed").is_file())
        .unwrap_or_else(|| panic!("no unpacked bundle ran the install step: {dirs:?}"));
    assert_eq!(
        std::fs::read(staged.join("installed")).unwrap(),
        b"api 1.0.0 build 1"
    );
    // Now the same inputs succeeded in staging, prod is planned clean and deployed.
    let (code, out, err) = remote(
        a,
        dev,
        release.path(),
        &["deploy", "-f", &spec, "--env", "prod"],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// A gzip'd tar of `entries` (path, bytes), paths written as given — `../` included,
/// which the `tar` crate's safe API refuses to write, so the name goes in the raw header.
fn hostile_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_bundle_changed_on_the_way_or_escaping_its_directory_is_refused() {
    let world = World::sqlite();
    let mut people = People::new(&world.store, "alice");
    people.add("vic", "viewer", "live");
    let server = world.serve();
    let a = server.addr.as_str();
    let auth = format!("Bearer {}", people.token("alice"));
    let release = process_release("1.0.0");
    let packed = slipway_package::bundle::pack(&release.path().join("release.yaml")).unwrap();

    // Declared as other bytes than those that arrived: refused, nothing stored.
    let mut tampered = packed.bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let (status, v) = post(
        a,
        "/api/v1/bundles?environment=live",
        &tampered,
        &[
            ("Authorization", &auth),
            ("X-Slipway-Bundle-Sha256", &packed.sha256),
        ],
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("changed on the way"),
        "{v}"
    );
    let (status, v) = post(
        a,
        "/api/v1/runs",
        format!(
            r#"{{"bundle": "{}", "environment": "live"}}"#,
            packed.sha256
        )
        .as_bytes(),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(status, 404, "the refused bundle was not stored: {v}");

    // An entry named `../…`: refused whole, nothing written outside (or inside).
    let evil = hostile_tar(&[
        ("release.yaml", b"kind: Release\n"),
        ("../escaped.txt", b"outside"),
    ]);
    let (status, v) = post(
        a,
        "/api/v1/bundles?environment=live",
        &evil,
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("../escaped.txt"),
        "{v}"
    );
    let bundles = world.dir.path().join("bundles");
    assert!(
        !bundles.join("escaped.txt").exists() && !world.dir.path().join("escaped.txt").exists()
    );
    assert!(
        std::fs::read_dir(&bundles).unwrap().next().is_none(),
        "nothing of a refused bundle stays"
    );

    // A viewer may not upload; the deployer's upload of the real bytes is kept.
    let (status, v) = post(
        a,
        "/api/v1/bundles?environment=live",
        &packed.bytes,
        &[("Authorization", &format!("Bearer {}", people.token("vic")))],
    );
    assert_eq!(status, 403, "{v}");
    let (status, v) = post(
        a,
        "/api/v1/bundles?environment=live",
        &packed.bytes,
        &[
            ("Authorization", &auth),
            ("X-Slipway-Bundle-Sha256", &packed.sha256),
        ],
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["digest"], packed.sha256.as_str());
    assert_eq!(v["spec"], "release.yaml");
}

#[test]
fn on_postgres_a_bundle_uploaded_to_one_server_is_deployed_through_another() {
    use crate::postgres_store_cli::pg::pg;
    let world = World::on(pg().new_db("bundles"));
    let people = People::new(&world.store, "alice");
    let first = world.serve();
    let second = world.serve();
    let auth = format!("Bearer {}", people.token("alice"));
    let release = exec_release();
    let packed = slipway_package::bundle::pack(&release.path().join("release.yaml")).unwrap();
    let (status, v) = post(
        &first.addr,
        "/api/v1/bundles?environment=staging",
        &packed.bytes,
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = post(
        &second.addr,
        "/api/v1/runs",
        format!(
            r#"{{"bundle": "sha256:{}", "environment": "staging"}}"#,
            packed.sha256
        )
        .as_bytes(),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    );
    assert!(status == 202 || status == 200, "{status} {v}");
    let run = v["run"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, out, err) = loop {
        let r = remote(
            &first.addr,
            people.token("alice"),
            release.path(),
            &["wait", &run, "--timeout", "20"],
        );
        if r.0 != 8 || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(code, 0, "{out}{err}");
}

/// Several servers on one PostgreSQL (issue 16 part 3): the server driving a canary is
/// killed with SIGKILL mid-canary while a client keeps requesting the service through its
/// proxy; the other server takes the run over (its claim freed by the dead process),
/// continues the canary where the journal says and finishes it; no request fails. The
/// measured takeover time (kill to the second server driving) is printed for BENCHMARKS.md.
#[test]
fn a_server_killed_mid_canary_is_taken_over_by_another_and_no_request_fails() {
    use crate::postgres_store_cli::pg::pg;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let world = World::on(pg().new_db("takeover"));
    let people = People::new(&world.store, "alice");
    let alice = people.token("alice");
    let mut first = world.serve_with(&["--takeover-interval", "200ms"]);
    let second = world.serve_with(&["--takeover-interval", "200ms"]);
    let v1 = process_release("1.0.0");
    let (code, out, err) = remote(
        &first.addr,
        alice,
        v1.path(),
        &["deploy", "-f", &spec_of(&v1), "--env", "live"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let proxy = slipway_providers::remote::read_state(
        &world
            .dir
            .path()
            .join(".slipway/process/live/proxies/api.json"),
    )
    .expect("the first deploy started the api proxy");
    let traffic = proxy.traffic.to_string();

    // Live traffic for the whole takeover.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        std::sync::Arc::new(AtomicU64::new(0)),
        std::sync::Arc::new(AtomicU64::new(0)),
    );
    let client = {
        let (stop, ok, failed, traffic) =
            (stop.clone(), ok.clone(), failed.clone(), traffic.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match get_body(&traffic, "/version") {
                    Some(b) if b.trim() == "1.0.0" || b.trim() == "1.1.0" => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let v2 = canary_release("1.1.0");
    let (code, out, err) = remote(
        &first.addr,
        alice,
        v2.path(),
        &["deploy", "-f", &spec_of(&v2), "--env", "live", "--detach"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().to_owned();
    // Until the canary takes 20% of the traffic (then it pauses).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = remote(
            &second.addr,
            alice,
            v2.path(),
            &["logs", &run, "--output", "json"],
        );
        if out.contains("\"weight\":20") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.child.kill().unwrap();
    let killed = Instant::now();
    first.child.wait().unwrap();
    // The second server drives it now.
    let took_over = loop {
        let (_, out, _) = remote(
            &second.addr,
            alice,
            v2.path(),
            &["status", &run, "--output", "json"],
        );
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if v["driven"] == true {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not taken over: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("takeover after kill -9: {} ms", took_over.as_millis());
    let (code, out, err) = remote(
        &second.addr,
        alice,
        v2.path(),
        &["wait", &run, "--timeout", "60"],
    );
    assert_eq!(code, 0, "{out}{err}");
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the takeover"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert_eq!(
        get_body(&traffic, "/version").as_deref().map(str::trim),
        Some("1.1.0")
    );
    // The journal says the canary continued where it was, under the second server.
    let (_, out, _) = remote(&second.addr, alice, v2.path(), &["logs", &run]);
    assert!(out.contains("canary continues at step"), "{out}");
    let metrics = get_body(&second.addr, "/metrics").unwrap();
    assert!(
        metrics.contains("slipway_run_takeovers_total 1"),
        "{metrics}"
    );
}

/// [`process_release`] with a canary: 20%, a 2 s pause, 50%, a 1 s pause, 100%.
fn canary_release(version: &str) -> tempfile::TempDir {
    let d = process_release(version);
    let spec = d.path().join("release.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!(
            "{text}    strategy:
      canary:
        steps:
          - set_weight: 20
          - pause: 2s
          - set_weight: 50
          - pause: 1s
          - set_weight: 100
"
        ),
    )
    .unwrap();
    d
}
