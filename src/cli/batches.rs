//! The commands that read or steer batches in the job table: `status`,
//! `pause`, `resume`, `retry`, `purge` and `skip`.

use std::process::ExitCode;

use super::args::StatusArgs;
use super::{db_err, now_ms, open_store, Failure};
use crate::config::Config;
use crate::store::{BatchStatus, JobStatus, PurgeCheck, Store};

/// `chatferry status`, once or with `--watch`.
pub(super) async fn status(config: &Config, args: &StatusArgs) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    let batch = args.batch.as_deref();
    if args.watch {
        return watch_status(&store, batch, args.json, args.interval).await;
    }
    let rows = read_status(&store, batch).await?;
    if args.json {
        println!("{}", crate::status::json(&rows));
    } else {
        print!("{}", crate::status::render(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn read_status(store: &Store, batch: Option<&str>) -> Result<Vec<BatchStatus>, Failure> {
    store.status(batch).await.map_err(|e| {
        Failure::Runtime(
            anyhow::Error::new(e).context("cannot read progress; did you run `chatferry migrate`?"),
        )
    })
}

/// `status --watch`: redraws the table in place on a terminal (one JSON
/// line per refresh with --json, or plain successive tables when piped)
/// until Ctrl-C or SIGTERM.
async fn watch_status(
    store: &Store,
    batch: Option<&str>,
    json: bool,
    every: f64,
) -> Result<ExitCode, Failure> {
    use std::io::{IsTerminal, Write};
    if !every.is_finite() || every < 0.2 {
        return Err(Failure::Usage("--interval must be at least 0.2 seconds".into()));
    }
    let tty = std::io::stdout().is_terminal() && !json;
    // Both streams are made once, before the first frame: a signal that
    // arrives while a frame is read or written waits in them (a fresh
    // `ctrl_c()` per refresh would miss it, and the handler installed by
    // the first would keep SIGINT from ending the process).
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).map_err(|e| Failure::Runtime(e.into()));
    let (mut int, mut term) = (listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?);
    loop {
        let rows = read_status(store, batch).await?;
        let mut out = std::io::stdout().lock();
        // Home and clear below: the table is redrawn where it stands.
        let clear = if tty { "\x1b[H\x1b[J" } else { "" };
        if write!(out, "{clear}{}", status_frame(&rows, json, every))
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(ExitCode::SUCCESS); // the reader went away (e.g. `| head`)
        }
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs_f64(every)) => {}
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One refresh of `status --watch`.
fn status_frame(rows: &[BatchStatus], json: bool, every: f64) -> String {
    if json {
        format!("{}\n", crate::status::json(rows))
    } else {
        let stamp = clock_now();
        format!(
            "{}\n{stamp}; refreshing every {every} s, Ctrl-C to stop\n",
            crate::status::render(rows)
        )
    }
}

/// The wall clock as `HH:MM:SS UTC`.
fn clock_now() -> String {
    let s = now_ms() / 1000;
    format!("{:02}:{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// `chatferry pause` (`paused`) and `chatferry resume`.
pub(super) async fn set_paused(config: &Config, batch: &str, paused: bool) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    if store.set_paused(batch, paused).await.map_err(db_err)? == 0 {
        return Err(Failure::Usage(format!(
            "no batch named {batch:?}; see `chatferry status`"
        )));
    }
    if paused {
        println!("batch {batch} paused; running workers park its lanes after their current call");
    } else {
        println!("batch {batch} resumed");
    }
    Ok(ExitCode::SUCCESS)
}

/// `chatferry retry`.
pub(super) async fn retry(config: &Config, batch: &str, code: Option<i64>) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    let n = store.retry_failed(batch, code).await.map_err(db_err)?;
    println!("{n} failed jobs of batch {batch} are pending again");
    Ok(ExitCode::SUCCESS)
}

/// `chatferry skip`.
pub(super) async fn skip(config: &Config, job: i64) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    match store.skip_job(job).await.map_err(db_err)? {
        None => {
            return Err(Failure::Usage(format!(
                "job {job} does not exist or is already done or skipped"
            )))
        }
        Some(JobStatus::InFlight) => {
            println!("job {job} skipped; it was in doubt, so the provider may hold it already")
        }
        Some(_) => println!("job {job} skipped"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `chatferry purge`: checks from the counters, then deletes step by step
/// with the progress on stderr, then vacuums.
pub(super) async fn purge(config: &Config, batch: &str, dry_run: bool) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    let c = store.purge_check(batch).await.map_err(db_err)?;
    let kept = purge_allowed(batch, &c)?;
    if dry_run {
        println!(
            "dry run: purge would remove {} finished jobs of batch {batch}{kept}",
            c.finished - c.blocking
        );
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let mut removed = 0u64;
    loop {
        let n = store.purge_step(batch).await.map_err(db_err)?;
        if n == 0 {
            break;
        }
        removed += n;
        eprint!("\rpurge: {removed} jobs removed");
    }
    eprintln!();
    store.vacuum_jobs().await.map_err(db_err)?;
    println!(
        "batch {batch}: {removed} jobs removed in {:.1} s{kept}; a reload of its input would send those messages again",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses a purge of an unknown or unfinished batch; otherwise returns
/// what the purge keeps, as a clause for its output.
fn purge_allowed(batch: &str, c: &PurgeCheck) -> Result<String, Failure> {
    if c.batches == 0 {
        return Err(Failure::Usage(format!(
            "no batch named {batch}; see `chatferry status`"
        )));
    }
    if c.pending + c.in_flight > 0 {
        return Err(Failure::Usage(format!(
            "batch {batch} is not finished: {} jobs pending and {} in flight; \
             let `chatferry run` finish it (or `chatferry skip` what must not be sent), then purge",
            c.pending, c.in_flight
        )));
    }
    Ok(if c.blocking > 0 {
        format!(
            "; {} failed jobs that block their lane are kept (retry or skip them, then purge again)",
            c.blocking
        )
    } else {
        String::new()
    })
}
