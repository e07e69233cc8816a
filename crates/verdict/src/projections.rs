//! Persisted projections: the projector's output in SQLite (`migrations/0002_projections.sql`),
//! the runner that keeps it current, and the read queries the HTTP API and the CLI share.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use verdict_log::{Committed, Entry, EventStore, NewEvent, SqliteLog, Uuid, rfc3339_ms};
use verdict_projector::fact::{ANALYST_OVERRIDE, DECISION, INTERNAL_SOURCE};

use verdict_projector::{
    Action, Change, DecisionBody, DecisionSource, Fact, OverrideBody, PolicyRef, Projection,
    Recorded, Session, fact_session, into_fact_session, read,
};

/// The type of the entry that records a policy's text when it becomes active.
pub const POLICY_ACTIVATED: &str = "policy:activated";

/// The projector's checkpoint name.
pub const PROJECTOR: &str = "projector";
/// Entries folded per read, and the most written per transaction, by the runner.
const BATCH: usize = 2000;
/// The longest the runner keeps folded entries before writing them.
const FLUSH_EVERY: Duration = Duration::from_millis(5);

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
pub fn checkpoint(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM checkpoints WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

/// One session's stored state.
pub fn load_session(conn: &Connection, id: &str) -> anyhow::Result<Option<Session>> {
    conn.prepare_cached(&format!("{SELECT_SESSION} WHERE session_id = ?1"))?
        .query_row([id], session_row)
        .optional()?
        .map(|row| row.read())
        .transpose()
}

/// Selects what [`session_row`] reads.
pub const SELECT_SESSION: &str =
    "SELECT session_id, vendor_status, updated_at, state FROM sessions";

/// A session row as stored: the columns the state JSON leaves out, and the JSON.
#[derive(Debug, Clone)]
pub struct StoredSession {
    id: String,
    vendor_status: Option<String>,
    updated_at: i64,
    state: String,
}

/// Reads a row selected by [`SELECT_SESSION`] (its first four columns). A column edited to a
/// value of another type behind verdict's back is an error (`verdict replay` repairs it).
pub fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
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
fn session_row_for_digest(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
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
    pub fn read(&self) -> anyhow::Result<Session> {
        let mut s: Session = serde_json::from_str(&self.state)
            .with_context(|| format!("session {}: stored state", self.id))?;
        s.session_id.clone_from(&self.id);
        s.vendor_status.clone_from(&self.vendor_status);
        s.updated_at = self.updated_at;
        Ok(s)
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decides while the projector folds: the active policy and where decision events go.
#[derive(Debug, Clone)]
pub struct Decider {
    /// The active policy (swapped atomically on reload).
    pub policy: std::sync::Arc<arc_swap::ArcSwap<verdict_rules::Policy>>,
    /// Where decisions are appended.
    pub writer: verdict_log::LogWriter,
    /// The sinks each decision is delivered to (its outbox rows).
    pub sinks: Vec<String>,
}

/// What an applied entry calls for: an override an analyst decision; the newest vendor event,
/// when it is a status update, a vendor decision, and when it is an `idv:session_finished`, the
/// policy's decision on its `details`. Older events call for nothing. Whether a decision is
/// recorded then depends on the session's current one (only a change of action or source is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A decision that needs no policy (analyst, vendor).
    Fixed(Derived),
    /// The policy decides on the entry's `details`.
    Policy,
}

/// See [`Call`].
pub fn call_for(s: &Session, seq: u64, change: Change) -> Option<Call> {
    let newest_vendor = s.vendor_key.is_some_and(|k| k.seq == seq);
    if change.overridden {
        let o = s.last_override.as_ref()?;
        return Some(Call::Fixed(Derived {
            action: o.action,
            source: DecisionSource::Analyst,
            rules: Vec::new(),
            reasons: vec![o.reason.clone()],
            policy: None,
            actor: Some(o.actor.clone()),
            errors: Vec::new(),
        }));
    }
    if change.status_update && newest_vendor {
        let status = s.vendor_status.as_deref()?;
        let action = match status {
            "APPROVED" => Action::Approve,
            "DECLINED" => Action::Decline,
            _ => Action::Review,
        };
        return Some(Call::Fixed(Derived {
            action,
            source: DecisionSource::Vendor,
            rules: Vec::new(),
            reasons: vec![format!("Vendor status changed to {status}")],
            policy: None,
            actor: s.status_update_actor.clone(),
            errors: Vec::new(),
        }));
    }
    (change.finished && newest_vendor).then_some(Call::Policy)
}

/// The policy's decision on a finished event's body, for a session in state `session` (its
/// [`session_json`]).
pub fn policy_decision(
    policy: &verdict_rules::Policy,
    body: &[u8],
    session: serde_json::Value,
) -> Derived {
    let details = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("details").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    let d = policy.evaluate(&verdict_rules::Facts::new(details, session));
    Derived {
        action: Action::parse(d.action.as_str()).unwrap_or(Action::Review),
        source: DecisionSource::Policy,
        rules: d.rules,
        reasons: d.reasons,
        policy: Some(PolicyRef {
            name: policy.name.clone(),
            version: policy.version.clone(),
            sha256: policy.sha256.clone(),
        }),
        actor: None,
        errors: d.errors.into_iter().map(|e| (e.rule, e.error)).collect(),
    }
}

/// A decision as derived from the state, before it gets an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// approve, decline or review.
    pub action: Action,
    /// policy, analyst or vendor.
    pub source: DecisionSource,
    /// Matched rules.
    pub rules: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// The policy (policy decisions).
    pub policy: Option<PolicyRef>,
    /// The analyst or vendor actor.
    pub actor: Option<String>,
    /// Rules whose evaluation failed (rule id, error); they count as review matches.
    pub errors: Vec<(String, String)>,
}

/// The decision to record for an applied entry: [`decision_for`], unless the session's current
/// decision already has that action and source.
fn decide(
    s: &Session,
    e: &Recorded<'_>,
    change: Change,
    policy: &verdict_rules::Policy,
    rule_errors: &mut Vec<String>,
) -> Option<DecisionBody> {
    let d = match call_for(s, e.seq, change)? {
        Call::Fixed(d) => d,
        Call::Policy => {
            let d = policy_decision(policy, e.body, session_json(s));
            for (rule, error) in &d.errors {
                rule_errors.push(rule.clone());
                tracing::warn!(session = %s.session_id, rule = %rule, error = %error, "rule evaluation failed; counted as review");
            }
            d
        }
    };
    if s.decision
        .as_deref()
        .is_some_and(|(c, _)| c.action == d.action && c.source == d.source)
    {
        return None;
    }
    Some(DecisionBody {
        decision_id: Uuid::now_v7().to_string(),
        session_id: s.session_id.clone(),
        reference_id: s.reference_id.clone(),
        user_id: s.user_id.clone(),
        action: d.action,
        source: d.source,
        rules: d.rules,
        reasons: d.reasons,
        policy: d.policy,
        actor: d.actor,
        decided_at: rfc3339_ms(verdict_log::now_ms()),
        trigger_seq: e.seq,
    })
}

/// The log event of a decision; its dedupe key is the trigger, so a batch folded again after a
/// crash does not decide twice.
/// With `sinks`, its outbox rows are written in the same transaction (one per sink).
pub fn decision_event(d: &DecisionBody, sinks: &[String]) -> anyhow::Result<NewEvent> {
    let mut event = NewEvent::new(
        INTERNAL_SOURCE,
        DECISION,
        format!("decision:{}", d.trigger_seq),
        serde_json::to_vec(d)?,
    );
    if !sinks.is_empty() {
        event.outbox = Some(verdict_log::OutboxEntries {
            targets: sinks.to_vec(),
            key: d.session_id.clone(),
            id: d.decision_id.clone(),
        });
    }
    Ok(event)
}

/// What the projector has folded but not yet written: sessions, links, quarantined entries,
/// the newest seq folded, and the decision appends submitted to the writer and not yet known to
/// be durable. The runner folds batches into it as they are committed and writes it (one
/// transaction, the checkpoint included) every [`FLUSH_EVERY`] or [`BATCH`] entries; decisions
/// do not wait for that write (they are appended, with their outbox rows, as they are made).
#[derive(Debug, Default)]
pub struct Unflushed {
    touched: HashMap<String, Session>,
    links: Links,
    quarantined: Quarantined,
    /// The newest seq folded (0: nothing yet).
    cp: u64,
    entries: usize,
    since: Option<std::time::Instant>,
    /// Decision appends in flight: each with its decisions' (id, action, source).
    appends: Vec<(verdict_log::PendingAppend, Vec<Submitted>)>,
    /// Rules that failed to evaluate, counted once this batch is written (a batch folded
    /// again after a failed write must not count twice).
    rule_errors: Vec<String>,
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
    ) -> anyhow::Result<()> {
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
                .collect::<anyhow::Result<Vec<_>>>()?;
            let pending = dc
                .writer
                .submit_blocking(events)
                .map_err(|e| anyhow::anyhow!("appending decisions: {e}"))?;
            let ids = decisions
                .into_iter()
                .map(|d| (d.decision_id, d.action, d.source))
                .collect();
            self.appends.push((pending, ids));
        }
        Ok(())
    }

    /// Whether it is time to write.
    fn due(&self) -> bool {
        self.entries >= BATCH || self.since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
    }

    /// Waits for the submitted decisions to be durable (setting their seqs in the sessions),
    /// then writes everything and the checkpoint in one transaction. Returns the checkpoint.
    /// On an error nothing is written: the caller drops this and folds again from the stored
    /// checkpoint (decisions are deduplicated by their trigger).
    pub fn flush(&mut self, conn: &mut Connection) -> anyhow::Result<u64> {
        let mut seqs: HashMap<String, u64> = HashMap::new();
        for (pending, ids) in self.appends.drain(..) {
            let appended = pending
                .wait_blocking()
                .map_err(|e| anyhow::anyhow!("appending decisions: {e}"))?;
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
type Submitted = (String, Action, DecisionSource);

/// Which entries belong to which session, and the quarantined entries with their reasons.
type Links = Vec<(String, u64)>;
type Quarantined = Vec<(u64, Option<String>, String)>;

fn write_links(tx: &Connection, links: &Links) -> anyhow::Result<()> {
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
const LINKS_INTO: &str = "INSERT OR IGNORE INTO session_entries (session_id, seq)";

/// Rows written by one statement of [`insert_rows`].
const ROWS_PER_INSERT: usize = 64;

/// `into` followed by `VALUES` for `rows` rows of `cols` parameters each.
fn values_sql(into: &str, cols: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    format!("{into} VALUES {}", vec![row.as_str(); rows].join(", "))
}

/// Inserts `rows` with `into` ([`values_sql`]), [`ROWS_PER_INSERT`] rows per statement (a
/// million single-row inserts spend most of their time stepping and resetting the statement)
/// and the rest one by one (so the statement cache holds two texts, whatever the count).
/// `bind(statement, first, row)` binds one row's `cols` values from parameter `first` on.
fn insert_rows<T>(
    tx: &Connection,
    into: &str,
    cols: usize,
    rows: impl IntoIterator<Item = anyhow::Result<T>>,
    bind: impl Fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> anyhow::Result<()> {
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

fn write_quarantined(tx: &Connection, quarantined: &Quarantined) -> anyhow::Result<()> {
    let mut q = tx.prepare_cached(
        "INSERT OR REPLACE INTO quarantine (seq, session_id, reason) VALUES (?1, ?2, ?3)",
    )?;
    for (seq, id, reason) in quarantined {
        q.execute(params![i64_of(*seq), id, reason])?;
    }
    Ok(())
}

/// Writes (or replaces) one session's row.
const SAVE_SESSION: &str = "INSERT INTO sessions (session_id, vendor_status, action, updated_at, state) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (session_id) DO UPDATE SET vendor_status = excluded.vendor_status, \
     action = excluded.action, updated_at = excluded.updated_at, state = excluded.state";

fn save_session(
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
fn decided_action(s: &Session) -> Option<&'static str> {
    s.decision.as_deref().map(|(d, _)| d.action.as_str())
}

fn save_sessions<'a>(
    tx: &Connection,
    sessions: impl Iterator<Item = &'a Session>,
) -> anyhow::Result<()> {
    let mut save = tx.prepare_cached(SAVE_SESSION)?;
    for s in sessions {
        save_session(&mut save, s, &serde_json::to_string(s)?)?;
    }
    Ok(())
}

/// Runs `f` on `p`'s sessions in id order, each with its JSON, serialized in chunks on a
/// second thread while `f` works (a rebuild handles hundreds of thousands at once).
fn with_serialized<'a, T>(
    p: &'a Projection,
    f: impl FnOnce(&mut dyn Iterator<Item = anyhow::Result<(&'a Session, String)>>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
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
                    .with_context(|| format!("session {}: cannot be serialized", s.session_id))
            });
        f(&mut items)
    })
}

fn set_checkpoint(tx: &Connection, name: &str, seq: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO checkpoints (name, seq) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![name, i64_of(seq)])?;
    Ok(())
}

/// The projector's view of an entry the writer handed over.
fn committed_recorded(c: &Committed) -> Recorded<'_> {
    Recorded {
        seq: c.seq,
        source: &c.source,
        event_type: &c.event_type,
        recorded_at: c.recorded_at,
        vendor_time: c.vendor_time,
        body: &c.body,
    }
}

/// The entries the writer handed over ([`verdict_log::Tail`]) and not yet folded.
struct Handed {
    rx: Option<mpsc::Receiver<Vec<Committed>>>,
    held: VecDeque<Committed>,
}

impl Handed {
    /// The entries right after `from` (at most [`BATCH`], seqs following on from `from + 1`),
    /// if the writer handed them over; empty when it did not (they were appended by another
    /// process, or dropped while the projector lagged): the caller reads the store instead.
    fn take_after(&mut self, from: u64) -> Vec<Committed> {
        loop {
            // Entries folded already (read from the store meanwhile) are dropped first, so
            // they never take the room of the ones wanted.
            while self.held.front().is_some_and(|c| c.seq <= from) {
                self.held.pop_front();
            }
            // Bounded: while the projector lags, the channel fills and the writer drops batches.
            if self.held.len() >= BATCH {
                break;
            }
            match self.rx.as_ref().map(mpsc::Receiver::try_recv) {
                Some(Ok(batch)) => self.held.extend(batch),
                _ => break,
            }
        }
        let run = self
            .held
            .iter()
            .take(BATCH)
            .zip(from + 1..)
            .take_while(|(c, want)| c.seq == *want)
            .count();
        self.held.drain(..run).collect()
    }
}

/// The projector thread and its progress.
#[derive(Debug)]
pub struct Runner {
    /// The thread; it ends once the writer has stopped and everything committed is folded.
    pub thread: std::thread::JoinHandle<()>,
    /// The projector's checkpoint: the newest seq folded (and decided on), published after each
    /// batch's transaction.
    pub projected: watch::Receiver<u64>,
}

/// Tails the log from the projector's checkpoint, woken by the writer's commits (no polling),
/// until the writer stops. Runs on its own thread; a failed batch is folded again after a pause.
pub fn spawn_runner(
    path: PathBuf,
    mut committed: watch::Receiver<u64>,
    tail: Option<mpsc::Receiver<Vec<Committed>>>,
    handle: tokio::runtime::Handle,
    decider: Option<Decider>,
) -> std::io::Result<Runner> {
    let mut tail = Handed {
        rx: tail,
        held: VecDeque::new(),
    };
    let (progress, projected) = watch::channel(0u64);
    let thread = std::thread::Builder::new()
        .name("verdict-projector".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            let mut log = loop {
                match SqliteLog::open(&path) {
                    Ok(log) => break log,
                    Err(e) => {
                        tracing::error!(error = %e, "projector cannot open the log; retrying");
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            // Projections are derived state, checkpointed in the same transaction: they commit
            // without an fsync of their own (WAL keeps them atomic; a transaction lost to a
            // power cut is folded again).
            if let Err(e) = log
                .connection()
                .pragma_update(None, "synchronous", "NORMAL")

            {
                tracing::warn!(error = %e, "projector: cannot set up its connection");
            }
            let mut stored = loop {
                match checkpoint(log.connection(), PROJECTOR) {
                    Ok(cp) => break cp,
                    Err(e) => {
                        tracing::error!(error = %e, "projector cannot read its checkpoint; retrying");
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                    }
                }
            };
            progress.send_replace(stored);
            let mut unflushed = Unflushed::default();
            loop {
                let head = *committed.borrow_and_update();
                let from = stored.max(unflushed.cp);
                let step = (|| -> anyhow::Result<bool> {
                    if from < head {
                        let handed = tail.take_after(from);
                        if handed.is_empty() {
                            let entries = log.read_after(from, BATCH)?;
                            let entries = entries.iter().map(recorded);
                            unflushed.fold(log.connection(), stored, entries, decider.as_ref())?;
                        } else {
                            let entries = handed.iter().map(committed_recorded);
                            unflushed.fold(log.connection(), stored, entries, decider.as_ref())?;
                        }
                    }
                    if !unflushed.is_empty() && (from >= head || unflushed.due()) {
                        let caught_up = from >= head;
                        if caught_up && !unflushed.due() {
                            return Ok(false); // wait a little for more before writing
                        }
                        stored = unflushed.flush(log.connection_mut())?;
                        progress.send_replace(stored);
                    }
                    Ok(from < head)
                })();
                match step {
                    Ok(true) => backoff = Duration::from_millis(100),
                    Ok(false) => {
                        // Caught up: wait for the next commit, but not past the flush deadline.
                        let wait = unflushed
                            .since
                            .map(|t| FLUSH_EVERY.saturating_sub(t.elapsed()));
                        let changed = match wait {
                            Some(w) => handle
                                .block_on(async {
                                    tokio::time::timeout(w, committed.changed()).await
                                })
                                .unwrap_or(Ok(())),
                            None => handle.block_on(committed.changed()),
                        };
                        if changed.is_err() {
                            // The writer has stopped: write what is folded, then end.
                            if !unflushed.is_empty() {
                                match unflushed.flush(log.connection_mut()) {
                                    Ok(cp) => {
                                        progress.send_replace(cp);
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "projector: last write failed; it is folded again at the next start");
                                    }
                                }
                            }
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "projector batch failed; folding again");
                        unflushed = Unflushed::default();
                        stored = checkpoint(log.connection(), PROJECTOR).unwrap_or(stored);
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })?;
    Ok(Runner { thread, projected })
}

/// Rebuilds every projection from the log in one transaction. Returns the projection (for its
/// digest). `progress` is called with (entries done, total).
pub fn rebuild(
    log: &mut SqliteLog,
    mut progress: impl FnMut(u64, u64),
    check: Option<&crate::rederive::Sender>,
) -> anyhow::Result<Rebuilt> {
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
            .map_err(|_| anyhow::anyhow!("the replay's digest thread stopped unexpectedly"))?;
        anyhow::Ok((written, digest))
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
) -> anyhow::Result<(Option<String>, Written)> {
    // 64 MiB: the rows go in key order, so what is written stays written (a bigger cache only
    // holds more dirty pages until the commit, in memory the process must fault in first: on
    // a VM, a 256 MiB cache made the commit ~1 s longer), and the index builds' sorter, whose
    // in-memory limit is this size, sorts a million sessions' keys (~40 MB) without a file.
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
    let mut write = |log: &mut SqliteLog| -> anyhow::Result<_> {
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
    fn get(&mut self) -> anyhow::Result<&Links> {
        if let Self::Sorting(_) = self
            && let Self::Sorting(handle) = std::mem::replace(self, Self::Lost)
        {
            *self = handle.join().map_or(Self::Lost, Self::Sorted);
        }
        match self {
            Self::Sorted(links) => Ok(links),
            Self::Sorting(_) | Self::Lost => {
                anyhow::bail!("the replay's sorting thread stopped unexpectedly")
            }
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
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref().is_some_and(verdict_log::is_busy))
}

/// Writes the rebuilt sessions and links over the stored ones (only the rows that differ, or
/// the tables whole), and returns the stored digest when it differed. The quarantine table and
/// the checkpoint are the caller's.
fn write_rebuilt(
    tx: &Connection,
    p: &Projection,
    links: &mut SortedLinks<'_>,
) -> anyhow::Result<(Option<String>, Written)> {
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
fn diff_sessions<'a>(
    tx: &Connection,
    p: &'a Projection,
) -> anyhow::Result<Option<Vec<SessionChange<'a>>>> {
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
                Some(Err(e)) => anyhow::bail!("serializing a session: {e}"),
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

fn apply_session_changes(tx: &Connection, changes: &[SessionChange<'_>]) -> anyhow::Result<()> {
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
fn diff_links(tx: &Connection, links: &Links) -> anyhow::Result<Option<Vec<LinkChange>>> {
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

fn apply_link_changes(
    tx: &Connection,
    links: &Links,
    changes: &[LinkChange],
) -> anyhow::Result<()> {
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
fn rewrite_all(tx: &Connection, p: &Projection, links: &mut SortedLinks<'_>) -> anyhow::Result<()> {
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
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let prepare = &prepare;
    // Batches sent by the reader and not yet taken by the folding thread.
    let waiting = &AtomicUsize::new(0);
    let path = log
        .connection()
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("the log has no file path"))?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<ScannedEntry>, Vec<T>)>(4);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<ScannedEntry>>();
        let reader = std::thread::Builder::new()
            .name("verdict-replay-scan".into())
            .spawn_scoped(scope, move || -> anyhow::Result<()> {
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
            .map_err(|_| anyhow::anyhow!("the replay's scanning thread stopped unexpectedly"))?
    })
}

/// The digest of the stored (incrementally built) projections.
pub fn stored_digest(conn: &Connection) -> anyhow::Result<String> {
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
        .collect::<anyhow::Result<Vec<Session>>>()?;
    let quarantined: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    Ok(verdict_projector::digest(
        sessions.iter(),
        u64::try_from(quarantined).unwrap_or(0),
    ))
}

/// A session folded from its entries up to `as_of` (inclusive).
pub fn session_as_of(log: &SqliteLog, id: &str, as_of: u64) -> anyhow::Result<Option<Session>> {
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
fn entry_seqs_after(
    conn: &Connection,
    id: &str,
    after: u64,
    limit: usize,
) -> anyhow::Result<Vec<u64>> {
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

pub(crate) fn entry_seqs(conn: &Connection, id: &str, upto: u64) -> anyhow::Result<Vec<u64>> {
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
    seq: u64,
    kind: &'static str,
    #[serde(rename = "type")]
    event_type: String,
    recorded_at: String,
    vendor_time: Option<String>,
    source: String,
    /// The body exactly as received, when it is JSON.
    payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    /// Why the projector could not use it, if it could not.
    quarantined: Option<String>,
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
pub fn history_json(
    log: &SqliteLog,
    id: &str,
    page: HistoryPage,
) -> anyhow::Result<Option<String>> {
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
fn list_sql(vendor_status: bool, action: bool) -> String {
    let filter = match (vendor_status, action) {
        (false, false) => "",
        (true, false) => "vendor_status = ?3 AND",
        (false, true) => "action = ?3 AND",
        (true, true) => "vendor_status = ?3 AND action = ?4 AND",
    };
    format!("{SELECT_SESSION} WHERE {filter} session_id > ?1 ORDER BY session_id LIMIT ?2")
}

/// A page of sessions in id order, and the cursor of the next page.
pub fn list_sessions(
    conn: &Connection,
    vendor_status: Option<&str>,
    action: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> anyhow::Result<(Vec<Session>, Option<String>)> {
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
        .collect::<anyhow::Result<Vec<Session>>>()?;
    let next = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|s| s.session_id.clone())
    } else {
        None
    };
    Ok((sessions, next))
}

/// The log event recording an analyst override.
pub fn override_event(body: &OverrideBody) -> anyhow::Result<NewEvent> {
    Ok(NewEvent::new(
        INTERNAL_SOURCE,
        ANALYST_OVERRIDE,
        format!("override:{}", Uuid::now_v7()),
        serde_json::to_vec(body)?,
    ))
}

/// The quarantine reasons of entries with `after < seq <= upto`.
pub fn quarantined_between(
    conn: &Connection,
    after: u64,
    upto: u64,
) -> anyhow::Result<HashMap<u64, String>> {
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

/// Whether the entry at `seq` belongs to session `id`.
pub fn entry_of(conn: &Connection, id: &str, seq: u64) -> anyhow::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM session_entries WHERE session_id = ?1 AND seq = ?2")?
        .exists(params![id, i64_of(seq)])?)
}

/// Whether the log holds any entry of this session.
pub fn session_exists(conn: &Connection, id: &str) -> anyhow::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM session_entries WHERE session_id = ?1 LIMIT 1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
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
            .map_err(|e| anyhow::Error::from(e).context("writing"))
            .unwrap_err();
        assert!(is_busy(&busy), "{busy:#}");
        let other_error = other
            .execute("INSERT INTO nowhere VALUES (2)", [])
            .map_err(anyhow::Error::from)
            .unwrap_err();
        assert!(!is_busy(&other_error), "{other_error:#}");
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

    fn committed(seq: u64) -> Committed {
        Committed {
            seq,
            source: "seon".into(),
            event_type: "idv:session_finished".into(),
            recorded_at: 0,
            vendor_time: None,
            body: Default::default(),
        }
    }

    fn seqs(v: &[Committed]) -> Vec<u64> {
        v.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn handed_over_entries_are_used_only_where_they_follow_on() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        tx.send(vec![committed(3), committed(4)]).unwrap();
        tx.send(vec![committed(5)]).unwrap();
        // Already folded entries are dropped; the run after `from` is taken.
        assert_eq!(seqs(&handed.take_after(3)), [4, 5]);
        // Entry 6 came from another process (not handed over): 7 and 8 wait until the store
        // has been read past 6.
        tx.send(vec![committed(7), committed(8)]).unwrap();
        assert!(handed.take_after(5).is_empty());
        assert_eq!(seqs(&handed.take_after(6)), [7, 8]);
        // Reading the store past what is held drops it.
        tx.send(vec![committed(9), committed(10)]).unwrap();
        assert!(handed.take_after(10).is_empty());
        assert!(handed.held.is_empty());
        // No channel: always the store.
        let mut none = Handed {
            rx: None,
            held: VecDeque::new(),
        };
        assert!(none.take_after(0).is_empty());
    }

    #[test]
    fn entries_read_from_the_store_meanwhile_do_not_block_the_hand_over() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        let batch = u64::try_from(BATCH).unwrap();
        // A full batch that does not follow on (1-4 came from elsewhere): the store is read.
        tx.send((5..5 + batch).map(committed).collect()).unwrap();
        assert!(handed.take_after(0).is_empty());
        // The store was read past all of it; the next batch follows on.
        tx.send(vec![committed(5 + batch), committed(6 + batch)])
            .unwrap();
        assert_eq!(seqs(&handed.take_after(4 + batch)), [5 + batch, 6 + batch]);
    }

    #[test]
    fn handed_over_entries_are_taken_at_most_a_batch_at_a_time() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        let n = u64::try_from(BATCH).unwrap() + 10;
        tx.send((1..=n).map(committed).collect()).unwrap();
        let first = handed.take_after(0);
        assert_eq!(first.len(), BATCH);
        assert_eq!(
            seqs(&handed.take_after(first.len() as u64)),
            (first.len() as u64 + 1..=n).collect::<Vec<_>>()
        );
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
                let plan = crate::testutil::query_plan(
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

    mod write_rebuilt {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::super::*;

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
