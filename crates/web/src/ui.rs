//! The analyst's pages under `/ui`: a session list with filters, one session's timeline (every
//! log entry, what it changed, every decision with its rules, reasons and policy, every override
//! with who, why and the ticket, each payload expandable) and an override form.
//!
//! Server-rendered with askama (HTML-escaped by default); no JavaScript. Log-in exchanges a
//! configured token for a random session id kept in memory and sent back as an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` behind TLS); a `Bearer` token works as on `/v1`. Forms carry
//! a per-login CSRF token compared in constant time, and cross-site POSTs (`Sec-Fetch-Site`) are
//! refused. Every answer forbids framing, caching, sniffing and scripts by its headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use verdict_log::{EventStore as _, SqliteLog, rfc3339_ms};
use verdict_projections as projections;
use verdict_projections::SessionQueries as _;
use verdict_projector::fact::INTERNAL_SOURCE;
use verdict_projector::{Action, DecisionBody, Fact, Session, VendorKind, read};

use crate::Role;
use crate::api::{Api, Caller, authenticate, bearer};
use crate::error::{Result, WebError};
use crate::overrides::Refused;

/// The session cookie's name.
pub const COOKIE: &str = "verdict_ui";
/// How long a login lasts.
const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most timeline entries shown (the newest; all are folded for the state).
const MAX_SHOWN: usize = 2000;
/// The most logins one token holder keeps at once (the oldest is dropped).
const LOGINS_PER_CALLER: usize = 20;

/// One login: who, the form token, until when.
#[derive(Debug, Clone)]
struct Login {
    caller: Caller,
    csrf: String,
    expires: Instant,
}

/// Logins by the SHA-256 of their cookie value (the cookie itself is not kept).
#[derive(Debug, Default)]
struct Logins(Mutex<HashMap<[u8; 32], Login>>);

impl Logins {
    /// A new login for `caller`: the cookie value to send.
    fn create(&self, caller: Caller) -> Result<String> {
        let cookie = random_token()?;
        let login = Login {
            caller,
            csrf: random_token()?,
            expires: Instant::now() + LOGIN_TTL,
        };
        let mut map = self
            .0
            .lock()
            .map_err(|_| WebError::Internal("login table poisoned".into()))?;
        let now = Instant::now();
        map.retain(|_, l| l.expires > now);
        // One holder's logins are capped (the oldest goes), so nobody can push others out.
        let mine: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, l)| l.caller.name == login.caller.name)
            .map(|(k, l)| (*k, l.expires))
            .collect();
        if mine.len() >= LOGINS_PER_CALLER
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, e)| *e)
        {
            map.remove(oldest);
        }
        map.insert(digest(&cookie), login);
        Ok(cookie)
    }

    /// The live login holding this cookie value.
    fn find(&self, cookie: &str) -> Option<Login> {
        let key = digest(cookie);
        let mut map = self.0.lock().ok()?;
        match map.get(&key) {
            Some(l) if l.expires > Instant::now() => Some(l.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&self, cookie: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&digest(cookie));
        }
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 bytes from the operating system's generator, hex-encoded.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| WebError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What the pages share.
#[derive(Debug, Clone)]
pub struct Ui {
    api: Api,
    logins: Arc<Logins>,
    /// Cookies get `Secure` (verdict serves HTTPS).
    secure: bool,
}

impl Ui {
    /// Pages over the API's reads, writer and tokens; `secure` when served over TLS.
    pub fn new(api: Api, secure: bool) -> Self {
        Self {
            api,
            logins: Arc::new(Logins::default()),
            secure,
        }
    }
}

/// The caller of a page: who, and the login's CSRF token (none for a bearer token, which a
/// browser never attaches on its own).
#[derive(Debug, Clone)]
struct UiCaller {
    caller: Caller,
    csrf: Option<String>,
    cookie: Option<String>,
}

/// The `/ui` routes.
pub fn router<S: Clone + Send + Sync + 'static>(ui: Ui) -> Router<S> {
    let protected = Router::new()
        .route("/ui/sessions", get(sessions_page))
        .route("/ui/sessions/{id}", get(session_page))
        .route("/ui/sessions/{id}/entries/{seq}", get(entry_page))
        .route("/ui/sessions/{id}/override", post(override_submit))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(ui.clone(), require_login));
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/sessions") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/sessions") }))
        .route(
            "/ui/login",
            get(login_page)
                .post(login)
                // A token and a path: anything bigger is not a log-in.
                .layer(axum::extract::DefaultBodyLimit::max(16 * 1024)),
        )
        .route("/ui/style.css", get(style))
        .merge(protected)
        // Forms: a reason of at most 4,000 bytes and a ticket; late bodies are 408.
        .layer(middleware::from_fn(crate::api::buffer_body))
        .layer(middleware::from_fn(page_headers))
        .with_state(ui)
}

/// Headers on every page: no scripts, no framing, no caching, no sniffing, no referrer.
async fn page_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with no referrer at all, browsers send `Origin: null`
    // on form posts, which the cross-site check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

/// Lets in a live login cookie or a bearer token; anyone else gets the log-in page with a 401.
async fn require_login(State(ui): State<Ui>, mut req: Request, next: Next) -> Response {
    let client = crate::api::client_ip(&req);
    let headers = req.headers();
    let found = if let Some(token) = bearer(headers) {
        let found = authenticate(&ui.api.tokens, token);
        if let (None, Some(ip)) = (&found, client)
            && let Err(wait) = ui.api.throttle.failed(ip)
        {
            return crate::api::throttled(wait);
        }
        found.map(|caller| UiCaller {
            caller,
            csrf: None,
            cookie: None,
        })
    } else {
        cookie_value(headers).and_then(|c| {
            ui.logins.find(&c).map(|l| UiCaller {
                caller: l.caller,
                csrf: Some(l.csrf),
                cookie: Some(c),
            })
        })
    };
    match found {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => {
            let next_path = req
                .uri()
                .path_and_query()
                .map_or("/ui/sessions", |p| p.as_str());
            let next_path = if req.method() == axum::http::Method::GET {
                safe_next(next_path)
            } else {
                "/ui/sessions".to_owned()
            };
            let mut resp = html(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    who: None,
                    error: None,
                    next: next_path,
                },
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Where to go after logging in: a `/ui/` path only (no open redirect).
fn safe_next(next: &str) -> String {
    if next.starts_with("/ui/")
        && !next.contains('\\')
        && next.parse::<axum::http::Uri>().is_ok()
        && HeaderValue::from_str(next).is_ok()
    {
        next.to_owned()
    } else {
        "/ui/sessions".to_owned()
    }
}

/// Refuses a form posted from another site (browsers send `Sec-Fetch-Site`; clients that do
/// not are judged by the CSRF token alone).
fn cross_site(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none");
    // Browsers also send `Origin` on form posts: it must name this host. HTTP/1.1 names the
    // host in `Host`; HTTP/2 (what browsers speak over TLS) in the `:authority` pseudo-header,
    // which hyper puts in the request's URI, and sends no `Host`.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str));
    let foreign_origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""))
        .is_some_and(|o| {
            let authority = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            authority.is_none() || authority != host
        });
    fetch_site || foreign_origin
}

fn csrf_ok(caller: &UiCaller, presented: &str) -> bool {
    match &caller.csrf {
        None => true,
        Some(expected) => bool::from(expected.as_bytes().ct_eq(presented.as_bytes())),
    }
}

/// The header's view of the caller.
struct Who {
    name: String,
    role: &'static str,
    csrf: Option<String>,
}

impl Who {
    fn of(c: &UiCaller) -> Self {
        Self {
            name: c.caller.name.clone(),
            role: role_name(c.caller.role),
            csrf: c.csrf.clone(),
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Analyst => "analyst",
        Role::Reader => "reader",
    }
}

fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn error_page(status: StatusCode, who: Option<Who>, message: impl Into<String>) -> Response {
    html(
        status,
        &ErrorPage {
            who,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: message.into(),
        },
    )
}

fn internal(e: &WebError) -> Response {
    tracing::error!(error = %e, "page failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        "Something went wrong; the server log has the details.",
    )
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    who: Option<Who>,
    error: Option<String>,
    next: String,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    who: Option<Who>,
    title: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    html(
        StatusCode::OK,
        &LoginPage {
            who: None,
            error: None,
            next: safe_next(q.next.as_deref().unwrap_or("")),
        },
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(ui): State<Ui>,
    client: Option<axum::Extension<crate::http::ClientAddr>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if cross_site(&headers, &uri) {
        return error_page(StatusCode::FORBIDDEN, None, "Cross-site log-in refused.");
    }
    let client = client.map(|c| c.0.0.ip());
    let next = safe_next(&f.next);
    let Some(caller) = authenticate(&ui.api.tokens, f.token.trim()) else {
        if let Some(ip) = client
            && let Err(wait) = ui.api.throttle.failed(ip)
        {
            let mut page = error_page(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "Too many failed log-ins from this address; wait a minute and try again.",
            );
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                page.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return page;
        }
        return html(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                who: None,
                error: Some("That token is not valid.".into()),
                next,
            },
        );
    };
    let name = caller.name.clone();
    let cookie = match ui.logins.create(caller) {
        Ok(c) => c,
        Err(e) => return internal(&e),
    };
    tracing::info!(actor = %name, "UI log-in");
    let set = format!(
        "{COOKIE}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LOGIN_TTL.as_secs(),
        if ui.secure { "; Secure" } else { "" }
    );
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(ui): State<Ui>,
    axum::Extension(caller): axum::Extension<UiCaller>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if cross_site(&headers, &uri) || !csrf_ok(&caller, &f.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(Who::of(&caller)),
            "The form's token does not match your login; reload the page and try again.",
        );
    }
    if let Some(c) = &caller.cookie {
        ui.logins.remove(c);
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    let clear = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../templates/ui/style.css"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// The session list.

/// One row of the list.
struct Row {
    id: String,
    id_path: String,
    reference: String,
    user: String,
    vendor_status: String,
    action: Option<&'static str>,
    decision_source: &'static str,
    events: u64,
    quarantined: u64,
    updated_at: String,
}

/// A filter's choice.
struct Opt {
    value: &'static str,
    selected: bool,
}

impl Opt {
    fn list(values: &[&'static str], current: &str) -> Vec<Self> {
        values
            .iter()
            .map(|v| Self {
                value: v,
                selected: *v == current,
            })
            .collect()
    }
}

#[derive(Template)]
#[template(path = "ui/sessions.html")]
struct SessionsPage {
    who: Option<Who>,
    statuses: Vec<Opt>,
    actions: Vec<Opt>,
    filter_id: String,
    rows: Vec<Row>,
    next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    vendor_status: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    id: String,
    after: Option<String>,
}

fn dash(v: Option<&str>) -> String {
    v.map_or_else(|| "—".to_owned(), str::to_owned)
}

/// What stays as it is in a URL path segment or query value: RFC 3986's unreserved bytes.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` percent-encoded for a path segment or a query value.
fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

async fn sessions_page(
    State(ui): State<Ui>,
    axum::Extension(caller): axum::Extension<UiCaller>,
    Query(q): Query<ListQuery>,
) -> Response {
    let id = q.id.trim();
    if !id.is_empty() {
        return Redirect::to(&format!("/ui/sessions/{}", percent(id))).into_response();
    }
    let status = (!q.vendor_status.is_empty()).then(|| q.vendor_status.clone());
    let action = (!q.action.is_empty()).then(|| q.action.clone());
    if action
        .as_deref()
        .is_some_and(|a| Action::parse(a).is_none())
    {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(Who::of(&caller)),
            "The decision filter must be approve, decline or review.",
        );
    }
    let after = q.after.clone();
    let listed = ui
        .api
        .reads
        .run(move |log| {
            Ok(log.sessions(status.as_deref(), action.as_deref(), after.as_deref(), 50)?)
        })
        .await;
    let (sessions, next) = match listed {
        Ok(x) => x,
        Err(e) => return internal(&e),
    };
    let rows = sessions
        .iter()
        .map(|s| Row {
            id: s.session_id.clone(),
            id_path: percent(&s.session_id),
            reference: dash(s.reference_id.as_deref()),
            user: dash(s.user_id.as_deref()),
            vendor_status: dash(s.vendor_status.as_deref()),
            action: s.decision.as_deref().map(|(d, _)| d.action.as_str()),
            decision_source: s.decision.as_deref().map_or("", |(d, _)| d.source.as_str()),
            events: u64::from(s.event_count),
            quarantined: u64::from(s.quarantined),
            updated_at: rfc3339_ms(s.updated_at),
        })
        .collect();
    let next_link = next.map(|n| {
        format!(
            "/ui/sessions?vendor_status={}&action={}&after={}",
            percent(&q.vendor_status),
            percent(&q.action),
            percent(&n)
        )
    });
    html(
        StatusCode::OK,
        &SessionsPage {
            who: Some(Who::of(&caller)),
            statuses: Opt::list(
                &["APPROVED", "DECLINED", "REVIEW", "ABANDONED"],
                &q.vendor_status,
            ),
            actions: Opt::list(&["approve", "decline", "review"], &q.action),
            filter_id: String::new(),
            rows,
            next_link,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// One session.

/// The current decision, as shown.
struct DecisionView {
    action: &'static str,
    source: &'static str,
    policy: Option<String>,
    actor: Option<String>,
    rules: Vec<String>,
    reasons: Vec<String>,
}

impl DecisionView {
    fn of(d: &DecisionBody) -> Self {
        Self {
            action: d.action.as_str(),
            source: d.source.as_str(),
            policy: d.policy.as_ref().map(policy_label),
            actor: d.actor.clone(),
            rules: d.rules.clone(),
            reasons: d.reasons.clone(),
        }
    }
}

fn policy_label(p: &verdict_projector::PolicyRef) -> String {
    format!(
        "policy {} version {}, sha256 {}",
        p.name,
        p.version,
        p.sha256.get(..12).unwrap_or(&p.sha256)
    )
}

/// The session's state at the end of its timeline.
struct Summary {
    id: String,
    id_path: String,
    reference: String,
    user: String,
    vendor_status: String,
    status_by: Option<String>,
    decision: Option<DecisionView>,
    /// Who overrode last, what, why and the ticket.
    last_override: Option<String>,
    events: u64,
    quarantined: u64,
    updated_at: String,
    /// Older entries folded but not shown.
    hidden: usize,
}

/// A payload's size in the timeline: its link opens it.
struct PayloadSize {
    len: usize,
    repeats: u64,
}

/// A payload, shown on its own page.
struct PayloadView {
    len: usize,
    repeats: u64,
    pretty: Option<String>,
    raw: String,
    base64: bool,
    headers: String,
}

/// One log entry of the session.
struct Item {
    seq: u64,
    kind: &'static str,
    event_type: String,
    recorded_at: String,
    vendor_time: Option<String>,
    /// What the entry says.
    facts: Vec<String>,
    /// What it changed in the session.
    changes: Vec<String>,
    payload: Option<PayloadSize>,
}

/// The override form (analysts only).
struct OverrideFormView {
    csrf: String,
    actor: String,
    error: Option<String>,
    /// The choices, the one posted before selected (none at first: the analyst must choose).
    actions: Vec<Opt>,
    reason: String,
    ticket: String,
}

#[derive(Template)]
#[template(path = "ui/session.html")]
struct SessionPage {
    who: Option<Who>,
    s: Summary,
    form: Option<OverrideFormView>,
    timeline: Vec<Item>,
}

/// Folds the session's entries in seq order, noting what each one said and changed.
fn timeline(log: &SqliteLog, id: &str, decides: bool) -> Result<Option<(Summary, Vec<Item>)>> {
    let seqs = log.entry_seqs(id, u64::MAX >> 1)?;
    if seqs.is_empty() {
        return Ok(None);
    }
    let shown_from = seqs.len().saturating_sub(MAX_SHOWN);
    let mut s = Session::new(id);
    let mut items = Vec::with_capacity(seqs.len());
    for (i, &seq) in seqs.iter().enumerate() {
        let Some(e) = log.get(seq)? else { continue };
        let r = projections::recorded(&e);
        let fact = read(&r);
        let status_before = s.vendor_status.clone();
        let decision_before = s
            .decision
            .as_deref()
            .map(|(d, _)| (d.action.as_str(), d.source.as_str()));
        let decision_before = decision_before.map(|(a, src)| format!("{a} ({src})"));
        let change = s.apply(&r, &fact);
        let Described {
            kind,
            facts,
            changes,
        } = describe(
            &fact,
            &s,
            seq,
            change,
            decides,
            status_before.as_deref(),
            decision_before,
        );
        if i < shown_from {
            continue; // folded for the state, not shown
        }
        let repeats = if e.source == INTERNAL_SOURCE {
            0
        } else {
            log.repeats(seq)?
        };
        items.push(Item {
            seq,
            kind,
            event_type: e.event_type.clone(),
            recorded_at: rfc3339_ms(e.recorded_at),
            vendor_time: e.vendor_time.map(rfc3339_ms),
            facts,
            changes,
            payload: Some(PayloadSize {
                len: e.body.len(),
                repeats,
            }),
        });
    }
    let summary = Summary {
        id: s.session_id.clone(),
        id_path: percent(&s.session_id),
        reference: dash(s.reference_id.as_deref()),
        user: dash(s.user_id.as_deref()),
        vendor_status: dash(s.vendor_status.as_deref()),
        status_by: s.status_update_actor.clone(),
        decision: s.decision.as_deref().map(|(d, _)| DecisionView::of(d)),
        last_override: s.last_override.as_ref().map(|o| {
            format!(
                "{} set {} at {} (#{}): {}{}",
                o.actor,
                o.action.as_str(),
                rfc3339_ms(o.recorded_at),
                o.seq,
                o.reason,
                o.ticket
                    .as_ref()
                    .map_or_else(String::new, |t| format!(" · ticket {t}"))
            )
        }),
        events: u64::from(s.event_count),
        quarantined: u64::from(s.quarantined),
        updated_at: rfc3339_ms(s.updated_at),
        hidden: shown_from,
    };
    Ok(Some((summary, items)))
}

/// What an entry says and what it changed in its session, in words.
struct Described {
    kind: &'static str,
    facts: Vec<String>,
    changes: Vec<String>,
}

/// Describes the entry at `seq` (read as `fact`), which changed `s` by `change`; the vendor
/// status and the decision before it are given.
fn describe(
    fact: &Fact,
    s: &Session,
    seq: u64,
    change: verdict_projector::Change,
    decides: bool,
    status_before: Option<&str>,
    decision_before: Option<String>,
) -> Described {
    let mut facts = Vec::new();
    let mut changes = Vec::new();
    let kind = match &fact {
        Fact::Vendor {
            kind,
            reference_id,
            user_id,
            status,
            actor,
            ..
        } => {
            facts.push(match kind {
                VendorKind::Finished => "the vendor finished the session".to_owned(),
                VendorKind::StatusUpdated => "the vendor's status was changed".to_owned(),
            });
            if let Some(st) = status {
                facts.push(format!("status {st}"));
            }
            if let Some(a) = actor {
                facts.push(format!("changed by {a} at the vendor"));
            }
            if reference_id.is_some() || user_id.is_some() {
                facts.push(format!(
                    "reference {}, user {}",
                    dash(reference_id.as_deref()),
                    dash(user_id.as_deref())
                ));
            }
            if change.vendor_status {
                changes.push(format!(
                    "vendor status: {} → {}",
                    dash(status_before),
                    dash(s.vendor_status.as_deref())
                ));
            } else if status.is_some() && s.vendor_key.is_some_and(|k| k.seq != seq) {
                changes.push(format!(
                    "older than the current vendor event (#{}) in the vendor's order (event time, then terminal status first): kept in the history, changes nothing current",
                    s.vendor_key.map_or(0, |k| k.seq)
                ));
            } else if status.is_some() {
                changes.push("vendor status unchanged".to_owned());
            }
            "event"
        }
        Fact::Override(o) => {
            facts.push(format!(
                "{} overrode the decision: {}",
                o.actor,
                o.action.as_str()
            ));
            facts.push(format!("reason: {}", o.reason));
            if let Some(t) = &o.ticket {
                facts.push(format!("ticket: {t}"));
            }
            "override"
        }
        Fact::Decision(d) => {
            facts.push(format!(
                "decided {} (source: {})",
                d.action.as_str(),
                d.source.as_str()
            ));
            if let Some(p) = &d.policy {
                facts.push(policy_label(p));
            }
            if !d.rules.is_empty() {
                facts.push(format!("rules matched: {}", d.rules.join(", ")));
            }
            for reason in &d.reasons {
                facts.push(format!("reason: {reason}"));
            }
            if let Some(a) = &d.actor {
                facts.push(format!("by {a}"));
            }
            facts.push(format!("caused by entry #{}", d.trigger_seq));
            if change.decided {
                changes.push(format!(
                    "current decision: {} → {} ({})",
                    decision_before.unwrap_or_else(|| "none".to_owned()),
                    d.action.as_str(),
                    d.source.as_str()
                ));
            }
            "decision"
        }
        Fact::Quarantined { reason, .. } => {
            facts.push(format!("quarantined: {reason}"));
            "quarantined"
        }
        Fact::Noted { .. } | Fact::Other => "event",
    };
    // What the projector does with the entry (the same function it uses).
    match projections::call_for(s, seq, change) {
        Some(projections::Call::Policy) if decides => {
            changes.push("the newest finished event: the policy decides on it".to_owned());
        }
        Some(projections::Call::Policy) => changes.push(
            "the newest finished event (no policy is loaded, so nothing decides on it)".to_owned(),
        ),
        Some(projections::Call::Fixed(d)) => changes.push(format!(
            "calls for a {} decision: {}",
            d.source.as_str(),
            d.action.as_str()
        )),
        None => {}
    }
    if change.overridden {
        changes.push("becomes the session's last override".to_owned());
    }
    Described {
        kind,
        facts,
        changes,
    }
}

fn payload_view(body: &[u8], repeats: u64, headers_json: &str) -> PayloadView {
    let (raw, base64) = match std::str::from_utf8(body) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => {
            use base64::Engine as _;
            (base64::engine::general_purpose::STANDARD.encode(body), true)
        }
    };
    let pretty = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let headers = serde_json::from_str::<serde_json::Value>(headers_json)
        .ok()
        .map(|mut v| {
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| verdict_log::READABLE_HEADERS.contains(&k.as_str()));
            }
            v
        })
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_default();
    PayloadView {
        len: body.len(),
        repeats,
        pretty,
        raw,
        base64,
        headers,
    }
}

async fn render_session(
    ui: &Ui,
    caller: &UiCaller,
    id: String,
    status: StatusCode,
    form_error: Option<FormError>,
) -> Response {
    let lookup = id.clone();
    let decides = ui.api.decides;
    let found = ui
        .api
        .reads
        .run(move |log| timeline(log, &lookup, decides))
        .await;
    let (summary, items) = match found {
        Ok(Some(x)) => x,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(Who::of(caller)),
                format!("No session {id:?} is in the log."),
            );
        }
        Err(e) => return internal(&e),
    };
    let form = (caller.caller.role == Role::Analyst).then(|| {
        let (error, action, reason, ticket) = match form_error {
            Some(f) => (Some(f.message), f.action, f.reason, f.ticket),
            None => (None, String::new(), String::new(), String::new()),
        };
        OverrideFormView {
            // A bearer caller has no login: its form needs no token (it cannot be forged by
            // a browser), but the field must still be there.
            csrf: caller.csrf.clone().unwrap_or_default(),
            actor: caller.caller.name.clone(),
            error,
            actions: ["approve", "review", "decline"]
                .into_iter()
                .map(|a| Opt {
                    value: a,
                    selected: a == action,
                })
                .collect(),
            reason,
            ticket,
        }
    });
    html(
        status,
        &SessionPage {
            who: Some(Who::of(caller)),
            s: summary,
            form,
            timeline: items,
        },
    )
}

async fn session_page(
    State(ui): State<Ui>,
    axum::Extension(caller): axum::Extension<UiCaller>,
    Path(id): Path<String>,
) -> Response {
    render_session(&ui, &caller, id, StatusCode::OK, None).await
}

#[derive(Template)]
#[template(path = "ui/entry.html")]
struct EntryPage {
    who: Option<Who>,
    id: String,
    id_path: String,
    seq: u64,
    event_type: String,
    recorded_at: String,
    p: PayloadView,
}

/// One entry's payload, on its own page (the timeline links to it rather than carrying
/// every payload of a long session).
async fn entry_page(
    State(ui): State<Ui>,
    axum::Extension(caller): axum::Extension<UiCaller>,
    Path((id, seq)): Path<(String, u64)>,
) -> Response {
    let lookup = id.clone();
    let found = ui
        .api
        .reads
        .run(move |log| {
            if !log.entry_of(&lookup, seq)? {
                return Ok(None);
            }
            let Some(e) = log.get(seq)? else {
                return Ok(None);
            };
            let repeats = if e.source == INTERNAL_SOURCE {
                0
            } else {
                log.repeats(seq)?
            };
            Ok(Some((e, repeats)))
        })
        .await;
    match found {
        Ok(Some((e, repeats))) => html(
            StatusCode::OK,
            &EntryPage {
                who: Some(Who::of(&caller)),
                id_path: percent(&id),
                id,
                seq,
                event_type: e.event_type.clone(),
                recorded_at: rfc3339_ms(e.recorded_at),
                p: payload_view(&e.body, repeats, &e.headers_json),
            },
        ),
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            Some(Who::of(&caller)),
            format!("Session {id:?} has no entry #{seq}."),
        ),
        Err(e) => internal(&e),
    }
}

/// A refused override form, shown again with what was typed.
struct FormError {
    message: String,
    action: String,
    reason: String,
    ticket: String,
}

#[derive(Debug, Deserialize)]
struct OverrideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ticket: String,
}

async fn override_submit(
    State(ui): State<Ui>,
    axum::Extension(caller): axum::Extension<UiCaller>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(f): Form<OverrideForm>,
) -> Response {
    if caller.caller.role != Role::Analyst {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(Who::of(&caller)),
            "Overrides need the analyst role.",
        );
    }
    if cross_site(&headers, &uri) || !csrf_ok(&caller, &f.csrf) {
        tracing::warn!(actor = %caller.caller.name, session = %id, "override form refused: CSRF check failed");
        return error_page(
            StatusCode::FORBIDDEN,
            Some(Who::of(&caller)),
            "The form's token does not match your login; reload the page and try again.",
        );
    }
    let ticket = (!f.ticket.trim().is_empty()).then(|| f.ticket.trim().to_owned());
    let refused_for_now = |message: &str| {
        let mut page = error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Who::of(&caller)),
            message.to_owned(),
        );
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        page
    };
    let recorded = crate::overrides::record(
        &ui.api,
        crate::overrides::Via::Page,
        &id,
        &caller.caller.name,
        &f.action,
        &f.reason,
        ticket,
    )
    .await;
    let seq = match recorded {
        Ok((seq, _)) => seq,
        Err(Refused::Invalid(message)) => {
            return render_session(
                &ui,
                &caller,
                id,
                StatusCode::BAD_REQUEST,
                Some(FormError {
                    message,
                    action: f.action,
                    reason: f.reason,
                    ticket: f.ticket,
                }),
            )
            .await;
        }
        Err(Refused::Behind) => {
            return refused_for_now("The projections are behind the log; try again shortly.");
        }
        Err(Refused::Unknown) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(Who::of(&caller)),
                format!("No session {id:?} is in the log."),
            );
        }
        Err(Refused::Unavailable) => {
            return refused_for_now(
                "The log cannot be written right now; nothing was recorded. Try again shortly.",
            );
        }
        Err(Refused::Failed(e)) => return internal(&e),
    };
    settle(&ui.api, &id, seq).await;
    Redirect::to(&format!("/ui/sessions/{}#seq-{seq}", percent(&id))).into_response()
}

/// Waits (at most [`crate::api::SETTLE`]) until the projector has folded the override at `seq` and the
/// decision it led to, so the page shown next has both.
async fn settle(api: &Api, id: &str, seq: u64) {
    let deadline = crate::api::settle_deadline();
    let mut target = seq;
    loop {
        if !crate::api::projected_to(api, target, deadline).await || !api.decides {
            return;
        }
        let lookup = id.to_owned();
        let decision_seq = api
            .reads
            .run(move |log| Ok(log.session(&lookup)?))
            .await
            .ok()
            .flatten()
            .and_then(|s| s.decision.map(|d| d.1));
        match decision_seq {
            Some(d) if d > target => target = d,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_kept_inside_the_ui() {
        assert_eq!(safe_next("/ui/sessions/abc?x=1"), "/ui/sessions/abc?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/v1/sessions",
            "",
            "/ui\\x",
        ] {
            assert_eq!(safe_next(bad), "/ui/sessions", "{bad}");
        }
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; verdict_ui=abc123 ; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc123"));
        h.insert(header::COOKIE, HeaderValue::from_static("verdict_uix=1"));
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn percent_encodes_everything_but_unreserved() {
        assert_eq!(percent("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }

    #[test]
    fn logins_expire_and_are_removed() {
        let logins = Logins::default();
        let caller = Caller {
            name: "alice".into(),
            role: Role::Analyst,
        };
        let Ok(cookie) = logins.create(caller) else {
            panic!("no login")
        };
        assert_eq!(cookie.len(), 64);
        assert!(logins.find(&cookie).is_some());
        assert!(logins.find("not-a-cookie").is_none());
        logins.remove(&cookie);
        assert!(logins.find(&cookie).is_none());
    }
}
