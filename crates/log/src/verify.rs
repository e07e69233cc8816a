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

/// The objects that guard the table, as shipped in `migrations/0001_log.sql` (whitespace
/// collapsed): the append-only triggers and the dedupe index. A trigger of the same name with
/// other SQL (one that allows an update, say) is as bad as a missing one.
const GUARDS: [(&str, &str, &str); 3] = [
    (
        "trigger",
        "events_no_delete",
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, \
         'events is append-only: DELETE is not allowed'); END",
    ),
    (
        "trigger",
        "events_no_update",
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, \
         'events is append-only: UPDATE is not allowed'); END",
    ),
    (
        "index",
        "events_dedupe",
        "CREATE UNIQUE INDEX events_dedupe ON events (source, dedupe_key)",
    ),
];

/// SQL text with every run of whitespace made one space, and none at the ends or before a
/// closing parenthesis or after an opening one.
fn normalise(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(")
        .replace(" )", ")")
        .replace(" ;", ";")
}

/// The problems with the table's guards: each shipped one present with its shipped SQL, and
/// no other trigger on the table (one could rewrite or hide what is appended).
fn check_guards(found: &[(String, String, String)]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (kind, name, sql) in GUARDS {
        match found.iter().find(|(k, n, _)| k == kind && n == name) {
            None => problems.push(Problem {
                seq: None,
                what: format!("{} {name} is missing", guard_label(kind)),
            }),
            Some((_, _, have)) if normalise(have) != normalise(sql) => problems.push(Problem {
                seq: None,
                what: format!(
                    "{} {name} is not the shipped one: {}",
                    guard_label(kind),
                    normalise(have)
                ),
            }),
            Some(_) => {}
        }
    }
    for (kind, name, sql) in found {
        if kind == "trigger" && !GUARDS.iter().any(|(_, n, _)| n == name) {
            problems.push(Problem {
                seq: None,
                what: format!("unexpected trigger {name} on events: {}", normalise(sql)),
            });
        }
    }
    problems
}

fn guard_label(kind: &str) -> &'static str {
    if kind == "index" {
        "the unique dedupe index"
    } else {
        "append-only trigger"
    }
}

/// Stops collecting after this many problems (one broken row often breaks the rest).
const MAX_PROBLEMS: usize = 100;

/// Checks the whole log: seqs start at 1 and have no gaps, each `prev_hash` is the previous
/// entry's `hash`, each `hash` matches the entry's fields, each body matches its `body_sha256`,
/// and the append-only triggers and the dedupe index are in place as shipped. Streams the table; memory stays flat.
pub fn verify(log: &SqliteLog) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    report.problems.extend(check_guards(&log.guards()?));
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

#[cfg(test)]
mod tests {
    use super::*;

    type Found = Vec<(String, String, String)>;

    fn shipped() -> Found {
        GUARDS
            .iter()
            .map(|(k, n, s)| ((*k).to_owned(), (*n).to_owned(), (*s).to_owned()))
            .collect()
    }

    /// The expected SQL is the migration's, statement for statement.
    #[test]
    fn the_guards_are_the_migrations_sql() {
        let migration = normalise(include_str!("../../../migrations/0001_log.sql"));
        for (_, _, sql) in GUARDS {
            assert!(migration.contains(&normalise(sql)), "{sql}");
        }
    }

    #[test]
    fn a_changed_missing_or_extra_guard_is_a_problem() {
        assert!(check_guards(&shipped()).is_empty());
        let check = |edit: &dyn Fn(&mut Found), want: &str| {
            let mut found = shipped();
            edit(&mut found);
            let problems = check_guards(&found);
            assert!(
                problems.iter().any(|p| p.what.contains(want)),
                "{want}: {problems:?}"
            );
        };
        check(
            &|f| {
                f[1].2 = "CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN 0 BEGIN SELECT 1; END".into();
            },
            "append-only trigger events_no_update is not the shipped one",
        );
        check(
            &|f| {
                f.remove(0);
            },
            "append-only trigger events_no_delete is missing",
        );
        check(
            &|f| {
                f.remove(2);
            },
            "the unique dedupe index events_dedupe is missing",
        );
        check(
            &|f| f[2].2 = "CREATE INDEX events_dedupe ON events (source, dedupe_key)".into(),
            "the unique dedupe index events_dedupe is not the shipped one",
        );
        check(
            &|f| {
                f.push((
                    "trigger".into(),
                    "sneaky".into(),
                    "CREATE TRIGGER sneaky AFTER INSERT ON events BEGIN SELECT 1; END".into(),
                ));
            },
            "unexpected trigger sneaky",
        );
    }
}
