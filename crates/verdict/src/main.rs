//! The `verdict` binary: the sidecar server and its command-line tools.
//!
//! Exit codes: 0 success; 1 a check failed or a runtime error; 2 bad usage or bad configuration
//! (the message names the problem, `file:line:col` for the config).

mod backtest;
mod config;
mod deliverycmd;
mod demo;
mod logcmd;
mod metrics;
mod policycmd;
mod reload;
mod serve;
mod sessioncmd;
mod simulate;
mod tlswatch;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// mimalloc: parsing webhook JSON, folding and evaluating rules allocate many small objects;
// measured 20-30% faster than the system allocator on replay and backtest (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An event-sourced decision sidecar for identity-verification webhooks.
#[derive(Debug, Parser)]
#[command(name = "verdict", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "VERDICT_CONFIG",
        default_value = "config/verdict.toml"
    )]
    config: PathBuf,
    /// Log output format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar until SIGINT or SIGTERM, then drain and stop.
    Serve,
    /// Try verdict in one command: a sidecar, a decision sink and the simulator in a temporary
    /// directory, decisions shown as they arrive, then a summary.
    Demo {
        /// Sessions to simulate.
        #[arg(long, default_value_t = 40)]
        sessions: u64,
    },
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Rebuild every projection from the log and print the digest of the projected state.
    Replay,
    /// Work with policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show a session as the HTTP API does.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Send simulated SEON IDV deliveries to a verdict (or any receiver): signed, retried,
    /// with duplicates and reordering on request; prints a summary (exit 1 if any failed).
    Simulate {
        /// The webhook URL, e.g. http://127.0.0.1:8080/webhooks/seon-idv.
        #[arg(long)]
        url: String,
        /// The source's SEON webhook secret.
        // `hide_env_values`: `--help` would otherwise print the variable's value.
        #[arg(long, env = "SEON_WEBHOOK_SECRET", hide_env_values = true)]
        secret: config::Secret,
        /// Sessions to generate.
        #[arg(long, default_value_t = 100)]
        sessions: u64,
        /// Deliveries per second (default: as fast as --concurrency allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Probability of sending a delivery twice (0..1).
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Probability of sending a session's later event first (0..1).
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Seed of the generator (same seed, same deliveries).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The signature header.
        #[arg(long, default_value = "X-Seon-Signature")]
        header: String,
        /// Deliveries in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Decision deliveries to the sinks: list, redrive dead letters, re-enable a sink.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Record an analyst override of a session.
    Override {
        /// The session id.
        id: String,
        /// approve, decline or review.
        #[arg(long)]
        action: String,
        /// Why (required, not empty).
        #[arg(long)]
        reason: String,
        /// Who is overriding.
        #[arg(long)]
        actor: String,
        /// A ticket reference.
        #[arg(long)]
        ticket: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Parse and compile a policy (default: the configured one); errors as file:line:col.
    Check {
        /// The policy file.
        path: Option<PathBuf>,
    },
    /// Run the test cases kept beside a policy (`<name>.tests.toml`).
    Test {
        /// The policy file.
        path: Option<PathBuf>,
    },
    /// Evaluate a candidate policy over every recorded finished session, next to the recorded
    /// policy decisions: how many would change, from what to what, and agreement with overrides.
    Backtest {
        /// The candidate policy.
        #[arg(long)]
        policy: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// The session's current state (`GET /v1/sessions/{id}`).
    Show {
        /// The session id.
        id: String,
        /// The state as of this seq.
        #[arg(long)]
        as_of: Option<u64>,
    },
    /// Every entry of the session in seq order (`GET /v1/sessions/{id}/history`).
    History {
        /// The session id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// Deliveries not yet delivered (pending and dead), newest first.
    List {
        /// Only dead-lettered deliveries.
        #[arg(long, conflicts_with = "all")]
        dead: bool,
        /// Every delivery, delivered and superseded included.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead (or superseded) delivery again, from a fresh schedule.
    Retry {
        /// The delivery id (from `deliveries list`).
        id: Option<i64>,
        /// Every dead delivery.
        #[arg(long)]
        all_dead: bool,
    },
    /// Resume a sink that was disabled because it answered 410 Gone.
    Enable {
        /// The sink's name.
        sink: String,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Check the hash chain and the append-only invariants (exit 1 naming the first bad seq).
    Verify,
    /// Write the log as NDJSON to stdout, one entry a line.
    Export {
        /// Only entries with a seq greater than this.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// An error that means bad usage or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(#[from] pub config::ConfigError);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // One crypto provider for the whole process (the HTTP client for sinks and the simulator,
    // and the TLS server): rustls on ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<UsageError>().is_some();
            eprintln!("verdict: {e:#}");
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(done) = run_without_config(&cli.command) {
        return done;
    }
    let loaded = config::Loaded::load(&cli.config).map_err(UsageError)?;
    match &cli.command {
        Command::Serve => serve::run(&loaded).map(|()| ExitCode::SUCCESS),
        Command::Log {
            command: LogCommand::Verify,
        } => logcmd::verify(&loaded),
        Command::Log {
            command: LogCommand::Export { after },
        } => logcmd::export(&loaded, *after).map(|()| ExitCode::SUCCESS),
        Command::Replay => sessioncmd::replay(&loaded),
        // Handled by `run_without_config`.
        Command::Simulate { .. } | Command::Demo { .. } => Ok(ExitCode::from(2)),
        Command::Policy { command } => policy(&loaded, command),
        Command::Session {
            command: SessionCommand::Show { id, as_of },
        } => sessioncmd::show(&loaded, id, *as_of),
        Command::Session {
            command: SessionCommand::History { id },
        } => sessioncmd::history(&loaded, id),
        Command::Deliveries { command } => deliveries(&loaded, command),
        Command::Override {
            id,
            action,
            reason,
            actor,
            ticket,
        } => sessioncmd::override_session(&loaded, id, action, reason, actor, ticket.clone()),
    }
}

/// The commands that need no config: a policy given by path, the demo (it writes its own),
/// the simulator (a client). `None` for the others.
fn run_without_config(command: &Command) -> Option<anyhow::Result<ExitCode>> {
    match command {
        Command::Policy {
            command: PolicyCommand::Check { path: Some(path) },
        } => Some(policycmd::check(path)),
        Command::Policy {
            command: PolicyCommand::Test { path: Some(path) },
        } => Some(policycmd::test(path)),
        Command::Demo { sessions } => Some(demo::run(*sessions)),
        Command::Simulate { .. } => Some(simulate_command(command)),
        _ => None,
    }
}

/// `verdict simulate`.
fn simulate_command(command: &Command) -> anyhow::Result<ExitCode> {
    let Command::Simulate {
        url,
        secret,
        sessions,
        rate,
        duplicates,
        reorder,
        seed,
        header,
        concurrency,
    } = command
    else {
        return Ok(ExitCode::from(2));
    };
    for (name, p) in [("--duplicates", duplicates), ("--reorder", reorder)] {
        if !(0.0..=1.0).contains(p) {
            return Err(UsageError(config::ConfigError::usage(format!(
                "{name} must be between 0 and 1"
            )))
            .into());
        }
    }
    let options = simulate::Options {
        url: url.clone(),
        secret: secret.clone(),
        sessions: *sessions,
        rate: *rate,
        duplicates: *duplicates,
        reorder: *reorder,
        seed: *seed,
        header: header.clone(),
        concurrency: *concurrency,
        max_retries: 5,
        backoff: std::time::Duration::from_millis(200),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(simulate::run(options))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `verdict policy check|test|backtest` with the config (the configured policy by default).
fn policy(loaded: &config::Loaded, command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let (path, check) = match command {
        PolicyCommand::Backtest { policy } => return backtest::run(loaded, policy),
        PolicyCommand::Check { path } => (path, true),
        PolicyCommand::Test { path } => (path, false),
    };
    let path = match (path, &loaded.config.policy) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.path.get_ref().clone(),
        (None, None) => {
            return Err(UsageError(config::ConfigError::usage(format!(
                "no [policy] in {} and no PATH given",
                loaded.file.display()
            )))
            .into());
        }
    };
    if check {
        policycmd::check(&path)
    } else {
        policycmd::test(&path)
    }
}

/// `verdict deliveries list|retry|enable`.
fn deliveries(loaded: &config::Loaded, command: &DeliveriesCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeliveriesCommand::List {
            dead,
            all,
            limit,
            json,
        } => {
            let filter = match (dead, all) {
                (true, _) => verdict_outbox::Filter::Dead,
                (false, true) => verdict_outbox::Filter::All,
                (false, false) => verdict_outbox::Filter::Undelivered,
            };
            deliverycmd::list(loaded, filter, *limit, *json)
        }
        DeliveriesCommand::Retry { id, all_dead } => deliverycmd::retry(loaded, *id, *all_dead),
        DeliveriesCommand::Enable { sink } => deliverycmd::enable(loaded, sink),
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => {
            builder.with_ansi(std::io::stderr().is_terminal()).init();
        }
        LogFormat::Json => builder.json().init(),
    }
}
