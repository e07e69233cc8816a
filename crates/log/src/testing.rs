//! Helpers for tests of this crate and of the crates above it (feature `test-support`, which
//! only dev-dependencies turn on).

use std::path::{Path, PathBuf};

use crate::{SqliteLog, StoreError};

fn io(what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

/// Leaves in `into` what a process killed in the middle of a write through a rollback journal
/// (a `verdict replay` writing its projections) leaves behind: copies of the log's file and of
/// its hot journal, taken while a transaction that spills pages into the file is open. The
/// write goes to a `scratch` table this creates in `log`, and is rolled back in `log` itself
/// afterwards. Returns the copied database file's path. `log` must be the only connection to
/// its file (a rollback journal needs it).
pub fn copy_mid_write(log: &mut SqliteLog, into: &Path) -> Result<PathBuf, StoreError> {
    let path = PathBuf::from(
        log.connection()
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| StoreError::Io("the log has no file".into()))?,
    );
    let name = path
        .file_name()
        .ok_or_else(|| StoreError::Io("the log's path names no file".into()))?
        .to_os_string();
    let mut journal_name = name.clone();
    journal_name.push("-journal");
    let journal = path.with_file_name(&journal_name);
    log.connection_mut().execute_batch(
        "CREATE TABLE scratch (x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO scratch SELECT randomblob(1000) FROM n;",
    )?;
    if !log.try_rollback_journal()? {
        return Err(StoreError::Io("another connection holds the log".into()));
    }
    let conn = log.connection_mut();
    // A tiny cache: the update below spills its pages into the file before it commits.
    conn.pragma_update(None, "cache_size", 2)?;
    let tx = conn.transaction()?;
    tx.execute("UPDATE scratch SET x = randomblob(1000)", [])?;
    if !journal.exists() {
        return Err(StoreError::Io("the write has no rollback journal".into()));
    }
    std::fs::create_dir_all(into).map_err(|e| io("creating the copy's directory", &e))?;
    let copy = into.join(&name);
    std::fs::copy(&path, &copy).map_err(|e| io("copying the log", &e))?;
    std::fs::copy(&journal, into.join(&journal_name)).map_err(|e| io("copying the journal", &e))?;
    drop(tx);
    Ok(copy)
}

/// SQLite's plan of `sql` with `params` bound: its lines (`EXPLAIN QUERY PLAN`'s detail
/// column) joined with `; `. Panics on a statement that does not prepare (test code).
#[allow(clippy::unwrap_used)]
pub fn query_plan(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> String {
    let lines: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    lines.join("; ")
}
