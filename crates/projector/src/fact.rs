//! From a log entry to the fact the fold applies. Pure and total: anything that cannot be read
//! becomes [`Fact::Quarantined`], never an error.

use serde::{Deserialize, Serialize};

use crate::seon::{self, Details, Envelope};

/// A log entry as the projector sees it (decoupled from the log crate's types).
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    /// Position in the log.
    pub seq: u64,
    /// Source name (`verdict` for internal events).
    pub source: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Unix ms, when committed.
    pub recorded_at: i64,
    /// Unix ms, the sender's event time.
    pub vendor_time: Option<i64>,
    /// The raw body.
    pub body: &'a [u8],
}

/// The `source` of verdict's own events.
pub const INTERNAL_SOURCE: &str = "verdict";
/// The type of an analyst override recorded through verdict.
pub const ANALYST_OVERRIDE: &str = "analyst:override";
/// The type of a decision event.
pub const DECISION: &str = "decision";

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionSource {
    /// The active policy.
    Policy,
    /// An analyst's override.
    Analyst,
    /// A manual status change at the vendor.
    Vendor,
}

impl DecisionSource {
    /// `policy`, `analyst` or `vendor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Analyst => "analyst",
            Self::Vendor => "vendor",
        }
    }
}

/// The policy that made a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `[policy] name`.
    pub name: String,
    /// `[policy] version`.
    pub version: String,
    /// SHA-256 of the policy text (recorded in the log by `policy:activated`).
    pub sha256: String,
}

/// The body of a `decision` event: the decision object of the contract, without `seq` (its
/// place in the log, known once stored). A persisted shape: fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionBody {
    /// UUIDv7.
    pub decision_id: String,
    /// The session.
    pub session_id: String,
    /// The customer's reference.
    pub reference_id: Option<String>,
    /// The customer's user id.
    pub user_id: Option<String>,
    /// approve, decline or review.
    pub action: Action,
    /// policy, analyst or vendor.
    pub source: DecisionSource,
    /// Matched rule ids, in policy order (policy decisions).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Their reasons (or the analyst's reason, or the vendor's status).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The policy, for policy decisions.
    pub policy: Option<PolicyRef>,
    /// The analyst or the vendor's actor.
    pub actor: Option<String>,
    /// RFC 3339.
    pub decided_at: String,
    /// The entry that caused it.
    pub trigger_seq: u64,
}

/// An action: the policy's, an analyst's or the vendor's (one type for all, the rules').
pub use verdict_rules::Action;

/// The body of an `analyst:override` event (a persisted shape: fields are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideBody {
    /// The session.
    pub session_id: String,
    /// Who (the token's name, or `--actor`).
    pub actor: String,
    /// What.
    pub action: Action,
    /// Why (never empty).
    pub reason: String,
    /// A ticket reference, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// What one entry means for the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A vendor event about a session: `idv:session_finished` or a status update.
    Vendor {
        /// Which kind.
        kind: VendorKind,
        /// The session and the ids the event carries.
        session_id: String,
        /// The customer's reference, when present.
        reference_id: Option<String>,
        /// The customer's user id, when present.
        user_id: Option<String>,
        /// The vendor status the event reports.
        status: Option<String>,
        /// Who made a manual change (status updates).
        actor: Option<String>,
    },
    /// An analyst override recorded through verdict.
    Override(OverrideBody),
    /// A decision recorded by verdict.
    Decision(DecisionBody),
    /// An event verdict does not act on but that belongs to a session (decisions...).
    Noted {
        /// The session.
        session_id: String,
    },
    /// Kept in the log, not understood: an unknown event type or an unparseable body.
    Quarantined {
        /// The session, when one could be found in the body.
        session_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// Not about any session (policy activations, pings that were stored...).
    Other,
}

/// The two vendor event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorKind {
    /// `idv:session_finished`.
    Finished,
    /// `idv:session_status_updated`.
    StatusUpdated,
}

/// Reads the fact of an entry.
pub fn read(r: &Recorded<'_>) -> Fact {
    if r.source == INTERNAL_SOURCE {
        return read_internal(r);
    }
    let kind = match r.event_type {
        seon::SESSION_FINISHED => VendorKind::Finished,
        seon::SESSION_STATUS_UPDATED => VendorKind::StatusUpdated,
        other => {
            return Fact::Quarantined {
                session_id: find_session_id(r.body),
                reason: format!("unknown event type {other:?}"),
            };
        }
    };
    let parsed = serde_json::from_slice::<Envelope>(r.body)
        .map(|env| env.details)
        .map_err(|e| e.to_string());
    match parsed {
        Ok(Details {
            session_id: Some(session_id),
            reference_id,
            user_id,
            status,
            updated_by,
            ..
        }) if !session_id.is_empty() => Fact::Vendor {
            kind,
            session_id,
            reference_id,
            user_id,
            status,
            actor: updated_by,
        },
        Ok(_) => Fact::Quarantined {
            session_id: None,
            reason: "details.sessionId is missing".into(),
        },
        Err(e) => Fact::Quarantined {
            session_id: find_session_id(r.body),
            reason: format!("unparseable {} body: {e}", r.event_type),
        },
    }
}

fn read_internal(r: &Recorded<'_>) -> Fact {
    if r.event_type == ANALYST_OVERRIDE {
        return match serde_json::from_slice::<OverrideBody>(r.body) {
            Ok(o) => Fact::Override(o),
            Err(e) => Fact::Quarantined {
                session_id: find_session_id(r.body),
                reason: format!("unparseable override: {e}"),
            },
        };
    }
    if r.event_type == DECISION {
        return match serde_json::from_slice::<DecisionBody>(r.body) {
            Ok(d) => Fact::Decision(d),
            Err(e) => Fact::Quarantined {
                session_id: find_session_id(r.body),
                reason: format!("unparseable decision: {e}"),
            },
        };
    }
    match find_session_id(r.body) {
        Some(session_id) => Fact::Noted { session_id },
        None => Fact::Other,
    }
}

/// Best effort: `details.sessionId` or a top-level `session_id` in any JSON body.
pub fn find_session_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        details: Option<ProbeDetails>,
        #[serde(default)]
        session_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct ProbeDetails {
        #[serde(default, rename = "sessionId")]
        session_id: Option<String>,
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    p.details
        .and_then(|d| d.session_id)
        .or(p.session_id)
        .filter(|s| !s.is_empty())
}
