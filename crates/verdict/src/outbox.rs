//! Decision delivery: the outbox table (`migrations/0003_outbox.sql`), the dispatcher that
//! POSTs each decision to every sink, and the queries behind `verdict deliveries`.
//!
//! The projector adds one outbox row per (sink, decision) in the same transaction as its
//! checkpoint ([`enqueue`]). The dispatcher runs on its own thread (its SQLite calls never block
//! the HTTP workers), woken by the projector after each batch and by finished attempts; between
//! wake-ups it sleeps until the next due attempt, at most [`RESCAN`] (so a redrive by
//! `verdict deliveries retry` in another process is picked up within that time).
//!
//! Invariants:
//! - Per (sink, session) only the lowest-seq pending delivery may be attempted: a later decision
//!   waits for an earlier one; other sessions proceed.
//! - An attempt first claims its row by moving `next_attempt_at` to the end of a lease
//!   (timeout + 5 s); a crash mid-attempt therefore retries after the lease, never loses it.
//! - Every attempt's result (count, status or error, next time) is written before the next
//!   attempt is considered, so a restart resumes the schedule exactly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use verdict_delivery::{Outcome, Schedule, Signer, classify};
use verdict_log::{EventStore as _, SqliteLog, now_ms, rfc3339_ms};
use verdict_projector::DecisionBody;

/// The outbox's checkpoint name: decisions up to this seq have their outbox rows.
pub const OUTBOX: &str = "outbox";
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
pub fn decision_json(body: &DecisionBody, seq: u64) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&WireDecision { body, seq })?)
}

/// One configured sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name (outbox rows, logs).
    pub name: String,
    /// Where decisions are POSTed.
    pub url: String,
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

/// What the projector needs to fill the outbox.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The configured sinks' names.
    pub sinks: Vec<String>,
    /// Wakes the dispatcher.
    pub wake: Arc<Notify>,
}

/// Adds one pending row per sink for a decision (no-op for a row that exists).
pub fn enqueue(
    tx: &Connection,
    sinks: &[String],
    seq: u64,
    session_id: &str,
    decision_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO outbox (sink, seq, session_id, decision_id, state, attempts, \
         next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?5)",
    )?;
    for sink in sinks {
        insert.execute(params![sink, i64_of(seq), session_id, decision_id, now])?;
    }
    Ok(())
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

/// A claimed delivery.
#[derive(Debug, Clone)]
struct Pick {
    id: i64,
    sink: String,
    seq: u64,
    decision_id: String,
    attempts: u32,
}

/// Only rows of configured sinks that are not disabled, and only a session's first pending one.
const ELIGIBLE: &str = "o.state = 'pending' \
     AND o.sink IN (SELECT value FROM json_each(?1)) \
     AND o.sink NOT IN (SELECT sink FROM sink_status) \
     AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.sink = o.sink \
                     AND p.session_id = o.session_id AND p.seq < o.seq)";

/// The dispatcher's connection and queries.
struct Store {
    log: SqliteLog,
    sinks_json: String,
}

impl Store {
    fn open(path: &std::path::Path, sinks: &[Sink]) -> anyhow::Result<Self> {
        let log = SqliteLog::open(path)?;
        // Outbox bookkeeping is atomic in WAL either way; after a power loss the newest updates
        // may be lost, which means a delivery is repeated (at least once), never skipped.
        log.connection()
            .pragma_update(None, "synchronous", "NORMAL")?;
        let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        Ok(Self {
            log,
            sinks_json: serde_json::to_string(&names)?,
        })
    }

    /// Supersedes what a newer pending decision makes stale, then claims up to `limit` due
    /// deliveries (their lease ends at `lease_end`).
    fn claim(
        &mut self,
        now: i64,
        lease_end: i64,
        limit: usize,
        supersede: bool,
    ) -> anyhow::Result<Vec<Pick>> {
        let tx = self
            .log
            .connection_mut()
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if supersede {
            let n = tx
                .prepare_cached(
                    "UPDATE outbox SET state = 'superseded', updated_at = ?2 \
                     WHERE state = 'pending' AND next_attempt_at <= ?2 \
                     AND sink IN (SELECT value FROM json_each(?1)) \
                     AND EXISTS (SELECT 1 FROM outbox n WHERE n.state = 'pending' \
                                 AND n.sink = outbox.sink AND n.session_id = outbox.session_id \
                                 AND n.seq > outbox.seq)",
                )?
                .execute(params![self.sinks_json, now])?;
            if n > 0 {
                tracing::info!(count = n, "deliveries superseded by newer decisions");
            }
        }
        let picks = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT o.id, o.sink, o.seq, o.decision_id, o.attempts FROM outbox o \
                 WHERE {ELIGIBLE} AND o.next_attempt_at <= ?2 \
                 ORDER BY o.next_attempt_at, o.seq LIMIT ?3"
            ))?;
            stmt.query_map(
                params![self.sinks_json, now, i64::try_from(limit).unwrap_or(0)],
                |r| {
                    Ok(Pick {
                        id: r.get(0)?,
                        sink: r.get(1)?,
                        seq: u64_of(r.get(2)?),
                        decision_id: r.get(3)?,
                        attempts: u32_of(r.get(4)?),
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        {
            let mut lease =
                tx.prepare_cached("UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1")?;
            for p in &picks {
                lease.execute(params![p.id, lease_end])?;
            }
        }
        tx.commit()?;
        Ok(picks)
    }

    /// When the next eligible delivery is due (unix ms), if any.
    fn next_due(&self) -> anyhow::Result<Option<i64>> {
        Ok(self
            .log
            .connection()
            .prepare_cached(&format!(
                "SELECT MIN(o.next_attempt_at) FROM outbox o WHERE {ELIGIBLE}"
            ))?
            .query_row(params![self.sinks_json], |r| r.get::<_, Option<i64>>(0))?)
    }

    /// The body to send: the decision event's JSON with its seq.
    fn body(&self, seq: u64) -> anyhow::Result<Vec<u8>> {
        let entry = self
            .log
            .get(seq)?
            .with_context(|| format!("decision seq {seq} is not in the log"))?;
        let body: DecisionBody = serde_json::from_slice(&entry.body)
            .with_context(|| format!("seq {seq} is not a decision"))?;
        Ok(decision_json(&body, seq)?.into_bytes())
    }

    /// Records an attempt's result.
    fn record(&self, pick: &Pick, result: &Attempted, settings: &Settings) -> anyhow::Result<()> {
        let now = now_ms();
        let attempts = pick.attempts.saturating_add(1);
        let conn = self.log.connection();
        let (status, error) = (result.status.map(i64::from), result.error.as_deref());
        match result.outcome {
            Outcome::Delivered => {
                conn.prepare_cached(
                    "UPDATE outbox SET state = 'delivered', attempts = ?2, last_status = ?3, \
                     last_error = NULL, updated_at = ?4 WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![pick.id, attempts, status, now])?;
            }
            Outcome::Gone => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO sink_status (sink, disabled_at, reason) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![pick.sink, now, "410 Gone"])?;
                conn.prepare_cached(
                    "UPDATE outbox SET attempts = ?2, last_status = ?3, last_error = NULL, \
                     next_attempt_at = ?4, updated_at = ?4 WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![pick.id, attempts, status, now])?;
            }
            Outcome::Retry { after } => {
                if settings.schedule.exhausted(attempts) {
                    conn.prepare_cached(
                        "UPDATE outbox SET state = 'dead', attempts = ?2, last_status = ?3, \
                         last_error = ?4, updated_at = ?5 WHERE id = ?1 AND state = 'pending'",
                    )?
                    .execute(params![pick.id, attempts, status, error, now])?;
                } else {
                    let delay = settings.schedule.delay(attempts, after, fastrand::f64());
                    let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
                    conn.prepare_cached(
                        "UPDATE outbox SET attempts = ?2, last_status = ?3, last_error = ?4, \
                         next_attempt_at = ?5, updated_at = ?6 WHERE id = ?1 AND state = 'pending'",
                    )?
                    .execute(params![pick.id, attempts, status, error, next, now])?;
                }
            }
        }
        Ok(())
    }
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
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
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
                dispatch(store, client, sinks, settings, wake, stop),
            );
        })
        .context("starting the delivery thread")?;
    Ok(Dispatcher { thread })
}

async fn dispatch(
    store: Store,
    client: reqwest::Client,
    sinks: Vec<Sink>,
    settings: Settings,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let store = std::rc::Rc::new(std::cell::RefCell::new(store));
    let sinks = std::rc::Rc::new(sinks);
    let settings = std::rc::Rc::new(settings);
    let mut inflight = tokio::task::JoinSet::new();
    let lease =
        i64::try_from((settings.timeout + Duration::from_secs(5)).as_millis()).unwrap_or(i64::MAX);
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let now = now_ms();
        let room = settings.concurrency.saturating_sub(inflight.len());
        let claimed = if room > 0 {
            store
                .borrow_mut()
                .claim(now, now.saturating_add(lease), room, settings.supersede)
        } else {
            Ok(Vec::new())
        };
        let mut wait = match claimed {
            Ok(picks) => {
                failures = 0;
                for pick in picks {
                    let (store, sinks, settings, client, wake) = (
                        std::rc::Rc::clone(&store),
                        std::rc::Rc::clone(&sinks),
                        std::rc::Rc::clone(&settings),
                        client.clone(),
                        Arc::clone(&wake),
                    );
                    inflight.spawn_local(async move {
                        attempt(&store, &client, &sinks, &settings, &pick).await;
                        wake.notify_one();
                    });
                }
                match store.borrow().next_due() {
                    Ok(Some(due)) => {
                        Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0))
                    }
                    Ok(None) => RESCAN,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "delivery: reading the outbox failed");
                        RESCAN
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(error = %format!("{e:#}"), "delivery: claiming work failed; retrying");
                Duration::from_millis(100u64 << failures.min(5))
            }
        };
        if room == 0 {
            wait = RESCAN; // a finished attempt wakes us
        }
        let wait = wait.min(RESCAN);
        if wait.is_zero() && room > 0 {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            () = tokio::time::sleep(wait) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break; // the server is gone
                }
            }
        }
    }
    // Let attempts in flight finish (bounded by their timeout); an unfinished one is retried
    // after its lease by the next start.
    let grace = settings.timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
}

async fn attempt(
    store: &std::cell::RefCell<Store>,
    client: &reqwest::Client,
    sinks: &[Sink],
    settings: &Settings,
    pick: &Pick,
) {
    let Some(sink) = sinks.iter().find(|s| s.name == pick.sink) else {
        return;
    };
    let body = match store.borrow().body(pick.seq) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(sink = %sink.name, seq = pick.seq, error = %format!("{e:#}"), "delivery: cannot build the body");
            return;
        }
    };
    let ts = now_ms() / 1000;
    let signature = sink.signer.sign(&pick.decision_id, ts, &body);
    let sent = client
        .post(&sink.url)
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
            // Drain the body so the connection can be reused (bounded by the client timeout).
            let _ = resp.bytes().await;
            Attempted {
                outcome: classify(Some(status), retry_after.as_deref(), ts),
                status: Some(status),
                error: None,
            }
        }
        Err(e) => Attempted {
            outcome: classify(None, None, ts),
            status: None,
            error: Some(error_chain(&e)),
        },
    };
    let attempts = pick.attempts.saturating_add(1);
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
    if let Err(e) = store.borrow().record(pick, &result, settings) {
        tracing::error!(sink = %sink.name, seq = pick.seq, error = %format!("{e:#}"), "delivery: recording the attempt failed; it will be retried after its lease");
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
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2, \
                 updated_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            Ok(true)
        }
    }
}

/// Queues every dead delivery again. Returns how many.
pub fn retry_dead(conn: &Connection) -> anyhow::Result<usize> {
    Ok(conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?1, \
         updated_at = ?1 WHERE state = 'dead'",
        [now_ms()],
    )?)
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
