//! Container services through the real `slipway` binary and real rootful podman (runc,
//! host network): images built by `slipway package image` from a directory holding the
//! demo-app binary and the libraries it loads, verified as artifacts, run as instances
//! behind the built-in proxy; a bad image's canary rolled back by itself, a good one
//! promoted, and a rollback by hand relaunching the previous image digest — pulled again
//! from the artifact store after someone removed it from podman's storage; the same
//! behind a real HAProxy; images from a real registry pinned by digest; a probe that never
//! passes keeping a container out of traffic; an abort stopping a canary container.
//!
//! Skipped, saying why, only where podman cannot run a container at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::canary_cli::Env;

/// Why podman cannot run containers here, if it cannot.
fn podman_unusable() -> Option<String> {
    match Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
    {
        Err(e) => Some(format!(
            "podman is not installed ({e}); `apt-get install podman runc` (scripts/test.sh does)"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "`podman info` fails: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Ok(_) => None,
    }
}

/// The demo-app binary, built once (as the providers' tests build it).
fn demo_app_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-q", "-p", "demo-app", "--bin", "demo-app"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building demo-app failed");
    });
    profile_dir.join("demo-app")
}

/// A root file system with demo-app at /bin/demo-app and every library it loads at its
/// own path (what `ldd` lists), so the image needs no base image; `test` names the test in
/// `/etc/slipway-test`, so each test's images have digests of their own (images are
/// deterministic: tests running at once would otherwise share them, and one test
/// removing its image would take the others' away).
fn rootfs(at: &Path, test: &str) {
    let bin = demo_app_bin();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    copy(&bin, &at.join("bin/demo-app"));
    std::fs::create_dir_all(at.join("etc")).unwrap();
    std::fs::write(at.join("etc/slipway-test"), test).unwrap();
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            copy(Path::new(p), &at.join(p.trim_start_matches('/')));
        }
    }
}

/// `slipway package image` of `root` as api `version`, with `entrypoint`: the digest.
fn package_image(env: &Env, root: &Path, version: &str, entrypoint: &[&str]) -> String {
    let out = env.path().join(format!("img-{version}"));
    let mut args = vec![
        "package".to_owned(),
        "image".into(),
        root.display().to_string(),
        "--name".into(),
        "api".into(),
        "--version".into(),
        version.into(),
        "-o".into(),
        out.display().to_string(),
        "--output".into(),
        "json".into(),
    ];
    for e in entrypoint {
        args.push(format!("--entrypoint={e}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = env.run(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v["manifest_digest"].as_str().unwrap().to_owned()
}

/// A release of `api` at `version` running the image artifact `img-<version>`.
fn spec(env: &Env, version: &str, digest: &str, readiness: &str) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    artifact: {{ path: img-{version}, sha256: \"{digest}\" }}
    run:
      image: artifact
      command: \"--port {{{{ port }}}} --version {{{{ version }}}} --threads 1\"
      replicas: 2
    readiness: {{ http: {readiness}, timeout: 2s, deadline: 20s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
    strategy:
      canary:
        steps:
          - set_weight: 20
          - analysis: {{ template: golden, duration: 3s }}
          - set_weight: 100
analysis_templates:
  golden:
    interval: 250ms
    min_samples: 5
    failure_limit: 0
    inconclusive_limit: 3
    metrics:
      - {{ name: error-rate, max: 0.05 }}
      - {{ name: p99-latency, max: 500ms }}
    on_failure: rollback
"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Removes this test's containers however it ends (the `Env` kills the attached podman
/// clients, which would leave the containers running).
struct Containers {
    prefix: String,
}

impl Containers {
    fn new(env: &Env) -> Self {
        let dir = env.path().join("process/live/instances");
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            prefix: slipway_providers::container::container_name(&dir, ""),
        }
    }

    /// Running containers of this test: name → manifest digest of its image.
    fn running(&self, rt: &tokio::runtime::Runtime) -> BTreeMap<String, String> {
        let out = Command::new("podman")
            .args(["ps", "--format", "{{.Names}}"])
            .output()
            .unwrap();
        let mut found = BTreeMap::new();
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if name.starts_with(&self.prefix)
                && let Some((_, digest)) =
                    rt.block_on(slipway_providers::container::running_image(name))
            {
                found.insert(name.to_owned(), digest);
            }
        }
        found
    }

    /// Waits (bounded) until the running containers' image digests are `want` (digest →
    /// count).
    fn expect(&self, rt: &tokio::runtime::Runtime, want: &[(&str, usize)]) {
        let want: BTreeMap<String, usize> = want
            .iter()
            .map(|(d, n)| (format!("sha256:{d}"), *n))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut have = BTreeMap::new();
            for d in self.running(rt).values() {
                *have.entry(d.clone()).or_insert(0) += 1;
            }
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containers run {have:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let out = Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output();
        if let Ok(out) = out {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                if name.starts_with(&self.prefix) {
                    let _ = Command::new("podman")
                        .args(["rm", "-f", "-t", "0", name])
                        .output();
                }
            }
        }
    }
}

fn run_id(v: &serde_json::Value) -> String {
    v["run"].as_str().unwrap().to_owned()
}

#[test]
fn a_bad_image_is_rolled_back_a_good_one_promoted_and_a_rollback_relaunches_the_previous_digest() {
    if let Some(why) = podman_unusable() {
        eprintln!("SKIPPED: container services need podman: {why}");
        return;
    }
    let env = Env::new();
    let containers = Containers::new(&env);
    let root = env.path().join("rootfs");
    rootfs(&root, "rollback");
    let d1 = package_image(&env, &root, "1.0.0", &["/bin/demo-app"]);
    // The bad image: every request answered 500, baked into its entrypoint.
    let d2 = package_image(
        &env,
        &root,
        "2.0.0",
        &["/bin/demo-app", "--error-rate", "1.0"],
    );
    let d3 = package_image(&env, &root, "3.0.0", &["/bin/demo-app"]);
    assert_ne!(d1, d3, "the version label makes another image");

    // 1.0.0: nothing to canary against, a straight start of two containers.
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &d1, "/ready"));
    assert_eq!(code, 0, "{v}\n{err}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    let users = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(env.proxy().traffic, "/", 200, 4)
    };

    // 2.0.0 answers 500s: its canary is rolled back by itself, the 1.0.0 image serves.
    let (code, v, err) = env.deploy(&spec(&env, "2.0.0", &d2, "/ready"));
    assert_eq!(code, 4, "{v}\n{err}");
    assert_eq!(v["state"], "rolled_back", "{v}");
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
    containers.expect(&env.rt, &[(&d1, 2)]);

    // 3.0.0 is good: promoted, its image's containers serve everything.
    let (code, v3, err) = env.deploy(&spec(&env, "3.0.0", &d3, "/ready"));
    assert_eq!(code, 0, "{v3}\n{err}");
    assert_eq!(v3["state"], "succeeded", "{v3}");
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("3.0.0".to_owned(), 20)])
    );
    containers.expect(&env.rt, &[(&d3, 2)]);
    let journal = env.journal(&run_id(&v3));
    assert!(journal.contains(&format!("sha256:{d3}")), "{journal}");

    // Someone cleans podman's storage; the rollback still relaunches 1.0.0's image —
    // the same digest, pulled again from the artifact store — as 1.0.0's run launched it.
    let launch: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.path()
                .join("process/live/instances/launch/api@1.0.0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let image_id = launch["image"]["id"].as_str().unwrap().to_owned();
    let gone = Command::new("podman")
        .args(["rmi", &image_id])
        .output()
        .unwrap();
    assert!(gone.status.success(), "{gone:?}");
    let (code, out, err) = env.run(&[
        "rollback",
        &run_id(&v3),
        "--reason",
        "3.0.0 confuses users",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    for name in containers.running(&env.rt).keys() {
        let (id, _) = env
            .rt
            .block_on(slipway_providers::container::running_image(name))
            .unwrap();
        assert_eq!(id, image_id, "{name} runs another image than 1.0.0 ran");
    }
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 100, "{stats:?}");
    // Users saw only what the bad canary's share answered before the guard cut it off.
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.server_errors < 50, "{stats:?}");
}

#[test]
fn a_container_that_never_passes_its_readiness_probe_gets_no_traffic_and_an_abort_stops_the_canary()
{
    if let Some(why) = podman_unusable() {
        eprintln!("SKIPPED: container services need podman: {why}");
        return;
    }
    let env = Env::new();
    let containers = Containers::new(&env);
    let root = env.path().join("rootfs");
    rootfs(&root, "readiness");
    let d1 = package_image(&env, &root, "1.0.0", &["/bin/demo-app"]);
    let d2 = package_image(&env, &root, "2.0.0", &["/bin/demo-app"]);
    let (code, v, err) = env.deploy(&spec(&env, "1.0.0", &d1, "/ready"));
    assert_eq!(code, 0, "{v}\n{err}");
    let users = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(env.proxy().traffic, "/", 200, 2)
    };
    // 2.0.0's probe asks a path demo-app answers 404: never ready, never routed to.
    let spec2 = spec(&env, "2.0.0", &d2, "/nowhere");
    let text = std::fs::read_to_string(&spec2)
        .unwrap()
        .replace("deadline: 20s", "deadline: 3s");
    std::fs::write(&spec2, text).unwrap();
    let (code, v, err) = env.deploy(&spec2);
    assert_ne!(code, 0, "{v}\n{err}");
    let text = format!("{v}{err}");
    assert!(text.contains("not ready"), "{text}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 20, "{stats:?}");
    assert_eq!(stats.server_errors + stats.failed, 0, "{stats:?}");
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );

    // An abort while the canary container serves its share: it is stopped and removed,
    // the run ends aborted, 1.0.0's containers keep serving.
    let d3 = package_image(&env, &root, "3.0.0", &["/bin/demo-app"]);
    let spec3 = spec(&env, "3.0.0", &d3, "/ready");
    // The canary must still be analysing when the abort comes: a long analysis, and no
    // pause for too little traffic (a starved load generator under CI load made windows
    // short of min_samples, the canary paused first and the deploy exited 5, not 6).
    let text = std::fs::read_to_string(&spec3)
        .unwrap()
        .replace("duration: 3s", "duration: 60s")
        .replace("inconclusive_limit: 3", "inconclusive_limit: 100000");
    std::fs::write(&spec3, text).unwrap();
    let mut deploy = env.spawn_deploy(&spec3, "deploy-3.0.0");
    let run = env.wait_journal("3.0.0", "\"weight\":20");
    containers.expect(&env.rt, &[(&d1, 2), (&d3, 2)]);
    let (code, out, err) = env.run(&["abort", &run]);
    assert_eq!(code, 0, "{out}\n{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = deploy.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the deploy never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(6), "{status:?}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    assert_eq!(
        env.versions_served(20),
        BTreeMap::from([("1.0.0".to_owned(), 20)])
    );
}

/// A real registry (Debian's `docker-registry`) on a free loopback port, stopped by pid.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: error }}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-registry ({e}); `apt-get install docker-registry`")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    /// Pushes an OCI layout as `name:tag`, keeping its manifest digest.
    fn push(&self, layout: &Path, name: &str, tag: &str) {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.addr))
            .output()
            .unwrap_or_else(|e| panic!("cannot run skopeo ({e}); `apt-get install skopeo`"));
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A release of `api` at `version` running the registry image `image`.
fn registry_spec(env: &Env, version: &str, image: &str) -> PathBuf {
    let text = format!(
        "apiVersion: slipway/v1
kind: Release
metadata: {{ name: shop, version: {version}, type: patch }}
services:
  api:
    run:
      image: \"{image}\"
      command: \"--port {{{{ port }}}} --version {{{{ version }}}} --threads 1\"
      replicas: 2
    readiness: {{ http: /ready, timeout: 2s, deadline: 20s }}
environments:
  live:
    target: {{ process: {{ stop_grace: 2s }} }}
"
    );
    let p = env.path().join(format!("release-{version}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_registry_image_runs_pinned_by_digest_a_tag_is_refused_and_an_unknown_digest_never_runs() {
    if let Some(why) = podman_unusable() {
        eprintln!("SKIPPED: container services need podman: {why}");
        return;
    }
    let env = Env::new();
    let containers = Containers::new(&env);
    let root = env.path().join("rootfs");
    rootfs(&root, "registry");
    let d1 = package_image(&env, &root, "1.0.0", &["/bin/demo-app"]);
    let registry = Registry::start(env.path());
    registry.push(&env.path().join("img-1.0.0"), "shop/api", "1.0.0");
    let repo = format!("{}/shop/api", registry.addr);

    // A tag can name other bytes tomorrow: refused before anything runs.
    let (code, out, err) = env.run(&[
        "plan",
        "--env",
        "live",
        "-f",
        &registry_spec(&env, "1.0.0", &format!("{repo}:1.0.0"))
            .display()
            .to_string(),
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("is not pinned by digest"),
        "{out}\n{err}"
    );

    // Pinned by digest: pulled, checked, run.
    let (code, v, err) = env.deploy(&registry_spec(
        &env,
        "1.0.0",
        &format!("{repo}@sha256:{d1}"),
    ));
    assert_eq!(code, 0, "{v}\n{err}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );

    // A digest the registry does not have never runs; 1.0.0 keeps serving.
    let missing = "0".repeat(64);
    let (code, v, err) = env.deploy(&registry_spec(
        &env,
        "2.0.0",
        &format!("{repo}@sha256:{missing}"),
    ));
    assert_ne!(code, 0, "{v}\n{err}");
    assert!(
        format!("{v}").contains("pull the image of api 2.0.0"),
        "{v}"
    );
    containers.expect(&env.rt, &[(&d1, 2)]);
    assert_eq!(
        env.versions_served(10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );
}

#[test]
fn behind_haproxy_a_bad_image_is_rolled_back_and_a_good_one_promoted() {
    if let Some(why) = podman_unusable() {
        eprintln!("SKIPPED: container services need podman: {why}");
        return;
    }
    let env = Env::new();
    let containers = Containers::new(&env);
    let h = crate::router_cli::haproxy(env.path());
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], h.port));
    let routed = |version: &str, digest: &str| {
        let p = spec(&env, version, digest, "/ready");
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "    target: { process: { stop_grace: 2s } }\n",
            "    target: { process: { stop_grace: 2s } }\n    router: { haproxy: { socket: admin.sock, backend: app } }\n",
        )
        // HAProxy's counters give error and request rates, no latency samples.
        .replace("      - { name: p99-latency, max: 500ms }\n", "");
        std::fs::write(&p, text).unwrap();
        p
    };
    let root = env.path().join("rootfs");
    rootfs(&root, "haproxy");
    let d1 = package_image(&env, &root, "1.0.0", &["/bin/demo-app"]);
    let d2 = package_image(
        &env,
        &root,
        "2.0.0",
        &["/bin/demo-app", "--error-rate", "1.0"],
    );
    let d3 = package_image(&env, &root, "3.0.0", &["/bin/demo-app"]);

    let (code, v, err) = env.deploy(&routed("1.0.0", &d1));
    assert_eq!(code, 0, "{v}\n{err}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    assert_eq!(
        crate::router_cli::versions_served(front, 10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );
    let users = {
        let _g = env.rt.enter();
        slipway_providers::traffic::Traffic::start(front, "/", 200, 4)
    };

    // The bad image's share of HAProxy's traffic fails: rolled back by itself, HAProxy
    // sends everything to 1.0.0's containers again.
    let (code, v, err) = env.deploy(&routed("2.0.0", &d2));
    assert_eq!(code, 4, "{v}\n{err}");
    assert_eq!(v["state"], "rolled_back", "{v}");
    containers.expect(&env.rt, &[(&d1, 2)]);
    assert_eq!(
        crate::router_cli::versions_served(front, 10),
        BTreeMap::from([("1.0.0".to_owned(), 10)])
    );

    // The good one is promoted through HAProxy's weights.
    let (code, v, err) = env.deploy(&routed("3.0.0", &d3));
    assert_eq!(code, 0, "{v}\n{err}");
    let journal = env.journal(v["run"].as_str().unwrap());
    assert!(journal.contains("\"event\":\"promoted\""), "{journal}");
    containers.expect(&env.rt, &[(&d3, 2)]);
    assert_eq!(
        crate::router_cli::versions_served(front, 20),
        BTreeMap::from([("3.0.0".to_owned(), 20)])
    );
    let stats = env.rt.block_on(users.stop());
    assert!(stats.sent > 100, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
}
