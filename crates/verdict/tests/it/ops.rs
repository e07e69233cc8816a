//! What an operator relies on: `/metrics`, JSON logs with a request id, secrets never
//! logged, and an OpenAPI document that lists every route the server has.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn policy_config() -> String {
    format!(
        "[policy]\npath = {:?}\n\n[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"tok-alice-secret-0123456789abcdef\"\n",
        format!("{ROOT}/config/policies/kyc.toml")
    )
}

/// The value of the first sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_appends_decisions_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("kyc.toml");
    std::fs::copy(format!("{ROOT}/config/policies/kyc.toml"), &policy).unwrap();
    std::fs::write(
        dir.path().join("verdict.toml"),
        config_text(
            &dir.path().join("verdict.db"),
            &format!("[policy]\npath = {:?}\n", policy.display().to_string()),
        ),
    )
    .unwrap();
    let s = Server::start_in(dir);
    let body = seon_body("m-1", "APPROVED");
    assert_eq!(s.post_seon(&body, Some("r-1"), SEON_SECRET).await.0, 200);
    assert_eq!(s.post_seon(&body, Some("r-1"), SEON_SECRET).await.0, 200); // duplicate
    assert_eq!(s.post_seon(&body, Some("r-2"), "wrong").await.0, 401);
    assert_eq!(
        s.post("seon-idv", &[], r#"{"event":"ping"}"#).await.0,
        200,
        "ping"
    );
    let odd = r#"{"event":"idv:something_new","details":{"sessionId":"m-1"}}"#;
    assert_eq!(s.post_seon(odd, Some("r-3"), SEON_SECRET).await.0, 200);
    assert_eq!(s.post("nope", &[], "{}").await.0, 404);

    let text = eventually(
        "the decision and the quarantined entry counted",
        async || {
            let t = s.metrics().await;
            (sample(&t, "verdict_decisions_total", &[("source", "policy")]).is_some()
                && sample(&t, "verdict_quarantined_total", &[]).is_some())
            .then_some(t)
        },
    )
    .await;
    let w = |outcome: &str| {
        sample(
            &text,
            "verdict_webhooks_total",
            &[("source", "seon-idv"), ("outcome", outcome)],
        )
    };
    assert_eq!(w("accepted"), Some(2.0), "{text}");
    assert_eq!(w("duplicate"), Some(1.0));
    assert_eq!(w("ping"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "verdict_webhooks_total",
            &[("outcome", "rejected"), ("reason", "bad_signature")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "verdict_webhooks_total",
            &[("source", "-"), ("outcome", "unknown_source")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "verdict_quarantined_total", &[]), Some(1.0));
    assert!(sample(&text, "verdict_append_batch_events_count", &[]).unwrap() >= 3.0);
    assert!(
        sample(
            &text,
            "verdict_append_batch_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some()
    );
    assert!(sample(&text, "verdict_log_head_seq", &[]).unwrap() >= 4.0);
    assert!(sample(&text, "verdict_projector_lag_seqs", &[]).is_some());

    // A policy that does not compile: a failed reload is counted (and the old one stays).
    std::fs::write(&policy, "[policy]\nname = \"broken\"\n").unwrap();
    let text = eventually("the failed reload counted", async || {
        let t = s.metrics().await;
        sample(&t, "verdict_policy_reloads_total", &[("result", "failed")]).map(|_| t)
    })
    .await;
    assert!(text.contains("# HELP verdict_policy_reloads_total"));
    let (status, _) = get(&s, "/readyz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_request_id_and_never_a_secret() {
    let sink_secret = "whsec_c2luay1rZXktdGhhdC1tdXN0LW5vdC1sZWFr"; // base64("sink-key-that-must-not-leak")
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("verdict.toml"),
        config_text(
            &dir.path().join("verdict.db"),
            &format!(
                "{}\n[[sinks]]\nname = \"backend\"\nurl = \"http://user:sink-password-xyz@127.0.0.1:9/decisions?token=sink-query-token\"\nsecret = \"env:SINK_SECRET\"\n",
                policy_config()
            ),
        ),
    )
    .unwrap();
    let s = Server::start_opts(
        dir,
        &["--log-format", "json"],
        &[("RUST_LOG", "trace"), ("SINK_SECRET", sink_secret)],
    );
    let body = seon_body("j-1", "APPROVED");
    assert_eq!(
        s.post_seon(&body, Some("req-json-1"), SEON_SECRET).await.0,
        200
    );
    assert_eq!(
        s.post_seon(
            &body,
            Some("req-json-2"),
            SEON_OLD_SECRET.repeat(2).as_str()
        )
        .await
        .0,
        401
    );
    let (status, _) = get(
        &s,
        "/v1/sessions/j-1",
        Some("tok-alice-secret-0123456789abcdef"),
    )
    .await;
    assert!(status == 200 || status == 404);
    let (status, _) = get(&s, "/v1/sessions/j-1", Some("not-a-token")).await;
    assert_eq!(status, 401);
    // Let the dispatcher try the (closed) sink once, so its errors are logged too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, dir) = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();

    // Every line is a JSON object; the rejected delivery's line carries its request id.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 10);
    let rejected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "delivery rejected")
        .expect("the rejection is logged");
    assert_eq!(rejected["span"]["request_id"], "req-json-2", "{rejected}");
    assert_eq!(rejected["level"], "WARN");

    // No secret in any form, even at trace level.
    for secret in [
        SEON_SECRET,
        SEON_OLD_SECRET,
        "tok-alice-secret-0123456789abcdef",
        sink_secret,
        "c2luay1rZXktdGhhdC1tdXN0LW5vdC1sZWFr",
        "sink-key-that-must-not-leak",
        "sink-password-xyz",
        "sink-query-token",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log");
    }
    // Nor in what is stored of the failed attempts (the sink URL's credentials).
    let out = verdict(
        &dir.path().join("verdict.toml"),
        &["deliveries", "list", "--all", "--json"],
    );
    let listed = text(&out.stdout);
    assert!(listed.contains("last_error"), "{listed}");
    assert!(
        listed.contains("\"last_error\":\""),
        "an attempt failed: {listed}"
    );
    for secret in ["sink-password-xyz", "sink-query-token"] {
        assert!(!listed.contains(secret), "{secret} is stored: {listed}");
    }
}

/// Every `.route("...")` in the server's sources.
fn served_routes() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for file in [
        "crates/verdict/src/serve.rs",
        "crates/web/src/api.rs",
        "crates/web/src/ui.rs",
        "crates/ingress/src/handler.rs",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = rest[at + ".route(".len()..].trim_start();
            if let Some(quoted) = rest.strip_prefix('"')
                && let Some(end) = quoted.find('"')
            {
                routes.insert(quoted[..end].to_owned());
            }
        }
    }
    routes
}

#[test]
fn openapi_parses_and_lists_every_route() {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/openapi.yaml")).unwrap();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let served = served_routes();
    assert!(served.len() >= 10, "{served:?}");
    assert_eq!(documented, served);
    for (path, item) in paths {
        let ops = item.as_object().unwrap();
        assert!(!ops.is_empty(), "{path}");
        for (method, op) in ops {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }
}
