//! Policy hot reload: the policy file's directory is watched (debounced; editors and Kubernetes
//! ConfigMaps replace files by rename, so any change in the directory triggers a check) and
//! SIGHUP forces a check. A new text is compiled fully before it is swapped in atomically;
//! readers never wait. A text that does not compile is rejected with its diagnostics in the
//! log; the old policy stays active and `/readyz` stays ready.

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use verdict_log::LogWriter;
use verdict_rules::Policy;

/// Watches `path` and swaps `current` when its text changes and compiles. Runs until the
/// runtime stops. Returns the watcher, which must be kept alive.
pub fn start(
    path: PathBuf,
    current: Arc<ArcSwap<Policy>>,
    writer: LogWriter,
) -> anyhow::Result<crate::watch::Watcher> {
    let (watcher, mut triggers) = crate::watch::triggers(&[&path])?;
    tokio::spawn(async move {
        while let Some(why) = triggers.recv().await {
            check(&path, &current, &writer, why).await;
        }
    });
    Ok(watcher)
}

async fn check(path: &std::path::Path, current: &ArcSwap<Policy>, writer: &LogWriter, why: &str) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            // A rename in progress can leave the name missing for a moment; the next event retries.
            metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "failed").increment(1);
            tracing::error!(path = %path.display(), error = %e, why, "policy reload failed: cannot read the file; keeping the active policy");
            return;
        }
    };
    let sha = verdict_log::sha256(text.as_bytes());
    if hex::encode(sha) == current.load().sha256 {
        return;
    }
    match Policy::parse(&text) {
        Ok(policy) => {
            let active = ActivePolicy {
                policy,
                text,
                path: path.to_owned(),
            };
            if let Err(e) = record_activation(writer, &active).await {
                metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "failed")
                    .increment(1);
                tracing::error!(error = %format!("{e:#}"), "policy reload failed: cannot record it; keeping the active policy");
                return;
            }
            tracing::info!(why, name = %active.policy.name, version = %active.policy.version, sha256 = %active.policy.sha256, "policy reloaded");
            current.store(Arc::new(active.policy));
            metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "ok").increment(1);
        }
        Err(diagnostics) => {
            metrics::counter!(crate::metrics::POLICY_RELOADS, "result" => "failed").increment(1);
            let rendered: Vec<String> = diagnostics
                .iter()
                .map(|d| crate::policycmd::render(path, &text, d))
                .collect();
            tracing::error!(
                why,
                "policy reload failed; keeping the active policy:\n{}",
                rendered.join("\n")
            );
        }
    }
}

/// The compiled policy with the text it was compiled from.
#[derive(Debug)]
pub struct ActivePolicy {
    /// The compiled policy.
    pub policy: verdict_rules::Policy,
    /// Its text.
    pub text: String,
    /// Where it was read.
    pub path: std::path::PathBuf,
}

/// Appends `policy:activated` with the policy's full text, once per distinct text (the dedupe
/// key is its SHA-256), so every decision can be re-derived from the log alone.
pub async fn record_activation(
    writer: &verdict_log::LogWriter,
    active: &ActivePolicy,
) -> anyhow::Result<u64> {
    let p = &active.policy;
    let body = serde_json::json!({
        "name": p.name,
        "version": p.version,
        "sha256": p.sha256,
        "path": active.path.display().to_string(),
        "text": active.text,
    });
    let event = verdict_log::NewEvent::new(
        verdict_log::INTERNAL_SOURCE,
        verdict_projections::POLICY_ACTIVATED,
        format!("policy:{}", p.sha256),
        serde_json::to_vec(&body)?,
    );
    let appended = writer
        .append(event)
        .await
        .context("recording the policy activation")?;
    if !appended.is_duplicate() {
        tracing::info!(seq = appended.seq(), sha256 = %p.sha256, "policy activation recorded");
    }
    Ok(appended.seq())
}
