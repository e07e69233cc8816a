/// Why a request could not be served. Handlers answer it as a 500 (logged with the error);
/// nothing in it is shown to the client.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The projections could not be read.
    #[error(transparent)]
    Projections(#[from] verdict_projections::ProjectionError),
    /// The outbox could not be read.
    #[error(transparent)]
    Outbox(#[from] verdict_outbox::OutboxError),
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] verdict_log::StoreError),
    /// A database read failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A read on the blocking pool did not finish.
    #[error("a blocking read did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Anything else the server could not do (no randomness, a poisoned lock...).
    #[error("{0}")]
    Internal(String),
}

/// A result with [`WebError`].
pub type Result<T, E = WebError> = std::result::Result<T, E>;
