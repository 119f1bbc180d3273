//! The test app (these suites' `spawn_app`): a fresh database, the
//! provider a test talks to (the recording server, the simulator, or none)
//! and typed settings whose targets point at it, rendered once into the
//! configuration the library and the binary read.
//!
//! ```ignore
//! let app = TestApp::builder()
//!     .tencent(TencentTarget::default())
//!     .worker(|w| w.on_permanent_error = Some(OnPermanentError::Block))
//!     .recorder(|_, _| Reply::Ok)
//!     .spawn()
//!     .await;
//! ```

use std::sync::Arc;

use chatferry::config::Config;
use chatferry::load::LoadSummary;
use chatferry::simulate::{FaultConfig, SimOptions};
use chatferry::worker::{Hook, RunReport, Worker};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bin::Binary;
use super::recorder::{Decide, Recorder, Reply};
use super::settings::{LogSettings, Settings, Target, TencentTarget, WorkerSettings, ZimTarget, CLOSED};
use super::sim::TestSim;
use super::{jsonl, TestDb};

/// Calls per second for every API of the simulator and of the targets
/// pointed at it: far above the providers' real limits, so the suites
/// stay fast.
pub const RATE: f64 = 5000.0;

/// The send rate of targets that no simulator paces: unthrottled.
pub const UNTHROTTLED: f64 = 100_000.0;

/// A running test app; `P` is the provider it talks to.
pub struct TestApp<P = ()> {
    pub db: TestDb,
    /// What the configuration says, typed; `cfg` is it parsed.
    pub settings: Settings,
    pub cfg: Config,
    pub provider: P,
}

/// A change a test makes to the worker settings its provider starts from.
type WorkerEdit = Box<dyn FnOnce(&mut WorkerSettings)>;

/// Settings for a [`TestApp`] before it starts.
pub struct AppBuilder<P = NoProvider> {
    settings: Settings,
    worker_edits: Vec<WorkerEdit>,
    server: Option<String>,
    provider: P,
}

impl TestApp {
    /// An app with no targets yet, no provider and the library's defaults.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            settings: Settings::default(),
            worker_edits: Vec::new(),
            server: None,
            provider: NoProvider,
        }
    }

    /// An app with one Tencent target on the recording provider;
    /// `decide(body, nth_time_seen)` picks each answer.
    pub async fn recording(
        decide: impl Fn(&Value, u32) -> Reply + Send + Sync + 'static,
    ) -> TestApp<Recorder> {
        TestApp::builder()
            .tencent(TencentTarget::default())
            .recorder(decide)
            .spawn()
            .await
    }

    /// An app with one `target` and a simulator set up as `setup` says.
    pub async fn simulated(target: impl Into<Target>, setup: SimSetup) -> TestApp<TestSim> {
        TestApp::builder().target(target).simulator(setup).spawn().await
    }
}

impl<P> AppBuilder<P> {
    /// Adds a target; one without an endpoint sends to the app's provider.
    pub fn target(mut self, target: impl Into<Target>) -> Self {
        self.settings.targets.push(target.into());
        self
    }

    /// Adds a ZIM target.
    pub fn zim(self, target: ZimTarget) -> Self {
        self.target(target)
    }

    /// Adds a Tencent target.
    pub fn tencent(self, target: TencentTarget) -> Self {
        self.target(target)
    }

    /// Changes the worker settings the provider starts from (see
    /// [`Provide::worker`]).
    pub fn worker(mut self, edit: impl FnOnce(&mut WorkerSettings) + 'static) -> Self {
        self.worker_edits.push(Box::new(edit));
        self
    }

    /// Changes any other setting.
    pub fn settings(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    /// Makes the database on the Postgres server at `url` instead of the
    /// shared test server.
    pub fn database_on(mut self, url: String) -> Self {
        self.server = Some(url);
        self
    }

    fn provider<Q>(self, provider: Q) -> AppBuilder<Q> {
        AppBuilder {
            settings: self.settings,
            worker_edits: self.worker_edits,
            server: self.server,
            provider,
        }
    }
}

impl AppBuilder<NoProvider> {
    /// Runs the recording provider; `decide(body, nth_time_seen)` picks
    /// each answer.
    pub fn recorder(
        self,
        decide: impl Fn(&Value, u32) -> Reply + Send + Sync + 'static,
    ) -> AppBuilder<Recording> {
        self.provider(Recording(Arc::new(decide)))
    }

    /// Runs the simulator, serving the apps of the targets.
    pub fn simulator(self, setup: SimSetup) -> AppBuilder<SimSetup> {
        self.provider(setup)
    }
}

impl<P: Provide> AppBuilder<P> {
    /// Starts the provider and makes the database; the targets without an
    /// endpoint send to the provider.
    pub async fn spawn(self) -> TestApp<P::Running> {
        let AppBuilder {
            mut settings,
            worker_edits,
            server,
            provider,
        } = self;
        if let Some(preset) = P::worker() {
            settings.worker.get_or_insert(preset);
        }
        for edit in worker_edits {
            edit(settings.worker_mut());
        }
        let (running, endpoint) = provider.start(&mut settings).await;
        for t in &mut settings.targets {
            t.endpoint_mut().get_or_insert_with(|| endpoint.clone());
        }
        let db = match server {
            Some(url) => TestDb::on(&url).await,
            None => TestDb::new().await,
        };
        settings.database_url = Some(db.url.clone());
        let cfg = settings.config();
        TestApp {
            db,
            settings,
            cfg,
            provider: running,
        }
    }
}

/// What a test app runs in place of the real provider.
#[allow(async_fn_in_trait)]
pub trait Provide {
    /// What the test talks to once it runs.
    type Running;

    /// The worker settings this provider's suites run with, if any.
    fn worker() -> Option<WorkerSettings>;

    /// Sets what it needs of `settings` (the targets' unset rates), starts,
    /// and returns itself running and the base URL targets send to.
    async fn start(self, settings: &mut Settings) -> (Self::Running, String);
}

/// Fills the targets' unset rates with `rate`: the send API's, or all.
fn fill_rates(settings: &mut Settings, rate: f64, every_api: bool) {
    for t in &mut settings.targets {
        let rates = t.rates_mut();
        let n = if every_api { rates.len() } else { 1 };
        for r in rates.into_iter().take(n) {
            r.get_or_insert(rate);
        }
    }
}

/// No provider: the targets send to a closed port (tests of loading and
/// of the store).
pub struct NoProvider;

impl Provide for NoProvider {
    type Running = ();

    fn worker() -> Option<WorkerSettings> {
        None
    }

    async fn start(self, settings: &mut Settings) -> ((), String) {
        fill_rates(settings, UNTHROTTLED, false);
        ((), CLOSED.into())
    }
}

/// The recording provider, with the test's way of answering.
pub struct Recording(Arc<Decide>);

impl Provide for Recording {
    type Running = Recorder;

    fn worker() -> Option<WorkerSettings> {
        Some(WorkerSettings::fast())
    }

    async fn start(self, settings: &mut Settings) -> (Recorder, String) {
        fill_rates(settings, UNTHROTTLED, false);
        let rec = Recorder::with(self.0).await;
        let url = format!("http://{}/", rec.addr);
        (rec, url)
    }
}

/// How the simulator of a test app runs. It and every target pointed at
/// it run at [`RATE`] on every API; the daemon logs warnings only.
#[derive(Default)]
pub struct SimSetup {
    pub faults: FaultConfig,
    /// Register unknown users on first use.
    pub auto_register: bool,
}

impl SimSetup {
    /// No faults; unknown users are registered on first use.
    pub fn registering() -> SimSetup {
        SimSetup::faulty(FaultConfig::default())
    }

    /// These faults; unknown users are registered on first use.
    pub fn faulty(faults: FaultConfig) -> SimSetup {
        SimSetup {
            faults,
            auto_register: true,
        }
    }
}

impl Provide for SimSetup {
    type Running = TestSim;

    fn worker() -> Option<WorkerSettings> {
        Some(WorkerSettings::end_to_end())
    }

    async fn start(self, settings: &mut Settings) -> (TestSim, String) {
        fill_rates(settings, RATE, true);
        settings.log.get_or_insert_with(LogSettings::warn);
        let opts = SimOptions {
            auto_register: self.auto_register,
            faults: self.faults,
            rate_override: Some(RATE),
            ..Default::default()
        };
        let sim = TestSim::start(&settings.config(), opts).await;
        let url = sim.sim.base_url();
        (sim, url)
    }
}

impl<P> TestApp<P> {
    /// The name of the app's one target.
    pub fn target(&self) -> &str {
        let [t] = &self.settings.targets[..] else {
            panic!("the app has {} targets: name one", self.settings.targets.len());
        };
        t.name()
    }

    /// Loads `lines` into `batch` of the app's one target.
    pub async fn load(&self, batch: &str, lines: &[String]) -> LoadSummary {
        self.load_to(self.target(), batch, lines).await
    }

    /// Loads `lines` into `batch` of `target`.
    pub async fn load_to(&self, target: &str, batch: &str, lines: &[String]) -> LoadSummary {
        let f = jsonl(lines);
        super::load(&self.db, &self.cfg, target, batch, &[f.path()], None).await
    }

    /// A worker on the app's configuration, not yet running.
    pub fn worker(&self) -> Arc<Worker> {
        let providers = chatferry::providers::build_all(&self.cfg).unwrap();
        Worker::new(self.db.store.clone(), &self.cfg, providers)
    }

    /// Runs a worker until nothing is left to send.
    pub async fn run_until_idle(&self) -> RunReport {
        super::run_until_idle(&self.db, &self.cfg).await
    }

    /// [`TestApp::run_until_idle`] with `hook` installed.
    pub async fn run_until_idle_with(&self, hook: Hook) -> RunReport {
        let w = self.worker();
        w.set_hook(hook);
        w.run(CancellationToken::new(), true).await.unwrap()
    }

    /// Starts a worker in the background; it keeps polling when idle.
    pub fn start_worker(&self) -> Running {
        Running::start(self.worker())
    }

    /// The real binary on the app's configuration.
    pub fn binary(&self) -> Binary {
        Binary::new(&self.settings)
    }

    /// Jobs not done, by status (empty when all are done).
    pub async fn not_done(&self) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT status::text, count(*) FROM chatferry.jobs WHERE status <> 'done' GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(self.db.store.pool())
        .await
        .unwrap()
    }

    /// How many jobs there are.
    pub async fn jobs(&self) -> i64 {
        self.db.scalar("SELECT count(*) FROM chatferry.jobs").await
    }
}

/// A worker running in the background until stopped.
pub struct Running {
    stop: CancellationToken,
    run: JoinHandle<anyhow::Result<RunReport>>,
}

impl Running {
    /// Starts `worker`; it keeps polling when idle.
    pub fn start(worker: Arc<Worker>) -> Running {
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone(), false));
        Running { stop, run }
    }

    /// Whether it has ended (it should not, before [`Running::stop`]).
    pub fn is_finished(&self) -> bool {
        self.run.is_finished()
    }

    /// Waits for it to end by itself.
    pub async fn result(self) -> anyhow::Result<RunReport> {
        self.run.await.unwrap()
    }

    /// Cancels it and waits for its drain; panics if it failed.
    pub async fn stop(self) -> RunReport {
        self.stop.cancel();
        self.run.await.unwrap().unwrap()
    }
}
