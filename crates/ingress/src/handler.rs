use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use verdict_log::{AppendError, Appended, LogWriter, NewEvent, Uuid, sha256};

use crate::envelope::Envelope;
use crate::signature::{Rejection, Verified, Verifier};

/// Where verified deliveries go. The log writer in production; [`NullAppender`] for the
/// no-storage ceiling benchmark.
pub trait Appender: Clone + Send + Sync + 'static {
    /// Stores one event; resolves once it is durable.
    fn append(&self, event: NewEvent)
    -> impl Future<Output = Result<Appended, AppendError>> + Send;
}

impl Appender for LogWriter {
    fn append(
        &self,
        event: NewEvent,
    ) -> impl Future<Output = Result<Appended, AppendError>> + Send {
        LogWriter::append(self, event)
    }
}

/// Stores nothing and answers increasing seqs: the handler's cost without storage.
#[derive(Debug, Clone, Default)]
pub struct NullAppender {
    next: Arc<AtomicU64>,
}

impl Appender for NullAppender {
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        drop(event);
        Ok(Appended::New {
            seq,
            event_id: Uuid::nil(),
            recorded_at: 0,
        })
    }
}

/// One configured webhook source, served at `POST /webhooks/{name}`.
#[derive(Debug, Clone)]
pub struct Source {
    name: String,
    verifier: Verifier,
}

impl Source {
    /// A source named `name` checked by `verifier`.
    pub fn new(name: impl Into<String>, verifier: Verifier) -> Self {
        Self {
            name: name.into(),
            verifier,
        }
    }
}

/// What became of one delivery, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new entry.
    Accepted,
    /// Already in the log.
    Duplicate,
    /// SEON's validation ping, answered without storing.
    Ping,
    /// Refused before storing, with a [`Rejection::reason`] label (or `too_large`,
    /// `unreadable_body`, `timeout` for a body that did not arrive in time, `busy` when the
    /// budget of body bytes in flight is spent).
    Rejected(&'static str),
    /// The log could not be written (503).
    Unavailable,
    /// No such source (404).
    UnknownSource,
}

/// The client's address, put in each request's extensions by the server's accept loop: the
/// body budget is shared out by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The bytes of request bodies buffered at once: in all, and per client address (so that one
/// client's slow bodies cannot take the whole budget).
#[derive(Debug)]
struct BodyBudget {
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    share: usize,
}

/// Bytes held of a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
struct Held<'a> {
    budget: &'a BodyBudget,
    client: Option<IpAddr>,
    bytes: usize,
    _total: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// Takes `n` more bytes for `held`; false when the total or the client's share is spent.
    fn take(&self, held: &mut Held<'_>, n: usize) -> bool {
        let Ok(n32) = u32::try_from(n) else {
            return false;
        };
        if let Some(ip) = held.client {
            let Ok(mut map) = self.per_client.lock() else {
                return false;
            };
            let used = map.entry(ip).or_insert(0);
            if *used + n > self.share {
                return false;
            }
            *used += n;
        }
        // Counted for the client first, so a refusal below is given back by `held`'s drop.
        held.bytes += n;
        match Arc::clone(&self.total).try_acquire_many_owned(n32) {
            Ok(p) => {
                match &mut held._total {
                    Some(h) => h.merge(p),
                    None => held._total = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        if self.bytes == 0 {
            return;
        }
        if let Ok(mut map) = self.budget.per_client.lock()
            && let Some(used) = map.get_mut(&ip)
        {
            *used = used.saturating_sub(self.bytes);
            if *used == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Called once per delivery with the source name and the outcome.
pub type Observer = Arc<dyn Fn(&str, Outcome) + Send + Sync>;

/// The ingress: its sources, the body limit and where events go.
pub struct Ingress<A> {
    sources: HashMap<String, Source>,
    max_body_bytes: usize,
    /// Body bytes buffered at once across all deliveries (`None`: no limit).
    body_budget: Option<BodyBudget>,
    appender: A,
    observer: Option<Observer>,
}

impl<A> fmt::Debug for Ingress<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingress")
            .field("sources", &self.sources)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<A: Appender> Ingress<A> {
    /// An ingress over `sources` that refuses bodies above `max_body_bytes`.
    pub fn new(sources: Vec<Source>, max_body_bytes: usize, appender: A) -> Self {
        let sources = sources.into_iter().map(|s| (s.name.clone(), s)).collect();
        Self {
            sources,
            max_body_bytes,
            body_budget: None,
            appender,
            observer: None,
        }
    }

    /// Buffers at most `bytes` of request bodies at once across all deliveries, and at most an
    /// eighth of it (or two of the largest bodies, if more) per client address; a delivery
    /// whose body would go over is answered 503 with `Retry-After` (many slow or large bodies
    /// at once cannot exhaust memory, nor one client take it all).
    #[must_use]
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        let permits = bytes.min(Semaphore::MAX_PERMITS);
        self.body_budget = Some(BodyBudget {
            total: Arc::new(Semaphore::new(permits)),
            per_client: Mutex::default(),
            // A client address may hold an eighth of it (at least two bodies of the largest).
            share: (permits / 8).max(self.max_body_bytes.saturating_mul(2)),
        });
        self
    }

    /// Reports every delivery's outcome to `observer` (metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, source: &str, outcome: Outcome) {
        if let Some(o) = &self.observer {
            o(source, outcome);
        }
    }
}

/// The routes of the ingress: `POST /webhooks/{source}`.
pub fn router<A: Appender, S: Clone + Send + Sync + 'static>(ingress: Ingress<A>) -> Router<S> {
    Router::new()
        .route("/webhooks/{source}", post(receive::<A>))
        .with_state(Arc::new(ingress))
}

async fn receive<A: Appender>(
    State(ing): State<Arc<Ingress<A>>>,
    Path(name): Path<String>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(source) = ing.sources.get(&name) else {
        ing.observe(&name, Outcome::UnknownSource);
        return json_response(
            StatusCode::NOT_FOUND,
            r#"{"error":"unknown source"}"#.to_owned(),
        );
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = if declared.is_some_and(|len| len > ing.max_body_bytes as u64) {
        Err(BodyError::TooLarge)
    } else {
        read_body(&ing, body, client.map(|c| c.0.0.ip()), declared).await
    };
    let (bytes, _budget) = match read {
        Ok(read) => read,
        Err(e) => return body_refused(&ing, &name, e),
    };
    let envelope = Envelope::read(&bytes);
    if envelope.is_ping() && source.verifier.scheme().accepts_ping() {
        ing.observe(&name, Outcome::Ping);
        return json_response(StatusCode::OK, r#"{"status":"ping"}"#.to_owned());
    }
    let verified = match source.verifier.verify(&headers, &bytes, now_secs()) {
        Ok(v) => v,
        Err(rejection) => return rejected(&ing, &name, &rejection),
    };
    let event = new_event(&source.name, envelope, verified, bytes);
    stored(&ing, &name, ing.appender.append(event).await)
}

/// The answer to a body that was not read: 413, 503 (the budget), 408 or 400.
fn body_refused<A: Appender>(ing: &Ingress<A>, name: &str, e: BodyError) -> Response {
    match e {
        BodyError::TooLarge => {
            ing.observe(name, Outcome::Rejected("too_large"));
            json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    r#"{{"error":"body larger than {} bytes"}}"#,
                    ing.max_body_bytes
                ),
            )
        }
        BodyError::Busy => {
            ing.observe(name, Outcome::Rejected("busy"));
            warn_sometimes(&LAST_BUSY_WARNING, || {
                tracing::warn!(source = %name, "deliveries refused (503): the budget of body bytes in flight is spent; see verdict_webhooks_total with reason busy");
            });
            retry_later(r#"{"error":"too many request bodies in flight; retry later"}"#)
        }
        BodyError::TimedOut => {
            ing.observe(name, Outcome::Rejected("timeout"));
            tracing::debug!(source = %name, "request body did not arrive in time");
            let mut resp = json_response(
                StatusCode::REQUEST_TIMEOUT,
                r#"{"error":"the request did not arrive in time"}"#.to_owned(),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        BodyError::Unreadable(e) => {
            tracing::debug!(source = %name, error = %e, "could not read request body");
            ing.observe(name, Outcome::Rejected("unreadable_body"));
            json_response(
                StatusCode::BAD_REQUEST,
                r#"{"error":"could not read body"}"#.to_owned(),
            )
        }
    }
}

/// The answer to a delivery whose signature (or request) was refused: 401, or 400.
fn rejected<A: Appender>(ing: &Ingress<A>, name: &str, rejection: &Rejection) -> Response {
    ing.observe(name, Outcome::Rejected(rejection.reason()));
    tracing::warn!(source = %name, reason = rejection.reason(), error = %rejection, "delivery rejected");
    let status = match rejection {
        Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    json_response(
        status,
        serde_json::json!({ "error": rejection.to_string() }).to_string(),
    )
}

/// The answer once the log has the delivery (or could not take it: 503).
fn stored<A: Appender>(
    ing: &Ingress<A>,
    name: &str,
    appended: Result<Appended, AppendError>,
) -> Response {
    match appended {
        Ok(Appended::New { seq, .. }) => {
            ing.observe(name, Outcome::Accepted);
            json_response(
                StatusCode::OK,
                format!(r#"{{"status":"accepted","seq":{seq}}}"#),
            )
        }
        Ok(Appended::Duplicate { seq }) => {
            ing.observe(name, Outcome::Duplicate);
            json_response(
                StatusCode::OK,
                format!(r#"{{"status":"duplicate","seq":{seq}}}"#),
            )
        }
        Err(e) => {
            ing.observe(name, Outcome::Unavailable);
            tracing::error!(source = %name, error = %e, "delivery not stored");
            retry_later(r#"{"error":"the log cannot be written; retry later"}"#)
        }
    }
}

/// A 503 with `Retry-After: 1`.
fn retry_later(body: &str) -> Response {
    let mut resp = json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_owned());
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Why a body was not read.
#[derive(Debug)]
enum BodyError {
    /// Over `max_body_bytes`.
    TooLarge,
    /// The budget of body bytes in flight is spent.
    Busy,
    /// The request's deadline passed while it was arriving.
    TimedOut,
    /// The connection failed.
    Unreadable(axum::Error),
}

/// Reads the body up to `max_body_bytes`, taking its bytes from the budget of bytes in flight
/// as they arrive (held, through the returned guard, until the delivery is answered).
async fn read_body<'a, A>(
    ing: &'a Ingress<A>,
    mut body: Body,
    client: Option<IpAddr>,
    declared: Option<u64>,
) -> Result<(Bytes, Option<Held<'a>>), BodyError> {
    // Sized from `Content-Length` (already checked against the limit), so the buffer does not
    // double its way up.
    let capacity = declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(ing.max_body_bytes);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut held = ing.body_budget.as_ref().map(|budget| Held {
        budget,
        client,
        bytes: 0,
        _total: None,
    });
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if is_timeout(&e) {
                BodyError::TimedOut
            } else {
                BodyError::Unreadable(e)
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > ing.max_body_bytes {
            return Err(BodyError::TooLarge);
        }
        if let Some(h) = &mut held {
            let budget = h.budget;
            if !budget.take(h, data.len()) {
                return Err(BodyError::Busy);
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// When the last "budget spent" warning was logged (unix seconds): at most one every ten
/// seconds, whatever the traffic (each refusal is counted in the metrics).
static LAST_BUSY_WARNING: AtomicI64 = AtomicI64::new(0);

fn warn_sometimes(last: &AtomicI64, warn: impl FnOnce()) {
    let now = now_secs();
    let before = last.load(Ordering::Relaxed);
    if now - before >= 10
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn();
    }
}

/// Whether an error (a body read's, through any wrapping) is a request deadline passing: an
/// `io::Error` of kind `TimedOut` somewhere in its chain. The server's accept loop fails a
/// body that is still arriving at its deadline so.
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn new_event(source: &str, env: Envelope, v: Verified, body: Bytes) -> NewEvent {
    let dedupe_key = match env.vendor_time {
        Some(t) if v.time_ordered => crate::signature::time_ordered_key(&v.dedupe_key, t),
        _ => v.dedupe_key,
    };
    NewEvent {
        outbox: None,
        source: source.to_owned(),
        event_type: env.event_type,
        event_version: 1,
        dedupe_key,
        legacy_request_id_dedupe: v.stored_by_request_id,
        vendor_time: env.vendor_time,
        headers: v.headers,
        body_sha256: sha256(&body),
        body,
        encoded: None,
    }
}

fn now_secs() -> i64 {
    verdict_log::now_ms() / 1000
}

/// A response with a JSON body (already serialised) and its content type.
pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
