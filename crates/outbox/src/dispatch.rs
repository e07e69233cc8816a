//! The dispatcher: a thread with its own single-threaded runtime that picks due deliveries,
//! POSTs them (at most `concurrency` at once) and hands the results to the recorder thread,
//! which writes them; woken by the log writer when a batch committed outbox rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use verdict_delivery::{Outcome, classify};
use verdict_log::now_ms;

use crate::{Attempted, OutboxError, OutboxStore, Pick, Settings, Sink};

/// The longest sleep of the dispatcher without a wake-up.
pub const RESCAN: Duration = Duration::from_secs(1);

/// The dispatcher thread.
#[derive(Debug)]
pub struct Dispatcher {
    /// Ends after the stop signal, once attempts in flight are done (or their timeout passed).
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the dispatcher on its own thread and single-threaded runtime; `open` gives it (and
/// its recorder) a store each.
pub fn spawn_dispatcher<S: OutboxStore + 'static>(
    open: impl Fn() -> Result<S, OutboxError>,
    sinks: Vec<Sink>,
    settings: Settings,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> Result<Dispatcher, OutboxError> {
    let store = open()?;
    let recorder = spawn_recorder(open()?, settings.clone())?;
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        // A redirect would turn the POST into a GET elsewhere: a 3xx is retried, not followed.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("verdict/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| OutboxError::Start {
            what: "the delivery runtime",
            source,
        })?;
    let thread = std::thread::Builder::new()
        .name("verdict-delivery".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            let looping = Loop::new(store, client, sinks, settings);
            local.block_on(&runtime, looping.run(recorder, wake, stop));
        })
        .map_err(|source| OutboxError::Start {
            what: "the delivery thread",
            source,
        })?;
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

/// The dispatcher's state between passes. Each pass: take the attempts that finished, look
/// for stale deliveries, check failed attempts again, start the due ones, hand results to the
/// recorder, then wait for the next event.
struct Loop<S> {
    store: S,
    client: reqwest::Client,
    sinks: std::rc::Rc<Vec<Sink>>,
    settings: Settings,
    inflight: Inflight,
    busy: Busy,
    /// Attempts finished, not yet handed to the recorder.
    finished: Vec<(Pick, Attempted)>,
    /// Deliveries to mark superseded, not yet handed to the recorder.
    superseded: Vec<(String, u64)>,
    /// Superseded, handed to the recorder, not yet written.
    superseding: std::collections::HashSet<(String, u64)>,
    /// Failed reads of the outbox in a row (for the backoff).
    failures: u32,
    /// New decisions can make waiting ones stale: looked for at start and after each wake-up.
    check_stale: bool,
    /// Attempts that failed: a decision that arrived while they were in flight may have made
    /// them stale (the look for stale ones leaves deliveries in flight alone).
    recheck: Vec<Pick>,
}

impl<S: OutboxStore> Loop<S> {
    fn new(store: S, client: reqwest::Client, sinks: Vec<Sink>, settings: Settings) -> Self {
        Self {
            store,
            client,
            sinks: std::rc::Rc::new(sinks),
            check_stale: settings.supersede,
            settings,
            inflight: Inflight::new(),
            busy: Busy::default(),
            finished: Vec::new(),
            superseded: Vec::new(),
            superseding: std::collections::HashSet::new(),
            failures: 0,
            recheck: Vec::new(),
        }
    }

    async fn run(mut self, recorder: Recorder, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let Recorder {
            tx: to_recorder,
            mut written,
            thread: recorder_thread,
        } = recorder;
        loop {
            self.collect_finished();
            if *stop.borrow() {
                break;
            }
            self.look_for_stale();
            self.recheck_failed();
            let wait = self.start_due();
            if !self.hand_to_recorder(&to_recorder) {
                break;
            }
            tokio::select! {
                () = wake.notified() => self.check_stale = self.settings.supersede,
                Some(done) = written.recv() => self.written(&done),
                Some(joined) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    if let Ok(joined) = joined {
                        collect(joined, &mut self.busy, &mut self.finished);
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
        // Let attempts in flight finish (bounded by their timeout) and record them; an
        // unfinished one stays pending and is attempted again at the next start.
        let grace = self.settings.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while let Some(joined) = self.inflight.join_next().await {
                if let Ok(joined) = joined {
                    collect(joined, &mut self.busy, &mut self.finished);
                }
            }
        })
        .await;
        let _ = to_recorder.send(Batch {
            superseded: Vec::new(),
            finished: std::mem::take(&mut self.finished),
        });
        drop(to_recorder);
        let _ = tokio::task::spawn_blocking(move || recorder_thread.join()).await;
    }

    /// Takes the attempts that finished, without waiting.
    fn collect_finished(&mut self) {
        while let Some(joined) = self.inflight.try_join_next() {
            if let Ok(joined) = joined {
                collect(joined, &mut self.busy, &mut self.finished);
            }
        }
    }

    /// Queues the deliveries a newer pending decision made stale (one in flight is let finish,
    /// and checked again if it fails).
    fn look_for_stale(&mut self) {
        if !self.check_stale {
            return;
        }
        self.check_stale = false;
        match self.store.stale() {
            Ok((stale, more)) => {
                // Capped: the rest at the next turn.
                self.check_stale = more;
                for k in stale
                    .into_iter()
                    .filter(|k| !self.busy.deliveries.contains(k))
                {
                    queue_superseded(&mut self.superseded, &self.superseding, k);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery: looking for superseded decisions failed");
            }
        }
    }

    /// Checks the attempts that failed: a newer decision may have arrived meanwhile.
    fn recheck_failed(&mut self) {
        for pick in std::mem::take(&mut self.recheck) {
            match self.store.has_newer_pending(&pick) {
                Ok(true) => queue_superseded(
                    &mut self.superseded,
                    &self.superseding,
                    (pick.sink, pick.seq),
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "delivery: looking for superseded decisions failed");
                }
            }
        }
    }

    /// Starts the due deliveries there is room for; returns how long until the next is due.
    fn start_due(&mut self) -> Duration {
        let room = self
            .settings
            .concurrency
            .saturating_sub(self.inflight.len());
        let now = now_ms();
        let mut wait = RESCAN;
        match self.store.candidates(self.busy.len() + room + 1) {
            Ok(candidates) => {
                self.failures = 0;
                let mut started = 0;
                for c in candidates {
                    let key = (c.pick.sink.clone(), c.pick.seq);
                    if self.busy.has(&c.pick) || self.superseding.contains(&key) {
                        continue;
                    }
                    if c.due > now {
                        wait = Duration::from_millis(u64::try_from(c.due - now).unwrap_or(0));
                        break;
                    }
                    if c.stale && self.settings.supersede {
                        queue_superseded(&mut self.superseded, &self.superseding, key);
                        continue;
                    }
                    if started == room {
                        break;
                    }
                    started += 1;
                    self.busy.take(&c.pick);
                    let body = self.store.body(c.pick.seq);
                    self.spawn(c.pick, body);
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::error!(error = %e, "delivery: reading the outbox failed; retrying");
                wait = Duration::from_millis(100u64 << self.failures.min(5));
            }
        }
        wait
    }

    fn spawn(&mut self, pick: Pick, body: Result<Vec<u8>, OutboxError>) {
        let (sinks, client, settings) = (
            std::rc::Rc::clone(&self.sinks),
            self.client.clone(),
            self.settings.clone(),
        );
        self.inflight.spawn_local(async move {
            let result = attempt(body, &client, &sinks, &settings, &pick).await;
            (pick, result)
        });
    }

    /// Hands finished attempts and supersessions to the recorder (its thread writes them: this
    /// one never waits for the write lock). False if the recorder has stopped.
    fn hand_to_recorder(&mut self, to_recorder: &std::sync::mpsc::Sender<Batch>) -> bool {
        if self.finished.is_empty() && self.superseded.is_empty() {
            return true;
        }
        self.superseding.extend(self.superseded.iter().cloned());
        let batch = Batch {
            superseded: std::mem::take(&mut self.superseded),
            finished: std::mem::take(&mut self.finished),
        };
        if to_recorder.send(batch).is_err() {
            tracing::error!("delivery: the recorder has stopped");
            return false;
        }
        true
    }

    /// What the recorder has written: those deliveries are free again.
    fn written(&mut self, done: &Batch) {
        for key in &done.superseded {
            self.superseding.remove(key);
        }
        for (pick, attempted) in &done.finished {
            self.busy.release(pick);
            // A failed attempt may now be stale behind a newer decision.
            if self.settings.supersede && !matches!(attempted.outcome, Outcome::Delivered) {
                self.recheck.push(pick.clone());
            }
        }
    }
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
fn spawn_recorder<S: OutboxStore + 'static>(
    mut store: S,
    settings: Settings,
) -> Result<Recorder, OutboxError> {
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
                            tracing::error!(error = %e, tries, "delivery: writing results failed; retrying");
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
                    ::metrics::counter!(crate::metrics::SUPERSEDED).increment(marked as u64);
                    tracing::info!(count = marked, "deliveries superseded by newer decisions");
                }
                if done.send(batch).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| OutboxError::Start {
            what: "the delivery recorder",
            source,
        })?;
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
    body: Result<Vec<u8>, OutboxError>,
    client: &reqwest::Client,
    sinks: &[Sink],
    settings: &Settings,
    pick: &Pick,
) -> Option<Attempted> {
    let sink = sinks.iter().find(|s| s.name == pick.sink)?;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(sink = %sink.name, seq = pick.seq, error = %e, "delivery: cannot build the body");
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
    ::metrics::counter!(crate::metrics::SINK_ATTEMPTS, "sink" => sink.name.clone(), "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(crate::metrics::SINK_ATTEMPT_SECONDS, "sink" => sink.name.clone())
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
