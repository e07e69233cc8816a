//! The HTTP accept loop: hyper's connection builder (HTTP/1.1 and HTTP/2) with a timer, so a
//! client must finish sending a request's headers within a deadline (a Slowloris client that
//! dribbles header bytes is cut off), a cap on open connections (accepting waits while it is
//! reached), and a graceful stop: on shutdown no new connection is accepted, requests in flight
//! finish, idle connections are closed.
//!
//! `axum::serve` sets no timer, which leaves hyper's header timeout inert; this replaces it for
//! plain and TLS listeners alike. hyper's timeout starts with a request's first byte, so each
//! connection is also wrapped in [`Deadlines`]: a connection must send its first bytes within
//! the header timeout, and one whose reads stay idle longer than [`IDLE`] (a kept-alive
//! connection between requests) is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to send a request's headers (from the connection's start, or from
    /// the first byte of a later request on the same connection).
    pub header_read_timeout: Duration,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

/// The longest a connection's reads may stay idle once it has sent something: longer than the
/// longest long poll (60 s), like common proxies' keep-alive timeout.
pub const IDLE: Duration = Duration::from_secs(75);

/// How long shutdown waits for requests in flight before it gives up on them.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
    L::Io: Send + Unpin + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A free slot first, so a full house stops accepting instead of piling up sockets.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (io, _addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let io = Deadlines::new(io, limits.header_read_timeout, IDLE);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app.clone()))
            .into_owned();
        let watched = graceful.watcher().watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
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

/// A connection whose reads fail with `TimedOut` when they stay pending too long: `first` until
/// the first bytes arrive, `idle` after that. Any data resets the clock.
#[derive(Debug)]
pub struct Deadlines<I> {
    inner: I,
    first: Option<Duration>,
    idle: Duration,
    /// One timer per connection, re-armed (not re-allocated) each time a read waits.
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<I> Deadlines<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, first: Duration, idle: Duration) -> Self {
        Self {
            inner,
            first: Some(first),
            idle,
            sleep: Box::pin(tokio::time::sleep(first)),
            armed: false,
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
                }
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    let limit = self.first.unwrap_or(self.idle);
                    self.sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + limit);
                    self.armed = true;
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
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

    #[tokio::test]
    async fn reads_time_out_first_and_when_idle_and_data_resets_the_clock() {
        let first = Duration::from_millis(100);
        let idle = Duration::from_secs(2);
        // Nothing ever sent: the first deadline.
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Deadlines::new(server, first, idle);
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::TimedOut));

        // Data, then a pause shorter than `idle` (but longer than `first`), then data again:
        // no timeout; then silence: the idle deadline.
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Deadlines::new(server, first, idle);
        client.write_all(b"GET").await.ok();
        assert_eq!(conn.read(&mut buf).await.ok(), Some(3));
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client.write_all(b"/").await.ok();
            client
        });
        assert_eq!(conn.read(&mut buf).await.ok(), Some(1));
        let _client = writer.await;
        let err = conn.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::TimedOut));
    }
}
