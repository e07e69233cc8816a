//! Where decisions go: the configured sinks and how they are delivered to.

use std::fmt;
use std::time::Duration;

use verdict_delivery::{Schedule, Signer};

/// One configured sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name (outbox rows, logs).
    pub name: String,
    /// Where decisions are POSTed (`Debug` hides its credentials).
    pub url: SinkUrl,
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

/// A sink's URL. It may carry credentials (`https://user:pass@host/path?token=...`), so
/// `Debug` and [`SinkUrl::redacted`] show only its scheme, host and port.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SinkUrl(String);

impl SinkUrl {
    /// The URL to send to.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL for logs and listings: no user information, path or query.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `url` without its user information (`user:pass@`), path and query, any of which may be a
/// credential: `https://[redacted]@host:8443/[redacted]?[redacted]`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    // User information ends at the last `@` before any query or fragment (a password may hold
    // a `/`; redacting a path that holds an `@` too is the safe mistake).
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (user, rest) = match rest[..query_at].rfind('@') {
        Some(at) => ("[redacted]@", &rest[at + 1..]),
        None => ("", rest),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(authority_end);
    // The path too: some sinks carry their credential in it (`/services/T0/B0/XXXX`).
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let path = path.split('#').next().unwrap_or("");
    let mut shown = if path.len() > 1 {
        "/[redacted]".to_owned()
    } else {
        path.to_owned()
    };
    if !query.is_empty() {
        shown.push_str("?[redacted]");
    }
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{user}{host}{shown}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_path_and_query() {
        for (url, want) in [
            ("https://h/", "https://h/"),
            ("https://h/services/T0/B0/XXXX", "https://h/[redacted]"),
            (
                "https://u:p@h:8443/p?x=1#f",
                "https://[redacted]@h:8443/[redacted]?[redacted]",
            ),
            ("http://h?token=1", "http://h?[redacted]"),
            ("https://u:pa/ss@h/p", "https://[redacted]@h/[redacted]"),
            ("https://h/p?mail=a@b", "https://h/[redacted]?[redacted]"),
            ("h", "h"),
        ] {
            assert_eq!(redact_url(url), want);
        }
    }
}
