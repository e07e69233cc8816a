//! What the runner needs of a store for the projections, behind [`ProjectionStore`]: its
//! checkpoint, a session's stored state, and a place to write a batch in one transaction. The
//! SQLite implementation is on the log's own connection ([`verdict_log::SqliteLog`]), so a
//! batch and its checkpoint commit together; another backend implements this trait.

use rusqlite::{Connection, params};
use verdict_log::SqliteLog;
use verdict_projector::{Projection, Session};

use crate::error::{ProjectionError, Result};
use crate::rows::{PROJECTOR, checkpoint, i64_of, load_session};

/// One batch of folded work to write: the sessions it touched, the entries it linked to their
/// sessions, the entries it could not use, and the checkpoint they bring the projections to.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The touched sessions, as folded.
    pub sessions: Vec<&'a Session>,
    /// (session id, seq) of every entry of a session.
    pub links: &'a Links,
    /// (seq, session id if known, reason) of every entry the projector could not use.
    pub quarantined: &'a Quarantined,
    /// The newest seq folded.
    pub checkpoint: u64,
}

/// The store of the projections, as the live runner uses it.
pub trait ProjectionStore: Send {
    /// The seq the stored projections are current to (0 for none).
    fn checkpoint(&self) -> Result<u64>;

    /// A session's stored state, if it has one.
    fn load_session(&self, id: &str) -> Result<Option<Session>>;

    /// Writes `batch` and its checkpoint in one transaction: all of it or nothing.
    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<()>;
}

impl ProjectionStore for SqliteLog {
    fn checkpoint(&self) -> Result<u64> {
        Ok(checkpoint(self.connection(), PROJECTOR)?)
    }

    fn load_session(&self, id: &str) -> Result<Option<Session>> {
        load_session(self.connection(), id)
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<()> {
        let tx = self
            .connection_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        write_links(&tx, batch.links)?;
        write_quarantined(&tx, batch.quarantined)?;
        save_sessions(&tx, batch.sessions.iter().copied())?;
        set_checkpoint(&tx, PROJECTOR, batch.checkpoint)?;
        tx.commit()?;
        Ok(())
    }
}

// The SQL of the writes, shared by the runner's batches and the replay's rebuild.

/// Which entries belong to which session, and the quarantined entries with their reasons.
pub(crate) type Links = Vec<(String, u64)>;
pub(crate) type Quarantined = Vec<(u64, Option<String>, String)>;

pub(crate) fn write_links(tx: &Connection, links: &Links) -> Result<()> {
    insert_rows(
        tx,
        LINKS_INTO,
        2,
        links.iter().map(Ok),
        |stmt, at, (id, seq)| {
            stmt.raw_bind_parameter(at, id)?;
            stmt.raw_bind_parameter(at + 1, i64_of(*seq))
        },
    )
}

/// Where session links go (a link already there is kept); see [`values_sql`].
pub(crate) const LINKS_INTO: &str = "INSERT OR IGNORE INTO session_entries (session_id, seq)";

/// Rows written by one statement of [`insert_rows`].
pub(crate) const ROWS_PER_INSERT: usize = 64;

/// `into` followed by `VALUES` for `rows` rows of `cols` parameters each.
pub(crate) fn values_sql(into: &str, cols: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    format!("{into} VALUES {}", vec![row.as_str(); rows].join(", "))
}

/// Inserts `rows` with `into` ([`values_sql`]), [`ROWS_PER_INSERT`] rows per statement (a
/// million single-row inserts spend most of their time stepping and resetting the statement)
/// and the rest one by one (so the statement cache holds two texts, whatever the count).
/// `bind(statement, first, row)` binds one row's `cols` values from parameter `first` on.
pub(crate) fn insert_rows<T>(
    tx: &Connection,
    into: &str,
    cols: usize,
    rows: impl IntoIterator<Item = Result<T>>,
    bind: impl Fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<()> {
    let mut many = tx.prepare_cached(&values_sql(into, cols, ROWS_PER_INSERT))?;
    let mut chunk = Vec::with_capacity(ROWS_PER_INSERT);
    for row in rows {
        chunk.push(row?);
        if chunk.len() == ROWS_PER_INSERT {
            for (i, row) in chunk.iter().enumerate() {
                bind(&mut many, i * cols + 1, row)?;
            }
            many.raw_execute()?;
            chunk.clear();
        }
    }
    let mut one = tx.prepare_cached(&values_sql(into, cols, 1))?;
    for row in &chunk {
        bind(&mut one, 1, row)?;
        one.raw_execute()?;
    }
    Ok(())
}

pub(crate) fn write_quarantined(tx: &Connection, quarantined: &Quarantined) -> Result<()> {
    let mut q = tx.prepare_cached(
        "INSERT OR REPLACE INTO quarantine (seq, session_id, reason) VALUES (?1, ?2, ?3)",
    )?;
    for (seq, id, reason) in quarantined {
        q.execute(params![i64_of(*seq), id, reason])?;
    }
    Ok(())
}

/// Writes (or replaces) one session's row.
pub(crate) const SAVE_SESSION: &str = "INSERT INTO sessions (session_id, vendor_status, action, updated_at, state) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (session_id) DO UPDATE SET vendor_status = excluded.vendor_status, \
     action = excluded.action, updated_at = excluded.updated_at, state = excluded.state";

pub(crate) fn save_session(
    save: &mut rusqlite::CachedStatement<'_>,
    s: &Session,
    state: &str,
) -> rusqlite::Result<usize> {
    save.execute(params![
        s.session_id,
        s.vendor_status,
        decided_action(s),
        s.updated_at,
        state
    ])
}

/// The `action` column: the current decision's action.
pub(crate) fn decided_action(s: &Session) -> Option<&'static str> {
    s.decision.as_deref().map(|(d, _)| d.action.as_str())
}

pub(crate) fn save_sessions<'a>(
    tx: &Connection,
    sessions: impl Iterator<Item = &'a Session>,
) -> Result<()> {
    let mut save = tx.prepare_cached(SAVE_SESSION)?;
    for s in sessions {
        save_session(&mut save, s, &serde_json::to_string(s)?)?;
    }
    Ok(())
}

/// Runs `f` on `p`'s sessions in id order, each with its JSON, serialized in chunks on a
/// second thread while `f` works (a rebuild handles hundreds of thousands at once).
pub(crate) fn with_serialized<'a, T>(
    p: &'a Projection,
    f: impl FnOnce(&mut dyn Iterator<Item = Result<(&'a Session, String)>>) -> Result<T>,
) -> Result<T> {
    const CHUNK: usize = 4096;
    let sessions: Vec<&Session> = p.sessions().collect();
    std::thread::scope(|scope| {
        let (ready_tx, ready_rx) =
            std::sync::mpsc::sync_channel::<Vec<serde_json::Result<String>>>(4);
        let chunks = sessions.chunks(CHUNK);
        std::thread::Builder::new()
            .name("verdict-replay-json".into())
            .spawn_scoped(scope, move || {
                for chunk in chunks {
                    let texts = chunk.iter().map(serde_json::to_string).collect();
                    if ready_tx.send(texts).is_err() {
                        return;
                    }
                }
            })?;
        let mut items = sessions
            .chunks(CHUNK)
            .zip(ready_rx)
            .flat_map(|(chunk, texts)| chunk.iter().copied().zip(texts))
            .map(|(s, json)| {
                json.map(|j| (s, j))
                    .map_err(|source| ProjectionError::Serialize {
                        session: s.session_id.clone(),
                        source,
                    })
            });
        f(&mut items)
    })
}

pub(crate) fn set_checkpoint(tx: &Connection, name: &str, seq: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO checkpoints (name, seq) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![name, i64_of(seq)])?;
    Ok(())
}
