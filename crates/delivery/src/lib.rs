//! How verdict delivers decisions to a backend, as pure functions: no I/O, no clock, no
//! randomness of its own (callers pass the time and a random number), so every rule here is
//! unit-tested exactly.
//!
//! - [`Signer`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`), keyed by a sink's
//!   `whsec_` secret.
//! - [`Schedule`]: exponential backoff with jitter and a bounded number of attempts.
//! - [`classify`]: what an HTTP answer (or a transport error) means for a delivery: delivered,
//!   retry (honouring `Retry-After` on 429 and 503), or the sink is gone (410).
//!
//! The stateful part (the outbox table, the dispatcher, per-session order) lives in the binary,
//! which persists every attempt so that a restart resumes the schedule exactly.
//!
//! ```
//! use verdict_delivery::{Outcome, Signer, classify};
//! let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let sig = signer.sign("msg_1", 1_700_000_000, b"{}");
//! assert!(sig.starts_with("v1,"));
//! assert_eq!(classify(Some(204), None, 0), Outcome::Delivered);
//! ```

mod classify;
mod schedule;
mod sign;

pub use classify::{Outcome, classify, parse_retry_after};
pub use schedule::Schedule;
pub use sign::{KeyError, Signer};
