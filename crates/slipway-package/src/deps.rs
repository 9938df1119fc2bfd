//! Dependency resolution: services' `requires` constraints checked against the versions a
//! release ships and the versions already running in the target environment, and the lock
//! of resolved versions that is written with the run.
//!
//! Versions follow Cargo's semver rules (the `semver` crate): a requirement such as
//! `>=1.2.0, <2` does not match a pre-release like `1.2.3-rc.1` unless a comparator names a
//! pre-release of the same `major.minor.patch`. Conflicts caused by exactly that rule say
//! so, because it surprises people.

use std::collections::BTreeMap;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use slipway_model::spec::ReleaseSpec;

use crate::digest::sha256_bytes;
use crate::render::service_version;

/// Where a resolved version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionSource {
    /// Shipped by this release.
    Release,
    /// Already running in the environment and not part of this release.
    Deployed,
}

/// One service's resolved version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedVersion {
    /// The version.
    pub version: String,
    /// Where it comes from.
    pub source: VersionSource,
}

/// The resolved versions of every service the release touches or depends on in one
/// environment; written with the run so a later look at the run knows exactly what ran
/// together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionLock {
    /// The environment.
    pub environment: String,
    /// Service → resolved version.
    pub versions: BTreeMap<String, LockedVersion>,
    /// sha256 of the canonical JSON of `environment` and `versions`.
    pub digest: String,
}

impl VersionLock {
    /// Service → version, the plain form of the lock.
    pub fn plain(&self) -> BTreeMap<String, String> {
        self.versions
            .iter()
            .map(|(s, v)| (s.clone(), v.version.clone()))
            .collect()
    }
}

/// A requirement that the environment does not meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The service that declares the requirement.
    pub service: String,
    /// That service's version.
    pub service_version: String,
    /// The service it requires.
    pub requires: String,
    /// The requirement as written.
    pub requirement: String,
    /// The version found, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    /// Where `found` comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<VersionSource>,
    /// The explanation, with what to do.
    pub message: String,
}

/// The outcome of resolution: the lock (always produced, so the run can record what it
/// saw) and every conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// Resolved versions.
    pub lock: VersionLock,
    /// Unmet requirements; empty when everything resolves.
    pub conflicts: Vec<Conflict>,
}

impl Resolution {
    /// Whether every requirement is met.
    pub fn ok(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// Resolves the release's requirements in one environment.
///
/// `observed` are versions observed running (from the store); they override the spec's
/// `environments.<env>.deployed`. Services of the release resolve to the version the
/// release ships, others to what runs there. Returns `Err` only for an unknown environment.
pub fn resolve(
    spec: &ReleaseSpec,
    env_name: &str,
    observed: &BTreeMap<String, String>,
) -> Result<Resolution, String> {
    let env = spec.environments.get(env_name).ok_or_else(|| {
        format!(
            "unknown environment `{env_name}`; the spec declares: {}",
            spec.environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let mut deployed = env.deployed.clone();
    deployed.extend(observed.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut versions = BTreeMap::new();
    for (name, v) in &deployed {
        if !spec.services.contains_key(name) {
            versions.insert(
                name.clone(),
                LockedVersion {
                    version: v.clone(),
                    source: VersionSource::Deployed,
                },
            );
        }
    }
    for (name, svc) in &spec.services {
        versions.insert(
            name.clone(),
            LockedVersion {
                version: service_version(spec, svc).to_owned(),
                source: VersionSource::Release,
            },
        );
    }

    let mut conflicts = Vec::new();
    for (name, svc) in &spec.services {
        let own = service_version(spec, svc);
        for (other, req_text) in &svc.requires {
            let conflict = |found: Option<&LockedVersion>, message: String| Conflict {
                service: name.clone(),
                service_version: own.to_owned(),
                requires: other.clone(),
                requirement: req_text.clone(),
                found: found.map(|f| f.version.clone()),
                source: found.map(|f| f.source),
                message,
            };
            let req = match VersionReq::parse(req_text) {
                Ok(r) => r,
                Err(e) => {
                    conflicts.push(conflict(
                        None,
                        format!(
                            "{name} {own} requires {other} `{req_text}`, which is not a version requirement ({e}); write one like `>=2.3, <3`"
                        ),
                    ));
                    continue;
                }
            };
            let Some(found) = versions.get(other) else {
                conflicts.push(conflict(
                    None,
                    format!(
                        "{name} {own} requires {other} {req_text}, but {env_name} runs no known version of {other} and this release does not ship it; deploy {other} first, record it under environments.{env_name}.deployed, or ship it in this release"
                    ),
                ));
                continue;
            };
            let where_ = match found.source {
                VersionSource::Release => format!("this release ships {other} {}", found.version),
                VersionSource::Deployed => format!(
                    "{env_name} runs {other} {} and this release does not ship {other}",
                    found.version
                ),
            };
            let version = match Version::parse(&found.version) {
                Ok(v) => v,
                Err(e) => {
                    conflicts.push(conflict(
                        Some(found),
                        format!(
                            "{name} {own} requires {other} {req_text}, but {where_}, and `{}` is not a semantic version ({e}); record versions as MAJOR.MINOR.PATCH",
                            found.version
                        ),
                    ));
                    continue;
                }
            };
            if req.matches(&version) {
                continue;
            }
            let mut message = format!("{name} {own} requires {other} {req_text}, but {where_}");
            if !version.pre.is_empty() {
                let mut release = version.clone();
                release.pre = semver::Prerelease::EMPTY;
                if req.matches(&release) {
                    message.push_str(&format!(
                        " (semver: the pre-release {version} does not match `{req_text}` because no comparator names a pre-release of {}.{}.{}; write e.g. `>={version}` to accept it)",
                        version.major, version.minor, version.patch
                    ));
                }
            }
            message.push_str(&match found.source {
                VersionSource::Release => format!(
                    "; ship a version of {other} that matches, or relax the requirement of {name}"
                ),
                VersionSource::Deployed => format!(
                    "; add {other} at a matching version to this release, deploy it to {env_name} first, or relax the requirement of {name}"
                ),
            });
            conflicts.push(conflict(Some(found), message));
        }
    }

    let digest = lock_digest(env_name, &versions);
    Ok(Resolution {
        lock: VersionLock {
            environment: env_name.to_owned(),
            versions,
            digest,
        },
        conflicts,
    })
}

/// serde_json's map is a BTreeMap here (no `preserve_order`), so the text is canonical.
fn lock_digest(env: &str, versions: &BTreeMap<String, LockedVersion>) -> String {
    let canonical = serde_json::json!({ "environment": env, "versions": versions });
    sha256_bytes(canonical.to_string().as_bytes())
}
