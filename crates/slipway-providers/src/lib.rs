//! Providers: targets for the engine's `Target` trait (`exec`: commands on this
//! machine; `ssh`: the same steps on inventory hosts over SSH), the `process` target's instances for canaries, and the built-in proxy as
//! traffic router and metric source for `slipway-rollout` (in-process, or a proxy process
//! of its own driven over its admin API), nginx (`nginx`) and HAProxy (`haproxy`) as routers, and interventions on a live canary from other
//! processes. [`compose`] builds all of them for a run from its plan: the one composition
//! root, which `slipway-ops` calls.
//!
//! Architecture invariant: providers hold no state of their own beyond what they can
//! observe on the target (paths, completion markers); the engine journals what goes in
//! and out.

pub mod artifact;
pub mod balancer;
pub mod builtin;
pub mod change;
pub mod checks;
pub mod compose;
pub mod config;
pub mod container;
pub mod deploy;
pub mod exec;
pub mod fleet;
pub mod haproxy;
pub mod interventions;
pub mod metrics;
pub mod migrate;
pub mod nginx;
pub mod portowner;
pub mod process;
pub mod readiness;
pub mod remote;
pub mod smoke_gate;
pub mod ssh;
pub mod ssh_service;
pub mod traffic;

pub use artifact::ArtifactTarget;
pub use config::ConfigTarget;
pub use exec::ExecTarget;
