//! The projector: folds the event log into per-session state.
//!
//! Its core will be a pure, infallible `apply(state, event)` (no I/O: same events in, same state
//! out, in any delivery order); a runner tails the log from a durable checkpoint. This crate is
//! a placeholder until the projector issue lands: the foundation stores every event, and the
//! projector can be built and replayed from the log at any time.
