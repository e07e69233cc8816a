//! What the projector folds between writes ([`Unflushed`]): sessions, links, quarantined
//! entries; decisions appended as they are made; the batch written through the store.

use std::collections::HashMap;

use verdict_log::Committed;

use verdict_projector::{
    Action, DecisionBody, DecisionSource, Fact, Recorded, Session, fact_session, read,
};

use crate::decide::{Decider, decide, decision_event};
use crate::error::{ProjectionError, Result};
use crate::rows::{BATCH, FLUSH_EVERY};
use crate::store::{Batch, Links, ProjectionStore, Quarantined};

/// What the projector has folded but not yet written: sessions, links, quarantined entries,
/// the newest seq folded, and the decision appends submitted to the writer and not yet known to
/// be durable. The runner folds batches into it as they are committed and writes it (one
/// transaction, the checkpoint included) every [`FLUSH_EVERY`] or [`BATCH`] entries; decisions
/// do not wait for that write (they are appended, with their outbox rows, as they are made).
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    pub(crate) touched: HashMap<String, Session>,
    pub(crate) links: Links,
    pub(crate) quarantined: Quarantined,
    /// The newest seq folded (0: nothing yet).
    pub(crate) cp: u64,
    pub(crate) entries: usize,
    pub(crate) since: Option<std::time::Instant>,
    /// Decision appends in flight: each with its decisions' (id, action, source).
    pub(crate) appends: Vec<(verdict_log::PendingAppend, Vec<Submitted>)>,
    /// Rules that failed to evaluate, counted once this batch is written (a batch folded
    /// again after a failed write must not count twice).
    pub(crate) rule_errors: Vec<String>,
}

impl Unflushed {
    /// Whether nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Folds `entries` (in seq order; those at or below `checkpoint` and the newest folded are
    /// skipped) and submits the decisions they call for.
    pub(crate) fn fold<'a>(
        &mut self,
        store: &impl ProjectionStore,
        checkpoint: u64,
        entries: impl IntoIterator<Item = Recorded<'a>>,
        decider: Option<&Decider>,
    ) -> Result<()> {
        let start = self.cp.max(checkpoint);
        let mut decisions: Vec<DecisionBody> = Vec::new();
        for r in entries.into_iter().filter(|r| r.seq > start) {
            let fact = read(&r);
            if let Fact::Quarantined { session_id, reason } = &fact {
                self.quarantined
                    .push((r.seq, session_id.clone(), reason.clone()));
            }
            if let Some(id) = fact_session(&fact) {
                self.links.push((id.to_owned(), r.seq));
                if !self.touched.contains_key(id) {
                    let s = store.load_session(id)?.unwrap_or_else(|| Session::new(id));
                    self.touched.insert(id.to_owned(), s);
                }
                if let Some(s) = self.touched.get_mut(id) {
                    let change = s.apply(&r, &fact);
                    let errors = &mut self.rule_errors;
                    if let Some(d) =
                        decider.and_then(|dc| decide(s, &r, change, &dc.policy.load(), errors))
                    {
                        // Current at once, so a later entry compares against it; its seq is set
                        // when the append is durable, and again when its entry is folded.
                        s.decision = Some(Box::new((d.clone(), 0)));
                        decisions.push(d);
                    }
                }
            }
            self.cp = r.seq;
            self.entries += 1;
            self.since.get_or_insert_with(std::time::Instant::now);
        }
        if let (Some(dc), false) = (decider, decisions.is_empty()) {
            let events = decisions
                .iter()
                .map(|d| decision_event(d, &dc.sinks))
                .collect::<Result<Vec<_>>>()?;
            let pending = dc
                .writer
                .submit_blocking(events)
                .map_err(ProjectionError::Append)?;
            let ids = decisions
                .into_iter()
                .map(|d| (d.decision_id, d.action, d.source))
                .collect();
            self.appends.push((pending, ids));
        }
        Ok(())
    }

    /// Whether it is time to write.
    pub(crate) fn due(&self) -> bool {
        self.entries >= BATCH || self.since.is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
    }

    /// Waits for the submitted decisions to be durable (setting their seqs in the sessions),
    /// then writes everything and the checkpoint in one transaction. Returns the checkpoint.
    /// On an error nothing is written: the caller drops this and folds again from the stored
    /// checkpoint (decisions are deduplicated by their trigger).
    pub(crate) fn flush(&mut self, store: &mut impl ProjectionStore) -> Result<u64> {
        let mut seqs: HashMap<String, u64> = HashMap::new();
        for (pending, ids) in self.appends.drain(..) {
            let appended = pending.wait_blocking().map_err(ProjectionError::Append)?;
            for (a, (id, action, source)) in appended.iter().zip(ids) {
                // A duplicate is a decision already recorded by an earlier fold of this batch.
                if !a.is_duplicate() {
                    seqs.insert(id, a.seq());
                    metrics::counter!(crate::metrics::DECISIONS, "action" => action.as_str(), "source" => source.as_str())
                        .increment(1);
                }
            }
        }
        for s in self.touched.values_mut() {
            if let Some((d, seq)) = s.decision.as_deref_mut()
                && *seq == 0
                && let Some(n) = seqs.get(&d.decision_id)
            {
                *seq = *n;
            }
        }
        store.write_batch(&Batch {
            sessions: self.touched.values().collect(),
            links: &self.links,
            quarantined: &self.quarantined,
            checkpoint: self.cp,
        })?;
        if !self.quarantined.is_empty() {
            metrics::counter!(crate::metrics::QUARANTINED).increment(self.quarantined.len() as u64);
        }
        for rule in &self.rule_errors {
            metrics::counter!(crate::metrics::RULE_ERRORS, "rule" => rule.clone()).increment(1);
        }
        let cp = self.cp;
        *self = Self::default();
        Ok(cp)
    }
}

/// A decision submitted for appending: its id, action and source.
pub(crate) type Submitted = (String, Action, DecisionSource);

/// The projector's view of an entry the writer handed over.
pub(crate) fn committed_recorded(c: &Committed) -> Recorded<'_> {
    Recorded {
        seq: c.seq,
        source: &c.source,
        event_type: &c.event_type,
        recorded_at: c.recorded_at,
        vendor_time: c.vendor_time,
        body: &c.body,
    }
}
