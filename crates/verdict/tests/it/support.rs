//! Starting the real binary and signing deliveries.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const BIN: &str = env!("CARGO_BIN_EXE_verdict");
pub const SEON_SECRET: &str = "seon-secret-1-abcdef";
pub const SEON_OLD_SECRET: &str = "seon-secret-0-abcdef";
pub const LEGACY_SECRET: &str = "license-key-0123456";
pub const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const STRIPE_SECRET: &str = "whsec_stripe_0123456789";

/// Sources for every scheme; `seon-idv` has two secrets (rotation).
pub const SOURCES: &str = r#"
[[sources]]
name = "seon-idv"
scheme = "seon"
signature_header = "X-Seon-Signature"
secrets = ["seon-secret-1-abcdef", "seon-secret-0-abcdef"]

[[sources]]
name = "seon-fraud"
scheme = "seon-legacy"
secrets = ["license-key-0123456"]

[[sources]]
name = "std"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tolerance_secs = 300

[[sources]]
name = "stripe"
scheme = "stripe"
secrets = ["whsec_stripe_0123456789"]
"#;

/// An HTTP client (rustls on ring is the process's crypto provider, as in verdict).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn seon_body(session: &str, status: &str) -> String {
    format!(
        r#"{{"event":"idv:session_finished","date":"2026-03-02T10:15:42.000Z","details":{{"sessionId":"{session}","status":"{status}"}}}}"#
    )
}

/// Kills the child process when dropped (a failed test leaves no server behind).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `verdict serve`.
pub struct Server {
    child: ChildGuard,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// Copies the server's stderr into `stderr.log`; joined once the server has exited, so the
    /// file is whole when a test reads it.
    stderr_copier: Option<std::thread::JoinHandle<()>>,
}

pub fn config_text(db: &Path, extra: &str) -> String {
    config_text_with(db, "", extra)
}

/// A config with more `[server]` keys (`server`, lines) and more tables (`extra`).
pub fn config_text_with(db: &Path, server: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n{server}\n\n[storage]\npath = {:?}\n{SOURCES}\n{extra}\n",
        db.display().to_string()
    )
}

impl Server {
    pub fn start() -> Self {
        Self::start_with("")
    }

    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("verdict.toml"),
            config_text(&dir.path().join("verdict.db"), extra),
        )
        .expect("write config");
        Self::start_in(dir)
    }

    /// Starts (or restarts) the server on the config already in `dir`.
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_opts(dir, &[], &[])
    }

    /// Starts the server on a config with `[server.tls]` in `dir`; its client trusts only
    /// `cert_pem` (and speaks HTTP/2 when offered, as browsers do).
    pub fn start_tls_in(dir: tempfile::TempDir, cert_pem: &str) -> Self {
        let mut s = Self::start_in(dir);
        let _ = rustls::crypto::ring::default_provider().install_default();
        s.http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem")])
            .build()
            .expect("client");
        s
    }

    /// Like `start_in`, with more arguments before `serve` and environment variables.
    pub fn start_opts(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("verdict.toml"))
            .args(args)
            .envs(env.iter().copied())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn verdict");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("verdict listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let log_path = dir.path().join("stderr.log");
        let stderr_copier = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                panic!("verdict did not start:\n{log}");
            }
        };
        Self {
            child: ChildGuard(child),
            base,
            dir,
            http: client(),
            stderr_copier: Some(stderr_copier),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("verdict.db")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("verdict.toml")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub async fn post(
        &self,
        source: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/webhooks/{source}")))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// POST a SEON delivery signed with `secret`.
    pub async fn post_seon(
        &self,
        body: &str,
        request_id: Option<&str>,
        secret: &str,
    ) -> (u16, serde_json::Value) {
        let sig = hex::encode(hmac(secret.as_bytes(), &[body.as_bytes()]));
        let mut h = vec![
            ("X-Seon-Signature", sig),
            ("Content-Type", "application/json".to_owned()),
        ];
        if let Some(id) = request_id {
            h.push(("Request-Id", id.to_owned()));
        }
        self.post("seon-idv", &h, body.to_owned()).await
    }

    /// Sends a signal (`kill -NAME`) to the server.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.0.id().to_string())
            .status();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGKILL: no chance to clean up, like a crash or the OOM killer.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.join_stderr();
        self.dir
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, tempfile::TempDir) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                self.join_stderr();
                return (status, self.dir);
            }
            if Instant::now() > deadline {
                panic!("verdict did not stop after SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /metrics`: the Prometheus text (asserting a 200 of type text/plain).
    pub async fn metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain"), "{ct}");
        resp.text().await.unwrap()
    }

    fn join_stderr(&mut self) {
        if let Some(copier) = self.stderr_copier.take() {
            let _ = copier.join();
        }
    }

    /// Entries in the log, read through a separate connection.
    pub fn count(&self) -> i64 {
        let conn = rusqlite::Connection::open(self.db()).expect("open db");
        conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .expect("count")
    }
}

/// Runs `verdict --config CONFIG args...` to completion.
pub fn verdict(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run verdict")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `probe` until it gives a value, for at most 20 s: the projector and the decisions run
/// after the 200, woken by the commit, so their effects appear a few milliseconds later.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET a JSON document with an optional bearer token: (status, body).
pub async fn get(s: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = s.http.get(s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// POST an override as the token's holder: (status, body).
pub async fn post_override(s: &Server, id: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = s
        .http
        .post(s.url(&format!("/v1/sessions/{id}/override")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
