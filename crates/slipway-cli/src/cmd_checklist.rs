//! `slipway checklist …`: lessons that future plans must satisfy. An action item of a run's
//! retrospective (`slipway report retro RUN`) is accepted into the spec's `checklist`
//! (`checklist accept RUN N -f release.yaml`); every plan then carries a `checklist` gate,
//! and `slipway deploy` is blocked (exit 3) until each item is satisfied — by its `check`
//! running in the plan, or by someone acknowledging it for this release version and
//! environment (`checklist ack`, approver role, audited).

use std::path::{Path, PathBuf};

use serde_json::json;
use slipway_govern::access::Role;
use slipway_model::exit;
use slipway_model::spec::ChecklistItem;
use slipway_store::checklist::{Ack, ChecklistDb};

use crate::cli_util::{StoreArg, runtime};
use crate::out::{CliError, Output};

/// `slipway checklist …`.
#[derive(Debug, clap::Subcommand)]
pub enum ChecklistCommand {
    /// Accept action item N (1-based, as listed by `slipway report retro RUN`) of a run's
    /// retrospective into the spec's checklist.
    #[command(
        after_help = "Examples:\n  slipway checklist accept 20261126-033243-ef0a61 1 -f release.yaml\n  slipway checklist accept 20261126-033243-ef0a61 2 -f release.yaml --check smoke-payments"
    )]
    Accept(AcceptArgs),
    /// Show each checklist item of a plan: satisfied by a check, acknowledged, or open.
    Show(ShowArgs),
    /// Acknowledge an item for this release version and environment (approver role).
    Ack(AckArgs),
}

/// `slipway checklist accept`.
#[derive(Debug, clap::Args)]
pub struct AcceptArgs {
    /// The run whose retrospective lists the item.
    pub run: String,
    /// The action item's position (1-based).
    pub item: usize,
    /// The spec to add it to (rewritten in place, only the checklist grows).
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// A declared check that satisfies the item when the plan runs it.
    #[arg(long)]
    pub check: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway checklist show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The release spec.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The environment.
    #[arg(long)]
    pub env: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `slipway checklist ack`.
#[derive(Debug, clap::Args)]
pub struct AckArgs {
    /// The item id.
    pub item: String,
    /// The release spec.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// What was done about it (audited).
    #[arg(long)]
    pub note: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Add `item` to the spec text's top-level `checklist` (creating it), touching nothing else.
fn append_item(text: &str, item: &ChecklistItem) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut line = format!("  - {{ id: {}, text: {}", q(&item.id), q(&item.text));
    if let Some(r) = &item.from_run {
        line.push_str(&format!(", from_run: {}", q(r)));
    }
    if let Some(c) = &item.check {
        line.push_str(&format!(", check: {}", q(c)));
    }
    line.push_str(" }");
    let lines: Vec<&str> = text.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim_end() == "checklist:" || l.trim_end() == "checklist: []");
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    match head {
        Some(h) => {
            out[h] = "checklist:".to_owned();
            // The block ends at the next line that starts at column 0 (another key).
            let mut end = h + 1;
            let mut last = h;
            while end < out.len() {
                let l = &out[end];
                if !l.is_empty() && !l.starts_with(' ') && !l.starts_with('-') {
                    break;
                }
                if !l.trim().is_empty() {
                    last = end;
                }
                end += 1;
            }
            out.insert(last + 1, line);
        }
        None => {
            out.push("checklist:".to_owned());
            out.push(line);
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Run a checklist subcommand.
///
/// Through a server (`--server`): the plan is the server's (`slipway --server URL plan`),
/// acknowledgements are read and written through `/api/v1/checklist/acks` (viewer / approver
/// in the environment, as on a store), a retrospective's action items come from
/// `/api/v1/reports/retro/{run}`; the spec stays a file of this machine.
pub fn checklist(c: ChecklistCommand, out: &Output) -> Result<i32, CliError> {
    let remote = crate::cli_util::remote()?;
    // Planning gathers facts with its own runtime: plan before entering ours.
    let plan = match &c {
        ChecklistCommand::Accept(_) => None,
        ChecklistCommand::Show(ShowArgs { file, env, .. })
        | ChecklistCommand::Ack(AckArgs { file, env, .. }) => Some(match &remote {
            Some(client) => {
                crate::cli_util::load_spec(file, out)?;
                let rt = runtime()?;
                rt.block_on(crate::run_remote::plan_remote(client, file, env, None))?
            }
            None => {
                let store = std::env::var("SLIPWAY_STORE").ok();
                crate::cli_util::planned(file, env, store.as_deref(), out)?.plan
            }
        }),
    };
    let rt = runtime()?;
    let result = rt.block_on(async {
        match (c, plan) {
            (ChecklistCommand::Accept(a), _) => accept(a, remote.as_ref(), out).await,
            (ChecklistCommand::Show(_) | ChecklistCommand::Ack(_), None) => Err(CliError::new(
                exit::INTERNAL,
                "failed to plan before the checklist command",
                None,
            )),
            (ChecklistCommand::Show(a), Some(plan)) => {
                let acks: Vec<Ack> = match &remote {
                    Some(c) => {
                        let seg = crate::cli_util::path_segment;
                        let v = c
                            .get(&format!(
                                "/checklist/acks?release={}&version={}&environment={}",
                                seg(&plan.release.name),
                                seg(&plan.release.version),
                                seg(&plan.environment)
                            ))
                            .await?;
                        crate::run_remote::read(c, v)?
                    }
                    None => {
                        let (store, _) = crate::cli_util::read_store(&a.store).await?;
                        ChecklistDb::for_store(&store)
                            .acks(&plan.release.name, &plan.release.version, &plan.environment)
                            .await
                            .map_err(CliError::from)?
                    }
                };
                let st = slipway_ops::gates::checklist_states(&plan, &acks);
                if out.json() {
                    out.json_value(&st);
                } else if st.is_empty() {
                    out.line("the spec has no checklist");
                } else {
                    for s in &st {
                        out.line(&format!(
                            "{:<13} {}  {} — {}",
                            s.state, s.id, s.text, s.detail
                        ));
                    }
                }
                Ok(if st.iter().any(|s| s.state == "open") {
                    exit::BLOCKED
                } else {
                    exit::SUCCESS
                })
            }
            (ChecklistCommand::Ack(a), Some(plan)) => {
                if !slipway_ops::gates::checklist_items(&plan)
                    .iter()
                    .any(|i| i.id == a.item)
                {
                    return Err(CliError::input(
                        format!(
                            "failed to acknowledge `{}`: the checklist of {} has no such item",
                            a.item,
                            a.file.display()
                        ),
                        "list the items with `slipway checklist show -f SPEC --env ENV`",
                    ));
                }
                if let Some(c) = &remote {
                    c.post(
                        "/checklist/acks",
                        &json!({"release": plan.release.name, "version": plan.release.version,
                            "environment": plan.environment, "item": a.item, "note": a.note}),
                    )
                    .await?;
                    out.line(&format!(
                        "checklist item {} acknowledged for {} {} in {}",
                        a.item, plan.release.name, plan.release.version, plan.environment
                    ));
                    return Ok(exit::SUCCESS);
                }
                let session = crate::cli_util::session(&a.store).await?;
                crate::cli_util::enforce(
                    &session,
                    Role::Approver,
                    "acknowledge checklist items",
                    &plan.environment,
                )
                .await?;
                let db = ChecklistDb::for_store(&session.store);
                let me = session.actor.user.clone();
                db.acknowledge(
                    &plan.release.name,
                    &plan.release.version,
                    &plan.environment,
                    &Ack {
                        item: a.item.clone(),
                        acknowledged_by: format!("user:{me}"),
                        note: a.note.clone(),
                        at: slipway_stdx::now().to_string(),
                    },
                )
                .await
                .map_err(CliError::from)?;
                out.line(&format!(
                    "checklist item {} acknowledged for {} {} in {}",
                    a.item, plan.release.name, plan.release.version, plan.environment
                ));
                Ok(exit::SUCCESS)
            }
        }
    });
    rt.shutdown_background();
    result
}

async fn accept(
    a: AcceptArgs,
    remote: Option<&slipway_server::client::Client>,
    out: &Output,
) -> Result<i32, CliError> {
    let actions: Vec<String> = match remote {
        // The retrospective the server builds from its store (viewer everywhere).
        Some(c) => {
            let v = c
                .get(&format!(
                    "/reports/retro/{}",
                    crate::cli_util::path_segment(&a.run)
                ))
                .await?;
            crate::run_remote::read(c, v["retro"]["actions"].clone())?
        }
        None => {
            let (store, _) = crate::cli_util::read_store(&a.store).await?;
            let run = slipway_govern::history::RunHistory::load(store.as_ref(), &a.run)
                .await
                .map_err(CliError::from)?;
            slipway_govern::retro::build(&run).actions
        }
    };
    let Some(text) = a.item.checked_sub(1).and_then(|i| actions.get(i)) else {
        return Err(CliError::input(
            format!(
                "failed to accept action item {} of run {}: its retrospective lists {}",
                a.item,
                a.run,
                actions.len()
            ),
            format!("see them with `slipway report retro {}`", a.run),
        ));
    };
    let spec_text = std::fs::read_to_string(&a.file).map_err(|e| {
        CliError::input(
            format!("failed to read {}: {e}", a.file.display()),
            "pass the release spec with -f",
        )
    })?;
    let item = ChecklistItem {
        id: format!("retro-{}-{}", a.run, a.item),
        text: text.clone(),
        from_run: Some(a.run.clone()),
        check: a.check.clone(),
    };
    let name = a.file.display().to_string();
    if let Ok(loaded) = slipway_model::validate::load(&name, &spec_text)
        && loaded.spec.checklist.iter().any(|i| i.id == item.id)
    {
        return Err(CliError::input(
            format!(
                "failed to accept: {} is already in the checklist of {name}",
                item.id
            ),
            "nothing to do",
        ));
    }
    let new_text = append_item(&spec_text, &item);
    // Never leave a spec that no longer loads: check before writing.
    if let Err(e) = slipway_model::validate::load(&name, &new_text) {
        return Err(CliError::input(
            format!(
                "failed to add the item to {name}: the result would not validate:\n{}",
                e.render(false, 100)
            ),
            "add it by hand under `checklist:`",
        ));
    }
    let dir = a
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| CliError::new(exit::FAILURE, format!("failed to write {name}: {e}"), None))?;
    std::io::Write::write_all(&mut tmp, new_text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| CliError::new(exit::FAILURE, format!("failed to write {name}: {e}"), None))?;
    tmp.persist(&a.file).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("failed to write {name}: {}", e.error),
            None,
        )
    })?;
    if out.json() {
        out.json_value(&json!({"accepted": item, "file": a.file}));
    } else {
        out.line(&format!(
            "added {} to the checklist of {name}: {}",
            item.id, item.text
        ));
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> ChecklistItem {
        ChecklistItem {
            id: id.into(),
            text: "say \"why\": yes".into(),
            from_run: Some("r1".into()),
            check: None,
        }
    }

    #[test]
    fn items_go_into_an_existing_checklist_or_a_new_one() {
        let t = "a: 1\nchecklist:\n  - { id: x, text: y }\n\nb: 2\n";
        let s = append_item(t, &item("z"));
        assert_eq!(
            s,
            "a: 1\nchecklist:\n  - { id: x, text: y }\n  - { id: \"z\", text: \"say \\\"why\\\": yes\", from_run: \"r1\" }\n\nb: 2\n"
        );
        let s = append_item("a: 1\n", &item("z"));
        assert!(s.ends_with("a: 1\nchecklist:\n  - { id: \"z\", text: \"say \\\"why\\\": yes\", from_run: \"r1\" }\n"), "{s}");
        let s = append_item("checklist: []\nb: 2\n", &item("z"));
        assert!(s.starts_with("checklist:\n  - { id: \"z\""), "{s}");
    }
}
