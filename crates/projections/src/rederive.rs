//! `verdict replay`'s check of every recorded decision: each is derived again from the log
//! alone, with the policy recorded (`policy:activated`) at that point, and compared.
//!
//! The replay's scan hands this, in log order, the policies activated, what each applied entry
//! calls for ([`crate::Call`]) and the decisions recorded. It runs on its own thread
//! (the policy evaluations overlap the fold) and mirrors the live projector: a decision is
//! expected only when its action or source differs from the session's current one, and after a
//! recorded decision the session's current one is the recorded one (so one difference does not
//! cascade).

use std::collections::HashMap;
use std::sync::Arc;

use verdict_projector::{Action, DecisionBody, DecisionSource};
use verdict_rules::Policy;

use crate::decide::{Derived, policy_decision};

/// What the scan sends, in log order.
#[derive(Debug)]
pub enum Msg {
    /// A `policy:activated` entry.
    Activated {
        /// Its seq.
        seq: u64,
        /// The policy text.
        text: String,
    },
    /// An applied entry calls for a decision that needs no policy.
    Fixed {
        /// The entry.
        seq: u64,
        /// Its session.
        session_id: String,
        /// The decision.
        derived: Derived,
    },
    /// An applied entry calls for the policy's decision.
    Policy {
        /// The entry.
        seq: u64,
        /// Its session.
        session_id: String,
        /// The entry's body.
        body: Vec<u8>,
        /// The session's state after the entry (`session_json`).
        session: serde_json::Value,
    },
    /// A recorded decision.
    Recorded {
        /// Its seq.
        seq: u64,
        /// The decision.
        decision: Box<DecisionBody>,
    },
}

/// The outcome of the check.
#[derive(Debug, Default)]
pub struct Report {
    /// Recorded decisions compared.
    pub checked: u64,
    /// How many differ.
    pub differ: u64,
    /// The first differences, described.
    pub examples: Vec<String>,
    /// Decisions the log calls for that were never recorded, after the last recorded one
    /// (the projector had not reached them) are not counted here; before it, they differ.
    pub missing: u64,
}

impl Report {
    fn differs(&mut self, what: String) {
        self.differ += 1;
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

#[derive(Debug)]
struct Expected {
    session_id: String,
    /// The decision expected (with the policy in force by log order), if it changes anything.
    /// Boxed, as `alt`: most entries of the map hold one or neither, and a `Derived` inline is
    /// ~200 bytes in every bucket.
    main: Option<Box<Derived>>,
    /// Shortly after a reload, the decision of the policy before it (the live projector may
    /// still have used it for a moment while the new one was being recorded).
    alt: Option<Box<Derived>>,
}

/// How many entries after an activation the previous policy is also tried.
const RELOAD_WINDOW: u64 = 10_000;

/// The scan's end of the check's channels: batches of messages go one way, emptied batches
/// come back for reuse, so the folding thread does not fault in fresh pages for each batch.
#[derive(Debug)]
pub struct Sender {
    full: std::sync::mpsc::SyncSender<Vec<Msg>>,
    empty: std::sync::mpsc::Receiver<Vec<Msg>>,
}

/// The check's end of the channels; see [`Sender`].
#[derive(Debug)]
pub struct Receiver {
    full: std::sync::mpsc::Receiver<Vec<Msg>>,
    empty: std::sync::mpsc::Sender<Vec<Msg>>,
}

/// Messages handed over at once.
pub const BATCH: usize = 256;

/// The channels between the scan and [`run`].
pub fn channel() -> (Sender, Receiver) {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel(16);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel();
    (
        Sender {
            full: full_tx,
            empty: empty_rx,
        },
        Receiver {
            full: full_rx,
            empty: empty_tx,
        },
    )
}

impl Sender {
    /// An empty batch with room for [`BATCH`] messages (one handed back, if any).
    pub fn batch(&self) -> Vec<Msg> {
        self.empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH))
    }

    /// Hands `batch` to the check, leaving an empty one in its place (once the check has
    /// stopped, the batch is dropped: the replay goes on without it).
    pub fn send(&self, batch: &mut Vec<Msg>) {
        let next = self.batch();
        let _ = self.full.send(std::mem::replace(batch, next));
    }
}

/// Runs the check over the messages until the channel closes.
pub fn run(rx: &Receiver) -> Report {
    let mut check = Check::default();
    for mut batch in &rx.full {
        for msg in batch.drain(..) {
            check.handle(msg);
        }
        // Handed back for reuse; once the scan has finished, nobody takes it.
        let _ = rx.empty.send(batch);
    }
    check.finish()
}

/// The check's state while messages arrive in log order.
#[derive(Default)]
struct Check {
    report: Report,
    in_force: Option<Arc<Policy>>,
    previous: Option<Arc<Policy>>,
    activated_at: u64,
    /// Each session's current decision (action, source), as the live projector would see it.
    current: HashMap<String, (Action, DecisionSource)>,
    /// Decisions expected, by the seq of the entry that calls for them.
    expected: HashMap<u64, Expected>,
    last_recorded_trigger: u64,
}

impl Check {
    fn is_current(&self, id: &str, d: &Derived) -> bool {
        self.current.get(id) == Some(&(d.action, d.source))
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Activated { seq, text } => match Policy::parse(&text) {
                Ok(p) => {
                    let p = Arc::new(p);
                    self.previous = self.in_force.replace(p);
                    self.activated_at = seq;
                }
                Err(_) => self.report.differs(format!(
                    "seq {seq}: the recorded policy text does not compile with this verdict"
                )),
            },
            Msg::Fixed {
                seq,
                session_id,
                derived,
            } => {
                if !self.is_current(&session_id, &derived) {
                    self.current
                        .insert(session_id.clone(), (derived.action, derived.source));
                    self.expected.insert(
                        seq,
                        Expected {
                            session_id,
                            main: Some(Box::new(derived)),
                            alt: None,
                        },
                    );
                }
            }
            Msg::Policy {
                seq,
                session_id,
                body,
                session,
            } => {
                let Some(policy) = &self.in_force else { return };
                let derived = policy_decision(policy, &body, session.clone());
                let main = (!self.is_current(&session_id, &derived)).then_some(derived);
                if let Some(m) = &main {
                    self.current
                        .insert(session_id.clone(), (m.action, m.source));
                }
                let alt = self
                    .previous
                    .as_ref()
                    .filter(|_| seq.saturating_sub(self.activated_at) <= RELOAD_WINDOW)
                    .map(|old| policy_decision(old, &body, session));
                if main.is_some() || alt.is_some() {
                    self.expected.insert(
                        seq,
                        Expected {
                            session_id,
                            main: main.map(Box::new),
                            alt: alt.map(Box::new),
                        },
                    );
                }
            }
            Msg::Recorded { seq, decision } => self.recorded(seq, &decision),
        }
    }

    fn recorded(&mut self, seq: u64, d: &DecisionBody) {
        self.report.checked += 1;
        self.last_recorded_trigger = self.last_recorded_trigger.max(d.trigger_seq);
        self.current
            .insert(d.session_id.clone(), (d.action, d.source));
        let Some(exp) = self.expected.remove(&d.trigger_seq) else {
            self.report.differs(format!(
                "seq {seq} (session {}): {} by {} for entry {}, which calls for no decision when derived again",
                d.session_id,
                d.action.as_str(),
                d.source.as_str(),
                d.trigger_seq
            ));
            return;
        };
        let sha = d.policy.as_ref().map(|p| p.sha256.as_str());
        let matching =
            exp.main.iter().chain(exp.alt.iter()).find(|c| {
                c.source == d.source && c.policy.as_ref().map(|p| p.sha256.as_str()) == sha
            });
        match matching {
            Some(c) if c.action == d.action && c.rules == d.rules => {}
            Some(c) => self.report.differs(format!(
                "seq {seq} (session {}): recorded {} {:?}, derived again {} {:?}",
                exp.session_id,
                d.action.as_str(),
                d.rules,
                c.action.as_str(),
                c.rules
            )),
            None => self.report.differs(format!(
                "seq {seq} (session {}): recorded by {}{}, which was not in force at entry {}",
                exp.session_id,
                d.source.as_str(),
                sha.map(|s| format!(" (policy {s})")).unwrap_or_default(),
                d.trigger_seq
            )),
        }
    }

    /// The report, once every message is in.
    fn finish(mut self) -> Report {
        // Expected before the last recorded decision, yet never recorded: a difference too.
        let last = self.last_recorded_trigger;
        self.report.missing = self
            .expected
            .iter()
            .filter(|(t, e)| **t < last && e.main.is_some())
            .count() as u64;
        self.report.differ += self.report.missing;
        self.report
    }
}
