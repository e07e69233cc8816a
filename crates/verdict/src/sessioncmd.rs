//! `verdict replay`, `verdict session show|history` and `verdict override`.

use std::io::Write as _;
use std::process::ExitCode;

use verdict_log::EventStore as _;

use crate::config::Loaded;
use crate::{UsageError, logcmd};
use verdict_projections as projections;
use verdict_projections::SessionQueries as _;

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing to do). A replay
/// touches hundreds of megabytes of fresh memory, and huge pages make the kernel zero (and
/// perhaps compact) 2 MB at each fault, which slowed replay measurably (docs/benchmarks.md,
/// "`verdict replay` on one million events"). The server keeps them: it touches its memory
/// once and keeps it.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "replay: transparent huge pages stay on");
    }
}

/// Rebuilds every projection from the log and prints the digest.
pub fn replay(loaded: &Loaded) -> anyhow::Result<ExitCode> {
    without_huge_pages();
    let mut log = logcmd::open_rw(loaded)?;
    let before = projections::ProjectionStore::checkpoint(&log)?;
    let head = log.head()?.map_or(0, |h| h.seq);
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(head),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "replay {bar:40} {pos}/{len} entries ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    let started = std::time::Instant::now();
    // Every recorded decision is derived again on a second thread while the fold runs.
    let (check_tx, check_rx) = verdict_projections::rederive::channel();
    let checker = std::thread::Builder::new()
        .name("verdict-rederive".into())
        .spawn(move || verdict_projections::rederive::run(&check_rx))?;
    let p = projections::rebuild(&mut log, |done, _| bar.set_position(done), Some(&check_tx));
    drop(check_tx);
    let report = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the decision check stopped unexpectedly"))?;
    let projections::Rebuilt {
        projection: p,
        digest,
        previous_digest,
        written,
    } = p?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "replayed {} entries in {secs:.2}s ({:.0}/s): {} sessions, {} quarantined",
        p.last_seq,
        p.last_seq as f64 / secs.max(1e-9),
        p.sessions().count(),
        p.quarantined
    )?;
    writeln!(out, "digest {digest}")?;
    let live = previous_digest.unwrap_or_else(|| digest.clone());
    let verdict = if before != p.last_seq {
        format!("projector was at seq {before} of {head}")
    } else if live == digest {
        "matches".to_owned()
    } else {
        "DIFFERS".to_owned()
    };
    writeln!(out, "previous digest {live} ({verdict})")?;
    let how = if written.rewritten {
        "rewritten whole".to_owned()
    } else {
        format!(
            "{} session rows and {} links changed",
            written.sessions, written.links
        )
    };
    writeln!(out, "projections: {how}")?;
    if report.differ == 0 {
        writeln!(
            out,
            "decisions: {} recorded, all derived again the same from the log",
            report.checked
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "decisions: {} recorded, {} DIFFER when derived again ({} expected but never recorded)",
        report.checked, report.differ, report.missing
    )?;
    for e in &report.examples {
        writeln!(out, "  {e}")?;
    }
    Ok(ExitCode::from(1))
}

/// Prints a session's JSON; exit 1 for an unknown session.
pub fn show(loaded: &Loaded, id: &str, as_of: Option<u64>) -> anyhow::Result<ExitCode> {
    let log = logcmd::open(loaded)?;
    let found = match as_of {
        Some(seq) => log.session_as_of(id, seq)?,
        None => log.session(id)?,
    };
    match found {
        Some(s) => {
            writeln!(
                std::io::stdout().lock(),
                "{:#}",
                projections::session_json(&s)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        None => unknown(id),
    }
}

/// Prints a session's history JSON; exit 1 for an unknown session.
pub fn history(loaded: &Loaded, id: &str) -> anyhow::Result<ExitCode> {
    let log = logcmd::open(loaded)?;
    match log.history(id, projections::HistoryPage::ALL)? {
        Some(body) => {
            writeln!(std::io::stdout().lock(), "{body}")?;
            Ok(ExitCode::SUCCESS)
        }
        None => unknown(id),
    }
}

fn unknown(id: &str) -> anyhow::Result<ExitCode> {
    eprintln!("verdict: unknown session {id}");
    Ok(ExitCode::from(1))
}

/// Appends an `analyst:override` through this process's own connection (safe beside a running
/// server: the chain head is read inside the write transaction).
pub fn override_session(
    loaded: &Loaded,
    id: &str,
    action: &str,
    reason: &str,
    actor: &str,
    ticket: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = projections::validate_override(id, actor, action, reason, ticket)
        .map_err(|m| UsageError(crate::config::ConfigError::usage(m)))?;
    let mut log = logcmd::open_rw(loaded)?;
    if !log.session_exists(id)? {
        return unknown(id);
    }
    let event = projections::override_event(&body)?;
    let appended = verdict_log::EventStore::append_batch(&mut log, &[&event])?;
    let seq = appended.first().map_or(0, verdict_log::Appended::seq);
    let answer = serde_json::json!({ "status": "recorded", "seq": seq, "override": body });
    writeln!(std::io::stdout().lock(), "{answer:#}")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn replay_turns_huge_pages_off_for_its_process() {
        // The flag belongs to the whole process (this test binary): harmless here.
        super::without_huge_pages();
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().ok(),
            Some(true)
        );
    }
}
