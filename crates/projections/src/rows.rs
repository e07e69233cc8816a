//! The stored form of the projections: rows of `sessions` and their codec, checkpoints.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use verdict_log::Entry;

use verdict_projector::{Recorded, Session};

use crate::error::{ProjectionError, Result};

/// The type of the entry that records a policy's text when it becomes active.
pub const POLICY_ACTIVATED: &str = "policy:activated";

/// The projector's checkpoint name.
pub const PROJECTOR: &str = "projector";
/// Entries folded per read, and the most written per transaction, by the runner.
pub(crate) const BATCH: usize = 2000;
/// The longest the runner keeps folded entries before writing them.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// The projector's view of a log entry.
pub fn recorded(e: &Entry) -> Recorded<'_> {
    Recorded {
        seq: e.seq,
        source: &e.source,
        event_type: &e.event_type,
        recorded_at: e.recorded_at,
        vendor_time: e.vendor_time,
        body: &e.body,
    }
}

/// How far a stage has read the log.
pub(crate) fn checkpoint(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM checkpoints WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

/// One session's stored state.
pub(crate) fn load_session(conn: &Connection, id: &str) -> Result<Option<Session>> {
    conn.prepare_cached(&format!("{SELECT_SESSION} WHERE session_id = ?1"))?
        .query_row([id], session_row)
        .optional()?
        .map(|row| row.read())
        .transpose()
}

/// Selects what [`session_row`] reads.
pub(crate) const SELECT_SESSION: &str =
    "SELECT session_id, vendor_status, updated_at, state FROM sessions";

/// A session row as stored: the columns the state JSON leaves out, and the JSON.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub(crate) id: String,
    pub(crate) vendor_status: Option<String>,
    pub(crate) updated_at: i64,
    pub(crate) state: String,
}

/// Reads a row selected by [`SELECT_SESSION`] (its first four columns). A column edited to a
/// value of another type behind verdict's back is an error (`verdict replay` repairs it).
pub(crate) fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
    Ok(StoredSession {
        id: r.get(0)?,
        vendor_status: r.get(1)?,
        updated_at: r.get(2)?,
        state: r.get(3)?,
    })
}

/// Like [`session_row`], for the stored digest that replay compares with: a column of an odd
/// type reads as something no fold produces (an id or status naming it), so the digest differs
/// and the row is written again, instead of failing the replay that would repair it.
pub(crate) fn session_row_for_digest(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
    use rusqlite::types::ValueRef;
    let text = |v: ValueRef<'_>| match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => format!("(stored as {:?})", other.data_type()),
    };
    let vendor_status = match r.get_ref(1)? {
        ValueRef::Null => None,
        other => Some(text(other)),
    };
    Ok(StoredSession {
        id: text(r.get_ref(0)?),
        vendor_status,
        updated_at: 0, // not in the digest
        state: text(r.get_ref(3)?),
    })
}

impl StoredSession {
    /// The session: its state JSON, and the values the JSON leaves to the columns.
    pub fn read(&self) -> Result<Session> {
        let mut s: Session =
            serde_json::from_str(&self.state).map_err(|source| ProjectionError::State {
                session: self.id.clone(),
                source,
            })?;
        s.session_id.clone_from(&self.id);
        s.vendor_status.clone_from(&self.vendor_status);
        s.updated_at = self.updated_at;
        Ok(s)
    }
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
