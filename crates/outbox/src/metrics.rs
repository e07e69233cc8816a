//! The names of the metrics this crate records (the binary describes and exports them).

/// `verdict_sink_attempts_total{sink,outcome}`: delivery attempts (delivered, gone, retry).
pub const SINK_ATTEMPTS: &str = "verdict_sink_attempts_total";
/// `verdict_sink_attempt_seconds{sink}`: request to answer (histogram).
pub const SINK_ATTEMPT_SECONDS: &str = "verdict_sink_attempt_seconds";
/// `verdict_sink_dead_letters_total{sink}`: deliveries out of attempts.
pub const SINK_DEAD_LETTERS: &str = "verdict_sink_dead_letters_total";
/// `verdict_sinks_disabled_total{sink}`: sinks disabled by a 410.
pub const SINKS_DISABLED: &str = "verdict_sinks_disabled_total";
/// `verdict_deliveries_superseded_total`: undelivered decisions replaced by newer ones.
pub const SUPERSEDED: &str = "verdict_deliveries_superseded_total";
