use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
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

/// Called once per delivery with the source name and the outcome.
pub type Observer = Arc<dyn Fn(&str, Outcome) + Send + Sync>;

/// The ingress: its sources, the body limit and where events go.
pub struct Ingress<A> {
    sources: HashMap<String, Source>,
    max_body_bytes: usize,
    /// Body bytes buffered at once across all deliveries (`None`: no limit).
    body_budget: Option<Arc<Semaphore>>,
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

    /// Buffers at most `bytes` of request bodies at once across all deliveries; a delivery
    /// whose body would go over is answered 503 with `Retry-After` (many slow or large bodies
    /// at once cannot exhaust memory).
    #[must_use]
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        let permits = bytes.min(Semaphore::MAX_PERMITS);
        self.body_budget = Some(Arc::new(Semaphore::new(permits)));
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
    let too_large = || {
        ing.observe(&name, Outcome::Rejected("too_large"));
        json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                r#"{{"error":"body larger than {} bytes"}}"#,
                ing.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > ing.max_body_bytes as u64) {
        return too_large();
    }
    let (bytes, _budget) = match read_body(&ing, body).await {
        Ok(read) => read,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Busy) => {
            ing.observe(&name, Outcome::Rejected("busy"));
            tracing::warn!(source = %name, "delivery refused: the body buffer budget is spent");
            let mut resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"too many request bodies in flight; retry later"}"#.to_owned(),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
        Err(BodyError::TimedOut) => {
            ing.observe(&name, Outcome::Rejected("timeout"));
            tracing::debug!(source = %name, "request body did not arrive in time");
            let mut resp = json_response(
                StatusCode::REQUEST_TIMEOUT,
                r#"{"error":"the request did not arrive in time"}"#.to_owned(),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(BodyError::Unreadable(e)) => {
            tracing::debug!(source = %name, error = %e, "could not read request body");
            ing.observe(&name, Outcome::Rejected("unreadable_body"));
            return json_response(
                StatusCode::BAD_REQUEST,
                r#"{"error":"could not read body"}"#.to_owned(),
            );
        }
    };
    let envelope = Envelope::read(&bytes);
    if envelope.is_ping() && source.verifier.scheme().accepts_ping() {
        ing.observe(&name, Outcome::Ping);
        return json_response(StatusCode::OK, r#"{"status":"ping"}"#.to_owned());
    }
    let verified = match source.verifier.verify(&headers, &bytes, now_secs()) {
        Ok(v) => v,
        Err(rejection) => {
            ing.observe(&name, Outcome::Rejected(rejection.reason()));
            tracing::warn!(source = %name, reason = rejection.reason(), error = %rejection, "delivery rejected");
            let status = match rejection {
                Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            return json_response(
                status,
                serde_json::json!({ "error": rejection.to_string() }).to_string(),
            );
        }
    };
    let event = new_event(&source.name, envelope, verified, bytes);
    match ing.appender.append(event).await {
        Ok(Appended::New { seq, .. }) => {
            ing.observe(&name, Outcome::Accepted);
            json_response(
                StatusCode::OK,
                format!(r#"{{"status":"accepted","seq":{seq}}}"#),
            )
        }
        Ok(Appended::Duplicate { seq }) => {
            ing.observe(&name, Outcome::Duplicate);
            json_response(
                StatusCode::OK,
                format!(r#"{{"status":"duplicate","seq":{seq}}}"#),
            )
        }
        Err(e) => {
            ing.observe(&name, Outcome::Unavailable);
            tracing::error!(source = %name, error = %e, "delivery not stored");
            let mut resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"the log cannot be written; retry later"}"#.to_owned(),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
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
/// as they arrive (held, through the returned permit, until the delivery is answered).
async fn read_body<A>(
    ing: &Ingress<A>,
    mut body: Body,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let mut buf = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
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
        if let Some(budget) = &ing.body_budget {
            let n = u32::try_from(data.len()).map_err(|_| BodyError::TooLarge)?;
            let permit = Arc::clone(budget)
                .try_acquire_many_owned(n)
                .map_err(|_| BodyError::Busy)?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
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
    NewEvent {
        outbox: None,
        source: source.to_owned(),
        event_type: env.event_type,
        event_version: 1,
        dedupe_key: v.dedupe_key,
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
