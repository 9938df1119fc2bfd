//! The one integration-test binary of the CLI: real `slipway` processes, real files.
#![allow(
    clippy::disallowed_methods,
    reason = "tests start real processes and read the real clock directly"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

mod ab_routes_cli;
mod access_enforced_cli;
mod admin_server_cli;
mod archive_cli;
mod archive_reports_cli;
mod artifact_cli;
mod browser_cli;
mod canary_cli;
mod change_cli;
mod check_cli;
mod checklist_cli;
mod checks_gate_cli;
mod ci_examples_cli;
mod compat_plan_cli;
mod config_cli;
mod config_process_cli;
mod console_cli;
mod container_cli;
mod crash;
mod demo_cli;
mod dry_run_cli;
mod evidence_cli;
mod fleet_canary_bench;
mod fleet_nginx_cli;
mod front_door_cli;
mod gate_conformance_cli;
mod gates_cli;
mod infra_cli;
mod lease_cli;
mod metrics_cli;
mod migrate_deploy_cli;
mod migration_locks_cli;
mod parity_cli;
mod perf_baseline_cli;
mod plan_cli;
mod policy_cli;
mod postgres_store_cli;
mod prestage_cli;
mod probe_cli;
mod process_target_cli;
mod promotion_cli;
mod readiness_cli;
mod readiness_ssh_cli;
mod rehearse_cli;
mod render_cli;
mod report_cli;
mod rollback_cli;
mod rollback_matrix_cli;
mod router_cli;
mod routes_router_cli;
mod secret_cli;
mod serve_cli;
mod server_deploy_cli;
mod server_mode_cli;
mod server_store_cli;
mod serving_cli;
mod smoke_cli;
mod ssh_cli;
mod ssh_lifecycle_cli;
mod ssh_service_cli;
mod supply_cli;
mod tls_check_cli;
mod tokens_cli;
mod truth_cli;
mod verification_cli;

/// Every `.rs` file in tests/ must be a module of this runner, or it would never run.
#[test]
fn no_test_file_is_forgotten() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let runner = std::fs::read_to_string(dir.join("runner.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs")
            && stem != "runner"
        {
            assert!(
                runner.contains(&format!("mod {stem};")),
                "tests/{name} is not listed in tests/runner.rs"
            );
        }
    }
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test's directory with `bin/demo-app`: a shim running `slipway demo-app`, for specs
/// whose services run `demo-app` with `<dir>/bin` on PATH.
pub fn demo_app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_executable(
        &bin.join("demo-app"),
        &format!(
            "#!/bin/sh\nexec '{}' demo-app \"$@\"\n",
            assert_cmd::cargo::cargo_bin("slipway").display()
        ),
    );
    dir
}

/// Writes an executable file through a `sh` child, never holding a write descriptor on it
/// in this process: one held here while another test thread forks is inherited by that
/// child until its exec, and running the file in that moment fails with "Text file busy"
/// (ETXTBSY), which the suite met under load.
pub fn write_executable(path: &std::path::Path, content: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "writing {}",
        path.display()
    );
}

/// A `slipway` command with a clean, deterministic environment.
pub fn slipway() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("slipway").unwrap();
    c.current_dir(repo())
        .env_remove("SLIPWAY_OUTPUT")
        .env_remove("SLIPWAY_STORE")
        .env("NO_COLOR", "1");
    c
}

/// A live process found by [`marked`].
#[derive(Debug)]
pub struct Marked {
    pub pid: u32,
    pub argv: Vec<String>,
    pub environ: std::collections::BTreeMap<String, String>,
}

/// Live (non-zombie) processes a test caused, however deep, found without pid files: the
/// `slipway` processes it started with `var=mark` in their environment, and — `mark`
/// being the test's own directory — every process working in it or given a path in it.
/// The latter is how a proxy (`--state DIR/...`) and an instance (its working directory
/// is the spec's) are found: they start from a cleared environment, so the mark never
/// reaches them.
pub fn marked(var: &str, mark: &str) -> Vec<Marked> {
    let under = |p: &str| {
        p.strip_prefix(mark)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let environ: std::collections::BTreeMap<String, String> = raw
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let argv: Vec<String> = std::fs::read(e.path().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if environ.get(var).map(String::as_str) != Some(mark)
            && !under(&cwd)
            && !argv.iter().any(|a| under(a))
        {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            continue;
        }
        found.push(Marked { pid, argv, environ });
    }
    found
}

/// SIGKILL every process [`marked`] finds: what a test's guard does when it ends, so
/// nothing the test caused outlives it.
pub fn kill_marked(var: &str, mark: &str) {
    for m in marked(var, mark) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &m.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The people of a store with access control on, each acting through their own API token
/// (identity is verified, never declared): the first is the bootstrap admin (`access grant
/// user:NAME admin --env '*'` as the local user, which prints that admin's first token);
/// [`People::add`] grants others a role and issues their tokens as that admin.
pub struct People {
    store: String,
    dir: std::path::PathBuf,
    admin: String,
    tokens: std::collections::BTreeMap<String, String>,
}

impl People {
    /// Switch access control on in `store` with `admin` as the first admin.
    pub fn new(store: &str, admin: &str) -> Self {
        let dir = std::env::temp_dir();
        let o = slipway()
            .env("SLIPWAY_STORE", store)
            .env_remove("SLIPWAY_TOKEN")
            .args([
                "access",
                "grant",
                &format!("user:{admin}"),
                "admin",
                "--env",
                "*",
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "bootstrap grant: {o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let token = v["token"]
            .as_str()
            .expect("the first grant prints a token")
            .to_owned();
        Self {
            store: store.to_owned(),
            dir,
            admin: admin.to_owned(),
            tokens: [(admin.to_owned(), token)].into(),
        }
    }

    /// Grant `who` `role` in `env` (as the admin) and give them a token.
    pub fn add(&mut self, who: &str, role: &str, env: &str) -> &mut Self {
        let admin = self.admin.clone();
        self.ok(
            &admin,
            &[
                "access",
                "grant",
                &format!("user:{who}"),
                role,
                "--env",
                env,
            ],
        );
        if !self.tokens.contains_key(who) {
            let o = self
                .cmd(&admin)
                .args([
                    "access", "token", "create", "--user", who, "--output", "json",
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "token for {who}: {o:?}");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            self.tokens
                .insert(who.to_owned(), v["token"].as_str().unwrap().to_owned());
        }
        self
    }

    /// Put `who` in `group` (as the admin).
    pub fn group(&mut self, group: &str, who: &str) -> &mut Self {
        let admin = self.admin.clone();
        self.ok(&admin, &["access", "group", "add", group, who]);
        self
    }

    /// `who`'s token.
    pub fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    /// `slipway` acting as `who`, on the store, in the temp directory.
    pub fn cmd(&self, who: &str) -> assert_cmd::Command {
        let mut c = slipway();
        c.current_dir(&self.dir)
            .env("SLIPWAY_STORE", &self.store)
            .env("SLIPWAY_TOKEN", self.token(who));
        c
    }

    /// Run `args` as `who`; must succeed; stdout.
    pub fn ok(&self, who: &str, args: &[&str]) -> String {
        let o = self.cmd(who).args(args).output().unwrap();
        assert!(o.status.success(), "{who}: {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}
