//! The command line (contract.md, "Command line"): parsing, and one
//! function per command. Exit codes: 0 success, 1 runtime failure, 2 usage
//! or configuration error, 3 `load` rejected some lines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::store::Store;

/// chatferry: moves one-to-one chat history into ZEGO ZIM and Tencent IM.
#[derive(Debug, Parser)]
#[command(name = "chatferry", version, about)]
pub struct Cli {
    /// Configuration file (else $CHATFERRY_CONFIG, ./daemon.toml, /etc/chatferry/daemon.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database schema (idempotent; safe from several hosts at once).
    Migrate,
    /// Stream JSON Lines messages into the job table of a target.
    Load {
        /// The configured target to load for.
        #[arg(long)]
        target: String,
        /// Batch name to group this load under.
        #[arg(long, default_value = "default")]
        batch: String,
        /// Write rejected lines here, one JSON object each.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Batch priority: lanes of higher batches are claimed first (default 0).
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=1_000_000))]
        priority: Option<i32>,
        /// Input files; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Validate input like `load` and say what it would do, writing nothing
    /// (exit 3 when some lines would be rejected).
    Plan {
        /// The configured target to plan for.
        #[arg(long)]
        target: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Replicas sharing the target's rate, for the send time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        replicas: u32,
        /// Input files; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run the daemon.
    Run {
        /// Drain what can be sent now, then exit: 0 when every job is finished,
        /// 5 when open jobs wait in paused batches or blocked lanes.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Show progress per batch.
    Status {
        #[arg(long)]
        batch: Option<String>,
        /// Print one JSON object (with --watch: one per refresh, a line each).
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0, requires = "watch")]
        interval: f64,
    },
    /// Print shell completions on stdout, e.g.
    /// `chatferry completions bash > /etc/bash_completion.d/chatferry`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Serve a local stand-in for both providers.
    Simulate(crate::simulate::SimArgs),
    /// Register users with a provider.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Read a batch back from its provider and compare (exit 4 on a mismatch).
    Verify {
        #[arg(long)]
        batch: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop sending a batch (workers park its lanes within seconds).
    Pause {
        #[arg(long)]
        batch: String,
    },
    /// Resume a paused batch.
    Resume {
        #[arg(long)]
        batch: String,
    },
    /// Put a batch's failed jobs back to pending, in lane order.
    Retry {
        #[arg(long)]
        batch: String,
        /// Only jobs whose last provider code is this.
        #[arg(long)]
        code: Option<i64>,
    },
    /// Remove a finished batch's jobs and reclaim their space; refuses
    /// while anything in the batch is pending or in flight.
    Purge {
        #[arg(long)]
        batch: String,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mark one job skipped: it will not be sent.
    Skip {
        #[arg(long)]
        job: i64,
    },
    /// Measure, with two dedicated users of the real account, what the
    /// provider does where its documents are silent; stores the findings.
    Probe {
        #[arg(long)]
        target: String,
        /// Two dedicated probe users, `A,B` (registered by the probe).
        #[arg(long, value_delimiter = ',', num_args = 1)]
        users: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Shells `completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn completions(shell: CompletionShell) -> ExitCode {
    use clap::CommandFactory;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "chatferry", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `chatferry accounts ...`
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Register every user of a target's conversations (ZIM UserRegister,
    /// Tencent multiaccount_import), 100 per call, within the rate limit.
    Import {
        #[arg(long)]
        target: String,
        /// Only the users of this batch.
        #[arg(long, conflicts_with = "users")]
        batch: Option<String>,
        /// Register the users of this JSON Lines file (`{"id", "name"?,
        /// "avatar"?}` a line; `-` reads stdin) with their profiles,
        /// instead of the job table's users.
        #[arg(long)]
        users: Option<String>,
    },
}

/// Lanes listed one by one when `run --exit-when-idle` exits 5.
const STUCK_SHOWN: usize = 50;

/// Says which lanes still hold work that waits on an operator.
fn print_stuck(stuck: &[crate::store::StuckLane]) {
    let jobs: i64 = stuck.iter().map(|l| l.open_jobs).sum();
    eprintln!(
        "not done: {jobs} open jobs in {} lanes wait on an operator (paused batch or blocked lane):",
        stuck.len()
    );
    for l in stuck.iter().take(STUCK_SHOWN) {
        eprintln!(
            "  lane {} ({} {}): {} open jobs; {}",
            l.lane_id,
            l.target,
            l.conversation.shown_with(" <-> "),
            l.open_jobs,
            l.why
        );
    }
    if stuck.len() > STUCK_SHOWN {
        eprintln!("  ... and {} more lanes", stuck.len() - STUCK_SHOWN);
    }
}

/// An error with the exit code it maps to.
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(e.0)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ConfigError>() {
            Ok(c) => Failure::Usage(c.0),
            Err(e) => Failure::Runtime(e),
        }
    }
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Needs no configuration: works on a host that has none yet.
    if let Command::Completions { shell } = cli.command {
        return completions(shell);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The whole error chain on one line.
pub fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `chatferry plan`: no database, nothing written.
fn plan(
    config: &Config,
    target: &str,
    json: bool,
    replicas: u32,
    files: &[String],
) -> Result<ExitCode, Failure> {
    let t = config.target(target)?;
    let r = crate::load::plan::run(crate::load::plan::PlanOptions {
        target_name: target,
        target: t,
        files,
        now_ms: now_ms(),
        max_line: config.load.max_line_bytes.max(1024),
        replicas,
    })?;
    if json {
        println!("{}", serde_json::to_string(&r).map_err(anyhow::Error::new)?);
    } else {
        print!("{}", crate::load::plan::render(&r));
    }
    Ok(if r.rejected > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn read_status(store: &Store, batch: Option<&str>) -> Result<Vec<crate::store::BatchStatus>, Failure> {
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Runtime(e.into()))?;
    loop {
        let rows = read_status(store, batch).await?;
        let mut out = std::io::stdout().lock();
        let frame = if json {
            format!("{}\n", crate::status::json(&rows))
        } else {
            let stamp = chrono_now();
            format!(
                "{}\n{stamp}; refreshing every {every} s, Ctrl-C to stop\n",
                crate::status::render(&rows)
            )
        };
        // Home and clear below: the table is redrawn where it stands.
        let clear = if tty { "\x1b[H\x1b[J" } else { "" };
        if write!(out, "{clear}{frame}").and_then(|_| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS); // the reader went away (e.g. `| head`)
        }
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs_f64(every)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The wall clock as `HH:MM:SS UTC`.
fn chrono_now() -> String {
    let s = now_ms() / 1000;
    format!("{:02}:{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// `chatferry purge`: checks from the counters, then deletes step by step
/// with the progress on stderr, then vacuums.
async fn purge(store: &Store, batch: &str, dry_run: bool) -> Result<ExitCode, Failure> {
    let c = store.purge_check(batch).await.map_err(db_err)?;
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
    let kept = if c.blocking > 0 {
        format!(
            "; {} failed jobs that block their lane are kept (retry or skip them, then purge again)",
            c.blocking
        )
    } else {
        String::new()
    };
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

fn db_err(e: sqlx::Error) -> Failure {
    Failure::Runtime(anyhow::Error::new(e).context("database error; did you run `chatferry migrate`?"))
}

async fn open_store(config: &Config) -> Result<Store, Failure> {
    let url = config.database_url()?;
    Ok(Store::connect(&config.database, url).await?)
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    let loaded = Config::load(cli.config.as_deref())?;
    let config = loaded.config;
    crate::telemetry::init(&config.log);
    match cli.command {
        Command::Migrate => {
            let store = open_store(&config).await?;
            store.migrate().await.map_err(|e| {
                Failure::Runtime(e.context(
                    "cannot apply the schema; check database.url and that the user may create schemas",
                ))
            })?;
            println!("schema {} is up to date", config.database.schema);
            Ok(ExitCode::SUCCESS)
        }
        Command::Load {
            target,
            batch,
            rejects,
            priority,
            files,
        } => {
            config.target(&target)?;
            let store = open_store(&config).await?;
            let opts = crate::load::LoadOptions {
                target: target.clone(),
                batch: batch.clone(),
                rejects: rejects.clone(),
                files,
                now_ms: now_ms(),
                progress: true,
                priority,
            };
            let s = crate::load::run(&store, &config, opts).await?;
            let rate = if s.seconds > 0.0 {
                s.lines as f64 / s.seconds
            } else {
                0.0
            };
            println!(
                "loaded batch {batch} for target {target}: {} lines, {} accepted, {} rejected; \
                 {} jobs new, {} already loaded; {:.1} s ({:.0} lines/s)",
                s.lines,
                s.accepted,
                s.rejected,
                s.jobs_new,
                s.jobs_planned - s.jobs_new,
                s.seconds,
                rate
            );
            if s.rejected > 0 {
                match &rejects {
                    Some(p) => eprintln!("{} lines rejected; reasons are in {}", s.rejected, p.display()),
                    None => eprintln!("{} lines rejected; pass --rejects FILE to keep them", s.rejected),
                }
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            target,
            json,
            replicas,
            files,
        } => plan(&config, &target, json, replicas, &files),
        Command::Run { exit_when_idle } => {
            if config.targets.is_empty() {
                return Err(Failure::Usage(
                    "no targets configured; add a [targets.NAME] table".into(),
                ));
            }
            let store = open_store(&config).await?;
            let providers = crate::providers::build_all(&config)?;
            crate::ops::metrics::install();
            let worker = crate::worker::Worker::new(store.clone(), &config, providers);
            let shutdown = CancellationToken::new();
            let ops_stop = CancellationToken::new();
            if let Some(listen) = &config.http.listen {
                let ops = crate::ops::http::Ops {
                    health: crate::ops::http::Health {
                        store: store.clone(),
                        draining: worker.draining.clone(),
                    },
                    token: config.http.token.clone(),
                    targets: config
                        .targets
                        .iter()
                        .map(|(n, t)| (n.clone(), t.kind(), t.rate_per_sec()))
                        .collect(),
                    worker: Some(worker.clone()),
                    cache: Default::default(),
                    ingest: crate::load::ingest::Ingest::from_config(&config, store.clone()),
                };
                crate::ops::http::serve(listen, ops, ops_stop.clone())
                    .await
                    .map_err(|e| Failure::Usage(e.to_string()))?;
            }
            crate::ops::metrics::spawn_gauges(store, worker.clone(), ops_stop.clone());
            if let Some(every) = crate::ops::notify::watchdog_interval() {
                let stop = ops_stop.clone();
                tokio::spawn(async move {
                    loop {
                        crate::ops::notify::notify("WATCHDOG=1");
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                });
            }
            let reload_worker = worker.clone();
            let config_path = loaded.path.clone();
            crate::ops::signals::spawn(shutdown.clone(), move || {
                match Config::load(config_path.as_deref()) {
                    Ok(l) => {
                        reload_worker.set_limits(&l.config);
                        crate::telemetry::set_level(&l.config.log.level);
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload the configuration; keeping the old one")
                    }
                }
            })?;
            let report = worker.run(shutdown, exit_when_idle).await;
            ops_stop.cancel();
            let report = report?;
            if !report.halted.is_empty() {
                for (t, why) in &report.halted {
                    eprintln!("error: target {t} halted: {why}");
                }
                return Ok(ExitCode::from(1));
            }
            if !report.stuck.is_empty() {
                print_stuck(&report.stuck);
                return Ok(ExitCode::from(5));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            crate::simulate::run_cli(&config, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Accounts(AccountsCommand::Import { target, batch, users }) => {
            accounts_import(&config, &target, batch.as_deref(), users.as_deref()).await
        }
        Command::Probe { target, users, json } => {
            let [a, b] = users.as_slice() else {
                return Err(Failure::Usage(
                    "--users takes two user ids, e.g. --users probe-a,probe-b".into(),
                ));
            };
            let store = open_store(&config).await?;
            let f = crate::probe::run(&config, &store, &target, [a, b]).await?;
            if json {
                println!("{}", serde_json::to_string(&f).map_err(anyhow::Error::new)?);
            } else {
                print!("{}", f.report(&target));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { batch, json } => {
            let store = open_store(&config).await?;
            let providers: std::collections::HashMap<_, _> =
                crate::providers::build_all(&config)?.into_iter().collect();
            let r = crate::verify::run(&store, &providers, &batch).await?;
            if json {
                println!("{}", serde_json::to_string(&r).map_err(anyhow::Error::new)?);
            } else {
                for l in &r.problems {
                    println!(
                        "{} {}: expected {}, found {}, missing {}, extra {}, out of order {}{}",
                        l.target,
                        l.lane,
                        l.expected,
                        l.found,
                        l.missing.len(),
                        l.extra,
                        l.out_of_order,
                        l.error
                            .as_deref()
                            .map(|e| format!(", unreadable: {e}"))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "batch {}: {} of {} lanes match; missing {}, extra {}, out of order {}; \
                     {} messages older than the provider's read-back window were not checked",
                    r.batch, r.clean_lanes, r.lanes, r.missing, r.extra, r.out_of_order, r.unverifiable
                );
            }
            Ok(if r.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            })
        }
        Command::Pause { batch } => {
            let store = open_store(&config).await?;
            match store.set_paused(&batch, true).await.map_err(db_err)? {
                0 => Err(Failure::Usage(format!(
                    "no batch named {batch:?}; see `chatferry status`"
                ))),
                _ => {
                    println!("batch {batch} paused; running workers park its lanes after their current call");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Resume { batch } => {
            let store = open_store(&config).await?;
            match store.set_paused(&batch, false).await.map_err(db_err)? {
                0 => Err(Failure::Usage(format!(
                    "no batch named {batch:?}; see `chatferry status`"
                ))),
                _ => {
                    println!("batch {batch} resumed");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Retry { batch, code } => {
            let store = open_store(&config).await?;
            let n = store.retry_failed(&batch, code).await.map_err(db_err)?;
            println!("{n} failed jobs of batch {batch} are pending again");
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge { batch, dry_run } => {
            let store = open_store(&config).await?;
            purge(&store, &batch, dry_run).await
        }
        Command::Skip { job } => {
            let store = open_store(&config).await?;
            match store.skip_job(job).await.map_err(db_err)? {
                None => Err(Failure::Usage(format!(
                    "job {job} does not exist or is already done or skipped"
                ))),
                Some(crate::store::JobStatus::InFlight) => {
                    println!("job {job} skipped; it was in doubt, so the provider may hold it already");
                    Ok(ExitCode::SUCCESS)
                }
                Some(_) => {
                    println!("job {job} skipped");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Status {
            batch,
            json,
            watch,
            interval,
        } => {
            let store = open_store(&config).await?;
            if watch {
                return watch_status(&store, batch.as_deref(), json, interval).await;
            }
            let rows = read_status(&store, batch.as_deref()).await?;
            if json {
                println!("{}", crate::status::json(&rows));
            } else {
                print!("{}", crate::status::render(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => Ok(completions(shell)),
    }
}

/// `accounts import`: registers the users of a file (with profiles) or of
/// the job table (by id). Exit 1 when the provider refused a user, else 3
/// when lines of the file were rejected (like `load`), else 0.
async fn accounts_import(
    config: &Config,
    target: &str,
    batch: Option<&str>,
    file: Option<&str>,
) -> Result<ExitCode, Failure> {
    let target_cfg = config.target(target)?;
    let (users, rejected) = match file {
        Some(path) => {
            let f =
                crate::load::users::read(path, target_cfg).map_err(|e| Failure::Usage(format!("{e:#}")))?;
            for r in &f.rejected {
                eprintln!("rejected: {path} line {}: {}", r.line, r.reason);
            }
            (f.users, f.rejected.len())
        }
        None => {
            let store = open_store(config).await?;
            let ids = store.users(target, batch).await.map_err(db_err)?;
            (
                ids.into_iter().map(crate::providers::UserProfile::bare).collect(),
                0,
            )
        }
    };
    let providers = crate::providers::build_all(config)?;
    let p = &providers
        .iter()
        .find(|(n, _)| n == target)
        .expect("target exists")
        .1;
    let r = p
        .register_users(&users)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot register users with {target}: {e}")))?;
    println!(
        "{} users registered with {target} (already registered ones included), {} refused{}",
        r.ok,
        r.failed.len(),
        if rejected > 0 {
            format!(", {rejected} lines rejected")
        } else {
            String::new()
        }
    );
    for (u, why) in r.failed.iter().take(20) {
        eprintln!("refused: {u}: {why}");
    }
    Ok(if !r.failed.is_empty() {
        ExitCode::from(1)
    } else if rejected > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
