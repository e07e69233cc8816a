//! Decision delivery: the outbox table (`migrations/0003_outbox.sql`) behind [`OutboxStore`],
//! the dispatcher that POSTs each decision to every sink, and the queries behind `verdict
//! deliveries`. The signing and the retry schedule are `verdict_delivery`'s (pure); this crate
//! runs them and keeps their state.
//!
//! A decision's outbox rows (one per sink) are written by the log writer in the same
//! transaction as the decision event (`verdict_log::OutboxEntries`: the transactional
//! outbox), so a decision exists if and only if its deliveries are queued. The dispatcher runs
//! on its own thread (its SQLite calls never block the HTTP workers), woken by the writer when a
//! batch committed outbox rows and by finished attempts; between wake-ups it sleeps until the next due attempt, at
//! most [`RESCAN`] (so a redrive by `verdict deliveries retry` in another process is picked up
//! within that time).
//!
//! Invariants:
//! - Per (sink, session) only the lowest-seq pending delivery may be attempted: a later decision
//!   waits for an earlier one; other sessions proceed.
//! - A delivery being attempted is held in memory (never attempted twice at once) until its
//!   result is written; a crash mid-attempt leaves it pending, so it is attempted again at the
//!   next start (at least once, never lost).
//! - Every attempt's result (count, status or error, next time) is written before the next
//!   attempt of that delivery is considered, so a restart resumes the schedule exactly. Results
//!   that finish together are written in one transaction (the dispatcher reads without locks
//!   and writes once per pass, so it competes little with the log writer).
//!
//! ```no_run
//! # fn demo(db: &std::path::Path, sinks: Vec<verdict_outbox::Sink>, settings: verdict_outbox::Settings)
//! # -> Result<(), verdict_outbox::OutboxError> {
//! use std::sync::Arc;
//! let (_stop_tx, stop) = tokio::sync::watch::channel(false);
//! let wake = Arc::new(tokio::sync::Notify::new()); // notified by the log writer's batches
//! let names = sinks.clone();
//! let dispatcher = verdict_outbox::spawn_dispatcher(
//!     || verdict_outbox::SqliteOutbox::open(db, &names),
//!     sinks,
//!     settings,
//!     wake,
//!     stop,
//! )?;
//! # Ok(()) }
//! ```

mod dispatch;
mod error;
pub mod metrics;
mod sink;
mod state;
mod store;
mod wire;

pub use dispatch::{Dispatcher, RESCAN, spawn_dispatcher};
pub use error::OutboxError;
pub use sink::{Settings, Sink, SinkUrl, redact_url};
pub use state::State;
pub use store::{
    Attempted, Candidate, Filter, OutboxAdmin, OutboxStore, Pick, Row, SqliteOutbox, disabled,
    enable, list, retry_dead, retry_one,
};
pub use wire::{WireDecision, stored_decision_json};
