//! `verdict-loadgen`: a closed-loop HTTP load generator for verdict's ingress benchmark.
//!
//! Each connection sends a signed SEON delivery (the fixture with a member naming the request
//! and the event time set to now, signed for each request: the `seon` scheme deduplicates on
//! the body, so every request is a new log entry), waits for the answer and sends the next. Several targets are
//! measured one after another in the same run, so the durable server and the no-storage ceiling
//! see the same machine and the same client; the ratio of their throughputs is printed.
//!
//! ```text
//! verdict-loadgen --secret S --connections 32 --duration 10 \
//!     --target ceiling=http://127.0.0.1:9001/webhooks/seon-idv \
//!     --target durable=http://127.0.0.1:9002/webhooks/seon-idv
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
#[command(about = "Closed-loop load generator for verdict's webhook ingress")]
struct Args {
    /// `name=url` of a webhook endpoint (scheme seon); repeat to compare targets.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The SEON webhook secret the targets are configured with.
    #[arg(long)]
    secret: String,
    /// Concurrent connections (each has one request in flight).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured seconds per target.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up seconds per target.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The body to send (default: a SEON `idv:session_finished` of about 3 KB).
    #[arg(long)]
    body: Option<PathBuf>,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Signature header name.
    #[arg(long, default_value = "X-Seon-Signature")]
    header: String,
}

const DEFAULT_BODY: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");

#[derive(Debug)]
struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let body = match &args.body {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => DEFAULT_BODY.as_bytes().to_vec(),
    };
    let body = Bytes::from(body);
    let key =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(args.secret.as_bytes()).context("hmac key")?;
    let run_id = std::process::id();

    println!(
        "{:<10} {:>5} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "target", "conns", "requests", "req/s", "p50 ms", "p99 ms", "p99.9", "max ms", "errors"
    );
    let mut results = Vec::new();
    for (i, target) in args.targets.iter().enumerate() {
        let (name, url) = target.split_once('=').context("--target takes name=url")?;
        let (addr, path) = split_url(url)?;
        let spec = Spec {
            addr,
            path,
            header: args.header.clone(),
            key: key.clone(),
            body: body.clone(),
            prefix: format!("lg-{run_id}-{i}"),
        };
        // Warm-up (connections, caches, the WAL file), then the measured run.
        measure(
            &spec,
            args.connections,
            Duration::from_secs_f64(args.warmup),
            "w",
        )
        .await?;
        let o = measure(
            &spec,
            args.connections,
            Duration::from_secs_f64(args.duration),
            "m",
        )
        .await?;
        let rate = o.requests as f64 / o.elapsed.as_secs_f64();
        let ms = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name:<10} {:>5} {:>9} {rate:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            args.connections,
            o.requests,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            o.latency.max() as f64 / 1000.0,
            o.errors
        );
        results.push((name.to_owned(), rate));
    }
    if let [(a, ra), (b, rb)] = results.as_slice() {
        println!("ratio {b}/{a}: {:.2}", rb / ra);
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Spec {
    addr: String,
    path: String,
    header: String,
    /// The source's HMAC key: each request's body is unique (the `seon` scheme deduplicates
    /// on the body), so each is signed on its own.
    key: hmac::Hmac<sha2::Sha256>,
    body: Bytes,
    prefix: String,
}

fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs: {url}")
    };
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((
        addr.to_owned(),
        if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
    ))
}

async fn measure(
    spec: &Spec,
    connections: usize,
    duration: Duration,
    phase: &str,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let spec = spec.clone();
        let prefix = format!("{}-{phase}-{c}", spec.prefix);
        tasks.push(tokio::spawn(async move {
            connection(spec, prefix, deadline).await
        }));
    }
    let mut total = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: new_hist()?,
    };
    for t in tasks {
        let o = t.await??;
        total.requests += o.requests;
        total.errors += o.errors;
        total.latency.add(&o.latency)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The fixture's event time, replaced by the time of each request (a vendor's deliveries carry
/// their own, increasing times).
const FIXTURE_DATE: &str = "2026-03-02T10:15:42.000Z";

/// `body` (a JSON object) with a first member naming the request, so every request is a new
/// delivery (`{"loadgen":"<id>",...`), and the fixture's event time set to now.
fn unique_body(body: &Bytes, id: &str) -> Bytes {
    let Some(rest) = body.strip_prefix(b"{") else {
        return body.clone();
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let dated;
    let rest = match std::str::from_utf8(rest) {
        Ok(text) if text.contains(FIXTURE_DATE) => {
            dated = text.replacen(FIXTURE_DATE, &now, 1);
            dated.as_bytes()
        }
        _ => rest,
    };
    let mut out = Vec::with_capacity(body.len() + id.len() + 16);
    out.extend_from_slice(b"{\"loadgen\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(rest);
    Bytes::from(out)
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

async fn connection(spec: Spec, prefix: String, deadline: Instant) -> anyhow::Result<Outcome> {
    let stream = tokio::net::TcpStream::connect(&spec.addr)
        .await
        .with_context(|| format!("connecting to {}", spec.addr))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: new_hist()?,
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let id = format!("{prefix}-{n}");
        let body = unique_body(&spec.body, &id);
        let mut mac = spec.key.clone();
        mac.update(&body);
        let signature = hex::encode(mac.finalize().into_bytes());
        let req = Request::post(spec.path.as_str())
            .header(hyper::header::HOST, spec.addr.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(spec.header.as_str(), signature)
            .header("request-id", id)
            .body(Full::new(body))?;
        let t0 = Instant::now();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let ok = resp.status() == hyper::StatusCode::OK;
        let _ = resp.into_body().collect().await?;
        out.latency.record(
            u64::try_from(t0.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
        out.requests += 1;
        if !ok {
            out.errors += 1;
        }
    }
    Ok(out)
}
