//! verdict's HTTP surface: the accept loop that keeps slow clients from taking it down
//! ([`http::serve`]), HTTPS with certificate rotation ([`tls::CertStore`]), the `/v1` API
//! ([`api::router`]) and the analyst's pages ([`ui::router`]), behind bearer tokens with roles.
//!
//! Handlers hold no SQL: reads go through `verdict_projections`' queries (and the outbox's
//! decision JSON) on a pool of read-only connections ([`api::ReadPool`]), writes (overrides)
//! through the log writer. The webhook route is `verdict_ingress`'s; the binary merges the
//! routers and serves them.
//!
//! ```no_run
//! # async fn demo(api: verdict_web::api::Api, listener: tokio::net::TcpListener, limits: verdict_web::http::Limits) {
//! let app: axum::Router = axum::Router::new()
//!     .merge(verdict_web::api::router(api.clone()))
//!     .merge(verdict_web::ui::router(verdict_web::ui::Ui::new(api, false)));
//! verdict_web::http::serve(listener, None, app, limits, std::future::pending()).await;
//! # }
//! ```

pub mod api;
mod context;
mod error;
pub mod http;
pub mod metrics;
pub mod overrides;
pub mod throttle;
pub mod tls;
pub mod ui;

pub use error::{Result, WebError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and override.
    Analyst,
    /// Read only.
    Reader,
}
