//! `chatferry run` (the daemon) and `chatferry simulate` (the local
//! stand-in for both providers).

use std::path::PathBuf;
use std::process::ExitCode;

use super::Failure;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::store::StuckLane;
use crate::worker::RunReport;

/// Lanes listed one by one when `run --exit-when-idle` exits 5.
const STUCK_SHOWN: usize = 50;

/// `chatferry run`: builds the daemon, runs it until a signal (or, with
/// `--exit-when-idle`, until the work runs out) and maps how it ended to
/// the exit code.
pub(super) async fn run(
    config: &Config,
    config_path: Option<PathBuf>,
    exit_when_idle: bool,
) -> Result<ExitCode, Failure> {
    let daemon = Daemon::build(config).await?.exit_when_idle(exit_when_idle);
    let shutdown = daemon.listen_for_signals(config_path)?;
    let report = daemon.run_until_stopped(shutdown).await?;
    Ok(exit_code(&report))
}

/// 1 when a target halted, 5 when open jobs wait on an operator, else 0;
/// says why on stderr.
fn exit_code(report: &RunReport) -> ExitCode {
    if !report.halted.is_empty() {
        for (t, why) in &report.halted {
            eprintln!("error: target {t} halted: {why}");
        }
        return ExitCode::from(1);
    }
    if !report.stuck.is_empty() {
        print_stuck(&report.stuck);
        return ExitCode::from(5);
    }
    ExitCode::SUCCESS
}

/// Says which lanes still hold work that waits on an operator.
fn print_stuck(stuck: &[StuckLane]) {
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

/// `chatferry simulate`.
pub(super) async fn simulate(config: &Config, args: crate::simulate::SimArgs) -> Result<ExitCode, Failure> {
    crate::simulate::run_cli(config, args).await?;
    Ok(ExitCode::SUCCESS)
}
