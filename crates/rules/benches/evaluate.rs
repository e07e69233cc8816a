//! Criterion bench of the shipped policy (config/policies/kyc.toml) on a SEON payload, binding
//! of `details` and `session` included.
//!
//! `cargo bench -p verdict-rules --bench evaluate`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use verdict_rules::{Facts, Policy};

const POLICY: &str = include_str!("../../../config/policies/kyc.toml");
const BODY: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");
const DECLINED: &str =
    include_str!("../../../fixtures/seon/session_finished_declined_forgery.json");

fn evaluate(c: &mut Criterion) {
    let Ok(policy) = Policy::parse(POLICY) else {
        return;
    };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(BODY) else {
        return;
    };
    let details = body.get("details").cloned().unwrap_or_default();
    let session = serde_json::json!({"vendor_status": "APPROVED", "event_count": 1});
    let facts = Facts::new(details, session);
    let mut g = c.benchmark_group("rules");
    g.bench_function("kyc_policy_17_rules_seon_approved", |b| {
        b.iter(|| policy.evaluate(black_box(&facts)));
    });
    if let Ok(declined) = serde_json::from_str::<serde_json::Value>(DECLINED) {
        let details = declined.get("details").cloned().unwrap_or_default();
        let session = serde_json::json!({"vendor_status": "DECLINED", "event_count": 1});
        let facts = Facts::new(details, session);
        g.bench_function("kyc_policy_17_rules_seon_declined_forgery", |b| {
            b.iter(|| policy.evaluate(black_box(&facts)));
        });
    }
    g.bench_function("parse_and_compile_kyc_policy", |b| {
        b.iter(|| Policy::parse(black_box(POLICY)));
    });
    g.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches, more);

fn parts(c: &mut Criterion) {
    let Ok(body) = serde_json::from_str::<serde_json::Value>(BODY) else {
        return;
    };
    let details = body.get("details").cloned().unwrap_or_default();
    let mut g = c.benchmark_group("rules_parts");
    g.bench_function("to_value_details", |b| {
        b.iter(|| cel::to_value(black_box(&details)));
    });
    let Ok(p) = cel::Program::compile(
        "details.documentCheckResult != null && details.documentCheckResult.photoForgeryCheckResult == \"FAIL\"",
    ) else {
        return;
    };
    let mut ctx = cel::Context::default();
    let Ok(v) = cel::to_value(&details) else {
        return;
    };
    let _ = ctx.add_variable("details", v);
    g.bench_function("one_rule_execute", |b| {
        b.iter(|| p.execute(black_box(&ctx)));
    });
    g.finish();
}

criterion_group!(more, parts);
