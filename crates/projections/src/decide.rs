//! What a folded entry calls for, and the decision the active policy makes for it.

use verdict_log::{NewEvent, Uuid, rfc3339_ms};
use verdict_projector::fact::{DECISION, INTERNAL_SOURCE};

use verdict_projector::{
    Action, Change, DecisionBody, DecisionSource, PolicyRef, Recorded, Session,
};

use crate::error::Result;
use crate::read::session_json;

/// Decides while the projector folds: the active policy and where decision events go.
#[derive(Debug, Clone)]
pub struct Decider {
    /// The active policy (swapped atomically on reload).
    pub policy: std::sync::Arc<arc_swap::ArcSwap<verdict_rules::Policy>>,
    /// Where decisions are appended.
    pub writer: verdict_log::LogWriter,
    /// The sinks each decision is delivered to (its outbox rows).
    pub sinks: Vec<String>,
}

/// What an applied entry calls for: an override an analyst decision; the newest vendor event,
/// when it is a status update, a vendor decision, and when it is an `idv:session_finished`, the
/// policy's decision on its `details`. Older events call for nothing. Whether a decision is
/// recorded then depends on the session's current one (only a change of action or source is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A decision that needs no policy (analyst, vendor).
    Fixed(Derived),
    /// The policy decides on the entry's `details`.
    Policy,
}

/// See [`Call`].
pub fn call_for(s: &Session, seq: u64, change: Change) -> Option<Call> {
    let newest_vendor = s.vendor_key.is_some_and(|k| k.seq == seq);
    if change.overridden {
        let o = s.last_override.as_ref()?;
        return Some(Call::Fixed(Derived {
            action: o.action,
            source: DecisionSource::Analyst,
            rules: Vec::new(),
            reasons: vec![o.reason.clone()],
            policy: None,
            actor: Some(o.actor.clone()),
            errors: Vec::new(),
        }));
    }
    if change.status_update && newest_vendor {
        let status = s.vendor_status.as_deref()?;
        let action = match status {
            "APPROVED" => Action::Approve,
            "DECLINED" => Action::Decline,
            _ => Action::Review,
        };
        return Some(Call::Fixed(Derived {
            action,
            source: DecisionSource::Vendor,
            rules: Vec::new(),
            reasons: vec![format!("Vendor status changed to {status}")],
            policy: None,
            actor: s.status_update_actor.clone(),
            errors: Vec::new(),
        }));
    }
    (change.finished && newest_vendor).then_some(Call::Policy)
}

/// The policy's decision on a finished event's body, for a session in state `session` (its
/// [`session_json`]).
pub fn policy_decision(
    policy: &verdict_rules::Policy,
    body: &[u8],
    session: serde_json::Value,
) -> Derived {
    let details = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("details").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    let d = policy.evaluate(&verdict_rules::Facts::new(details, session));
    Derived {
        action: d.action,
        source: DecisionSource::Policy,
        rules: d.rules,
        reasons: d.reasons,
        policy: Some(PolicyRef {
            name: policy.name.clone(),
            version: policy.version.clone(),
            sha256: policy.sha256.clone(),
        }),
        actor: None,
        errors: d.errors.into_iter().map(|e| (e.rule, e.error)).collect(),
    }
}

/// A decision as derived from the state, before it gets an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// approve, decline or review.
    pub action: Action,
    /// policy, analyst or vendor.
    pub source: DecisionSource,
    /// Matched rules.
    pub rules: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// The policy (policy decisions).
    pub policy: Option<PolicyRef>,
    /// The analyst or vendor actor.
    pub actor: Option<String>,
    /// Rules whose evaluation failed (rule id, error); they count as review matches.
    pub errors: Vec<(String, String)>,
}

/// The decision to record for an applied entry: [`decision_for`], unless the session's current
/// decision already has that action and source.
pub(crate) fn decide(
    s: &Session,
    e: &Recorded<'_>,
    change: Change,
    policy: &verdict_rules::Policy,
    rule_errors: &mut Vec<String>,
) -> Option<DecisionBody> {
    let d = match call_for(s, e.seq, change)? {
        Call::Fixed(d) => d,
        Call::Policy => {
            let d = policy_decision(policy, e.body, session_json(s));
            for (rule, error) in &d.errors {
                rule_errors.push(rule.clone());
                tracing::warn!(session = %s.session_id, rule = %rule, error = %error, "rule evaluation failed; counted as review");
            }
            d
        }
    };
    if s.decision
        .as_deref()
        .is_some_and(|(c, _)| c.action == d.action && c.source == d.source)
    {
        return None;
    }
    Some(DecisionBody {
        decision_id: Uuid::now_v7().to_string(),
        session_id: s.session_id.clone(),
        reference_id: s.reference_id.clone(),
        user_id: s.user_id.clone(),
        action: d.action,
        source: d.source,
        rules: d.rules,
        reasons: d.reasons,
        policy: d.policy,
        actor: d.actor,
        decided_at: rfc3339_ms(verdict_log::now_ms()),
        trigger_seq: e.seq,
    })
}

/// The log event of a decision; its dedupe key is the trigger, so a batch folded again after a
/// crash does not decide twice.
/// With `sinks`, its outbox rows are written in the same transaction (one per sink).
pub fn decision_event(d: &DecisionBody, sinks: &[String]) -> Result<NewEvent> {
    let mut event = NewEvent::new(
        INTERNAL_SOURCE,
        DECISION,
        format!("decision:{}", d.trigger_seq),
        serde_json::to_vec(d)?,
    );
    if !sinks.is_empty() {
        event.outbox = Some(verdict_log::OutboxEntries {
            targets: sinks.to_vec(),
            key: d.session_id.clone(),
            id: d.decision_id.clone(),
        });
    }
    Ok(event)
}
