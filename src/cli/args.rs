//! The command line's grammar (contract.md, "Command line"): every
//! command, flag and help text, parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Load(LoadArgs),
    /// Validate input like `load` and say what it would do, writing nothing
    /// (exit 3 when some lines would be rejected).
    Plan(PlanArgs),
    /// Run the daemon.
    Run {
        /// Drain what can be sent now, then exit: 0 when every job is finished,
        /// 5 when open jobs wait in paused batches or blocked lanes.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Show progress per batch.
    Status(StatusArgs),
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

/// `load`'s arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The configured target to load for.
    #[arg(long)]
    pub target: String,
    /// Batch name to group this load under.
    #[arg(long, default_value = "default")]
    pub batch: String,
    /// Write rejected lines here, one JSON object each.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Batch priority: lanes of higher batches are claimed first (default 0).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=1_000_000))]
    pub priority: Option<i32>,
    /// Input files; `-` reads stdin.
    #[arg(required = true)]
    pub files: Vec<String>,
}

/// `plan`'s arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The configured target to plan for.
    #[arg(long)]
    pub target: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Replicas sharing the target's rate, for the send time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,
    /// Input files; `-` reads stdin.
    #[arg(required = true)]
    pub files: Vec<String>,
}

/// `status`'s arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub batch: Option<String>,
    /// Print one JSON object (with --watch: one per refresh, a line each).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0, requires = "watch")]
    pub interval: f64,
}

/// Shells `completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
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
