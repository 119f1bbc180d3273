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
//! Rate limits are per app and API at the target's configured rates
//! (`rate_per_sec`, `query_rate_per_sec`, `register_rate_per_sec` /
//! `account_rate_per_sec`), or `--rate N` for every API (0: unlimited);
//! see [`ratelimit`] for the exact rule.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, TargetConfig};

pub mod clock;
mod control;
pub mod faults;
pub mod ratelimit;
mod server;
mod state;
mod tencent;
pub mod zim;

pub use clock::Clock;
pub use faults::{FaultConfig, OutageMode, ProviderFaults};

use faults::Faults;
use state::{ProviderStats, Stats};
use tencent::TimApp;
use zim::ZimApp;

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
    zim: HashMap<u32, ZimApp>,
    tencent: HashMap<u32, TimApp>,
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
    fn stats_json(&self) -> Value {
        let mut v = self.stats.json();
        v["uptime_ms"] = json!((self.clock.mono_ns() - self.start_ns) / 1_000_000);
        v["faults_active"] = json!(self.faults.config().is_active());
        v
    }

    fn dump_json(&self) -> Value {
        let mut zim: Vec<&ZimApp> = self.zim.values().collect();
        zim.sort_by_key(|a| a.app_id);
        let mut tim: Vec<&TimApp> = self.tencent.values().collect();
        tim.sort_by_key(|a| a.sdk_app_id);
        json!({
            "stats": self.stats_json(),
            "faults": self.faults.config(),
            "zim": zim.iter().map(|a| a.views_json(true)).collect::<Vec<_>>(),
            "tencent": tim.iter().map(|a| a.convs_json(true)).collect::<Vec<_>>(),
        })
    }

    fn reset(&self) {
        for a in self.zim.values() {
            a.reset(&self.users);
        }
        for a in self.tencent.values() {
            a.reset(&self.users);
        }
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

/// A finished answer.
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from(body),
        }
    }

    /// A gateway-style HTML error page: not JSON, on purpose.
    pub(crate) fn html(status: u16) -> Self {
        let reason = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Server Error");
        Self {
            status,
            content_type: "text/html",
            body: Bytes::from(format!(
                "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
                 <center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
                 </body>\r\n</html>\r\n"
            )),
        }
    }
}

/// A URL query, percent-decoded.
pub(crate) struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    pub(crate) fn parse(q: &'a str) -> Self {
        let pairs = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Reads `--users FILE`: one id per line; blank lines and `#` comments skipped.
fn read_users(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the users file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    accept: Option<JoinHandle<()>>,
    dump_on_exit: Option<PathBuf>,
}

impl Simulator {
    /// Binds and starts serving in the background; returns once listening.
    pub async fn start(config: &Config, opts: SimOptions) -> anyhow::Result<Simulator> {
        let users = match &opts.users_file {
            Some(p) => read_users(p)?,
            None => Vec::new(),
        };
        let mut zim: HashMap<u32, ZimApp> = HashMap::new();
        let mut tencent: HashMap<u32, TimApp> = HashMap::new();
        for (name, t) in &config.targets {
            match t {
                TargetConfig::Zim(z) => {
                    let secret = z
                        .server_secret
                        .as_ref()
                        .map(|s| s.expose_secret().to_string())
                        .with_context(|| format!("targets.{name} has no server_secret"))?;
                    if let Some(existing) = zim.get(&z.app_id) {
                        if !existing.same_secret(&secret) {
                            bail!(ConfigError(format!(
                                "targets.{name}: ZIM app {} is configured twice with different server secrets",
                                z.app_id
                            )));
                        }
                        continue;
                    }
                    zim.insert(z.app_id, ZimApp::new(z, secret, opts.rate_override, &users));
                }
                TargetConfig::Tencent(t) => {
                    let key = t
                        .secret_key
                        .as_ref()
                        .map(|s| s.expose_secret().to_string())
                        .with_context(|| format!("targets.{name} has no secret_key"))?;
                    if let Some(existing) = tencent.get(&t.sdk_app_id) {
                        if !existing.same_credentials(&t.admin_identifier, &key) {
                            bail!(ConfigError(format!(
                                "targets.{name}: Tencent app {} is configured twice with different \
                                 admin_identifier or secret_key",
                                t.sdk_app_id
                            )));
                        }
                        continue;
                    }
                    tencent.insert(
                        t.sdk_app_id,
                        TimApp::new(t, key, opts.rate_override, opts.roaming_days, &users),
                    );
                }
            }
        }
        let listener = TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("simulator: cannot listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let start_ns = opts.clock.mono_ns();
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            zim,
            tencent,
            stats: Stats::default(),
            faults: Faults::new(opts.faults, start_ns).map_err(|e| ConfigError(format!("{e:#}")))?,
            clock: opts.clock,
            auto_register: opts.auto_register,
            no_auth: opts.no_auth,
            users,
            request_ids: AtomicU64::new(1),
            cancel: cancel.clone(),
            start_ns,
        });
        tracing::info!(
            %addr,
            zim_apps = shared.zim.len(),
            tencent_apps = shared.tencent.len(),
            users = shared.users.len(),
            auto_register = shared.auto_register,
            "simulator started"
        );
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            tracker.clone(),
            cancel,
        ));
        Ok(Simulator {
            addr,
            shared,
            tracker,
            accept: Some(accept),
            dump_on_exit: opts.dump_on_exit,
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
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("simulator: some connections were still open after 5 s; leaving them");
        }
        if let Some(path) = self.dump_on_exit.take() {
            let dump = self.shared.dump_json();
            let text = serde_json::to_string_pretty(&dump).expect("dump serializes");
            match std::fs::write(&path, text) {
                Ok(()) => tracing::info!(path = %path.display(), "simulator state dumped"),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the simulator dump")
                }
            }
        }
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
    fn query_decodes_like_a_form() {
        let q = Query::parse("a=1&b=x%2By+z&usersig=eJ*-_&c&d=%zz&e=%4");
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("x+y z"));
        assert_eq!(q.get("usersig"), Some("eJ*-_"));
        assert_eq!(q.get("c"), Some(""));
        assert_eq!(q.get("d"), Some("%zz"));
        assert_eq!(q.get("e"), Some("%4"));
        assert_eq!(q.get("f"), None);
    }

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
