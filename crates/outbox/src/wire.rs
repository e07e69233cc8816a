//! A decision as delivered to sinks and served by `GET /v1/decisions`.

use serde::Serialize;
use verdict_projector::DecisionBody;

use crate::OutboxError;

/// A decision as delivered and served: the decision event's body plus its `seq` in the log.
#[derive(Debug, Serialize)]
pub struct WireDecision<'a> {
    #[serde(flatten)]
    body: &'a DecisionBody,
    seq: u64,
}

/// The JSON served and delivered for the decision event stored at `seq` (its decoded body).
pub fn stored_decision_json(body: &[u8], seq: u64) -> Result<String, OutboxError> {
    let body: DecisionBody =
        serde_json::from_slice(body).map_err(|source| OutboxError::NotADecision { seq, source })?;
    Ok(serde_json::to_string(&WireDecision { body: &body, seq })?)
}
