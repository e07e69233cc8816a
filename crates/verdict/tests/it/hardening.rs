//! The exposed surface tried as an attacker would: slow clients by the thousand (plain and
//! TLS), admin routes on their own address, token guessing, weak secrets, forms over HTTP/2,
//! and bounded reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::support::*;
use crate::tls::{cert, setup_with, trusting};

/// Slow connections opened at once: more than the default connection cap (1,024).
const TRICKLERS: usize = 2000;
/// How often each sends one more byte.
const PERIOD: Duration = Duration::from_secs(1);
/// The request (and header) deadline the servers under attack are given.
const DEADLINE_SECS: u64 = 4;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What became of one slow connection: how long the server let it live, and whether it was
/// answered 408 first.
struct Cut {
    connected: bool,
    after: Duration,
    answered_408: bool,
}

/// Sends `first`, then one byte every [`PERIOD`], until the server closes the connection.
async fn trickle(io: Box<dyn Io>, first: Vec<u8>, started: Instant) -> Cut {
    let kind = first.len();
    let (mut r, mut w) = tokio::io::split(io);
    let reader = async move {
        let mut buf = vec![0u8; 4096];
        let mut answered_408 = false;
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return answered_408,
                Ok(n) => answered_408 |= buf[..n].starts_with(b"HTTP/1.1 408"),
            }
        }
    };
    let writer = async move {
        if w.write_all(&first).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(PERIOD).await;
            if w.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        answered_408 = reader => Cut { after: started.elapsed(), answered_408, connected: true },
        () = writer => Cut { after: started.elapsed(), answered_408: false, connected: true },
        () = tokio::time::sleep(Duration::from_secs(60)) => {
            panic!("a slow connection was kept for 60 s (first {kind} bytes, connected after {:?})", started.elapsed())
        }
    }
}

/// A TLS client that trusts `cert_pem` and speaks HTTP/1.1.
fn tls_connector(cert_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A request head that announces a body, then only its first byte.
fn slow_body_head() -> Vec<u8> {
    format!(
        "POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Seon-Signature: {}\r\nContent-Length: 60000\r\n\r\n{{",
        "0".repeat(64)
    )
    .into_bytes()
}

/// Opens the slow connections: half dribble a request head (plain) or a TLS handshake (TLS),
/// half send a head and then dribble the body (over TLS after a real handshake).
async fn attack(
    addr: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Vec<tokio::task::JoinHandle<Cut>> {
    let mut tasks = Vec::with_capacity(TRICKLERS);
    for i in 0..TRICKLERS {
        // In waves of 250 (2,000 in 0.4 s): all at once would overflow the kernel's queue of
        // connections waiting to be accepted, which is not what is tested here.
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = addr.to_owned();
        let tls = tls.cloned();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
                return Cut {
                    after: started.elapsed(),
                    answered_408: false,
                    connected: false,
                };
            };
            match (tls, i % 2) {
                (None, 0) => {
                    let head = b"POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
                    trickle(Box::new(tcp), head, started).await
                }
                (None, _) => trickle(Box::new(tcp), slow_body_head(), started).await,
                // A TLS record header announcing a 512-byte ClientHello that never completes.
                (Some(_), 0) => {
                    trickle(Box::new(tcp), vec![0x16, 0x03, 0x01, 0x02, 0x00], started).await
                }
                (Some(connector), _) => {
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                    match connector.connect(name, tcp).await {
                        Ok(stream) => trickle(Box::new(stream), slow_body_head(), started).await,
                        // Closed to make room before the handshake finished.
                        Err(_) => Cut {
                            after: started.elapsed(),
                            answered_408: false,
                            connected: true,
                        },
                    }
                }
            }
        }));
    }
    tasks
}

/// While [`TRICKLERS`] connections trickle bytes, a new client's `/healthz` and a signed
/// delivery are answered within a second, every slow connection is cut by the deadline, and
/// nothing of theirs is stored.
async fn slow_clients_cannot_take_it_down(tls: bool) {
    let server_keys = format!(
        "request_timeout_secs = {DEADLINE_SECS}\nheader_read_timeout_secs = {DEADLINE_SECS}"
    );
    let pair = cert();
    let s = if tls {
        Server::start_in(setup_with(&pair, &server_keys, ""))
    } else {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("verdict.toml"),
            config_text_with(&dir.path().join("verdict.db"), &server_keys, ""),
        )
        .unwrap();
        Server::start_in(dir)
    };
    let addr = s
        .base
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_owned();
    let connector = tls.then(|| tls_connector(&pair.0));
    let started = Instant::now();
    let tasks = attack(&addr, connector.as_ref()).await;
    // Every slow connection has connected and is dribbling.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let fresh = || {
        if tls {
            trusting(&pair.0, true)
        } else {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        }
    };
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        fresh().get(s.url("/healthz")).send(),
    )
    .await
    .expect("healthz answered")
    .unwrap();
    let healthz = t0.elapsed();
    assert_eq!(resp.status(), 200);
    let body = seon_body("under-attack-1", "APPROVED");
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[body.as_bytes()]));
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        fresh()
            .post(s.url("/webhooks/seon-idv"))
            .header("X-Seon-Signature", sig)
            .body(body)
            .send(),
    )
    .await
    .expect("delivery answered")
    .unwrap();
    let delivery = t0.elapsed();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert!(
        healthz < Duration::from_secs(1) && delivery < Duration::from_secs(1),
        "under attack: /healthz took {healthz:?}, a delivery {delivery:?}"
    );

    let mut cuts = Vec::with_capacity(TRICKLERS);
    for t in tasks {
        cuts.push(t.await.unwrap());
    }
    assert_eq!(
        cuts.iter().filter(|c| c.connected).count(),
        TRICKLERS,
        "every slow connection connected"
    );
    let latest = cuts.iter().map(|c| c.after).max().unwrap();
    let answered_408 = cuts.iter().filter(|c| c.answered_408).count();
    // The deadline counts from each request's first byte; connecting under a SYN backlog and
    // the server's timer add a little.
    assert!(
        latest <= Duration::from_secs(DEADLINE_SECS + 3),
        "a slow connection lived {latest:?} (deadline {DEADLINE_SECS} s)"
    );
    assert!(
        answered_408 > 0,
        "slow bodies that reached the deadline were answered 408"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.count(), 1, "nothing of the slow requests is stored");
    let metrics = fresh()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("verdict_connections_shed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(shed >= 900.0, "connections were shed at the cap: {shed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_take_the_plain_listener_down() {
    slow_clients_cannot_take_it_down(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_take_the_tls_listener_down() {
    slow_clients_cannot_take_it_down(true).await;
}

const READER: &str = "tok-reader-0123456789abcdef0123456789";
const ANALYST: &str = "tok-alice-0123456789abcdef0123456789";

fn tokens() -> String {
    format!(
        "[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"{ANALYST}\"\n\n\
         [[tokens]]\nname = \"r\"\nrole = \"reader\"\ntoken = \"{READER}\"\n"
    )
}

fn start_plain(server_keys: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("verdict.toml"),
        config_text_with(&dir.path().join("verdict.db"), server_keys, extra),
    )
    .unwrap();
    Server::start_in(dir)
}

/// The admin address printed at start (`verdict admin listening on ...`), read from the log
/// of the server's stdout kept by the test: here found by asking the OS for a free port first.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn with_admin_listen_the_api_pages_and_metrics_are_served_only_there() {
    let port = free_port();
    let s = start_plain(&format!("admin_listen = \"127.0.0.1:{port}\""), &tokens());
    let admin = format!("http://127.0.0.1:{port}");
    let http = client();
    for path in ["/v1/sessions", "/ui/sessions", "/metrics", "/ui/"] {
        let resp = http
            .get(s.url(path))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path} is not served on listen");
    }
    let resp = http
        .get(format!("{admin}/v1/sessions"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let resp = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Webhooks and health stay on listen; health is on both.
    let (status, _) = s
        .post_seon(&seon_body("admin-1", "APPROVED"), None, SEON_SECRET)
        .await;
    assert_eq!(status, 200);
    let resp = http
        .post(format!("{admin}/webhooks/seon-idv"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    for base in [s.base.as_str(), admin.as_str()] {
        let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // `/ui/` leads to the start page.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{admin}/ui/"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()["location"], "/ui/sessions");
}

#[tokio::test]
async fn bad_tokens_from_one_address_are_throttled_and_logged_without_flooding() {
    let s = start_plain("", &tokens());
    let http = client();
    // Requests without a token (probes) do not count.
    for _ in 0..20 {
        let resp = http.get(s.url("/v1/sessions")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    let mut statuses = Vec::new();
    for i in 0..25 {
        let resp = http
            .get(s.url("/v1/sessions"))
            .bearer_auth(format!("guess-{i:032}"))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // A good token still passes (clients behind one proxy cannot lock each other out); a bad
    // log-in and a bad token on the pages are throttled too.
    let resp = http
        .get(s.url("/v1/sessions"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(s.url("/ui/login"))
        .form(&[
            ("token", "not-the-token-0123456789abcdef0123"),
            ("next", "/ui/sessions"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let resp = http
        .get(s.url("/ui/sessions"))
        .bearer_auth("not-the-token-0123456789abcdef0123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    // Two warnings (the first failure, the throttling), not one per attempt.
    let warnings = s
        .stderr()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("authentication"))
        .count();
    assert_eq!(warnings, 2, "{}", s.stderr());
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("verdict_auth_failures_total{result=\"bad_token\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("verdict_auth_failures_total{result=\"throttled\"} 17"),
        "{metrics}"
    );
}

/// A correctly signed delivery whose last byte arrives after the deadline is answered 408 and
/// not stored; so is a late override body.
#[tokio::test]
async fn a_request_that_arrives_after_its_deadline_is_408_and_changes_nothing() {
    let s = start_plain("request_timeout_secs = 1", &tokens());
    let addr = s.base.trim_start_matches("http://").to_owned();
    let body = seon_body("late-1", "APPROVED");
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[body.as_bytes()]));
    let late = |path: &str, headers: String, body: &str| {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        (head, body.to_owned())
    };
    let before = s.count();
    for (head, body) in [
        late(
            "/webhooks/seon-idv",
            format!("X-Seon-Signature: {sig}\r\n"),
            &body,
        ),
        late(
            "/v1/sessions/late-1/override",
            format!("Authorization: Bearer {ANALYST}\r\n"),
            r#"{"action":"approve","reason":"late"}"#,
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (all_but_last, last) = body.split_at(body.len() - 1);
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(all_but_last.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = tcp.write_all(last.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{head}: {answer}");
    }
    assert_eq!(s.count(), before, "nothing stored");
}

/// The budget of buffered bodies: one client's slow bodies take at most its share (an eighth
/// of the budget here), and a delivery past it is answered 503 (Retry-After), not buffered,
/// although the budget as a whole is far from spent.
#[tokio::test]
async fn slow_bodies_cannot_take_more_than_their_share_of_memory() {
    // 2 MiB in all; a client's share: max(2 MiB / 8, 2 x 64 KiB) = 256 KiB.
    let s = start_plain("max_buffered_body_bytes = 2097152", "");
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\nX-Seon-Signature: {}\r\n\
             Content-Length: 60001\r\n\r\n",
            "0".repeat(64)
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[b' '; 60_000]).await.unwrap();
        slow.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 240 kB held; 30 kB more is past the 256 KiB share.
    let body = format!(r#"{{"event":"big","pad":"{}"}}"#, "x".repeat(30_000));
    let (status, answer) = s.post_seon(&body, None, SEON_SECRET).await;
    assert_eq!(status, 503, "{answer}");
    // A small delivery still fits in the share.
    let (status, _) = s
        .post_seon(&seon_body("small-1", "APPROVED"), None, SEON_SECRET)
        .await;
    assert_eq!(status, 200);
    drop(slow);
    let (status, answer) = eventually("the share freed", async || {
        let r = s.post_seon(&body, None, SEON_SECRET).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")));
    let metrics = s.metrics().await;
    assert!(metrics.contains("reason=\"busy\""), "{metrics}");
}

/// Failed TLS handshakes leave nothing behind: with the cap full of slow connections, a new
/// client still makes room at once (a connection whose handshake failed and that still
/// counted would be chosen to make room, and free nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_leave_the_connection_cap_whole() {
    let pair = cert();
    let s = Server::start_in(setup_with(
        &pair,
        "max_connections = 4\nrequest_timeout_secs = 30\nheader_read_timeout_secs = 30",
        "",
    ));
    let addr = s.base.trim_start_matches("https://").to_owned();
    for _ in 0..10 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    }
    let connector = tls_connector(&pair.0);
    let mut slow = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"POST /webhooks/seon-idv HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tls);
    }
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        trusting(&pair.0, true).get(s.url("/healthz")).send(),
    )
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

/// Writes a config with `extra` and runs `verdict serve` on it: its exit code and stderr.
fn serve_fails(extra: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("verdict.toml");
    std::fs::write(&config, config_text(&dir.path().join("verdict.db"), extra)).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
fn weak_secrets_and_short_tokens_stop_start_up_naming_the_entry() {
    let (code, err) = serve_fails(
        "[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"env:SHORT_TOKEN\"\n",
        &[("SHORT_TOKEN", "only-twenty-chars-xx")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("token of \"alice\" has 20 characters"),
        "{err}"
    );
    assert!(
        !err.contains("only-twenty-chars-xx"),
        "the token is not printed: {err}"
    );

    let weak = "[[sources]]\nname = \"weak\"\nscheme = \"seon\"\nsecrets = [\"env:WEAK\"]\n";
    let (code, err) = serve_fails(weak, &[("WEAK", "fifteen-bytes!!")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("source \"weak\": a secret of 15 bytes is too weak"),
        "{err}"
    );
    assert!(!err.contains("fifteen-bytes!!"), "{err}");

    let sink = "[[sinks]]\nname = \"backend\"\nurl = \"https://user:pw@sink.example/x?token=t\"\n\
                secret = \"whsec_c2hvcnQ=\"\n";
    let (code, err) = serve_fails(sink, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("sink \"backend\": a key of 5 bytes is too weak"),
        "{err}"
    );
    assert!(!err.contains("pw@"), "{err}");

    let wide = "[[sources]]\nname = \"wide\"\nscheme = \"stripe\"\nsecrets = [\"whsec_0123456789abcdef\"]\n\
                tolerance_secs = 86400\n";
    let (code, err) = serve_fails(wide, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tolerance_secs must be between 1 and 3600"),
        "{err}"
    );
}

#[test]
fn no_help_shows_a_secret_from_the_environment() {
    let secret = "a-secret-value-from-the-environment";
    for args in [
        vec!["simulate", "--help"],
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["simulate"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .env("SEON_WEBHOOK_SECRET", secret)
            .env("VERDICT_TOKEN_ALICE", secret)
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains(secret), "{args:?} printed the secret:\n{all}");
    }
}

/// Over TLS, browsers speak HTTP/2, which carries the host in `:authority`, not `Host`: the
/// log-in form works there as over HTTP/1.1, and answers carry HSTS.
#[tokio::test]
async fn forms_work_over_http2_and_tls_answers_carry_hsts() {
    let pair = cert();
    let s = Server::start_in(setup_with(&pair, "", &tokens()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    for http2 in [true, false] {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pair.0.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none());
        if !http2 {
            b = b.http1_only();
        }
        let http = b.build().unwrap();
        let origin = s.base.clone();
        let resp = http
            .post(s.url("/ui/login"))
            .header("Origin", &origin)
            .header("Sec-Fetch-Site", "same-origin")
            .form(&[("token", ANALYST), ("next", "/ui/sessions")])
            .send()
            .await
            .unwrap();
        let want = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(resp.version(), want);
        assert_eq!(resp.status(), 303, "log-in over {want:?}");
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000"
        );
        // A foreign origin is still refused.
        let resp = http
            .post(s.url("/ui/login"))
            .header("Origin", "https://evil.example")
            .form(&[("token", ANALYST), ("next", "/ui/sessions")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
}

/// History pages, `/v1/events` bounded by bytes, `Cache-Control: no-store` on `/v1`.
#[tokio::test]
async fn reads_are_bounded_and_paged() {
    let s = start_plain("", &tokens());
    // One session with 7 deliveries (distinct bodies, so none is a duplicate).
    for i in 0..7 {
        let body = format!(
            r#"{{"event":"idv:session_status_updated","date":"2026-03-02T10:1{i}:00.000Z","details":{{"sessionId":"paged","status":"REVIEW","note":{i}}}}}"#
        );
        assert_eq!(s.post_seon(&body, None, SEON_SECRET).await.0, 200);
    }
    // The projector folds after the 200: wait until it has all seven.
    eventually("the session's seven entries", async || {
        let (_, v) = get(&s, "/v1/sessions/paged", Some(READER)).await;
        (v["event_count"] == 7).then_some(())
    })
    .await;
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(
            &s,
            &format!("/v1/sessions/paged/history?limit=3&after={after}"),
            Some(READER),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 3);
        seen.extend(entries.iter().map(|e| e["seq"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let (status, _) = get(&s, "/v1/sessions/nobody/history", Some(READER)).await;
    assert_eq!(status, 404);

    // Large bodies (60 kB, under max_body_bytes): a page of events stops at about 4 MiB,
    // whatever the limit asked.
    let big = "x".repeat(60_000);
    for i in 0..90 {
        let body = format!(r#"{{"event":"bulk","i":{i},"pad":"{big}"}}"#);
        assert_eq!(s.post_seon(&body, None, SEON_SECRET).await.0, 200);
    }
    let resp = s
        .http
        .get(s.url("/v1/events?after=0&limit=1000"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let page: Value = resp.json().await.unwrap();
    let n = page["events"].as_array().unwrap().len();
    assert!((60..90).contains(&n), "a page of {n} entries");
    assert_eq!(page["next"], json!(page["events"][n - 1]["seq"]));
}
