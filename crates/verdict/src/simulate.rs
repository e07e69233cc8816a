//! `verdict simulate`: a SEON-like sender for trying verdict out and loading it.
//!
//! It generates IDV sessions on the shapes of `fixtures/seon/` with varied outcomes (approved;
//! declined for document forgery; review for a face mismatch; abandoned with null results;
//! duplicates found; review later approved by a vendor-side analyst), signs each body with
//! HMAC-SHA256 (scheme `seon`), sends a `Request-Id` stable across retries, retries non-200
//! answers with exponential backoff like SEON (up to 5 more attempts), can inject duplicate and
//! out-of-order deliveries, and can hold a fixed rate. Deterministic for a given `--seed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hmac::{KeyInit as _, Mac as _};
use tokio::sync::{Mutex, Semaphore};

const APPROVED: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");
const FORGERY: &str = include_str!("../../../fixtures/seon/session_finished_declined_forgery.json");
const FACE: &str =
    include_str!("../../../fixtures/seon/session_finished_review_face_mismatch.json");
const ABANDONED: &str = include_str!("../../../fixtures/seon/session_finished_abandoned.json");
const DUPLICATE: &str = include_str!("../../../fixtures/seon/session_finished_duplicate.json");
const UPDATED: &str = include_str!("../../../fixtures/seon/session_status_updated_approved.json");

/// What to send and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The webhook URL (`.../webhooks/{source}`).
    pub url: String,
    /// The source's SEON secret (`Debug` shows it redacted).
    pub secret: crate::config::Secret,
    /// Sessions to generate.
    pub sessions: u64,
    /// Deliveries per second (`None`: as fast as `concurrency` allows).
    pub rate: Option<f64>,
    /// Probability that a delivery is sent a second time (same Request-Id and body).
    pub duplicates: f64,
    /// Probability that a session's later event is sent before its earlier one.
    pub reorder: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Signature header.
    pub header: String,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First retry delay; doubles each time.
    pub backoff: Duration,
}

/// One delivery to make.
#[derive(Debug, Clone)]
struct Delivery {
    request_id: String,
    body: String,
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

fn uuid_like(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 52) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// The deliveries of `n` sessions, in sending order.
fn generate(o: &Options) -> Vec<Delivery> {
    let mut rng = Rng(o.seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    let mut counter = 0u64;
    for i in 0..o.sessions {
        let sid = uuid_like(&mut rng);
        let user = 10_000 + rng.next() % 90_000;
        let minute = i % 60;
        let hour = 8 + (i / 60) % 10;
        let finished_at = format!("2026-03-02T{hour:02}:{minute:02}:42.000Z");
        let template = match rng.next() % 20 {
            0..=7 => APPROVED,
            8..=10 => FORGERY,
            11..=13 => FACE,
            14..=15 => ABANDONED,
            16..=17 => DUPLICATE,
            _ => "review-then-approved",
        };
        let personalise = |t: &str, session_field: &str| {
            t.replace(session_field, &sid)
                .replace(
                    "\"referenceId\": \"user-",
                    &format!("\"referenceId\": \"sim-{user}-"),
                )
                .replace("2026-03-02T10:15:42.000Z", &finished_at)
        };
        let mut events = Vec::new();
        if template == "review-then-approved" {
            events.push(personalise(FACE, "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4"));
            events.push(
                personalise(UPDATED, "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4").replace(
                    "2026-03-02T13:40:05.000Z",
                    &format!("2026-03-03T{hour:02}:{minute:02}:05.000Z"),
                ),
            );
            if rng.chance(o.reorder) {
                events.reverse();
            }
        } else {
            let field = [
                "5b0f6a7e-2c1d-4d8e-9a11-0c3f7e2b9d10",
                "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4",
            ]
            .into_iter()
            .find(|f| template.contains(f))
            .unwrap_or("");
            let body = if field.is_empty() {
                // Fixtures with their own session ids: replace the first sessionId value.
                replace_session_id(template, &sid)
            } else {
                personalise(template, field)
            };
            events.push(body.replace("2026-03-02T10:15:42.000Z", &finished_at));
        }
        for body in events {
            counter += 1;
            let d = Delivery {
                request_id: format!("sim-{}-{counter}", o.seed),
                body,
            };
            let dup = rng.chance(o.duplicates);
            out.push(d.clone());
            if dup {
                out.push(d);
            }
        }
    }
    out
}

fn replace_session_id(body: &str, sid: &str) -> String {
    let key = "\"sessionId\": \"";
    match body.find(key) {
        Some(at) => {
            let start = at + key.len();
            let end = body[start..].find('"').map_or(start, |e| start + e);
            format!("{}{sid}{}", &body[..start], &body[end..])
        }
        None => body.to_owned(),
    }
}

#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// Sends everything and prints a summary. Returns whether every delivery was acknowledged.
pub async fn run(o: Options) -> anyhow::Result<bool> {
    let deliveries = generate(&o);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let key = hmac::Hmac::<sha2::Sha256>::new_from_slice(o.secret.expose().as_bytes())
        .context("secret")?;
    let tally = Arc::new(Tally::default());
    let latency = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
    ));
    let permits = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let mut ticker = o.rate.filter(|r| *r > 0.0).map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for d in deliveries {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .context("semaphore")?;
        let (client, tally, latency, o2) = (
            client.clone(),
            Arc::clone(&tally),
            Arc::clone(&latency),
            o.clone(),
        );
        let mut mac = key.clone();
        mac.update(d.body.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        tasks.spawn(async move {
            deliver(&client, &o2, &d, &signature, &tally, &latency).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let h = latency.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.load(Ordering::Relaxed);
    println!(
        "sent {sent} deliveries for {} sessions in {elapsed:.2}s ({:.0}/s): accepted {}, duplicates {}, retries {}, failures {failures}",
        o.sessions,
        sent as f64 / elapsed.max(1e-9),
        tally.accepted.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
    );
    println!(
        "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    Ok(failures == 0)
}

async fn deliver(
    client: &reqwest::Client,
    o: &Options,
    d: &Delivery,
    signature: &str,
    tally: &Tally,
    latency: &Mutex<hdrhistogram::Histogram<u64>>,
) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..=o.max_retries {
        if attempt > 0 {
            tally.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(o.backoff * 2u32.saturating_pow(attempt - 1)).await;
        }
        let t0 = Instant::now();
        let resp = client
            .post(&o.url)
            .header(o.header.as_str(), signature)
            .header("Request-Id", d.request_id.as_str())
            .header("Content-Type", "application/json")
            .body(d.body.clone())
            .send()
            .await;
        let micros = u64::try_from(t0.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = latency.lock().await.record(micros);
        let Ok(resp) = resp else { continue };
        if resp.status() != reqwest::StatusCode::OK {
            continue;
        }
        let text = resp.text().await.unwrap_or_default();
        if text.contains("\"duplicate\"") {
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.accepted.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    tally.failures.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> Options {
        Options {
            url: String::new(),
            secret: "s".parse().unwrap_or_else(|e| match e {}),
            sessions: 50,
            rate: None,
            duplicates: 0.2,
            reorder: 0.5,
            seed,
            header: "X-Seon-Signature".into(),
            concurrency: 4,
            max_retries: 5,
            backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_valid_json() {
        let a = generate(&opts(7));
        let b = generate(&opts(7));
        let c = generate(&opts(8));
        assert_eq!(
            a.iter().map(|d| &d.body).collect::<Vec<_>>(),
            b.iter().map(|d| &d.body).collect::<Vec<_>>()
        );
        assert_ne!(
            a.iter().map(|d| &d.body).collect::<Vec<_>>(),
            c.iter().map(|d| &d.body).collect::<Vec<_>>()
        );
        let ids: std::collections::HashSet<String> = a
            .iter()
            .map(|d| {
                let v: serde_json::Value = serde_json::from_str(&d.body).expect("valid JSON");
                v["details"]["sessionId"]
                    .as_str()
                    .expect("session id")
                    .to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 50, "one session id per session");
        assert!(a.len() > 50, "duplicates and two-event sessions");
    }
}
