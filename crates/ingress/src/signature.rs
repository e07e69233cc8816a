//! The four signature schemes, as pure functions of (headers, raw body, now).
//!
//! Every comparison is constant-time (`Mac::verify_slice`), every configured secret is tried
//! (rotation), and the signed bytes are always the raw body as received, never re-serialised JSON.

use std::fmt;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use verdict_log::{Headers, sha256};

type HmacSha256 = Hmac<Sha256>;

/// A signature scheme, named as in the config (`scheme = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// SEON IDV: HMAC-SHA256 of the body in a configurable header, hex or base64, optional
    /// `sha256=` prefix; dedupe by the body's SHA-256 (`Request-Id` kept as metadata).
    Seon,
    /// SEON's Fraud-API webhooks: `Digest: SHA-256=<hex HMAC>`; dedupe by body hash.
    SeonLegacy,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// Stripe: `Stripe-Signature: t=...,v1=...`.
    Stripe,
}

impl Scheme {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seon => "seon",
            Self::SeonLegacy => "seon-legacy",
            Self::StandardWebhooks => "standard-webhooks",
            Self::Stripe => "stripe",
        }
    }

    /// Whether the scheme carries a timestamp (and so `tolerance_secs` applies).
    pub fn has_timestamp(self) -> bool {
        matches!(self, Self::StandardWebhooks | Self::Stripe)
    }

    /// Whether SEON's unsigned validation ping is answered for this scheme.
    pub fn accepts_ping(self) -> bool {
        matches!(self, Self::Seon | Self::SeonLegacy)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a verifier could not be built from its configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    /// No secret configured.
    #[error("at least one secret is required")]
    NoSecret,
    /// A Standard Webhooks secret is not `whsec_<base64>`.
    #[error("secret #{index} is not a Standard Webhooks secret (whsec_<base64 key>)")]
    BadStandardWebhooksSecret {
        /// 1-based position in `secrets`.
        index: usize,
    },
    /// The signature header name is not a valid HTTP header name.
    #[error("signature_header {0:?} is not a valid header name")]
    BadHeaderName(String),
}

/// Why a delivery was refused. All of these are answered 401 except [`Rejection::BadRequest`]
/// (400); nothing is stored in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A header the scheme requires is absent.
    #[error("missing {0} header")]
    MissingHeader(String),
    /// A signature or timestamp header cannot be parsed.
    #[error("malformed {header} header: {why}")]
    MalformedHeader {
        /// The header name.
        header: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No configured secret produces a matching signature.
    #[error("signature does not match")]
    Mismatch,
    /// The signed timestamp is outside the tolerance.
    #[error("timestamp is {age_secs}s away from now (tolerance {tolerance_secs}s)")]
    Stale {
        /// `now - timestamp`, negative when in the future.
        age_secs: i64,
        /// The configured tolerance.
        tolerance_secs: i64,
    },
    /// A request that is well signed but unusable (an oversized `Request-Id`...).
    #[error("{0}")]
    BadRequest(&'static str),
}

impl Rejection {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::MalformedHeader { .. } => "malformed_header",
            Self::Mismatch => "bad_signature",
            Self::Stale { .. } => "stale_timestamp",
            Self::BadRequest(_) => "bad_request",
        }
    }
}

/// What a verified delivery contributes to its log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Unique per source; equal across retries of one delivery.
    pub dedupe_key: String,
    /// The key is the body's hash and may be put in the order of the event time read from the
    /// body ([`time_ordered_key`]; `seon`).
    pub time_ordered: bool,
    /// Earlier versions stored this scheme's deliveries under `request-id:<id>` keys (`seon`):
    /// an entry stored so with the same body is this delivery (see
    /// [`verdict_log::NewEvent::legacy_request_id_dedupe`]).
    pub stored_by_request_id: bool,
    /// The headers kept for auditors: request id, content type and the signature headers, so a
    /// delivery can be re-verified later with the secret.
    pub headers: Headers,
}

/// Checks deliveries of one source.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    header: axum::http::HeaderName,
    keys: Vec<HmacSha256>,
    /// The shortest configured key, in bytes (after decoding a `whsec_` secret).
    shortest_key: usize,
    tolerance_secs: i64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("header", &self.header)
            .field("secrets", &format_args!("[{} redacted]", self.keys.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// The most bytes of a `Request-Id` or `webhook-id` used as a dedupe key.
pub const MAX_ID_LEN: usize = 256;
const REQUEST_ID: &str = "request-id";

impl Verifier {
    /// A verifier for `scheme` with the given secrets (as configured: for Standard Webhooks
    /// `whsec_<base64>`, otherwise the secret's bytes are the key). `signature_header` is used by
    /// the `seon` scheme (default `X-Seon-Signature`).
    pub fn new<S: AsRef<str>>(
        scheme: Scheme,
        signature_header: Option<&str>,
        secrets: &[S],
        tolerance_secs: u64,
    ) -> Result<Self, SetupError> {
        if secrets.is_empty() {
            return Err(SetupError::NoSecret);
        }
        let header_name = match scheme {
            Scheme::Seon => signature_header.unwrap_or("X-Seon-Signature"),
            Scheme::SeonLegacy => "Digest",
            Scheme::StandardWebhooks => "webhook-signature",
            Scheme::Stripe => "Stripe-Signature",
        };
        let header = axum::http::HeaderName::from_bytes(header_name.as_bytes())
            .map_err(|_| SetupError::BadHeaderName(header_name.to_owned()))?;
        let mut keys = Vec::with_capacity(secrets.len());
        let mut shortest_key = usize::MAX;
        for (i, s) in secrets.iter().enumerate() {
            let s = s.as_ref();
            let key = match scheme {
                Scheme::StandardWebhooks => {
                    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
                    B64.decode(b64)
                        .ok()
                        .filter(|k| !k.is_empty())
                        .ok_or(SetupError::BadStandardWebhooksSecret { index: i + 1 })?
                }
                _ => s.as_bytes().to_vec(),
            };
            if key.is_empty() {
                return Err(SetupError::NoSecret);
            }
            shortest_key = shortest_key.min(key.len());
            // HMAC accepts keys of any length.
            keys.push(HmacSha256::new_from_slice(&key).map_err(|_| SetupError::NoSecret)?);
        }
        Ok(Self {
            scheme,
            header,
            keys,
            shortest_key,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        })
    }

    /// The length in bytes of the shortest configured key (a `whsec_` secret counts its decoded
    /// key), so a deployment can refuse weak secrets.
    pub fn shortest_key(&self) -> usize {
        self.shortest_key
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Verifies one delivery: `headers` and the raw `body` as received, `now` in unix seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, Rejection> {
        let mut kept = Headers::new();
        for name in ["content-type", REQUEST_ID] {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.to_owned(), v.to_owned());
            }
        }
        let mut stored_by_request_id = false;
        let mut time_ordered = false;
        let dedupe_key = match self.scheme {
            Scheme::Seon => {
                let value = required(headers, self.header.as_str())?;
                kept.insert(self.header.as_str().to_owned(), value.to_owned());
                let sig = parse_seon_signature(value).ok_or(Rejection::MalformedHeader {
                    header: self.header.as_str().to_owned(),
                    why: "expected 64 hex or 44 base64 characters, optionally after sha256=",
                })?;
                self.check(&sig, &[body])?;
                // Keyed on the signed bytes: the `Request-Id` is not covered by the signature,
                // so keying on it let anyone store a signed body again under a new id, or claim
                // a future id. It stays as metadata (checked, so a bad one is still a 400).
                if let Some(id) = headers.get(REQUEST_ID) {
                    request_id(id)?;
                }
                stored_by_request_id = true;
                time_ordered = true;
                body_key(body)
            }
            Scheme::SeonLegacy => {
                let value = required(headers, "digest")?;
                kept.insert("digest".into(), value.to_owned());
                let sig = parse_legacy_digest(value).ok_or(Rejection::MalformedHeader {
                    header: "Digest".into(),
                    why: "expected SHA-256=<64 hex characters>",
                })?;
                self.check(&sig, &[body])?;
                body_key(body)
            }
            Scheme::StandardWebhooks => {
                let id = required(headers, "webhook-id")?;
                let ts = required(headers, "webhook-timestamp")?;
                let sigs = required(headers, "webhook-signature")?;
                for (k, v) in [
                    ("webhook-id", id),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", sigs),
                ] {
                    kept.insert(k.into(), v.to_owned());
                }
                if id.is_empty() || id.len() > MAX_ID_LEN {
                    return Err(Rejection::MalformedHeader {
                        header: "webhook-id".into(),
                        why: "empty or too long",
                    });
                }
                let t = parse_unix(ts).ok_or(Rejection::MalformedHeader {
                    header: "webhook-timestamp".into(),
                    why: "expected unix seconds",
                })?;
                self.check_fresh(t, now)?;
                let candidates = parse_standard_signatures(sigs);
                if candidates.is_empty() {
                    return Err(Rejection::MalformedHeader {
                        header: "webhook-signature".into(),
                        why: "expected a space-separated list of v1,<base64>",
                    });
                }
                let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
                self.check_any(&candidates, &parts)?;
                format!("webhook-id:{id}")
            }
            Scheme::Stripe => {
                let value = required(headers, "stripe-signature")?;
                kept.insert("stripe-signature".into(), value.to_owned());
                let (t_str, candidates) =
                    parse_stripe_header(value).ok_or(Rejection::MalformedHeader {
                        header: "Stripe-Signature".into(),
                        why: "expected t=<unix>,v1=<hex>[,v1=<hex>...]",
                    })?;
                let t = parse_unix(t_str).ok_or(Rejection::MalformedHeader {
                    header: "Stripe-Signature".into(),
                    why: "t= is not unix seconds",
                })?;
                self.check_fresh(t, now)?;
                let parts: [&[u8]; 3] = [t_str.as_bytes(), b".", body];
                self.check_any(&candidates, &parts)?;
                match top_level_id(body) {
                    Some(id) => format!("event-id:{id}"),
                    None => body_key(body),
                }
            }
        };
        Ok(Verified {
            dedupe_key,
            time_ordered,
            stored_by_request_id,
            headers: kept,
        })
    }

    fn check_fresh(&self, t: i64, now: i64) -> Result<(), Rejection> {
        let age = now.saturating_sub(t);
        if age.saturating_abs() > self.tolerance_secs {
            return Err(Rejection::Stale {
                age_secs: age,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(())
    }

    fn check(&self, sig: &[u8], parts: &[&[u8]]) -> Result<(), Rejection> {
        self.check_any(&[sig], parts)
    }

    /// Every candidate against every key; each comparison is constant-time (`verify_slice`).
    fn check_any<C: AsRef<[u8]>>(
        &self,
        candidates: &[C],
        parts: &[&[u8]],
    ) -> Result<(), Rejection> {
        for key in &self.keys {
            let mut mac = key.clone();
            for p in parts {
                mac.update(p);
            }
            if candidates
                .iter()
                .any(|c| mac.clone().verify_slice(c.as_ref()).is_ok())
            {
                return Ok(());
            }
        }
        Err(Rejection::Mismatch)
    }
}

fn required<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, Rejection> {
    let v = headers
        .get(name)
        .ok_or_else(|| Rejection::MissingHeader(name.to_owned()))?;
    v.to_str()
        .map(str::trim)
        .map_err(|_| Rejection::MalformedHeader {
            header: name.to_owned(),
            why: "not visible ASCII",
        })
}

fn request_id(v: &axum::http::HeaderValue) -> Result<&str, Rejection> {
    let s = v
        .to_str()
        .map(str::trim)
        .map_err(|_| Rejection::BadRequest("Request-Id is not visible ASCII"))?;
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(Rejection::BadRequest(
            "Request-Id is empty or longer than 256 bytes",
        ));
    }
    Ok(s)
}

/// A body-hash key (`body-sha256:<hex>`) put in the order of the event time `vendor_time` (unix
/// ms, read from the same body): `body:<13-digit ms>:<hex>`. Still a function of the body
/// alone, so retries map to it; but consecutive deliveries now land next to each other in the
/// dedupe index instead of at random places in it, which made every commit write a page per
/// delivery (ingest -25%, p99 x2: docs/benchmarks.md, "Hardening").
pub fn time_ordered_key(key: &str, vendor_time: i64) -> String {
    match key.strip_prefix("body-sha256:") {
        Some(hex) => format!("body:{:013}:{hex}", vendor_time.max(0)),
        None => key.to_owned(),
    }
}

fn body_key(body: &[u8]) -> String {
    format!("body-sha256:{}", hex::encode(sha256(body)))
}

fn parse_unix(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `sha256=` prefix optional; 64 hex characters or 44 base64 characters, decoding to 32 bytes.
pub fn parse_seon_signature(value: &str) -> Option<Vec<u8>> {
    let v = value.trim();
    let v = match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256=") => &v[7..],
        _ => v,
    };
    let bytes = if v.len() == 64 {
        hex::decode(v).ok()?
    } else if v.len() == 44 {
        B64.decode(v).ok()?
    } else {
        return None;
    };
    (bytes.len() == 32).then_some(bytes)
}

/// `SHA-256=<64 hex>` (the algorithm name case-insensitive).
pub fn parse_legacy_digest(value: &str) -> Option<Vec<u8>> {
    let (alg, hexsig) = value.trim().split_once('=')?;
    if !alg.trim().eq_ignore_ascii_case("SHA-256") {
        return None;
    }
    let hexsig = hexsig.trim();
    if hexsig.len() != 64 {
        return None;
    }
    hex::decode(hexsig).ok()
}

/// The `v1,<base64>` entries of a `webhook-signature` header (other versions are skipped).
pub fn parse_standard_signatures(value: &str) -> Vec<Vec<u8>> {
    value
        .split_ascii_whitespace()
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|b64| B64.decode(b64).ok())
        .filter(|sig| sig.len() == 32)
        .take(16)
        .collect()
}

/// `t=<unix>` and every `v1=<hex>` of a `Stripe-Signature` header.
pub fn parse_stripe_header(value: &str) -> Option<(&str, Vec<Vec<u8>>)> {
    let mut t = None;
    let mut sigs = Vec::new();
    for item in value.split(',') {
        let (k, v) = item.trim().split_once('=')?;
        match k {
            "t" => t = Some(v),
            "v1" if v.len() == 64 && sigs.len() < 16 => sigs.push(hex::decode(v).ok()?),
            _ => {}
        }
    }
    let t = t?;
    (!sigs.is_empty()).then_some((t, sigs))
}

fn top_level_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(body)
        .ok()?
        .id
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
}

#[cfg(test)]
mod tests {
    //! Vectors computed independently with Python's `hmac` and `openssl dgst -sha256 -hmac`.
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    const BODY: &str = r#"{"event":"idv:session_finished","date":"2026-03-02T10:15:42.000Z","details":{"sessionId":"s-1","status":"APPROVED"}}"#;
    const SEON_SECRET: &str = "seon-test-secret";
    const SEON_HEX: &str = "21abb49b5fcf8bac15fcb689821950ae2a310d56b23f16921301212312606ff7";
    const SEON_B64: &str = "Iau0m1/Pi6wV/LaJghlQrioxDVayPxaSEwEhIxJgb/c=";
    const LEGACY_SECRET: &str = "license-key-123";
    const LEGACY_HEX: &str = "c99532538d01df06cc48b0af41525ada26aa00da179fdc12a5179d62376617c7";
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_SIG: &str = "NOAhsQQEY7lCZVfxOspYXsEw8hYCGf8mcD96nc3zJQg=";
    const STRIPE_SECRET: &str = "whsec_stripe_test";
    const STRIPE_SIG: &str = "e5dd9f63487cfffbbec57e3d71a36a441166de5b08a84c13ca4f9c011245a3b5";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(*k, v);
            }
        }
        h
    }

    fn v(scheme: Scheme, secrets: &[&str]) -> Verifier {
        match Verifier::new(scheme, None, secrets, 300) {
            Ok(v) => v,
            Err(e) => unreachable!("test verifier: {e}"),
        }
    }

    /// (scheme, secrets, headers, body, now) -> expected dedupe key or rejection reason.
    fn check(
        scheme: Scheme,
        secrets: &[&str],
        h: &[(&'static str, &str)],
        body: &str,
        now: i64,
        expected: Result<&str, &str>,
    ) {
        let got = v(scheme, secrets).verify(&headers(h), body.as_bytes(), now);
        match (got, expected) {
            (Ok(ok), Ok(key)) => assert_eq!(ok.dedupe_key, key),
            (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "{e}"),
            (got, want) => panic!("{scheme}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn seon() {
        let s = Scheme::Seon;
        let prefixed = format!("sha256={SEON_HEX}");
        let upper_prefix = format!("SHA256={SEON_B64}");
        let body_key = format!("body-sha256:{}", hex::encode(sha256(BODY.as_bytes())));
        let rid = [("request-id", "req-1")];
        for sig in [SEON_HEX, SEON_B64, prefixed.as_str(), upper_prefix.as_str()] {
            check(
                s,
                &[SEON_SECRET],
                &[("x-seon-signature", sig), rid[0]],
                BODY,
                0,
                Ok(&body_key),
            );
        }
        // The Request-Id is not signed: it does not key the delivery, it is kept as metadata
        // and as the key a delivery stored before the change was stored under.
        let headers = headers(&[("x-seon-signature", SEON_HEX), rid[0]]);
        let v = v(s, &[SEON_SECRET]).verify(&headers, BODY.as_bytes(), 0);
        let v = v.unwrap_or_else(|e| panic!("{e}"));
        assert!(v.stored_by_request_id);
        assert_eq!(
            v.headers.get("request-id").map(String::as_str),
            Some("req-1")
        );
        check(
            s,
            &[SEON_SECRET],
            &[("x-seon-signature", SEON_HEX)],
            BODY,
            0,
            Ok(&body_key),
        );
        // Rotation: the old secret is tried after the new one.
        check(
            s,
            &["new-secret", SEON_SECRET],
            &[("x-seon-signature", SEON_HEX)],
            BODY,
            0,
            Ok(&body_key),
        );
        check(
            s,
            &["wrong"],
            &[("x-seon-signature", SEON_HEX)],
            BODY,
            0,
            Err("bad_signature"),
        );
        let tampered = BODY.replace("APPROVED", "APPROVEE");
        check(
            s,
            &[SEON_SECRET],
            &[("x-seon-signature", SEON_HEX)],
            &tampered,
            0,
            Err("bad_signature"),
        );
        check(s, &[SEON_SECRET], &[], BODY, 0, Err("missing_header"));
        check(
            s,
            &[SEON_SECRET],
            &[("x-seon-signature", "abc")],
            BODY,
            0,
            Err("malformed_header"),
        );
        check(
            s,
            &[SEON_SECRET],
            &[("x-seon-signature", &SEON_HEX[..63])],
            BODY,
            0,
            Err("malformed_header"),
        );
        let long_id = "x".repeat(MAX_ID_LEN + 1);
        check(
            s,
            &[SEON_SECRET],
            &[("x-seon-signature", SEON_HEX), ("request-id", &long_id)],
            BODY,
            0,
            Err("bad_request"),
        );
    }

    #[test]
    fn body_keys_are_put_in_event_time_order() {
        let hex = "ab".repeat(32);
        let key = format!("body-sha256:{hex}");
        assert_eq!(
            time_ordered_key(&key, 1_772_446_542_000),
            format!("body:1772446542000:{hex}")
        );
        // Zero-padded, so keys sort by time as text; a time before 1970 counts as 0.
        assert_eq!(
            time_ordered_key(&key, 5),
            format!("body:0000000000005:{hex}")
        );
        assert_eq!(
            time_ordered_key(&key, -5),
            format!("body:0000000000000:{hex}")
        );
        assert!(time_ordered_key(&key, 999) < time_ordered_key(&key, 1000));
        // Other keys are left as they are.
        assert_eq!(time_ordered_key("webhook-id:x", 5), "webhook-id:x");
    }

    #[test]
    fn seon_custom_header() {
        let verifier = Verifier::new(Scheme::Seon, Some("X-Signature"), &[SEON_SECRET], 300);
        let ok =
            verifier.map(|v| v.verify(&headers(&[("x-signature", SEON_HEX)]), BODY.as_bytes(), 0));
        assert!(matches!(ok, Ok(Ok(_))));
    }

    #[test]
    fn seon_legacy() {
        let s = Scheme::SeonLegacy;
        let body_key = format!("body-sha256:{}", hex::encode(sha256(BODY.as_bytes())));
        let digest = format!("SHA-256={LEGACY_HEX}");
        check(
            s,
            &[LEGACY_SECRET],
            &[("digest", &digest)],
            BODY,
            0,
            Ok(&body_key),
        );
        check(
            s,
            &[LEGACY_SECRET],
            &[("digest", &digest.to_lowercase())],
            BODY,
            0,
            Ok(&body_key),
        );
        check(
            s,
            &["other"],
            &[("digest", &digest)],
            BODY,
            0,
            Err("bad_signature"),
        );
        check(
            s,
            &[LEGACY_SECRET],
            &[("digest", LEGACY_HEX)],
            BODY,
            0,
            Err("malformed_header"),
        );
        check(s, &[LEGACY_SECRET], &[], BODY, 0, Err("missing_header"));
    }

    #[test]
    fn standard_webhooks() {
        let s = Scheme::StandardWebhooks;
        let ts = SW_TS.to_string();
        let sig = format!("v1,{SW_SIG}");
        let listed = format!("v1a,abc v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {sig}");
        let good = |sig: &str| -> Vec<(&'static str, String)> {
            vec![
                ("webhook-id", SW_ID.into()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", sig.into()),
            ]
        };
        let run = |h: Vec<(&'static str, String)>,
                   secrets: &[&str],
                   body: &str,
                   now: i64,
                   want: Result<&str, &str>| {
            let pairs: Vec<(&'static str, &str)> =
                h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            check(s, secrets, &pairs, body, now, want);
        };
        let key = format!("webhook-id:{SW_ID}");
        run(good(&sig), &[SW_SECRET], BODY, SW_TS, Ok(&key));
        run(good(&listed), &[SW_SECRET], BODY, SW_TS + 299, Ok(&key));
        run(
            good(&sig),
            &["whsec_c2Vjb25k", SW_SECRET],
            BODY,
            SW_TS - 299,
            Ok(&key),
        );
        run(
            good(&sig),
            &["whsec_c2Vjb25k"],
            BODY,
            SW_TS,
            Err("bad_signature"),
        );
        run(
            good(&sig),
            &[SW_SECRET],
            &BODY.replace('1', "2"),
            SW_TS,
            Err("bad_signature"),
        );
        run(
            good(&sig),
            &[SW_SECRET],
            BODY,
            SW_TS + 301,
            Err("stale_timestamp"),
        );
        run(
            good(&sig),
            &[SW_SECRET],
            BODY,
            SW_TS - 301,
            Err("stale_timestamp"),
        );
        run(
            good("v2,xyz"),
            &[SW_SECRET],
            BODY,
            SW_TS,
            Err("malformed_header"),
        );
        run(
            good(&sig)[1..].to_vec(),
            &[SW_SECRET],
            BODY,
            SW_TS,
            Err("missing_header"),
        );
        let mut bad_ts = good(&sig);
        bad_ts[1].1 = "yesterday".into();
        run(bad_ts, &[SW_SECRET], BODY, SW_TS, Err("malformed_header"));
    }

    #[test]
    fn standard_webhooks_secret_must_be_base64() {
        let err = Verifier::new(Scheme::StandardWebhooks, None, &["whsec_!!!"], 300).err();
        assert_eq!(
            err,
            Some(SetupError::BadStandardWebhooksSecret { index: 1 })
        );
    }

    #[test]
    fn stripe() {
        let s = Scheme::Stripe;
        let header = format!("t={SW_TS},v1={STRIPE_SIG}");
        let rotated = format!("t={SW_TS},v1={},v1={STRIPE_SIG},v0=abc", "0".repeat(64));
        let body_key = format!("body-sha256:{}", hex::encode(sha256(BODY.as_bytes())));
        check(
            s,
            &[STRIPE_SECRET],
            &[("stripe-signature", &header)],
            BODY,
            SW_TS,
            Ok(&body_key),
        );
        check(
            s,
            &[STRIPE_SECRET],
            &[("stripe-signature", &rotated)],
            BODY,
            SW_TS,
            Ok(&body_key),
        );
        check(
            s,
            &["whsec_other"],
            &[("stripe-signature", &header)],
            BODY,
            SW_TS,
            Err("bad_signature"),
        );
        check(
            s,
            &[STRIPE_SECRET],
            &[("stripe-signature", &header)],
            BODY,
            SW_TS + 1000,
            Err("stale_timestamp"),
        );
        check(
            s,
            &[STRIPE_SECRET],
            &[("stripe-signature", "v1=abc")],
            BODY,
            SW_TS,
            Err("malformed_header"),
        );
        check(s, &[STRIPE_SECRET], &[], BODY, SW_TS, Err("missing_header"));
    }

    #[test]
    fn stripe_dedupes_by_event_id() {
        // HMAC-SHA256("whsec_stripe_test", "1614265330.{\"id\":\"evt_1\"}") by Python's hmac.
        let sig = "50837474b9c7bb666798b772ac794c5ffe880a4d48ec793d658c6574ba7e46ce";
        let header = format!("t={SW_TS},v1={sig}");
        check(
            Scheme::Stripe,
            &[STRIPE_SECRET],
            &[("stripe-signature", &header)],
            r#"{"id":"evt_1"}"#,
            SW_TS,
            Ok("event-id:evt_1"),
        );
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        for s in [
            "",
            "=",
            "t=",
            "t=1,v1=",
            ",,,",
            "sha256=",
            "SHA-256=",
            "v1,",
            "é",
            "sha256=é",
        ] {
            let _ = parse_seon_signature(s);
            let _ = parse_legacy_digest(s);
            let _ = parse_standard_signatures(s);
            let _ = parse_stripe_header(s);
        }
    }
}
