//! verdict's projections: the per-session state folded from the log, kept in SQLite
//! (`migrations/0002_projections.sql`), the runner that keeps it current and makes decisions,
//! `verdict replay`, and the re-derivation of recorded decisions.
//!
//! The fold itself is `verdict_projector`'s (pure: same entries in, same state out) and the
//! policy's evaluation `verdict_rules`' (pure); this crate runs them against the log and stores
//! what they produce. It reads the log through `verdict_log` and appends decisions through the
//! log writer; it never writes the `events` table itself.
//!
//! - [`spawn_runner`]: the live runner, on its own thread, woken by each commit of the log
//!   writer; it folds what was committed, asks the [`Decider`] for a decision where the fold
//!   [calls for one](call_for), appends it (with its outbox rows) and writes the projections
//!   and its checkpoint in one transaction.
//! - [`rebuild`]: `verdict replay`, every projection folded again from the log; only the rows
//!   that differ are written; [`rederive`] checks every recorded decision meanwhile.
//! - [`SessionQueries`]: the reads the API, the pages and the CLI share (a session, its history,
//!   the listing...), with [`session_json`] the one JSON shape of a session.
//!
//! ```no_run
//! # fn demo(log: &verdict_log::SqliteLog) -> Result<(), verdict_projections::ProjectionError> {
//! use verdict_projections::SessionQueries as _;
//! if let Some(session) = log.session("sess-1")? {
//!     println!("{}", verdict_projections::session_json(&session));
//! }
//! # Ok(()) }
//! ```

mod decide;
mod error;
pub mod metrics;
mod read;
pub mod rederive;
mod replay;
mod rows;
mod runner;
mod store;
mod write;

pub use decide::{Call, Decider, Derived, call_for, decision_event, policy_decision};
pub use error::{ProjectionError, Result};
pub use read::{
    HistoryEntry, HistoryPage, SessionQueries, override_event, session_json, stored_digest,
    validate_override,
};
pub use replay::{Rebuilt, Written, rebuild};
pub use rows::{POLICY_ACTIVATED, PROJECTOR, StoredSession, recorded};
pub use runner::{Runner, spawn_runner};
pub use store::{Batch, ProjectionStore};
