//! The real binary: a command run to its end, the daemon started in the
//! background, signalled, killed and restarted.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::app::TestApp;
use super::settings::Settings;
use super::sim::TestSim;

/// `chatferry`, with nothing of the caller's environment (DATABASE_URL,
/// CHATFERRY_CONFIG, RUST_LOG) overriding what the test sets.
pub fn chatferry() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatferry"));
    c.env_remove("DATABASE_URL")
        .env_remove("CHATFERRY_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    c
}

/// `chatferry --config CONFIG`.
pub fn chatferry_with(config: &Path) -> tokio::process::Command {
    let mut c = chatferry();
    c.arg("--config").arg(config);
    c
}

/// What a finished command said.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Runs `command` to its end.
    pub async fn run(command: &mut tokio::process::Command) -> Ran {
        let out = command.output().await.expect("the chatferry binary runs");
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The exit code (-1 for a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Stdout, then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Sends `sig` (`TERM`, `INT`, ...) to the process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig} {pid}");
}

/// The real binary on a configuration file of its own (in a temp dir that
/// lives as long as this), its daemon logging to a file beside it.
pub struct Binary {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Binary {
    /// The binary on `settings`.
    pub fn new(settings: &Settings) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let config = settings.write(dir.path());
        let log = dir.path().join("daemon.log");
        Binary { dir, config, log }
    }

    /// The temp dir the configuration is in, for a test's other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `chatferry --config CONFIG ARGS...` to its end.
    pub async fn cli(&self, args: &[&str]) -> Ran {
        Ran::run(chatferry_with(&self.config).args(args)).await
    }

    /// The daemon, `run` (optionally `--exit-when-idle`); its stderr goes
    /// to [`Binary::log`].
    pub fn spawn(&self, exit_when_idle: bool) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = chatferry_with(&self.config);
        c.arg("run");
        if exit_when_idle {
            c.arg("--exit-when-idle");
        }
        c.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the chatferry binary starts")
    }

    /// What the daemons have logged so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the daemon, waits until the simulator has stored at least
    /// `stored` messages of the app's provider, and kills it with SIGKILL.
    pub async fn run_and_kill_at(&self, app: &TestApp<TestSim>, stored: u64) {
        let mut child = self.spawn(false);
        let mut exited = None;
        super::wait_until(
            Duration::from_secs(60),
            &format!("{stored} messages stored"),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                app.stored_count() >= stored
            },
        )
        .await;
        assert!(
            exited.is_none(),
            "the daemon exited on its own ({exited:?}): {}",
            self.logged()
        );
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }

    /// Runs `run --exit-when-idle` to its end and asserts it exits 0.
    pub async fn run_to_the_end(&self) {
        let mut child = self.spawn(true);
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("run --exit-when-idle ends")
            .unwrap();
        assert!(
            status.success(),
            "run --exit-when-idle: {status}: {}",
            self.logged()
        );
    }
}
