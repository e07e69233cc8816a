//! The outbox store: the SQL of `migrations/0003_outbox.sql`'s tables, behind [`OutboxStore`]
//! for the dispatcher, and the queries behind `verdict deliveries`.

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use verdict_delivery::Outcome;
use verdict_log::{EventStore as _, SqliteLog, now_ms, rfc3339_ms};

use crate::{OutboxError, Settings, Sink, State, stored_decision_json};

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// An eligible delivery: when it is due, and whether a newer one of its session is pending.
#[derive(Debug)]
pub struct Candidate {
    /// The delivery.
    pub pick: Pick,
    /// When it is due (unix ms).
    pub due: i64,
    /// A newer decision of its session is pending for the same sink.
    pub stale: bool,
}

/// A delivery to attempt.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The sink.
    pub sink: String,
    /// The decision's seq.
    pub seq: u64,
    /// Its session (deliveries of one session go out in seq order).
    pub session_id: String,
    /// The decision id (`webhook-id`).
    pub decision_id: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// One attempt's result.
#[derive(Debug)]
pub struct Attempted {
    /// What the answer means.
    pub outcome: Outcome,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The transport error, if none came (never holding the URL).
    pub error: Option<String>,
}

/// The first `limit` pending deliveries of sink `?1` by due time, each only if it is its
/// session's first pending one, with whether a newer one of its session is pending: a range of
/// `outbox_due` in its order (no sort), the session checks lookups in `outbox_session`.
fn candidates_sql(limit: usize) -> String {
    format!(
        "SELECT o.sink, o.seq, o.session_id, o.decision_id, o.attempts, o.next_attempt_at, \
         EXISTS (SELECT 1 FROM outbox n WHERE n.state = 'pending' AND n.sink = o.sink \
                 AND n.session_id = o.session_id AND n.seq > o.seq) \
         FROM outbox o INDEXED BY outbox_due WHERE o.state = 'pending' AND o.sink = ?1 \
         AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.sink = o.sink \
                         AND p.session_id = o.session_id AND p.seq < o.seq) \
         ORDER BY o.next_attempt_at, o.seq LIMIT {limit}"
    )
}

/// The most (newer row, stale row) pairs [`OutboxStore::stale`] reads at once.
const STALE_LIMIT: usize = 1000;

/// For each pending row `n` of a configured sink added after outbox id `?2` (a rowid range),
/// the older pending rows `o` of its session and sink (lookups in `outbox_session`).
const STALE: &str = "SELECT n.id, o.sink, o.seq FROM outbox n \
     JOIN outbox o INDEXED BY outbox_session ON o.state = 'pending' AND o.sink = n.sink \
          AND o.session_id = n.session_id AND o.seq < n.seq \
     WHERE n.id > ?2 AND n.state = 'pending' AND n.sink IN (SELECT value FROM json_each(?1)) \
     ORDER BY n.id LIMIT 1000";

/// Whether a newer pending delivery of session `?2` exists for sink `?1` after seq `?3`.
const NEWER_PENDING: &str = "SELECT EXISTS (SELECT 1 FROM outbox n INDEXED BY outbox_session \
     WHERE n.state = 'pending' AND n.sink = ?1 AND n.session_id = ?2 AND n.seq > ?3)";

/// What the dispatcher needs of a store: the eligible deliveries, the stale ones, and a place
/// to write results. [`SqliteOutbox`] is the SQLite one; another backend implements this.
pub trait OutboxStore: Send {
    /// The first eligible deliveries by due time (at most `limit`), each with whether a newer
    /// pending decision of the same session makes it stale. A read: no lock is taken.
    fn candidates(&self, limit: usize) -> Result<Vec<Candidate>, OutboxError>;

    /// Pending deliveries made stale by a newer pending decision of the same session and sink,
    /// found from the rows added since the last call; and whether more are left to look at.
    fn stale(&mut self) -> Result<(Vec<(String, u64)>, bool), OutboxError>;

    /// Whether a newer decision of the same session is pending for the sink of `pick`.
    fn has_newer_pending(&self, pick: &Pick) -> Result<bool, OutboxError>;

    /// Marks deliveries superseded and records finished attempts, in one transaction. Returns
    /// how many were marked (one no longer pending meanwhile is not).
    fn write(
        &mut self,
        superseded: &[(String, u64)],
        results: &[(Pick, Attempted)],
        settings: &Settings,
    ) -> Result<usize, OutboxError>;

    /// The body to send for the decision at `seq`: its JSON with its seq.
    fn body(&self, seq: u64) -> Result<Vec<u8>, OutboxError>;
}

/// The dispatcher's connection and queries on the SQLite file.
#[derive(Debug)]
pub struct SqliteOutbox {
    log: SqliteLog,
    sinks_json: String,
    /// The configured sinks' names.
    sinks: Vec<String>,
    /// Outbox ids up to this one have been looked at by [`OutboxStore::stale`] (as the newer row).
    stale_checked: i64,
}

impl SqliteOutbox {
    /// Opens the outbox of the log at `path` for the configured `sinks`.
    pub fn open(path: &std::path::Path, sinks: &[Sink]) -> Result<Self, OutboxError> {
        let log = SqliteLog::open(path)?;
        // Outbox bookkeeping is atomic in WAL either way; after a power loss the newest updates
        // may be lost, which means a delivery is repeated (at least once), never skipped.
        log.connection()
            .pragma_update(None, "synchronous", "NORMAL")?;
        let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
        Ok(Self {
            log,
            sinks_json: serde_json::to_string(&names)?,
            sinks: names,
            stale_checked: 0,
        })
    }
}

impl OutboxStore for SqliteOutbox {
    /// The first eligible deliveries by due time (at most `limit`), with whether a newer
    /// pending decision of the same session makes each one stale. A read: no lock is taken.
    ///
    /// Read sink by sink, each a range of `outbox_due` (sink, due time, seq), then merged:
    /// the pending rows of a sink disabled by a 410 or no longer configured (they stay
    /// pending) are never read, where one scan in due order over every sink went past them
    /// at every pass.
    fn candidates(&self, limit: usize) -> Result<Vec<Candidate>, OutboxError> {
        // Rounded up, so few distinct texts are cached; the caller stops when it has enough.
        let limit = limit.max(1).next_power_of_two();
        let conn = self.log.connection();
        let disabled: std::collections::HashSet<String> = conn
            .prepare_cached("SELECT sink FROM sink_status")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare_cached(&candidates_sql(limit))?; // a literal limit: a bound one makes SQLite re-prepare on every query
        let mut all = Vec::new();
        for sink in self.sinks.iter().filter(|s| !disabled.contains(*s)) {
            let rows = stmt.query_map([sink], |r| {
                Ok(Candidate {
                    pick: Pick {
                        sink: r.get(0)?,
                        seq: u64_of(r.get(1)?),
                        session_id: r.get(2)?,
                        decision_id: r.get(3)?,
                        attempts: u32_of(r.get(4)?),
                    },
                    due: r.get(5)?,
                    stale: r.get(6)?,
                })
            })?;
            for row in rows {
                all.push(row?);
            }
        }
        all.sort_by_key(|a| (a.due, a.pick.seq));
        all.truncate(limit);
        Ok(all)
    }

    /// Pending deliveries that a newer pending decision of the same session (and sink) makes
    /// stale, whether due or waiting out a backoff, found from the rows added since the last
    /// call (only a new decision makes an older one stale; a row queued again by `deliveries
    /// retry` is checked when it is picked, see [`OutboxStore::candidates`]). Returns them and
    /// whether more are left to look at (the read is capped).
    fn stale(&mut self) -> Result<(Vec<(String, u64)>, bool), OutboxError> {
        let conn = self.log.connection();
        // Read first: rows added after it are looked at again next time, never skipped.
        let newest: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |r| r.get(0))?;
        if newest <= self.stale_checked {
            return Ok((Vec::new(), false));
        }
        let rows = conn
            .prepare_cached(STALE)?
            .query_map(params![self.sinks_json, self.stale_checked], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    u64_of(r.get(2)?),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let more = rows.len() >= STALE_LIMIT;
        self.stale_checked = match rows.last() {
            // The last newer row may have more older ones than were read: again next time.
            Some((id, ..)) if more => id - 1,
            _ => newest,
        };
        let mut stale: Vec<(String, u64)> =
            rows.into_iter().map(|(_, sink, seq)| (sink, seq)).collect();
        stale.sort_unstable();
        stale.dedup();
        Ok((stale, more))
    }

    /// Whether a newer decision of the same session is pending for the sink of `pick`.
    fn has_newer_pending(&self, pick: &Pick) -> Result<bool, OutboxError> {
        Ok(self
            .log
            .connection()
            .prepare_cached(NEWER_PENDING)?
            .query_row(params![pick.sink, pick.session_id, i64_of(pick.seq)], |r| {
                r.get(0)
            })?)
    }

    /// Marks deliveries superseded and records finished attempts, in one transaction. Returns
    /// how many were marked (one no longer pending, delivered or dead meanwhile, is not).
    fn write(
        &mut self,
        superseded: &[(String, u64)],
        results: &[(Pick, Attempted)],
        settings: &Settings,
    ) -> Result<usize, OutboxError> {
        let tx = self
            .log
            .connection_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut marked = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE outbox SET state = 'superseded', updated_at = ?3 \
                 WHERE sink = ?1 AND seq = ?2 AND state = 'pending'",
            )?;
            for (sink, seq) in superseded {
                marked += stmt.execute(params![sink, i64_of(*seq), now])?;
            }
        }
        for (pick, result) in results {
            record(&tx, pick, result, settings, now)?;
        }
        tx.commit()?;
        Ok(marked)
    }

    /// The body to send: the decision event's JSON with its seq.
    fn body(&self, seq: u64) -> Result<Vec<u8>, OutboxError> {
        let entry = self
            .log
            .get(seq)?
            .ok_or(OutboxError::MissingDecision { seq })?;
        Ok(stored_decision_json(&entry.body, seq)?.into_bytes())
    }
}

/// Records an attempt's result (an upsert, so a row is never lost even if it went missing).
fn record(
    conn: &Connection,
    pick: &Pick,
    result: &Attempted,
    settings: &Settings,
    now: i64,
) -> Result<(), OutboxError> {
    let attempts = pick.attempts.saturating_add(1);
    let (status, error) = (result.status.map(i64::from), result.error.as_deref());
    let (state, next) = match result.outcome {
        Outcome::Delivered => (State::Delivered, now),
        Outcome::Gone => {
            // Attempts already in flight may also get a 410: the sink is disabled (and counted)
            // once, at the first.
            let disabled = conn
                .prepare_cached(
                    "INSERT INTO sink_status (sink, disabled_at, reason) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (sink) DO NOTHING",
                )?
                .execute(params![pick.sink, now, "410 Gone"])?;
            if disabled > 0 {
                ::metrics::counter!(crate::metrics::SINKS_DISABLED, "sink" => pick.sink.clone())
                    .increment(1);
            }
            (State::Pending, now)
        }
        Outcome::Retry { .. } if settings.schedule.exhausted(attempts) => {
            ::metrics::counter!(crate::metrics::SINK_DEAD_LETTERS, "sink" => pick.sink.clone())
                .increment(1);
            (State::Dead, now)
        }
        Outcome::Retry { after } => {
            let delay = settings.schedule.delay(attempts, after, fastrand::f64());
            let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
            (State::Pending, next)
        }
    };
    conn.prepare_cached(
        "INSERT INTO outbox (sink, seq, session_id, decision_id, state, attempts, next_attempt_at, \
         last_status, last_error, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10) \
         ON CONFLICT (sink, seq) DO UPDATE SET state = excluded.state, \
         attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
         last_status = excluded.last_status, last_error = excluded.last_error, \
         updated_at = excluded.updated_at WHERE outbox.state = 'pending'",
    )?
    .execute(params![
        pick.sink,
        i64_of(pick.seq),
        pick.session_id,
        pick.decision_id,
        state.as_str(),
        attempts,
        next,
        status,
        error,
        now
    ])?;
    Ok(())
}

/// What `verdict deliveries` does to the outbox: list, queue again, re-enable a sink. Behind
/// this trait so that another store can serve them; [`SqliteLog`] implements it.
pub trait OutboxAdmin {
    /// Deliveries, newest first (at most `limit`).
    fn deliveries(&self, filter: Filter, limit: usize) -> Result<Vec<Row>, OutboxError>;
    /// The disabled sinks: (sink, when, why).
    fn disabled_sinks(&self) -> Result<Vec<(String, String, String)>, OutboxError>;
    /// Queues one delivery again (see [`retry_one`]).
    fn retry(&self, id: i64) -> Result<bool, OutboxError>;
    /// Queues every dead delivery again (see [`retry_dead`]): (queued, superseded).
    fn retry_all_dead(&mut self) -> Result<(usize, usize), OutboxError>;
    /// Enables a sink disabled by a 410; whether it was disabled.
    fn enable_sink(&self, sink: &str) -> Result<bool, OutboxError>;
}

impl OutboxAdmin for SqliteLog {
    fn deliveries(&self, filter: Filter, limit: usize) -> Result<Vec<Row>, OutboxError> {
        list(self.connection(), filter, limit)
    }

    fn disabled_sinks(&self) -> Result<Vec<(String, String, String)>, OutboxError> {
        disabled(self.connection())
    }

    fn retry(&self, id: i64) -> Result<bool, OutboxError> {
        retry_one(self.connection(), id)
    }

    fn retry_all_dead(&mut self) -> Result<(usize, usize), OutboxError> {
        retry_dead(self.connection_mut())
    }

    fn enable_sink(&self, sink: &str) -> Result<bool, OutboxError> {
        enable(self.connection(), sink)
    }
}

/// One row of `verdict deliveries list`.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The delivery id.
    pub id: i64,
    /// The sink.
    pub sink: String,
    /// The decision's seq.
    pub seq: u64,
    /// The session.
    pub session_id: String,
    /// The decision id (webhook-id).
    pub decision_id: String,
    /// Where it stands, as stored (`pending`, `delivered`, `dead` or `superseded`; a state this
    /// version does not know is listed as it is).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// RFC 3339 (pending only).
    pub next_attempt_at: Option<String>,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last transport error.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pending and dead.
    Undelivered,
    /// Dead only.
    Dead,
    /// Every state.
    All,
}

/// Lists deliveries (newest first).
pub fn list(conn: &Connection, filter: Filter, limit: usize) -> Result<Vec<Row>, OutboxError> {
    let states = match filter {
        Filter::Undelivered => "('pending','dead')",
        Filter::Dead => "('dead')",
        Filter::All => "('pending','dead','delivered','superseded')",
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT id, sink, seq, session_id, decision_id, state, attempts, next_attempt_at, \
         last_status, last_error, updated_at FROM outbox WHERE state IN {states} \
         ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            let state: String = r.get(5)?;
            let next: i64 = r.get(7)?;
            Ok(Row {
                id: r.get(0)?,
                sink: r.get(1)?,
                seq: u64_of(r.get(2)?),
                session_id: r.get(3)?,
                decision_id: r.get(4)?,
                next_attempt_at: (State::parse(&state) == Some(State::Pending))
                    .then(|| rfc3339_ms(next)),
                state,
                attempts: u32_of(r.get(6)?),
                last_status: r
                    .get::<_, Option<i64>>(8)?
                    .and_then(|s| u16::try_from(s).ok()),
                last_error: r.get(9)?,
                updated_at: rfc3339_ms(r.get(10)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Queues one delivery again (dead, superseded or pending: due now, attempts reset).
/// `Ok(false)`: no such delivery; an error: it was already delivered.
pub fn retry_one(conn: &Connection, id: i64) -> Result<bool, OutboxError> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    match state.as_deref() {
        None => Ok(false),
        Some("delivered") => Err(OutboxError::AlreadyDelivered { id }),
        Some(_) => {
            let newer: Option<i64> = conn
                .query_row(&newer_delivered_sql(), [id], |r| r.get(0))
                .optional()?;
            if let Some(seq) = newer {
                return Err(OutboxError::NewerDelivered { id, seq });
            }
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2, \
                 updated_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            Ok(true)
        }
    }
}

/// Joins a delivery `o` to a newer delivered decision `n` of the same session and sink: a
/// lookup in the `outbox_delivered` index (migration 0006).
const NEWER_DELIVERED: &str = "ON n.sink = o.sink AND n.session_id = o.session_id \
     AND n.seq > o.seq AND n.state = 'delivered'";

/// The seq of a newer delivered decision for delivery `?1`.
fn newer_delivered_sql() -> String {
    format!("SELECT n.seq FROM outbox o JOIN outbox n {NEWER_DELIVERED} WHERE o.id = ?1")
}

/// The dead deliveries that a newer delivered decision of their session supersedes.
fn dead_superseded_sql() -> String {
    format!("SELECT o.id FROM outbox o JOIN outbox n {NEWER_DELIVERED} WHERE o.state = 'dead'")
}

/// Queues every dead delivery again, except those whose session has had a newer decision
/// delivered to the same sink since (sending them would overwrite it): those are marked
/// superseded. Returns (queued, superseded).
pub fn retry_dead(conn: &mut Connection) -> Result<(usize, usize), OutboxError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_ms();
    let superseded = tx.execute(
        &format!(
            "UPDATE outbox SET state = 'superseded', updated_at = ?1 WHERE state = 'dead' \
             AND id IN ({})",
            dead_superseded_sql()
        ),
        [now],
    )?;
    let queued = tx.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?1, \
         updated_at = ?1 WHERE state = 'dead'",
        [now],
    )?;
    tx.commit()?;
    Ok((queued, superseded))
}

/// Enables a sink disabled by a 410. Returns whether it was disabled.
pub fn enable(conn: &Connection, sink: &str) -> Result<bool, OutboxError> {
    Ok(conn.execute("DELETE FROM sink_status WHERE sink = ?1", [sink])? > 0)
}

/// The disabled sinks with when and why.
pub fn disabled(conn: &Connection) -> Result<Vec<(String, String, String)>, OutboxError> {
    let mut stmt =
        conn.prepare("SELECT sink, disabled_at, reason FROM sink_status ORDER BY sink")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                rfc3339_ms(r.get(1)?),
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str, params: &[i64]) -> String {
        verdict_log::testing::query_plan(conn, sql, rusqlite::params_from_iter(params))
    }

    fn store(dir: &tempfile::TempDir, sinks: &[&str]) -> SqliteOutbox {
        let names: Vec<String> = sinks.iter().map(|s| (*s).to_owned()).collect();
        SqliteOutbox {
            log: verdict_log::SqliteLog::open(dir.path().join("o.db")).unwrap(),
            sinks_json: serde_json::to_string(&names).unwrap(),
            sinks: names,
            stale_checked: 0,
        }
    }

    /// A pending outbox row: (sink, seq, session, due).
    fn pending(store: &SqliteOutbox, rows: &[(&str, u64, &str, i64)]) {
        for (sink, seq, session, due) in rows {
            store
                .log
                .connection()
                .execute(
                    "INSERT INTO outbox (sink, seq, session_id, decision_id, state, \
                     next_attempt_at, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, 'd', 'pending', ?4, 0, 0)",
                    params![sink, i64_of(*seq), session, due],
                )
                .unwrap();
        }
    }

    /// The dispatcher's reads are ranges of their indexes: candidates per sink in due order
    /// (no sort), stale rows from the rows added since the last look.
    #[test]
    fn the_dispatchers_reads_are_index_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, &["a"]);
        let conn = s.log.connection();
        let candidates = plan(conn, &candidates_sql(64), &[0]);
        assert!(
            candidates.contains("USING INDEX outbox_due (sink=?)"),
            "{candidates}"
        );
        assert!(!candidates.contains("TEMP B-TREE"), "{candidates}");
        let stale = verdict_log::testing::query_plan(conn, STALE, params!["[\"a\"]", 0]);
        // Either range of the new rows: all of them, or the pending ones.
        assert!(
            stale.contains("SEARCH n USING INTEGER PRIMARY KEY (rowid>?)")
                || stale.contains("SEARCH n USING INDEX outbox_dead (state=? AND id>?)"),
            "{stale}"
        );
        assert!(!stale.contains("TEMP B-TREE"), "{stale}");
        assert!(stale.contains("INDEX outbox_session"), "{stale}");
        assert!(STALE.ends_with(&format!("LIMIT {STALE_LIMIT}")));
    }

    /// Candidates come sink by sink, merged by due time; a disabled sink's rows and those of a
    /// sink no longer configured are not among them, nor a session's later pending rows.
    #[test]
    fn candidates_skip_disabled_and_unknown_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, &["a", "b", "off"]);
        pending(
            &s,
            &[
                ("a", 1, "s1", 30),
                ("b", 2, "s2", 10),
                ("a", 3, "s3", 20),
                ("a", 4, "s1", 5), // s1's second: not eligible before seq 1
                ("off", 5, "s4", 1),
                ("gone", 6, "s5", 1),
            ],
        );
        s.log
            .connection()
            .execute(
                "INSERT INTO sink_status (sink, disabled_at, reason) VALUES ('off', 0, '410')",
                [],
            )
            .unwrap();
        let got: Vec<(String, u64, bool)> = s
            .candidates(10)
            .unwrap()
            .into_iter()
            .map(|c| (c.pick.sink, c.pick.seq, c.stale))
            .collect();
        assert_eq!(
            got,
            [
                ("b".to_owned(), 2, false),
                ("a".to_owned(), 3, false),
                ("a".to_owned(), 1, true)
            ]
        );
        assert_eq!(s.candidates(2).unwrap().len(), 2);
    }

    /// Stale rows are found from the rows added since the last look: each pair once, and
    /// again only when a newer decision arrives.
    #[test]
    fn stale_rows_are_found_from_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir, &["a"]);
        pending(&s, &[("a", 1, "s1", 0), ("a", 2, "s2", 0)]);
        assert_eq!(s.stale().unwrap(), (vec![], false));
        pending(&s, &[("a", 3, "s1", 0), ("x", 4, "s2", 0)]);
        assert_eq!(s.stale().unwrap(), (vec![("a".to_owned(), 1)], false));
        assert_eq!(s.stale().unwrap(), (vec![], false));
        pending(&s, &[("a", 5, "s1", 0)]);
        assert_eq!(
            s.stale().unwrap(),
            (vec![("a".to_owned(), 1), ("a".to_owned(), 3)], false)
        );
        let pick = |seq| Pick {
            sink: "a".into(),
            seq,
            session_id: "s1".into(),
            decision_id: "d".into(),
            attempts: 0,
        };
        assert!(s.has_newer_pending(&pick(3)).unwrap());
        assert!(!s.has_newer_pending(&pick(5)).unwrap());
    }

    /// Past the cap, the look goes on at the next call from where it stopped: every stale row
    /// is found, in a few calls.
    #[test]
    fn the_look_for_stale_rows_goes_on_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir, &["a"]);
        // 60 pending decisions of one session: 1,770 (newer, older) pairs, over the cap.
        let rows: Vec<(&str, u64, &str, i64)> = (1..=60).map(|seq| ("a", seq, "s1", 0)).collect();
        pending(&s, &rows);
        let mut found = std::collections::BTreeSet::new();
        let mut calls = 0;
        loop {
            let (stale, more) = s.stale().unwrap();
            calls += 1;
            found.extend(stale.into_iter().map(|(_, seq)| seq));
            if !more {
                break;
            }
            assert!(calls < 10, "no progress past the cap");
        }
        assert!(calls > 1, "the cap was not reached");
        assert_eq!(found, (1..60).collect());
        assert_eq!(s.stale().unwrap(), (vec![], false));
    }

    /// Whether a newer decision of a delivery's session was delivered is a lookup in the
    /// `outbox_delivered` index (migration 0006), not a read of every later delivery of the
    /// sink: `deliveries retry` runs it for each dead delivery inside a write transaction.
    #[test]
    fn a_newer_delivered_decision_is_looked_up_on_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = verdict_log::SqliteLog::open(dir.path().join("o.db")).unwrap();
        let conn = log.connection();
        for (sql, params) in [
            (newer_delivered_sql(), &[1][..]),
            (dead_superseded_sql(), &[]),
        ] {
            let plan = plan(conn, &sql, params);
            assert!(
                plan.contains("INDEX outbox_delivered (sink=? AND session_id=? AND seq>?)"),
                "{sql}: {plan}"
            );
        }
    }
}
