use serde::Serialize;
use serde_json::value::RawValue;

use crate::Entry;

/// One entry as exported (`verdict log export`, `GET /v1/events`): every stored field, hashes in
/// hex, times in RFC 3339, and the payload as the exact JSON received (or, for a body that is
/// not JSON, `payload: null` and the bytes in `payload_base64`).
#[derive(Debug, Serialize)]
pub struct ExportedEntry<'a> {
    /// Position in the log.
    pub seq: u64,
    /// UUIDv7.
    pub event_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// Source name.
    pub source: &'a str,
    /// Version of the event's shape.
    pub event_version: u32,
    /// Unique per source.
    pub dedupe_key: &'a str,
    /// When it was committed.
    pub recorded_at: String,
    /// The sender's event time.
    pub vendor_time: Option<String>,
    /// Stored delivery headers.
    pub headers: serde_json::Value,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// Hex chain hash of the previous entry.
    pub prev_hash: String,
    /// Hex chain hash of this entry.
    pub hash: String,
    /// The body as JSON when it is JSON: byte for byte, except that a body spanning several
    /// lines has its insignificant whitespace removed so the export stays one entry a line
    /// (`body_sha256` is always over the bytes as received).
    pub payload: Option<Box<RawValue>>,
    /// The body in base64 when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Why the projector could not use the entry, when the caller knows (`/v1/events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

impl<'a> ExportedEntry<'a> {
    /// The export view of `e`.
    pub fn new(e: &'a Entry) -> Self {
        let payload = std::str::from_utf8(&e.body)
            .ok()
            .filter(|s| serde_json::from_str::<&RawValue>(s).is_ok())
            .and_then(|s| RawValue::from_string(one_line_json(s)).ok());
        let payload_base64 = payload.is_none().then(|| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&e.body)
        });
        Self {
            seq: e.seq,
            event_id: e.event_id.to_string(),
            event_type: &e.event_type,
            source: &e.source,
            event_version: e.event_version,
            dedupe_key: &e.dedupe_key,
            recorded_at: rfc3339_ms(e.recorded_at),
            vendor_time: e.vendor_time.map(rfc3339_ms),
            headers: serde_json::from_str(&e.headers_json)
                .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new())),
            body_sha256: hex::encode(e.body_sha256),
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
            payload,
            payload_base64,
            quarantined: None,
        }
    }

    /// The entry without its signature headers, for readers over HTTP: with a signed body and
    /// its signature anyone could send the delivery again (a duplicate now, but still).
    #[must_use]
    pub fn without_signatures(mut self) -> Self {
        if let serde_json::Value::Object(m) = &mut self.headers {
            m.retain(|k, _| READABLE_HEADERS.contains(&k.as_str()));
        }
        self
    }

    /// One NDJSON line (without the newline).
    pub fn to_line(&self) -> String {
        // Serialising strings, numbers and valid raw JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The stored delivery headers shown over HTTP (`/v1/events`, the analyst page): everything
/// but the signatures. `verdict log export` shows them all.
pub const READABLE_HEADERS: [&str; 4] = [
    "content-type",
    "request-id",
    "webhook-id",
    "webhook-timestamp",
];

/// Valid JSON text on one line: unchanged when it has no line break, else with the whitespace
/// outside strings removed (key order, numbers and escapes stay exactly as they were).
pub fn one_line_json(json: &str) -> String {
    if !json.contains(['\n', '\r']) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-03-02T10:15:42.000Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_json_keeps_strings_and_order() {
        let pretty = "{\n  \"b\": \"x y\\\" \\n\",\n  \"a\": [1.50, 2e3]\n}";
        assert_eq!(one_line_json(pretty), r#"{"b":"x y\" \n","a":[1.50,2e3]}"#);
        assert_eq!(one_line_json("{ \"a\": 1 }"), "{ \"a\": 1 }");
    }

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_772_446_542_123), "2026-03-02T10:15:42.123Z");
    }
}
