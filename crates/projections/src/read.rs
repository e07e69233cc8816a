//! The read queries the HTTP API, the analyst pages and the CLI share.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::value::RawValue;
use verdict_log::{EventStore, NewEvent, SqliteLog, Uuid, rfc3339_ms};
use verdict_projector::fact::{ANALYST_OVERRIDE, INTERNAL_SOURCE};

use verdict_projector::{Fact, OverrideBody, Session, read};

use crate::error::Result;
use crate::rows::{
    SELECT_SESSION, StoredSession, i64_of, load_session, recorded, session_row,
    session_row_for_digest,
};

/// The reads the API, the analyst's pages and the CLI make of the projections (and of the log,
/// for histories): behind this trait so that another store can serve them. [`SqliteLog`]
/// implements it over its connection.
pub trait SessionQueries {
    /// A session's current state.
    fn session(&self, id: &str) -> Result<Option<Session>>;
    /// A session's state folded up to `as_of` (a seq).
    fn session_as_of(&self, id: &str, as_of: u64) -> Result<Option<Session>>;
    /// Whether the log holds any entry of the session.
    fn session_exists(&self, id: &str) -> Result<bool>;
    /// Whether the entry at `seq` belongs to the session.
    fn entry_of(&self, id: &str, seq: u64) -> Result<bool>;
    /// The seqs of the session's entries up to `upto`, in order.
    fn entry_seqs(&self, id: &str, upto: u64) -> Result<Vec<u64>>;
    /// A page of the session's history as JSON (see [`history_json`]).
    fn history(&self, id: &str, page: HistoryPage) -> Result<Option<String>>;
    /// A page of sessions in id order, filtered, and the next page's cursor.
    fn sessions(
        &self,
        vendor_status: Option<&str>,
        action: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Session>, Option<String>)>;
    /// Why each quarantined entry in `after < seq <= upto` could not be used.
    fn quarantined(&self, after: u64, upto: u64) -> Result<HashMap<u64, String>>;
    /// Every session with a finished event, in the order of that event (the backtest).
    fn finished(&self) -> Result<Vec<(u64, StoredSession)>>;
}

impl SessionQueries for SqliteLog {
    fn session(&self, id: &str) -> Result<Option<Session>> {
        load_session(self.connection(), id)
    }

    fn session_as_of(&self, id: &str, as_of: u64) -> Result<Option<Session>> {
        session_as_of(self, id, as_of)
    }

    fn session_exists(&self, id: &str) -> Result<bool> {
        session_exists(self.connection(), id)
    }

    fn entry_of(&self, id: &str, seq: u64) -> Result<bool> {
        entry_of(self.connection(), id, seq)
    }

    fn entry_seqs(&self, id: &str, upto: u64) -> Result<Vec<u64>> {
        entry_seqs(self.connection(), id, upto)
    }

    fn history(&self, id: &str, page: HistoryPage) -> Result<Option<String>> {
        history_json(self, id, page)
    }

    fn sessions(
        &self,
        vendor_status: Option<&str>,
        action: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Session>, Option<String>)> {
        list_sessions(self.connection(), vendor_status, action, after, limit)
    }

    fn quarantined(&self, after: u64, upto: u64) -> Result<HashMap<u64, String>> {
        quarantined_between(self.connection(), after, upto)
    }

    fn finished(&self) -> Result<Vec<(u64, StoredSession)>> {
        finished_sessions(self.connection())
    }
}

/// The digest of the stored (incrementally built) projections.
pub fn stored_digest(conn: &Connection) -> Result<String> {
    let mut stmt = conn.prepare(&format!("{SELECT_SESSION} ORDER BY session_id"))?;
    let sessions = stmt
        .query_map([], session_row_for_digest)?
        .map(|row| {
            let row = row?;
            // A state that does not read is a session no fold produces: the digest differs.
            Ok(row.read().unwrap_or_else(|_| {
                let mut s = Session::new(row.id.as_str());
                s.vendor_status = Some("(unreadable state)".into());
                s
            }))
        })
        .collect::<Result<Vec<Session>>>()?;
    let quarantined: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(verdict_projector::digest(
        sessions.iter(),
        u64::try_from(quarantined).unwrap_or(0),
    ))
}

/// A session folded from its entries up to `as_of` (inclusive).
pub(crate) fn session_as_of(log: &SqliteLog, id: &str, as_of: u64) -> Result<Option<Session>> {
    let seqs = entry_seqs(log.connection(), id, as_of)?;
    if seqs.is_empty() {
        return Ok(None);
    }
    let mut s = Session::new(id);
    for seq in seqs {
        if let Some(e) = log.get(seq)? {
            let r = recorded(&e);
            s.apply(&r, &read(&r));
        }
    }
    Ok(Some(s))
}

/// The seqs of a session's entries after `after`, at most `limit`, in order.
pub(crate) fn entry_seqs_after(
    conn: &Connection,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM session_entries WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let seqs = stmt
        .query_map(
            params![id, i64_of(after), i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get::<_, i64>(0),
        )?
        .map(|s| s.map(|s| u64::try_from(s).unwrap_or(0)))
        .collect::<Result<Vec<u64>, _>>()?;
    Ok(seqs)
}

pub(crate) fn entry_seqs(conn: &Connection, id: &str, upto: u64) -> Result<Vec<u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM session_entries WHERE session_id = ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let seqs = stmt
        .query_map(params![id, i64_of(upto)], |r| r.get::<_, i64>(0))?
        .map(|s| s.map(|s| u64::try_from(s).unwrap_or(0)))
        .collect::<Result<Vec<u64>, _>>()?;
    Ok(seqs)
}

/// The API's JSON of a session.
pub fn session_json(s: &Session) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.session_id,
        "reference_id": s.reference_id,
        "user_id": s.user_id,
        "vendor_status": s.vendor_status,
        "decision": s.decision.as_deref().map(|(d, seq)| {
            let mut v = serde_json::to_value(d).unwrap_or(serde_json::Value::Null);
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("seq".into(), if *seq > 0 { (*seq).into() } else { serde_json::Value::Null });
            }
            v
        }),
        "event_count": s.event_count,
        "quarantined": s.quarantined,
        "updated_at": rfc3339_ms(s.updated_at),
        "last_seq": s.last_seq,
        "vendor_status_updated_by": s.status_update_actor,
        "last_override": s.last_override.as_ref().map(|o| serde_json::json!({
            "seq": o.seq,
            "actor": o.actor,
            "action": o.action,
            "reason": o.reason,
            "ticket": o.ticket,
            "recorded_at": rfc3339_ms(o.recorded_at),
        })),
    })
}

/// One entry of a session's history.
#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub(crate) seq: u64,
    pub(crate) kind: &'static str,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) recorded_at: String,
    pub(crate) vendor_time: Option<String>,
    pub(crate) source: String,
    /// The body exactly as received, when it is JSON.
    pub(crate) payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload_base64: Option<String>,
    /// Why the projector could not use it, if it could not.
    pub(crate) quarantined: Option<String>,
}

/// A page of a session's history: the entries after `after` (a seq), at most `limit`, ending
/// once its entries' bodies hold `max_bytes` (at least one entry).
#[derive(Debug, Clone, Copy)]
pub struct HistoryPage {
    /// Entries with a greater seq.
    pub after: u64,
    /// The most entries.
    pub limit: usize,
    /// The most bytes of bodies.
    pub max_bytes: usize,
}

impl HistoryPage {
    /// The whole history (the CLI).
    pub const ALL: Self = Self {
        after: 0,
        limit: usize::MAX >> 1,
        max_bytes: usize::MAX,
    };
}

/// `{"session_id", "entries": [...], "next"}` as JSON text (payloads byte-exact), or `None` for
/// an unknown session. `next` is the cursor of the following page (the last entry's seq), null
/// at the end.
pub(crate) fn history_json(log: &SqliteLog, id: &str, page: HistoryPage) -> Result<Option<String>> {
    let mut seqs = entry_seqs_after(
        log.connection(),
        id,
        page.after,
        page.limit.saturating_add(1),
    )?;
    if seqs.is_empty() && !session_exists(log.connection(), id)? {
        return Ok(None);
    }
    let next = if seqs.len() > page.limit {
        seqs.truncate(page.limit);
        seqs.last().copied()
    } else {
        None
    };
    let mut entries = Vec::with_capacity(seqs.len());
    let mut next = next;
    let mut bytes = 0usize;
    for seq in seqs {
        // Past `max_bytes` of bodies the page ends here (at least one entry).
        if bytes >= page.max_bytes {
            next = entries.last().map(|e: &HistoryEntry| e.seq);
            break;
        }
        let Some(e) = log.get(seq)? else { continue };
        bytes += e.body.len();
        let fact = read(&recorded(&e));
        let kind = match (e.source.as_str(), e.event_type.as_str()) {
            (INTERNAL_SOURCE, ANALYST_OVERRIDE) => "override",
            (INTERNAL_SOURCE, t) if t.starts_with("decision") => "decision",
            _ => "event",
        };
        let payload = std::str::from_utf8(&e.body)
            .ok()
            .filter(|s| serde_json::from_str::<&RawValue>(s).is_ok())
            .and_then(|s| RawValue::from_string(s.to_owned()).ok());
        let payload_base64 = payload.is_none().then(|| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&e.body)
        });
        entries.push(HistoryEntry {
            seq: e.seq,
            kind,
            event_type: e.event_type.clone(),
            recorded_at: rfc3339_ms(e.recorded_at),
            vendor_time: e.vendor_time.map(rfc3339_ms),
            source: e.source.clone(),
            payload,
            payload_base64,
            quarantined: match fact {
                Fact::Quarantined { reason, .. } => Some(reason),
                _ => None,
            },
        });
    }
    #[derive(Serialize)]
    struct History<'a> {
        session_id: &'a str,
        entries: Vec<HistoryEntry>,
        next: Option<u64>,
    }
    Ok(Some(serde_json::to_string(&History {
        session_id: id,
        entries,
        next,
    })?))
}

/// The query of a [`list_sessions`] page with these filters: `?1` the cursor, `?2` the limit,
/// `?3` (and `?4`) the filters' values. One SQL text per combination of filters, so that
/// SQLite plans each on its index (`sessions_by_status`, `sessions_by_action`; a page is a
/// range of one, in id order). One text for all, `(?3 IS NULL OR vendor_status = ?3)`, is
/// planned once for any value, on the primary key: every row is read and filtered, and a page
/// past the last match (the last page of every filtered listing) read the rest of the table.
pub(crate) fn list_sql(vendor_status: bool, action: bool) -> String {
    let filter = match (vendor_status, action) {
        (false, false) => "",
        (true, false) => "vendor_status = ?3 AND",
        (false, true) => "action = ?3 AND",
        (true, true) => "vendor_status = ?3 AND action = ?4 AND",
    };
    format!("{SELECT_SESSION} WHERE {filter} session_id > ?1 ORDER BY session_id LIMIT ?2")
}

/// A page of sessions in id order, and the cursor of the next page.
pub(crate) fn list_sessions(
    conn: &Connection,
    vendor_status: Option<&str>,
    action: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Session>, Option<String>)> {
    let mut stmt = conn.prepare_cached(&list_sql(vendor_status.is_some(), action.is_some()))?;
    let limit = limit.clamp(1, 1000);
    let after = after.unwrap_or("");
    let limit_plus_one = i64_of(limit as u64 + 1);
    // The parameters: the cursor, the limit, then the filters in use, in the text's order.
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&after, &limit_plus_one];
    bound.extend(
        vendor_status
            .iter()
            .chain(action.iter())
            .map(|v| v as &dyn rusqlite::ToSql),
    );
    let rows = stmt.query(bound.as_slice())?;
    let mut sessions = rows
        .mapped(session_row)
        .map(|row| row?.read())
        .collect::<Result<Vec<Session>>>()?;
    let next = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|s| s.session_id.clone())
    } else {
        None
    };
    Ok((sessions, next))
}

/// The log event recording an analyst override.
pub fn override_event(body: &OverrideBody) -> Result<NewEvent> {
    Ok(NewEvent::new(
        INTERNAL_SOURCE,
        ANALYST_OVERRIDE,
        format!("override:{}", Uuid::now_v7()),
        serde_json::to_vec(body)?,
    ))
}

/// The quarantine reasons of entries with `after < seq <= upto`.
pub(crate) fn quarantined_between(
    conn: &Connection,
    after: u64,
    upto: u64,
) -> Result<HashMap<u64, String>> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, reason FROM quarantine WHERE seq > ?1 AND seq <= ?2")?;
    let rows = stmt
        .query_map(params![i64_of(after), i64_of(upto)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .map(|r| r.map(|(s, reason)| (u64::try_from(s).unwrap_or(0), reason)))
        .collect::<Result<HashMap<u64, String>, _>>()?;
    Ok(rows)
}

/// Checks an override request; the error is the 400 message.
pub fn validate_override(
    session_id: &str,
    actor: &str,
    action: &str,
    reason: &str,
    ticket: Option<String>,
) -> Result<OverrideBody, String> {
    let action = verdict_projector::Action::parse(action)
        .ok_or("action must be approve, decline or review")?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("reason must not be empty".into());
    }
    if reason.len() > 4000 || ticket.as_ref().is_some_and(|t| t.len() > 200) {
        return Err("reason (4000 bytes) or ticket (200 bytes) too long".into());
    }
    Ok(OverrideBody {
        session_id: session_id.to_owned(),
        actor: actor.to_owned(),
        action,
        reason: reason.to_owned(),
        ticket: ticket.filter(|t| !t.trim().is_empty()),
    })
}

/// Every session with a finished event, as (that event's seq, the stored row), in the order
/// of that event: what `verdict policy backtest` evaluates.
pub(crate) fn finished_sessions(conn: &Connection) -> Result<Vec<(u64, StoredSession)>> {
    let mut stmt = conn.prepare(
        // The finished event's seq: the third item of its order key (an object's `seq` in rows
        // written before order keys were stored as arrays).
        "SELECT session_id, vendor_status, updated_at, state, \
         coalesce(json_extract(state, '$.finished[2]'), \
         json_extract(state, '$.finished.seq')) AS f FROM sessions \
         WHERE f IS NOT NULL ORDER BY f",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(4)?;
        out.push((u64::try_from(seq).unwrap_or(0), session_row(row)?));
    }
    Ok(out)
}

/// Whether the entry at `seq` belongs to session `id`.
pub(crate) fn entry_of(conn: &Connection, id: &str, seq: u64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM session_entries WHERE session_id = ?1 AND seq = ?2")?
        .exists(params![id, i64_of(seq)])?)
}

/// Whether the log holds any entry of this session.
pub(crate) fn session_exists(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM session_entries WHERE session_id = ?1 LIMIT 1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {

    use rusqlite::params;
    use verdict_log::SqliteLog;
    use verdict_projector::Session;
    use verdict_projector::fact::{DECISION, INTERNAL_SOURCE};

    use crate::{read::*, store::*};

    /// The log reads decisions by the literal type it names; the projector writes this one.
    #[test]
    fn the_log_and_the_projector_name_decisions_alike() {
        assert_eq!(verdict_log::DECISION_TYPE, DECISION);
        assert_eq!(verdict_log::INTERNAL_SOURCE, INTERNAL_SOURCE);
    }

    /// Every filter of the sessions listing pages through exactly the matching sessions, and
    /// is planned on its index (a page past the last match read the whole table before).
    #[test]
    fn session_listings_page_through_matches_on_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteLog::open(dir.path().join("l.db")).unwrap();
        let statuses = [Some("APPROVED"), Some("REVIEW"), Some("DECLINED"), None];
        let actions = [Some("approve"), None, Some("decline")];
        let rows: Vec<(String, Option<&str>, Option<&str>)> = (0..60)
            .map(|i| (format!("s{i:02}"), statuses[i % 4], actions[i % 3]))
            .collect();
        {
            let tx = log.connection_mut().transaction().unwrap();
            let sessions: Vec<Session> = rows
                .iter()
                .map(|(id, status, _)| {
                    let mut s = Session::new(id);
                    s.vendor_status = status.map(str::to_owned);
                    s
                })
                .collect();
            save_sessions(&tx, sessions.iter()).unwrap();
            for (id, _, action) in &rows {
                tx.execute(
                    "UPDATE sessions SET action = ?2 WHERE session_id = ?1",
                    params![id, action],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let conn = log.connection();
        for status in [None, Some("APPROVED"), Some("REVIEW"), Some("NOPE")] {
            for action in [None, Some("approve"), Some("decline")] {
                let expected: Vec<&str> = rows
                    .iter()
                    .filter(|(_, s, a)| {
                        status.is_none_or(|f| *s == Some(f)) && action.is_none_or(|f| *a == Some(f))
                    })
                    .map(|(id, ..)| id.as_str())
                    .collect();
                let mut got = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let (page, next) =
                        list_sessions(conn, status, action, after.as_deref(), 7).unwrap();
                    assert!(page.len() <= 7);
                    got.extend(page.into_iter().map(|s| s.session_id));
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(got, expected, "vendor_status={status:?} action={action:?}");

                let values: [&dyn rusqlite::ToSql; 4] = [&"", &8, &"x", &"y"];
                let bound = 2 + usize::from(status.is_some()) + usize::from(action.is_some());
                let plan = verdict_log::testing::query_plan(
                    conn,
                    &list_sql(status.is_some(), action.is_some()),
                    &values[..bound],
                );
                let index = match (status, action) {
                    (None, None) => "PRIMARY KEY",
                    (Some(_), None) => "INDEX sessions_by_status",
                    (None, Some(_)) => "INDEX sessions_by_action",
                    (Some(_), Some(_)) => "INDEX sessions_by_",
                };
                assert!(plan.contains(index), "{status:?} {action:?}: {plan}");
            }
        }
    }
}
