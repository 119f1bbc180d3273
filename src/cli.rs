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
        /// Input files; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run the daemon.
    Run {
        /// Drain what can be sent now, then exit 0.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Show progress per batch.
    Status {
        #[arg(long)]
        batch: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
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
            files,
        } => {
            config.target(&target)?;
            let store = open_store(&config).await?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let opts = crate::load::LoadOptions {
                target: target.clone(),
                batch: batch.clone(),
                rejects: rejects.clone(),
                files,
                now_ms,
                progress: true,
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
        Command::Run { exit_when_idle } => {
            if config.targets.is_empty() {
                return Err(Failure::Usage(
                    "no targets configured; add a [targets.NAME] table".into(),
                ));
            }
            let store = open_store(&config).await?;
            let providers = crate::providers::build_all(&config)?;
            let worker = crate::worker::Worker::new(store, &config, providers);
            let shutdown = CancellationToken::new();
            crate::ops::signals::spawn(shutdown.clone())?;
            let report = worker.run(shutdown, exit_when_idle).await?;
            if !report.halted.is_empty() {
                for (t, why) in &report.halted {
                    eprintln!("error: target {t} halted: {why}");
                }
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { batch, json } => {
            let store = open_store(&config).await?;
            let rows = store.status(batch.as_deref()).await.map_err(|e| {
                Failure::Runtime(
                    anyhow::Error::new(e).context("cannot read progress; did you run `chatferry migrate`?"),
                )
            })?;
            if json {
                println!("{}", serde_json::json!({ "batches": rows }));
            } else {
                print!("{}", crate::status::render(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
