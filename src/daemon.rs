//! The daemon as a library, so `chatferry run` and the tests start it the
//! same way: [`Daemon::build`] connects the store and builds the
//! providers, the worker and the ops endpoint (bound already, so its
//! address is known before it serves); [`Daemon::run_until_stopped`] runs
//! them until the shutdown token fires (or, with
//! [`Daemon::exit_when_idle`], until no work is left) and waits for every
//! task it started.
//!
//! The daemon's own tasks (ops endpoint, metrics gauges, signal listener,
//! systemd watchdog, the worker's run) share one [`TaskTracker`]; once the
//! worker has drained they are told to stop, and the tracker is closed and
//! awaited.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::ops::http::{ListenError, Ops, OpsServer};
use crate::store::Store;
use crate::worker::{RunReport, Worker};

/// How long the daemon's own tasks may take to end once the worker has
/// stopped (an ops request still open, a gauge read of a slow database).
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// Why a daemon could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration cannot run a daemon.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `http.listen` cannot be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Anything else: the database, a provider.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A daemon built and ready to run.
pub struct Daemon {
    store: Store,
    worker: Arc<Worker>,
    /// Bound at build, served from `run_until_stopped`.
    ops: Option<OpsServer>,
    exit_when_idle: bool,
    tasks: TaskTracker,
    /// Ends the daemon's own tasks once the worker has stopped.
    stop: CancellationToken,
}

impl Daemon {
    /// Connects the store, builds every target's provider and the worker,
    /// and binds `http.listen` when it is set.
    pub async fn build(config: &Config) -> Result<Daemon, BuildError> {
        if config.targets.is_empty() {
            return Err(ConfigError("no targets configured; add a [targets.NAME] table".into()).into());
        }
        let store = Store::connect(&config.database, config.database_url()?).await?;
        let providers = crate::providers::build_all(config)?;
        crate::ops::metrics::install();
        let worker = Worker::new(store.clone(), config, providers);
        let ops = match &config.http.listen {
            Some(listen) => Some(OpsServer::bind(listen, Ops::for_daemon(config, &store, &worker)).await?),
            None => None,
        };
        Ok(Daemon {
            store,
            worker,
            ops,
            exit_when_idle: false,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// With `true`, the run ends once no lane of a live target has work
    /// left (`run --exit-when-idle`), and reports the lanes that wait on an
    /// operator.
    pub fn exit_when_idle(mut self, on: bool) -> Daemon {
        self.exit_when_idle = on;
        self
    }

    /// The ops endpoint's bound address, when `http.listen` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsServer::local_addr)
    }

    /// The tracker of the daemon's own tasks: closed and empty once
    /// [`Daemon::run_until_stopped`] has returned.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Listens for OS signals while the daemon runs (see `ops::signals`):
    /// returns the token the first SIGTERM or SIGINT cancels; SIGHUP
    /// re-reads rates and the log level from `config_path`.
    pub fn listen_for_signals(&self, config_path: Option<PathBuf>) -> anyhow::Result<CancellationToken> {
        let shutdown = CancellationToken::new();
        let worker = self.worker.clone();
        let listener = crate::ops::signals::listen(shutdown.clone(), self.stop.clone(), move || {
            reload(&worker, config_path.as_deref())
        })?;
        self.tasks.spawn(listener);
        Ok(shutdown)
    }

    /// Serves the ops endpoint and runs the worker until `shutdown` fires
    /// (the worker then drains within its grace) or, with
    /// [`Daemon::exit_when_idle`], until the work runs out; then stops and
    /// awaits every task it started.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<RunReport> {
        self.start_services();
        let run = self
            .tasks
            .spawn(self.worker.clone().run(shutdown, self.exit_when_idle));
        let report = run.await;
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "daemon tasks still running after the worker stopped; leaving them"
            );
        }
        match report {
            Ok(report) => report,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the worker task was cancelled: {e}")),
        }
    }

    /// Starts the ops endpoint, the metrics gauges and the systemd
    /// watchdog on the tracker; each ends with `self.stop`.
    fn start_services(&mut self) {
        if let Some(ops) = self.ops.take() {
            self.tasks.spawn(ops.run(self.stop.clone()));
        }
        self.tasks.spawn(crate::ops::metrics::gauges(
            self.store.clone(),
            self.worker.clone(),
            self.stop.clone(),
        ));
        if let Some(every) = crate::ops::notify::watchdog_interval() {
            self.tasks
                .spawn(crate::ops::notify::watchdog(every, self.stop.clone()));
        }
    }
}

/// A daemon dropped without running still ends the tasks it started (the
/// signal listener).
impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// SIGHUP: re-reads the configuration for the rates and the log level.
fn reload(worker: &Worker, config_path: Option<&Path>) {
    match Config::load(config_path) {
        Ok(l) => {
            worker.set_limits(&l.config);
            crate::telemetry::set_level(&l.config.log.level);
            tracing::info!("configuration reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reload the configuration; keeping the old one")
        }
    }
}
