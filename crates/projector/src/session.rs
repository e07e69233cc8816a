//! Per-session state and the fold.

use serde::{Deserialize, Serialize};

use crate::fact::{Action, DecisionBody, DecisionSource, Fact, OverrideBody, Recorded, VendorKind};
use crate::seon::is_terminal;

/// Where a vendor event stands in the "which is newest" order: the sender's event time, then
/// terminal statuses before `REVIEW`, then the log's seq. The largest key is the newest.
/// Stored as a `[vendor_time, terminal, seq]` array (a third of the object's size, in every
/// session row); read from either the array or an object with those keys (rows written before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "(i64, u8, u64)")]
pub struct OrderKey {
    /// Unix ms of the sender's event time (`i64::MIN` when the event has none).
    pub vendor_time: i64,
    /// A terminal status (`APPROVED`, `DECLINED`, `ABANDONED`); stored as 1 or 0. A `bool`,
    /// not a `u8`: its spare values let `Option<OrderKey>` take no more room than the key, and
    /// a session holds four (a replay holds every session in memory).
    #[serde(deserialize_with = "terminal_flag")]
    pub terminal: bool,
    /// The entry's seq.
    pub seq: u64,
}

impl From<OrderKey> for (i64, u8, u64) {
    fn from(k: OrderKey) -> Self {
        (k.vendor_time, u8::from(k.terminal), k.seq)
    }
}

impl OrderKey {
    fn of(r: &Recorded<'_>, status: Option<&str>) -> Self {
        Self {
            vendor_time: r.vendor_time.unwrap_or(i64::MIN),
            terminal: status.is_some_and(is_terminal),
            seq: r.seq,
        }
    }
}

/// The latest analyst override of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedOverride {
    /// The override event's seq.
    pub seq: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: Action,
    /// Why.
    pub reason: String,
    /// Ticket reference.
    pub ticket: Option<String>,
    /// Unix ms when recorded.
    pub recorded_at: i64,
}

/// The state of one session, folded from its events. Persisted as JSON in the projection
/// table (a compatibility promise: fields are only added, with defaults; an absent field reads
/// as its default, so `None`s and a zero `quarantined` are not written; a change that older
/// versions could not read raises the schema version, as migration 0005 did). The fields the
/// table keeps as columns (`session_id`, `vendor_status`, `updated_at`) are not in the JSON:
/// whoever reads a row fills them from its columns (rows written before, which have them in
/// the JSON too, read the same).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    /// SEON's session id (a column of the stored row).
    #[serde(skip)]
    pub session_id: String,
    /// The customer's reference (from the newest vendor event that carries one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// The customer's user id (likewise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The status of the newest vendor event (see [`OrderKey`]); a column of the stored row.
    #[serde(skip)]
    pub vendor_status: Option<String>,
    /// The key of the event that set `vendor_status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_key: Option<OrderKey>,
    /// The key of the event that set the ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids_key: Option<OrderKey>,
    /// The newest `idv:session_finished`: its key (its seq locates the `details` for rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<OrderKey>,
    /// The newest vendor status update: its key and who made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_update: Option<OrderKey>,
    /// Who made the newest vendor status update, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_update_actor: Option<String>,
    /// The latest analyst override (by seq: analysts act in recorded order). Boxed, like
    /// `decision`: most sessions have none, and a projection holds many sessions in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_override: Option<Box<AppliedOverride>>,
    /// The current decision (the newest decision event, by seq) and its seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<(DecisionBody, u64)>>,
    /// Entries applied to this session (vendor events, overrides, quarantined, notes).
    pub event_count: u32,
    /// Quarantined entries that name this session.
    #[serde(skip_serializing_if = "is_zero")]
    pub quarantined: u32,
    /// Unix ms of the newest entry applied (a column of the stored row).
    #[serde(skip)]
    pub updated_at: i64,
    /// The newest seq applied; an entry at or below it is a no-op.
    pub last_seq: u64,
}

/// What changed in a session when an entry was applied (for the stages that react to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The entry was applied (false: already applied, or not about this session).
    pub applied: bool,
    /// `vendor_status` changed.
    pub vendor_status: bool,
    /// The newest `idv:session_finished` changed.
    pub finished: bool,
    /// The newest vendor status update changed.
    pub status_update: bool,
    /// An override was applied.
    pub overridden: bool,
    /// A decision event was applied.
    pub decided: bool,
}

impl Session {
    /// An empty session with this id.
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            ..Self::default()
        }
    }

    /// Applies one entry's fact. Synchronous, infallible, no I/O. An entry whose seq is not
    /// newer than `last_seq` changes nothing (re-applying is safe); an entry about another
    /// session changes nothing.
    pub fn apply(&mut self, r: &Recorded<'_>, fact: &Fact) -> Change {
        let mut change = Change::default();
        if r.seq <= self.last_seq || fact_session(fact) != Some(self.session_id.as_str()) {
            return change;
        }
        change.applied = true;
        self.last_seq = r.seq;
        self.event_count = self.event_count.saturating_add(1);
        self.updated_at = self.updated_at.max(r.recorded_at);
        match fact {
            Fact::Vendor {
                kind,
                reference_id,
                user_id,
                status,
                actor,
                ..
            } => {
                let key = OrderKey::of(r, status.as_deref());
                if (reference_id.is_some() || user_id.is_some())
                    && self.ids_key.is_none_or(|k| key > k)
                {
                    self.ids_key = Some(key);
                    if reference_id.is_some() {
                        self.reference_id.clone_from(reference_id);
                    }
                    if user_id.is_some() {
                        self.user_id.clone_from(user_id);
                    }
                }
                // A re-delivery of the event already reflected (same time, same status: a
                // replay under a new Request-Id) moves nothing forward: it decides nothing.
                let status_differs = *status != self.vendor_status;
                let moves_on = |k: OrderKey| {
                    k.vendor_time < key.vendor_time
                        || (!k.terminal && key.terminal)
                        || status_differs
                };
                if status.is_some() && self.vendor_key.is_none_or(|k| key > k) {
                    change.vendor_status = self.vendor_status != *status;
                    self.vendor_key = Some(key);
                    self.vendor_status.clone_from(status);
                }
                match kind {
                    VendorKind::Finished if self.finished.is_none_or(|k| key > k) => {
                        change.finished = self.finished.is_none_or(moves_on);
                        self.finished = Some(key);
                    }
                    VendorKind::StatusUpdated if self.status_update.is_none_or(|k| key > k) => {
                        change.status_update = self.status_update.is_none_or(moves_on);
                        self.status_update = Some(key);
                        self.status_update_actor.clone_from(actor);
                    }
                    _ => {}
                }
            }
            Fact::Override(OverrideBody {
                actor,
                action,
                reason,
                ticket,
                ..
            }) => {
                self.last_override = Some(Box::new(AppliedOverride {
                    seq: r.seq,
                    actor: actor.clone(),
                    action: *action,
                    reason: reason.clone(),
                    ticket: ticket.clone(),
                    recorded_at: r.recorded_at,
                }));
                change.overridden = true;
            }
            Fact::Decision(d) => {
                self.decision = Some(Box::new((d.clone(), r.seq)));
                change.decided = true;
            }
            Fact::Quarantined { .. } => self.quarantined = self.quarantined.saturating_add(1),
            Fact::Noted { .. } | Fact::Other => {}
        }
        change
    }

    /// The state without log positions: equal for the same events in any delivery order.
    pub fn view(&self) -> SessionView<'_> {
        SessionView {
            session_id: &self.session_id,
            reference_id: self.reference_id.as_deref(),
            user_id: self.user_id.as_deref(),
            vendor_status: self.vendor_status.as_deref(),
            newest_vendor_time: self.vendor_key.map(|k| k.vendor_time),
            finished_vendor_time: self.finished.map(|k| k.vendor_time),
            last_override: self
                .last_override
                .as_ref()
                .map(|o| (o.actor.as_str(), o.action, o.reason.as_str())),
            decision: self.decision.as_deref().map(|(d, _)| (d.action, d.source)),
            event_count: u64::from(self.event_count),
            quarantined: u64::from(self.quarantined),
        }
    }
}

/// The delivery-order-independent part of a [`Session`], which the digest covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView<'a> {
    /// Id.
    pub session_id: &'a str,
    /// Reference.
    pub reference_id: Option<&'a str>,
    /// User.
    pub user_id: Option<&'a str>,
    /// Vendor status.
    pub vendor_status: Option<&'a str>,
    /// Event time of the event that set the status.
    pub newest_vendor_time: Option<i64>,
    /// Event time of the newest finished event.
    pub finished_vendor_time: Option<i64>,
    /// The latest override.
    pub last_override: Option<(&'a str, Action, &'a str)>,
    /// The current decision's action and source.
    pub decision: Option<(Action, DecisionSource)>,
    /// Entries.
    pub event_count: u64,
    /// Quarantined entries.
    pub quarantined: u64,
}

/// The session a fact is about, taken out of it (no copy), if any: see [`fact_session`].
pub fn into_fact_session(fact: Fact) -> Option<String> {
    match fact {
        Fact::Vendor { session_id, .. } | Fact::Noted { session_id } => Some(session_id),
        Fact::Override(o) => Some(o.session_id),
        Fact::Decision(d) => Some(d.session_id),
        Fact::Quarantined { session_id, .. } => session_id,
        Fact::Other => None,
    }
}

/// The session a fact is about, if any.
pub fn fact_session(fact: &Fact) -> Option<&str> {
    match fact {
        Fact::Vendor { session_id, .. } | Fact::Noted { session_id } => Some(session_id),
        Fact::Override(o) => Some(&o.session_id),
        Fact::Decision(d) => Some(&d.session_id),
        Fact::Quarantined { session_id, .. } => session_id.as_deref(),
        Fact::Other => None,
    }
}

/// Reads a stored `terminal`: 1 or 0 (any other number as 1), or a boolean.
fn terminal_flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Flag;
    impl serde::de::Visitor<'_> for Flag {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("1, 0 or a boolean")
        }
        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<bool, E> {
            Ok(b)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<bool, E> {
            Ok(n != 0)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<bool, E> {
            Ok(n != 0)
        }
    }
    d.deserialize_any(Flag)
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn key(seq: u64) -> OrderKey {
        OrderKey {
            vendor_time: 1_772_410_260_000,
            terminal: true,
            seq,
        }
    }

    #[test]
    fn a_stored_terminal_flag_reads_as_1_0_or_a_boolean() {
        let key = |text: &str| serde_json::from_str::<OrderKey>(text);
        assert!(key("[5, 1, 7]").unwrap().terminal);
        assert!(!key("[5, 0, 7]").unwrap().terminal);
        assert!(key("[5, true, 7]").unwrap().terminal);
        assert!(
            !key(r#"{"vendor_time": 5, "terminal": 0, "seq": 7}"#)
                .unwrap()
                .terminal
        );
        assert!(key(r#"[5, "yes", 7]"#).is_err());
        // Written as 1 or 0, as before the field was a bool.
        let written = OrderKey {
            vendor_time: 5,
            terminal: true,
            seq: 7,
        };
        assert_eq!(serde_json::to_string(&written).unwrap(), "[5,1,7]");
        assert_eq!(
            std::mem::size_of::<Option<OrderKey>>(),
            std::mem::size_of::<OrderKey>()
        );
    }

    #[test]
    fn stored_state_is_compact_and_rows_written_before_still_read() {
        let mut s = Session::new("gen-1");
        s.vendor_status = Some("APPROVED".into());
        s.vendor_key = Some(key(7));
        s.finished = Some(key(7));
        s.event_count = 1;
        s.last_seq = 7;
        s.updated_at = 1_795_661_635_365;
        // What the columns hold is filled from them by the reader of a row.
        let read = |json: &str| {
            let mut r = serde_json::from_str::<Session>(json).unwrap();
            r.session_id = "gen-1".into();
            r.vendor_status = Some("APPROVED".into());
            r.updated_at = 1_795_661_635_365;
            r
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"vendor_key":[1772410260000,1,7],"finished":[1772410260000,1,7],"event_count":1,"last_seq":7}"#
        );
        assert_eq!(read(&json), s);
        // The shape written before: the columns' values in the JSON too, order keys as
        // objects, quarantined always present.
        let before = r#"{"session_id":"gen-1","vendor_status":"APPROVED","vendor_key":{"vendor_time":1772410260000,"terminal":1,"seq":7},"finished":{"vendor_time":1772410260000,"terminal":1,"seq":7},"event_count":1,"quarantined":0,"updated_at":1795661635365,"last_seq":7}"#;
        assert_eq!(read(before), s);
        s.quarantined = 2;
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""quarantined":2"#), "{json}");
        assert_eq!(read(&json), s);
    }
}
