//! `verdict-deliverybench`: the latency from a webhook's 200 to the sink receiving the decision.
//!
//! Starts a decision sink on a free port, writes a config (a SEON source, the policy, the sink)
//! in a temporary directory, starts `verdict serve` on it, then sends signed SEON
//! `idv:session_finished` deliveries at a fixed rate (open loop: one every 1/rate seconds, each
//! a new session). For every session it takes the time the webhook's 200 arrived and the time
//! the sink received its decision, and prints percentiles of the difference (a decision that
//! arrives before the client has read its 200 counts as 0).
//!
//! ```text
//! verdict-deliverybench --verdict target/release/verdict --policy config/policies/kyc.toml \
//!     --rate 1000 --duration 20
//! ```

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use hmac::{KeyInit, Mac};

#[derive(Debug, Parser)]
#[command(about = "Latency from a webhook's 200 to the decision at the sink")]
struct Args {
    /// The verdict binary.
    #[arg(long, default_value = "target/release/verdict")]
    verdict: PathBuf,
    /// The policy verdict decides with.
    #[arg(long, default_value = "config/policies/kyc.toml")]
    policy: PathBuf,
    /// Deliveries per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Unmeasured warm-up seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Where the log goes (default: a new directory under target/).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const BODY: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");
const FIXTURE_SESSION: &str = "5b0f6a7e-2c1d-4d8e-9a11-0c3f7e2b9d10";
const SECRET: &str = "bench-secret-0123456789";
const SINK_SECRET: &str = "whsec_YmVuY2gtc2luay1zZWNyZXQ=";

/// Per session: when the 200 arrived, when the sink got the decision.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    ok: Option<Instant>,
    delivered: Option<Instant>,
    measured: bool,
}

type Book = Arc<Mutex<HashMap<String, Times>>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let book: Book = Arc::default();
    // The sink.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/decisions", sink.local_addr()?);
    let sink_book = Arc::clone(&book);
    let app = axum::Router::new().route(
        "/decisions",
        axum::routing::post(move |body: axum::body::Bytes| {
            let book = Arc::clone(&sink_book);
            async move {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(id) = v["session_id"].as_str()
                    && let Ok(mut b) = book.lock()
                {
                    b.entry(id.to_owned()).or_default().delivered = Some(at);
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(sink, app).await;
    });

    // verdict.
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("verdict-deliverybench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let policy = std::fs::canonicalize(&args.policy)
        .with_context(|| format!("policy {}", args.policy.display()))?;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\npath = {:?}\n\n\
         [[sources]]\nname = \"seon-idv\"\nscheme = \"seon\"\nsecrets = [{SECRET:?}]\n\n\
         [policy]\npath = {:?}\n\n[[sinks]]\nname = \"bench\"\nurl = {sink_url:?}\nsecret = {SINK_SECRET:?}\n",
        dir.join("verdict.db").display().to_string(),
        policy.display().to_string(),
    );
    std::fs::write(dir.join("verdict.toml"), config)?;
    let mut child = std::process::Command::new(&args.verdict)
        .arg("--config")
        .arg(dir.join("verdict.toml"))
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args.verdict.display()))?;
    let stdout = child.stdout.take().context("verdict's stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.strip_prefix("verdict listening on ") {
                    break u.to_owned();
                }
            }
            _ => {
                let _ = child.kill();
                bail!("verdict did not start");
            }
        }
    };
    let result = drive(&args, &base, &book).await;
    // SIGTERM: a clean stop.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn drive(args: &Args, base: &str, book: &Book) -> anyhow::Result<()> {
    let url = format!("{base}/webhooks/seon-idv");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ok_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Duration)>();
    let mut sent = 0u64;
    let mut measured_sent = 0u64;
    let pid = std::process::id();
    while started.elapsed() < total {
        ticker.tick().await;
        let measured = started.elapsed() >= warmup;
        let id = format!("bench-{pid}-{sent:09}");
        sent += 1;
        measured_sent += u64::from(measured);
        let body = BODY.replace(FIXTURE_SESSION, &id);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())?;
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let (client, url, book, done) = (
            client.clone(),
            url.clone(),
            Arc::clone(book),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let t0 = Instant::now();
            let resp = client
                .post(url)
                .header("X-Seon-Signature", sig)
                .header("Request-Id", &id)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = matches!(&resp, Ok(r) if r.status().is_success());
            if let Ok(r) = resp {
                let _ = r.bytes().await;
            }
            let at = Instant::now();
            if ok && let Ok(mut b) = book.lock() {
                let t = b.entry(id).or_default();
                t.ok = Some(at);
                t.measured = measured;
            }
            if measured {
                let _ = done.send((ok, at - t0));
            }
        });
    }
    drop(done_tx);
    let mut errors = 0u64;
    while let Some((ok, d)) = done_rx.recv().await {
        if ok {
            ok_latency.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))?;
        } else {
            errors += 1;
        }
    }
    let elapsed = started.elapsed() - warmup;
    // Give the last decisions time to arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = book
            .lock()
            .map(|b| {
                b.values()
                    .filter(|t| t.measured && t.ok.is_some() && t.delivered.is_none())
                    .count()
            })
            .unwrap_or(0);
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut missing = 0u64;
    if let Ok(b) = book.lock() {
        for t in b.values().filter(|t| t.measured) {
            match (t.ok, t.delivered) {
                (Some(ok), Some(d)) => {
                    let us = d.saturating_duration_since(ok).as_micros();
                    lat.record(u64::try_from(us).unwrap_or(u64::MAX).max(1))?;
                }
                (Some(_), None) => missing += 1,
                _ => {}
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "sent {measured_sent} in {:.1}s ({:.0}/s), webhook errors {errors}, decisions delivered {}, missing {missing}",
        elapsed.as_secs_f64(),
        measured_sent as f64 / elapsed.as_secs_f64(),
        lat.len()
    );
    println!(
        "webhook 200      p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ms(&ok_latency, 0.5),
        ms(&ok_latency, 0.9),
        ms(&ok_latency, 0.99),
        ok_latency.max() as f64 / 1000.0
    );
    println!(
        "200 -> sink      p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ms(&lat, 0.5),
        ms(&lat, 0.9),
        ms(&lat, 0.99),
        lat.max() as f64 / 1000.0
    );
    Ok(())
}
