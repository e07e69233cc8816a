//! Criterion bench of the fold: read + apply of SEON-shaped events (the shipped fixture), over
//! many sessions, as `verdict replay` does in memory.
//!
//! `cargo bench -p verdict-projector --bench fold`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verdict_projector::{Projection, Recorded};

const BODY: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");
const SESSION: &str = "5b0f6a7e-2c1d-4d8e-9a11-0c3f7e2b9d10";

fn fold(c: &mut Criterion) {
    let bodies: Vec<String> = (0..1000)
        .map(|i| BODY.replace(SESSION, &format!("session-{i:06}")))
        .collect();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(bodies.len() as u64));
    g.bench_function("read_apply_1000_finished_3kb", |b| {
        b.iter(|| {
            let mut p = Projection::default();
            for (i, body) in bodies.iter().enumerate() {
                p.apply(&Recorded {
                    seq: i as u64 + 1,
                    source: "seon-idv",
                    event_type: "idv:session_finished",
                    recorded_at: 0,
                    vendor_time: Some(i as i64),
                    body: body.as_bytes(),
                });
            }
            p
        });
    });
    g.finish();
}

criterion_group!(benches, fold);
criterion_main!(benches);
