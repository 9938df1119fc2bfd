//! Slipway's model: the release spec, its validation with source spans, plans with stable
//! digests, and the exit-code contract.
//!
//! Architecture invariant: this crate does no IO. It is given text and facts and returns
//! values; reading files, running git and talking to stores happen in callers.

pub mod admin_policy;
pub mod analysis;
pub mod canonical;
pub mod compat;
pub mod cron;
pub mod diag;
pub mod duration;
pub mod exit;
pub mod metric_query;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod promotion;
pub mod readiness;
pub mod recovery;
pub mod schema;
pub mod spec;
pub mod step_vars;
pub mod text;
pub mod validate;
pub mod yaml;
