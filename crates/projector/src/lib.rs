//! The projector: folds the event log into per-session state.
//!
//! The core is pure: [`fact::read`] turns a log entry into a [`Fact`] (never failing: what it
//! cannot read is [`Fact::Quarantined`]), and [`Session::apply`] folds a fact into a session
//! (synchronous, infallible, no I/O). [`Projection`] holds every session and the global
//! counters, and [`Projection::digest`] hashes the order-independent view of all of them.
//! Persisting projections and tailing the log are the binary's job.
//!
//! ```
//! use verdict_projector::{Projection, Recorded};
//! let body = br#"{"event":"idv:session_finished","date":"2026-03-02T10:15:42Z",
//!                 "details":{"sessionId":"s-1","status":"APPROVED"}}"#;
//! let mut p = Projection::default();
//! p.apply(&Recorded { seq: 1, source: "seon-idv", event_type: "idv:session_finished",
//!                     recorded_at: 0, vendor_time: Some(1), body });
//! assert_eq!(p.session("s-1").and_then(|s| s.vendor_status.as_deref()), Some("APPROVED"));
//! ```
//!
//! Ordering: the sender's event time decides what is current. An older event that arrives
//! later goes into the history and changes nothing current; ties go to terminal statuses over
//! `REVIEW`, then to the later seq.

pub mod fact;
mod projection;
pub mod seon;
mod session;

pub use fact::{
    Action, DecisionBody, DecisionSource, Fact, OverrideBody, PolicyRef, Recorded, VendorKind, read,
};
pub use projection::{Projection, digest};
pub use session::{
    AppliedOverride, Change, OrderKey, Session, SessionView, fact_session, into_fact_session,
};
