//! Criterion benches of the ingest path: signature verification and envelope parsing (pure),
//! and verify + durable append through the real log writer on a real SQLite file (fsync
//! included), one delivery at a time and 32 at once (group commit).
//!
//! `cargo bench -p verdict-ingress --bench ingest`

use std::hint::black_box;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};
use verdict_ingress::envelope::Envelope;
use verdict_ingress::signature::{Scheme, Verifier};
use verdict_log::{LogWriter, NewEvent, WriterConfig, sha256};

const BODY: &[u8] = include_bytes!("../../../fixtures/seon/session_finished_approved.json");
const SECRET: &str = "bench-secret";

fn signed_headers(id: &str) -> HeaderMap {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())
        .unwrap_or_else(|_| unreachable!());
    mac.update(BODY);
    let mut h = HeaderMap::new();
    let sig = hex::encode(mac.finalize().into_bytes());
    h.insert(
        "x-seon-signature",
        HeaderValue::from_str(&sig).unwrap_or_else(|_| unreachable!()),
    );
    h.insert(
        "request-id",
        HeaderValue::from_str(id).unwrap_or_else(|_| unreachable!()),
    );
    h
}

fn verifier() -> Verifier {
    Verifier::new(Scheme::Seon, None, &[SECRET], 300).unwrap_or_else(|_| unreachable!())
}

/// What the handler does before appending: verify, read the envelope, build the event.
fn prepare(v: &Verifier, headers: &HeaderMap) -> NewEvent {
    let verified = v
        .verify(headers, BODY, 0)
        .unwrap_or_else(|e| unreachable!("{e}"));
    let env = Envelope::read(BODY);
    NewEvent {
        outbox: None,
        source: "seon-idv".into(),
        event_type: env.event_type,
        event_version: 1,
        dedupe_key: verified.dedupe_key,
        legacy_request_id_dedupe: verified.stored_by_request_id,
        vendor_time: env.vendor_time,
        headers: verified.headers,
        body_sha256: sha256(BODY),
        body: bytes::Bytes::from_static(BODY),
        encoded: None,
    }
}

fn pure(c: &mut Criterion) {
    let v = verifier();
    let headers = signed_headers("req-1");
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("verify_seon_3kb", |b| {
        b.iter(|| v.verify(black_box(&headers), black_box(BODY), 0));
    });
    g.bench_function("envelope_3kb", |b| {
        b.iter(|| Envelope::read(black_box(BODY)));
    });
    g.bench_function("verify_and_prepare_3kb", |b| {
        b.iter(|| prepare(&v, black_box(&headers)));
    });
    g.finish();
}

fn durable(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(writer) = LogWriter::open(dir.path().join("bench.db"), WriterConfig::default()) else {
        return;
    };
    let v = verifier();
    let mut n = 0u64;
    let mut g = c.benchmark_group("ingest_durable");
    g.sample_size(20);
    g.bench_function("verify_append_1", |b| {
        b.iter(|| {
            n += 1;
            let ev = prepare(&v, &signed_headers(&format!("one-{n}")));
            rt.block_on(writer.append(ev))
        });
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("verify_append_32_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tasks = Vec::with_capacity(32);
                for _ in 0..32 {
                    n += 1;
                    let ev = prepare(&v, &signed_headers(&format!("many-{n}")));
                    let w = writer.clone();
                    tasks.push(tokio::spawn(async move { w.append(ev).await }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
    });
    g.finish();
    rt.block_on(writer.close());
}

criterion_group!(benches, pure, durable);
criterion_main!(benches);
