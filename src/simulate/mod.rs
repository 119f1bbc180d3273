//! `chatferry simulate`: a local stand-in for ZEGO ZIM and Tencent Cloud IM
//! that follows providers.md, with seeded fault injection.
//!
//! It serves both providers on one address, for the apps of the
//! configuration's `[targets.*]` (so the daemon and the simulator agree on
//! ids and secrets by construction):
//!
//! - ZIM: `POST /?Action=ImportPeerMsg|QueryPeerMsg|UserRegister&AppId=..`
//!   (see [`zim`]);
//! - Tencent: `POST /v4/openim/importmsg|admin_getroammsg` and
//!   `/v4/im_open_login_svc/account_import|multiaccount_import` (see the
//!   `tencent` module doc).
//!
//! Its own endpoints, never touched by faults:
//!
//! - `GET /_sim/stats`: counters per provider and in total.
//! - `GET /_sim/messages?provider=zim&app=APPID&user=U&peer=P`: U's view of
//!   the conversation with P, in stored (arrival) order;
//!   `?provider=tencent&app=SDKAPPID&a=U1&b=U2[&order=arrival]`: one
//!   conversation in display order (MsgTimeStamp, MsgSeq) or arrival order;
//!   without users: every view/conversation with its count. `app` may be
//!   left out when the provider has one app.
//! - `GET /_sim/users?provider=zim|tencent[&app=ID]`: every user of each
//!   app with the profile registered for it (ZIM `UserName`/`UserAvatar`,
//!   Tencent `Nick`/`FaceUrl`; null when none was given).
//! - `GET /_sim/faults`, `POST /_sim/faults` (a JSON merge patch of the
//!   [`FaultConfig`]; `?replace=true` replaces it whole).
//! - `POST /_sim/reset`: forgets messages, users (back to `--users`),
//!   nonces, rate windows and counters; faults stay.
//! - `GET /_sim/dump`: everything stored, with the stats (also written on
//!   exit with `--dump FILE`).
//! - `GET /_sim/health`.
//!
//! The server is one axum `Router` (`server`), served by `axum::serve`
//! until [`Simulator::shutdown`]; `conn` is how a fault drops a
//! connection without an answer.
//!
//! Rate limits are per app and API at the target's configured rates
//! (`rate_per_sec`, `query_rate_per_sec`, `register_rate_per_sec` /
//! `account_rate_per_sec`), or `--rate N` for every API (0: unlimited);
//! see [`ratelimit`] for the exact rule.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

mod apps;
pub mod clock;
mod conn;
mod control;
pub mod faults;
mod http;
pub mod ratelimit;
mod server;
mod state;
mod tencent;
mod users;
pub mod zim;

pub use clock::Clock;
pub use faults::{FaultConfig, OutageMode, ProviderFaults};

use apps::{listed, Apps};
use conn::{Conn, SimListener};
use faults::Faults;
use http::{Answer, Query};
use state::{ProviderStats, Stats};

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// One user id per line, registered in every app at start.
    pub users_file: Option<PathBuf>,
    /// Register unknown users on first use instead of refusing them.
    pub auto_register: bool,
    pub faults: FaultConfig,
    /// Calls per second per app and API for every API (0: unlimited);
    /// otherwise each target's configured rates.
    pub rate_override: Option<f64>,
    /// Write `GET /_sim/dump` here on shutdown.
    pub dump_on_exit: Option<PathBuf>,
    /// The clock; tests pin it with [`Clock::manual`].
    pub clock: Clock,
    /// How far back Tencent's `admin_getroammsg` reads (the roaming period).
    pub roaming_days: u32,
    /// Skip signature and UserSig checks (benchmarks only).
    pub no_auth: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users_file: None,
            auto_register: false,
            faults: FaultConfig::default(),
            rate_override: None,
            dump_on_exit: None,
            clock: Clock::system(),
            roaming_days: 7,
            no_auth: false,
        }
    }
}

/// What every request handler shares.
pub(crate) struct Shared {
    apps: Apps,
    stats: Stats,
    faults: Faults,
    clock: Clock,
    auto_register: bool,
    no_auth: bool,
    users: Vec<String>,
    request_ids: AtomicU64,
    cancel: CancellationToken,
    start_ns: i64,
}

impl Shared {
    fn new(apps: Apps, opts: SimOptions, users: Vec<String>) -> anyhow::Result<Shared> {
        let start_ns = opts.clock.mono_ns();
        let faults = Faults::new(opts.faults, start_ns).map_err(|e| ConfigError(format!("{e:#}")))?;
        Ok(Shared {
            apps,
            stats: Stats::default(),
            faults,
            clock: opts.clock,
            auto_register: opts.auto_register,
            no_auth: opts.no_auth,
            users,
            request_ids: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            start_ns,
        })
    }

    /// A fresh request id, as ZIM's answers carry.
    fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn stats_json(&self) -> Value {
        let mut v = self.stats.json();
        v["uptime_ms"] = json!((self.clock.mono_ns() - self.start_ns) / 1_000_000);
        v["faults_active"] = json!(self.faults.config().is_active());
        v
    }

    fn dump_json(&self) -> Value {
        json!({
            "stats": self.stats_json(),
            "faults": self.faults.config(),
            "zim": listed(&self.apps.zim, None, |a| a.views_json(true)),
            "tencent": listed(&self.apps.tencent, None, |a| a.convs_json(true)),
        })
    }

    fn reset(&self) {
        self.apps.reset(&self.users);
        self.stats.reset();
    }
}

/// What a provider handler needs to know about the call.
pub(crate) struct Ctx<'a> {
    pub now_ms: i64,
    pub mono_ns: i64,
    pub stats: &'a ProviderStats,
    pub auto_register: bool,
    pub no_auth: bool,
    /// This call's request id.
    pub rid: u64,
    /// A live user's message arrives in the view after this call.
    pub live: bool,
    /// How views are presented (live users, MsgTime).
    pub view: faults::ViewSettings,
}

/// A handler's successful answer: finished text, or fields to which the
/// provider's success envelope is added.
pub(crate) enum Reply {
    Text(String),
    Fields(Value),
}

/// A call the provider refuses: its code and message.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: i64,
    pub message: String,
}

/// A refusal with `code`.
pub(crate) fn bad(code: i64, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    dump_on_exit: Option<PathBuf>,
}

impl Simulator {
    /// Binds and starts serving in the background; returns once listening.
    pub async fn start(config: &Config, opts: SimOptions) -> anyhow::Result<Simulator> {
        let users = match &opts.users_file {
            Some(p) => users::read_users(p)?,
            None => Vec::new(),
        };
        let apps = Apps::from_config(config, &opts, &users)?;
        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("simulator: cannot listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let dump_on_exit = opts.dump_on_exit.clone();
        let shared = Arc::new(Shared::new(apps, opts, users)?);
        tracing::info!(
            %addr,
            zim_apps = shared.apps.zim.len(),
            tencent_apps = shared.apps.tencent.len(),
            users = shared.users.len(),
            auto_register = shared.auto_register,
            "simulator started"
        );
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(Simulator {
            addr,
            shared,
            server: Some(server),
            dump_on_exit,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/`, the base URL both providers' `endpoint` can use.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The same object as `GET /_sim/stats`.
    pub fn stats(&self) -> Value {
        self.shared.stats_json()
    }

    /// The same object as `GET /_sim/dump`.
    pub fn dump(&self) -> Value {
        self.shared.dump_json()
    }

    /// The simulator's clock (a manual one can be moved by tests).
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The current fault settings.
    pub fn faults(&self) -> FaultConfig {
        self.shared.faults.config()
    }

    /// Replaces the fault settings, as `POST /_sim/faults?replace=true` does.
    pub fn set_faults(&self, faults: FaultConfig) -> anyhow::Result<()> {
        self.shared.faults.replace(faults)
    }

    /// Stops accepting, lets open calls finish (slow answers are cut short),
    /// and writes the dump if one was asked for.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                tracing::warn!("simulator: some connections were still open after 5 s; leaving them");
            }
        }
        if let Some(path) = self.dump_on_exit.take() {
            self.write_dump(&path);
        }
    }

    fn write_dump(&self, path: &Path) {
        let dump = self.shared.dump_json();
        let text = serde_json::to_string_pretty(&dump).expect("dump serializes");
        match std::fs::write(path, text) {
            Ok(()) => tracing::info!(path = %path.display(), "simulator state dumped"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot write the simulator dump")
            }
        }
    }
}

/// Serves every route until the simulator is cancelled, then lets open
/// connections finish.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let stop = shared.cancel.clone().cancelled_owned();
    let app = server::router(shared).into_make_service_with_connect_info::<Conn>();
    if let Err(e) = axum::serve(SimListener::new(listener), app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "simulator: the server failed");
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// `chatferry simulate` options, to flatten into the CLI.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to serve both providers on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// Users registered in every app at start, one id per line.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Register unknown users on first use instead of refusing them.
    #[arg(long)]
    pub auto_register: bool,
    /// Calls per second per app and API for every API (0: unlimited).
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Fault settings: inline JSON, or a JSON or .toml file.
    #[arg(long, value_name = "FILE|JSON")]
    pub faults: Option<String>,
    /// One fault setting, e.g. `zim.reset_rate=0.05` (repeatable; applied after --faults).
    #[arg(long = "fault", value_name = "KEY=VALUE")]
    pub fault: Vec<String>,
    /// Seed of the fault draws.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Write the simulator's state here on exit.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// Skip signature and UserSig checks (benchmarks only).
    #[arg(long)]
    pub no_auth: bool,
}

impl SimArgs {
    /// The options these flags describe; a bad fault setting is a
    /// configuration error.
    pub fn options(&self) -> anyhow::Result<SimOptions> {
        let usage = |e: anyhow::Error| anyhow::Error::new(ConfigError(format!("{e:#}")));
        let mut faults = match &self.faults {
            Some(arg) => FaultConfig::load(arg).map_err(usage)?,
            None => FaultConfig::default(),
        };
        for f in &self.fault {
            faults.apply_flag(f).map_err(usage)?;
        }
        if let Some(seed) = self.seed {
            faults.seed = seed;
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r >= 0.0) {
                bail!(ConfigError(format!("--rate {r} must be 0 (unlimited) or more")));
            }
        }
        Ok(SimOptions {
            listen: self.listen,
            users_file: self.users.clone(),
            auto_register: self.auto_register,
            faults,
            rate_override: self.rate,
            dump_on_exit: self.dump.clone(),
            clock: Clock::system(),
            roaming_days: 7,
            no_auth: self.no_auth,
        })
    }
}

/// Runs `chatferry simulate` until SIGINT or SIGTERM; prints
/// `simulator listening on http://ADDR` once ready.
pub async fn run_cli(config: &Config, args: SimArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let sim = Simulator::start(config, opts).await?;
    println!("simulator listening on http://{}", sim.addr());
    wait_for_stop().await?;
    tracing::info!("simulator stopping");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_build_options() {
        let a = SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            users: None,
            auto_register: true,
            rate: Some(0.0),
            faults: Some(r#"{"seed": 3, "zim": {"reset_rate": 0.1}}"#.into()),
            fault: vec!["tencent.down=true".into()],
            seed: Some(5),
            dump: None,
            no_auth: false,
        };
        let o = a.options().unwrap();
        assert_eq!(o.faults.seed, 5);
        assert_eq!(o.faults.zim.reset_rate, 0.1);
        assert!(o.faults.tencent.down);
        let bad = SimArgs {
            fault: vec!["zim.reset_rate=2".into()],
            ..a
        };
        let e = bad.options().unwrap_err();
        assert!(e.downcast_ref::<ConfigError>().is_some(), "{e:#}");
    }
}
