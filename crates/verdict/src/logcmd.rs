//! `verdict log verify` and `verdict log export`.

use std::io::{BufWriter, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use verdict_log::{ExportedEntry, SqliteLog};

use crate::UsageError;
use crate::config::Loaded;

/// Opens the configured log read-only (exit 2 when there is none).
pub fn open(loaded: &Loaded) -> anyhow::Result<SqliteLog> {
    let path = existing(loaded)?;
    SqliteLog::open_read_only(path).with_context(|| format!("opening {}", path.display()))
}

/// Opens the configured log read-write, for the commands that write (exit 2 when there is
/// none: they never create one). A read-write open also rolls back a write a killed process
/// left unfinished.
pub fn open_rw(loaded: &Loaded) -> anyhow::Result<SqliteLog> {
    let path = existing(loaded)?;
    SqliteLog::open(path).with_context(|| format!("opening {}", path.display()))
}

fn existing(loaded: &Loaded) -> anyhow::Result<&std::path::Path> {
    let path = &loaded.config.storage.path;
    if !path.exists() {
        return Err(UsageError(loaded.storage_missing()).into());
    }
    Ok(path)
}

/// Exit 0 intact; 1 broken, naming the first bad seq.
pub fn verify(loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let log = open(loaded)?;
    let report = verdict_log::verify(&log).context("reading the log")?;
    let mut out = std::io::stdout().lock();
    if report.is_intact() {
        let head = report.head.map_or_else(|| "none".to_owned(), hex::encode);
        writeln!(
            out,
            "ok: {} entries, chain intact, head {head}",
            report.entries
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    match report.first_bad_seq() {
        Some(seq) => writeln!(out, "BROKEN: first bad seq {seq}")?,
        None => writeln!(out, "BROKEN")?,
    }
    for p in &report.problems {
        writeln!(out, "  {p}")?;
    }
    Ok(ExitCode::from(1))
}

/// NDJSON to stdout.
pub fn export(loaded: &Loaded, after: u64) -> anyhow::Result<()> {
    let log = open(loaded)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut write_err = None;
    log.for_each_after(after, |e| {
        if write_err.is_none()
            && let Err(err) = writeln!(out, "{}", ExportedEntry::new(&e).to_line())
        {
            write_err = Some(err);
        }
        Ok(())
    })?;
    let flushed = out.flush();
    match write_err.map_or(flushed, Err) {
        // The reader went away (`verdict log export | head`): not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
