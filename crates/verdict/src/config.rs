//! The configuration file: parsed once at start, validated, then immutable.
//!
//! Unknown keys are rejected with `file:line:col`. Secrets are written as `env:NAME`,
//! `file:PATH` or a literal, and resolved only by the commands that need them, so that
//! `verdict log verify` works without the webhook secrets in its environment.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use verdict_ingress::signature::Scheme;
use verdict_outbox::{SinkUrl, redact_url};

/// A problem with the configuration: exit code 2, printed as `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    location: String,
    message: String,
}

impl ConfigError {
    /// A usage error that is not tied to the config file.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            location: "usage".into(),
            message: message.into(),
        }
    }

    fn at(file: &Path, text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let location = match span {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("{}:{line}:{col}", file.display())
            }
            None => file.display().to_string(),
        };
        Self {
            location,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[storage]`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[[sources]]`.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// `[policy]`.
    pub policy: Option<PolicyConfig>,
    /// `[[sinks]]`.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// `[delivery]`: how decisions are delivered to the sinks.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// `[[tokens]]`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one (printed at start).
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Largest webhook body accepted (413 above).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: Spanned<usize>,
    /// Seconds a client has to send a request's headers (a slow client is disconnected).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_secs: Spanned<u64>,
    /// Seconds a client has to send a whole request, head and body (408 after).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: Spanned<u64>,
    /// Connections open at once; at the cap the one that has kept verdict waiting longest is
    /// closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// Webhook body bytes buffered at once across all requests (503 above).
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: Spanned<usize>,
    /// A second address serving `/v1`, `/ui` and `/metrics` (then not served on `listen`).
    pub admin_listen: Option<Spanned<String>>,
    /// `[server.tls]`: serve HTTPS directly.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            header_read_timeout_secs: default_header_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_connections: default_max_connections(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            admin_listen: None,
            tls: None,
        }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_owned())
}

fn default_max_body() -> Spanned<usize> {
    Spanned::new(0..0, 1 << 20)
}

fn default_header_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

fn default_request_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}

fn default_max_buffered_body_bytes() -> Spanned<usize> {
    Spanned::new(0..0, 64 << 20)
}

fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 1024)
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert: Spanned<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The SQLite file (relative paths are relative to the working directory).
    #[serde(default = "default_db")]
    pub path: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { path: default_db() }
    }
}

fn default_db() -> PathBuf {
    PathBuf::from("data/verdict.db")
}

/// One `[[sources]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Served at `POST /webhooks/{name}`.
    pub name: Spanned<String>,
    /// Signature scheme.
    pub scheme: Scheme,
    /// The header carrying the signature (scheme `seon`).
    pub signature_header: Option<String>,
    /// Secrets (`env:`, `file:` or literal); several during rotation.
    pub secrets: Spanned<Vec<Spanned<SecretRef>>>,
    /// Allowed clock difference for schemes with a timestamp.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: Spanned<u64>,
}

fn default_tolerance() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}

/// `[policy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The active policy file.
    pub path: Spanned<PathBuf>,
}

/// `[delivery]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Per attempt, in seconds.
    pub timeout_secs: u64,
    /// The wait after the first failed attempt, in milliseconds; it doubles after each failure.
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts (and the cap on `Retry-After`), in seconds.
    pub max_backoff_secs: u64,
    /// Attempts in all before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Relative jitter of each wait, 0 to 1.
    pub jitter: f64,
    /// Mark an undelivered decision superseded when a newer one of the same session is pending.
    pub supersede: bool,
    /// Attempts in flight at once.
    pub concurrency: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let s = verdict_delivery::Schedule::default();
        Self {
            timeout_secs: 10,
            initial_backoff_ms: u64::try_from(s.initial.as_millis()).unwrap_or(2000),
            max_backoff_secs: s.max_delay.as_secs(),
            max_attempts: s.max_attempts,
            jitter: s.jitter,
            supersede: true,
            concurrency: 16,
        }
    }
}

impl DeliveryConfig {
    /// The dispatcher's settings.
    pub fn settings(&self) -> verdict_outbox::Settings {
        verdict_outbox::Settings {
            schedule: verdict_delivery::Schedule {
                initial: std::time::Duration::from_millis(self.initial_backoff_ms),
                max_delay: std::time::Duration::from_secs(self.max_backoff_secs),
                max_attempts: self.max_attempts,
                jitter: self.jitter,
            },
            timeout: std::time::Duration::from_secs(self.timeout_secs),
            supersede: self.supersede,
            concurrency: self.concurrency,
        }
    }
}

/// One `[[sinks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Name in logs and metrics.
    pub name: Spanned<String>,
    /// Where decisions are POSTed (may carry credentials: never printed whole).
    pub url: Spanned<SinkUrl>,
    /// Standard Webhooks secret `whsec_<base64>` (`env:`, `file:` or literal).
    pub secret: Spanned<SecretRef>,
}

/// One `[[tokens]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token (recorded as the actor of overrides).
    pub name: Spanned<String>,
    /// What the token may do.
    pub role: Role,
    /// The bearer token (`env:`, `file:` or literal).
    pub token: Spanned<SecretRef>,
}

pub use verdict_web::Role;

/// A secret as written in the config: `env:NAME`, `file:PATH` or the value itself. `Debug`
/// shows where an `env:` or `file:` secret comes from, never a literal value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretRef(String);

impl SecretRef {
    fn raw(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("env:") || self.0.starts_with("file:") {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str("[redacted]")
        }
    }
}

/// The fewest characters a `[[tokens]]` token may have (about 190 bits as random base64).
pub const MIN_TOKEN_CHARS: usize = 32;
/// The fewest bytes of a webhook or sink secret's key.
pub const MIN_SECRET_BYTES: usize = 16;
/// The widest timestamp tolerance: a signed delivery older than this is refused, which bounds
/// how long a captured request can be replayed under a new id.
pub const MAX_TOLERANCE_SECS: u64 = 3600;

/// A resolved secret. Never printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    /// A secret given on the command line (`verdict simulate --secret`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl Secret {
    /// The secret's value, for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A loaded configuration with the file it came from, for error locations.
pub struct Loaded {
    /// The parsed file.
    pub config: Config,
    /// Where it was read.
    pub file: PathBuf,
    text: String,
}

/// Without the file's text, which may hold literal secrets.
impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("config", &self.config)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::parse(path, text)
    }

    /// Parses and validates config text (`path` is used in messages only).
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::at(path, &text, e.span(), e.message().to_owned()))?;
        let loaded = Self {
            config,
            file: path.to_owned(),
            text,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, ConfigError> {
        let span = (span != (0..0)).then_some(span);
        Err(ConfigError::at(&self.file, &self.text, span, message))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_sources()?;
        self.validate_tokens()?;
        self.validate_delivery()?;
        self.validate_sinks()
    }

    /// The `[server]` section: addresses, limits and timeouts.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.server.listen.get_ref().parse::<SocketAddr>().is_err() {
            return self.err(
                c.server.listen.span(),
                format!(
                    "listen {:?} is not an address like 127.0.0.1:8080",
                    c.server.listen.get_ref()
                ),
            );
        }
        if *c.server.max_body_bytes.get_ref() == 0 {
            return self.err(
                c.server.max_body_bytes.span(),
                "max_body_bytes must be at least 1",
            );
        }
        if !(1..=3600).contains(c.server.header_read_timeout_secs.get_ref()) {
            return self.err(
                c.server.header_read_timeout_secs.span(),
                "header_read_timeout_secs must be between 1 and 3600",
            );
        }
        if !(1..=3600).contains(c.server.request_timeout_secs.get_ref()) {
            return self.err(
                c.server.request_timeout_secs.span(),
                "request_timeout_secs must be between 1 and 3600",
            );
        }
        if c.server.max_buffered_body_bytes.get_ref() < c.server.max_body_bytes.get_ref() {
            // Left at its default, the problem is the other key.
            let span = match c.server.max_buffered_body_bytes.span() {
                std::ops::Range { start: 0, end: 0 } => c.server.max_body_bytes.span(),
                s => s,
            };
            return self.err(
                span,
                format!(
                    "max_buffered_body_bytes ({}) must be at least max_body_bytes ({})",
                    c.server.max_buffered_body_bytes.get_ref(),
                    c.server.max_body_bytes.get_ref()
                ),
            );
        }
        if let Some(admin) = &c.server.admin_listen {
            match admin.get_ref().parse::<SocketAddr>() {
                Err(_) => {
                    return self.err(
                        admin.span(),
                        format!(
                            "admin_listen {:?} is not an address like 127.0.0.1:9090",
                            admin.get_ref()
                        ),
                    );
                }
                Ok(a) if a.port() != 0 && Some(a) == c.server.listen.get_ref().parse().ok() => {
                    return self.err(admin.span(), "admin_listen must differ from listen");
                }
                Ok(_) => {}
            }
        }
        if *c.server.max_connections.get_ref() == 0 {
            return self.err(
                c.server.max_connections.span(),
                "max_connections must be at least 1",
            );
        }
        Ok(())
    }

    /// The `[[sources]]`: names, secrets, tolerances.
    fn validate_sources(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut names = HashSet::new();
        for s in &c.sources {
            let name = s.name.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return self.err(
                    s.name.span(),
                    format!(
                        "source name {name:?} must be non-empty and use only A-Z a-z 0-9 - _ ."
                    ),
                );
            }
            if name == verdict_log::INTERNAL_SOURCE {
                return self.err(
                    s.name.span(),
                    format!("source name {name:?} is reserved for verdict's own events"),
                );
            }
            if !names.insert(name.as_str()) {
                return self.err(s.name.span(), format!("source {name:?} is defined twice"));
            }
            if s.secrets.get_ref().is_empty() {
                return self.err(
                    s.secrets.span(),
                    format!("source {name:?} needs at least one secret"),
                );
            }
            if !(1..=MAX_TOLERANCE_SECS).contains(s.tolerance_secs.get_ref()) {
                return self.err(
                    s.tolerance_secs.span(),
                    format!("tolerance_secs must be between 1 and {MAX_TOLERANCE_SECS}"),
                );
            }
            if s.signature_header.is_some() && s.scheme != Scheme::Seon {
                return self.err(
                    s.name.span(),
                    format!(
                        "signature_header applies to scheme \"seon\" only, not {:?}",
                        s.scheme.name()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The `[[tokens]]`: one name per holder.
    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut token_names = HashSet::new();
        for t in &c.tokens {
            if t.name.get_ref().is_empty() {
                return self.err(t.name.span(), "token name must not be empty");
            }
            // The name is the actor recorded on overrides: two holders must not share one.
            if !token_names.insert(t.name.get_ref().as_str()) {
                return self.err(
                    t.name.span(),
                    format!("token name {:?} is used twice", t.name.get_ref()),
                );
            }
        }
        Ok(())
    }

    /// The `[delivery]` settings.
    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let d = &c.delivery;
        if d.timeout_secs == 0
            || d.max_attempts == 0
            || d.concurrency == 0
            || d.initial_backoff_ms == 0
            || d.max_backoff_secs == 0
        {
            return Err(ConfigError {
                location: self.file.display().to_string(),
                message: "[delivery] timeout_secs, max_attempts, concurrency, initial_backoff_ms \
                          and max_backoff_secs must be at least 1"
                    .into(),
            });
        }
        if !(0.0..=1.0).contains(&d.jitter) {
            return Err(ConfigError {
                location: self.file.display().to_string(),
                message: "[delivery] jitter must be between 0 and 1".into(),
            });
        }
        Ok(())
    }

    /// The `[[sinks]]`: names and URLs.
    fn validate_sinks(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut sink_names = HashSet::new();
        for s in &c.sinks {
            if !sink_names.insert(s.name.get_ref().as_str()) {
                return self.err(
                    s.name.span(),
                    format!("sink {:?} is defined twice", s.name.get_ref()),
                );
            }
            let url = s.url.get_ref().expose();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return self.err(
                    s.url.span(),
                    format!(
                        "sink url {:?} must start with http:// or https://",
                        redact_url(url)
                    ),
                );
            }
        }
        Ok(())
    }

    /// Resolves one secret written as `env:NAME`, `file:PATH` or a literal.
    pub fn secret(&self, raw: &Spanned<SecretRef>) -> Result<Secret, ConfigError> {
        let v = raw.get_ref().raw();
        let value = if let Some(name) = v.strip_prefix("env:") {
            match std::env::var(name) {
                Ok(val) => val,
                Err(_) => {
                    return self.err(
                        raw.span(),
                        format!("environment variable {name} is not set"),
                    );
                }
            }
        } else if let Some(path) = v.strip_prefix("file:") {
            match std::fs::read_to_string(path) {
                Ok(val) => val.trim_end_matches(['\n', '\r']).to_owned(),
                Err(e) => {
                    return self.err(raw.span(), format!("cannot read secret file {path}: {e}"));
                }
            }
        } else {
            v.to_owned()
        };
        if value.is_empty() {
            return self.err(raw.span(), "secret is empty");
        }
        Ok(Secret(value))
    }

    /// Builds the verifier of every source, resolving their secrets.
    pub fn sources(&self) -> Result<Vec<verdict_ingress::Source>, ConfigError> {
        self.config
            .sources
            .iter()
            .map(|s| {
                let secrets = s
                    .secrets
                    .get_ref()
                    .iter()
                    .map(|raw| self.secret(raw))
                    .collect::<Result<Vec<_>, _>>()?;
                let exposed: Vec<&str> = secrets.iter().map(Secret::expose).collect();
                let verifier = verdict_ingress::signature::Verifier::new(
                    s.scheme,
                    s.signature_header.as_deref(),
                    &exposed,
                    *s.tolerance_secs.get_ref(),
                )
                .or_else(|e| {
                    self.err(
                        s.secrets.span(),
                        format!("source {:?}: {e}", s.name.get_ref()),
                    )
                })?;
                if verifier.shortest_key() < MIN_SECRET_BYTES {
                    return self.err(
                        s.secrets.span(),
                        format!(
                            "source {:?}: a secret of {} bytes is too weak; webhook secrets need \
                             at least {MIN_SECRET_BYTES} bytes",
                            s.name.get_ref(),
                            verifier.shortest_key()
                        ),
                    );
                }
                Ok(verdict_ingress::Source::new(
                    s.name.get_ref().clone(),
                    verifier,
                ))
            })
            .collect()
    }

    /// The error for a `storage.path` that holds no log yet.
    pub fn storage_missing(&self) -> ConfigError {
        ConfigError {
            location: self.file.display().to_string(),
            message: format!(
                "no log at storage.path {} (has `verdict serve` run with this config?)",
                self.config.storage.path.display()
            ),
        }
    }

    /// Every API token, resolved: (name, role, token).
    pub fn tokens(&self) -> Result<Vec<(String, Role, Secret)>, ConfigError> {
        let mut out: Vec<(String, Role, Secret)> = Vec::with_capacity(self.config.tokens.len());
        for t in &self.config.tokens {
            let secret = self.secret(&t.token)?;
            let chars = secret.expose().chars().count();
            if chars < MIN_TOKEN_CHARS {
                return self.err(
                    t.token.span(),
                    format!(
                        "token of {:?} has {chars} characters; tokens need at least \
                         {MIN_TOKEN_CHARS} (e.g. `openssl rand -base64 32`)",
                        t.name.get_ref()
                    ),
                );
            }
            // One token must identify one holder (and one role).
            if let Some((other, _, _)) = out.iter().find(|(_, _, s)| *s == secret) {
                return self.err(
                    t.token.span(),
                    format!(
                        "token of {:?} is the same as the token of {other:?}",
                        t.name.get_ref()
                    ),
                );
            }
            out.push((t.name.get_ref().clone(), t.role, secret));
        }
        Ok(out)
    }

    /// Every sink, resolved, its secret checked to be a Standard Webhooks secret.
    pub fn sinks(&self) -> Result<Vec<verdict_outbox::Sink>, ConfigError> {
        self.config
            .sinks
            .iter()
            .map(|s| {
                let secret = self.secret(&s.secret)?;
                let signer = verdict_delivery::Signer::new(secret.expose()).or_else(|e| {
                    self.err(s.secret.span(), format!("sink {:?}: {e}", s.name.get_ref()))
                })?;
                if signer.key_len() < MIN_SECRET_BYTES {
                    return self.err(
                        s.secret.span(),
                        format!(
                            "sink {:?}: a key of {} bytes is too weak; sink secrets need at \
                             least {MIN_SECRET_BYTES} bytes after whsec_",
                            s.name.get_ref(),
                            signer.key_len()
                        ),
                    );
                }
                Ok(verdict_outbox::Sink {
                    name: s.name.get_ref().clone(),
                    url: s.url.get_ref().clone(),
                    signer,
                })
            })
            .collect()
    }

    /// The TLS certificate store when `[server.tls]` is set, its files read and checked (the
    /// key must match the certificate); an error names the file and the problem.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<verdict_web::tls::CertStore>>, ConfigError> {
        let Some(tls) = &self.config.server.tls else {
            return Ok(None);
        };
        match verdict_web::tls::CertStore::open(tls.cert.get_ref(), tls.key.get_ref()) {
            Ok(store) => Ok(Some(std::sync::Arc::new(store))),
            Err(e) => {
                let span = if e.path() == tls.key.get_ref().as_path() {
                    tls.key.span()
                } else {
                    tls.cert.span()
                };
                self.err(span, format!("[server.tls] {e}"))
            }
        }
    }

    /// The configured policy file, checked to be a readable file.
    pub fn policy_path(&self) -> Result<Option<&Path>, ConfigError> {
        let Some(p) = &self.config.policy else {
            return Ok(None);
        };
        let path = p.path.get_ref();
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => Ok(Some(path.as_path())),
            Ok(_) => self.err(
                p.path.span(),
                format!("policy {} is not a file", path.display()),
            ),
            Err(e) => self.err(
                p.path.span(),
                format!("cannot read policy {}: {e}", path.display()),
            ),
        }
    }

    /// The admin address, when configured (validated at load).
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.config
            .server
            .admin_listen
            .as_ref()
            .and_then(|a| a.get_ref().parse().ok())
    }

    /// The listen address (validated at load).
    pub fn listen(&self) -> SocketAddr {
        self.config
            .server
            .listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, String> {
        Loaded::parse(Path::new("v.toml"), text.to_owned()).map_err(|e| e.to_string())
    }

    const SOURCE: &str = "[[sources]]\nname = \"seon-idv\"\nscheme = \"seon\"\nsecrets = [\"s\"]\n";

    #[test]
    fn accepts_the_shipped_example() {
        let text = include_str!("../../../config/verdict.toml");
        assert!(load(text).is_ok(), "{:?}", load(text).err());
    }

    const T1: &str = "token-one-0123456789abcdef0123456789";
    const T2: &str = "token-two-0123456789abcdef0123456789";

    #[test]
    fn a_token_name_or_value_used_twice_is_refused() {
        let twice = |a: &str, b: &str| {
            format!(
                "{SOURCE}\n[[tokens]]\nname = \"{a}\"\nrole = \"analyst\"\ntoken = \"{T1}\"\n\n\
                 [[tokens]]\nname = \"{b}\"\nrole = \"reader\"\ntoken = \"{}\"\n",
                if a == b { T2 } else { T1 }
            )
        };
        let err = load(&twice("alice", "alice")).err().unwrap_or_default();
        assert!(err.contains("token name \"alice\" is used twice"), "{err}");
        let loaded = load(&twice("alice", "bob")).unwrap();
        let err = loaded
            .tokens()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("token of \"bob\" is the same as the token of \"alice\""),
            "{err}"
        );
        assert!(!err.contains(T1), "the token itself is not printed: {err}");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let check = |text: &str, want: &str| {
            let got = load(text).err().unwrap_or_default();
            assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        };
        check(
            "[server]\nlisten = \"x:1\"\nbogus = 1\n",
            "v.toml:3:1: unknown field `bogus`",
        );
        check(
            "[server]\nlisten = \"nope\"\n",
            "v.toml:2:10: listen \"nope\"",
        );
        check(
            &format!("{SOURCE}{SOURCE}"),
            "v.toml:6:8: source \"seon-idv\" is defined twice",
        );
        check(
            "[[sources]]\nname = \"a b\"\nscheme = \"seon\"\nsecrets = [\"s\"]\n",
            "v.toml:2:8: source name",
        );
        check(
            "[[sources]]\nname = \"a\"\nscheme = \"rsa\"\nsecrets = [\"s\"]\n",
            "v.toml:3:10: unknown variant `rsa`",
        );
        check(
            "[[sources]]\nname = \"a\"\nscheme = \"seon\"\nsecrets = []\n",
            "v.toml:4:11: source \"a\" needs",
        );
        check("[storage]\npath = 3\n", "v.toml:2:8: invalid type");
    }

    #[test]
    fn config_structs_never_print_a_secret() {
        let text = "[[sources]]\nname = \"a\"\nscheme = \"seon\"\n\
                    secrets = [\"literal-webhook-secret-1\", \"env:SEON_SECRET\"]\n\
                    [[sinks]]\nname = \"b\"\nurl = \"https://u:sink-pass@h.example/p?t=q-token\"\n\
                    secret = \"whsec_bGl0ZXJhbC1zaW5rLXNlY3JldA==\"\n\
                    [[tokens]]\nname = \"t\"\nrole = \"reader\"\ntoken = \"literal-token-0123456789abcdef0123\"\n";
        let loaded = load(text).unwrap();
        let debug = format!("{loaded:?}");
        for secret in [
            "literal-webhook-secret-1",
            "sink-pass",
            "q-token",
            "bGl0ZXJhbC1zaW5rLXNlY3JldA",
            "literal-token-0123456789abcdef0123",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // Where a secret comes from is shown; the sink's host and path too.
        assert!(debug.contains("env:SEON_SECRET"), "{debug}");
        assert!(
            debug.contains("https://[redacted]@h.example/[redacted]?[redacted]"),
            "{debug}"
        );
        let sinks = loaded.sinks().unwrap();
        assert!(!format!("{sinks:?}").contains("sink-pass"));
    }

    #[test]
    fn resolves_env_and_file_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "[[sources]]\nname = \"a\"\nscheme = \"seon\"\nsecrets = [\"file:{}\", \"env:VERDICT_TEST_UNSET_VAR\"]\n",
            file.display()
        );
        let loaded = load(&text).unwrap();
        let secrets = loaded.config.sources[0].secrets.get_ref();
        assert_eq!(loaded.secret(&secrets[0]).unwrap().expose(), "from-file");
        let err = loaded.secret(&secrets[1]).unwrap_err().to_string();
        assert!(err.contains("VERDICT_TEST_UNSET_VAR is not set"), "{err}");
        assert!(err.starts_with("v.toml:4:"), "{err}");
        assert_eq!(
            format!("{:?}", loaded.secret(&secrets[0]).unwrap()),
            "[redacted]"
        );
    }
}
