//! The live runner: folds what the log writer commits, on its own thread.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::watch;
use verdict_log::{Committed, EventStore, SqliteLog};

use crate::decide::Decider;
use crate::error::Result;
use crate::rows::{BATCH, FLUSH_EVERY, recorded};
use crate::store::ProjectionStore;
use crate::write::{Unflushed, committed_recorded};

/// The entries the writer handed over ([`verdict_log::Tail`]) and not yet folded.
struct Handed {
    rx: Option<mpsc::Receiver<Vec<Committed>>>,
    held: VecDeque<Committed>,
}

impl Handed {
    /// The entries right after `from` (at most [`BATCH`], seqs following on from `from + 1`),
    /// if the writer handed them over; empty when it did not (they were appended by another
    /// process, or dropped while the projector lagged): the caller reads the store instead.
    fn take_after(&mut self, from: u64) -> Vec<Committed> {
        loop {
            // Entries folded already (read from the store meanwhile) are dropped first, so
            // they never take the room of the ones wanted.
            while self.held.front().is_some_and(|c| c.seq <= from) {
                self.held.pop_front();
            }
            // Bounded: while the projector lags, the channel fills and the writer drops batches.
            if self.held.len() >= BATCH {
                break;
            }
            match self.rx.as_ref().map(mpsc::Receiver::try_recv) {
                Some(Ok(batch)) => self.held.extend(batch),
                _ => break,
            }
        }
        let run = self
            .held
            .iter()
            .take(BATCH)
            .zip(from + 1..)
            .take_while(|(c, want)| c.seq == *want)
            .count();
        self.held.drain(..run).collect()
    }
}

/// The projector thread and its progress.
#[derive(Debug)]
pub struct Runner {
    /// The thread; it ends once the writer has stopped and everything committed is folded.
    pub thread: std::thread::JoinHandle<()>,
    /// The projector's checkpoint: the newest seq folded (and decided on), published after each
    /// batch's transaction.
    pub projected: watch::Receiver<u64>,
}

/// Tails the log from the projector's checkpoint, woken by the writer's commits (no polling),
/// until the writer stops. Runs on its own thread; a failed batch is folded again after a pause.
pub fn spawn_runner(
    path: PathBuf,
    mut committed: watch::Receiver<u64>,
    tail: Option<mpsc::Receiver<Vec<Committed>>>,
    handle: tokio::runtime::Handle,
    decider: Option<Decider>,
) -> std::io::Result<Runner> {
    let mut tail = Handed {
        rx: tail,
        held: VecDeque::new(),
    };
    let (progress, projected) = watch::channel(0u64);
    let thread = std::thread::Builder::new()
        .name("verdict-projector".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            let mut log = loop {
                match SqliteLog::open(&path) {
                    Ok(log) => break log,
                    Err(e) => {
                        tracing::error!(error = %e, "projector cannot open the log; retrying");
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            // Projections are derived state, checkpointed in the same transaction: they commit
            // without an fsync of their own (WAL keeps them atomic; a transaction lost to a
            // power cut is folded again).
            if let Err(e) = log
                .connection()
                .pragma_update(None, "synchronous", "NORMAL")

            {
                tracing::warn!(error = %e, "projector: cannot set up its connection");
            }
            let mut stored = loop {
                match ProjectionStore::checkpoint(&log) {
                    Ok(cp) => break cp,
                    Err(e) => {
                        tracing::error!(error = %e, "projector cannot read its checkpoint; retrying");
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                    }
                }
            };
            progress.send_replace(stored);
            let mut unflushed = Unflushed::default();
            loop {
                let head = *committed.borrow_and_update();
                let from = stored.max(unflushed.cp);
                let step = (|| -> Result<bool> {
                    if from < head {
                        let handed = tail.take_after(from);
                        if handed.is_empty() {
                            let entries = log.read_after(from, BATCH)?;
                            let entries = entries.iter().map(recorded);
                            unflushed.fold(&log, stored, entries, decider.as_ref())?;
                        } else {
                            let entries = handed.iter().map(committed_recorded);
                            unflushed.fold(&log, stored, entries, decider.as_ref())?;
                        }
                    }
                    if !unflushed.is_empty() && (from >= head || unflushed.due()) {
                        let caught_up = from >= head;
                        if caught_up && !unflushed.due() {
                            return Ok(false); // wait a little for more before writing
                        }
                        stored = unflushed.flush(&mut log)?;
                        progress.send_replace(stored);
                    }
                    Ok(from < head)
                })();
                match step {
                    Ok(true) => backoff = Duration::from_millis(100),
                    Ok(false) => {
                        // Caught up: wait for the next commit, but not past the flush deadline.
                        let wait = unflushed
                            .since
                            .map(|t| FLUSH_EVERY.saturating_sub(t.elapsed()));
                        let changed = match wait {
                            Some(w) => handle
                                .block_on(async {
                                    tokio::time::timeout(w, committed.changed()).await
                                })
                                .unwrap_or(Ok(())),
                            None => handle.block_on(committed.changed()),
                        };
                        if changed.is_err() {
                            // The writer has stopped: write what is folded, then end.
                            if !unflushed.is_empty() {
                                match unflushed.flush(&mut log) {
                                    Ok(cp) => {
                                        progress.send_replace(cp);
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "projector: last write failed; it is folded again at the next start");
                                    }
                                }
                            }
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "projector batch failed; folding again");
                        unflushed = Unflushed::default();
                        stored = ProjectionStore::checkpoint(&log).unwrap_or(stored);
                        std::thread::sleep(backoff); // a plain thread: no timer of the runtime here
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })?;
    Ok(Runner { thread, projected })
}

#[cfg(test)]
mod tests {

    use std::collections::VecDeque;

    use std::sync::mpsc;

    use verdict_log::Committed;

    use crate::rows::*;

    use super::*;

    fn committed(seq: u64) -> Committed {
        Committed {
            seq,
            source: "seon".into(),
            event_type: "idv:session_finished".into(),
            recorded_at: 0,
            vendor_time: None,
            body: Default::default(),
        }
    }

    fn seqs(v: &[Committed]) -> Vec<u64> {
        v.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn handed_over_entries_are_used_only_where_they_follow_on() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        tx.send(vec![committed(3), committed(4)]).unwrap();
        tx.send(vec![committed(5)]).unwrap();
        // Already folded entries are dropped; the run after `from` is taken.
        assert_eq!(seqs(&handed.take_after(3)), [4, 5]);
        // Entry 6 came from another process (not handed over): 7 and 8 wait until the store
        // has been read past 6.
        tx.send(vec![committed(7), committed(8)]).unwrap();
        assert!(handed.take_after(5).is_empty());
        assert_eq!(seqs(&handed.take_after(6)), [7, 8]);
        // Reading the store past what is held drops it.
        tx.send(vec![committed(9), committed(10)]).unwrap();
        assert!(handed.take_after(10).is_empty());
        assert!(handed.held.is_empty());
        // No channel: always the store.
        let mut none = Handed {
            rx: None,
            held: VecDeque::new(),
        };
        assert!(none.take_after(0).is_empty());
    }

    #[test]
    fn entries_read_from_the_store_meanwhile_do_not_block_the_hand_over() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        let batch = u64::try_from(BATCH).unwrap();
        // A full batch that does not follow on (1-4 came from elsewhere): the store is read.
        tx.send((5..5 + batch).map(committed).collect()).unwrap();
        assert!(handed.take_after(0).is_empty());
        // The store was read past all of it; the next batch follows on.
        tx.send(vec![committed(5 + batch), committed(6 + batch)])
            .unwrap();
        assert_eq!(seqs(&handed.take_after(4 + batch)), [5 + batch, 6 + batch]);
    }

    #[test]
    fn handed_over_entries_are_taken_at_most_a_batch_at_a_time() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut handed = Handed {
            rx: Some(rx),
            held: VecDeque::new(),
        };
        let n = u64::try_from(BATCH).unwrap() + 10;
        tx.send((1..=n).map(committed).collect()).unwrap();
        let first = handed.take_after(0);
        assert_eq!(first.len(), BATCH);
        assert_eq!(
            seqs(&handed.take_after(first.len() as u64)),
            (first.len() as u64 + 1..=n).collect::<Vec<_>>()
        );
    }
}
