//! The HTTP accept loop, built to stay up when it faces the internet: hyper's connection
//! builder (HTTP/1.1 and HTTP/2, over TCP or TLS) with deadlines on every stage a client
//! controls, a connection cap that sheds the connection that has kept the server waiting
//! longest rather than stop accepting, and a graceful stop.
//!
//! What a client can no longer hold:
//! - **a TLS handshake**: it runs inside the connection's task, so it counts against the
//!   connection cap (and can be shed), and must finish within the header timeout;
//! - **a request head**: hyper's header timeout (HTTP/1.1); a connection must send its first
//!   bytes within it too ([`Deadlines`]), and one idle longer than [`IDLE`] is closed;
//! - **a request body**: every request has a deadline ([`Limits::request_timeout`]) by which its
//!   head and body must have arrived; a body still arriving then fails with `TimedOut`, which
//!   the handlers answer 408 (the connection is then closed);
//! - **a connection slot**: at [`Limits::max_connections`] a new connection is still accepted,
//!   and the open connection that has been waiting on its client the longest (mid-request or
//!   idle, never one whose request is being served) is closed to make room;
//! - **HTTP/2 streams**: at most [`Limits::max_streams`] per connection.
//!
//! `axum::serve` sets no timer, which leaves hyper's header timeout inert; this replaces it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to finish its TLS handshake and send a request's headers (from
    /// the connection's start, or from the first byte of a later request on the connection).
    pub header_read_timeout: Duration,
    /// How long a client has to send a whole request, head and body.
    pub request_timeout: Duration,
    /// Connections open at once (including those in their TLS handshake).
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

/// The longest a connection's reads may stay idle once it has sent something: longer than the
/// longest long poll (60 s), like common proxies' keep-alive timeout.
pub const IDLE: Duration = Duration::from_secs(75);

/// How long after a request's deadline its connection is closed if the request is still
/// arriving (the handler answers 408 at the deadline itself; this catches what never reaches
/// a handler, such as an HTTP/2 frame sent a byte at a time).
const GRACE: Duration = Duration::from_secs(1);

/// How long shutdown waits for requests in flight before it gives up on them.
const DRAIN: Duration = Duration::from_secs(30);

pub use verdict_ingress::ClientAddr;

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    'accept: loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            // Full: make room by closing the connection that has kept us waiting longest; if
            // every connection is being served, wait until one is done (or ends).
            Err(_) => loop {
                let room = registry.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                let shed = registry.shed_one();
                if shed {
                    metrics::counter!(crate::metrics::CONNECTIONS_SHED).increment(1);
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(s) => break s,
                        Err(_) => return,
                    },
                    () = &mut room, if !shed => {}
                    () = &mut shutdown => break 'accept,
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let registration = Registration {
            conn: registry.register(),
            registry: Arc::clone(&registry),
        };
        let task = Connection {
            conn: Arc::clone(&registration.conn),
            peer,
            app: app.clone(),
            builder: Arc::clone(&builder),
            limits,
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => task.run(tcp).await,
                Some(acceptor) => {
                    if let Some(stream) = task.handshake(&acceptor, tcp).await {
                        task.run(stream).await;
                    }
                }
            }
            // However the task ends (a failed handshake, a panic in a handler), the connection
            // leaves the registry and frees its slot.
            drop(registration);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.min(limits.request_timeout))
        // The read buffer (a request head must fit); webhook heads are a few hundred bytes.
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(32 * 1024)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(64));
    builder
}

/// A connection's place in the registry, given up when dropped.
struct Registration {
    conn: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.conn.id);
    }
}

/// One accepted connection's task.
struct Connection {
    conn: Arc<ConnState>,
    peer: SocketAddr,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    /// The TLS handshake, within the header timeout; `None` if it failed, timed out or the
    /// connection was shed meanwhile.
    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let deadline = Instant::now() + self.limits.header_read_timeout;
        let handshake = async {
            match acceptor.accept(tcp).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    None
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, handshake) => r.unwrap_or_else(|_| {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                None
            }),
            () = self.conn.shed.notified() => None,
        }
    }

    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = Deadlines::new(
            io,
            self.limits.header_read_timeout,
            self.limits.request_timeout + GRACE,
            Arc::clone(&self.conn),
        );
        let service = ConnService {
            app: self.app,
            conn: Arc::clone(&self.conn),
            peer: self.peer,
            request_timeout: self.limits.request_timeout,
        };
        let served = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let watched = self.watcher.watch(served);
        tokio::select! {
            r = watched => if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            () = self.conn.shed.notified() => {
                tracing::debug!(peer = %self.peer, "connection closed to make room");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Which connection to shed.

/// One connection's state, shared by its task, its IO wrapper and its requests.
#[derive(Debug)]
struct ConnState {
    id: u64,
    /// Requests being served: head and body received, answer not yet sent (the answer's body
    /// dropped). [`SHED`] is set once the connection is chosen to be closed.
    serving: AtomicUsize,
    /// Since when (ms on the registry's clock) the connection has been waiting on its client:
    /// its start, or the end of its last served request.
    waiting_since: AtomicU64,
    /// When the current HTTP/1 request's first byte arrived (ms + 1; 0: none yet).
    request_began: AtomicU64,
    /// Closes the connection.
    shed: Notify,
    /// The registry's: told when a request's answer leaves the connection waiting again.
    room: Arc<Notify>,
    epoch: Instant,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The flag in [`ConnState::serving`] of a connection chosen to be closed: a request that
/// completes after it is set is refused (it could not be answered).
const SHED: usize = 1 << (usize::BITS - 1);

/// The open connections.
#[derive(Debug)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    /// Notified when a connection becomes sheddable again (its last request answered), for an
    /// accept waiting at the cap.
    room: Arc<Notify>,
    epoch: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            conns: Mutex::default(),
            next: AtomicU64::new(0),
            room: Arc::default(),
            epoch: Instant::now(),
        }
    }
}

impl Registry {
    fn register(&self) -> Arc<ConnState> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState {
            id,
            serving: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(0),
            request_began: AtomicU64::new(0),
            shed: Notify::new(),
            room: Arc::clone(&self.room),
            epoch: self.epoch,
        });
        conn.waiting_since.store(conn.now_ms(), Ordering::Relaxed);
        if let Ok(mut map) = self.conns.lock() {
            map.insert(id, Arc::clone(&conn));
        }
        conn
    }

    fn remove(&self, id: u64) {
        if let Ok(mut map) = self.conns.lock() {
            map.remove(&id);
        }
    }

    /// Closes the connection that has waited on its client the longest, if any connection is
    /// waiting on its client at all. A scan of at most `max_connections` entries, only when
    /// the cap is reached.
    fn shed_one(&self) -> bool {
        let Ok(mut map) = self.conns.lock() else {
            return false;
        };
        // The oldest waiting connection; tried again only if a request completed on it in the
        // meantime (rare), so this is one pass over the map, with no allocation, per accept at
        // the cap.
        loop {
            let Some(c) = map
                .values()
                .filter(|c| c.serving.load(Ordering::Acquire) == 0)
                .min_by_key(|c| (c.waiting_since.load(Ordering::Relaxed), c.id))
                .map(Arc::clone)
            else {
                return false;
            };
            // Only if no request completed meanwhile; from here on none can (see `SHED`).
            if c.serving
                .compare_exchange(0, SHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // `notify_one` stores a permit: the task sees it even if it is not waiting yet.
                c.shed.notify_one();
                map.remove(&c.id);
                return true;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per request: the deadline and the serving count.

/// The app, wrapped for one connection: each request gets the client's address, a body with
/// the request's deadline, and counts as served once its body has arrived.
#[derive(Clone)]
struct ConnService {
    app: Router,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    request_timeout: Duration,
}

impl tower::Service<Request<hyper::body::Incoming>> for ConnService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        // HTTP/1: from the request's first byte; HTTP/2 (streams share the connection): from
        // its head.
        let began = match self.conn.request_began.load(Ordering::Relaxed) {
            0 => None,
            _ if req.version() == axum::http::Version::HTTP_2 => None,
            ms => Some(self.conn.epoch + Duration::from_millis(ms - 1)),
        };
        let deadline = began.unwrap_or_else(Instant::now) + self.request_timeout;
        let served = Arc::new(Served {
            conn: Arc::clone(&self.conn),
            counted: AtomicBool::new(false),
        });
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ClientAddr(self.peer));
        let body = if body.is_end_stream() {
            if !served.count() {
                // The connection is being closed to make room: no answer could reach the client.
                return Box::pin(async {
                    Ok(axum::response::IntoResponse::into_response(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    ))
                });
            }
            Body::new(body)
        } else {
            Body::new(DeadlineBody {
                inner: body,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                served: Arc::clone(&served),
            })
        };
        let mut app = self.app.clone();
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            let resp = tower::Service::call(&mut app, req).await;
            // Served until the answer has been handed to the connection (its body dropped), so
            // a connection is never closed to make room with an answer still to send.
            Ok(resp?.map(|body| {
                Body::new(AnswerBody {
                    inner: body,
                    _served: served,
                })
            }))
        })
    }
}

/// Counts a request as served (not waiting on its client) from its body's end to its answer.
#[derive(Debug)]
struct Served {
    conn: Arc<ConnState>,
    counted: AtomicBool,
}

impl Served {
    /// Counts the request as served; false if the connection is being closed to make room
    /// (the request must then fail: its answer could not be sent).
    fn count(&self) -> bool {
        if self.counted.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.conn.serving.fetch_add(1, Ordering::AcqRel) & SHED == 0
    }
}

/// An answer's body, holding its request's [`Served`] until hyper is done with it.
struct AnswerBody {
    inner: Body,
    _served: Arc<Served>,
}

impl http_body::Body for AnswerBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.conn.request_began.store(0, Ordering::Relaxed);
        if *self.counted.get_mut() && self.conn.serving.fetch_sub(1, Ordering::AcqRel) & !SHED == 1
        {
            self.conn
                .waiting_since
                .store(self.conn.now_ms(), Ordering::Relaxed);
            self.conn.room.notify_waiters();
        }
    }
}

/// A request body that fails with `TimedOut` once the request's deadline has passed while it
/// is still arriving.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    served: Arc<Served>,
}

/// The error of a body that did not arrive in time: an `io::Error` of kind `TimedOut`, which
/// the ingress finds in the error's chain ([`verdict_ingress::is_timeout`]) and answers 408.
fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request did not arrive within request_timeout_secs",
    )
}

/// The error of a body completed on a connection being closed to make room.
fn shed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the connection is being closed to make room",
    )
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if !self.served.count() {
                    return Poll::Ready(Some(Err(shed().into())));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() && !self.served.count() {
                    return Poll::Ready(Some(Err(shed().into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(timed_out().into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Reads with deadlines.

/// A connection whose reads fail with `TimedOut` when they stay pending too long: `first` until
/// the first bytes arrive, [`IDLE`] after that; any data resets that clock. Bytes that keep
/// coming without a request being served (a head, a body or an HTTP/2 frame dribbled a byte at
/// a time) do not: the connection fails `in_request` after the first of them. It also notes
/// when that first byte arrived, for the request's deadline.
#[derive(Debug)]
struct Deadlines<I> {
    inner: I,
    first: Option<Duration>,
    in_request: Duration,
    /// One timer per connection, re-armed (not re-allocated) each time a read waits.
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    conn: Arc<ConnState>,
}

impl<I> Deadlines<I> {
    /// Wraps `inner`.
    fn new(inner: I, first: Duration, in_request: Duration, conn: Arc<ConnState>) -> Self {
        Self {
            inner,
            first: Some(first),
            in_request,
            sleep: Box::pin(tokio::time::sleep(first)),
            armed: false,
            conn,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlines<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.first = None;
                    let c = &self.conn;
                    if c.serving.load(Ordering::Relaxed) == 0
                        && c.request_began.load(Ordering::Relaxed) == 0
                    {
                        c.request_began.store(c.now_ms() + 1, Ordering::Relaxed);
                    }
                }
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    let now = Instant::now();
                    let mut until = now + self.first.unwrap_or(IDLE);
                    let c = &self.conn;
                    let began = c.request_began.load(Ordering::Relaxed);
                    if began != 0 && c.serving.load(Ordering::Relaxed) == 0 {
                        let began = c.epoch + Duration::from_millis(began - 1);
                        until = until.min(began + self.in_request);
                    }
                    self.sleep.as_mut().reset(until);
                    self.armed = true;
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client did not send its request in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlines<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_time_out_first_and_mid_request_however_the_bytes_trickle() {
        let registry = Registry::default();
        let first = Duration::from_millis(100);
        let in_request = Duration::from_secs(2);
        // Nothing ever sent: the first deadline.
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Deadlines::new(server, first, in_request, registry.register());
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::TimedOut));

        // A byte every 500 ms, no request served: cut 2 s after the first byte, although
        // every pause is short.
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Deadlines::new(server, first, in_request, registry.register());
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            loop {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let err = loop {
            match conn.read(&mut buf).await {
                Ok(_) => {}
                Err(e) => break e.kind(),
            }
        };
        assert_eq!(err, std::io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= in_request && took < in_request + Duration::from_millis(600),
            "{took:?}"
        );
        writer.abort();

        // While a request is served, the bytes that arrive do not count against it, and once
        // served the connection may idle (IDLE, 75 s) before its next request.
        let (mut client, server) = tokio::io::duplex(64);
        let state = registry.register();
        let mut conn = Deadlines::new(server, first, in_request, Arc::clone(&state));
        client.write_all(b"GET").await.ok();
        assert_eq!(conn.read(&mut buf).await.ok(), Some(3));
        state.request_began.store(0, Ordering::Relaxed); // the request was answered
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"/").await.ok();
            client
        });
        assert_eq!(conn.read(&mut buf).await.ok(), Some(1));
        let _client = writer.await;
    }

    #[test]
    fn the_connection_waiting_longest_on_its_client_is_shed_never_one_being_served() {
        let registry = Registry::default();
        let (a, b, c) = (
            registry.register(),
            registry.register(),
            registry.register(),
        );
        a.waiting_since.store(10, Ordering::Relaxed);
        b.waiting_since.store(5, Ordering::Relaxed);
        c.waiting_since.store(1, Ordering::Relaxed);
        c.serving.store(1, Ordering::Relaxed); // the oldest, but its request is being served
        assert!(registry.shed_one());
        let left: Vec<u64> = {
            let map = registry.conns.lock().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<u64> = map.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(left, vec![a.id, c.id]);
        assert!(registry.shed_one());
        assert!(!registry.shed_one(), "only a served connection is left");
    }

    #[test]
    fn the_deadline_error_is_recognised_through_wrapping() {
        let wrapped: Box<dyn std::error::Error + Send + Sync> = timed_out().into();
        assert!(verdict_ingress::is_timeout(&axum::Error::new(wrapped)));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!verdict_ingress::is_timeout(&other));
    }
}
