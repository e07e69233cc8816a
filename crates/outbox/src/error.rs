/// Why an outbox operation failed. The dispatcher logs the error and tries again later (a
/// delivery stays pending, so nothing is lost); `verdict deliveries` prints it (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The log (the decision's entry) could not be read.
    #[error(transparent)]
    Log(#[from] verdict_log::StoreError),
    /// The outbox tables could not be read or written.
    #[error("outbox database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The entry a delivery names is not a decision.
    #[error("seq {seq} is not a decision: {source}")]
    NotADecision {
        /// The entry.
        seq: u64,
        /// Why it does not read as one.
        source: serde_json::Error,
    },
    /// The entry a delivery names is not in the log.
    #[error("decision seq {seq} is not in the log")]
    MissingDecision {
        /// The entry.
        seq: u64,
    },
    /// A JSON document could not be written.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A thread or runtime of the dispatcher could not be started.
    #[error("starting {what}: {source}")]
    Start {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// `deliveries retry` of a delivery already delivered.
    #[error(
        "delivery {id} was delivered already; sending it again could put an old decision after a newer one"
    )]
    AlreadyDelivered {
        /// The delivery.
        id: i64,
    },
    /// `deliveries retry` of a delivery whose session has had a newer decision delivered.
    #[error(
        "delivery {id}: a newer decision of its session (seq {seq}) was delivered to this sink; sending this one now would overwrite it"
    )]
    NewerDelivered {
        /// The delivery.
        id: i64,
        /// The newer decision's seq.
        seq: i64,
    },
}
