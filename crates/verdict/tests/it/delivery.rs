//! Delivery of decisions to a real HTTP sink on a free port: signatures checked by an
//! independent implementation, retries, Retry-After, dead letters and redrive, a restart in the
//! middle of a schedule, per-session order, superseded decisions, 410, and the pull feed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

const SINK_SECRET: &str = "whsec_c2luay1zZWNyZXQtZm9yLXRlc3Rz"; // base64("sink-secret-for-tests")
const SINK_KEY: &[u8] = b"sink-secret-for-tests";

/// One request the sink received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    at: Instant,
    at_ms: i64,
    headers: HeaderMap,
    body: Vec<u8>,
    pub(crate) json: Value,
}

pub(crate) type Responder = dyn Fn(&Received, &[Received]) -> (u16, Option<String>) + Send + Sync;

/// A decision sink: records every request, answers as its responder says (status, Retry-After).
pub(crate) struct Sink {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Received>>>,
    responder: Arc<Mutex<Arc<Responder>>>,
}

impl Sink {
    pub(crate) async fn start(responder: Arc<Responder>) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let responder = Arc::new(Mutex::new(responder));
        let (r, a) = (Arc::clone(&received), Arc::clone(&responder));
        let app = axum::Router::new().route(
            "/decisions",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (received, responder) = (Arc::clone(&r), Arc::clone(&a));
                async move {
                    let got = Received {
                        at: Instant::now(),
                        at_ms: now_ms(),
                        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        headers,
                        body: body.to_vec(),
                    };
                    let respond = Arc::clone(&responder.lock().unwrap());
                    let earlier = received.lock().unwrap().clone();
                    let asked = got.clone();
                    // On the blocking pool: a responder may hold a request (a test waits with
                    // it), which on a runtime worker could stall tasks queued behind it.
                    let (status, retry_after) =
                        tokio::task::spawn_blocking(move || respond(&asked, &earlier))
                            .await
                            .unwrap();
                    received.lock().unwrap().push(got);
                    let mut resp = axum::response::Response::new(axum::body::Body::from("ok"));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(ra) = retry_after {
                        resp.headers_mut()
                            .insert("retry-after", ra.parse().unwrap());
                    }
                    resp
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/decisions", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            responder,
        }
    }

    fn respond(&self, responder: Arc<Responder>) {
        *self.responder.lock().unwrap() = responder;
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, n: usize) -> Vec<Received> {
        eventually(what, async || {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

pub(crate) fn ok() -> Arc<Responder> {
    Arc::new(|_: &Received, _: &[Received]| (200, None))
}

fn always(status: u16) -> Arc<Responder> {
    Arc::new(move |_: &Received, _: &[Received]| (status, None))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn config(sink: &Sink, delivery: &str) -> String {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    format!(
        "[policy]\npath = {policy:?}\n\n[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"tok-alice-0123456789abcdef0123456789\"\n\n\
         [[sinks]]\nname = \"backend\"\nurl = {:?}\nsecret = {SINK_SECRET:?}\n\n[delivery]\n{delivery}\n",
        sink.url
    )
}

/// Checks the Standard Webhooks headers with code written here (HMAC over id.ts.body).
fn check_signature(r: &Received) {
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_owned();
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let expected = format!(
        "v1,{}",
        b64(&hmac(
            SINK_KEY,
            &[id.as_bytes(), b".", ts.as_bytes(), b".", &r.body]
        ))
    );
    assert_eq!(sig, expected, "signature over id.timestamp.body");
    assert_eq!(id, r.json["decision_id"].as_str().unwrap());
    assert!((ts.parse::<i64>().unwrap() - now()).abs() < 60);
    assert_eq!(h("content-type"), "application/json");
}

/// The state of every delivery, newest first.
fn states(s: &Server) -> Vec<String> {
    deliveries(s, &["--all"])
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect()
}

fn deliveries(s: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["deliveries", "list", "--json"];
    all.extend_from_slice(args);
    let out = verdict(&s.config(), &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn finish(s: &Server, session: &str) {
    let (status, _) = s
        .post_seon(
            &seon_body(session, "APPROVED"),
            Some(&format!("req-{session}")),
            SEON_SECRET,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_the_sink_signed() {
    let sink = Sink::start(ok()).await;
    let s = Server::start_with(&config(&sink, ""));
    finish(&s, "sess-1").await;
    let got = sink.wait_for("the decision at the sink", 1).await;
    let r = &got[0];
    check_signature(r);
    // verdict's own receiving side (the ingress verifier) agrees.
    let v = verdict_ingress::signature::Verifier::new(
        verdict_ingress::signature::Scheme::StandardWebhooks,
        None,
        &[SINK_SECRET],
        300,
    )
    .unwrap();
    assert!(v.verify(&r.headers, &r.body, now()).is_ok());
    let d = &r.json;
    assert_eq!(d["session_id"], "sess-1");
    assert_eq!(d["source"], "policy");
    assert!(d["seq"].as_u64().unwrap() > d["trigger_seq"].as_u64().unwrap());
    for field in [
        "action",
        "rules",
        "reasons",
        "policy",
        "decided_at",
        "decision_id",
    ] {
        assert!(d.get(field).is_some(), "{field} in {d}");
    }
    // The decision matches the session's current one (once the projector has written it: the
    // decision can reach the sink before the session's row is flushed).
    eventually("the session's current decision", async || {
        let (_, session) = get(
            &s,
            "/v1/sessions/sess-1",
            Some("tok-alice-0123456789abcdef0123456789"),
        )
        .await;
        (session["decision"]["decision_id"] == d["decision_id"]).then_some(())
    })
    .await;
    let rows = eventually("the delivery recorded", async || {
        let rows = deliveries(&s, &["--all"]);
        (rows.first().is_some_and(|r| r["state"] == "delivered")).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[0]["last_status"], 200);
    // One delivery only, even after a while and a duplicate webhook.
    finish(&s, "sess-1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_and_retry_after_is_honoured() {
    // 500, then 503 with Retry-After: 5, then 200.
    let sink = Sink::start(Arc::new(
        |_: &Received, earlier: &[Received]| match earlier.len() {
            0 => (500, None),
            1 => (503, Some("5".into())),
            _ => (200, None),
        },
    ))
    .await;
    let s = Server::start_with(&config(&sink, "initial_backoff_ms = 100\njitter = 0.0\n"));
    finish(&s, "sess-r").await;
    let got = sink.wait_for("three attempts", 3).await;
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    assert!(
        first_gap < Duration::from_millis(4500),
        "backoff, not Retry-After: {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(4990),
        "Retry-After: 5 honoured: {second_gap:?}"
    );
    for r in &got {
        check_signature(r);
        assert_eq!(r.json["decision_id"], got[0].json["decision_id"]);
    }
    let rows = eventually("delivered after 3 attempts", async || {
        let rows = deliveries(&s, &["--all"]);
        rows.first()
            .is_some_and(|r| r["state"] == "delivered")
            .then_some(rows)
    })
    .await;
    assert_eq!(rows[0]["attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_redriven() {
    let sink = Sink::start(always(500)).await;
    let s = Server::start_with(&config(
        &sink,
        "initial_backoff_ms = 50\njitter = 0.0\nmax_attempts = 2\n",
    ));
    finish(&s, "sess-d").await;
    let dead = eventually("a dead letter", async || {
        let rows = deliveries(&s, &["--dead"]);
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["last_status"], 500);
    assert_eq!(sink.received().len(), 2);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"verdict_sink_dead_letters_total{sink="backend"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"verdict_sink_attempts_total{sink="backend",outcome="retry"} 2"#),
        "{metrics}"
    );
    // The table names it too.
    let out = verdict(&s.config(), &["deliveries", "list", "--dead"]);
    assert!(text(&out.stdout).contains("dead"), "{}", text(&out.stdout));

    sink.respond(ok());
    let out = verdict(&s.config(), &["deliveries", "retry", "--all-dead"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 dead deliveries queued again"));
    let got = sink.wait_for("the redriven delivery", 3).await;
    check_signature(&got[2]);
    eventually("delivered", async || {
        deliveries(&s, &["--all"])
            .first()
            .is_some_and(|r| r["state"] == "delivered")
            .then_some(())
    })
    .await;
    assert!(deliveries(&s, &["--dead"]).is_empty());
    // Redriving by id: an unknown id is exit 1; a delivered one is refused.
    let id = deliveries(&s, &["--all"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    assert_eq!(
        verdict(&s.config(), &["deliveries", "retry", "9999"])
            .status
            .code(),
        Some(1)
    );
    let out = verdict(&s.config(), &["deliveries", "retry", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("delivered already"));
    assert_eq!(
        verdict(&s.config(), &["deliveries", "retry"]).status.code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_schedule() {
    let sink = Sink::start(always(500)).await;
    let s = Server::start_with(&config(&sink, "initial_backoff_ms = 3000\njitter = 0.0\n"));
    finish(&s, "sess-x").await;
    sink.wait_for("the first attempt", 1).await;
    let row = eventually("the failed attempt recorded", async || {
        deliveries(&s, &[]).into_iter().find(|r| r["attempts"] == 1)
    })
    .await;
    let (status, dir) = s.terminate();
    assert!(status.success());
    let conn = rusqlite::Connection::open(dir.path().join("verdict.db")).unwrap();
    let (attempts, next): (i64, i64) = conn
        .query_row(
            "SELECT attempts, next_attempt_at FROM outbox WHERE id = ?1",
            [row["id"].as_i64().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(attempts, 1);
    drop(conn);
    sink.respond(ok());
    let s = Server::start_in(dir);
    let got = sink
        .wait_for("the second attempt after the restart", 2)
        .await;
    // Not at start-up: at the recorded time (same clock; 50 ms for rounding).
    assert!(
        got[1].at_ms >= next - 50,
        "sent {} ms before its time",
        next - got[1].at_ms
    );
    let rows = eventually("delivered", async || {
        let rows = deliveries(&s, &["--all"]);
        rows.first()
            .is_some_and(|r| r["state"] == "delivered")
            .then_some(rows)
    })
    .await;
    assert_eq!(rows[0]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_order_holds_while_other_sessions_proceed() {
    // Session A's first decision fails until B's decision has arrived: A's second decision must
    // wait for it, B must not (if B waited behind A, neither would ever be delivered).
    let sink = Sink::start(Arc::new(|r: &Received, earlier: &[Received]| {
        let b_arrived = earlier.iter().any(|e| e.json["session_id"] == "sess-b");
        if r.json["session_id"] == "sess-a" && !b_arrived {
            (500, None)
        } else {
            (200, None)
        }
    }))
    .await;
    let s = Server::start_with(&config(
        &sink,
        "initial_backoff_ms = 300\njitter = 0.0\nsupersede = false\n",
    ));
    finish(&s, "sess-a").await;
    sink.wait_for("A's first attempt", 1).await;
    let (status, _) = post_override(
        &s,
        "sess-a",
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "decline", "reason": "document forged"}),
    )
    .await;
    assert_eq!(status, 200);
    finish(&s, "sess-b").await;
    let got = eventually("B, then both of A's decisions", async || {
        let got = sink.received();
        got.iter()
            .any(|r| r.json["session_id"] == "sess-a" && r.json["source"] == "analyst")
            .then_some(got)
    })
    .await;
    let order: Vec<(String, String, u64)> = got
        .iter()
        .map(|r| {
            (
                r.json["session_id"].as_str().unwrap().to_owned(),
                r.json["source"].as_str().unwrap().to_owned(),
                r.json["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    // A: its policy decision, failed at least once and then delivered (the first attempt
    // after B, which the sink accepts), and only then the analyst's; nothing of A after that.
    let a: Vec<&str> = order
        .iter()
        .filter(|o| o.0 == "sess-a")
        .map(|o| o.1.as_str())
        .collect();
    let (last, policy) = a.split_last().unwrap();
    assert_eq!(*last, "analyst", "{order:?}");
    assert!(
        policy.len() >= 2 && policy.iter().all(|s| *s == "policy"),
        "{order:?}"
    );
    let b_at = order.iter().position(|o| o.0 == "sess-b").unwrap();
    let analyst_at = order.iter().position(|o| o.1 == "analyst").unwrap();
    assert!(
        order[b_at..analyst_at]
            .iter()
            .any(|o| o.0 == "sess-a" && o.1 == "policy"),
        "A's policy decision delivered before its analyst decision: {order:?}"
    );
    // B went ahead while A was retried (A was refused until B arrived), once.
    assert_eq!(
        order.iter().filter(|o| o.0 == "sess-b").count(),
        1,
        "{order:?}"
    );
}

/// A newer decision that arrives while the older one's attempt is in flight supersedes the
/// older one as soon as that attempt has failed, not when its backoff runs out (the newer one
/// waits behind it until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_in_flight_when_a_newer_one_arrives_is_superseded_once_it_fails() {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(Some((started_tx, release_rx)));
    // The first request is held until the test releases it, then refused; the others taken.
    let responder: Arc<Responder> = Arc::new(move |_: &Received, earlier: &[Received]| {
        if earlier.is_empty()
            && let Some((started, release)) = gate.lock().unwrap().take()
        {
            let _ = started.send(());
            let _ = release.recv_timeout(Duration::from_secs(90));
            return (500, None);
        }
        (200, None)
    });
    let sink = Sink::start(responder).await;
    // The attempt held at the sink must not time out at verdict's end meanwhile (a timeout is
    // a failed attempt too, and the newer decision would go out before the test looks).
    let s = Server::start_with(&config(
        &sink,
        "initial_backoff_ms = 30000\njitter = 0.0\ntimeout_secs = 120\n",
    ));
    finish(&s, "sess-f").await;
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the first attempt reached the sink");
    let (status, _) = post_override(
        &s,
        "sess-f",
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "decline", "reason": "forged"}),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the newer decision queued behind", async || {
        (states(&s) == ["pending", "pending"]).then_some(())
    })
    .await;
    let released = Instant::now();
    release_tx.send(()).unwrap();
    eventually("superseded and delivered", async || {
        (states(&s) == ["delivered", "superseded"]).then_some(())
    })
    .await;
    let got = sink.received();
    assert_eq!(got.len(), 2, "the refused attempt and the newer decision");
    assert_eq!(got[1].json["source"], "analyst");
    // Well before the refused one's 30 s backoff.
    assert!(got[1].at - released < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_undelivered_decision_is_superseded() {
    let sink = Sink::start(always(500)).await;
    let s = Server::start_with(&config(&sink, "initial_backoff_ms = 30000\njitter = 0.0\n"));
    finish(&s, "sess-s").await;
    sink.wait_for("the first attempt", 1).await;
    sink.respond(ok());
    let (status, _) = post_override(
        &s,
        "sess-s",
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "decline", "reason": "forged"}),
    )
    .await;
    assert_eq!(status, 200);
    let rows = eventually("superseded and delivered", async || {
        let rows = deliveries(&s, &["--all"]);
        let states: Vec<&str> = rows.iter().map(|r| r["state"].as_str().unwrap()).collect();
        (states == ["delivered", "superseded"]).then_some(rows)
    })
    .await;
    assert_eq!(rows[0]["attempts"], 1);
    let got = sink.received();
    assert_eq!(got.last().unwrap().json["source"], "analyst");
    // Superseded at once, not when the stale one's 30 s backoff ran out.
    let waited = got.last().unwrap().at - got[0].at;
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    assert!(
        got.iter()
            .filter(|r| r.json["source"] == "policy")
            .all(|r| r.at < got.last().unwrap().at),
        "the stale decision is not sent after the new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_sink_until_enabled() {
    let sink = Sink::start(always(410)).await;
    let s = Server::start_with(&config(&sink, "initial_backoff_ms = 50\n"));
    finish(&s, "sess-g").await;
    sink.wait_for("the 410", 1).await;
    let out = eventually("the sink disabled", async || {
        let out = text(&verdict(&s.config(), &["deliveries", "list"]).stdout);
        out.contains("DISABLED").then_some(out)
    })
    .await;
    assert!(out.contains("sink backend"), "{out}");
    // More decisions wait; nothing is dead-lettered.
    finish(&s, "sess-h").await;
    eventually("two pending", async || {
        (deliveries(&s, &[]).len() == 2).then_some(())
    })
    .await;
    assert_eq!(sink.received().len(), 1);
    sink.respond(ok());
    let out = verdict(&s.config(), &["deliveries", "enable", "backend"]);
    assert!(out.status.success());
    sink.wait_for("both after enable", 3).await;
    assert!(s.stderr().contains("410 Gone"), "{}", s.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_feed_long_polls_and_wakes_promptly() {
    let s = Server::start_with(&format!(
        "[policy]\npath = {:?}\n\n[[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"tok-r-0123456789abcdef0123456789abcd\"\n",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/policies/kyc.toml"
        )
    ));
    finish(&s, "sess-p1").await;
    let first = eventually("the first decision in the feed", async || {
        let (_, v) = get(
            &s,
            "/v1/decisions?after=0",
            Some("tok-r-0123456789abcdef0123456789abcd"),
        )
        .await;
        (!v["decisions"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    let d = &first["decisions"][0];
    assert_eq!(d["session_id"], "sess-p1");
    let next = first["next"].as_u64().unwrap();
    assert!(next >= d["seq"].as_u64().unwrap());
    // Nothing new: an immediate answer without wait, the same cursor.
    let (status, v) = get(
        &s,
        &format!("/v1/decisions?after={next}"),
        Some("tok-r-0123456789abcdef0123456789abcd"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["decisions"], json!([]));
    assert_eq!(v["next"].as_u64().unwrap(), next);
    // A long poll is answered as soon as the next decision is committed.
    let url = s.url(&format!("/v1/decisions?after={next}&wait=30"));
    let http = client();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let v: Value = http
            .get(url)
            .bearer_auth("tok-r-0123456789abcdef0123456789abcd")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the long poll waits");
    let posted = Instant::now();
    finish(&s, "sess-p2").await;
    let (v, answered) = poll.await.unwrap();
    assert_eq!(v["decisions"][0]["session_id"], "sess-p2");
    assert!(
        answered - posted < Duration::from_secs(20),
        "woken by the commit, not the 30 s timeout: {:?}",
        answered - started
    );
    // 401 without a token.
    let (status, _) = get(&s, "/v1/decisions", None).await;
    assert_eq!(status, 401);
    // A long poll ends at shutdown: SIGTERM is not held up by it.
    let url = s.url("/v1/decisions?after=1000000&wait=60");
    let pending = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth("tok-r-0123456789abcdef0123456789abcd")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(1000)).await; // the request is read by then
    let stopping = Instant::now();
    let (status, _dir) = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(status.success());
    assert!(stopping.elapsed() < Duration::from_secs(20));
    assert_eq!(pending.await.unwrap().ok(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriving_never_sends_an_old_decision_after_a_newer_one() {
    let sink = Sink::start(always(500)).await;
    let s = Server::start_with(&config(&sink, "max_attempts = 1\n"));
    finish(&s, "sess-o").await;
    let dead = eventually("the policy decision dead", async || {
        deliveries(&s, &["--dead"]).into_iter().next()
    })
    .await;
    sink.respond(ok());
    let (status, _) = post_override(
        &s,
        "sess-o",
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "approve", "reason": "checked by hand"}),
    )
    .await;
    assert_eq!(status, 200);
    sink.wait_for("the analyst decision", 2).await;
    eventually("the analyst decision delivered", async || {
        deliveries(&s, &["--all"])
            .first()
            .is_some_and(|r| r["state"] == "delivered")
            .then_some(())
    })
    .await;
    let out = verdict(&s.config(), &["deliveries", "retry", "--all-dead"]);
    let said = text(&out.stdout);
    assert!(said.contains("0 dead deliveries queued again"), "{said}");
    assert!(said.contains("1 not queued"), "{said}");
    let id = dead["id"].as_i64().unwrap().to_string();
    let out = verdict(&s.config(), &["deliveries", "retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("newer decision"),
        "{}",
        text(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await; // a rescan would have sent it
    assert_eq!(
        sink.received().len(),
        2,
        "the old decision is not sent again"
    );
    assert_eq!(states(&s), ["delivered", "superseded"]);
}

/// A sink whose answer never ends (a 200 with an endless chunked body) does not hold a
/// delivery: at most 64 KiB of an answer is read, so the attempt is recorded delivered at once,
/// not when the attempt's timeout (10 s here) cuts the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_read_only_so_far() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/decisions", listener.local_addr().unwrap());
    let streamed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&streamed);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tcp.read(&mut buf).await; // the request (small)
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                let chunk = [b'x'; 65536];
                loop {
                    let sent = async {
                        tcp.write_all(b"10000\r\n").await?;
                        tcp.write_all(&chunk).await?;
                        tcp.write_all(b"\r\n").await
                    };
                    if sent.await.is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    let s = Server::start_with(&format!(
        "[policy]\npath = {policy:?}\n\n[[sinks]]\nname = \"backend\"\nurl = {url:?}\n\
         secret = {SINK_SECRET:?}\n\n[delivery]\ntimeout_secs = 10\n"
    ));
    let started = Instant::now();
    finish(&s, "endless-1").await;
    let delivered = eventually("the delivery recorded", async || {
        let states = states(&s);
        states.iter().any(|st| st == "delivered").then_some(states)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{delivered:?} after {:?}",
        started.elapsed()
    );
    // The sink could send far more than was read; verdict stopped reading (socket buffers
    // take a few megabytes at most).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = streamed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 << 20, "{sent} bytes streamed");
}
