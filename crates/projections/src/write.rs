//! Writing what the projector folded: sessions, links, quarantined entries and the
//! checkpoint in one transaction; decisions appended as they are made.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use verdict_log::Committed;

use verdict_projector::{
    Action, DecisionBody, DecisionSource, Fact, Projection, Recorded, Session, fact_session, read,
};

use crate::decide::{Decider, decide, decision_event};
#[allow(unused_imports)]
use crate::error::{ProjectionError, Result};
use crate::rows::{BATCH, FLUSH_EVERY, PROJECTOR, i64_of, load_session};

/// What the projector has folded but not yet written: sessions, links, quarantined entries,
/// the newest seq folded, and the decision appends submitted to the writer and not yet known to
/// be durable. The runner folds batches into it as they are committed and writes it (one
/// transaction, the checkpoint included) every [`FLUSH_EVERY`] or [`BATCH`] entries; decisions
/// do not wait for that write (they are appended, with their outbox rows, as they are made).
#[derive(Debug, Default)]
pub struct Unflushed {
    pub(crate) touched: HashMap<String, Session>,
    pub(crate) links: Links,
    pub(crate) quarantined: Quarantined,
    /// The newest seq folded (0: nothing yet).
    pub(crate) cp: u64,
    pub(crate) entries: usize,
    pub(crate) since: Option<std::time::Instant>,
    /// Decision appends in flight: each with its decisions' (id, action, source).
    pub(crate) appends: Vec<(verdict_log::PendingAppend, Vec<Submitted>)>,
    /// Rules that failed to evaluate, counted once this batch is written (a batch folded
    /// again after a failed write must not count twice).
    pub(crate) rule_errors: Vec<String>,
}

impl Unflushed {
    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Folds `entries` (in seq order; those at or below `checkpoint` and the newest folded are
    /// skipped) and submits the decisions they call for.
    pub fn fold<'a>(
        &mut self,
        conn: &Connection,
        checkpoint: u64,
        entries: impl IntoIterator<Item = Recorded<'a>>,
        decider: Option<&Decider>,
    ) -> Result<()> {
        let start = self.cp.max(checkpoint);
        let mut decisions: Vec<DecisionBody> = Vec::new();
        for r in entries.into_iter().filter(|r| r.seq > start) {
            let fact = read(&r);
            if let Fact::Quarantined { session_id, reason } = &fact {
                self.quarantined
                    .push((r.seq, session_id.clone(), reason.clone()));
            }
            if let Some(id) = fact_session(&fact) {
                self.links.push((id.to_owned(), r.seq));
                if !self.touched.contains_key(id) {
                    let s = load_session(conn, id)?.unwrap_or_else(|| Session::new(id));
                    self.touched.insert(id.to_owned(), s);
                }
                if let Some(s) = self.touched.get_mut(id) {
                    let change = s.apply(&r, &fact);
                    let errors = &mut self.rule_errors;
                    if let Some(d) =
                        decider.and_then(|dc| decide(s, &r, change, &dc.policy.load(), errors))
                    {
                        // Current at once, so a later entry compares against it; its seq is set
                        // when the append is durable, and again when its entry is folded.
                        s.decision = Some(Box::new((d.clone(), 0)));
                        decisions.push(d);
                    }
                }
            }
            self.cp = r.seq;
            self.entries += 1;
            self.since.get_or_insert_with(std::time::Instant::now);
        }
        if let (Some(dc), false) = (decider, decisions.is_empty()) {
            let events = decisions
                .iter()
                .map(|d| decision_event(d, &dc.sinks))
                .collect::<Result<Vec<_>>>()?;
            let pending = dc
                .writer
                .submit_blocking(events)
                .map_err(ProjectionError::Append)?;
            let ids = decisions
                .into_iter()
                .map(|d| (d.decision_id, d.action, d.source))
                .collect();
            self.appends.push((pending, ids));
        }
        Ok(())
    }

    /// Whether it is time to write.
    pub(crate) fn due(&self) -> bool {
        self.entries >= BATCH || self.since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
    }

    /// Waits for the submitted decisions to be durable (setting their seqs in the sessions),
    /// then writes everything and the checkpoint in one transaction. Returns the checkpoint.
    /// On an error nothing is written: the caller drops this and folds again from the stored
    /// checkpoint (decisions are deduplicated by their trigger).
    pub fn flush(&mut self, conn: &mut Connection) -> Result<u64> {
        let mut seqs: HashMap<String, u64> = HashMap::new();
        for (pending, ids) in self.appends.drain(..) {
            let appended = pending.wait_blocking().map_err(ProjectionError::Append)?;
            for (a, (id, action, source)) in appended.iter().zip(ids) {
                // A duplicate is a decision already recorded by an earlier fold of this batch.
                if !a.is_duplicate() {
                    seqs.insert(id, a.seq());
                    metrics::counter!(crate::metrics::DECISIONS, "action" => action.as_str(), "source" => source.as_str())
                        .increment(1);
                }
            }
        }
        for s in self.touched.values_mut() {
            if let Some((d, seq)) = s.decision.as_deref_mut()
                && *seq == 0
                && let Some(n) = seqs.get(&d.decision_id)
            {
                *seq = *n;
            }
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        write_links(&tx, &self.links)?;
        write_quarantined(&tx, &self.quarantined)?;
        save_sessions(&tx, self.touched.values())?;
        set_checkpoint(&tx, PROJECTOR, self.cp)?;
        tx.commit()?;
        if !self.quarantined.is_empty() {
            metrics::counter!(crate::metrics::QUARANTINED).increment(self.quarantined.len() as u64);
        }
        for rule in &self.rule_errors {
            metrics::counter!(crate::metrics::RULE_ERRORS, "rule" => rule.clone()).increment(1);
        }
        let cp = self.cp;
        *self = Self::default();
        Ok(cp)
    }
}

/// A decision submitted for appending: its id, action and source.
pub(crate) type Submitted = (String, Action, DecisionSource);

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
                    .map_err(|source| ProjectionError::State {
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

/// The projector's view of an entry the writer handed over.
pub(crate) fn committed_recorded(c: &Committed) -> Recorded<'_> {
    Recorded {
        seq: c.seq,
        source: &c.source,
        event_type: &c.event_type,
        recorded_at: c.recorded_at,
        vendor_time: c.vendor_time,
        body: &c.body,
    }
}
