use thiserror::Error;

/// A failure of the storage itself (the SQLite file), not of the caller's input.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite reported an error: disk full, read-only file, I/O error, corruption.
    /// Callers answer 503 and let the sender retry; nothing was committed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An operation outside SQLite failed (starting the writer thread). Callers stop.
    #[error("{0}")]
    Io(String),
    /// The database was written by a newer verdict (its `user_version` is beyond ours).
    /// Callers stop: running an old binary on a newer schema could corrupt it.
    #[error("database schema version {found} is newer than this verdict supports ({supported})")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A read-only open found a transaction that a killed process left unfinished (a hot
    /// rollback journal, as `verdict replay` killed while writing leaves): only a read-write
    /// open can roll it back. Callers stop and say so.
    #[error(
        "the log has an unfinished write (a rollback journal left by a process that was killed, such as `verdict replay`); a read-only command cannot roll it back: run `verdict replay` or start `verdict serve` once, then retry"
    )]
    Unfinished,
    /// A row holds a value that cannot be decoded (a hash of the wrong length, a bad UUID).
    /// [`crate::verify`] reports these as problems at their seq; readers surface them as 500s.
    #[error("corrupt row at seq {seq}: {what}")]
    Corrupt {
        /// The row.
        seq: u64,
        /// What is wrong with it.
        what: String,
    },
}

/// Why an append through the [`crate::LogWriter`] did not happen.
#[derive(Debug, Error, Clone)]
pub enum AppendError {
    /// The transaction failed (disk full, read-only, I/O error); nothing of the batch was
    /// written. Answer 503 with `Retry-After`; the sender retries.
    #[error("the log cannot be written: {0}")]
    Unavailable(String),
    /// The writer has stopped (shutdown in progress). Answer 503.
    #[error("the log writer is shut down")]
    Closed,
}
