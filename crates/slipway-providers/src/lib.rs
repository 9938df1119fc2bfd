//! Targets for the engine's `Target` trait. For now `exec`: commands on this machine.
//!
//! Architecture invariant: providers hold no state of their own beyond what they can
//! observe on the target (paths, completion markers); the engine journals what goes in
//! and out.

pub mod exec;

pub use exec::ExecTarget;
