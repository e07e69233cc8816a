//! HTTPS served by verdict itself: rustls on the `ring` provider, TLS 1.2 and 1.3, HTTP/2 and
//! HTTP/1.1 by ALPN, and certificate rotation without a restart.
//!
//! The certificate and key are read as PEM files. Every handshake asks [`CertStore`] for the
//! current pair, an `ArcSwap`: a rotation swaps it atomically, new connections get the new
//! certificate and connections in flight keep theirs. A replacement is used only if both files
//! parse and the key matches the certificate; otherwise the old pair keeps serving and the
//! failure is logged and counted. The files' directories are watched (debounced: cert-manager
//! and Kubernetes Secrets replace files by renaming a symlink) and SIGHUP forces a check.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key file cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No PEM certificate in the file.
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate block that does not decode.
    #[error("{}: not a valid PEM certificate chain: {why}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No PEM private key in the file.
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key that does not decode or that rustls cannot sign with.
    #[error("{}: the private key cannot be used: {why}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The key is not the certificate's.
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl TlsError {
    /// The file the problem is in (for a mismatch, the key).
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::NoCertificate { path }
            | Self::BadCertificate { path, .. }
            | Self::NoKey { path }
            | Self::BadKey { path, .. } => path,
            Self::Mismatch { key, .. } => key,
        }
    }
}

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_owned(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        other => TlsError::BadKey {
            path: key.to_owned(),
            why: other.to_string(),
        },
    })?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            why: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// The served certificate, swapped atomically on rotation.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 of the certificate and key files last loaded (a no-op reload is skipped).
    loaded: ArcSwap<[u8; 32]>,
}

fn files_digest(cert: &Path, key: &Path) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in [cert, key] {
        h.update(std::fs::read(p).unwrap_or_default());
        h.update([0u8]);
    }
    h.finalize().into()
}

impl CertStore {
    /// Loads the pair; an error names the file and the problem.
    pub fn open(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(pair),
            loaded: ArcSwap::from_pointee(files_digest(cert, key)),
        })
    }

    /// The certificate and key files (to watch them).
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// Loads the files again and swaps the pair in if they changed and are good.
    pub fn reload(&self, why: &str) {
        let digest = files_digest(&self.cert, &self.key);
        if **self.loaded.load() == digest {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                self.loaded.store(Arc::new(digest));
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(why, cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failed").increment(1);
                tracing::error!(why, error = %e, "TLS certificate reload failed; the previous certificate keeps serving");
            }
        }
    }

    /// The rustls server configuration: this store as the certificate resolver, TLS 1.3 and
    /// 1.2, ALPN h2 then http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
