//! What the ingress reads from a body before storing it: the event type and the sender's event
//! time. Tolerant: anything unreadable is stored all the same, typed [`UNKNOWN_TYPE`].

use std::borrow::Cow;

use serde::Deserialize;

/// The type recorded for a body that is not JSON or names no event type.
pub const UNKNOWN_TYPE: &str = "unknown";

/// The longest event type kept; longer names are cut (the body keeps the original).
pub const MAX_TYPE_LEN: usize = 128;

/// The event type and time of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `event` (SEON), else `type` (Standard Webhooks, Stripe), else [`UNKNOWN_TYPE`].
    pub event_type: String,
    /// `date` or `timestamp` (RFC 3339), or `created` (unix seconds), in unix milliseconds.
    pub vendor_time: Option<i64>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    date: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<i64>,
}

impl Envelope {
    /// Reads the envelope of a body; never fails.
    pub fn read(body: &[u8]) -> Self {
        let Ok(raw) = serde_json::from_slice::<Raw<'_>>(body) else {
            return Self {
                event_type: UNKNOWN_TYPE.to_owned(),
                vendor_time: None,
            };
        };
        let event_type = raw
            .event
            .or(raw.kind)
            .filter(|t| !t.is_empty())
            .map_or_else(
                || UNKNOWN_TYPE.to_owned(),
                |t| truncate(&t, MAX_TYPE_LEN).to_owned(),
            );
        let vendor_time = raw
            .date
            .or(raw.timestamp)
            .and_then(|d| parse_rfc3339_ms(&d))
            .or_else(|| raw.created.and_then(|s| s.checked_mul(1000)));
        Self {
            event_type,
            vendor_time,
        }
    }

    /// Whether the body is SEON's validation ping (`{"event":"ping",...}`).
    pub fn is_ping(&self) -> bool {
        self.event_type == "ping"
    }
}

/// Parses an RFC 3339 timestamp into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, event_type: &str, vendor_time: Option<i64>) {
        let e = Envelope::read(body.as_bytes());
        assert_eq!(
            (e.event_type.as_str(), e.vendor_time),
            (event_type, vendor_time),
            "{body}"
        );
    }

    #[test]
    fn reads_types_and_times() {
        check(
            r#"{"event":"idv:session_finished","date":"2026-03-02T10:15:42.000Z","details":{}}"#,
            "idv:session_finished",
            Some(1_772_446_542_000),
        );
        check(
            r#"{"event":"x","date":"2026-03-02T11:15:42.5+01:00"}"#,
            "x",
            Some(1_772_446_542_500),
        );
        check(
            r#"{"type":"identity.verified","timestamp":"2026-03-02T10:15:42Z"}"#,
            "identity.verified",
            Some(1_772_446_542_000),
        );
        check(
            r#"{"id":"evt_1","type":"identity.verification_session.verified","created":1614265330}"#,
            "identity.verification_session.verified",
            Some(1_614_265_330_000),
        );
        check(
            r#"{"event":"ping","message":"Webhook URL validation check."}"#,
            "ping",
            None,
        );
        check(r#"{"event":"x","date":"yesterday"}"#, "x", None);
        check("not json", UNKNOWN_TYPE, None);
        check("[1,2]", UNKNOWN_TYPE, None);
        check(r#"{"event":42}"#, UNKNOWN_TYPE, None);
        check(r#"{"event":""}"#, UNKNOWN_TYPE, None);
        check(
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            UNKNOWN_TYPE,
            None,
        );
        let long = format!(r#"{{"event":"{}"}}"#, "é".repeat(100));
        assert_eq!(Envelope::read(long.as_bytes()).event_type.len(), 128);
    }
}
