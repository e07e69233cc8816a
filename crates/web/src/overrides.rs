//! The one flow of an analyst's override over HTTP, shared by `POST /v1/sessions/{id}/override`
//! and the analyst page's form: validate, find the session (waiting for the projections to
//! catch up with what was acknowledged), append through the log writer. The validation and the
//! event are `verdict_projections`' (`validate_override`, `override_event`), which
//! `verdict override` uses as well.

use verdict_log::AppendError;
use verdict_projections as projections;
use verdict_projector::OverrideBody;

use crate::WebError;
pub use crate::context::Known;
use crate::context::{Api, known_session};

/// Why an override was not recorded; each caller answers it its own way.
#[derive(Debug)]
pub enum Refused {
    /// A bad action, an empty or too long reason (the message says which): 400.
    Invalid(String),
    /// No such session: 404.
    Unknown,
    /// The projections did not catch up in time: 503, retry.
    Behind,
    /// The log cannot be written: 503, retry.
    Unavailable,
    /// Anything else: 500.
    Failed(WebError),
}

impl From<WebError> for Refused {
    fn from(e: WebError) -> Self {
        Self::Failed(e)
    }
}

/// Where an override comes from, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /v1/sessions/{id}/override`.
    Api,
    /// The analyst page's form.
    Page,
}

/// Records an override of session `id` by `actor`: the seq it was appended at and its body.
pub async fn record(
    api: &Api,
    via: Via,
    id: &str,
    actor: &str,
    action: &str,
    reason: &str,
    ticket: Option<String>,
) -> Result<(u64, OverrideBody), Refused> {
    let body = projections::validate_override(id, actor, action, reason, ticket)
        .map_err(Refused::Invalid)?;
    match known_session(api, id).await? {
        Known::Yes => {}
        Known::No => return Err(Refused::Unknown),
        Known::Behind => return Err(Refused::Behind),
    }
    let event = projections::override_event(&body).map_err(WebError::from)?;
    let seq = match api.writer.append(event).await {
        Ok(a) => a.seq(),
        Err(AppendError::Unavailable(_) | AppendError::Closed) => return Err(Refused::Unavailable),
    };
    match via {
        Via::Api => {
            tracing::info!(session = %id, actor = %actor, action = body.action.as_str(), seq, "override recorded");
        }
        Via::Page => {
            tracing::info!(session = %id, actor = %actor, action = body.action.as_str(), seq, "override recorded (UI)");
        }
    }
    Ok((seq, body))
}
