//! Prometheus metrics: every name verdict records, the recorder, and `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (ingress, the log writer, the
//! projector, the policy and TLS reloads, the dispatcher); gauges that are a difference of two
//! positions (projector lag) are computed when scraped.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `verdict_webhooks_total{source, outcome, reason}`: deliveries received.
pub const WEBHOOKS: &str = "verdict_webhooks_total";
/// `verdict_append_batch_events`: events per committed batch (histogram).
pub const APPEND_BATCH_EVENTS: &str = "verdict_append_batch_events";
/// `verdict_append_batch_seconds`: BEGIN to end of COMMIT, fsync included (histogram).
pub const APPEND_BATCH_SECONDS: &str = "verdict_append_batch_seconds";
/// `verdict_append_failures_total`: batches that could not be written.
pub const APPEND_FAILURES: &str = "verdict_append_failures_total";
/// `verdict_log_checkpoint_seconds`: the log writer's WAL checkpoints, run after it has
/// answered a batch (histogram).
pub const LOG_CHECKPOINT_SECONDS: &str = "verdict_log_checkpoint_seconds";
/// `verdict_log_head_seq`: the newest committed seq.
pub const LOG_HEAD: &str = "verdict_log_head_seq";
/// `verdict_projector_lag_seqs`: committed entries not yet folded and written by the projector.
pub const PROJECTOR_LAG: &str = "verdict_projector_lag_seqs";
/// `verdict_policy_reloads_total{result}`: ok or failed.
pub const POLICY_RELOADS: &str = "verdict_policy_reloads_total";
// Recorded by the crates of the roles (projections, dispatcher, HTTP); described and exported
// here.
pub use verdict_outbox::metrics::{
    SINK_ATTEMPT_SECONDS, SINK_ATTEMPTS, SINK_DEAD_LETTERS, SINKS_DISABLED, SUPERSEDED,
};
pub use verdict_projections::metrics::{DECISIONS, QUARANTINED, RULE_ERRORS};
pub use verdict_web::metrics::{AUTH_FAILURES, CONNECTIONS_SHED, TLS_RELOADS};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide recorder. Call once, before anything records.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(APPEND_BATCH_EVENTS.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        WEBHOOKS,
        "Webhook deliveries received, by source and outcome (accepted, duplicate, ping, rejected with a reason, unavailable, unknown_source)"
    );
    describe_histogram!(APPEND_BATCH_EVENTS, "Events per committed log batch");
    describe_counter!(
        CONNECTIONS_SHED,
        "Connections closed at max_connections to make room (the one waiting longest on its client)"
    );
    describe_counter!(
        AUTH_FAILURES,
        "Refused authentications: bad_token (a bad token or log-in), throttled (429: the address failed too often)"
    );
    describe_histogram!(
        APPEND_BATCH_SECONDS,
        "Time to write and commit one log batch, fsync included"
    );
    describe_counter!(APPEND_FAILURES, "Log batches that could not be written");
    describe_histogram!(
        LOG_CHECKPOINT_SECONDS,
        "The log writer's WAL checkpoints, run after it has answered a batch"
    );
    describe_gauge!(LOG_HEAD, "The newest committed seq");
    describe_gauge!(
        PROJECTOR_LAG,
        "Committed log entries not yet folded into the projections"
    );
    describe_counter!(DECISIONS, "Decisions made, by action and source");
    describe_counter!(
        RULE_ERRORS,
        "Rule evaluations that failed (each counted as a review match)"
    );
    describe_counter!(POLICY_RELOADS, "Policy reloads, by result");
    describe_counter!(TLS_RELOADS, "TLS certificate reloads, by result");
    describe_counter!(
        QUARANTINED,
        "Log entries the projector could not understand"
    );
    describe_counter!(SINK_ATTEMPTS, "Delivery attempts to sinks, by outcome");
    describe_histogram!(SINK_ATTEMPT_SECONDS, "Delivery attempt duration");
    describe_counter!(SINK_DEAD_LETTERS, "Deliveries dead-lettered");
    describe_counter!(SINKS_DISABLED, "Sinks disabled by a 410 Gone answer");
    describe_counter!(
        SUPERSEDED,
        "Undelivered decisions superseded by a newer decision of the same session"
    );
}

/// What `/metrics` reads besides the recorder.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The recorder's handle.
    pub handle: PrometheusHandle,
    /// The writer's committed head.
    pub committed: tokio::sync::watch::Receiver<u64>,
    /// The projector's written checkpoint.
    pub projected: tokio::sync::watch::Receiver<u64>,
}

/// `GET /metrics`: Prometheus text format.
pub async fn render(State(s): State<Arc<Scrape>>) -> Response {
    let head = *s.committed.borrow();
    let projected = *s.projected.borrow();
    #[allow(clippy::cast_precision_loss)] // seqs far below 2^52
    {
        metrics::gauge!(LOG_HEAD).set(head as f64);
        metrics::gauge!(PROJECTOR_LAG).set(head.saturating_sub(projected) as f64);
    }
    s.handle.run_upkeep();
    let mut resp = (StatusCode::OK, s.handle.render()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
