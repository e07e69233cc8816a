//! What reloads listen to: changes in some files' directories (debounced; editors, Kubernetes
//! ConfigMaps and cert-manager replace files by rename, so any change in the directory counts)
//! and SIGHUP. Shared by the policy and the TLS certificate reloads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;

/// The directory watcher; it must be kept alive for events to arrive.
pub type Watcher = notify_debouncer_full::Debouncer<
    notify_debouncer_full::notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Watches the directories of `files` and listens for SIGHUP (installed now, so a SIGHUP that
/// arrives before the caller's task first runs is not lost). Each trigger arrives on the
/// returned channel as "file changed" or "SIGHUP".
pub fn triggers(
    files: &[&Path],
) -> anyhow::Result<(Watcher, tokio::sync::mpsc::Receiver<&'static str>)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<&'static str>(8);
    let file_tx = tx.clone();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(200),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            if result.is_ok_and(|events| !events.is_empty()) {
                let _ = file_tx.try_send("file changed");
            }
        },
    )?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        debouncer.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send("SIGHUP").await.is_err() {
                return;
            }
        }
    });
    Ok((debouncer, rx))
}
