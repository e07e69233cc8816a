//! `verdict serve`: the HTTP server, wired to the log writer.

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use verdict_ingress::Ingress;
use verdict_log::{LogWriter, WriterConfig};

use crate::UsageError;
use crate::config::Loaded;

#[derive(Debug, Clone)]
struct AppState {
    writer: LogWriter,
    policy_loaded: bool,
}

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(loaded: &Loaded) -> anyhow::Result<()> {
    let tls = loaded.tls().map_err(UsageError)?;
    let sources = loaded.sources().map_err(UsageError)?;
    // Resolved now so that a missing secret stops start-up (exit 2); used by later stages.
    let tokens: Vec<verdict_web::api::Token> = loaded
        .tokens()
        .map_err(UsageError)?
        .into_iter()
        .map(|(name, role, token)| verdict_web::api::Token::new(name, role, token.expose()))
        .collect();
    let sinks = loaded.sinks().map_err(UsageError)?;
    tracing::debug!(
        tokens = tokens.len(),
        sinks = sinks.len(),
        "credentials resolved"
    );
    // The policy must compile; without [policy] verdict still ingests, but is not ready.
    let policy = match loaded.policy_path().map_err(UsageError)? {
        Some(path) => match crate::policycmd::compile_file(path)? {
            Ok((policy, text)) => Some(crate::reload::ActivePolicy {
                policy,
                text,
                path: path.to_owned(),
            }),
            Err(rendered) => {
                return Err(UsageError(crate::config::ConfigError::usage(format!(
                    "the policy does not compile:\n{}",
                    rendered.join("\n")
                )))
                .into());
            }
        },
        None => None,
    };
    if let Some(crate::reload::ActivePolicy { policy: p, .. }) = &policy {
        tracing::info!(name = %p.name, version = %p.version, rules = p.rules.len(), sha256 = %p.sha256, "policy loaded");
    }
    let listeners = 1 + usize::from(loaded.admin_listen().is_some());
    raise_open_files(listeners * *loaded.config.server.max_connections.get_ref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verdict-worker")
        .build()
        .context("starting the async runtime")?;
    let metrics_handle = crate::metrics::install().context("installing the metrics recorder")?;
    runtime.block_on(serve(
        loaded,
        sources,
        tokens,
        sinks,
        policy,
        tls,
        metrics_handle,
    ))
}

/// Raises the soft limit on open files to the hard one (systemd and shells often start
/// services at 1,024, about `max_connections` alone: `accept` would then fail before the
/// connection cap sheds anything), and warns when it stays below what `needed` connections
/// and the database files take.
fn raise_open_files(needed: usize) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::debug!(error = %e, "could not raise the open-files limit");
            }
        }
        let have = getrlimit(Resource::Nofile).current;
        let want = u64::try_from(needed).unwrap_or(u64::MAX).saturating_add(64);
        if have.is_some_and(|h| h < want) {
            tracing::warn!(
                open_files = have,
                needed = want,
                "the open-files limit (ulimit -n) is below max_connections and verdict's own \
                 files: connections past it fail before the cap can shed (raise LimitNOFILE)"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = needed;
}

async fn serve(
    loaded: &Loaded,
    sources: Vec<verdict_ingress::Source>,
    tokens: Vec<verdict_web::api::Token>,
    sinks: Vec<verdict_outbox::Sink>,
    policy: Option<crate::reload::ActivePolicy>,
    tls: Option<std::sync::Arc<verdict_web::tls::CertStore>>,
    metrics_handle: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    handle_signals()?;
    // Set once SIGTERM/SIGINT arrives: ends long polls and the dispatcher.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let db = &loaded.config.storage.path;
    // Wakes the delivery dispatcher when a batch committed outbox rows (decisions for sinks).
    let outbox_wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let (writer, tail_rx) = open_writer(db, std::sync::Arc::clone(&outbox_wake))?;
    if let Some(active) = &policy {
        crate::reload::record_activation(&writer, active).await?;
    }
    spawn_recovery(writer.clone(), stop.clone());
    let state = AppState {
        writer: writer.clone(),
        policy_loaded: policy.is_some(),
    };
    let (decider, _policy_watcher) = start_decider(policy, &writer, &sinks)?;
    let decides = decider.is_some();
    let dispatcher = start_dispatcher(loaded, sinks, outbox_wake, stop.clone())?;
    let projector = verdict_projections::spawn_runner(
        db.clone(),
        writer.subscribe(),
        Some(tail_rx),
        tokio::runtime::Handle::current(),
        decider,
    )
    .context("starting the projector")?;
    let api = verdict_web::api::Api {
        reads: std::sync::Arc::new(verdict_web::api::ReadPool::new(db.clone())),
        writer: writer.clone(),
        tokens: std::sync::Arc::new(tokens),
        decides,
        projected: projector.projected.clone(),
        stop: stop.clone(),
        throttle: std::sync::Arc::default(),
    };
    let scrape = crate::metrics::Scrape {
        handle: metrics_handle,
        committed: writer.subscribe(),
        projected: projector.projected.clone(),
    };
    let routes = Routes::new(loaded, sources, &writer, state, api, scrape, tls.is_some());
    listen_and_serve(loaded, routes, tls, stop_tx, stop).await?;
    tracing::info!("HTTP stopped; committing queued appends");
    writer.close().await;
    // The writer is gone, so the projector's wait ends once it has caught up.
    let _ = tokio::task::spawn_blocking(move || projector.thread.join()).await;
    if let Some(d) = dispatcher {
        let _ = tokio::task::spawn_blocking(move || d.thread.join()).await;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// SIGHUP reloads (the policy and the TLS files listen for it themselves); a handler is
/// installed first thing, so it never falls back to the default action (terminating verdict),
/// whatever is configured and however long start-up takes. A file-size limit (RLIMIT_FSIZE)
/// reached must fail the write (answered 503, retried by the sender), not kill the process:
/// SIGXFSZ (25 on Linux) is handled, so write() returns EFBIG instead.
fn handle_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the policy and the TLS certificate, if configured");
        }
    });
    let mut xfsz = signal(SignalKind::from_raw(25)).context("installing the SIGXFSZ handler")?;
    tokio::spawn(async move {
        while xfsz.recv().await.is_some() {
            tracing::warn!(
                "file size limit reached (SIGXFSZ): the write fails and is answered 503"
            );
        }
    });
    Ok(())
}

/// The log writer, with the metrics of its batches and checkpoints, waking the dispatcher
/// after a batch that queued deliveries; and the tail the projector folds from (at most 16
/// batches wait in memory: beyond, the projector reads the store).
fn open_writer(
    db: &std::path::Path,
    outbox_wake: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<(
    LogWriter,
    std::sync::mpsc::Receiver<Vec<verdict_log::Committed>>,
)> {
    let (tail, tail_rx) = verdict_log::Tail::channel(16);
    let writer_config = WriterConfig {
        tail: Some(tail),
        on_batch: Some(std::sync::Arc::new(
            move |stats: verdict_log::WriterStats| {
                if stats.ok && stats.outbox > 0 {
                    outbox_wake.notify_one();
                }
                #[allow(clippy::cast_precision_loss)] // batch sizes are small
                if stats.ok {
                    metrics::histogram!(crate::metrics::APPEND_BATCH_EVENTS)
                        .record(stats.events as f64);
                    metrics::histogram!(crate::metrics::APPEND_BATCH_SECONDS)
                        .record(stats.elapsed.as_secs_f64());
                } else {
                    metrics::counter!(crate::metrics::APPEND_FAILURES).increment(1);
                }
            },
        )),
        on_upkeep: Some(std::sync::Arc::new(|took: std::time::Duration| {
            metrics::histogram!(crate::metrics::LOG_CHECKPOINT_SECONDS).record(took.as_secs_f64());
        })),
        ..WriterConfig::default()
    };
    let writer = LogWriter::open(db, writer_config)
        .with_context(|| format!("opening the log at {}", db.display()))?;
    Ok((writer, tail_rx))
}

/// The decider over the active policy (hot-reloaded: the returned watcher must be kept), or
/// none without a policy.
fn start_decider(
    policy: Option<crate::reload::ActivePolicy>,
    writer: &LogWriter,
    sinks: &[verdict_outbox::Sink],
) -> anyhow::Result<(
    Option<verdict_projections::Decider>,
    Option<crate::watch::Watcher>,
)> {
    let Some(active) = policy else {
        return Ok((None, None));
    };
    let path = active.path.clone();
    let current = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(active.policy));
    let watcher = crate::reload::start(path, std::sync::Arc::clone(&current), writer.clone())
        .context("watching the policy file")?;
    let decider = verdict_projections::Decider {
        policy: current,
        writer: writer.clone(),
        sinks: sinks.iter().map(|s| s.name.clone()).collect(),
    };
    Ok((Some(decider), Some(watcher)))
}

/// The delivery dispatcher, when sinks are configured.
fn start_dispatcher(
    loaded: &Loaded,
    sinks: Vec<verdict_outbox::Sink>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<verdict_outbox::Dispatcher>> {
    if sinks.is_empty() {
        return Ok(None);
    }
    let db = &loaded.config.storage.path;
    let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(sinks = ?names, "delivering decisions");
    let configured = sinks.clone();
    let dispatcher = verdict_outbox::spawn_dispatcher(
        || verdict_outbox::SqliteOutbox::open(db, &configured),
        sinks,
        loaded.config.delivery.settings(),
        wake,
        stop,
    )
    .with_context(|| format!("starting the delivery of decisions from {}", db.display()))?;
    Ok(Some(dispatcher))
}

/// The routes, by where they are served: `public` (webhooks and health) on `listen`, `admin`
/// (`/v1`, `/ui`, `/metrics`) there too or on `admin_listen`, `health` on both.
struct Routes {
    public: Router,
    admin: Router,
    health: Router,
    secure: bool,
}

impl Routes {
    fn new(
        loaded: &Loaded,
        sources: Vec<verdict_ingress::Source>,
        writer: &LogWriter,
        state: AppState,
        api: verdict_web::api::Api,
        scrape: crate::metrics::Scrape,
        secure: bool,
    ) -> Self {
        let ingress = Ingress::new(
            sources,
            *loaded.config.server.max_body_bytes.get_ref(),
            writer.clone(),
        )
        .with_body_budget(*loaded.config.server.max_buffered_body_bytes.get_ref())
        .with_observer(std::sync::Arc::new(observe_webhook));
        let health = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(state);
        let admin = Router::new()
            .route(
                "/metrics",
                get(crate::metrics::render).with_state(std::sync::Arc::new(scrape)),
            )
            .merge(verdict_web::api::router(api.clone()))
            .merge(verdict_web::ui::router(verdict_web::ui::Ui::new(
                api, secure,
            )));
        let public = health.clone().merge(verdict_ingress::router(ingress));
        Self {
            public,
            admin,
            health,
            secure,
        }
    }

    /// Request spans on every route, HSTS under TLS.
    fn finish(&self, routes: Router) -> Router {
        let routes = routes.layer(axum::middleware::from_fn(request_span));
        if self.secure {
            routes.layer(axum::middleware::from_fn(hsts))
        } else {
            routes
        }
    }
}

/// Counts every webhook delivery by source, outcome and reason.
fn observe_webhook(source: &str, outcome: verdict_ingress::Outcome) {
    use verdict_ingress::Outcome as O;
    let (name, reason) = match outcome {
        O::Accepted => ("accepted", ""),
        O::Duplicate => ("duplicate", ""),
        O::Ping => ("ping", ""),
        O::Rejected(reason) => ("rejected", reason),
        O::Unavailable => ("unavailable", ""),
        O::UnknownSource => ("unknown_source", ""),
    };
    // An unknown source's name comes from the URL: not a label (unbounded).
    let source = if matches!(outcome, O::UnknownSource) {
        "-".to_owned()
    } else {
        source.to_owned()
    };
    metrics::counter!(crate::metrics::WEBHOOKS, "source" => source, "outcome" => name, "reason" => reason)
        .increment(1);
}

/// The accept loop's limits from `[server]`.
fn limits(loaded: &Loaded) -> verdict_web::http::Limits {
    let server = &loaded.config.server;
    verdict_web::http::Limits {
        header_read_timeout: std::time::Duration::from_secs(
            *server.header_read_timeout_secs.get_ref(),
        ),
        request_timeout: std::time::Duration::from_secs(*server.request_timeout_secs.get_ref()),
        max_connections: *server.max_connections.get_ref(),
        max_streams: MAX_STREAMS,
    }
}

/// Binds `listen` (and `admin_listen`), announces them on stdout, and serves until SIGTERM or
/// SIGINT, which also sets `stop`.
async fn listen_and_serve(
    loaded: &Loaded,
    routes: Routes,
    tls: Option<std::sync::Arc<verdict_web::tls::CertStore>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limits = limits(loaded);
    let acceptor = match &tls {
        Some(store) => Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            store.server_config()?,
        ))),
        None => None,
    };
    let _cert_watcher = match &tls {
        Some(store) => Some(
            crate::tlswatch::watch(std::sync::Arc::clone(store))
                .context("watching the TLS files")?,
        ),
        None => None,
    };
    let scheme = if routes.secure { "https" } else { "http" };
    let addr = loaded.listen();
    let listener = bind(addr).with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    let admin = match loaded.admin_listen() {
        Some(admin) => {
            Some(bind(admin).with_context(|| format!("listening on admin_listen {admin}"))?)
        }
        None => None,
    };
    tracing::info!(addr = %local, scheme, db = %loaded.config.storage.path.display(), "verdict listening");
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin_local = admin
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
    // A line on stdout for scripts and tests that need the port (listen = "...:0").
    println!("verdict listening on {scheme}://{local}");
    match admin.zip(admin_local) {
        None => {
            let app = routes.finish(routes.public.clone().merge(routes.admin.clone()));
            verdict_web::http::serve(listener, acceptor, app, limits, stopped(stop)).await;
        }
        Some((admin, admin_local)) => {
            tracing::info!(addr = %admin_local, scheme, "admin routes (/v1, /ui, /metrics) listening");
            println!("verdict admin listening on {scheme}://{admin_local}");
            let public = routes.finish(routes.public.clone());
            let admin_app = routes.finish(routes.health.clone().merge(routes.admin.clone()));
            tokio::join!(
                verdict_web::http::serve(
                    listener,
                    acceptor.clone(),
                    public,
                    limits,
                    stopped(stop.clone())
                ),
                verdict_web::http::serve(admin, acceptor, admin_app, limits, stopped(stop)),
            );
        }
    }
    Ok(())
}

/// Connections the kernel may hold completed but not yet accepted (capped by the system's
/// `net.core.somaxconn`): a burst of new clients waits there instead of being dropped while
/// the accept loop makes room.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`BACKLOG`].
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Concurrent HTTP/2 streams per connection (hyper's default is 200): a client that needs more
/// opens another connection, which the connection cap governs.
const MAX_STREAMS: u32 = 32;

/// `Strict-Transport-Security` on every answer served over TLS: browsers that have seen verdict
/// over HTTPS refuse plain HTTP to it for a year.
async fn hsts(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=31536000"),
    );
    resp
}

/// The most header bytes (names and values) a request may carry; more is a 431 before any
/// handler runs (webhook senders and API clients send a few hundred bytes).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Runs each request inside a span carrying a request id (the sender's `Request-Id` or
/// `X-Request-Id` when it has one, else a new UUIDv7), the method and the path, so every log
/// line of one request can be found together. Oversized header blocks are refused first.
async fn request_span(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use tracing::Instrument as _;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        tracing::warn!(bytes = header_bytes, "request refused: headers too large");
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            [("content-type", "application/json")],
            format!(r#"{{"error":"headers larger than {MAX_HEADER_BYTES} bytes"}}"#),
        )
            .into_response();
    }
    let id = ["request-id", "x-request-id"]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| verdict_log::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    next.run(req).instrument(span).await
}

/// After a failed append (a full disk, a file-size limit, a read-only file), checks once a
/// second whether the log is writable again, so `/readyz` turns ready without waiting for
/// traffic (which a failing readiness probe would keep away).
fn spawn_recovery(writer: LogWriter, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if !writer.is_healthy() && writer.probe().await {
                tracing::info!("the log is writable again");
            }
        }
    });
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if !s.writer.is_healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "log not writable");
    }
    if !s.policy_loaded {
        return (StatusCode::SERVICE_UNAVAILABLE, "no policy loaded");
    }
    (StatusCode::OK, "ready")
}

/// Installs the SIGTERM and SIGINT handlers now (before the server announces itself, so a
/// signal sent right after the announcement is never lost) and resolves on the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
}
