use uuid::Uuid;

use crate::{Entry, Hash, NewEvent, StoreError};

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as a new entry.
    New {
        /// Its place in the log.
        seq: u64,
        /// Its UUIDv7.
        event_id: Uuid,
        /// Unix ms, when it was committed (its `recorded_at`).
        recorded_at: i64,
    },
    /// Its `(source, dedupe_key)` was already in the log; nothing new was stored and the
    /// repeat was counted.
    Duplicate {
        /// The seq of the original entry.
        seq: u64,
    },
}

impl Appended {
    /// The seq of the stored entry (the original one for a duplicate).
    pub fn seq(&self) -> u64 {
        match *self {
            Self::New { seq, .. } | Self::Duplicate { seq } => seq,
        }
    }

    /// Whether the event was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate { .. })
    }
}

/// The newest entry of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// The operations verdict needs from an event log. [`crate::SqliteLog`] is the embedded
/// implementation; a PostgreSQL one can follow without touching the callers.
///
/// Invariants every implementation keeps:
/// - `append_batch` is atomic: all events of the call are durable when it returns `Ok`, none
///   when it returns `Err`.
/// - seqs are gapless and increasing; each entry's `prev_hash` is the previous entry's `hash`,
///   read inside the write transaction (other processes may append too).
/// - a `(source, dedupe_key)` pair is stored at most once, forever; an event with
///   `legacy_request_id_dedupe` set is a duplicate of a stored entry of its source with the
///   same body and a `request-id:` key (how `seon` deliveries were keyed before).
pub trait EventStore: Send {
    /// Appends `events` in one transaction, in order. Duplicates (also within the batch)
    /// are answered with the original seq and counted.
    fn append_batch(&mut self, events: &[&NewEvent]) -> Result<Vec<Appended>, StoreError>;

    /// The newest entry, or `None` for an empty log.
    fn head(&self) -> Result<Option<Head>, StoreError>;

    /// Up to `limit` entries with `seq > after`, in seq order.
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// The entry at `seq`.
    fn get(&self, seq: u64) -> Result<Option<Entry>, StoreError>;

    /// The seq stored for a `(source, dedupe_key)`, if any.
    fn find(&self, source: &str, dedupe_key: &str) -> Result<Option<u64>, StoreError>;

    /// How often the delivery stored at `seq` was received again.
    fn repeats(&self, seq: u64) -> Result<u64, StoreError>;

    /// Writes and commits something small that is not an event, to check that the store is
    /// writable again after a failed append.
    fn probe(&mut self) -> Result<(), StoreError>;

    /// Upkeep the writer runs after it has answered a batch's callers, so that it delays no
    /// append already durable (for SQLite: the WAL checkpoint, when one is due). Returns
    /// whether there was any to do. A failure here loses nothing: the writer logs it and goes
    /// on.
    fn after_commit(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
}
