//! The CLI's side of `--server`: a deploy packed into a bundle, uploaded and followed, and
//! the server's JSON answers read back into the typed values the renderers draw (the
//! server writes them from the same `slipway_ops` types).

use std::path::PathBuf;

use serde_json::json;
use slipway_engine::DriveOutcome;
use slipway_model::exit;
use slipway_ops::runs::DriveReport;
use slipway_ops::views;

use crate::cli_util::path_segment;
use crate::cmd_run::DeployArgs;
use crate::out::{CliError, Output};
use crate::progress::event_line;
use crate::run_client::RunClient;
use crate::run_render::{render_drive, render_settled};

/// `slipway --server URL deploy`: pack the spec's directory into a bundle, upload it,
/// start the run on the server, and (unless `--detach`) follow its journal until it ends,
/// pauses or — with `--no-wait` — stops at a gate, exiting with its outcome's code.
pub async fn deploy_remote(
    c: &slipway_server::client::Client,
    a: &DeployArgs,
    out: &Output,
) -> Result<i32, CliError> {
    use slipway_server::client::ClientError;
    let packed = pack(&a.file)?;
    let files = packed.manifest.files.len();
    let digest = packed.sha256.clone();
    let (_, up) = c
        .post_bytes(
            &format!("/bundles?environment={}", path_segment(&a.env)),
            packed.bytes,
            &[(slipway_server::BUNDLE_DIGEST_HEADER, digest.as_str())],
        )
        .await?;
    if !out.json() {
        out.eline(&format!(
            "bundle sha256:{digest} ({files} files, {} bytes) {} {}",
            up["size"].as_u64().unwrap_or_default(),
            if up["stored"] == json!(true) {
                "uploaded to"
            } else {
                "already on"
            },
            c.server()
        ));
    }
    let body = json!({
        "bundle": digest,
        "environment": a.env,
        "no_wait": a.no_wait,
        "wait": a.wait,
        "override_freeze": if a.override_freeze { a.reason.clone() } else { None },
        "override_promotion": if a.override_promotion { a.reason.clone() } else { None },
    });
    let (status, doc) = match c.post("/runs", &body).await {
        Ok(r) => r,
        Err(ClientError::Api {
            status,
            error,
            fix,
            body,
        }) if body["findings"].is_array() => {
            // The refusal with its findings, as a local deploy shows them.
            let e = CliError::from(ClientError::Api {
                status,
                error,
                fix,
                body: body.clone(),
            });
            if out.json() {
                out.json_value(&json!({
                    "ok": false,
                    "exit_code": e.code,
                    "error": e.message,
                    "hint": e.hint,
                    "findings": body["findings"],
                }));
                return Err(CliError::new(e.code, "", None));
            }
            for f in body["findings"].as_array().into_iter().flatten() {
                out.eline(&format!(
                    "finding {} ({}): {}",
                    f["code"].as_str().unwrap_or_default(),
                    f["severity"].as_str().unwrap_or_default(),
                    f["message"].as_str().unwrap_or_default()
                ));
            }
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    };
    if status != 202 {
        let r = drive_from_json(&doc).ok_or_else(|| unexpected(c, &"no drive outcome"))?;
        return Ok(render_drive(&r, &[], out));
    }
    let run = doc["run"]
        .as_str()
        .ok_or_else(|| unexpected(c, &"the run's id is missing"))?
        .to_owned();
    if a.detach {
        if out.json() {
            out.json_value(&json!({"run": run, "detached": true, "driving": "server"}));
        } else {
            out.line(&run);
        }
        return Ok(exit::SUCCESS);
    }
    if !out.json() {
        out.eline(&format!(
            "{} drives run {run}; following it (Ctrl-C stops following, not the run)",
            c.server()
        ));
    }
    let client = RunClient::Remote(c.clone());
    let print = |n: &slipway_engine::Notice| {
        if !out.json()
            && let Some(line) = event_line(n, out)
        {
            out.line(&format!("{} {line}", n.at.strftime("%H:%M:%S")));
        }
    };
    let path = format!("/runs/{}/events", path_segment(&run));
    let events = c.events(&path, |event, data| {
        if event == "journal"
            && let Ok(n) = serde_json::from_str::<slipway_engine::Notice>(data)
        {
            print(&n);
        }
    });
    let mut events = std::pin::pin!(events);
    let (state, code) = tokio::select! {
        // The stream ends once the run is over and every entry was sent.
        streamed = &mut events => {
            streamed?;
            client.settle(&run, None, a.no_wait).await?
        }
        settled = client.settle(&run, None, a.no_wait) => {
            let settled = settled?;
            if settled.0.is_terminal() {
                // The last entries are on their way; the stream ends after them.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut events).await;
            }
            settled
        }
    };
    Ok(render_settled(&run, state, out, code))
}

/// The bundle of `spec`: its directory packed as `slipway_package::bundle` packs it.
pub fn pack(spec: &std::path::Path) -> Result<slipway_package::bundle::Packed, CliError> {
    slipway_package::bundle::pack(spec).map_err(|e| {
        CliError::input(
            format!("failed to pack the bundle of {}: {e}", spec.display()),
            "use a spec whose directory holds only the release's files (no other links out of it, nothing over the size limit)",
        )
    })
}

/// `slipway --server URL plan`: the spec's directory packed as a deploy packs it and
/// planned by the server against its store (`POST /api/v1/plans`, viewer in `env`),
/// nothing kept there. The findings name `spec` as given here.
pub async fn plan_remote(
    c: &slipway_server::client::Client,
    spec: &std::path::Path,
    env: &str,
    override_promotion: Option<&str>,
) -> Result<slipway_model::plan::Plan, CliError> {
    let packed = pack(spec)?;
    let mut path = format!(
        "/plans?environment={}&file={}",
        path_segment(env),
        path_segment(&spec.display().to_string())
    );
    if let Some(r) = override_promotion {
        path.push_str(&format!("&override_promotion={}", path_segment(r)));
    }
    let (_, v) = c
        .post_bytes(
            &path,
            packed.bytes,
            &[(slipway_server::BUNDLE_DIGEST_HEADER, packed.sha256.as_str())],
        )
        .await?;
    serde_json::from_value(v).map_err(|e| unexpected(c, &e))
}

/// The server's answer as `T`, or an error naming the server.
pub fn read<T: serde::de::DeserializeOwned>(
    c: &slipway_server::client::Client,
    v: serde_json::Value,
) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| unexpected(c, &e))
}

/// An answer of the server this version does not read.
pub fn unexpected(c: &slipway_server::client::Client, e: &dyn std::fmt::Display) -> CliError {
    CliError::new(
        exit::INTERNAL,
        format!("failed to read the answer of {}: {e}", c.server()),
        Some("use the same slipway version as the server".into()),
    )
}

/// A drive's outcome as the server reports it (`slipway_server`'s `drive_json`).
pub fn drive_from_json(v: &serde_json::Value) -> Option<DriveReport> {
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    let list =
        |k: &str| -> Vec<String> { serde_json::from_value(v[k].clone()).unwrap_or_default() };
    let outcome = match v["outcome"].as_str()? {
        "finished" => DriveOutcome::Finished(serde_json::from_value(v["state"].clone()).ok()?),
        "paused" => DriveOutcome::Paused,
        "blocked" => DriveOutcome::Blocked {
            gate: v["blocked"]["gate"].as_str()?.to_owned(),
            detail: v["blocked"]["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            opens_at: v["blocked"]["opens_at"]
                .as_str()
                .and_then(|t| t.parse().ok()),
        },
        _ => return None,
    };
    Some(DriveReport {
        run: text("run")?,
        outcome,
        continued: v["continued"].as_bool().unwrap_or(true),
        reason: text("reason"),
        failed_hosts: list("failed_hosts"),
        not_deployed: list("not_deployed"),
    })
}

/// The status document of the server (`slipway_ops::views::RunView` as JSON) as the view
/// `render_status` draws; `None` when it does not read as one.
pub fn run_view_from_json(v: &serde_json::Value) -> Option<views::RunView> {
    use slipway_providers::compose::{ProxyView, RouterView, ServiceTraffic};
    let de = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let values =
        |k: &str| -> Vec<serde_json::Value> { serde_json::from_value(de(k)).unwrap_or_default() };
    let services = v["services"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, s)| {
                    let state = match s["state"].as_str().unwrap_or_default() {
                        "deployed" => "deployed",
                        "not_deployed" => "not_deployed",
                        "in_progress" => "in_progress",
                        "partial" => "partial",
                        _ => "unknown",
                    };
                    (
                        name.clone(),
                        views::ServiceVersion {
                            version: s["version"].as_str().map(str::to_owned),
                            target: s["target"].as_str().unwrap_or_default().to_owned(),
                            previous: s["previous"].as_str().map(str::to_owned),
                            state,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let traffic = v["traffic"].as_object().map(|m| {
        m.iter()
            .map(|(name, t)| {
                let weight =
                    |x: &serde_json::Value| x["weight"].as_u64().and_then(|w| u8::try_from(w).ok());
                (
                    name.clone(),
                    ServiceTraffic {
                        proxy: t["proxy"].as_object().map(|_| ProxyView {
                            pid: t["proxy"]["pid"]
                                .as_u64()
                                .and_then(|p| u32::try_from(p).ok())
                                .unwrap_or(0),
                            traffic: t["proxy"]["traffic"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            weight: weight(&t["proxy"]),
                            requests: t["proxy"].get("requests").cloned(),
                            errors: t["proxy"].get("errors").cloned(),
                        }),
                        instances: serde_json::from_value(t["instances"].clone())
                            .unwrap_or_default(),
                        router: t["router"].as_object().map(|_| RouterView {
                            via: t["router"]["via"].as_str().unwrap_or_default().to_owned(),
                            weight: weight(&t["router"]),
                        }),
                    },
                )
            })
            .collect()
    });
    Some(views::RunView {
        run: serde_json::from_value(de("run")).ok()?,
        steps_total: usize::try_from(v["steps_total"].as_u64()?).ok()?,
        steps_succeeded: usize::try_from(v["steps_succeeded"].as_u64()?).ok()?,
        steps: serde_json::from_value(de("steps")).ok()?,
        driven: v["driven"].as_bool(),
        approvals: views::ApprovalsView {
            required: u32::try_from(v["approvals"]["required"].as_u64().unwrap_or(0)).ok()?,
            valid: serde_json::from_value(v["approvals"]["valid"].clone()).unwrap_or_default(),
            rejected: serde_json::from_value(v["approvals"]["rejected"].clone())
                .unwrap_or_default(),
        },
        config: values("config"),
        traffic,
        hosts: values("hosts"),
        failed_hosts: serde_json::from_value(de("failed_hosts")).unwrap_or_default(),
        analysis: values("analysis"),
        services,
        open_reviews: values("open_reviews"),
        // Perf files stay on the server's machine.
        run_dir: PathBuf::new(),
    })
}
