//! The names of the metrics this crate records (the binary describes and exports them).

/// `verdict_connections_shed_total`: connections closed at the cap to make room for a new one.
pub const CONNECTIONS_SHED: &str = "verdict_connections_shed_total";
/// `verdict_auth_failures_total{result}`: `bad_token` (API, pages, log-in) or `throttled`
/// (refused with 429 because the address failed too often).
pub const AUTH_FAILURES: &str = "verdict_auth_failures_total";
/// `verdict_tls_reloads_total{result}`: certificate reloads, ok or failed.
pub const TLS_RELOADS: &str = "verdict_tls_reloads_total";
