//! What a sink's answer means for a delivery.

use std::time::{Duration, UNIX_EPOCH};

/// The meaning of one attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// Anything else: try again later; `after` is the sink's `Retry-After` (429 and 503 only).
    Retry {
        /// The wait the sink asked for.
        after: Option<Duration>,
    },
    /// 410 Gone: the sink does not want deliveries any more; it is disabled.
    Gone,
}

/// Classifies an attempt: `status` is `None` for a transport error or a timeout;
/// `retry_after` is the raw header value; `now` is unix seconds (for HTTP dates).
pub fn classify(status: Option<u16>, retry_after: Option<&str>, now: i64) -> Outcome {
    match status {
        Some(200..=299) => Outcome::Delivered,
        Some(410) => Outcome::Gone,
        Some(429 | 503) => Outcome::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Outcome::Retry { after: None },
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to
/// `now` (unix seconds); a date in the past means "now". `None` when unparseable.
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let now = u64::try_from(now).unwrap_or(0);
    Some(Duration::from_secs(at.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(Some(s), None, 0), Outcome::Delivered, "{s}");
        }
        for s in [300, 400, 401, 404, 408, 500, 502, 504] {
            assert_eq!(
                classify(Some(s), Some("5"), 0),
                Outcome::Retry { after: None },
                "{s}: Retry-After only counts on 429 and 503"
            );
        }
        assert_eq!(classify(None, None, 0), Outcome::Retry { after: None });
        assert_eq!(classify(Some(410), None, 0), Outcome::Gone);
        assert_eq!(
            classify(Some(429), Some("7"), 0),
            Outcome::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(Some(503), Some("soon"), 0),
            Outcome::Retry { after: None }
        );
    }

    #[test]
    fn retry_after_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        let v = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse_retry_after(v, 784_111_777 - 90),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after(v, 784_111_777 + 90), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", 0),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("-1", 0), None);
        assert_eq!(parse_retry_after("", 0), None);
        assert_eq!(parse_retry_after("99999999999999999999999", 0), None);
    }
}
