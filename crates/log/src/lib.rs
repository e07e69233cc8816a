//! The append-only, tamper-evident event log behind verdict.
//!
//! Every webhook delivery and every event verdict itself produces (overrides, decisions, policy
//! activations) becomes one [`Entry`] in a single SQLite table. Entries are numbered by a gapless
//! `seq` and chained by SHA-256: each entry's [`Entry::hash`] covers its fields and the previous
//! entry's hash, so an edited, inserted or deleted row breaks the chain and [`verify`] names the
//! first bad `seq`. Triggers reject `UPDATE` and `DELETE` on the table.
//!
//! Main types:
//! - [`SqliteLog`]: one connection to the database file (WAL, `synchronous=FULL`), with the
//!   [`EventStore`] operations: batch append inside one transaction, reads by `seq`.
//! - [`LogWriter`]: a cloneable handle to the single writer thread. Callers send [`NewEvent`]s
//!   through a bounded channel; the thread commits everything queued in one transaction (group
//!   commit) and only then answers each caller, so an `Ok` means the entry is on disk.
//! - [`verify`]: re-computes the chain and checks the append-only invariants.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use verdict_log::{LogWriter, NewEvent, WriterConfig};
//! let writer = LogWriter::open("data/verdict.db", WriterConfig::default())?;
//! let ev = NewEvent::new("seon-idv", "idv:session_finished", "request-id:abc", b"{}".to_vec());
//! let appended = writer.append(ev).await?;
//! println!("stored at seq {}", appended.seq());
//! # Ok(()) }
//! ```
//!
//! The body is not hashed into the chain directly: the chain covers `body_sha256`, which the
//! writer checks against the body. That keeps the hash chain verifiable after a future PII
//! erasure replaces a body with a tombstone.

mod entry;
mod error;
mod export;
mod migrate;
mod sqlite;
mod store;
#[cfg(feature = "test-support")]
pub mod testing;
mod verify;
mod writer;

pub use entry::{
    BodyEncoding, EncodedBody, Entry, GENESIS, Hash, Headers, NewEvent, OutboxEntries, decode_body,
    decode_body_into, entry_hash, now_ms, sha256,
};
pub use error::{AppendError, StoreError};
pub use export::{ExportedEntry, READABLE_HEADERS, one_line_json, rfc3339_ms};
pub use migrate::{SCHEMA_VERSION, migrate};
pub use sqlite::{SqliteLog, is_busy};
pub use store::{Appended, EventStore, Head};
pub use uuid::Uuid;
pub use verify::{Problem, VerifyReport, verify};
pub use writer::{
    Committed, LogWriter, PendingAppend, Tail, WRITER_CHECKPOINT_PAGES, WriterConfig, WriterStats,
};

/// The `source` of events verdict writes itself (overrides, decisions, policy activations).
pub const INTERNAL_SOURCE: &str = "verdict";

/// The type of verdict's decision entries (`verdict_projector::fact::DECISION`; a test there
/// checks they agree).
pub const DECISION_TYPE: &str = "decision";
