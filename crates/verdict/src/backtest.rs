//! `verdict policy backtest --policy CANDIDATE`: what a candidate policy would decide on every
//! recorded finished session, next to the decision the policy in force recorded for it, and how
//! often each agrees with the analysts' overrides.
//!
//! The candidate sees what the recorded policy saw: the `details` of the session's newest
//! `idv:session_finished` (read from the log) and the session's projected state. The recorded
//! decisions are read from the log (the newest `policy` decision of each session). Sessions are
//! read in the order of their finished event (sequential reads of the log) and evaluated on
//! every core. Nothing is written.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use verdict_log::SqliteLog;
use verdict_projector::{Action, Session};

use crate::config::Loaded;
use crate::{logcmd, policycmd};
use verdict_projections as projections;
use verdict_projections::SessionQueries as _;

/// One session's outcome.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// The newest decision the policy recorded for the session, if any.
    recorded: Option<Action>,
    candidate: Action,
    analyst: Option<Action>,
}

/// Runs the backtest; exit 0 (1 when the candidate does not compile).
pub fn run(loaded: &Loaded, candidate: &Path) -> anyhow::Result<ExitCode> {
    let cand = match policycmd::compile_file(candidate)? {
        Ok((p, _)) => p,
        Err(rendered) => {
            policycmd::print_diagnostics(&rendered)?;
            return Ok(ExitCode::from(1));
        }
    };
    let started = std::time::Instant::now();
    let log = logcmd::open(loaded)?;
    let recorded = recorded_policy_decisions(&log)?;
    // Every session with a finished event, in the order of that event (the states are parsed
    // by the workers).
    let sessions = log.finished()?;
    let outcomes = evaluate(&loaded.config.storage.path, &cand, &recorded, &sessions)?;
    report(&cand, &outcomes, started.elapsed().as_secs_f64())?;
    Ok(ExitCode::SUCCESS)
}

/// Evaluates the candidate on every session (the states are parsed by the workers), on every
/// core, with a progress bar.
fn evaluate(
    path: &Path,
    cand: &verdict_rules::Policy,
    recorded: &std::collections::HashMap<String, Action>,
    sessions: &[(u64, projections::StoredSession)],
) -> anyhow::Result<Vec<Outcome>> {
    let total = sessions.len() as u64;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "backtest {bar:40} {pos}/{len} sessions ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    let done = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = sessions.len().div_ceil(threads).max(1);
    let outcomes: Vec<anyhow::Result<Vec<Outcome>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .chunks(chunk)
            .map(|part| {
                let done = &done;
                scope.spawn(move || -> anyhow::Result<Vec<Outcome>> {
                    let log = SqliteLog::open_read_only(path)?;
                    let mut out = Vec::with_capacity(part.len());
                    for (seq, stored) in part {
                        let s: Session = stored.read()?;
                        let Some(raw) = log.body(*seq)? else {
                            anyhow::bail!("seq {seq}: the finished event is not in the log");
                        };
                        let candidate =
                            projections::policy_decision(cand, &raw, projections::session_json(&s))
                                .action;
                        out.push(Outcome {
                            recorded: recorded.get(&s.session_id).copied(),
                            candidate,
                            analyst: s.last_override.as_ref().map(|o| o.action),
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out)
                })
            })
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            bar.set_position(done.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a backtest thread stopped")))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut all = Vec::with_capacity(sessions.len());
    for part in outcomes {
        all.extend(part?);
    }
    Ok(all)
}

/// Prints how many decisions would change, from what to what, and the agreement with analysts.
fn report(cand: &verdict_rules::Policy, outcomes: &[Outcome], secs: f64) -> anyhow::Result<()> {
    let total = outcomes.len() as u64;
    let mut changes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let (mut changed, mut overridden, mut agree_rec, mut agree_cand) = (0u64, 0u64, 0u64, 0u64);
    for o in outcomes {
        if o.recorded != Some(o.candidate) {
            changed += 1;
            *changes
                .entry((
                    o.recorded.map_or("none", Action::as_str),
                    o.candidate.as_str(),
                ))
                .or_default() += 1;
        }
        if let Some(a) = o.analyst {
            overridden += 1;
            agree_rec += u64::from(Some(a) == o.recorded);
            agree_cand += u64::from(a == o.candidate);
        }
    }
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "backtest: candidate {} version {} ({}) against the recorded policy decisions",
        cand.name,
        cand.version,
        &cand.sha256[..12],
    )?;
    writeln!(
        out,
        "{total} finished sessions evaluated in {secs:.2}s ({:.0}/s)",
        total as f64 / secs.max(1e-9)
    )?;
    writeln!(
        out,
        "would change: {changed} of {total} ({:.2}%)",
        pct(changed, total)
    )?;
    if !changes.is_empty() {
        writeln!(out, "  {:<10} {:<10} {:>10}", "from", "to", "sessions")?;
        for ((from, to), n) in &changes {
            writeln!(out, "  {from:<10} {to:<10} {n:>10}")?;
        }
    }
    if overridden == 0 {
        writeln!(out, "analyst overrides: none recorded")?;
    } else {
        writeln!(
            out,
            "analyst overrides: {overridden} sessions; the candidate agrees with {agree_cand} ({:.1}%), the recorded policy decisions with {agree_rec} ({:.1}%)",
            pct(agree_cand, overridden),
            pct(agree_rec, overridden)
        )?;
    }
    Ok(())
}

/// The newest decision of source `policy` of each session, read from the log.
fn recorded_policy_decisions(
    log: &SqliteLog,
) -> anyhow::Result<std::collections::HashMap<String, Action>> {
    let mut out = std::collections::HashMap::new();
    log.for_each_decision(|seq, body| {
        let d: verdict_projector::DecisionBody =
            serde_json::from_slice(body).with_context(|| format!("seq {seq}: a decision"))?;
        if d.source == verdict_projector::DecisionSource::Policy {
            out.insert(d.session_id, d.action);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(out)
}
