//! `verdict-genlog`: writes a log of SEON-shaped events straight into a SQLite file (no HTTP),
//! for replay and backtest benchmarks. Sessions get an `idv:session_finished` with a random
//! outcome; some get a later `idv:session_status_updated`, some arrive out of order.
//!
//! `verdict-genlog --db /tmp/big.db --events 1000000`

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use verdict_log::{EventStore as _, NewEvent, SqliteLog};

#[derive(Debug, Parser)]
#[command(about = "Generate a verdict log of SEON-shaped events for benchmarks")]
struct Args {
    /// The SQLite file to create (must not exist).
    #[arg(long)]
    db: PathBuf,
    /// Events to write.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const FINISHED: &str = include_str!("../../../fixtures/seon/session_finished_approved.json");
const UPDATED: &str = include_str!("../../../fixtures/seon/session_status_updated_approved.json");
const STATUSES: [&str; 4] = ["APPROVED", "DECLINED", "REVIEW", "ABANDONED"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.db.exists(), "{} exists already", args.db.display());
    let mut log = SqliteLog::open(&args.db).context("creating the log")?;
    log.connection().pragma_update(None, "synchronous", "OFF")?; // a bench fixture, not data
    let mut rng = args.seed.max(1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = std::time::Instant::now();
    let mut written = 0u64;
    let mut session = 0u64;
    let mut batch: Vec<NewEvent> = Vec::with_capacity(10_000);
    while written < args.events {
        session += 1;
        let sid = format!("gen-{session:08}");
        let status = STATUSES[(next() % 4) as usize];
        let minute = 10 + (session % 40);
        let finished = FINISHED
            .replace("5b0f6a7e-2c1d-4d8e-9a11-0c3f7e2b9d10", &sid)
            .replace(
                "\"status\": \"APPROVED\"",
                &format!("\"status\": \"{status}\""),
            )
            .replace(
                "2026-03-02T10:15:42.000Z",
                &format!("2026-03-02T10:{minute:02}:42.000Z"),
            );
        let mut events = vec![(finished, "idv:session_finished", minute * 60_000)];
        if status == "REVIEW" && next() % 2 == 0 {
            let update = UPDATED.replace("2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4", &sid);
            events.push((update, "idv:session_status_updated", 13 * 3_600_000));
            if next() % 4 == 0 {
                events.reverse(); // the update arrives first
            }
        }
        for (body, kind, t) in events {
            if written >= args.events {
                break;
            }
            written += 1;
            let mut e = NewEvent::new(
                "seon-idv",
                kind,
                format!("request-id:gen-{written}"),
                body.into_bytes(),
            );
            e.vendor_time = Some(1_772_409_600_000 + i64::try_from(t).unwrap_or(0));
            e.encode();
            batch.push(e);
        }
        if batch.len() >= 10_000 {
            let refs: Vec<&NewEvent> = batch.iter().collect();
            log.append_batch(&refs)?;
            batch.clear();
        }
    }
    let refs: Vec<&NewEvent> = batch.iter().collect();
    log.append_batch(&refs)?;
    // Leave the file as a server leaves its log: all of it in the database file and on disk.
    // (Written with `synchronous=OFF`, it would otherwise still be in the page cache, and the
    // kernel would be writing it back during whatever is measured next.)
    log.connection()
        .pragma_update(None, "synchronous", "FULL")?;
    log.connection()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .context("checkpointing and syncing the log")?;
    println!(
        "wrote {written} events for {session} sessions to {} in {:.1}s",
        args.db.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
