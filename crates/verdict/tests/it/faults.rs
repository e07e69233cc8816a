//! Proof under faults: SIGKILL under concurrent load, several times in one run, loses nothing
//! that was acknowledged; the chain stays intact; projections and deliveries converge.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::delivery::{Sink, ok};
use crate::support::*;

fn config(sink: &Sink) -> String {
    format!(
        "[policy]\npath = {:?}\n\n[[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"tok-r-0123456789abcdef0123456789abcd\"\n\n\
         [[sinks]]\nname = \"backend\"\nurl = {:?}\nsecret = \"whsec_c2luay1rZXktc2l4dGVlbiEh\"\n\n[delivery]\ninitial_backoff_ms = 100\n",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/policies/kyc.toml"
        ),
        sink.url
    )
}

/// Sends signed deliveries for new sessions from `workers` tasks until `stop` is set; records
/// the session of every delivery answered 200.
async fn load(
    url: String,
    workers: usize,
    round: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, acked, stop) = (url.clone(), Arc::clone(&acked), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let id = format!("crash-{round}-{w}-{n}");
                let body = seon_body(
                    &id,
                    if n.is_multiple_of(3) {
                        "DECLINED"
                    } else {
                        "APPROVED"
                    },
                );
                let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[body.as_bytes()]));
                let sent = http
                    .post(&url)
                    .header("X-Seon-Signature", sig)
                    .header("Request-Id", format!("req-{id}"))
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        // Only a complete 200 counts as acknowledged.
                        if r.text().await.is_ok_and(|t| t.contains("\"accepted\"")) {
                            acked.lock().unwrap().insert(id);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let sink = Sink::start(ok()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("verdict.toml"),
        config_text(&dir.path().join("verdict.db"), &config(&sink)),
    )
    .unwrap();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut dir = dir;
    // Kill points vary from round to round (fixed, so a failure can be replayed).
    for (round, run_ms) in [350u64, 700, 200, 500].into_iter().enumerate() {
        let s = Server::start_in(dir);
        let before = acked.lock().unwrap().len();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let traffic = tokio::spawn(load(
            s.url("/webhooks/seon-idv"),
            8,
            round,
            Arc::clone(&acked),
            Arc::clone(&stop),
        ));
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        // Under load from elsewhere the window may hold little traffic: kill only once this
        // round has some acknowledged deliveries at stake.
        eventually("deliveries acknowledged in this round", async || {
            (acked.lock().unwrap().len() >= before + 30).then_some(())
        })
        .await;
        dir = tokio::task::spawn_blocking(move || s.kill()).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        traffic.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little load to prove anything: {}",
        acked.len()
    );

    // The last start recovers: every acknowledged session is in the log, decided and delivered.
    let s = Server::start_in(dir);
    for id in &acked {
        let (status, _) = get(
            &s,
            &format!("/v1/sessions/{id}"),
            Some("tok-r-0123456789abcdef0123456789abcd"),
        )
        .await;
        if status != 200 {
            eventually(&format!("session {id} projected"), async || {
                let (status, v) = get(
                    &s,
                    &format!("/v1/sessions/{id}"),
                    Some("tok-r-0123456789abcdef0123456789abcd"),
                )
                .await;
                (status == 200).then_some(v)
            })
            .await;
        }
    }
    eventually("every acknowledged session decided", async || {
        let mut all = true;
        for id in acked.iter().step_by(7) {
            let (_, v) = get(
                &s,
                &format!("/v1/sessions/{id}"),
                Some("tok-r-0123456789abcdef0123456789abcd"),
            )
            .await;
            all &= !v["decision"].is_null();
        }
        all.then_some(())
    })
    .await;
    eventually(
        "every acknowledged session's decision delivered",
        async || {
            let delivered: BTreeSet<String> = sink
                .received()
                .iter()
                .filter_map(|r| r.json["session_id"].as_str().map(str::to_owned))
                .collect();
            acked.is_subset(&delivered).then_some(())
        },
    )
    .await;
    let (status, dir) = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let config = dir.path().join("verdict.toml");
    let out = verdict(&config, &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // In the log itself, not only in the projections.
    let logged: BTreeSet<String> = text(&verdict(&config, &["log", "export"]).stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "idv:session_finished")
        .filter_map(|e| {
            e["payload"]["details"]["sessionId"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(acked.is_subset(&logged));
    // The rebuilt state equals the live one, and every decision derives again the same.
    let out = verdict(&config, &["replay"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("(matches)"), "{said}");
    assert!(said.contains("all derived again the same"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_4xx_and_stores_nothing() {
    let s = Server::start_with(&format!(
        "[policy]\npath = {:?}\n",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/policies/kyc.toml"
        )
    ));
    let before = s.count();
    let good = seon_body("h-1", "APPROVED");
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[good.as_bytes()]));
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, &'a [u16]);
    let cases: Vec<Case<'_>> = vec![
        (
            "signature not hex",
            vec![("X-Seon-Signature", "zz".repeat(32))],
            good.clone().into_bytes(),
            &[401],
        ),
        (
            "empty signature",
            vec![("X-Seon-Signature", String::new())],
            good.clone().into_bytes(),
            &[401],
        ),
        (
            "bare sha256= prefix",
            vec![("X-Seon-Signature", "sha256=".into())],
            good.clone().into_bytes(),
            &[401],
        ),
        (
            "signature of 4 KB",
            vec![("X-Seon-Signature", "a".repeat(4096))],
            good.clone().into_bytes(),
            &[401],
        ),
        ("no signature", vec![], good.clone().into_bytes(), &[401]),
        (
            "huge header value",
            vec![
                ("X-Seon-Signature", sig.clone()),
                ("X-Padding", "p".repeat(200_000)),
            ],
            good.clone().into_bytes(),
            &[400, 431],
        ),
        (
            "Request-Id of 10 KB",
            vec![
                ("X-Seon-Signature", sig.clone()),
                ("Request-Id", "r".repeat(10_000)),
            ],
            good.clone().into_bytes(),
            &[400],
        ),
        (
            "body over max_body_bytes",
            vec![("X-Seon-Signature", sig.clone())],
            vec![b' '; 70_000],
            &[413],
        ),
        (
            "deeply nested JSON, unsigned",
            vec![("X-Seon-Signature", "0".repeat(64))],
            nested.clone().into_bytes(),
            &[401],
        ),
        (
            "invalid UTF-8, unsigned",
            vec![("X-Seon-Signature", "0".repeat(64))],
            vec![0xff, 0xfe, 0x80, b'{'],
            &[401],
        ),
        (
            "wrong content type, unsigned",
            vec![
                ("Content-Type", "text/plain".into()),
                ("X-Seon-Signature", "0".repeat(64)),
            ],
            good.clone().into_bytes(),
            &[401],
        ),
        (
            "Stripe header on a SEON source",
            vec![("Stripe-Signature", "t=1,v1=00".into())],
            good.clone().into_bytes(),
            &[401],
        ),
    ];
    for (what, headers, body, expected) in cases {
        // A new connection each time: a refused request may close its connection.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut req = http.post(s.url("/webhooks/seon-idv")).body(body);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let status = req.send().await.map(|r| r.status().as_u16());
        match status {
            Ok(code) => assert!(expected.contains(&code), "{what}: {code}"),
            // hyper may close the connection on a header block it refuses: also no storage.
            Err(e) => assert!(what == "huge header value", "{what}: {e}"),
        }
        assert_eq!(s.count(), before, "{what}: nothing stored");
    }
    // Signed but hostile bodies are stored (the signature proves the sender) and quarantined,
    // never a crash: deeply nested JSON and invalid UTF-8.
    for body in [nested.into_bytes(), vec![0xff, 0xfe, 0x80, b'{']] {
        let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[&body]));
        let (status, v) = s.post("seon-idv", &[("X-Seon-Signature", sig)], body).await;
        assert_eq!(status, 200, "{v}");
    }
    eventually("both quarantined", async || {
        let t = s.metrics().await;
        t.contains("verdict_quarantined_total 2").then_some(())
    })
    .await;
    let (status, _) = get(&s, "/healthz", None).await;
    assert_eq!(status, 200, "still alive");
    let (status, _) = s.terminate();
    assert!(status.success());
}

/// Sets the server's file-size limit (RLIMIT_FSIZE) from outside, as a full disk would act.
fn limit_file_size(s: &Server, limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), &format!("--fsize={limit}")])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(status.success(), "prlimit --fsize={limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_with_retry_after_and_verdict_recovers_by_itself() {
    let s = Server::start_with(&format!(
        "[policy]\npath = {:?}\n",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/policies/kyc.toml"
        )
    ));
    assert_eq!(get(&s, "/readyz", None).await.0, 200);
    let body = |id: &str| seon_body(id, "APPROVED");
    assert_eq!(
        s.post_seon(&body("f-1"), Some("f-1"), SEON_SECRET).await.0,
        200
    );
    // The policy's activation, the delivery and its decision.
    eventually("the decision recorded", async || {
        (s.count() == 3).then_some(())
    })
    .await;
    let before = s.count();

    // No write can grow any file now: every append fails, like on a full disk.
    limit_file_size(&s, "1:unlimited"); // soft 1 byte; the hard limit stays
    let resp = s
        .http
        .post(s.url("/webhooks/seon-idv"))
        .header(
            "X-Seon-Signature",
            hex::encode(hmac(SEON_SECRET.as_bytes(), &[body("f-2").as_bytes()])),
        )
        .header("Request-Id", "f-2")
        .body(body("f-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(s.count(), before, "nothing stored, nothing partial");
    let (status, _) = get(&s, "/readyz", None).await;
    assert_eq!(status, 503, "not ready while the log cannot be written");
    let (status, _) = get(&s, "/healthz", None).await;
    assert_eq!(status, 200, "alive");

    // Space returns: ready again by itself, without any delivery arriving.
    limit_file_size(&s, "unlimited:unlimited");
    eventually("ready again", async || {
        (get(&s, "/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    // The sender's retry of the refused delivery is accepted now.
    let (status, v) = s.post_seon(&body("f-2"), Some("f-2"), SEON_SECRET).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("accepted")),
        "{v}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.count() != before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery and its decision not stored:\n{}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, dir) = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let out = verdict(&dir.path().join("verdict.toml"), &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A server whose `[server]` table has `extra` lines.
fn start_with_server_keys(extra: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&dir.path().join("verdict.db"), "").replacen(
        "max_body_bytes = 65536\n",
        &format!("max_body_bytes = 65536\n{extra}\n"),
        1,
    );
    std::fs::write(dir.path().join("verdict.toml"), text).expect("write config");
    Server::start_in(dir)
}

/// Reads from `stream` until the server closes it (or 15 s pass): how long that took.
async fn closed_after(stream: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt as _;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {} // a 408 or similar before the close
            Err(_) => panic!("the server kept a connection with unfinished headers for 15 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let s = start_with_server_keys("header_read_timeout_secs = 1");
    let addr = s.base.trim_start_matches("http://").to_owned();
    // Slowloris: a request line and one header, then silence.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile others are served.
    let body = seon_body("slowloris-1", "APPROVED");
    assert_eq!(s.post_seon(&body, Some("r-1"), SEON_SECRET).await.0, 200);
    let took = closed_after(&mut slow).await;
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    // A connection that sends nothing at all is closed too.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let took = closed_after(&mut silent).await;
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    assert_eq!(s.count(), 1, "only the complete delivery is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_connection_waiting_on_its_client_makes_room_never_one_being_served() {
    use tokio::io::AsyncWriteExt as _;
    let s = start_with_server_keys(
        "header_read_timeout_secs = 20\nrequest_timeout_secs = 20\nmax_connections = 1\n\
         \n[[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"tok-r-0123456789abcdef0123456789abcd\"",
    );
    let addr = s.base.trim_start_matches("http://").to_owned();
    // The one slot is held by a connection that sent half a request head and waits on its
    // client: a new client is served at once, and the half-sent connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let resp = client().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let cut = closed_after(&mut slow).await;
    assert!(
        cut < Duration::from_secs(5),
        "the waiting connection was closed: {cut:?}"
    );

    // A connection whose request is being served (a long poll) is not closed to make room: the
    // newcomer waits for its slot until the long poll answers.
    let poll = tokio::spawn({
        let http = client();
        let url = s.url("/v1/decisions?wait=2");
        async move {
            http.get(url)
                .bearer_auth("tok-r-0123456789abcdef0123456789abcd")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let resp = client().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        poll.await.unwrap().unwrap(),
        200,
        "the long poll was served to its end"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "served while the only slot was held by a request being served ({:?})",
        started.elapsed()
    );
}
