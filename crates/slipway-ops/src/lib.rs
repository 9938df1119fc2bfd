//! The API boundary of Slipway: one function per operation a user can perform — plan a
//! file ([`planning`]), start a deploy, drive, resume, promote, pause, abort, roll back and
//! approve a run ([`runs`]), read runs and follow their journals ([`views`]), leases
//! ([`lease`]) — over a [`session::Session`]: an open store, this machine's files of its
//! runs and the actor every check and record names.
//!
//! It holds the one authorizer ([`access`]), the store directory's layout, the resolution
//! of a run's secrets, and an error type with kinds and typed hints ([`error`]) that each
//! front end renders its own way. Progress comes back as [`events::OpsEvent`]s.
//!
//! Architecture invariant: this crate never prints and depends on no CLI, HTTP or terminal
//! crate; front ends (the CLI, the server, the demo) never construct the engine or wire
//! providers themselves — they call this crate (checked by the tidy test).

pub mod access;
pub mod archive;
pub mod bundles;
pub mod change;
pub mod console;
pub mod deployed;
pub mod error;
pub mod events;
pub mod gates;
pub mod lease;
pub mod notify;
pub mod parity;
pub mod planning;
pub mod policy;
pub mod recovery;
pub mod reports;
pub mod review;
pub mod runs;
pub mod session;
pub mod views;

pub use error::{ErrorKind, Hint, OpsError, OpsResult, RunAction};
pub use events::{OpsEvent, Quiet, Reporter};
pub use session::{Actor, Credentials, Session, Verified};
pub use slipway_providers::compose::Layout;
