use std::fmt;

use crate::{GENESIS, Hash, SqliteLog, StoreError, sha256};

/// One thing wrong with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first entry affected, when the problem is tied to one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "seq {seq}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// The hash of the last entry (the chain head), if any.
    pub head: Option<Hash>,
    /// Everything found wrong, in seq order; empty when the log is intact.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first bad seq, if any problem names one.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problems.iter().find_map(|p| p.seq)
    }
}

/// The triggers that keep the table append-only.
const TRIGGERS: [&str; 2] = ["events_no_delete", "events_no_update"];

/// Stops collecting after this many problems (one broken row often breaks the rest).
const MAX_PROBLEMS: usize = 100;

/// Checks the whole log: seqs start at 1 and have no gaps, each `prev_hash` is the previous
/// entry's `hash`, each `hash` matches the entry's fields, each body matches its `body_sha256`,
/// and the append-only triggers are in place. Streams the table; memory stays flat.
pub fn verify(log: &SqliteLog) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let triggers = log.triggers()?;
    for t in TRIGGERS {
        if !triggers.iter().any(|have| have == t) {
            report.problems.push(Problem {
                seq: None,
                what: format!("append-only trigger {t} is missing"),
            });
        }
    }
    let mut expected_seq = 1u64;
    let mut prev = GENESIS;
    log.for_each_row_after(0, |seq, stored_hash, row| {
        if report.problems.len() >= MAX_PROBLEMS {
            return Ok(());
        }
        let e = match row {
            Ok(e) => e,
            Err(err) => {
                report.problems.push(Problem {
                    seq: Some(seq),
                    what: format!("unreadable row: {err}"),
                });
                report.entries += 1;
                expected_seq = seq + 1;
                // Follow the chain through the stored hash, so the next row is judged on its own.
                if let Some(h) = stored_hash {
                    prev = h;
                }
                return Ok(());
            }
        };
        let mut bad = |what: String| {
            report.problems.push(Problem {
                seq: Some(e.seq),
                what,
            });
        };
        if e.seq != expected_seq {
            bad(format!("expected seq {expected_seq} (a gap or reordering)"));
        }
        if e.prev_hash != prev {
            bad("prev_hash does not match the previous entry's hash".into());
        }
        if e.expected_hash() != e.hash {
            bad("hash does not match the entry's contents".into());
        }
        if sha256(&e.body) != e.body_sha256 {
            bad("body does not match body_sha256".into());
        }
        report.entries += 1;
        expected_seq = e.seq + 1;
        prev = e.hash;
        report.head = Some(e.hash);
        Ok(())
    })?;
    Ok(report)
}
