use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{AppendError, Appended, EventStore, NewEvent, SqliteLog, StoreError};

/// One committed batch, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct WriterStats {
    /// Events in the batch (duplicates included).
    pub events: usize,
    /// Time from `BEGIN` to the end of `COMMIT` (the fsync included).
    pub elapsed: Duration,
    /// Whether the transaction committed.
    pub ok: bool,
    /// New events that carried outbox rows (committed with them).
    pub outbox: usize,
}

/// A committed entry as the writer hands it to its [`Tail`]: the fields a fold reads, the body
/// as received (shared, not copied).
#[derive(Debug, Clone)]
pub struct Committed {
    /// Position in the log.
    pub seq: u64,
    /// Source name.
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// Unix ms, when committed.
    pub recorded_at: i64,
    /// Unix ms, the sender's event time.
    pub vendor_time: Option<i64>,
    /// The body as received.
    pub body: bytes::Bytes,
}

/// A committed batch whose bodies are larger than this is not handed over (the reader reads it
/// from the store): with the channel's capacity, this bounds the memory the tail can pin.
pub const TAIL_BATCH_BYTES: usize = 8 << 20;

/// The entries the writer has committed, handed over in memory after each commit (before the
/// [`LogWriter::subscribe`] watch moves), so a reader that follows the log (the projector) need
/// not read back what was just written. Lossy by design: when the reader lags and the channel
/// is full, batches are dropped and the reader reads those entries from the store, as it does
/// for entries other processes appended. A reader must check that seqs follow on.
#[derive(Debug, Clone)]
pub struct Tail(std::sync::mpsc::SyncSender<Vec<Committed>>);

impl Tail {
    /// A tail holding at most `batches` committed batches, and its receiving end.
    pub fn channel(batches: usize) -> (Self, std::sync::mpsc::Receiver<Vec<Committed>>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(batches.max(1));
        (Self(tx), rx)
    }
}

/// WAL size (pages) at which the writer of [`LogWriter::open`] checkpoints, after answering the
/// batch that reached it ([`SqliteLog::defer_checkpoints`]; SQLite's automatic checkpoint uses
/// the same size, inside the commit).
pub const WRITER_CHECKPOINT_PAGES: u32 = 1000;

/// Settings of the writer thread.
#[derive(Clone)]
pub struct WriterConfig {
    /// Appends that may wait in the channel; callers beyond it wait for room (back-pressure).
    pub queue_capacity: usize,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Called after every batch (after its commit, before the callers are answered), on the
    /// writer thread (keep it cheap).
    pub on_batch: Option<Arc<dyn Fn(WriterStats) + Send + Sync>>,
    /// Called with its duration after each upkeep that did some work
    /// ([`EventStore::after_commit`]: for SQLite, a WAL checkpoint), on the writer thread.
    pub on_upkeep: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
    /// Where committed entries are handed over in memory, if anywhere.
    pub tail: Option<Tail>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_batch: 1024,
            on_batch: None,
            on_upkeep: None,
            tail: None,
        }
    }
}

impl fmt::Debug for WriterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterConfig")
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("on_batch", &self.on_batch.is_some())
            .field("on_upkeep", &self.on_upkeep.is_some())
            .field("tail", &self.tail.is_some())
            .finish()
    }
}

/// Events submitted with [`LogWriter::submit_blocking`], not yet known to be durable.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<Vec<Appended>, AppendError>>);

impl PendingAppend {
    /// Blocks the current (non-async) thread until the events are durable.
    pub fn wait_blocking(self) -> Result<Vec<Appended>, AppendError> {
        self.0.blocking_recv().map_err(|_| AppendError::Closed)?
    }
}

struct Job {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Appended>, AppendError>>,
}

enum Msg {
    Append(Job),
    Probe(oneshot::Sender<bool>),
    Stop(oneshot::Sender<()>),
}

/// A cloneable handle to the single writer thread of a log.
///
/// The thread owns the write connection. It takes everything queued in the channel (up to
/// `max_batch`), appends it in one transaction, commits (one fsync for the whole batch) and only
/// then answers each caller: an `Ok` from [`LogWriter::append`] means durable.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Msg>,
    committed: watch::Receiver<u64>,
    healthy: Arc<AtomicBool>,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("committed", &*self.committed.borrow())
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl LogWriter {
    /// Opens the SQLite log at `path` (creating and migrating it) and starts its writer thread.
    pub fn open(path: impl AsRef<Path>, config: WriterConfig) -> Result<Self, StoreError> {
        let mut store = SqliteLog::open(path)?;
        store.defer_checkpoints(WRITER_CHECKPOINT_PAGES)?;
        Self::spawn(store, config)
    }

    /// Starts a writer thread that owns `store`.
    pub fn spawn<S: EventStore + 'static>(
        store: S,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        let head = store.head()?.map_or(0, |h| h.seq);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (committed_tx, committed) = watch::channel(head);
        let healthy = Arc::new(AtomicBool::new(true));
        let thread_healthy = Arc::clone(&healthy);
        std::thread::Builder::new()
            .name("verdict-log-writer".into())
            .spawn(move || run(store, rx, &committed_tx, &thread_healthy, &config))
            .map_err(|e| StoreError::Io(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            tx,
            committed,
            healthy,
        })
    }

    /// Appends one event; resolves once it is durable (or known to be a duplicate).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let mut out = self.append_all(vec![event]).await?;
        out.pop()
            .ok_or_else(|| AppendError::Unavailable("empty result".into()))
    }

    /// Appends several events atomically, in order, in the same transaction.
    /// Bodies are encoded (compressed) here, on the caller's thread, so the writer thread only
    /// stores.
    pub async fn append_all(
        &self,
        mut events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>, AppendError> {
        events.iter_mut().for_each(NewEvent::encode);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Job { events, reply }))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Like [`LogWriter::append_all`], for threads outside the async runtime.
    pub fn append_all_blocking(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Append(Job { events, reply }))
            .map_err(|_| AppendError::Closed)?;
        rx.blocking_recv().map_err(|_| AppendError::Closed)?
    }

    /// The seq of the newest committed entry; changes after every commit that stored something,
    /// before its appends are answered (so it is at or past any seq an append has returned).
    /// Readers (projector, long polls) await `changed()` on it instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Whether the last transaction committed (false after a failed write until one succeeds).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Queues several events (atomically, in order after everything queued before) without
    /// waiting: the returned [`PendingAppend`] resolves once they are durable. For a caller
    /// that keeps working while the writer commits, and needs the order of its submissions kept.
    pub fn submit_blocking(&self, mut events: Vec<NewEvent>) -> Result<PendingAppend, AppendError> {
        events.iter_mut().for_each(NewEvent::encode);
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Append(Job { events, reply }))
            .map_err(|_| AppendError::Closed)?;
        Ok(PendingAppend(rx))
    }

    /// After a failed append: writes a small probe row (not an event) and, if it commits,
    /// marks the writer healthy again. Returns whether the log is writable.
    pub async fn probe(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Probe(reply)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Commits everything queued before this call, then stops the thread. Appends sent after
    /// it are answered [`AppendError::Closed`].
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn run<S: EventStore>(
    mut store: S,
    mut rx: mpsc::Receiver<Msg>,
    committed: &watch::Sender<u64>,
    healthy: &AtomicBool,
    config: &WriterConfig,
) {
    let max_batch = config.max_batch.max(1);
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut upkeep_failing = false;
    while let Some(first) = rx.blocking_recv() {
        let mut stop = None;
        match first {
            Msg::Append(job) => jobs.push(job),
            Msg::Probe(reply) => {
                let probed = store.probe();
                if let Err(e) = &probed {
                    tracing::debug!(error = %e, "the log is not writable yet");
                }
                let ok = probed.is_ok();
                if ok {
                    healthy.store(true, Ordering::Relaxed);
                }
                let _ = reply.send(ok);
                continue;
            }
            Msg::Stop(ack) => stop = Some(ack),
        }
        let mut queued = jobs.iter().map(|j| j.events.len()).sum::<usize>();
        while stop.is_none() && queued < max_batch {
            match rx.try_recv() {
                Ok(Msg::Append(job)) => {
                    queued += job.events.len();
                    jobs.push(job);
                }
                Ok(Msg::Stop(ack)) => stop = Some(ack),
                Ok(Msg::Probe(reply)) => {
                    // Answered after this batch: its outcome says whether the log is writable.
                    let _ = reply.send(false);
                }
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            commit(&mut store, &mut jobs, committed, healthy, config);
            // Then the upkeep (a checkpoint when due), which no caller of this batch waits for.
            upkeep(&mut store, &mut upkeep_failing, config);
        }
        if let Some(ack) = stop {
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Append(job) = msg {
                    let _ = job.reply.send(Err(AppendError::Closed));
                }
            }
            let _ = ack.send(());
            return;
        }
    }
}

/// Runs the store's upkeep after a batch was answered. A failure loses nothing (the WAL only
/// grows until an upkeep succeeds); it is logged once as a warning, repeats at debug level
/// (the same failure, such as a full disk, would otherwise be logged after every commit).
fn upkeep<S: EventStore>(store: &mut S, failing: &mut bool, config: &WriterConfig) {
    let started = Instant::now();
    match store.after_commit() {
        Ok(false) => {}
        Ok(true) => {
            if let Some(cb) = &config.on_upkeep {
                cb(started.elapsed());
            }
            if std::mem::take(failing) {
                tracing::info!("upkeep after commits works again");
            }
        }
        Err(e) if *failing => {
            tracing::debug!(error = %e, "upkeep after a commit failed again");
        }
        Err(e) => {
            *failing = true;
            tracing::warn!(error = %e, "upkeep after a commit failed (nothing is lost; retried after each commit)");
        }
    }
}

fn commit<S: EventStore>(
    store: &mut S,
    jobs: &mut Vec<Job>,
    committed: &watch::Sender<u64>,
    healthy: &AtomicBool,
    config: &WriterConfig,
) {
    let events: Vec<&NewEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
    let n = events.len();
    let started = Instant::now();
    let result = store.append_batch(&events);
    let elapsed = started.elapsed();
    tracing::trace!(
        events = n,
        micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "batch"
    );
    if let Some(cb) = &config.on_batch {
        let outbox = match &result {
            Ok(appended) => events
                .iter()
                .zip(appended)
                .filter(|(e, a)| e.outbox.is_some() && !a.is_duplicate())
                .count(),
            Err(_) => 0,
        };
        cb(WriterStats {
            events: n,
            elapsed,
            ok: result.is_ok(),
            outbox,
        });
    }
    match result {
        Ok(results) => {
            healthy.store(true, Ordering::Relaxed);
            let newest = results
                .iter()
                .filter_map(|a| match a {
                    Appended::New { seq, .. } => Some(*seq),
                    Appended::Duplicate { .. } => None,
                })
                .max();
            let mut results = results.into_iter();
            let mut handed = Vec::new();
            let mut replies = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                let mine: Vec<Appended> = results.by_ref().take(job.events.len()).collect();
                if config.tail.is_some() {
                    handed.extend(job.events.into_iter().zip(&mine).filter_map(
                        |(ev, a)| match *a {
                            Appended::New {
                                seq, recorded_at, ..
                            } => Some(Committed {
                                seq,
                                source: ev.source,
                                event_type: ev.event_type,
                                recorded_at,
                                vendor_time: ev.vendor_time,
                                body: ev.body,
                            }),
                            Appended::Duplicate { .. } => None,
                        },
                    ));
                }
                replies.push((job.reply, mine));
            }
            if let (Some(Tail(tail)), false) = (&config.tail, handed.is_empty())
                && handed.iter().map(|c| c.body.len()).sum::<usize>() <= TAIL_BATCH_BYTES
            {
                // Full (the reader lags) or gone: the reader reads these from the store.
                let _ = tail.try_send(handed);
            }
            if let Some(newest) = newest {
                committed.send_if_modified(|v| {
                    let changed = newest > *v;
                    if changed {
                        *v = newest;
                    }
                    changed
                });
            }
            // Answered last: whoever has seen an append acknowledged finds the head at or past
            // it (an override right after a delivery waits for the projector to reach it).
            for (reply, mine) in replies {
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            healthy.store(false, Ordering::Relaxed);
            tracing::error!(error = %e, events = n, "append transaction failed; nothing of the batch was stored");
            let msg = e.to_string();
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(AppendError::Unavailable(msg.clone())));
            }
        }
    }
}
