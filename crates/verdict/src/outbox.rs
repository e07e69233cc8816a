//! Decision delivery: the outbox table (`migrations/0003_outbox.sql`), the dispatcher that
//! POSTs each decision to every sink, and the queries behind `verdict deliveries`.
//!
//! A decision's outbox rows (one per sink) are written by the log writer in the same
//! transaction as the decision event (`verdict_log::OutboxEntries`: the transactional
//! outbox), so a decision exists if and only if its deliveries are queued. The dispatcher runs
//! on its own thread (its SQLite calls never block the HTTP workers), woken by the writer when a
//! batch committed outbox rows and by finished attempts; between wake-ups it sleeps until the next due attempt, at
//! most [`RESCAN`] (so a redrive by `verdict deliveries retry` in another process is picked up
//! within that time).
//!
//! Invariants:
//! - Per (sink, session) only the lowest-seq pending delivery may be attempted: a later decision
//!   waits for an earlier one; other sessions proceed.
//! - A delivery being attempted is held in memory (never attempted twice at once) until its
//!   result is written; a crash mid-attempt leaves it pending, so it is attempted again at the
//!   next start (at least once, never lost).
//! - Every attempt's result (count, status or error, next time) is written before the next
//!   attempt of that delivery is considered, so a restart resumes the schedule exactly. Results
//!   that finish together are written in one transaction (the dispatcher reads without locks
//!   and writes once per pass, so it competes little with the log writer).

use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use verdict_delivery::{Outcome, Schedule, Signer, classify};
use verdict_log::{EventStore as _, SqliteLog, now_ms, rfc3339_ms};
use verdict_projector::DecisionBody;

/// The longest sleep of the dispatcher without a wake-up.
pub const RESCAN: Duration = Duration::from_secs(1);

/// A decision as delivered and served: the decision event's body plus its `seq` in the log.
#[derive(Debug, Serialize)]
pub struct WireDecision<'a> {
    #[serde(flatten)]
    body: &'a DecisionBody,
    seq: u64,
}

/// The JSON of a decision with its seq.
fn decision_json(body: &DecisionBody, seq: u64) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&WireDecision { body, seq })?)
}

/// The JSON served and delivered for the decision event stored at `seq` (its decoded body).
pub fn stored_decision_json(body: &[u8], seq: u64) -> anyhow::Result<String> {
    let d: DecisionBody =
        serde_json::from_slice(body).with_context(|| format!("seq {seq} is not a decision"))?;
    decision_json(&d, seq)
}

/// One configured sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name (outbox rows, logs).
    pub name: String,
    /// Where decisions are POSTed (`Debug` hides its credentials).
    pub url: crate::config::SinkUrl,
    /// Signs with the sink's `whsec_` secret.
    pub signer: Signer,
}

/// How the dispatcher behaves (`[delivery]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Backoff and attempts.
    pub schedule: Schedule,
    /// Per attempt.
    pub timeout: Duration,
    /// Mark an undelivered decision superseded when a newer one of its session is pending.
    pub supersede: bool,
    /// Attempts in flight at once (all sinks).
    pub concurrency: usize,
}

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
struct Candidate {
    pick: Pick,
    due: i64,
    stale: bool,
}

/// A delivery to attempt.
#[derive(Debug, Clone)]
struct Pick {
    sink: String,
    seq: u64,
    session_id: String,
    decision_id: String,
    attempts: u32,
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

/// The most (newer row, stale row) pairs [`Store::stale`] reads at once.
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

/// The dispatcher's connection and queries.
struct Store {
    log: SqliteLog,
    sinks_json: String,
    /// The configured sinks' names.
    sinks: Vec<String>,
    /// Outbox ids up to this one have been looked at by [`Store::stale`] (as the newer row).
    stale_checked: i64,
}

impl Store {
    fn open(path: &std::path::Path, sinks: &[Sink]) -> anyhow::Result<Self> {
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

    /// The first eligible deliveries by due time (at most `limit`), with whether a newer
    /// pending decision of the same session makes each one stale. A read: no lock is taken.
    ///
    /// Read sink by sink, each a range of `outbox_due` (sink, due time, seq), then merged:
    /// the pending rows of a sink disabled by a 410 or no longer configured (they stay
    /// pending) are never read, where one scan in due order over every sink went past them
    /// at every pass.
    fn candidates(&self, limit: usize) -> anyhow::Result<Vec<Candidate>> {
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
    /// retry` is checked when it is picked, see [`Store::candidates`]). Returns them and
    /// whether more are left to look at (the read is capped).
    fn stale(&mut self) -> anyhow::Result<(Vec<(String, u64)>, bool)> {
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
    fn has_newer_pending(&self, pick: &Pick) -> anyhow::Result<bool> {
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
    ) -> anyhow::Result<usize> {
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
    fn body(&self, seq: u64) -> anyhow::Result<Vec<u8>> {
        let entry = self
            .log
            .get(seq)?
            .with_context(|| format!("decision seq {seq} is not in the log"))?;
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
) -> anyhow::Result<()> {
    let attempts = pick.attempts.saturating_add(1);
    let (status, error) = (result.status.map(i64::from), result.error.as_deref());
    let (state, next) = match result.outcome {
        Outcome::Delivered => ("delivered", now),
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
                metrics::counter!(crate::metrics::SINKS_DISABLED, "sink" => pick.sink.clone())
                    .increment(1);
            }
            ("pending", now)
        }
        Outcome::Retry { .. } if settings.schedule.exhausted(attempts) => {
            metrics::counter!(crate::metrics::SINK_DEAD_LETTERS, "sink" => pick.sink.clone())
                .increment(1);
            ("dead", now)
        }
        Outcome::Retry { after } => {
            let delay = settings.schedule.delay(attempts, after, fastrand::f64());
            let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
            ("pending", next)
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
        state,
        attempts,
        next,
        status,
        error,
        now
    ])?;
    Ok(())
}

/// One attempt's result.
#[derive(Debug)]
struct Attempted {
    outcome: Outcome,
    status: Option<u16>,
    error: Option<String>,
}

/// The dispatcher thread.
#[derive(Debug)]
pub struct Dispatcher {
    /// Ends after the stop signal, once attempts in flight are done (or their timeout passed).
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the dispatcher on its own thread and single-threaded runtime.
pub fn spawn_dispatcher(
    path: &std::path::Path,
    sinks: Vec<Sink>,
    settings: Settings,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Dispatcher> {
    let store = Store::open(path, &sinks)
        .with_context(|| format!("opening the outbox at {}", path.display()))?;
    let recorder = spawn_recorder(
        Store::open(path, &sinks)
            .with_context(|| format!("opening the outbox at {}", path.display()))?,
        settings.clone(),
    )?;
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        // A redirect would turn the POST into a GET elsewhere: a 3xx is retried, not followed.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("verdict/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the delivery runtime")?;
    let thread = std::thread::Builder::new()
        .name("verdict-delivery".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &runtime,
                dispatch(store, recorder, client, sinks, settings, wake, stop),
            );
        })
        .context("starting the delivery thread")?;
    Ok(Dispatcher { thread })
}

/// Deliveries being attempted, by (sink, seq): kept until their result is written, so none is
/// attempted twice at once. (One per session at a time needs nothing here: a delivery in
/// flight is still pending in the outbox, so the later ones of its session are not eligible.)
#[derive(Debug, Default)]
struct Busy {
    deliveries: std::collections::HashSet<(String, u64)>,
}

impl Busy {
    fn has(&self, p: &Pick) -> bool {
        self.deliveries.contains(&(p.sink.clone(), p.seq))
    }
    fn take(&mut self, p: &Pick) {
        self.deliveries.insert((p.sink.clone(), p.seq));
    }
    fn release(&mut self, p: &Pick) {
        self.deliveries.remove(&(p.sink.clone(), p.seq));
    }
    fn len(&self) -> usize {
        self.deliveries.len()
    }
}

type Inflight = tokio::task::JoinSet<(Pick, Option<Attempted>)>;

/// Queues a delivery (sink, seq) to be marked superseded, unless it is queued already or its
/// mark is being written.
fn queue_superseded(
    superseded: &mut Vec<(String, u64)>,
    superseding: &std::collections::HashSet<(String, u64)>,
    key: (String, u64),
) {
    if !superseding.contains(&key) && !superseded.contains(&key) {
        superseded.push(key);
    }
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    mut store: Store,
    recorder: Recorder,
    client: reqwest::Client,
    sinks: Vec<Sink>,
    settings: Settings,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let sinks = std::rc::Rc::new(sinks);
    let mut inflight = Inflight::new();
    let mut busy = Busy::default();
    let mut finished: Vec<(Pick, Attempted)> = Vec::new();
    let mut superseded: Vec<(String, u64)> = Vec::new();
    // Superseded, handed to the recorder, not yet written.
    let mut superseding: std::collections::HashSet<(String, u64)> =
        std::collections::HashSet::new();
    let Recorder {
        tx: to_recorder,
        mut written,
        thread: recorder_thread,
    } = recorder;
    let mut failures = 0u32;
    // New decisions can make waiting ones stale: looked for at start and after each wake-up.
    let mut check_stale = settings.supersede;
    // Attempts that failed: a decision that arrived while they were in flight may have made
    // them stale (the look for stale ones leaves deliveries in flight alone).
    let mut recheck: Vec<Pick> = Vec::new();
    let spawn = |inflight: &mut Inflight, pick: Pick, body: anyhow::Result<Vec<u8>>| {
        let (sinks, client, settings) =
            (std::rc::Rc::clone(&sinks), client.clone(), settings.clone());
        inflight.spawn_local(async move {
            let result = attempt(body, &client, &sinks, &settings, &pick).await;
            (pick, result)
        });
    };
    loop {
        // Collect what finished without waiting.
        while let Some(joined) = inflight.try_join_next() {
            if let Ok(joined) = joined {
                collect(joined, &mut busy, &mut finished);
            }
        }
        if *stop.borrow() {
            break;
        }
        if check_stale {
            check_stale = false;
            match store.stale() {
                Ok((stale, more)) => {
                    // Capped: the rest at the next turn.
                    check_stale = more;
                    // One in flight is let finish (and checked again if it fails).
                    for k in stale.into_iter().filter(|k| !busy.deliveries.contains(k)) {
                        queue_superseded(&mut superseded, &superseding, k);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "delivery: looking for superseded decisions failed");
                }
            }
        }
        for pick in std::mem::take(&mut recheck) {
            match store.has_newer_pending(&pick) {
                Ok(true) => queue_superseded(&mut superseded, &superseding, (pick.sink, pick.seq)),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "delivery: looking for superseded decisions failed");
                }
            }
        }
        let room = settings.concurrency.saturating_sub(inflight.len());
        let now = now_ms();
        let mut wait = RESCAN;
        match store.candidates(busy.len() + room + 1) {
            Ok(candidates) => {
                failures = 0;
                let mut started = 0;
                for c in candidates {
                    if busy.has(&c.pick) || superseding.contains(&(c.pick.sink.clone(), c.pick.seq))
                    {
                        continue;
                    }
                    if c.due > now {
                        wait = Duration::from_millis(u64::try_from(c.due - now).unwrap_or(0));
                        break;
                    }
                    if c.stale && settings.supersede {
                        let key = (c.pick.sink.clone(), c.pick.seq);
                        queue_superseded(&mut superseded, &superseding, key);
                        continue;
                    }
                    if started == room {
                        break;
                    }
                    started += 1;
                    busy.take(&c.pick);
                    let body = store.body(c.pick.seq);
                    spawn(&mut inflight, c.pick, body);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(error = %format!("{e:#}"), "delivery: reading the outbox failed; retrying");
                wait = Duration::from_millis(100u64 << failures.min(5));
            }
        }
        if !(finished.is_empty() && superseded.is_empty()) {
            // Written on the recorder's thread: this one never waits for the write lock.
            superseding.extend(superseded.iter().cloned());
            let batch = Batch {
                superseded: std::mem::take(&mut superseded),
                finished: std::mem::take(&mut finished),
            };
            if to_recorder.send(batch).is_err() {
                tracing::error!("delivery: the recorder has stopped");
                break;
            }
        }
        tokio::select! {
            () = wake.notified() => check_stale = settings.supersede,
            Some(done) = written.recv() => {
                for key in &done.superseded {
                    superseding.remove(key);
                }
                for (pick, attempted) in &done.finished {
                    busy.release(pick);
                    // A failed attempt may now be stale behind a newer decision.
                    if settings.supersede && !matches!(attempted.outcome, Outcome::Delivered) {
                        recheck.push(pick.clone());
                    }
                }
            }
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok(joined) = joined {
                    collect(joined, &mut busy, &mut finished);
                }
            }
            () = tokio::time::sleep(wait.min(RESCAN)) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break; // the server is gone
                }
            }
        }
    }
    // Let attempts in flight finish (bounded by their timeout) and record them; an unfinished
    // one stays pending and is attempted again at the next start.
    let grace = settings.timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async {
        while let Some(joined) = inflight.join_next().await {
            if let Ok(joined) = joined {
                collect(joined, &mut busy, &mut finished);
            }
        }
    })
    .await;
    let _ = to_recorder.send(Batch {
        superseded: Vec::new(),
        finished,
    });
    drop(to_recorder);
    let _ = tokio::task::spawn_blocking(move || recorder_thread.join()).await;
}

/// Results and supersessions for the recorder to write.
#[derive(Debug, Default)]
struct Batch {
    superseded: Vec<(String, u64)>,
    finished: Vec<(Pick, Attempted)>,
}

/// The thread that writes attempt results, and the channel of what it has written.
struct Recorder {
    tx: std::sync::mpsc::Sender<Batch>,
    written: tokio::sync::mpsc::UnboundedReceiver<Batch>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the recorder: it writes every batch queued since its last write in one transaction
/// (retrying a failed write with backoff; results stay in memory meanwhile) and reports what
/// it wrote, so the dispatcher can release those deliveries.
fn spawn_recorder(mut store: Store, settings: Settings) -> anyhow::Result<Recorder> {
    let (tx, rx) = std::sync::mpsc::channel::<Batch>();
    let (done, written) = tokio::sync::mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("verdict-delivery-recorder".into())
        .spawn(move || {
            while let Ok(mut batch) = rx.recv() {
                let mut closing = false;
                loop {
                    match rx.try_recv() {
                        Ok(more) => {
                            batch.superseded.extend(more.superseded);
                            batch.finished.extend(more.finished);
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            closing = true;
                            break;
                        }
                    }
                }
                let mut backoff = Duration::from_millis(50);
                let mut tries = 0u32;
                let marked = loop {
                    match store.write(&batch.superseded, &batch.finished, &settings) {
                        Ok(marked) => break marked,
                        Err(e) => {
                            tries += 1;
                            tracing::error!(error = %format!("{e:#}"), tries, "delivery: writing results failed; retrying");
                            if closing && tries >= 3 {
                                tracing::error!("delivery: giving up at shutdown; those deliveries are attempted again at the next start");
                                return;
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                if marked > 0 {
                    metrics::counter!(crate::metrics::SUPERSEDED).increment(marked as u64);
                    tracing::info!(count = marked, "deliveries superseded by newer decisions");
                }
                if done.send(batch).is_err() {
                    return;
                }
            }
        })
        .context("starting the delivery recorder")?;
    Ok(Recorder {
        tx,
        written,
        thread,
    })
}

/// Takes a finished attempt: its result is written next; without one (the body could not be
/// built) the delivery is left for a later pass.
fn collect(
    joined: (Pick, Option<Attempted>),
    busy: &mut Busy,
    finished: &mut Vec<(Pick, Attempted)>,
) {
    match joined {
        (pick, Some(result)) => finished.push((pick, result)),
        (pick, None) => busy.release(&pick),
    }
}

async fn attempt(
    body: anyhow::Result<Vec<u8>>,
    client: &reqwest::Client,
    sinks: &[Sink],
    settings: &Settings,
    pick: &Pick,
) -> Option<Attempted> {
    let sink = sinks.iter().find(|s| s.name == pick.sink)?;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(sink = %sink.name, seq = pick.seq, error = %format!("{e:#}"), "delivery: cannot build the body");
            return None;
        }
    };
    let ts = now_ms() / 1000;
    let signature = sink.signer.sign(&pick.decision_id, ts, &body);
    let started = std::time::Instant::now();
    let sent = client
        .post(sink.url.expose())
        .header("content-type", "application/json")
        .header("webhook-id", &pick.decision_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let result = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            drain(resp).await;
            Attempted {
                outcome: classify(Some(status), retry_after.as_deref(), ts),
                status: Some(status),
                error: None,
            }
        }
        Err(e) => Attempted {
            outcome: classify(None, None, ts),
            status: None,
            // Without the URL: it may carry credentials, and this text is logged and stored.
            error: Some(error_chain(&e.without_url())),
        },
    };
    let attempts = pick.attempts.saturating_add(1);
    let outcome = match result.outcome {
        Outcome::Delivered => "delivered",
        Outcome::Gone => "gone",
        Outcome::Retry { .. } => "retry",
    };
    metrics::counter!(crate::metrics::SINK_ATTEMPTS, "sink" => sink.name.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(crate::metrics::SINK_ATTEMPT_SECONDS, "sink" => sink.name.clone())
        .record(started.elapsed().as_secs_f64());
    match (&result.outcome, result.status) {
        (Outcome::Delivered, _) => {
            tracing::debug!(sink = %sink.name, seq = pick.seq, decision = %pick.decision_id, attempts, "decision delivered");
        }
        (Outcome::Gone, _) => {
            tracing::error!(sink = %sink.name, "sink answered 410 Gone: disabled until `verdict deliveries enable`");
        }
        (Outcome::Retry { .. }, status) => {
            let dead = settings.schedule.exhausted(attempts);
            tracing::warn!(
                sink = %sink.name, seq = pick.seq, attempts, status = ?status,
                error = result.error.as_deref().unwrap_or(""),
                dead,
                "delivery attempt failed"
            );
        }
    }
    Some(result)
}

/// The most bytes of a sink's answer read (and thrown away): enough to reuse the connection
/// after a normal answer, never a sink's whole stream.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads the answer's body up to [`MAX_ANSWER_BYTES`], so the connection can be reused; a
/// longer answer is dropped with its connection.
async fn drain(mut resp: reqwest::Response) {
    let mut read = 0usize;
    while let Ok(Some(chunk)) = resp.chunk().await {
        read += chunk.len();
        if read > MAX_ANSWER_BYTES {
            return;
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
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
    /// pending, delivered, dead or superseded.
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
pub fn list(conn: &Connection, filter: Filter, limit: usize) -> anyhow::Result<Vec<Row>> {
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
                next_attempt_at: (state == "pending").then(|| rfc3339_ms(next)),
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
pub fn retry_one(conn: &Connection, id: i64) -> anyhow::Result<bool> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    match state.as_deref() {
        None => Ok(false),
        Some("delivered") => anyhow::bail!(
            "delivery {id} was delivered already; sending it again could put an old decision after a newer one"
        ),
        Some(_) => {
            let newer: Option<i64> = conn
                .query_row(&newer_delivered_sql(), [id], |r| r.get(0))
                .optional()?;
            if let Some(seq) = newer {
                anyhow::bail!(
                    "delivery {id}: a newer decision of its session (seq {seq}) was delivered to this sink; sending this one now would overwrite it"
                );
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
pub fn retry_dead(conn: &mut Connection) -> anyhow::Result<(usize, usize)> {
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
pub fn enable(conn: &Connection, sink: &str) -> anyhow::Result<bool> {
    Ok(conn.execute("DELETE FROM sink_status WHERE sink = ?1", [sink])? > 0)
}

/// The disabled sinks with when and why.
pub fn disabled(conn: &Connection) -> anyhow::Result<Vec<(String, String, String)>> {
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
        crate::testutil::query_plan(conn, sql, rusqlite::params_from_iter(params))
    }

    fn store(dir: &tempfile::TempDir, sinks: &[&str]) -> Store {
        let names: Vec<String> = sinks.iter().map(|s| (*s).to_owned()).collect();
        Store {
            log: verdict_log::SqliteLog::open(dir.path().join("o.db")).unwrap(),
            sinks_json: serde_json::to_string(&names).unwrap(),
            sinks: names,
            stale_checked: 0,
        }
    }

    /// A pending outbox row: (sink, seq, session, due).
    fn pending(store: &Store, rows: &[(&str, u64, &str, i64)]) {
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
        let stale = crate::testutil::query_plan(conn, STALE, params!["[\"a\"]", 0]);
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
