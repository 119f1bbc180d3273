//! The command line (contract.md, "Command line"): parsing, and one
//! function per command. Exit codes: 0 success, 1 runtime failure, 2 usage
//! or configuration error, 3 `load` rejected some lines.
//!
//! - `args`: the grammar (clap).
//! - `input`: `load` and `plan`.
//! - `run`: `run` and `simulate`.
//! - `batches`: `status`, `pause`, `resume`, `retry`, `purge`, `skip`.
//! - `provider`: `accounts import`, `probe`, `verify`.

mod args;
mod batches;
mod input;
mod provider;
mod run;

use std::process::ExitCode;

use clap::Parser;

pub use args::{AccountsCommand, Cli, Command, CompletionShell, LoadArgs, PlanArgs, StatusArgs};

use crate::config::{Config, ConfigError};
use crate::daemon::BuildError;
use crate::store::Store;

/// An error with the exit code it maps to.
pub enum Failure {
    /// A usage or configuration error: exit 2.
    Usage(String),
    /// A runtime failure: exit 1.
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

/// A listen address in use is a configuration problem, like a bad file.
impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Config(e) => e.into(),
            BuildError::Listen(e) => Failure::Usage(e.to_string()),
            BuildError::Other(e) => e.into(),
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

/// Loads the configuration, starts logging and runs one command.
async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    let loaded = Config::load(cli.config.as_deref())?;
    let config = &loaded.config;
    crate::telemetry::init(&config.log);
    match cli.command {
        Command::Migrate => migrate(config).await,
        Command::Load(args) => input::load(config, args).await,
        Command::Plan(args) => input::plan(config, &args),
        Command::Run { exit_when_idle } => run::run(config, loaded.path.clone(), exit_when_idle).await,
        Command::Simulate(args) => run::simulate(config, args).await,
        Command::Accounts(AccountsCommand::Import { target, batch, users }) => {
            provider::accounts_import(config, &target, batch.as_deref(), users.as_deref()).await
        }
        Command::Probe { target, users, json } => provider::probe(config, &target, &users, json).await,
        Command::Verify { batch, json } => provider::verify(config, &batch, json).await,
        Command::Pause { batch } => batches::set_paused(config, &batch, true).await,
        Command::Resume { batch } => batches::set_paused(config, &batch, false).await,
        Command::Retry { batch, code } => batches::retry(config, &batch, code).await,
        Command::Purge { batch, dry_run } => batches::purge(config, &batch, dry_run).await,
        Command::Skip { job } => batches::skip(config, job).await,
        Command::Status(args) => batches::status(config, &args).await,
        Command::Completions { shell } => Ok(completions(shell)),
    }
}

/// `chatferry migrate`.
async fn migrate(config: &Config) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    store.migrate().await.map_err(|e| {
        Failure::Runtime(
            e.context("cannot apply the schema; check database.url and that the user may create schemas"),
        )
    })?;
    println!("schema {} is up to date", config.database.schema);
    Ok(ExitCode::SUCCESS)
}

/// `chatferry completions SHELL`.
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

/// Unix time in ms.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A database error, with the likely fix.
fn db_err(e: sqlx::Error) -> Failure {
    Failure::Runtime(anyhow::Error::new(e).context("database error; did you run `chatferry migrate`?"))
}

/// Connects to the configured database.
async fn open_store(config: &Config) -> Result<Store, Failure> {
    let url = config.database_url()?;
    Ok(Store::connect(&config.database, url).await?)
}

/// Prints `value` as one line of JSON.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string(value).map_err(anyhow::Error::new)?);
    Ok(())
}

/// Exit 0 when `ok`, else `code`.
fn exit_unless(ok: bool, code: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}
