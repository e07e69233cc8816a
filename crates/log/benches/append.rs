//! Criterion bench of the store alone: `append_batch` of N SEON-sized events in one
//! transaction on a real file (WAL, synchronous=FULL, so one fdatasync per batch). Shows the
//! fixed cost of a commit against the cost of a row.
//!
//! Also the body codec: LZ4 encoding (on the HTTP worker, before the append) and decoding (each
//! read, and every entry of a replay) of the same 2.9 KB body.
//!
//! `cargo bench -p verdict-log --bench append`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use verdict_log::{EncodedBody, EventStore, NewEvent, SqliteLog, decode_body_into, sha256};

const BODY: &[u8] = include_bytes!("../../../fixtures/seon/session_finished_approved.json");

fn append(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(mut log) = SqliteLog::open(dir.path().join("bench.db")) else {
        return;
    };
    let mut n = 0u64;
    let mut g = c.benchmark_group("append_batch");
    g.sample_size(20);
    for batch in [1usize, 8, 32] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let events: Vec<NewEvent> = (0..batch)
                    .map(|_| {
                        n += 1;
                        let mut e = NewEvent::new(
                            "seon-idv",
                            "idv:session_finished",
                            format!("request-id:bench-{n}"),
                            bytes::Bytes::from_static(BODY),
                        );
                        e.encode();
                        e
                    })
                    .collect();
                let refs: Vec<&NewEvent> = events.iter().collect();
                log.append_batch(&refs)
            });
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let raw = bytes::Bytes::from_static(BODY);
    let of = sha256(&raw);
    let encoded = EncodedBody::encode(&raw, of);
    let (encoding, stored) = encoded.stored();
    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| EncodedBody::encode(&raw, of));
    });
    let mut out = Vec::new();
    g.bench_function("decode", |b| {
        b.iter(|| decode_body_into(encoding as i64, stored, &mut out));
    });
    g.finish();
}

criterion_group!(benches, append, codec);
criterion_main!(benches);
