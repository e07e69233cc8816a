//! `verdict replay`: the projections rebuilt from the log, compared with the stored ones,
//! and only what differs written.

use rusqlite::{Connection, params};
use verdict_log::{EventStore, SqliteLog};
use verdict_projector::fact::INTERNAL_SOURCE;

use verdict_projector::{Fact, Projection, Recorded, Session, into_fact_session, read};

use crate::decide::{Call, call_for};
use crate::error::{ProjectionError, Result};
use crate::read::{session_json, stored_digest};
use crate::rows::{POLICY_ACTIVATED, PROJECTOR, i64_of};
use crate::store::{
    LINKS_INTO, Links, Quarantined, SAVE_SESSION, decided_action, insert_rows, save_session,
    set_checkpoint, values_sql, with_serialized, write_links, write_quarantined,
};

/// Rebuilds every projection from the log in one transaction. Returns the projection (for its
/// digest). `progress` is called with (entries done, total).
pub fn rebuild(
    log: &mut SqliteLog,
    mut progress: impl FnMut(u64, u64),
    check: Option<&crate::rederive::Sender>,
) -> Result<Rebuilt> {
    let total = log.head()?.map_or(0, |h| h.seq);
    let started = std::time::Instant::now();
    let mut p = Projection::default();
    // Sized once: growing a vector of a million links copies it again and again.
    let mut links: Links = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut quarantined: Quarantined = Vec::new();
    let mut done = 0u64;
    // Until a policy is activated in the log, there is nothing to derive policy decisions with
    // (the check ignores them), so their bodies are not copied to it.
    let mut policy_seen = false;
    let mut to_check: Vec<crate::rederive::Msg> = check.map(|c| c.batch()).unwrap_or_default();
    let fold = |e: Recorded<'_>, fact: Fact| {
        if let Fact::Quarantined { session_id, reason } = &fact {
            quarantined.push((e.seq, session_id.clone(), reason.clone()));
        }
        let applied = p.apply_fact(&e, &fact);
        if let Some(check) = check {
            use crate::rederive::Msg;
            // Handed over in batches: a message each would wake the checker for every entry.
            let mut send = |m: Msg| {
                to_check.push(m);
                if to_check.len() >= crate::rederive::BATCH {
                    check.send(&mut to_check);
                }
            };
            if let Some((s, change)) = applied {
                match call_for(s, e.seq, change) {
                    Some(Call::Fixed(derived)) => send(Msg::Fixed {
                        seq: e.seq,
                        session_id: s.session_id.clone(),
                        derived,
                    }),
                    Some(Call::Policy) if policy_seen => send(Msg::Policy {
                        seq: e.seq,
                        session_id: s.session_id.clone(),
                        body: e.body.to_vec(),
                        session: session_json(s),
                    }),
                    Some(Call::Policy) | None => {}
                }
            }
            if let Fact::Decision(d) = &fact {
                send(Msg::Recorded {
                    seq: e.seq,
                    decision: Box::new(d.clone()),
                });
            } else if e.source == INTERNAL_SOURCE
                && e.event_type == POLICY_ACTIVATED
                && let Some(text) = serde_json::from_slice::<serde_json::Value>(e.body)
                    .ok()
                    .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
            {
                policy_seen = true;
                send(Msg::Activated { seq: e.seq, text });
            }
        }
        // The fact is done with: its session id becomes the link (no copy).
        if let Some(id) = into_fact_session(fact) {
            links.push((id, e.seq));
        }
        done += 1;
        if done.is_multiple_of(10_000) {
            progress(done, total);
        }
    };
    // Parsing runs on the scanning thread too: the fold here only applies.
    scan_in_parallel(log, read, fold)?;
    if let Some(check) = check
        && !to_check.is_empty()
    {
        check.send(&mut to_check);
    }
    progress(done, total);
    tracing::info!(
        entries = done,
        secs = started.elapsed().as_secs_f64(),
        "replay: folded"
    );
    let started = std::time::Instant::now();
    let ((previous_digest, written), digest) = std::thread::scope(|scope| {
        // Sorted (so the inserts append to the B-trees instead of splitting pages all over) on a
        // thread of their own while the sessions are compared or written.
        let links = SortedLinks::spawn(scope, links)?;
        // The digest too (every session serialized and hashed, ~0.5 s for a million): the
        // write keeps one core busy, the other has room.
        let digest = std::thread::Builder::new()
            .name("verdict-replay-digest".into())
            .spawn_scoped(scope, || p.digest())?;
        let written = write_projections(log, &p, links, &quarantined, started)?;
        let digest = digest
            .join()
            .map_err(|_| ProjectionError::Thread("digest"))?;
        Ok::<_, ProjectionError>((written, digest))
    })?;
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        "replay: projections written"
    );
    Ok(Rebuilt {
        projection: p,
        digest,
        previous_digest,
        written,
    })
}

/// Writes [`rebuild`]'s projections in one transaction (through a rollback journal when this
/// process has the file to itself) and returns what [`write_rebuilt`] did.
fn write_projections(
    log: &mut SqliteLog,
    p: &Projection,
    mut links: SortedLinks<'_>,
    quarantined: &Quarantined,
    started: std::time::Instant,
) -> Result<(Option<String>, Written)> {
    // 64 MiB: the rows go in key order, so what is written stays written (a bigger cache only
    // holds more dirty pages until the commit: docs/benchmarks.md), and the index builds'
    // sorter, whose in-memory limit is this size, sorts a million sessions' keys without a file.
    log.connection()
        .pragma_update(None, "cache_size", -65_536)?;
    // The rebuilt tables (~500 MB for a million sessions) are written once, into the database
    // file, when this process has the file to itself; through the WAL (written, then copied by
    // the checkpoint) when a server has it open.
    let rollback = log.try_rollback_journal()?;
    if !rollback {
        through_wal(log)?;
    }
    tracing::debug!(
        journal = if rollback { "rollback" } else { "wal" },
        "replay: writing"
    );
    let mut write = |log: &mut SqliteLog| -> Result<_> {
        let tx = log
            .connection_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (previous_digest, written) = write_rebuilt(&tx, p, &mut links)?;
        tx.execute_batch("DELETE FROM quarantine")?;
        write_quarantined(&tx, quarantined)?;
        set_checkpoint(&tx, PROJECTOR, p.last_seq)?;
        tracing::debug!(
            secs = started.elapsed().as_secs_f64(),
            sessions = written.sessions,
            links = written.links,
            rewritten = written.rewritten,
            "replay: rows to write found and written"
        );
        tx.commit()?;
        Ok((previous_digest, written))
    };
    let mut outcome = write(log);
    if rollback && outcome.as_ref().is_err_and(is_busy) {
        // With a rollback journal, a reader (a process that opened the file after the switch)
        // holding it past the busy timeout keeps the commit out; in WAL mode readers never do.
        // Nothing was written: once more, through the WAL.
        tracing::warn!("replay: another process kept the file busy; writing through the WAL");
        log.use_wal()?;
        through_wal(log)?;
        outcome = write(log);
    }
    // Back to WAL (and `synchronous=FULL`) whether or not the write succeeded.
    let restored = log.use_wal();
    let done = outcome?;
    if let Err(e) = restored {
        // The projections are committed; the next open of the log sets WAL mode again.
        tracing::warn!(error = %e, "replay: could not switch the log back to WAL mode");
    }
    Ok(done)
}

/// The rebuilt links, sorted by (session, seq) on a thread of their own (a million take about
/// half a second) while [`rebuild`] writes the sessions; [`SortedLinks::get`] waits for them.
enum SortedLinks<'scope> {
    Sorting(std::thread::ScopedJoinHandle<'scope, Links>),
    Sorted(Links),
    /// The sorting thread panicked.
    Lost,
}

impl<'scope> SortedLinks<'scope> {
    fn spawn<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        mut links: Links,
    ) -> std::io::Result<Self> {
        std::thread::Builder::new()
            .name("verdict-replay-sort".into())
            .spawn_scoped(scope, move || {
                links.sort_unstable();
                links
            })
            .map(Self::Sorting)
    }

    /// The sorted links (waiting for the sort, the first time).
    fn get(&mut self) -> Result<&Links> {
        if let Self::Sorting(_) = self
            && let Self::Sorting(handle) = std::mem::replace(self, Self::Lost)
        {
            *self = handle.join().map_or(Self::Lost, Self::Sorted);
        }
        match self {
            Self::Sorted(links) => Ok(links),
            Self::Sorting(_) | Self::Lost => Err(ProjectionError::Thread("sorting")),
        }
    }
}

/// Settings for writing the rebuilt projections through the WAL: derived data written in one
/// transaction is atomic there without an fsync at its commit (a power cut right after replay
/// leaves the previous projections and checkpoint, which `serve` folds forward). The log's own
/// appends stay `FULL` ([`SqliteLog::use_wal`] sets it back).
fn through_wal(log: &SqliteLog) -> rusqlite::Result<()> {
    log.connection()
        .pragma_update(None, "synchronous", "NORMAL")
}

/// Whether an error is SQLite's "busy" or "locked" (another connection held the lock past the
/// busy handler's limit).
fn is_busy(e: &ProjectionError) -> bool {
    match e {
        ProjectionError::Sql(e) => verdict_log::is_busy(e),
        ProjectionError::Log(verdict_log::StoreError::Sqlite(e)) => verdict_log::is_busy(e),
        _ => false,
    }
}

/// Writes the rebuilt sessions and links over the stored ones (only the rows that differ, or
/// the tables whole), and returns the stored digest when it differed. The quarantine table and
/// the checkpoint are the caller's.
fn write_rebuilt(
    tx: &Connection,
    p: &Projection,
    links: &mut SortedLinks<'_>,
) -> Result<(Option<String>, Written)> {
    let stored_quarantined: i64 =
        tx.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    // Only what differs from the stored rows is written, unless there are none (a first
    // replay) or too many differ: then the tables are written whole.
    let stored_any: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM sessions)", [], |r| r.get(0))?;
    let diff = match stored_any.then(|| diff_sessions(tx, p)).transpose()? {
        Some(Some(sessions)) => diff_links(tx, links.get()?)?.map(|links| (sessions, links)),
        _ => None,
    };
    let Some((sessions, link_changes)) = diff else {
        let previous = stored_digest(tx)?;
        rewrite_all(tx, p, links)?;
        let written = Written {
            sessions: p.sessions().count(),
            links: links.get()?.len(),
            rewritten: true,
        };
        return Ok((Some(previous), written));
    };
    // When every stored session row is what the fold made, so is the stored digest.
    let unchanged =
        sessions.is_empty() && u64::try_from(stored_quarantined).ok() == Some(p.quarantined);
    let previous = (!unchanged).then(|| stored_digest(tx)).transpose()?;
    apply_session_changes(tx, &sessions)?;
    apply_link_changes(tx, links.get()?, &link_changes)?;
    let written = Written {
        sessions: sessions.len(),
        links: link_changes.len(),
        rewritten: false,
    };
    Ok((previous, written))
}

/// What [`rebuild`] made.
#[derive(Debug)]
pub struct Rebuilt {
    /// The projection folded from the log.
    pub projection: Projection,
    /// Its digest ([`Projection::digest`]).
    pub digest: String,
    /// The digest of the projections stored before the rebuild; `None` when they were
    /// exactly the rebuilt ones (so their digest is the projection's).
    pub previous_digest: Option<String>,
    /// How much of the stored projections had to change.
    pub written: Written,
}

/// Rows [`rebuild`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Sessions inserted, replaced or deleted.
    pub sessions: usize,
    /// Session links inserted or deleted.
    pub links: usize,
    /// Whether the tables were cleared and written whole (too much had changed).
    pub rewritten: bool,
}

/// Above this share of changed rows (after [`DIFF_PROBE`] rows), clearing the tables and
/// writing them whole is cheaper than changing rows one by one.
const DIFF_MAX_SHARE: usize = 4;
const DIFF_PROBE: usize = 10_000;

fn too_many(changes: usize, seen: usize) -> bool {
    seen >= DIFF_PROBE && changes * DIFF_MAX_SHARE > seen
}

/// A session row to change.
enum SessionChange<'a> {
    Save(&'a Session, String),
    Delete(String),
}

/// The session rows that differ from `p` (stored rows and the new ones both in id order,
/// merged), or `None` when so many differ that the table is better written whole. Each new
/// row is compared column by column with the stored one, its JSON as text.
fn diff_sessions<'a>(tx: &Connection, p: &'a Projection) -> Result<Option<Vec<SessionChange<'a>>>> {
    let mut stmt = tx.prepare(
        "SELECT session_id, vendor_status, action, updated_at, state FROM sessions \
         ORDER BY session_id",
    )?;
    let mut stored = stmt.query([])?;
    with_serialized(p, |fresh| {
        let mut fresh = fresh.peekable();
        let mut changes = Vec::new();
        let mut seen = 0usize;
        let mut last: Option<String> = None;
        while let Some(row) = stored.next()? {
            // A key that is not text, or stored keys out of the order the merge assumes
            // (another encoding or collation): the tables are written whole instead.
            let Ok(id) = row.get_ref(0)?.as_str() else {
                return Ok(None);
            };
            if last.as_deref().is_some_and(|l| l >= id) {
                return Ok(None);
            }
            last = Some(id.to_owned());
            while let Some(Ok((s, _))) = fresh.peek()
                && s.session_id.as_str() < id
            {
                if let Some(Ok((s, json))) = fresh.next() {
                    changes.push(SessionChange::Save(s, json));
                }
                seen += 1;
            }
            let same = match fresh.peek() {
                Some(Ok((s, _))) if s.session_id == id => true,
                Some(Err(_)) => {
                    if let Some(Err(e)) = fresh.next() {
                        return Err(e);
                    }
                    false
                }
                _ => false,
            };
            if same {
                if let Some(Ok((s, json))) = fresh.next()
                    && !stored_as(row, s, &json)?
                {
                    changes.push(SessionChange::Save(s, json));
                }
            } else {
                changes.push(SessionChange::Delete(id.to_owned()));
            }
            seen += 1;
            if too_many(changes.len(), seen) {
                return Ok(None);
            }
        }
        for item in fresh {
            let (s, json) = item?;
            changes.push(SessionChange::Save(s, json));
            seen += 1;
            if too_many(changes.len(), seen) {
                return Ok(None);
            }
        }
        Ok(Some(changes))
    })
}

/// Whether a stored row holds exactly what `s` (serialized as `json`) would be written as (a
/// value of another type than written differs).
fn stored_as(row: &rusqlite::Row<'_>, s: &Session, json: &str) -> rusqlite::Result<bool> {
    Ok(
        row.get_ref(1)?.as_str_or_null().ok() == Some(s.vendor_status.as_deref())
            && row.get_ref(2)?.as_str_or_null().ok() == Some(decided_action(s))
            && row.get_ref(3)?.as_i64().ok() == Some(s.updated_at)
            && row.get_ref(4)?.as_str().ok() == Some(json),
    )
}

fn apply_session_changes(tx: &Connection, changes: &[SessionChange<'_>]) -> Result<()> {
    // Deletes first: a key is never both deleted and saved, but if it were, the saved row wins.
    let mut delete = tx.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?;
    for c in changes {
        if let SessionChange::Delete(id) = c {
            delete.execute([id])?;
        }
    }
    let mut save = tx.prepare_cached(SAVE_SESSION)?;
    for c in changes {
        if let SessionChange::Save(s, json) = c {
            save_session(&mut save, s, json)?;
        }
    }
    Ok(())
}

/// A link to change: insert `links[i]`, or delete a stored one.
enum LinkChange {
    Insert(usize),
    Delete(String, i64),
}

/// The links that differ from the sorted `links` (merged with the stored ones, in key order),
/// or `None` when so many differ that the table is better written whole.
fn diff_links(tx: &Connection, links: &Links) -> Result<Option<Vec<LinkChange>>> {
    let mut stmt =
        tx.prepare("SELECT session_id, seq FROM session_entries ORDER BY session_id, seq")?;
    let mut stored = stmt.query([])?;
    let mut next = 0usize;
    let mut changes = Vec::new();
    let mut seen = 0usize;
    let mut last: Option<(String, i64)> = None;
    while let Some(row) = stored.next()? {
        // As for sessions: odd values or keys out of order mean writing the table whole.
        let (Ok(id), Ok(seq)) = (row.get_ref(0)?.as_str(), row.get_ref(1)?.as_i64()) else {
            return Ok(None);
        };
        let key = (id, seq);
        if last
            .as_ref()
            .is_some_and(|(lid, lseq)| (lid.as_str(), *lseq) >= key)
        {
            return Ok(None);
        }
        last = Some((id.to_owned(), seq));
        while let Some((lid, lseq)) = links.get(next)
            && (lid.as_str(), i64_of(*lseq)) < key
        {
            changes.push(LinkChange::Insert(next));
            next += 1;
            seen += 1;
        }
        match links.get(next) {
            Some((lid, lseq)) if (lid.as_str(), i64_of(*lseq)) == key => next += 1,
            _ => changes.push(LinkChange::Delete(id.to_owned(), seq)),
        }
        seen += 1;
        if too_many(changes.len(), seen) {
            return Ok(None);
        }
    }
    changes.extend((next..links.len()).map(LinkChange::Insert));
    if too_many(changes.len(), seen + links.len() - next) {
        return Ok(None);
    }
    Ok(Some(changes))
}

fn apply_link_changes(tx: &Connection, links: &Links, changes: &[LinkChange]) -> Result<()> {
    let mut insert = tx.prepare_cached(&values_sql(LINKS_INTO, 2, 1))?;
    let mut delete =
        tx.prepare_cached("DELETE FROM session_entries WHERE session_id = ?1 AND seq = ?2")?;
    for c in changes {
        if let LinkChange::Delete(id, seq) = c {
            delete.execute(params![id, seq])?;
        }
    }
    for c in changes {
        if let LinkChange::Insert(i) = c
            && let Some((id, seq)) = links.get(*i)
        {
            insert.execute(params![id, i64_of(*seq)])?;
        }
    }
    Ok(())
}

/// Clears the session tables and writes them whole (indexes built again after the rows).
fn rewrite_all(tx: &Connection, p: &Projection, links: &mut SortedLinks<'_>) -> Result<()> {
    let mut step = std::time::Instant::now();
    let mut took = |what: &str| {
        tracing::debug!(secs = step.elapsed().as_secs_f64(), "replay: {what}");
        step = std::time::Instant::now();
    };
    tx.execute_batch(
        "DROP INDEX IF EXISTS sessions_by_status; DROP INDEX IF EXISTS sessions_by_action;
         DELETE FROM sessions; DELETE FROM session_entries;",
    )?;
    took("tables cleared");
    // Into the table just cleared: plain inserts.
    let into = "INSERT INTO sessions (session_id, vendor_status, action, updated_at, state)";
    with_serialized(p, |fresh| {
        insert_rows(tx, into, 5, fresh, |stmt, at, (s, json)| {
            stmt.raw_bind_parameter(at, &s.session_id)?;
            stmt.raw_bind_parameter(at + 1, &s.vendor_status)?;
            stmt.raw_bind_parameter(at + 2, decided_action(s))?;
            stmt.raw_bind_parameter(at + 3, s.updated_at)?;
            stmt.raw_bind_parameter(at + 4, json)
        })
    })?;
    took("sessions written");
    tx.execute_batch(
        "CREATE INDEX sessions_by_status ON sessions (vendor_status, session_id);
         CREATE INDEX sessions_by_action ON sessions (action, session_id);",
    )?;
    took("session indexes built");
    let links = links.get()?;
    took("links sorted");
    write_links(tx, links)?;
    took("links written");
    Ok(())
}

/// Entries read ahead per batch by [`scan_in_parallel`].
const SCAN_BATCH: usize = 512;

/// An entry read by the scanning thread, its body decoded.
#[derive(Debug, Default)]
struct ScannedEntry {
    seq: u64,
    source: String,
    event_type: String,
    recorded_at: i64,
    vendor_time: Option<i64>,
    body: Vec<u8>,
}

impl ScannedEntry {
    fn recorded(&self) -> Recorded<'_> {
        Recorded {
            seq: self.seq,
            source: &self.source,
            event_type: &self.event_type,
            recorded_at: self.recorded_at,
            vendor_time: self.vendor_time,
            body: &self.body,
        }
    }
}

/// Runs `f` on every entry of the log in seq order, like [`SqliteLog::scan_raw`], with the reading
/// (SQLite rows, LZ4 decoding) on a second thread with its own read-only connection, so the
/// two cores share the work: `f` gets each entry with what `prepare` (parsing) made of it,
/// while the next batch is read. `prepare` runs on whichever thread has time: the reader runs
/// it for a batch while the folding thread has a backlog, and leaves it to the folding thread
/// otherwise (reading alone is faster than folding, parsing both ways would leave one core
/// idle). Batches are handed back for reuse, so their buffers are allocated once.
fn scan_in_parallel<T: Send>(
    log: &SqliteLog,
    prepare: impl Fn(&Recorded<'_>) -> T + Sync,
    mut f: impl FnMut(Recorded<'_>, T),
) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let prepare = &prepare;
    // Batches sent by the reader and not yet taken by the folding thread.
    let waiting = &AtomicUsize::new(0);
    let path = log
        .connection()
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .ok_or(ProjectionError::NoPath)?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<ScannedEntry>, Vec<T>)>(4);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<ScannedEntry>>();
        let reader = std::thread::Builder::new()
            .name("verdict-replay-scan".into())
            .spawn_scoped(scope, move || -> Result<()> {
                let src = SqliteLog::open_read_only(&path)?;
                // Read the file through a memory map: no copy into SQLite's page cache.
                let _ = src
                    .connection()
                    .pragma_update(None, "mmap_size", 1_i64 << 36);
                let mut batch: Vec<ScannedEntry> = Vec::with_capacity(SCAN_BATCH);
                let mut prepared: Vec<T> = Vec::with_capacity(SCAN_BATCH);
                let mut used = 0;
                let mut parse_here = false;
                let gone = || verdict_log::StoreError::Io("the replay stopped".into());
                src.scan_raw(
                    0,
                    |seq, source, event_type, recorded_at, vendor_time, encoding, stored| {
                        if used == 0 {
                            // More than the batch just sent is waiting: the folder is behind.
                            parse_here = waiting.load(Ordering::Relaxed) > 1;
                        }
                        if used == batch.len() {
                            batch.push(ScannedEntry::default());
                        }
                        let slot = &mut batch[used];
                        slot.seq = seq;
                        slot.source.clear();
                        slot.source.push_str(source);
                        slot.event_type.clear();
                        slot.event_type.push_str(event_type);
                        slot.recorded_at = recorded_at;
                        slot.vendor_time = vendor_time;
                        if !verdict_log::decode_body_into(encoding, stored, &mut slot.body) {
                            return Err(verdict_log::StoreError::Corrupt {
                                seq,
                                what: format!("body cannot be decoded (body_encoding {encoding})"),
                            });
                        }
                        if parse_here {
                            prepared.push(prepare(&slot.recorded()));
                        }
                        used += 1;
                        if used == SCAN_BATCH {
                            let next = empty_rx
                                .try_recv()
                                .unwrap_or_else(|_| Vec::with_capacity(SCAN_BATCH));
                            let ready = (
                                std::mem::replace(&mut batch, next),
                                std::mem::replace(&mut prepared, Vec::with_capacity(SCAN_BATCH)),
                            );
                            waiting.fetch_add(1, Ordering::Relaxed);
                            full_tx.send(ready).map_err(|_| gone())?;
                            used = 0;
                        }
                        Ok(())
                    },
                )?;
                batch.truncate(used);
                if !batch.is_empty() {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    full_tx.send((batch, prepared)).map_err(|_| gone())?;
                }
                Ok(())
            })?;
        for (mut batch, prepared) in full_rx {
            waiting.fetch_sub(1, Ordering::Relaxed);
            // Parsed by the reader, or not (then here).
            let mut prepared = prepared.into_iter();
            for e in &batch {
                let r = e.recorded();
                let x = prepared.next().unwrap_or_else(|| prepare(&r));
                f(r, x);
            }
            batch.truncate(SCAN_BATCH);
            let _ = empty_tx.send(batch);
        }
        reader
            .join()
            .map_err(|_| ProjectionError::Thread("scanning"))?
    })
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use verdict_projector::{Action, DecisionBody, DecisionSource};

    use crate::error::ProjectionError;
    use crate::{rows::*, store::*};

    use super::*;

    #[test]
    fn busy_and_locked_are_told_from_other_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("CREATE TABLE t (x)").unwrap();
        let tx = holder.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let busy = other
            .execute("INSERT INTO t VALUES (2)", [])
            .map_err(ProjectionError::from)
            .unwrap_err();
        assert!(is_busy(&busy), "{busy}");
        let other_error = other
            .execute("INSERT INTO nowhere VALUES (2)", [])
            .map_err(ProjectionError::from)
            .unwrap_err();
        assert!(!is_busy(&other_error), "{other_error}");
        drop(tx);
    }

    #[test]
    fn links_are_sorted_on_the_side_and_waited_for_once() {
        let unsorted: Links = [("b", 3), ("a", 9), ("b", 1), ("a", 2), ("c", 5)]
            .into_iter()
            .map(|(id, seq)| (id.to_owned(), seq))
            .collect();
        let mut expected = unsorted.clone();
        expected.sort_unstable();
        std::thread::scope(|scope| {
            let mut links = SortedLinks::spawn(scope, unsorted).unwrap();
            assert_eq!(links.get().unwrap(), &expected);
            // The second call has them already.
            assert!(matches!(links, SortedLinks::Sorted(_)));
            assert_eq!(links.get().unwrap(), &expected);
        });
        let mut lost = SortedLinks::Lost;
        assert!(lost.get().is_err());
    }

    mod write_rebuilt {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::super::*;
        use super::*;

        fn session(id: &str, (status, updated_at, count): (Option<&str>, i64, u32)) -> Session {
            let mut s = Session::new(id);
            s.vendor_status = status.map(str::to_owned);
            s.updated_at = updated_at;
            s.event_count = count;
            s
        }

        type Fields = (Option<&'static str>, i64, u32);

        fn fields() -> impl Strategy<Value = Fields> {
            (
                prop::option::of(prop::sample::select(vec!["APPROVED", "REVIEW"])),
                0i64..3,
                0u32..3,
            )
        }

        /// A stored session row: id, vendor status, action, updated_at, state.
        type Row = (String, Option<String>, Option<String>, i64, String);

        fn rows(conn: &Connection) -> Vec<Row> {
            let mut stmt = conn
                .prepare("SELECT session_id, vendor_status, action, updated_at, state FROM sessions ORDER BY session_id")
                .unwrap();
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        }

        fn links(conn: &Connection) -> Vec<(String, u64)> {
            let mut stmt = conn
                .prepare("SELECT session_id, seq FROM session_entries ORDER BY session_id, seq")
                .unwrap();
            stmt.query_map([], |r| {
                Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Whatever was stored, writing only what differs leaves the tables exactly as the
            /// rebuilt projection, and the stored digest is reported unless nothing differed.
            #[test]
            fn leaves_what_a_full_rewrite_would(
                stored in prop::collection::btree_map("[a-d]{1,2}", fields(), 0..12),
                rebuilt in prop::collection::btree_map("[a-d]{1,2}", fields(), 0..12),
                stored_links in prop::collection::btree_set(("[a-d]{1,2}", 1u64..6), 0..16),
                rebuilt_links in prop::collection::btree_set(("[a-d]{1,2}", 1u64..6), 0..16),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let mut log = SqliteLog::open(dir.path().join("p.db")).unwrap();
                let stored: BTreeMap<String, Session> =
                    stored.iter().map(|(id, f)| (id.clone(), session(id, *f))).collect();
                {
                    let tx = log.connection_mut().transaction().unwrap();
                    save_sessions(&tx, stored.values()).unwrap();
                    let stored_links: Links = stored_links.iter().cloned().collect();
                    write_links(&tx, &stored_links).unwrap();
                    tx.commit().unwrap();
                }
                let mut p = Projection::default();
                for (id, f) in &rebuilt {
                    p.insert(session(id, *f));
                }
                let new_links: Links = rebuilt_links.iter().cloned().collect();
                let tx = log.connection_mut().transaction().unwrap();
                let (previous, _) =
                    write_rebuilt(&tx, &p, &mut SortedLinks::Sorted(new_links)).unwrap();
                tx.commit().unwrap();

                let expected: Vec<_> = p
                    .sessions()
                    .map(|s| {
                        (s.session_id.clone(), s.vendor_status.clone(), None, s.updated_at,
                         serde_json::to_string(s).unwrap())
                    })
                    .collect();
                prop_assert_eq!(rows(log.connection()), expected);
                prop_assert_eq!(links(log.connection()), rebuilt_links.into_iter().collect::<Vec<_>>());
                let stored_digest = verdict_projector::digest(stored.values(), 0);
                match previous {
                    None => prop_assert_eq!(stored_digest, p.digest()),
                    Some(d) => prop_assert_eq!(d, stored_digest),
                }
            }
        }

        /// Rows written by the previous version (the columns' values repeated in the JSON, order
        /// keys as objects) read by their columns: the stored digest is the columns' one, and
        /// each such row is written again in the current shape.
        #[test]
        fn rows_of_the_previous_shape_are_read_by_their_columns_and_rewritten() {
            let dir = tempfile::tempdir().unwrap();
            let mut log = SqliteLog::open(dir.path().join("p.db")).unwrap();
            let mut p = Projection::default();
            for (id, status) in [("a", "APPROVED"), ("b", "REVIEW")] {
                let mut s = session(id, (Some(status), 5, 1));
                s.finished = Some(verdict_projector::OrderKey {
                    vendor_time: 1_772_410_260_000,
                    terminal: true,
                    seq: 3,
                });
                p.insert(s);
            }
            // "b"'s JSON says APPROVED, its column REVIEW: the column is what counts.
            log.connection()
                .execute_batch(
                    r#"INSERT INTO sessions (session_id, vendor_status, action, updated_at, state) VALUES
                     ('a', 'APPROVED', NULL, 5, '{"session_id":"a","vendor_status":"APPROVED","finished":{"vendor_time":1772410260000,"terminal":1,"seq":3},"event_count":1,"quarantined":0,"updated_at":5,"last_seq":0}'),
                     ('b', 'REVIEW', NULL, 5, '{"session_id":"b","vendor_status":"APPROVED","finished":{"vendor_time":1772410260000,"terminal":1,"seq":3},"event_count":1,"quarantined":0,"updated_at":5,"last_seq":0}');"#,
                )
                .unwrap();
            assert_eq!(stored_digest(log.connection()).unwrap(), p.digest());
            assert_eq!(
                load_session(log.connection(), "b").unwrap().as_ref(),
                p.session("b")
            );
            let tx = log.connection_mut().transaction().unwrap();
            let (previous, written) =
                write_rebuilt(&tx, &p, &mut SortedLinks::Sorted(Links::new())).unwrap();
            tx.commit().unwrap();
            assert_eq!(written.sessions, 2);
            assert_eq!(previous.as_deref(), Some(p.digest().as_str()));
            let expected: Vec<Row> = p
                .sessions()
                .map(|s| {
                    (
                        s.session_id.clone(),
                        s.vendor_status.clone(),
                        None,
                        s.updated_at,
                        serde_json::to_string(s).unwrap(),
                    )
                })
                .collect();
            assert_eq!(rows(log.connection()), expected);
        }

        /// Written whole, many rows per statement (and the rest one by one), the tables hold
        /// exactly the rebuilt sessions and links.
        #[test]
        fn a_whole_rewrite_writes_every_row() {
            let dir = tempfile::tempdir().unwrap();
            let mut log = SqliteLog::open(dir.path().join("p.db")).unwrap();
            let statuses = [Some("APPROVED"), None, Some("REVIEW")];
            let mut p = Projection::default();
            // Not multiples of the rows per statement: some rows go through the single-row path.
            let actions = [Action::Approve, Action::Decline, Action::Review];
            for i in 0..(3 * ROWS_PER_INSERT + 7) {
                let f = (statuses[i % 3], i64::try_from(i).unwrap(), (i % 5) as u32);
                let mut s = session(&format!("s-{i:04}"), f);
                if i % 4 != 0 {
                    // A decision: its action is the row's `action` column.
                    s.decision = Some(Box::new((
                        DecisionBody {
                            decision_id: format!("d-{i}"),
                            session_id: s.session_id.clone(),
                            reference_id: None,
                            user_id: None,
                            action: actions[i % 3],
                            source: DecisionSource::Policy,
                            rules: Vec::new(),
                            reasons: Vec::new(),
                            policy: None,
                            actor: None,
                            decided_at: "2026-11-26T00:00:00.000Z".into(),
                            trigger_seq: 1,
                        },
                        i as u64 + 1,
                    )));
                }
                p.insert(s);
            }
            let new_links: Links = (0..(5 * ROWS_PER_INSERT + 3))
                .map(|i| (format!("s-{:04}", i % 150), i as u64 + 1))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let tx = log.connection_mut().transaction().unwrap();
            let (_, written) =
                write_rebuilt(&tx, &p, &mut SortedLinks::Sorted(new_links.clone())).unwrap();
            tx.commit().unwrap();
            assert!(written.rewritten);
            let expected: Vec<Row> = p
                .sessions()
                .map(|s| {
                    (
                        s.session_id.clone(),
                        s.vendor_status.clone(),
                        decided_action(s).map(str::to_owned),
                        s.updated_at,
                        serde_json::to_string(s).unwrap(),
                    )
                })
                .collect();
            assert_eq!(rows(log.connection()), expected);
            assert_eq!(links(log.connection()), new_links);
        }
    }
}
