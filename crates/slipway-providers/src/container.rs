//! Container instances of the `process` target: a service whose `run.image` is set runs
//! each instance as a podman container (rootful, `runc`, host network) instead of a
//! command — with the same instance naming, state files, readiness probes, canary and
//! rollback as a process (see [`crate::process`]).
//!
//! **An instance is a foreground `podman run`.** The `podman` client stays attached for
//! the container's life, in the instance's own process group with its output going to the
//! instance's log, so everything the process target does with an instance (pid + start
//! time as identity, surviving `slipway`, the log, "exited before it was ready") holds
//! unchanged. The container itself is a child of podman's `conmon`, not of the client, so
//! two things differ and are handled here: the listener a probe reaches belongs to the
//! container's init process (its own session, whose host pid `podman inspect` gives), and
//! stopping goes through `podman rm -f -t GRACE` — SIGTERM to the container, SIGKILL after
//! the grace, then removal — since killing the client would leave the container running.
//!
//! **Images are pinned.** An image comes from the service's verified artifact in the
//! artifact store (`oci:<layout>` or `oci-archive:<file>`) or from a registry reference
//! pinned by digest (validation refuses a tag). It is pulled into podman's storage once per
//! launch and every instance runs it by **image id** (the config's sha256), recorded with
//! the manifest digest in the version's launch record: a rollback relaunches exactly that
//! image — pulled again from the same content-addressed source if someone removed it, and
//! refused if the source no longer gives the same id.
//!
//! **Nothing secret on a command line.** The container's environment (the launch's, plus
//! `PORT`) goes through a 0600 `--env-file`, never `--env`, which anyone could read in
//! `/proc/PID/cmdline`; the `podman` client itself gets only the host allowlist
//! ([`crate::process::host_env`]). A version's rendered config directory is mounted
//! read-only at the same path, so `SLIPWAY_CONFIG_DIR` means the same inside.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_rollout::RolloutError;

/// The OCI runtime: `crun` refuses the hybrid cgroup setup of the machines this runs on,
/// `runc` works on both (TESTING.md).
const RUNTIME: &str = "runc";

/// The image a container version runs, as its launch record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// Where podman pulls it from: `oci:<digest>`, `oci-archive:<digest>` (the artifact
    /// store's copy, relative to `pull_dir`) or `docker://<registry reference pinned by
    /// digest>`.
    pub source: String,
    /// The directory a pull runs in: the artifact store's `sha256/`. Relative because
    /// podman 4 names an image pulled from a layout after its path, and refuses the
    /// path of a store under a directory with capitals or a leading dot (a temporary
    /// directory, `/home/Ann`) as "invalid reference format"; a digest is always a valid
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_dir: Option<PathBuf>,
    /// The manifest digest it must have before it runs (`sha256:<hex>`), when known
    /// before pulling: a registry reference's, an OCI layout artifact's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_digest: Option<String>,
    /// podman's image id (sha256 of the image config) every instance runs; set by the
    /// first start of the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The manifest digest podman reports for it (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Arguments after the entrypoint (`run.command` split; `{{ port }}` filled per
    /// instance). Empty: the image's own `Cmd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `--tls-verify=false` for the registry (a plain-HTTP registry on loopback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_registry: bool,
}

fn err(message: String) -> RolloutError {
    RolloutError::Instances(message)
}

/// A `podman` command with only the host allowlist in its environment.
fn podman() -> tokio::process::Command {
    podman_in(None)
}

fn podman_in(dir: Option<&Path>) -> tokio::process::Command {
    let mut cmd = slipway_stdx::tokio_command("podman");
    cmd.env_clear()
        .envs(crate::process::host_env(&[
            "CONTAINERS_REGISTRIES_CONF".to_owned(),
            "CONTAINERS_CONF".to_owned(),
            "CONTAINERS_STORAGE_CONF".to_owned(),
        ]))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs podman to completion within `limit`: stdout on success, else a message naming
/// what it was asked and what it said.
async fn podman_output(args: &[&str], limit: Duration) -> Result<String, String> {
    podman_output_in(None, args, limit).await
}

async fn podman_output_in(
    dir: Option<&Path>,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let run = podman_in(dir).args(args).output();
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Ok(o)) => Err(format!(
            "`podman {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!(
            "cannot run podman ({e}); install it (`apt-get install podman runc`) to run container services"
        )),
        Err(_) => Err(format!(
            "`podman {}` did not finish within {limit:?}",
            args.join(" ")
        )),
    }
}

/// How long pulling an image may take (a large image from a slow registry).
const PULL_LIMIT: Duration = Duration::from_secs(600);
/// How long a quick podman query may take.
const QUERY_LIMIT: Duration = Duration::from_secs(30);

/// Makes sure the image is in podman's storage and pinned: pulls it when its id is not
/// known or no longer present, and checks the manifest digest (and, on a relaunch, the
/// id) against what the launch expects. Fills `id` and `digest`.
pub async fn ensure_image(image: &mut ContainerImage, what: &str) -> Result<(), RolloutError> {
    if let Some(id) = &image.id
        && podman_output(&["image", "exists", id], QUERY_LIMIT)
            .await
            .is_ok()
    {
        return Ok(());
    }
    let mut args = vec!["pull", "-q"];
    if image.insecure_registry {
        args.push("--tls-verify=false");
    }
    args.push(&image.source);
    let out = podman_output_in(image.pull_dir.as_deref(), &args, PULL_LIMIT)
        .await
        .map_err(|e| err(format!("pull the image of {what}: {e}")))?;
    let pulled = out
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            err(format!(
                "pull the image of {what}: podman printed no image id ({})",
                out.trim()
            ))
        })?
        .to_owned();
    if let Some(recorded) = &image.id
        && *recorded != pulled
    {
        return Err(err(format!(
            "{what} ran image {recorded}, but {} now gives image {pulled}: not running another image under its name; deploy it anew",
            image.source
        )));
    }
    let digest = podman_output(
        &["image", "inspect", "--format", "{{.Digest}}", &pulled],
        QUERY_LIMIT,
    )
    .await
    .map_err(|e| err(format!("inspect the image of {what}: {e}")))?
    .trim()
    .to_owned();
    if let Some(expected) = &image.expect_digest
        && *expected != digest
    {
        return Err(err(format!(
            "the image of {what} from {} has manifest digest {digest}, not the pinned {expected}; refused",
            image.source
        )));
    }
    image.id = Some(pulled);
    image.digest = Some(digest);
    Ok(())
}

/// The container's name for an instance: unique per instances directory (so two
/// environments on one machine never replace each other's containers) and within
/// podman's alphabet.
pub fn container_name(instances_dir: &Path, instance_id: &str) -> String {
    // Canonical: a store named by another relative path or through a link is the same
    // store, and must find the same containers.
    let dir = std::fs::canonicalize(instances_dir)
        .or_else(|_| std::path::absolute(instances_dir))
        .unwrap_or_else(|_| instances_dir.to_owned());
    let scope = slipway_package::digest::sha256_bytes(dir.as_os_str().as_encoded_bytes());
    let id: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("slipway-{}-{id}", &scope[..10])
}

/// The hard limit of open files of this process: what `--ulimit nofile` may ask for
/// without CAP_SYS_RESOURCE (20,000 on the CI machines), at most 1,048,576.
pub fn nofile_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(_, hard)| hard.min(1 << 20))
}

/// The process limit a container asks for: this process's hard limit, at most 32,768.
/// Without `--ulimit nproc` podman asks runc for more than it may set here and the start
/// fails ("error setting rlimit type 6: operation not permitted"); measured on the CI
/// machines, 32,768 is the most runc was allowed whatever the shell's own hard limit
/// (96,367) said.
pub fn nproc_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .map_or(4096, |(_, hard)| hard.min(32_768))
}

/// Writes the container's environment file (0600; one `NAME=value` a line).
pub fn write_env_file(
    path: &Path,
    env: &std::collections::BTreeMap<String, String>,
    port: u16,
) -> Result<(), RolloutError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = format!("PORT={port}\n");
    for (k, v) in env {
        if k.contains(['=', '\n']) || v.contains('\n') {
            return Err(err(format!(
                "the container environment variable `{k}` has a line break or `=` in its name or a line break in its value, which podman's env file cannot carry"
            )));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())
    };
    write().map_err(|e| err(format!("write {}: {e}", path.display())))
}

/// The `podman run` of one instance, in the foreground (see the module docs).
pub fn run_command(
    image: &ContainerImage,
    name: &str,
    port: u16,
    env_file: &Path,
    config_dir: Option<&PathBuf>,
    labels: &[(&str, &str)],
) -> Result<tokio::process::Command, RolloutError> {
    let id = image
        .id
        .as_deref()
        .ok_or_else(|| err(format!("{name}: the image was not pulled before the start")))?;
    let limit = nofile_limit();
    let mut cmd = podman();
    cmd.args([
        "run",
        "--rm",
        "--replace",
        "--pull",
        "never",
        "--name",
        name,
    ])
    .args(["--runtime", RUNTIME, "--network", "host"])
    .arg(format!("--ulimit=nofile={limit}:{limit}"))
    .arg(format!("--ulimit=nproc={0}:{0}", nproc_limit()))
    .arg(format!("--env-file={}", env_file.display()));
    for (k, v) in labels {
        cmd.arg(format!("--label={k}={v}"));
    }
    if let Some(dir) = config_dir {
        cmd.arg(format!("--volume={0}:{0}:ro", dir.display()));
    }
    cmd.arg(id);
    let port = port.to_string();
    cmd.args(
        image
            .args
            .iter()
            .map(|a| a.replace("{{ port }}", &port).replace("{{port}}", &port)),
    );
    Ok(cmd)
}

/// The host pid of a running container's init process, `None` while it has none.
pub async fn container_pid(name: &str) -> Option<u32> {
    podman_output(
        &["container", "inspect", "--format", "{{.State.Pid}}", name],
        QUERY_LIMIT,
    )
    .await
    .ok()?
    .trim()
    .parse()
    .ok()
    .filter(|p| *p > 0)
}

/// What a running container runs: (image id, manifest digest). For status and tests.
pub async fn running_image(name: &str) -> Option<(String, String)> {
    let out = podman_output(
        &[
            "container",
            "inspect",
            "--format",
            "{{.Image}} {{.ImageDigest}}",
            name,
        ],
        QUERY_LIMIT,
    )
    .await
    .ok()?;
    let mut parts = out.split_whitespace();
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// Stops and removes a container: SIGTERM, SIGKILL after `grace`, removed; nothing when
/// it is gone already.
pub async fn remove(name: String, grace: Duration) {
    let secs = grace.as_secs().max(1).to_string();
    let _ = podman_output(
        &["rm", "--force", "--ignore", "--time", &secs, &name],
        grace + QUERY_LIMIT,
    )
    .await;
}
