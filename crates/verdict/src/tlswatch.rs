//! The TLS files watched: a rotation (or SIGHUP) reloads the certificate store.

use std::sync::Arc;

use verdict_web::tls::CertStore;

/// Watches the certificate's and key's directories and listens for SIGHUP; reloads the store
/// on either. Returns the watcher, which must be kept alive.
pub fn watch(store: Arc<CertStore>) -> anyhow::Result<crate::watch::Watcher> {
    let (watcher, mut triggers) = crate::watch::triggers(&store.files())?;
    tokio::spawn(async move {
        while let Some(why) = triggers.recv().await {
            let store = Arc::clone(&store);
            let _ = tokio::task::spawn_blocking(move || store.reload(why)).await;
        }
    });
    Ok(watcher)
}
