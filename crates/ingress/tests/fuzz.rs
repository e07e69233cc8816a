//! Property tests in place of a fuzzer for the signature-header parsers: any header values and
//! any body give an answer (never a panic), and never a verified delivery without the secret.
//!
//! Bounded run: `PROPTEST_CASES=100000 cargo test --release -p verdict-ingress --test fuzz`
//! (the result of a run is recorded in docs/security.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use verdict_ingress::signature::{Scheme, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verifiers() -> Vec<Verifier> {
    [
        Scheme::Seon,
        Scheme::SeonLegacy,
        Scheme::StandardWebhooks,
        Scheme::Stripe,
    ]
    .into_iter()
    .map(|s| Verifier::new(s, None, &[SECRET], 300).unwrap())
    .collect()
}

/// Header values near the formats the parsers expect, and arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "(sha256=)?[0-9a-fA-F+/=]{0,90}".prop_map(String::into_bytes),
        "SHA-256=[0-9a-f]{0,70}".prop_map(String::into_bytes),
        "(v1,[A-Za-z0-9+/=]{0,50} ?){0,4}".prop_map(String::into_bytes),
        "t=-?[0-9]{0,20}(,v1=[0-9a-f]{0,70}){0,3},?".prop_map(String::into_bytes),
        "[0-9]{0,25}".prop_map(String::into_bytes),
    ]
}

const NAMES: &[&str] = &[
    "x-seon-signature",
    "digest",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "request-id",
    "content-type",
];

proptest! {
    #[test]
    fn any_headers_and_body_get_an_answer_never_a_forgery(
        values in proptest::collection::vec((0..NAMES.len(), value()), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..400),
        now in 0i64..4_000_000_000,
    ) {
        let mut headers = HeaderMap::new();
        for (i, v) in values {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.append(HeaderName::from_static(NAMES[i]), v);
            }
        }
        for v in verifiers() {
            // Random values cannot carry a valid HMAC-SHA256 under the secret.
            prop_assert!(v.verify(&headers, &body, now).is_err());
        }
    }
}
