/// Why reading or writing the projections failed. The live runner logs it and tries again
/// (the checkpoint did not move, so nothing is skipped); `verdict replay` and the read routes
/// report it (exit 1, a 500).
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] verdict_log::StoreError),
    /// The projection tables could not be read or written.
    #[error("projections database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A decision could not be appended to the log.
    #[error("appending decisions: {0}")]
    Append(verdict_log::AppendError),
    /// A stored session's state does not read (or a session does not serialise).
    #[error("session {session}: stored state: {source}")]
    State {
        /// The session.
        session: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A session could not be serialised for storing.
    #[error("serializing session {session}: {source}")]
    Serialize {
        /// The session.
        session: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A JSON document could not be written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A thread of `verdict replay` ended without its result.
    #[error("the replay's {0} thread stopped unexpectedly")]
    Thread(&'static str),
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// The log has no file (an in-memory database).
    #[error("the log has no file path")]
    NoPath,
}

/// A result with [`ProjectionError`].
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
