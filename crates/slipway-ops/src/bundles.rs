//! Release bundles a server plans and drives (`slipway --server URL deploy`): received,
//! checked and kept content-addressed in the store, so whichever server instance is asked
//! can start a run of one; unpacked into a directory of their own for each run.
//!
//! A bundle is checked whole when it arrives — its SHA-256 against the one the client
//! declared, then every entry by the safe unpacker and every file against the manifest it
//! carries ([`slipway_package::bundle::open`]) — and its bytes against its name again each
//! time the store hands it out ([`slipway_store::AnyStore::bundle`]).

use std::path::{Path, PathBuf};

use slipway_govern::access::Role;
use slipway_package::bundle;

use crate::error::{ErrorKind, Hint, OpsError, OpsResult};
use crate::session::Session;

/// A bundle the store keeps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uploaded {
    /// Its SHA-256 (hex): its name.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// The spec's path inside it.
    pub spec: String,
    /// How many files it holds.
    pub files: usize,
    /// Whether this upload stored it (`false`: the store had it already).
    pub stored: bool,
}

/// A bundle unpacked for one run.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The directory it was unpacked into.
    pub dir: PathBuf,
    /// The spec file in it.
    pub spec: PathBuf,
}

/// `sha256:HEX` or `HEX`, as 64 lowercase hex characters.
pub fn parse_digest(value: &str) -> OpsResult<String> {
    slipway_package::parse_sha256(value.trim()).map_err(|e| {
        OpsError::input(format!("failed to read the bundle digest: {e}")).hint(Hint::text(
            "name the bundle by the sha256 its upload answered",
        ))
    })
}

fn refused(what: impl std::fmt::Display) -> OpsError {
    OpsError::input(format!("failed to accept the bundle: {what}")).hint(Hint::text(
        "pack it with `slipway --server URL deploy -f SPEC --env ENV` from the spec's directory",
    ))
}

/// Keep `data` as a bundle for deploys to `environment` (the caller needs `deployer`
/// there), after checking it is one: `declared` is the SHA-256 the client computed.
pub async fn upload(
    session: &Session,
    environment: &str,
    declared: Option<&str>,
    data: Vec<u8>,
) -> OpsResult<Uploaded> {
    crate::access::require(session, Role::Deployer, "upload a bundle", environment).await?;
    if data.len() as u64 > bundle::MAX_BUNDLE_BYTES {
        return Err(refused(format!(
            "it is {} bytes, more than the {} a bundle may have",
            data.len(),
            bundle::MAX_BUNDLE_BYTES
        )));
    }
    let digest = slipway_engine::evidence::sha256_hex(&data);
    if let Some(d) = declared {
        let d = parse_digest(d)?;
        if d != digest {
            return Err(refused(format!(
                "its sha256 is {digest}, not the {d} it was sent as: it changed on the way"
            )));
        }
    }
    // Checked by unpacking it where runs' bundles go, then removed: the store keeps the
    // archive, each run unpacks its own copy.
    let root = bundles_root(session)?;
    let (dir, archive) = fresh(&root, &format!("upload-{}", &digest[..12]))?;
    let opened = std::fs::write(&archive, &data)
        .map_err(|e| OpsError::internal(format!("failed to write {}: {e}", archive.display())))
        .and_then(|()| bundle::open(&archive, &dir).map_err(refused));
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_dir_all(&dir);
    let manifest = opened?;
    let size = data.len() as u64;
    let stored = session.store.put_bundle(&digest, data).await?;
    Ok(Uploaded {
        digest,
        size,
        spec: bundle::spec_of(&manifest).to_owned(),
        files: manifest.files.len(),
        stored,
    })
}

/// Plan a bundle the caller sent for `environment` without keeping it or starting a run
/// (`slipway --server URL plan`): the caller needs `viewer` there (a plan reads the
/// environment's policy and history, nothing more); the bytes are checked as an upload is
/// (size, `declared` SHA-256, every entry, the manifest), unpacked into a directory of
/// their own, planned against this store by [`crate::planning::plan_file_with`] as
/// `slipway plan` plans a file, and removed. `shown_as` is the spec's path as the caller
/// named it: the findings that name the spec or its directory say the caller's path, not
/// the server's copy, so the plan reads as the local one does.
pub async fn plan(
    session: &Session,
    environment: &str,
    declared: Option<&str>,
    data: Vec<u8>,
    shown_as: &str,
    options: &crate::planning::PlanOptions,
) -> Result<slipway_model::plan::Plan, crate::planning::PlanError> {
    crate::access::require(session, Role::Viewer, "plan", environment).await?;
    if data.len() as u64 > bundle::MAX_BUNDLE_BYTES {
        return Err(refused(format!(
            "it is {} bytes, more than the {} a bundle may have",
            data.len(),
            bundle::MAX_BUNDLE_BYTES
        ))
        .into());
    }
    let digest = slipway_engine::evidence::sha256_hex(&data);
    if let Some(d) = declared {
        let d = parse_digest(d)?;
        if d != digest {
            return Err(refused(format!(
                "its sha256 is {digest}, not the {d} it was sent as: it changed on the way"
            ))
            .into());
        }
    }
    let root = bundles_root(session)?;
    let (dir, archive) = fresh(&root, &format!("plan-{}", &digest[..12]))?;
    let opened = std::fs::write(&archive, &data)
        .map_err(|e| OpsError::internal(format!("failed to write {}: {e}", archive.display())))
        .and_then(|()| bundle::open(&archive, &dir).map_err(refused));
    let _ = std::fs::remove_file(&archive);
    let planned = match opened {
        Ok(manifest) => {
            let spec = dir.join(bundle::spec_of(&manifest));
            let store = session.store_for_child();
            crate::planning::plan_file_with(&spec, environment, Some(&store), options)
                .await
                .map(|p| (p, spec))
        }
        Err(e) => Err(e.into()),
    };
    // A plan keeps nothing of its bundle.
    let _ = std::fs::remove_dir_all(&dir);
    let (planned, spec) = planned?;
    let mut p = planned.plan;
    let shown_dir = crate::planning::spec_dir(Path::new(shown_as))
        .display()
        .to_string();
    let (spec, dir) = (spec.display().to_string(), dir.display().to_string());
    for f in &mut p.findings {
        f.message = f.message.replace(&spec, shown_as).replace(&dir, &shown_dir);
    }
    Ok(p)
}

/// Unpack bundle `digest` from the store into a new directory under the store's layout
/// (`bundles/<time>-<digest prefix>-<n>`), checked again file by file.
pub async fn unpack_for_run(session: &Session, digest: &str) -> OpsResult<Unpacked> {
    let digest = parse_digest(digest)?;
    let data = session
        .store
        .bundle(&digest)
        .await
        .map_err(|e| {
            OpsError::new(
                ErrorKind::Evidence,
                format!("failed to read the bundle: {e}"),
            )
        })?
        .ok_or_else(|| {
            OpsError::new(
                ErrorKind::NotFound,
                format!("bundle {digest} is not in the store"),
            )
            .hint(Hint::text("upload it first (POST /api/v1/bundles)"))
        })?;
    let root = bundles_root(session)?;
    let stamp = slipway_stdx::now().strftime("%Y%m%d-%H%M%S").to_string();
    let (dir, archive) = fresh(&root, &format!("{stamp}-{}", &digest[..12]))?;
    std::fs::write(&archive, &data)
        .map_err(|e| OpsError::internal(format!("failed to write {}: {e}", archive.display())))?;
    let opened = bundle::open(&archive, &dir);
    let _ = std::fs::remove_file(&archive);
    let manifest = opened.map_err(refused)?;
    Ok(Unpacked {
        spec: dir.join(bundle::spec_of(&manifest)),
        dir,
    })
}

/// Where bundles are unpacked: `bundles/` of the store's layout.
fn bundles_root(session: &Session) -> OpsResult<PathBuf> {
    let root = session.layout.dir().join("bundles");
    std::fs::create_dir_all(&root)
        .map_err(|e| OpsError::internal(format!("failed to create {}: {e}", root.display())))?;
    Ok(root)
}

/// A directory name under `root` nobody has taken (and the archive's path beside it).
fn fresh(root: &Path, base: &str) -> OpsResult<(PathBuf, PathBuf)> {
    for n in 0..10_000u32 {
        let dir = root.join(format!("{base}-{n}"));
        let archive = root.join(format!("{base}-{n}.tar.gz"));
        // `create_new` claims the archive's name atomically among concurrent requests.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&archive)
        {
            Ok(_) if !dir.exists() => return Ok((dir, archive)),
            Ok(_) => {
                let _ = std::fs::remove_file(&archive);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(OpsError::internal(format!(
                    "failed to create {}: {e}",
                    archive.display()
                )));
            }
        }
    }
    Err(OpsError::internal(format!(
        "failed to find a free directory name under {}",
        root.display()
    )))
}
