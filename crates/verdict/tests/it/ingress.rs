//! `POST /webhooks/{source}` against the real server.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};

use serde_json::json;

use crate::support::*;

/// A delivery: headers and body, per scheme.
struct Delivery {
    source: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn seon(body: &str, secret: &str, id: &str) -> Delivery {
    Delivery {
        source: "seon-idv",
        headers: vec![
            (
                "X-Seon-Signature",
                hex::encode(hmac(secret.as_bytes(), &[body.as_bytes()])),
            ),
            ("Request-Id", id.to_owned()),
        ],
        body: body.to_owned(),
    }
}

fn legacy(body: &str, secret: &str) -> Delivery {
    let sig = hex::encode(hmac(secret.as_bytes(), &[body.as_bytes()]));
    Delivery {
        source: "seon-fraud",
        headers: vec![("Digest", format!("SHA-256={sig}"))],
        body: body.to_owned(),
    }
}

fn standard(body: &str, secret: &str, id: &str, ts: i64) -> Delivery {
    let key =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &secret[6..]).unwrap();
    let ts_s = ts.to_string();
    let sig = b64(&hmac(
        &key,
        &[id.as_bytes(), b".", ts_s.as_bytes(), b".", body.as_bytes()],
    ));
    Delivery {
        source: "std",
        headers: vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts_s),
            ("webhook-signature", format!("v1,{sig}")),
        ],
        body: body.to_owned(),
    }
}

fn stripe(body: &str, secret: &str, ts: i64) -> Delivery {
    let sig = hex::encode(hmac(
        secret.as_bytes(),
        &[ts.to_string().as_bytes(), b".", body.as_bytes()],
    ));
    Delivery {
        source: "stripe",
        headers: vec![("Stripe-Signature", format!("t={ts},v1={sig}"))],
        body: body.to_owned(),
    }
}

impl Delivery {
    async fn send(&self, s: &Server) -> (u16, serde_json::Value) {
        let headers: Vec<(&str, String)> =
            self.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
        s.post(self.source, &headers, self.body.clone()).await
    }

    fn tampered(mut self) -> Self {
        self.body = self.body.replacen("APPROVED", "APPROVEX", 1);
        self
    }

    fn without(mut self, header: &str) -> Self {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(header));
        self
    }
}

#[tokio::test]
async fn every_scheme_accepts_good_signatures_and_rejects_bad_ones() {
    let s = Server::start();
    let now = now();
    let body = |n: u32| seon_body(&format!("s-{n}"), "APPROVED");
    let stripe_body = |n: u32| {
        format!(
            r#"{{"id":"evt_{n}","type":"identity.verification_session.verified","created":{now},"data":{{"status":"APPROVED"}}}}"#
        )
    };

    // Right signatures: stored, gapless seqs.
    let good = [
        seon(&body(1), SEON_SECRET, "r-1"),
        legacy(&body(2), LEGACY_SECRET),
        standard(&body(3), SW_SECRET, "msg_3", now),
        stripe(&stripe_body(4), STRIPE_SECRET, now),
    ];
    for (i, d) in good.iter().enumerate() {
        let (status, json) = d.send(&s).await;
        assert_eq!(
            (status, json.clone()),
            (200, json!({"status": "accepted", "seq": i + 1})),
            "{}",
            d.source
        );
    }

    // Wrong secret, one tampered byte, a missing header, a stale timestamp: 401, nothing stored.
    let bad = [
        ("seon wrong secret", seon(&body(10), "nope", "r-10")),
        (
            "seon tampered",
            seon(&body(11), SEON_SECRET, "r-11").tampered(),
        ),
        (
            "seon missing header",
            seon(&body(12), SEON_SECRET, "r-12").without("X-Seon-Signature"),
        ),
        ("legacy wrong secret", legacy(&body(13), "nope")),
        (
            "legacy tampered",
            legacy(&body(14), LEGACY_SECRET).tampered(),
        ),
        (
            "legacy missing header",
            legacy(&body(15), LEGACY_SECRET).without("Digest"),
        ),
        (
            "std wrong secret",
            standard(&body(16), "whsec_c2Vjb25kLXNlY3JldA==", "msg_16", now),
        ),
        (
            "std tampered",
            standard(&body(17), SW_SECRET, "msg_17", now).tampered(),
        ),
        (
            "std missing header",
            standard(&body(18), SW_SECRET, "msg_18", now).without("webhook-timestamp"),
        ),
        (
            "std stale",
            standard(&body(19), SW_SECRET, "msg_19", now - 600),
        ),
        (
            "std future",
            standard(&body(20), SW_SECRET, "msg_20", now + 600),
        ),
        (
            "stripe wrong secret",
            stripe(&stripe_body(21), "whsec_nope", now),
        ),
        (
            "stripe tampered",
            stripe(&stripe_body(22), STRIPE_SECRET, now).tampered(),
        ),
        (
            "stripe missing header",
            stripe(&stripe_body(23), STRIPE_SECRET, now).without("Stripe-Signature"),
        ),
        (
            "stripe stale",
            stripe(&stripe_body(24), STRIPE_SECRET, now - 301),
        ),
    ];
    for (what, d) in &bad {
        let (status, json) = d.send(&s).await;
        assert_eq!(status, 401, "{what}: {json}");
        assert!(json["error"].is_string(), "{what}: {json}");
    }
    assert_eq!(s.count(), 4, "a rejected delivery was stored");
}

#[tokio::test]
async fn rotation_accepts_every_configured_secret() {
    let s = Server::start();
    let (a, _) = s
        .post_seon(&seon_body("new", "APPROVED"), Some("r-new"), SEON_SECRET)
        .await;
    let (b, _) = s
        .post_seon(
            &seon_body("old", "APPROVED"),
            Some("r-old"),
            SEON_OLD_SECRET,
        )
        .await;
    let (c, _) = s
        .post_seon(
            &seon_body("gone", "APPROVED"),
            Some("r-gone"),
            "seon-secret-retired-1",
        )
        .await;
    assert_eq!((a, b, c), (200, 200, 401));
}

#[tokio::test]
async fn unsigned_ping_is_answered_and_not_stored() {
    let s = Server::start();
    let ping = include_str!("../../../../fixtures/seon/ping.json");
    let (status, json) = s.post("seon-idv", &[], ping).await;
    assert_eq!((status, json), (200, json!({"status": "ping"})));
    // Only SEON sources answer the ping; others demand a signature.
    assert_eq!(s.post("std", &[], ping).await.0, 401);
    assert_eq!(s.count(), 0);
}

#[tokio::test]
async fn a_retried_delivery_is_a_duplicate_forever_and_counted() {
    let s = Server::start();
    let body = seon_body("s-dup", "APPROVED");
    let (_, first) = s.post_seon(&body, Some("r-dup"), SEON_SECRET).await;
    let (_, other) = s
        .post_seon(
            &seon_body("s-other", "APPROVED"),
            Some("r-other"),
            SEON_SECRET,
        )
        .await;
    for _ in 0..3 {
        let (status, json) = s.post_seon(&body, Some("r-dup"), SEON_SECRET).await;
        assert_eq!(
            (status, json),
            (200, json!({"status": "duplicate", "seq": first["seq"]}))
        );
    }
    // Without a Request-Id the body's hash is the key.
    let (_, a) = s
        .post_seon(&seon_body("s-nokey", "REVIEW"), None, SEON_SECRET)
        .await;
    let (_, b) = s
        .post_seon(&seon_body("s-nokey", "REVIEW"), None, SEON_SECRET)
        .await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("accepted"), Some("duplicate"))
    );
    assert_eq!(a["seq"], b["seq"]);
    assert_eq!(other["seq"], 2);
    assert_eq!(s.count(), 3);
    let conn = rusqlite::Connection::open(s.db()).unwrap();
    let repeats: i64 = conn
        .query_row(
            "SELECT count FROM delivery_repeats WHERE seq = ?1",
            [first["seq"].as_i64()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(repeats, 3);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_nothing_is_stored() {
    let s = Server::start(); // max_body_bytes = 65536
    let big = format!(
        r#"{{"event":"idv:session_finished","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let (status, json) = s.post_seon(&big, Some("r-big"), SEON_SECRET).await;
    assert_eq!(status, 413, "{json}");

    // Chunked, with no Content-Length: the limit holds while streaming.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[big.as_bytes()]));
    write!(tcp, "POST /webhooks/seon-idv HTTP/1.1\r\nHost: {addr}\r\nX-Seon-Signature: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    for chunk in big.as_bytes().chunks(8192) {
        if write!(tcp, "{:x}\r\n", chunk.len())
            .and_then(|()| tcp.write_all(chunk))
            .and_then(|()| tcp.write_all(b"\r\n"))
            .is_err()
        {
            break; // the server may close early
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n");
    let mut resp = String::new();
    let _ = tcp.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert_eq!(s.count(), 0);
}

#[tokio::test]
async fn unknown_source_is_404() {
    let s = Server::start();
    let (status, json) = s.post("nope", &[], "{}").await;
    assert_eq!((status, json), (404, json!({"error": "unknown source"})));
}

#[tokio::test]
async fn a_signed_body_that_is_not_json_is_stored_verbatim() {
    let s = Server::start();
    let body: &[u8] = b"\xffnot json at all\x00";
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[body]));
    let (status, json) = s
        .post(
            "seon-idv",
            &[("X-Seon-Signature", sig), ("Request-Id", "r-bin".into())],
            body.to_vec(),
        )
        .await;
    assert_eq!(
        (status, json),
        (200, json!({"status": "accepted", "seq": 1}))
    );
    let conn = rusqlite::Connection::open(s.db()).unwrap();
    let (kind, stored): (String, Vec<u8>) = conn
        .query_row("SELECT type, body FROM events WHERE seq = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((kind.as_str(), stored.as_slice()), ("unknown", body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_deliveries_are_all_acknowledged_and_gapless() {
    let s = std::sync::Arc::new(Server::start());
    let mut tasks = Vec::new();
    for i in 0..500 {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.post_seon(
                &seon_body(&format!("c-{i}"), "APPROVED"),
                Some(&format!("rc-{i}")),
                SEON_SECRET,
            )
            .await
        }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        let (status, json) = t.await.unwrap();
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["status"], "accepted");
        assert!(seqs.insert(json["seq"].as_u64().unwrap()));
    }
    assert_eq!(seqs, (1..=500).collect::<HashSet<u64>>());
    assert_eq!(s.count(), 500);
    let out = verdict(&s.config(), &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[tokio::test]
async fn a_restart_keeps_everything_and_dedupe_survives_it() {
    let s = Server::start();
    for i in 0..3 {
        s.post_seon(
            &seon_body(&format!("r-{i}"), "APPROVED"),
            Some(&format!("rr-{i}")),
            SEON_SECRET,
        )
        .await;
    }
    let (status, dir) = s.terminate();
    assert!(status.success(), "SIGTERM must stop cleanly, got {status}");
    let s = Server::start_in(dir);
    assert_eq!(s.count(), 3);
    let (_, dup) = s
        .post_seon(&seon_body("r-1", "APPROVED"), Some("rr-1"), SEON_SECRET)
        .await;
    assert_eq!(dup, json!({"status": "duplicate", "seq": 2}));
    let (_, new) = s
        .post_seon(&seon_body("r-9", "APPROVED"), Some("rr-9"), SEON_SECRET)
        .await;
    assert_eq!(new, json!({"status": "accepted", "seq": 4}));
    let out = verdict(&s.config(), &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[tokio::test]
async fn health_and_readiness() {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    let s = Server::start_with(&format!("[policy]\npath = {policy:?}\n"));
    let get = |p: &str| s.http.get(s.url(p)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    // No policy: alive, ingesting, but not ready.
    let s = Server::start();
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        503
    );
}

async fn simulate(url: String, seed: &'static str) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args([
                "simulate",
                "--url",
                &url,
                "--secret",
                SEON_SECRET,
                "--sessions",
                "40",
            ])
            .args(["--duplicates", "0.3", "--reorder", "0.5", "--seed", seed])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_delivers_everything_with_duplicates_and_reordering() {
    let s = Server::start();
    let out = simulate(s.url("/webhooks/seon-idv"), "7").await;
    let summary = text(&out.stdout);
    assert!(out.status.success(), "{summary}{}", text(&out.stderr));
    let number = |label: &str| -> u64 {
        summary
            .split(label)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (sent, accepted, duplicates) =
        (number("sent "), number("accepted "), number("duplicates "));
    assert!(summary.contains("failures 0"), "{summary}");
    assert!(duplicates > 0 && accepted >= 40, "{summary}");
    assert_eq!(accepted + duplicates, sent, "{summary}");
    assert_eq!(s.count(), accepted as i64);
    assert!(verdict(&s.config(), &["log", "verify"]).status.success());

    // The same seed again: every delivery is a duplicate (same Request-Ids, same bodies).
    let again = simulate(s.url("/webhooks/seon-idv"), "7").await;
    assert!(
        text(&again.stdout).contains("accepted 0,"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(s.count(), accepted as i64);
}

/// The `seon` scheme keys a delivery on its body (the signed bytes), not on the unsigned
/// `Request-Id`: a captured body sent again under new ids is a duplicate, and a delivery stored
/// under its `Request-Id` by an earlier version (a log written with the old key) is still a
/// duplicate when retried after the upgrade, with or without a new id. Readers of `/v1/events`
/// never see the signature headers.
#[tokio::test]
async fn a_replayed_seon_body_is_a_duplicate_under_any_request_id_also_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("verdict.db");
    let token = "tok-reader-0123456789abcdef0123456789";
    std::fs::write(
        dir.path().join("verdict.toml"),
        config_text(
            &db,
            &format!("[[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"{token}\"\n"),
        ),
    )
    .unwrap();
    let old_body = seon_body("sess-old", "APPROVED");
    {
        // What an earlier verdict stored: the key `request-id:<id>`.
        use verdict_log::EventStore as _;
        let mut log = verdict_log::SqliteLog::open(&db).unwrap();
        let mut e = verdict_log::NewEvent::new(
            "seon-idv",
            "idv:session_finished",
            "request-id:old-1",
            old_body.clone(),
        );
        e.headers.insert("request-id".into(), "old-1".into());
        log.append_batch(&[&e]).unwrap();
    }
    let s = Server::start_in(dir);
    for id in [Some("old-1"), Some("replay-under-a-new-id"), None] {
        let (status, body) = s.post_seon(&old_body, id, SEON_SECRET).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"status": "duplicate", "seq": 1}), "{id:?}");
    }
    let new_body = seon_body("sess-new", "APPROVED");
    let (_, first) = s.post_seon(&new_body, Some("a"), SEON_SECRET).await;
    assert_eq!(first["status"], "accepted");
    for id in [Some("a"), Some("b"), None] {
        let (_, again) = s.post_seon(&new_body, id, SEON_SECRET).await;
        assert_eq!(
            again,
            json!({"status": "duplicate", "seq": first["seq"]}),
            "{id:?}"
        );
    }
    assert_eq!(s.count(), 2);
    let (status, events) = get(&s, "/v1/events?limit=10", Some(token)).await;
    assert_eq!(status, 200);
    let entries = events["events"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        let headers = e["headers"].as_object().unwrap();
        assert!(!headers.contains_key("x-seon-signature"), "{e}");
        assert!(headers.contains_key("request-id"), "{e}");
    }
}
