//! SEON IDV payloads, parsed tolerantly: unknown fields are ignored, optional fields may be
//! missing, and the `details` object is also kept verbatim for the rules.

use serde::Deserialize;

/// `idv:session_finished`.
pub const SESSION_FINISHED: &str = "idv:session_finished";
/// `idv:session_status_updated` (a manual change at the vendor).
pub const SESSION_STATUS_UPDATED: &str = "idv:session_status_updated";

/// The envelope of a SEON webhook: `{"event": ..., "date": ..., "details": {...}}`, read in
/// one pass with only the fields the fold uses (the rules read `details` verbatim from the
/// stored body).
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// The event name.
    #[serde(default)]
    pub event: Option<String>,
    /// The details.
    pub details: Details,
}

/// The fields of `details` the fold uses; everything else stays in the verbatim object.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Details {
    /// SEON's session id.
    pub session_id: Option<String>,
    /// The customer's reference for the session.
    pub reference_id: Option<String>,
    /// The customer's user id.
    pub user_id: Option<String>,
    /// `APPROVED`, `DECLINED`, `ABANDONED`, `REVIEW`...
    pub status: Option<String>,
    /// Status updates: the status before the change.
    pub previous_status: Option<String>,
    /// Status updates: who changed it.
    pub updated_by: Option<String>,
    /// Status updates: why.
    pub reason: Option<String>,
    /// Status updates: when.
    pub updated_at: Option<String>,
    /// Finished sessions: whether SEON found duplicates.
    pub duplicates_found: Option<bool>,
}

/// Whether a vendor status ends a session (terminal statuses win ties against `REVIEW`).
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "APPROVED" | "DECLINED" | "ABANDONED")
}
