//! What the API and the pages share: the tokens and who is calling, the pool of read
//! connections, the server's handles (writer, projector progress, stop), and the wait for the
//! projections to catch up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::header;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use verdict_log::{LogWriter, SqliteLog};
use verdict_projections::SessionQueries as _;

use crate::Role;
use crate::error::Result;

/// A configured token: its holder, role and the SHA-256 of the token (compared in constant
/// time; the token itself is not kept).
#[derive(Debug, Clone)]
pub struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

impl Token {
    /// From the config's (name, role, token).
    pub fn new(name: String, role: Role, token: &str) -> Self {
        Self {
            name,
            role,
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (recorded as the actor of overrides).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Finds the token holder in constant time (every token is compared).
pub fn authenticate(tokens: &[Token], presented: &str) -> Option<Caller> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            found = Some(Caller {
                name: t.name.clone(),
                role: t.role,
            });
        }
    }
    found
}

/// Read-only connections for request handlers, used on the blocking pool.
#[derive(Debug)]
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<SqliteLog>>,
}

impl ReadPool {
    /// A pool over the log at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&SqliteLog) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(c) => c,
                None => SqliteLog::open_read_only(&pool.path)?,
            };
            let out = f(&conn);
            if let Ok(mut v) = pool.idle.lock()
                && v.len() < 8
            {
                v.push(conn);
            }
            out
        })
        .await?
    }
}

/// What the API handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    /// Reads.
    pub reads: Arc<ReadPool>,
    /// Appends (overrides).
    pub writer: LogWriter,
    /// Who may call.
    pub tokens: Arc<Vec<Token>>,
    /// Whether the projector makes decisions (a policy is loaded).
    pub decides: bool,
    /// The projector's progress (newest seq folded).
    pub projected: tokio::sync::watch::Receiver<u64>,
    /// Becomes true at shutdown (ends long polls).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Failed authentications per client address (shared with the pages).
    pub throttle: Arc<crate::throttle::AuthThrottle>,
}

/// How long an override waits for the projector: to catch up with everything acknowledged
/// before it (so a session delivered a moment ago is found), and to fold the override (so the
/// answer carries the decision it led to). Both return as soon as the projector is there,
/// normally within milliseconds; only a badly overloaded server waits this long.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (until `deadline` at the latest) for the projector to have folded `seq`. False if it
/// did not get there in time.
pub async fn projected_to(api: &Api, seq: u64, deadline: tokio::time::Instant) -> bool {
    let mut projected = api.projected.clone();
    tokio::time::timeout_at(deadline, projected.wait_for(|p| *p >= seq))
        .await
        .is_ok_and(|r| r.is_ok()) // the guard is dropped here: it must not live across an await
}

/// [`SETTLE`] from now.
pub fn settle_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + SETTLE
}

/// Whether a session is known, for an override (see [`known_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// In the projections.
    Yes,
    /// Not there, with the projections caught up with everything acknowledged before.
    No,
    /// Not there, and the projector did not catch up within [`SETTLE`].
    Behind,
}

/// Looks a session up in the projections; if it is not there, looks again once the projector
/// has caught up with everything acknowledged before this call (at most [`SETTLE`]), so an
/// override sent right after the delivery's 200 finds its session. Known sessions never wait.
pub async fn known_session(api: &Api, id: &str) -> Result<Known> {
    let exists = || {
        let lookup = id.to_owned();
        api.reads.run(move |log| Ok(log.session_exists(&lookup)?))
    };
    if exists().await? {
        return Ok(Known::Yes);
    }
    // Everything the writer had committed when asked.
    let head = *api.writer.subscribe().borrow();
    let current = projected_to(api, head, settle_deadline()).await;
    Ok(if exists().await? {
        Known::Yes
    } else if current {
        Known::No
    } else {
        Known::Behind
    })
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The client's IP address, when the request came through verdict's accept loop.
pub fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<crate::http::ClientAddr>()
        .map(|c| c.0.ip())
}
