//! `verdict deliveries list|retry|enable`: the dead-letter queue and redrive.
//!
//! These write the outbox table directly (a short transaction beside a running `serve`); the
//! server's dispatcher rescans at least every second, so a redrive is picked up promptly.

use std::io::Write as _;
use std::process::ExitCode;

use crate::config::Loaded;
use crate::{UsageError, logcmd};
use verdict_outbox::{Filter, OutboxAdmin as _};

/// Prints deliveries, newest first: a table, or one JSON object a line.
pub fn list(loaded: &Loaded, filter: Filter, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let log = logcmd::open(loaded)?;
    let rows = log.deliveries(filter, limit)?;
    let disabled = log.disabled_sinks()?;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for (sink, at, reason) in &disabled {
        writeln!(
            out,
            "sink {sink} DISABLED since {at} ({reason}); `verdict deliveries enable {sink}` resumes it"
        )?;
    }
    writeln!(
        out,
        "{:>6}  {:<12} {:>8}  {:<36}  {:<10} {:>8}  {:<24}  last",
        "id", "sink", "seq", "session", "state", "attempts", "next attempt"
    )?;
    for r in &rows {
        let last = match (&r.last_status, &r.last_error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{:>6}  {:<12} {:>8}  {:<36}  {:<10} {:>8}  {:<24}  {last}",
            r.id,
            r.sink,
            r.seq,
            r.session_id,
            r.state,
            r.attempts,
            r.next_attempt_at.as_deref().unwrap_or("-"),
        )?;
    }
    writeln!(out, "{} deliveries", rows.len())?;
    Ok(ExitCode::SUCCESS)
}

/// Queues deliveries again: one by id, or every dead one.
pub fn retry(loaded: &Loaded, id: Option<i64>, all_dead: bool) -> anyhow::Result<ExitCode> {
    let log = match (id, all_dead) {
        (Some(_), false) | (None, true) => logcmd::open_rw(loaded)?,
        _ => {
            return Err(UsageError(crate::config::ConfigError::usage(
                "give a delivery ID or --all-dead (not both)",
            ))
            .into());
        }
    };
    let mut out = std::io::stdout().lock();
    if let Some(id) = id {
        if !log.retry(id)? {
            writeln!(out, "no delivery {id}")?;
            return Ok(ExitCode::from(1));
        }
        writeln!(out, "delivery {id} queued again")?;
    } else {
        let mut log = log;
        let (queued, superseded) = log.retry_all_dead()?;
        writeln!(out, "{queued} dead deliveries queued again")?;
        if superseded > 0 {
            writeln!(
                out,
                "{superseded} not queued: a newer decision of their session was delivered since (marked superseded)"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Enables a sink that answered 410 Gone.
pub fn enable(loaded: &Loaded, sink: &str) -> anyhow::Result<ExitCode> {
    let log = logcmd::open_rw(loaded)?;
    let mut out = std::io::stdout().lock();
    if log.enable_sink(sink)? {
        writeln!(out, "sink {sink} enabled")?;
    } else {
        writeln!(out, "sink {sink} was not disabled")?;
    }
    Ok(ExitCode::SUCCESS)
}
