use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use crate::entry::{EncodedBody, HashInput, decode_body};
use crate::{
    Appended, Entry, EventStore, GENESIS, Hash, Head, NewEvent, StoreError, entry_hash, migrate,
    now_ms,
};

/// Whether an error is SQLite's "busy" or "locked": another connection held the lock (past the
/// busy handler's limit, where one is set).
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether SQLite refused a read-only connection because the file has a hot rollback journal
/// (`SQLITE_READONLY_ROLLBACK`).
fn is_unfinished(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK)
}

/// One connection to the SQLite log file.
///
/// Opened read-write ([`SqliteLog::open`]) it sets WAL with `synchronous=FULL` and brings the
/// schema up to date; opened read-only ([`SqliteLog::open_read_only`]) it only reads. Several
/// processes may hold connections: appends take SQLite's write lock (`BEGIN IMMEDIATE`) and read
/// the chain head inside that transaction.
#[derive(Debug)]
pub struct SqliteLog {
    conn: Connection,
    /// Set by [`SqliteLog::defer_checkpoints`].
    deferred: Option<Deferred>,
}

/// Checkpoints taken out of the commit: the WAL hook records the WAL's size after each commit,
/// [`EventStore::after_commit`] checkpoints once it reaches `pages`.
#[derive(Debug)]
struct Deferred {
    wal_pages: Arc<AtomicI32>,
    pages: i32,
}

const COLUMNS: &str = "seq, event_id, source, type, event_version, dedupe_key, recorded_at, \
                       vendor_time, headers, body, body_sha256, prev_hash, hash, body_encoding";

/// SQLite's busy handler: called with the number of earlier calls while another connection
/// holds the write lock; `true` tries again. SQLite's own (`busy_timeout`) sleeps 1, 2, 5, 10,
/// 15, 20, 25... ms between tries, far longer than the commits verdict waits for (a WAL commit
/// holds the lock for well under a millisecond plus its fsync), so a writer woke up late and
/// every stage behind it lagged. This one polls every 100 µs for the first 0.1 s, then every
/// millisecond, and gives up (SQLITE_BUSY) after about 5 s, like the old timeout.
fn wait_for_lock(tries: i32) -> bool {
    let pause = if tries < 1000 {
        Duration::from_micros(100)
    } else if tries < 5900 {
        Duration::from_millis(1)
    } else {
        return false;
    };
    std::thread::sleep(pause);
    true
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` for reading and writing, and migrates it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory is created; failing that, SQLite's own error names the problem.
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path)?;
        conn.busy_handler(Some(wait_for_lock))?;
        // 8 KiB pages hold two or three typical (compressed) webhook bodies; only takes effect
        // when the file is created.
        conn.pragma_update(None, "page_size", 8192)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        Ok(Self {
            conn,
            deferred: None,
        })
    }

    /// Opens an existing log read-only. Fails if the file does not exist.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_handler(Some(wait_for_lock))?;
        // The first read takes the shared lock, where SQLite finds a hot journal. Asked again
        // after a moment before it is called unfinished: a writer rolling back its own
        // transaction can make a journal look hot to a reader for an instant.
        let mut retries = 2;
        loop {
            match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
                Ok(_) => {
                    return Ok(Self {
                        conn,
                        deferred: None,
                    });
                }
                Err(e) if is_unfinished(&e) && retries > 0 => {
                    retries -= 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if is_unfinished(&e) => return Err(StoreError::Unfinished),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The underlying connection, for tables that live beside the log (projections).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The underlying connection, mutably (transactions).
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Leaves WAL for a rollback journal (`DELETE`, with `synchronous=FULL`) if no other
    /// connection has the file open, and answers whether it did. For one large rewrite of
    /// derived tables by a process that has the file to itself (replay): in WAL mode every
    /// page written goes to the WAL and is copied into the database by the checkpoint; with a
    /// rollback journal, pages new to the file are written once and only pages that existed
    /// are journaled. Nothing waits for the switch: while another connection (a running
    /// `serve`) has the file open, SQLite refuses it at once and the log stays in WAL mode.
    /// [`SqliteLog::use_wal`] switches back; so does the next [`SqliteLog::open`] (after
    /// rolling back a transaction a crash left behind).
    pub fn try_rollback_journal(&mut self) -> Result<bool, StoreError> {
        self.conn.busy_handler(None::<fn(i32) -> bool>)?;
        let mode = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0));
        self.conn.busy_handler(Some(wait_for_lock))?;
        match mode {
            Ok(m) if m.eq_ignore_ascii_case("delete") => {
                self.conn.pragma_update(None, "synchronous", "FULL")?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if is_busy(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Back to WAL with `synchronous=FULL`, as [`SqliteLog::open`] sets it.
    pub fn use_wal(&mut self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    /// Runs `f` on every entry in seq order, starting after `after`, streaming from one query.
    pub fn for_each_after(
        &self,
        after: u64,
        mut f: impl FnMut(Entry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_row_after(after, |_, _, entry| f(entry?))
    }

    /// Like [`SqliteLog::for_each_after`], but hands over rows that cannot be decoded (with
    /// their seq and, when readable, their stored hash) instead of stopping: for
    /// [`crate::verify`], which reports them and carries on along the chain.
    pub fn for_each_row_after(
        &self,
        after: u64,
        mut f: impl FnMut(u64, Option<Hash>, Result<Entry, StoreError>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq"
        ))?;
        let mut rows = stmt.query([to_i64(after)])?;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0).map_or(0, to_u64);
            let stored_hash = row
                .get::<_, Vec<u8>>(12)
                .ok()
                .and_then(|h| Hash::try_from(h).ok());
            f(seq, stored_hash, entry_from_row(row))?;
        }
        Ok(())
    }

    /// Scans entries after `after` in seq order with only the fields a fold needs, borrowed
    /// from the row, each body as stored (`body_encoding`, bytes) for the caller to decode
    /// ([`crate::decode_body_into`]) where it wants (for replays): `f(seq, source, type, recorded_at,
    /// vendor_time, body_encoding, stored_body)`.
    #[allow(clippy::type_complexity)]
    pub fn scan_raw(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &str, &str, i64, Option<i64>, i64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, source, type, recorded_at, vendor_time, body, body_encoding \
             FROM events WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([to_i64(after)])?;
        while let Some(row) = rows.next()? {
            f(
                to_u64(row.get(0)?),
                row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?,
                row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?,
                row.get(3)?,
                row.get(4)?,
                row.get(6)?,
                row.get_ref(5)?.as_blob().map_err(rusqlite::Error::from)?,
            )?;
        }
        Ok(())
    }

    /// The schema objects that guard the `events` table, as (kind, name, SQL text): every
    /// trigger on it, and the dedupe index.
    pub fn guards(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE tbl_name = 'events' \
             AND (type = 'trigger' OR name = 'events_dedupe') ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Takes WAL checkpoints out of this connection's commits: SQLite's automatic checkpoint
    /// runs inside `COMMIT`, after the transaction is durable but before the call returns, so
    /// whoever waits for that commit also waits for the checkpoint (copying up to `pages` pages
    /// into the database and syncing it: milliseconds, the log writer's slowest commits). With
    /// this, the commit returns as soon as the WAL is synced, and
    /// [`EventStore::after_commit`] runs the same passive checkpoint once the WAL has reached
    /// `pages` pages, when the writer has answered its callers. A later `PRAGMA
    /// wal_autocheckpoint` on this connection would replace the hook (and undo this).
    pub fn defer_checkpoints(&mut self, pages: u32) -> Result<(), StoreError> {
        let wal_pages = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&wal_pages);
        // Replaces the automatic checkpoint (SQLite's own is a WAL hook too).
        self.conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                seen.store(pages, Ordering::Relaxed);
                Ok(())
            },
        ))?;
        self.deferred = Some(Deferred {
            wal_pages,
            pages: i32::try_from(pages).unwrap_or(i32::MAX).max(1),
        });
        Ok(())
    }

    /// Pages (frames) in the WAL after this connection's newest commit, as the WAL hook reported
    /// them, when checkpoints are deferred; 0 once [`EventStore::after_commit`] has tried a
    /// checkpoint, until the next commit.
    pub fn wal_pages(&self) -> Option<u32> {
        let d = self.deferred.as_ref()?;
        u32::try_from(d.wal_pages.load(Ordering::Relaxed)).ok()
    }

    /// Runs a passive WAL checkpoint (never blocks writers or readers). `false` when another
    /// connection was checkpointing this WAL at that moment: nothing to do now, as SQLite's own
    /// automatic checkpoint would conclude too.
    pub fn checkpoint_passive(&self) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        match self.conn.wal_checkpoint_v2(
            Some(rusqlite::MAIN_DB),
            rusqlite::wal::CheckpointMode::PASSIVE,
        ) {
            Ok((frames, copied)) => {
                tracing::trace!(
                    frames,
                    copied,
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "checkpoint"
                );
                Ok(true)
            }
            Err(e) if is_busy(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl EventStore for SqliteLog {
    fn append_batch(&mut self, events: &[&NewEvent]) -> Result<Vec<Appended>, StoreError> {
        let recorded_at = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(events.len());
        {
            let (mut seq, mut prev) = read_head(&tx)?.map_or((0, GENESIS), |h| (h.seq, h.hash));
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (seq, event_id, source, type, event_version, dedupe_key, \
                 recorded_at, vendor_time, headers, body, body_sha256, prev_hash, hash, \
                 body_encoding) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (source, dedupe_key) DO NOTHING",
            )?;
            for ev in events {
                if let Some(original) = stored_earlier(&tx, ev)? {
                    count_repeat(&tx, original, recorded_at)?;
                    out.push(Appended::Duplicate { seq: original });
                    continue;
                }
                let encoded = match &ev.encoded {
                    Some(e) if e.of == ev.body_sha256 => std::borrow::Cow::Borrowed(e),
                    _ => std::borrow::Cow::Owned(EncodedBody::encode(&ev.body, ev.body_sha256)),
                };
                let next = seq + 1;
                let event_id = Uuid::now_v7();
                let headers_json = headers_json(ev);
                let hash = entry_hash(&HashInput {
                    prev_hash: &prev,
                    seq: next,
                    event_id: &event_id,
                    source: &ev.source,
                    event_type: &ev.event_type,
                    event_version: ev.event_version,
                    dedupe_key: &ev.dedupe_key,
                    recorded_at,
                    vendor_time: ev.vendor_time,
                    headers_json: &headers_json,
                    body_sha256: &ev.body_sha256,
                });
                let inserted = insert.execute(params![
                    to_i64(next),
                    event_id
                        .as_hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer()) as &str,
                    ev.source,
                    ev.event_type,
                    ev.event_version,
                    ev.dedupe_key,
                    recorded_at,
                    ev.vendor_time,
                    headers_json,
                    &encoded.bytes[..],
                    &ev.body_sha256[..],
                    &prev[..],
                    &hash[..],
                    encoded.encoding as i64,
                ])?;
                if inserted == 1 {
                    seq = next;
                    prev = hash;
                    if let Some(o) = &ev.outbox {
                        let mut row = tx.prepare_cached(
                            "INSERT OR IGNORE INTO outbox (sink, seq, session_id, decision_id, \
                             state, attempts, next_attempt_at, created_at, updated_at) \
                             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?5)",
                        )?;
                        for target in &o.targets {
                            row.execute(params![target, to_i64(seq), o.key, o.id, recorded_at])?;
                        }
                    }
                    out.push(Appended::New {
                        seq,
                        event_id,
                        recorded_at,
                    });
                } else {
                    let original = find_in(&tx, &ev.source, &ev.dedupe_key)?.ok_or_else(|| {
                        StoreError::Corrupt {
                            seq: next,
                            what: "conflict without a row".into(),
                        }
                    })?;
                    count_repeat(&tx, original, recorded_at)?;
                    out.push(Appended::Duplicate { seq: original });
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn head(&self) -> Result<Option<Head>, StoreError> {
        read_head(&self.conn)
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        // The limit is part of the text, not a parameter: SQLite re-prepares a statement on
        // every step after its LIMIT parameter is bound (the value may change the plan), which
        // cost the projector a sixth of its time. Callers keep the number of distinct limits small.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT {limit}"
        ))?;
        let mut rows = stmt.query([to_i64(after)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(entry_from_row(row)?);
        }
        Ok(out)
    }

    fn get(&self, seq: u64) -> Result<Option<Entry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE seq = ?1"))?;
        let mut rows = stmt.query([to_i64(seq)])?;
        rows.next()?.map(entry_from_row).transpose()
    }

    fn find(&self, source: &str, dedupe_key: &str) -> Result<Option<u64>, StoreError> {
        find_in(&self.conn, source, dedupe_key)
    }

    fn after_commit(&mut self) -> Result<bool, StoreError> {
        let Some(d) = &self.deferred else {
            return Ok(false);
        };
        if d.wal_pages.load(Ordering::Relaxed) < d.pages {
            return Ok(false);
        }
        // Counted again from the next commit: a checkpoint that could not copy everything (a
        // reader still on older frames) is tried again after it, as SQLite's own would be.
        d.wal_pages.store(0, Ordering::Relaxed);
        self.checkpoint_passive()
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            [now_ms()],
        )?;
        Ok(())
    }

    fn repeats(&self, seq: u64) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT count FROM delivery_repeats WHERE seq = ?1")?
            .query_row([to_i64(seq)], |r| r.get(0))
            .optional()?;
        Ok(n.map_or(0, to_u64))
    }
}

fn headers_json(ev: &NewEvent) -> String {
    if ev.headers.is_empty() {
        return "{}".to_owned();
    }
    // Serialising a map of strings cannot fail.
    serde_json::to_string(&ev.headers).unwrap_or_else(|_| "{}".to_owned())
}

fn read_head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(seq, hash)| {
        let seq = to_u64(seq);
        Ok(Head {
            seq,
            hash: to_hash(seq, "hash", &hash)?,
        })
    })
    .transpose()
}

/// The SQL condition that selects verdict's decision entries, written with literals: a partial
/// index can only serve a query whose condition names its values (`events_internal`, migration
/// 0006), and a bound parameter does not.
macro_rules! decisions_sql {
    () => {
        "source = 'verdict' AND type = 'decision'"
    };
}

/// Decisions in a seq range, oldest first: a range of the `events_internal` index (`INDEXED BY`
/// makes a statement that cannot use it an error, not a read of every internal entry).
pub(crate) const DECISIONS_BETWEEN: &str = concat!(
    "SELECT seq, body, body_encoding FROM events INDEXED BY events_internal WHERE ",
    decisions_sql!(),
    " AND seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
);

/// Every decision, oldest first. Through `events_internal` too, but not `INDEXED BY`: read-only
/// commands may open a file not migrated yet.
const ALL_DECISIONS: &str = concat!(
    "SELECT seq, body, body_encoding FROM events WHERE ",
    decisions_sql!(),
    " ORDER BY seq"
);

impl SqliteLog {
    /// The decoded body of the entry at `seq`, if there is one (reads only the body, not the
    /// entry's other fields).
    pub fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body, body_encoding FROM events WHERE seq = ?1")?;
        let mut rows = stmt.query([to_i64(seq)])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let body = decode_body(row.get(1)?, row.get(0)?).ok_or_else(|| StoreError::Corrupt {
            seq,
            what: "the stored body cannot be decoded".into(),
        })?;
        Ok(Some(body))
    }

    /// verdict's decision entries with `after < seq <= upto`, at most `limit`, oldest first, as
    /// (seq, decoded body).
    pub fn decisions_between(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(DECISIONS_BETWEEN)?;
        let mut rows = stmt.query(params![
            to_i64(after),
            to_i64(upto),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decision_row(row)?);
        }
        Ok(out)
    }

    /// Calls `f` with every decision entry, oldest first, as (seq, decoded body).
    pub fn for_each_decision<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .conn
            .prepare(ALL_DECISIONS)
            .map_err(|e| E::from(e.into()))?;
        let mut rows = stmt.query([]).map_err(|e| E::from(e.into()))?;
        while let Some(row) = rows.next().map_err(|e| E::from(e.into()))? {
            let (seq, body) = decision_row(row)?;
            f(seq, &body)?;
        }
        Ok(())
    }
}

/// (seq, decoded body) of a decision row (`seq, body, body_encoding`).
fn decision_row(row: &Row<'_>) -> Result<(u64, Vec<u8>), StoreError> {
    let seq = to_u64(row.get(0)?);
    let body = decode_body(row.get(2)?, row.get(1)?).ok_or_else(|| StoreError::Corrupt {
        seq,
        what: "the stored decision cannot be decoded".into(),
    })?;
    Ok((seq, body))
}

/// The look-up of [`stored_earlier`]: by body only, with no `ORDER BY`; the source and the
/// lowest seq are found in Rust. With an `ORDER BY seq` SQLite prepared the statement again at
/// every call after a commit (a fifth of the writer's time under load: docs/benchmarks.md,
/// "Hardening"); a test counts the re-preparations. Not `INDEXED BY`: without the index (a
/// file someone edited) it is slow, not an ingest outage; a test checks the plan uses it.
pub(crate) const STORED_BY_REQUEST_ID: &str = "SELECT seq, source FROM events \
     WHERE body_sha256 = ?1 AND substr(dedupe_key, 1, 11) = 'request-id:'";

/// The entry `ev` was stored as before its scheme's dedupe key changed, if any: same source,
/// same body, a `request-id:` key (a look-up in the partial index `events_request_id`, which
/// holds only such entries, so new entries cost it nothing).
fn stored_earlier(conn: &Connection, ev: &NewEvent) -> Result<Option<u64>, StoreError> {
    if !ev.legacy_request_id_dedupe {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(STORED_BY_REQUEST_ID)?;
    let mut rows = stmt.query(params![&ev.body_sha256[..]])?;
    let mut first: Option<u64> = None;
    while let Some(row) = rows.next()? {
        if row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)? == ev.source {
            let seq = to_u64(row.get(0)?);
            first = Some(first.map_or(seq, |f| f.min(seq)));
        }
    }
    Ok(first)
}

/// Counts a delivery seen again after it was stored.
fn count_repeat(conn: &Connection, original: u64, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO delivery_repeats (seq, count, last_seen_at) VALUES (?1, 1, ?2) \
         ON CONFLICT (seq) DO UPDATE SET count = count + 1, last_seen_at = excluded.last_seen_at",
    )?
    .execute(params![to_i64(original), at])?;
    Ok(())
}

fn find_in(conn: &Connection, source: &str, dedupe_key: &str) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM events WHERE source = ?1 AND dedupe_key = ?2")?
        .query_row([source, dedupe_key], |r| r.get(0))
        .optional()?;
    Ok(seq.map(to_u64))
}

fn entry_from_row(row: &Row<'_>) -> Result<Entry, StoreError> {
    let seq = to_u64(row.get(0)?);
    let event_id: String = row.get(1)?;
    let event_id = Uuid::parse_str(&event_id).map_err(|e| StoreError::Corrupt {
        seq,
        what: format!("event_id: {e}"),
    })?;
    let body_sha256: Vec<u8> = row.get(10)?;
    let prev_hash: Vec<u8> = row.get(11)?;
    let hash: Vec<u8> = row.get(12)?;
    let encoding: i64 = row.get(13)?;
    let body = decode_body(encoding, row.get(9)?).ok_or_else(|| StoreError::Corrupt {
        seq,
        what: format!("body cannot be decoded (body_encoding {encoding})"),
    })?;
    Ok(Entry {
        seq,
        event_id,
        source: row.get(2)?,
        event_type: row.get(3)?,
        event_version: row.get(4)?,
        dedupe_key: row.get(5)?,
        recorded_at: row.get(6)?,
        vendor_time: row.get(7)?,
        headers_json: row.get(8)?,
        body,
        body_sha256: to_hash(seq, "body_sha256", &body_sha256)?,
        prev_hash: to_hash(seq, "prev_hash", &prev_hash)?,
        hash: to_hash(seq, "hash", &hash)?,
    })
}

fn to_hash(seq: u64, column: &str, bytes: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| StoreError::Corrupt {
        seq,
        what: format!("{column} has {} bytes, expected 32", bytes.len()),
    })
}

/// Seqs are stored as SQLite integers (i64); they never approach i64::MAX.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decisions page is a range of the `events_internal` index: no read of every internal
    /// entry, no sort; its literals are the ones verdict writes.
    #[test]
    fn decisions_are_read_as_a_range_of_their_index() -> Result<(), StoreError> {
        assert!(DECISIONS_BETWEEN.contains(&format!("source = '{}'", crate::INTERNAL_SOURCE)));
        assert!(DECISIONS_BETWEEN.contains(&format!("type = '{}'", crate::DECISION_TYPE)));
        let dir = tempfile::tempdir().map_err(|e| StoreError::Corrupt {
            seq: 0,
            what: e.to_string(),
        })?;
        let log = SqliteLog::open(dir.path().join("d.db"))?;
        let plan = crate::testing::query_plan(&log.conn, DECISIONS_BETWEEN, params![0, 10, 5]);
        assert!(
            plan.contains("USING INDEX events_internal (type=? AND rowid>? AND rowid<?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        Ok(())
    }

    /// The look-up for pre-upgrade `seon` entries is a probe of the partial index (a log of
    /// new entries never scans for it).
    #[test]
    fn the_request_id_lookup_probes_its_partial_index() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Corrupt {
            seq: 0,
            what: e.to_string(),
        })?;
        let log = SqliteLog::open(dir.path().join("p.db"))?;
        let plan: Vec<String> = log
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {STORED_BY_REQUEST_ID}"))?
            .query_map(params![&[0u8; 32][..]], |r| r.get::<_, String>(3))?
            .collect::<Result<_, _>>()?;
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING INDEX events_request_id (body_sha256=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        // Prepared once, not again at every call after a commit (as it was with an `ORDER BY`).
        let mut log = log;
        for i in 0..20u8 {
            let e = NewEvent::new("s", "t", format!("body-sha256:{i}"), vec![i]);
            log.append_batch(&[&e])?;
            let mut stmt = log.conn.prepare_cached(STORED_BY_REQUEST_ID)?;
            let mut rows = stmt.query(params![&[i; 32][..]])?;
            while rows.next()?.is_some() {}
        }
        let stmt = log.conn.prepare_cached(STORED_BY_REQUEST_ID)?;
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
        Ok(())
    }
}
