//! The log against a real SQLite file in a temp directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rusqlite::Connection;
use verdict_log::{
    Appended, EventStore, LogWriter, NewEvent, SqliteLog, StoreError, WriterConfig, verify,
};

type R = Result<(), Box<dyn std::error::Error>>;

fn ev(key: &str, body: &str) -> NewEvent {
    let mut e = NewEvent::new(
        "seon-idv",
        "idv:session_finished",
        key,
        body.as_bytes().to_vec(),
    );
    e.vendor_time = Some(1_700_000_000_000);
    e.headers.insert("request-id".into(), key.into());
    e
}

#[test]
fn appends_chain_and_dedupe_within_and_across_batches() -> R {
    let dir = tempfile::tempdir()?;
    let mut log = SqliteLog::open(dir.path().join("v.db"))?;
    let (a, b, a2) = (ev("a", "{}"), ev("b", "{\"x\":1}"), ev("a", "{}"));
    let out = log.append_batch(&[&a, &b, &a2])?;
    assert!(matches!(out[0], Appended::New { seq: 1, .. }));
    assert!(matches!(out[1], Appended::New { seq: 2, .. }));
    assert_eq!(out[2], Appended::Duplicate { seq: 1 });
    let out = log.append_batch(&[&a2, &ev("c", "[]")])?;
    assert_eq!(out[0], Appended::Duplicate { seq: 1 });
    assert_eq!(out[1].seq(), 3);
    assert_eq!(log.repeats(1)?, 2);
    assert_eq!(log.repeats(2)?, 0);
    let entries = log.read_after(0, 10)?;
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[1].body, b"{\"x\":1}");
    assert_eq!(
        entries[0].headers().get("request-id").map(String::as_str),
        Some("a")
    );
    let report = verify(&log)?;
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.entries, 3);
    Ok(())
}

#[test]
fn triggers_reject_update_and_delete() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    log.append_batch(&[&ev("a", "{}")])?;
    let conn = Connection::open(&path)?;
    let upd = conn.execute("UPDATE events SET body = x'00' WHERE seq = 1", []);
    assert!(upd.is_err_and(|e| e.to_string().contains("append-only")));
    let del = conn.execute("DELETE FROM events WHERE seq = 1", []);
    assert!(del.is_err_and(|e| e.to_string().contains("append-only")));
    Ok(())
}

#[test]
fn verify_names_the_first_tampered_seq() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    for i in 0..5 {
        log.append_batch(&[&ev(&format!("k{i}"), &format!("{{\"i\":{i}}}"))])?;
    }
    let conn = Connection::open(&path)?;
    conn.execute_batch(
        "DROP TRIGGER events_no_update;
         UPDATE events SET dedupe_key = 'forged' WHERE seq = 3;",
    )?;
    let report = verify(&log)?;
    assert_eq!(report.first_bad_seq(), Some(3));
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.what.contains("events_no_update"))
    );

    // A body swapped together with its hash is caught by the chain, not only the body check.
    conn.execute_batch("UPDATE events SET body = x'7b7d', body_sha256 = (SELECT body_sha256 FROM events WHERE seq = 1) WHERE seq = 2;")?;
    assert_eq!(verify(&log)?.first_bad_seq(), Some(2));
    Ok(())
}

#[test]
fn verify_catches_a_deleted_row() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    for i in 0..4 {
        log.append_batch(&[&ev(&format!("k{i}"), "{}")])?;
    }
    Connection::open(&path)?
        .execute_batch("DROP TRIGGER events_no_delete; DELETE FROM events WHERE seq = 2;")?;
    assert_eq!(verify(&log)?.first_bad_seq(), Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_group_commits_concurrent_appends_gaplessly() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let config = WriterConfig {
        on_batch: Some(Arc::new(move |s| {
            if let Ok(mut v) = seen.lock() {
                v.push(s.events);
            }
        })),
        ..WriterConfig::default()
    };
    let writer = LogWriter::open(&path, config)?;
    let mut committed = writer.subscribe();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            w.append(ev(&format!("k{i}"), "{}")).await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await??.seq());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    committed.wait_for(|s| *s == 300).await?;
    let batches = batches.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(batches.iter().sum::<usize>(), 300);
    assert!(batches.len() < 300, "no batching happened: {batches:?}");
    writer.close().await;
    assert!(matches!(
        writer.append(ev("late", "{}")).await,
        Err(verdict_log::AppendError::Closed)
    ));
    let log = SqliteLog::open(&path)?;
    assert!(verify(&log)?.is_intact());
    Ok(())
}

#[test]
fn two_connections_appending_keep_one_chain() -> R {
    // A second process (for example `verdict override` beside `verdict serve`) appends through
    // its own connection: the head is read inside the write transaction, so the chain holds.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    SqliteLog::open(&path)?;
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || -> Result<(), StoreError> {
                let mut log = SqliteLog::open(&path)?;
                for i in 0..50 {
                    log.append_batch(&[&ev(&format!("t{t}-{i}"), "{}")])?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "thread panicked")??;
    }
    let log = SqliteLog::open_read_only(&path)?;
    let report = verify(&log)?;
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.entries, 100);
    Ok(())
}

#[test]
fn reopening_keeps_everything() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    {
        let mut log = SqliteLog::open(&path)?;
        log.append_batch(&[&ev("a", "{}"), &ev("b", "{}")])?;
    }
    let mut log = SqliteLog::open(&path)?;
    assert_eq!(log.head()?.map(|h| h.seq), Some(2));
    assert_eq!(
        log.append_batch(&[&ev("a", "{}")])?[0],
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(log.find("seon-idv", "b")?, Some(2));
    Ok(())
}

#[test]
fn large_bodies_are_compressed_and_read_back_byte_exact() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    let body = include_str!("../../../fixtures/seon/session_finished_approved.json");
    log.append_batch(&[&ev("big", body), &ev("small", "{}")])?;
    let conn = Connection::open(&path)?;
    let (stored_len, encoding): (i64, i64) = conn.query_row(
        "SELECT length(body), body_encoding FROM events WHERE seq = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    assert_eq!(encoding, 1);
    assert!(stored_len < body.len() as i64 / 2, "{stored_len}");
    assert_eq!(log.get(1)?.map(|e| e.body), Some(body.as_bytes().to_vec()));
    assert_eq!(log.get(2)?.map(|e| e.body), Some(b"{}".to_vec()));

    // A stored body that no longer decodes is reported at its seq, and the rest still checked.
    conn.execute_batch(
        "DROP TRIGGER events_no_update; UPDATE events SET body = x'ffffffff00' WHERE seq = 1;",
    )?;
    let report = verify(&log)?;
    assert_eq!(report.first_bad_seq(), Some(1));
    assert_eq!(report.entries, 2);
    assert_eq!(
        report.problems.iter().filter(|p| p.seq.is_some()).count(),
        1,
        "only the broken row: {:?}",
        report.problems
    );
    Ok(())
}

#[test]
fn outbox_rows_are_written_with_a_new_event_only() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    let with_outbox = |key: &str| {
        let mut e = NewEvent::new("verdict", "decision", key, b"{}".to_vec());
        e.outbox = Some(verdict_log::OutboxEntries {
            targets: vec!["backend".into(), "audit".into()],
            key: "sess-1".into(),
            id: format!("id-{key}"),
        });
        e
    };
    let out = log.append_batch(&[&with_outbox("d1"), &ev("x", "{}"), &with_outbox("d1")])?;
    assert_eq!(out[2], Appended::Duplicate { seq: 1 });
    let conn = Connection::open(&path)?;
    let rows: Vec<(String, i64, String, String, String)> = conn
        .prepare("SELECT sink, seq, session_id, decision_id, state FROM outbox ORDER BY sink")?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        rows,
        [
            (
                "audit".into(),
                1,
                "sess-1".into(),
                "id-d1".into(),
                "pending".into()
            ),
            (
                "backend".into(),
                1,
                "sess-1".into(),
                "id-d1".into(),
                "pending".into()
            ),
        ]
    );
    Ok(())
}

fn journal_mode(conn: &Connection) -> String {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_rollback_journal_only_when_alone_and_wal_again_after() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    log.append_batch(&[&ev("a", "{}")])?;

    // Another connection has the file open (and has read it): refused at once, still WAL.
    let other = SqliteLog::open(&path)?;
    assert_eq!(other.head()?.map(|h| h.seq), Some(1));
    let asked = std::time::Instant::now();
    assert!(!log.try_rollback_journal()?);
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(2),
        "it waited"
    );
    assert_eq!(journal_mode(log.connection()), "wal");
    log.append_batch(&[&ev("b", "{}")])?;
    assert_eq!(other.head()?.map(|h| h.seq), Some(2));
    drop(other);

    // Alone: switched; appends still chain; back to WAL after.
    assert!(log.try_rollback_journal()?);
    assert_eq!(journal_mode(log.connection()), "delete");
    log.append_batch(&[&ev("c", "{}")])?;
    log.use_wal()?;
    assert_eq!(journal_mode(log.connection()), "wal");
    let fresh = Connection::open(&path)?;
    assert_eq!(journal_mode(&fresh), "wal");
    drop(fresh);

    // Left in rollback mode (a crash between the two), the next open brings WAL back.
    assert!(log.try_rollback_journal()?);
    drop(log);
    let log = SqliteLog::open(&path)?;
    assert_eq!(journal_mode(log.connection()), "wal");
    assert_eq!(log.head()?.map(|h| h.seq), Some(3));
    assert!(verify(&log)?.is_intact(), "chain intact");
    Ok(())
}

#[test]
fn a_read_only_open_names_a_write_left_unfinished() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    log.append_batch(&[&ev("a", "{}")])?;
    // A write in progress through a rollback journal, its pages already spilling into the
    // file: copied as it stands, the copy is what a process killed at that moment leaves.
    let copied = verdict_log::testing::copy_mid_write(&mut log, &dir.path().join("killed"))?;
    assert!(dir.path().join("killed/v.db-journal").exists());

    let refused = SqliteLog::open_read_only(&copied)
        .err()
        .ok_or("the read-only open succeeded")?;
    assert!(matches!(refused, StoreError::Unfinished), "{refused}");
    assert!(refused.to_string().contains("verdict replay"), "{refused}");
    // A read-write open rolls it back; read-only opens work again, the chain intact.
    drop(SqliteLog::open(&copied)?);
    let reopened = SqliteLog::open_read_only(&copied)?;
    assert!(verify(&reopened)?.is_intact());
    assert_eq!(reopened.head()?.map(|h| h.seq), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_watch_is_at_an_answered_seq_already() -> R {
    let dir = tempfile::tempdir()?;
    let writer = LogWriter::open(dir.path().join("v.db"), WriterConfig::default())?;
    let head = writer.subscribe();
    for i in 0..500 {
        let seq = writer.append(ev(&format!("k-{i}"), "{}")).await?.seq();
        assert!(
            *head.borrow() >= seq,
            "answered {seq} before the head moved"
        );
    }
    writer.close().await;
    Ok(())
}

/// A body LZ4 cannot shrink (hex of a xorshift stream), about `len` bytes: one page each.
fn incompressible(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut hex = String::with_capacity(len);
    while hex.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        hex.push_str(&format!("{x:016x}"));
    }
    format!("{{\"pad\":\"{hex}\"}}")
}

fn big_batch(from: u64, n: u64) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| ev(&format!("k{i}"), &incompressible(i, 6000)))
        .collect()
}

/// Appends 8 one-page events after the `next` first ones.
fn append_big(log: &mut SqliteLog, next: &mut u64) -> R {
    let batch = big_batch(*next, 8);
    log.append_batch(&batch.iter().collect::<Vec<_>>())?;
    *next += 8;
    Ok(())
}

/// The chain is intact and holds `entries` entries.
fn assert_intact(log: &SqliteLog, entries: u64) -> R {
    let report = verify(log)?;
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.entries, entries);
    Ok(())
}

#[test]
fn deferred_checkpoints_leave_the_commit_and_run_in_the_upkeep() -> R {
    let dir = tempfile::tempdir()?;
    let mut log = SqliteLog::open(dir.path().join("v.db"))?;
    log.defer_checkpoints(64)?;
    // No commit checkpoints any more: without the upkeep, the WAL grows past the 1,000 pages
    // at which SQLite's own checkpoint would have run inside a commit.
    let mut next = 0;
    for _ in 0..400 {
        append_big(&mut log, &mut next)?;
        if log.wal_pages().unwrap_or(0) > 1100 {
            break;
        }
    }
    assert!(log.wal_pages().unwrap_or(0) > 1100, "{:?}", log.wal_pages());
    // The upkeep checkpoints it all; the next commit starts the WAL over.
    log.after_commit()?;
    append_big(&mut log, &mut next)?;
    assert!(
        log.wal_pages().unwrap_or(u32::MAX) < 32,
        "{:?}",
        log.wal_pages()
    );
    // With the upkeep after every commit, the WAL stays near its threshold.
    for _ in 0..30 {
        append_big(&mut log, &mut next)?;
        assert!(
            log.wal_pages().unwrap_or(u32::MAX) < 64 + 32,
            "{:?}",
            log.wal_pages()
        );
        log.after_commit()?;
    }
    assert_intact(&log, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_checkpoints_after_answering() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let checkpoints = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&checkpoints);
    let config = WriterConfig {
        on_upkeep: Some(Arc::new(move |_| {
            counted.fetch_add(1, Relaxed);
        })),
        ..WriterConfig::default()
    };
    let writer = LogWriter::open(&path, config)?;
    // Well past the checkpoint size: pages of 8 KiB, one body each.
    let pages = u64::from(verdict_log::WRITER_CHECKPOINT_PAGES);
    let mut next = 0;
    while next < pages * 3 / 2 {
        writer.append_all(big_batch(next, 16)).await?;
        next += 16;
    }
    // The WAL file keeps the largest size it reached: about the checkpoint size, not all
    // that was appended (the writer checkpointed, and the WAL started over). Read before the
    // writer closes, as the last connection to close removes the file.
    let wal = std::fs::metadata(dir.path().join("v.db-wal"))?.len();
    writer.close().await;
    assert!(checkpoints.load(Relaxed) >= 1);
    let frame = 8192 + 24;
    assert!(
        wal < (pages + 100) * frame,
        "WAL of {} frames for {next} one-page appends",
        wal / frame
    );
    let log = SqliteLog::open(&path)?;
    assert_intact(&log, next)
}

/// The SQLite log with the upkeep a test chooses.
struct Upkeep<F>(SqliteLog, F);

impl<F: FnMut() -> Result<bool, StoreError> + Send> EventStore for Upkeep<F> {
    fn append_batch(&mut self, events: &[&NewEvent]) -> Result<Vec<Appended>, StoreError> {
        self.0.append_batch(events)
    }
    fn head(&self) -> Result<Option<verdict_log::Head>, StoreError> {
        self.0.head()
    }
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<verdict_log::Entry>, StoreError> {
        self.0.read_after(after, limit)
    }
    fn get(&self, seq: u64) -> Result<Option<verdict_log::Entry>, StoreError> {
        self.0.get(seq)
    }
    fn find(&self, source: &str, dedupe_key: &str) -> Result<Option<u64>, StoreError> {
        self.0.find(source, dedupe_key)
    }
    fn repeats(&self, seq: u64) -> Result<u64, StoreError> {
        self.0.repeats(seq)
    }
    fn probe(&mut self) -> Result<(), StoreError> {
        self.0.probe()
    }
    fn after_commit(&mut self) -> Result<bool, StoreError> {
        (self.1)()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upkeep_loses_no_append() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&tries);
    let store = Upkeep(SqliteLog::open(&path)?, move || {
        counted.fetch_add(1, Relaxed);
        Err(StoreError::Io("no space left on device".into()))
    });
    let writer = LogWriter::spawn(store, WriterConfig::default())?;
    for i in 0..20 {
        let a = writer.append(ev(&format!("k{i}"), "{}")).await?;
        assert_eq!(a.seq(), i + 1);
    }
    assert!(writer.is_healthy());
    writer.close().await;
    assert!(tries.load(Relaxed) >= 20);
    let log = SqliteLog::open(&path)?;
    assert_intact(&log, 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_answered_before_the_upkeep_runs() -> R {
    let dir = tempfile::tempdir()?;
    let (release, held) = std::sync::mpsc::channel::<()>();
    // The upkeep waits until the test lets it go: had the writer run it before answering, the
    // append below would never be answered while it waits.
    let store = Upkeep(SqliteLog::open(dir.path().join("v.db"))?, move || {
        let _ = held.recv();
        Ok(true)
    });
    let writer = LogWriter::spawn(store, WriterConfig::default())?;
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        writer.append(ev("a", "{}")),
    )
    .await;
    release.send(())?;
    assert_eq!(answered??.seq(), 1);
    writer.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_upkeep_that_did_work_is_reported() -> R {
    let dir = tempfile::tempdir()?;
    let (ran, reported) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, seen) = (Arc::clone(&ran), Arc::clone(&reported));
    // Work to do every other time.
    let store = Upkeep(SqliteLog::open(dir.path().join("v.db"))?, move || {
        Ok(r.fetch_add(1, Relaxed) % 2 == 0)
    });
    let config = WriterConfig {
        on_upkeep: Some(Arc::new(move |_| {
            seen.fetch_add(1, Relaxed);
        })),
        ..WriterConfig::default()
    };
    let writer = LogWriter::spawn(store, config)?;
    for i in 0..10 {
        writer.append(ev(&format!("k{i}"), "{}")).await?;
    }
    writer.close().await; // after the last batch's upkeep
    assert_eq!(ran.load(Relaxed), 10);
    assert_eq!(reported.load(Relaxed), 5);
    Ok(())
}

/// A `seon` delivery stored under its `Request-Id` (before migration 0007) is a duplicate when
/// it comes again keyed by its body, whatever `Request-Id` it carries; a different body is not.
#[test]
fn a_delivery_stored_under_its_request_id_is_a_duplicate_when_keyed_by_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open(dir.path().join("v.db")).unwrap();
    let old = NewEvent::new(
        "seon-idv",
        "idv:session_finished",
        "request-id:r-1",
        "{\"a\":1}",
    );
    let stored = log.append_batch(&[&old]).unwrap()[0].seq();
    let retry = |body: &str, legacy: bool| {
        let mut e = NewEvent::new(
            "seon-idv",
            "idv:session_finished",
            format!(
                "body-sha256:{}",
                hex::encode(verdict_log::sha256(body.as_bytes()))
            ),
            body.to_owned(),
        );
        e.legacy_request_id_dedupe = legacy;
        e
    };
    let again = log.append_batch(&[&retry("{\"a\":1}", true)]).unwrap();
    assert_eq!(again[0], Appended::Duplicate { seq: stored });
    // Another source's entry with the same body is not this delivery.
    let mut other = retry("{\"a\":1}", true);
    other.source = "other".into();
    assert!(!log.append_batch(&[&other]).unwrap()[0].is_duplicate());
    // Without the flag (other schemes) the old key is not looked at.
    assert!(!log.append_batch(&[&retry("{\"a\":1}", false)]).unwrap()[0].is_duplicate());
    assert!(!log.append_batch(&[&retry("{\"a\":2}", true)]).unwrap()[0].is_duplicate());
}

/// `verify` checks the guards' SQL, not only their names: a trigger replaced by one of the
/// same name that lets updates through, or a dropped dedupe index, is reported.
#[test]
fn verify_reports_a_replaced_trigger_and_a_dropped_dedupe_index() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v.db");
    let mut log = SqliteLog::open(&path)?;
    log.append_batch(&[&ev("a", "{}")])?;
    assert!(verify(&log)?.is_intact());
    let conn = Connection::open(&path)?;
    conn.execute_batch(
        "DROP TRIGGER events_no_update;
         CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN 0
         BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed'); END;
         DROP INDEX events_dedupe;",
    )?;
    let report = verify(&SqliteLog::open_read_only(&path)?)?;
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("events_no_update is not the shipped one")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("dedupe index events_dedupe is missing")),
        "{problems:?}"
    );
    Ok(())
}
