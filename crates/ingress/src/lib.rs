//! Webhook ingress: signature verification and the `POST /webhooks/{source}` handler.
//!
//! Only this crate (and the binary) knows HTTP. A delivery is verified over its raw bytes
//! ([`signature::Verifier`]), its envelope is read for the event type and time
//! ([`envelope::Envelope`]), and it is handed to an [`Appender`] (the log writer in production,
//! a no-op in the ceiling benchmark). The 200 is sent only once the appender reports the entry
//! durable; a retried delivery is answered `duplicate` with the original seq.
//!
//! ```no_run
//! # fn demo(writer: verdict_log::LogWriter) -> Result<(), verdict_ingress::signature::SetupError> {
//! use verdict_ingress::{Ingress, Source, signature::{Scheme, Verifier}};
//! let seon = Verifier::new(Scheme::Seon, Some("X-Seon-Signature"), &["secret"], 300)?;
//! let ingress = Ingress::new(vec![Source::new("seon-idv", seon)], 1 << 20, writer);
//! let app: axum::Router = verdict_ingress::router(ingress);
//! # Ok(()) }
//! ```

pub mod envelope;
mod handler;
pub mod signature;

pub use handler::{
    Appender, ClientAddr, Ingress, NullAppender, Observer, Outcome, Source, is_timeout,
    json_response, router,
};
