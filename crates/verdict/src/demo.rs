//! `verdict demo`: verdict end to end in one command, in a temporary directory.
//!
//! It writes a config (a SEON source with a fresh secret, the bundled KYC policy, a sink, an
//! analyst token), starts `verdict serve` on a free port as a child process, starts a local
//! decision sink that checks each delivery's Standard Webhooks signature and prints it as it
//! arrives, runs the simulator against the server, waits for the decisions to arrive, prints a
//! summary and where everything is, and stops the server with SIGTERM. The directory is kept
//! so the log can be inspected afterwards.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;

const POLICY: &str = include_str!("../../../config/policies/kyc.toml");

/// What the sink has seen.
#[derive(Debug, Default)]
struct Seen {
    decisions: u64,
    bad_signatures: u64,
    by_action: BTreeMap<String, u64>,
    by_rule: BTreeMap<String, u64>,
}

/// Runs the demo; exit 0 when every simulated delivery was accepted and decisions arrived.
pub fn run(sessions: u64) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!(
        "verdict-demo-{}",
        verdict_log::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // It holds a config with literal secrets: the owner's only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let secrets = Secrets::new()?;
    std::fs::write(dir.join("kyc.toml"), POLICY)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = start_sink(Arc::clone(&seen), &secrets.sink).await?;
        let config_path = write_config(&dir, &secrets, &sink)?;
        let (mut server, base) = start_server(&dir, &config_path).await?;
        println!("verdict demo: sidecar at {base}, log in {}", dir.display());
        println!(
            "sending {sessions} simulated SEON sessions; decisions as the sink receives them:\n"
        );
        let started = Instant::now();
        let ok = crate::simulate::run(crate::simulate::Options {
            url: format!("{base}/webhooks/seon-idv"),
            secret: secrets.webhook.parse().unwrap_or_else(|e| match e {}),
            sessions,
            rate: Some(50.0),
            duplicates: 0.1,
            reorder: 0.1,
            seed: 7,
            header: "X-Seon-Signature".into(),
            concurrency: 8,
            max_retries: 5,
            backoff: Duration::from_millis(200),
        })
        .await?;
        wait_for_decisions(&seen, sessions, started).await;
        let mut child = server.0.take().context("the server process")?;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        let seen = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("sink state poisoned"))?;
        summarise(
            &seen,
            started,
            status.success(),
            &dir,
            &config_path,
            &secrets.token,
        )?;
        Ok(
            if ok && seen.decisions > 0 && seen.bad_signatures == 0 && status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            },
        )
    })
}

/// The demo's secrets and analyst token: new random values each time (the directory's owner
/// reads them in its config).
struct Secrets {
    webhook: String,
    sink: String,
    token: String,
}

impl Secrets {
    fn new() -> anyhow::Result<Self> {
        let random = |n: usize| -> anyhow::Result<Vec<u8>> {
            let mut bytes = vec![0u8; n];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            Ok(bytes)
        };
        Ok(Self {
            webhook: format!("demo-{}", hex::encode(random(16)?)),
            sink: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(random(32)?)
            ),
            token: format!("demo-{}", hex::encode(random(16)?)),
        })
    }
}

/// Writes the demo's config in `dir`: a SEON source, the KYC policy, the sink, a token.
fn write_config(
    dir: &std::path::Path,
    secrets: &Secrets,
    sink: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let (webhook_secret, sink_secret, token) = (&secrets.webhook, &secrets.sink, &secrets.token);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\npath = {:?}\n\n\
         [[sources]]\nname = \"seon-idv\"\nscheme = \"seon\"\nsecrets = [{webhook_secret:?}]\n\n\
         [policy]\npath = {:?}\n\n\
         [[sinks]]\nname = \"demo-sink\"\nurl = {sink:?}\nsecret = {sink_secret:?}\n\n\
         [delivery]\ninitial_backoff_ms = 200\n\n\
         [[tokens]]\nname = \"demo-analyst\"\nrole = \"analyst\"\ntoken = {token:?}\n",
        dir.join("verdict.db").display().to_string(),
        dir.join("kyc.toml").display().to_string(),
    );
    let config_path = dir.join("verdict.toml");
    std::fs::write(&config_path, config)?;
    Ok(config_path)
}

/// Starts `verdict serve` on the demo's config: the process (killed if dropped) and its URL.
async fn start_server(
    dir: &std::path::Path,
    config_path: &std::path::Path,
) -> anyhow::Result<(KillOnDrop, String)> {
    let exe = std::env::current_exe().context("finding the verdict binary")?;
    let child = std::process::Command::new(exe)
        .arg("--config")
        .arg(config_path)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("verdict.log"))?)
        .spawn()
        .context("starting verdict serve")?;
    // Killed if anything below fails before the clean stop.
    let mut server = KillOnDrop(Some(child));
    let stdout = server
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("the server's stdout")?;
    let base = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("verdict listening on ").map(str::to_owned))
    })
    .await?
    .context("verdict serve did not start (see verdict.log in the demo directory)")?;
    Ok((server, base))
}

/// Every session gets at least one decision: waits for as many as there are sessions, then
/// until the sink has been quiet a moment (later decisions of the same sessions), a minute at
/// most.
async fn wait_for_decisions(seen: &Mutex<Seen>, sessions: u64, started: Instant) {
    let mut last = 0;
    let mut quiet = Instant::now();
    while (last < sessions || quiet.elapsed() < Duration::from_millis(800))
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen.lock().map(|s| s.decisions).unwrap_or(0);
        if now != last {
            last = now;
            quiet = Instant::now();
        }
    }
}

/// Prints what the sink received and the commands to look inside the kept directory.
fn summarise(
    seen: &Seen,
    started: Instant,
    stopped_cleanly: bool,
    dir: &std::path::Path,
    config_path: &std::path::Path,
    token: &str,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nsummary")?;
    writeln!(
        out,
        "  {} decisions delivered to the sink in {:.1}s, signatures checked ({} bad)",
        seen.decisions,
        started.elapsed().as_secs_f64(),
        seen.bad_signatures
    )?;
    for (action, n) in &seen.by_action {
        writeln!(out, "  {action:<8} {n}")?;
    }
    if !seen.by_rule.is_empty() {
        let rules: Vec<String> = seen
            .by_rule
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        writeln!(out, "  rules that fired: {}", rules.join(", "))?;
    }
    writeln!(out, "  the sidecar stopped cleanly: {stopped_cleanly}")?;
    writeln!(out, "\nthe log is kept in {}; try:", dir.display())?;
    let c = config_path.display();
    writeln!(out, "  verdict --config {c} log verify")?;
    writeln!(out, "  verdict --config {c} log export | head -3")?;
    writeln!(out, "  verdict --config {c} replay")?;
    writeln!(out, "  verdict --config {c} deliveries list --all | head")?;
    writeln!(
        out,
        "  verdict --config {c} policy backtest --policy {}",
        dir.join("kyc.toml").display()
    )?;
    writeln!(
        out,
        "  verdict --config {c} serve   # then open the address it prints + /ui/, token {token}"
    )?;
    Ok(())
}

/// A sink on a free port: checks the signature, prints each decision, counts. Returns its URL.
async fn start_sink(seen: Arc<Mutex<Seen>>, secret: &str) -> anyhow::Result<String> {
    let verifier = Arc::new(verdict_ingress::signature::Verifier::new(
        verdict_ingress::signature::Scheme::StandardWebhooks,
        None,
        &[secret],
        300,
    )?);
    let app = axum::Router::new().route(
        "/decisions",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (seen, verifier) = (Arc::clone(&seen), Arc::clone(&verifier));
                async move {
                    let now = verdict_log::now_ms() / 1000;
                    let signed = verifier.verify(&headers, &body, now).is_ok();
                    let d: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let action = d["action"].as_str().unwrap_or("?").to_owned();
                    let rules: Vec<String> = d["rules"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    println!(
                        "  {:<40} {:<8} by {:<7} {}{}",
                        d["session_id"].as_str().unwrap_or("?"),
                        action,
                        d["source"].as_str().unwrap_or("?"),
                        rules.join(", "),
                        if signed { "" } else { "  (BAD SIGNATURE)" }
                    );
                    if let Ok(mut s) = seen.lock() {
                        s.decisions += 1;
                        s.bad_signatures += u64::from(!signed);
                        *s.by_action.entry(action).or_default() += 1;
                        for r in rules {
                            *s.by_rule.entry(r).or_default() += 1;
                        }
                    }
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/decisions", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// Kills the server if the demo stops early.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
