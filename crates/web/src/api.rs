//! The `/v1` HTTP API: sessions, their history, overrides and the event feed, behind bearer
//! tokens with roles.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use verdict_log::{EventStore as _, ExportedEntry, SqliteLog};
use verdict_projections as projections;
use verdict_projections::SessionQueries as _;
use verdict_projector::Action;

use crate::Role;
use verdict_ingress::json_response;

use crate::error::{Result, WebError};
use crate::overrides::Refused;

pub use crate::context::{
    Api, Caller, ReadPool, SETTLE, Token, authenticate, bearer, client_ip, projected_to,
    settle_deadline,
};

/// The session's decision once the projector has folded `seq` (an override just recorded),
/// waiting at most [`SETTLE`] for the projector's progress to reach it.
async fn current_decision_after(
    api: &Api,
    id: &str,
    seq: u64,
) -> Result<Option<serde_json::Value>> {
    if !projected_to(api, seq, settle_deadline()).await {
        return Ok(None);
    }
    let lookup = id.to_owned();
    let session = api.reads.run(move |log| Ok(log.session(&lookup)?)).await?;
    Ok(session.map(|s| projections::session_json(&s)["decision"].clone()))
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.0, serde_json::json!({ "error": self.1 }).to_string());
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Both causes (the log cannot be written, the projections are behind) are brief.
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

impl From<WebError> for ApiError {
    fn from(e: WebError) -> Self {
        tracing::error!(error = %e, "API request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

/// The `/v1` routes.
pub fn router<S: Clone + Send + Sync + 'static>(api: Api) -> Router<S> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", get(show))
        .route("/v1/sessions/{id}/history", get(history))
        .route("/v1/sessions/{id}/override", post(override_session))
        .route("/v1/events", get(events))
        .route("/v1/decisions", get(decisions))
        // Authenticated first, then the body read (override bodies are a few hundred bytes).
        .route_layer(middleware::from_fn(buffer_body))
        .route_layer(middleware::from_fn_with_state(api.clone(), auth))
        .layer(middleware::from_fn(no_store))
        .with_state(api)
}

/// The most bytes of a `/v1` or `/ui` request body (overrides, forms).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Reads a request's body (at most [`MAX_FORM_BYTES`]) before its handler runs, so a body that
/// does not arrive by the request's deadline is answered 408 and one too large 413, as on the
/// webhook route, whatever extractor the handler uses.
pub async fn buffer_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let (status, message) = if verdict_ingress::is_timeout(&e) {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "the request did not arrive in time",
                )
            } else if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, "body larger than 64 KiB")
            } else {
                (StatusCode::BAD_REQUEST, "could not read the body")
            };
            let mut resp = ApiError(status, message.into()).into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// Every `/v1` answer is personal or operational data: no cache may keep it.
async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 429 for a client address throttled after too many failed authentications.
pub fn throttled(wait: std::time::Duration) -> Response {
    let mut resp = ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications from this address; retry later".into(),
    )
    .into_response();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

async fn auth(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let presented = bearer(req.headers()).map(str::to_owned);
    match presented
        .as_deref()
        .and_then(|t| authenticate(&api.tokens, t))
    {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => {
            // A wrong token counts against the client's address (no token at all, as from a
            // probe, does not); an address that failed too often is answered 429.
            if let (Some(ip), Some(_)) = (client_ip(&req), &presented)
                && let Err(wait) = api.throttle.failed(ip)
            {
                return throttled(wait);
            }
            let mut resp = ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token".into(),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[derive(Debug, Deserialize)]
struct ShowQuery {
    as_of: Option<u64>,
}

async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, ApiError> {
    let found = api
        .reads
        .run(move |log| match q.as_of {
            Some(seq) => Ok(log.session_as_of(&id, seq)?),
            None => Ok(log.session(&id)?),
        })
        .await?;
    match found {
        Some(s) => Ok(json_response(
            StatusCode::OK,
            projections::session_json(&s).to_string(),
        )),
        None => Err(ApiError(StatusCode::NOT_FOUND, "unknown session".into())),
    }
}

/// The most history entries a page holds (and the default): each may carry a payload of up to
/// `max_body_bytes`.
const MAX_HISTORY_PAGE: usize = 200;

async fn history(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = projections::HistoryPage {
        after: q.after.unwrap_or(0),
        limit: q
            .limit
            .unwrap_or(MAX_HISTORY_PAGE)
            .clamp(1, MAX_HISTORY_PAGE),
        max_bytes: MAX_EVENTS_PAGE_BYTES,
    };
    match api
        .reads
        .run(move |log| Ok(log.history(&id, page)?))
        .await?
    {
        Some(body) => Ok(json_response(StatusCode::OK, body)),
        None => Err(ApiError(StatusCode::NOT_FOUND, "unknown session".into())),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    vendor_status: Option<String>,
    action: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn list(State(api): State<Api>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    if q.action
        .as_deref()
        .is_some_and(|a| Action::parse(a).is_none())
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "action must be approve, decline or review".into(),
        ));
    }
    let (sessions, next) = api
        .reads
        .run(move |log| {
            Ok(log.sessions(
                q.vendor_status.as_deref(),
                q.action.as_deref(),
                q.after.as_deref(),
                q.limit.unwrap_or(50),
            )?)
        })
        .await?;
    let body = serde_json::json!({
        "sessions": sessions.iter().map(projections::session_json).collect::<Vec<_>>(),
        "next": next,
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

/// A `/v1/events` or history page stops once it holds this many bytes of entries (bodies may be
/// up to `max_body_bytes` each, so 1,000 of them could be a gigabyte).
const MAX_EVENTS_PAGE_BYTES: usize = 4 << 20;
/// Entries read at a time for a `/v1/events` page (a constant: the limit is part of the cached
/// statement's text).
const EVENTS_CHUNK: usize = 32;

/// `?after=SEQ&limit=N`: a page after a cursor.
#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(api): State<Api>, Query(q): Query<PageQuery>) -> Result<Response, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let body = api
        .reads
        .run(move |log| {
            // Rounded up (the limit is part of the cached statement's text), then cut.
            // A page ends at `limit` entries or past MAX_EVENTS_PAGE_BYTES, whichever comes
            // first (at least one entry, so the cursor always moves). Read in small chunks, so
            // no more than a chunk of bodies is in memory past the cap.
            let mut lines: Vec<String> = Vec::new();
            let (mut bytes, mut next) = (0usize, after);
            while lines.len() < limit && bytes < MAX_EVENTS_PAGE_BYTES {
                let chunk = log.read_after(next, EVENTS_CHUNK)?;
                let Some(last) = chunk.last().map(|e| e.seq) else {
                    break;
                };
                let mut quarantined = log.quarantined(next, last)?;
                for e in &chunk {
                    if lines.len() >= limit || bytes >= MAX_EVENTS_PAGE_BYTES {
                        break;
                    }
                    let mut x = ExportedEntry::new(e).without_signatures();
                    x.quarantined = quarantined.remove(&e.seq);
                    let line = x.to_line();
                    bytes += line.len();
                    next = e.seq;
                    lines.push(line);
                }
                if chunk.len() < EVENTS_CHUNK {
                    break;
                }
            }
            Ok(format!(
                r#"{{"events":[{}],"next":{next}}}"#,
                lines.join(",")
            ))
        })
        .await?;
    Ok(json_response(StatusCode::OK, body))
}

#[derive(Debug, Deserialize)]
struct OverrideRequest {
    action: String,
    reason: String,
    #[serde(default)]
    ticket: Option<String>,
}

async fn override_session(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if caller.role != Role::Analyst {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "overrides need the analyst role".into(),
        ));
    }
    let req: OverrideRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let refused = |status: StatusCode, message: &str| Err(ApiError(status, message.into()));
    let (seq, body) = match crate::overrides::record(
        &api,
        crate::overrides::Via::Api,
        &id,
        &caller.name,
        &req.action,
        &req.reason,
        req.ticket,
    )
    .await
    {
        Ok(recorded) => recorded,
        Err(Refused::Invalid(m)) => return Err(ApiError(StatusCode::BAD_REQUEST, m)),
        Err(Refused::Unknown) => return refused(StatusCode::NOT_FOUND, "unknown session"),
        Err(Refused::Behind) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the projections are behind the log; retry shortly",
            );
        }
        Err(Refused::Unavailable) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the log cannot be written; retry later",
            );
        }
        Err(Refused::Failed(e)) => return Err(e.into()),
    };
    let decision = if api.decides {
        current_decision_after(&api, &id, seq).await?
    } else {
        None
    };
    let answer = serde_json::json!({ "status": "recorded", "seq": seq, "override": body, "decision": decision });
    Ok(json_response(StatusCode::OK, answer.to_string()))
}

#[derive(Debug, Deserialize)]
struct DecisionsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    wait: Option<u64>,
}

/// The longest long poll.
const MAX_WAIT_SECS: u64 = 60;

/// `GET /v1/decisions?after=SEQ&limit=N[&wait=SECS]`: decisions after a seq, oldest first;
/// with `wait`, held until one exists, woken by the writer's commits, or the time is up.
async fn decisions(
    State(api): State<Api>,
    Query(q): Query<DecisionsQuery>,
) -> Result<Response, ApiError> {
    let mut after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut committed = api.writer.subscribe();
    let mut stop = api.stop.clone();
    loop {
        // Marked seen before reading, so a commit during the read still wakes the wait below.
        committed.borrow_and_update();
        let (items, next) = api
            .reads
            .run(move |log| decisions_after(log, after, limit))
            .await?;
        if !items.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
            let body = format!(r#"{{"decisions":[{}],"next":{next}}}"#, items.join(","));
            return Ok(json_response(StatusCode::OK, body));
        }
        // Nothing up to the head just read: after the next commit, read only past it.
        after = next;
        let writer_gone = tokio::select! {
            changed = committed.changed() => changed.is_err(),
            () = tokio::time::sleep_until(deadline) => false,
            _ = stop.changed() => false,
        };
        if writer_gone {
            let body = format!(r#"{{"decisions":[],"next":{next}}}"#);
            return Ok(json_response(StatusCode::OK, body));
        }
    }
}

/// Up to `limit` decisions after `after`, as JSON objects with their seq, and the cursor: the
/// last decision's seq, or the head that was read when fewer than `limit` were found (so the
/// next call skips the entries already looked at).
fn decisions_after(log: &SqliteLog, after: u64, limit: usize) -> Result<(Vec<String>, u64)> {
    let head = log.head()?.map_or(0, |h| h.seq);
    let mut items = Vec::new();
    let mut last = after;
    for (seq, body) in log.decisions_between(after, head, limit)? {
        items.push(verdict_outbox::stored_decision_json(&body, seq)?);
        last = seq;
    }
    let next = if items.len() < limit {
        head.max(after)
    } else {
        last
    };
    Ok((items, next))
}
