//! The daemon's configuration as typed test settings. A test names what it
//! sets (`ZimTarget { ensure_users: true, .. }`), and [`Settings::toml`]
//! is the one place that spells it as daemon.toml, for the library and
//! the binary alike.

use std::path::{Path, PathBuf};

use chatferry::config::{Config, OnPermanentError};

/// The ZIM app of every test target and simulator.
pub const ZIM_APP: u32 = 12345;
/// Its ServerSecret.
pub const ZIM_SECRET: &str = "9193cc662a4c0ec135ec71fb57194b38";
/// The Tencent app of every test target and simulator.
pub const TIM_APP: u32 = 1400000000;
/// Its secret key.
pub const TIM_KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
/// Its admin identifier.
pub const TIM_ADMIN: &str = "administrator";
/// Where a target sends when nothing listens: the discard port, closed.
pub const CLOSED: &str = "http://127.0.0.1:9/";

/// Which provider a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zim,
    Tencent,
}

impl Kind {
    /// The name of a target of this kind in test configurations.
    pub fn target(self) -> &'static str {
        match self {
            Kind::Zim => "zim",
            Kind::Tencent => "tim",
        }
    }

    /// The provider's key in the simulator's stats and dump.
    pub fn side(self) -> &'static str {
        match self {
            Kind::Zim => "zim",
            Kind::Tencent => "tencent",
        }
    }
}

/// `[targets.NAME]` of kind `zim`; unset values take the library's defaults.
#[derive(Debug, Clone)]
pub struct ZimTarget {
    pub name: String,
    /// `None`: the test app's provider (a closed port when it runs none).
    pub endpoint: Option<String>,
    pub app_id: u32,
    pub server_secret: String,
    pub rate_per_sec: Option<f64>,
    pub query_rate_per_sec: Option<f64>,
    pub register_rate_per_sec: Option<f64>,
    pub max_message_bytes: Option<usize>,
    pub retention_days: Option<u32>,
    pub ensure_users: bool,
}

impl Default for ZimTarget {
    fn default() -> Self {
        ZimTarget {
            name: Kind::Zim.target().into(),
            endpoint: None,
            app_id: ZIM_APP,
            server_secret: ZIM_SECRET.into(),
            rate_per_sec: None,
            query_rate_per_sec: None,
            register_rate_per_sec: None,
            max_message_bytes: None,
            retention_days: None,
            ensure_users: false,
        }
    }
}

/// `[targets.NAME]` of kind `tencent`; unset values take the library's defaults.
#[derive(Debug, Clone)]
pub struct TencentTarget {
    pub name: String,
    /// `None`: the test app's provider (a closed port when it runs none).
    pub endpoint: Option<String>,
    pub sdk_app_id: u32,
    pub admin_identifier: String,
    pub secret_key: String,
    pub rate_per_sec: Option<f64>,
    pub query_rate_per_sec: Option<f64>,
    pub account_rate_per_sec: Option<f64>,
    pub max_message_bytes: Option<usize>,
    pub ensure_accounts: bool,
}

impl Default for TencentTarget {
    fn default() -> Self {
        TencentTarget {
            name: Kind::Tencent.target().into(),
            endpoint: None,
            sdk_app_id: TIM_APP,
            admin_identifier: TIM_ADMIN.into(),
            secret_key: TIM_KEY.into(),
            rate_per_sec: None,
            query_rate_per_sec: None,
            account_rate_per_sec: None,
            max_message_bytes: None,
            ensure_accounts: false,
        }
    }
}

/// One target of either kind.
#[derive(Debug, Clone)]
pub enum Target {
    Zim(ZimTarget),
    Tencent(TencentTarget),
}

impl From<ZimTarget> for Target {
    fn from(t: ZimTarget) -> Self {
        Target::Zim(t)
    }
}

impl From<TencentTarget> for Target {
    fn from(t: TencentTarget) -> Self {
        Target::Tencent(t)
    }
}

impl Target {
    /// The default target of `kind`.
    pub fn of(kind: Kind) -> Target {
        match kind {
            Kind::Zim => ZimTarget::default().into(),
            Kind::Tencent => TencentTarget::default().into(),
        }
    }

    /// The same target, registering missing users (`ensure_users` /
    /// `ensure_accounts`) when `ensure`.
    pub fn ensuring(mut self, ensure: bool) -> Target {
        match &mut self {
            Target::Zim(z) => z.ensure_users = ensure,
            Target::Tencent(t) => t.ensure_accounts = ensure,
        }
        self
    }

    /// Its provider.
    pub fn kind(&self) -> Kind {
        match self {
            Target::Zim(_) => Kind::Zim,
            Target::Tencent(_) => Kind::Tencent,
        }
    }

    /// Its name: `[targets.NAME]`.
    pub fn name(&self) -> &str {
        match self {
            Target::Zim(z) => &z.name,
            Target::Tencent(t) => &t.name,
        }
    }

    /// Where it sends; `None` until a test app points it at its provider.
    pub fn endpoint_mut(&mut self) -> &mut Option<String> {
        match self {
            Target::Zim(z) => &mut z.endpoint,
            Target::Tencent(t) => &mut t.endpoint,
        }
    }

    /// The send API's rate, then the query and the registration APIs'.
    pub fn rates_mut(&mut self) -> [&mut Option<f64>; 3] {
        match self {
            Target::Zim(z) => [
                &mut z.rate_per_sec,
                &mut z.query_rate_per_sec,
                &mut z.register_rate_per_sec,
            ],
            Target::Tencent(t) => [
                &mut t.rate_per_sec,
                &mut t.query_rate_per_sec,
                &mut t.account_rate_per_sec,
            ],
        }
    }
}

/// `[worker]`; unset values take the library's defaults.
#[derive(Debug, Clone, Default)]
pub struct WorkerSettings {
    pub concurrency: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub lease_secs: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub retry_min_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub reconcile_settle_secs: Option<u64>,
    pub max_reconcile_attempts: Option<u32>,
    pub sweep_secs: Option<u64>,
    pub lane_window: Option<usize>,
    pub on_permanent_error: Option<OnPermanentError>,
}

impl WorkerSettings {
    /// Fast retries and a 3 s lease; lanes send one call at a time (the
    /// runner ZIM uses), so suites can check arrival order at the
    /// recording provider (`tests/tencent.rs` covers Tencent's window).
    pub fn fast() -> Self {
        WorkerSettings {
            concurrency: Some(64),
            max_concurrency: Some(64),
            lease_secs: Some(3),
            request_timeout_ms: Some(1000),
            poll_interval_ms: Some(20),
            retry_min_ms: Some(10),
            retry_max_ms: Some(50),
            shutdown_grace_secs: Some(5),
            reconcile_settle_secs: Some(2),
            lane_window: Some(1),
            ..Default::default()
        }
    }

    /// [`WorkerSettings::fast`] with the library's lane window and lane
    /// ceiling, and leases short enough that a killed daemon's lanes come
    /// free within seconds, yet with room for a loaded test machine's late
    /// heartbeats: what the simulator suites run.
    pub fn end_to_end() -> Self {
        WorkerSettings {
            max_concurrency: None,
            lease_secs: Some(4),
            lane_window: None,
            ..Self::fast()
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: &'static str,
    /// `text` or `json`; `None` takes the default.
    pub format: Option<&'static str>,
}

impl LogSettings {
    /// Warnings and errors only, in the default format.
    pub fn warn() -> Self {
        LogSettings {
            level: "warn",
            format: None,
        }
    }
}

/// `[load]`.
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    pub chunk_rows: Option<usize>,
    pub max_line_bytes: Option<usize>,
}

/// `[http]`, the ops endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub listen: Option<String>,
    pub token: Option<String>,
}

/// `[ingest]`, enabled.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub token: String,
    pub max_body_bytes: Option<usize>,
}

/// A whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub database_url: Option<String>,
    pub log: Option<LogSettings>,
    pub worker: Option<WorkerSettings>,
    pub load: LoadSettings,
    pub http: HttpSettings,
    pub ingest: Option<IngestSettings>,
    pub targets: Vec<Target>,
}

impl Settings {
    /// These settings with `target` added.
    pub fn with(mut self, target: impl Into<Target>) -> Self {
        self.targets.push(target.into());
        self
    }

    /// The `[worker]` table, created empty (library defaults) if missing.
    pub fn worker_mut(&mut self) -> &mut WorkerSettings {
        self.worker.get_or_insert_with(WorkerSettings::default)
    }

    /// The target named `name`.
    pub fn target_mut(&mut self, name: &str) -> &mut Target {
        self.targets
            .iter_mut()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no target named {name}"))
    }

    /// Sets the send rate of the target named `name`.
    pub fn set_rate(&mut self, name: &str, per_sec: f64) {
        *self.target_mut(name).rates_mut()[0] = Some(per_sec);
    }

    /// The configuration as daemon.toml spells it.
    pub fn toml(&self) -> String {
        let mut doc = Toml::default();
        if let Some(url) = &self.database_url {
            doc.table("database").set("url", url);
        }
        if let Some(log) = &self.log {
            doc.table("log").set("level", log.level).opt("format", log.format);
        }
        if let Some(w) = &self.worker {
            w.write(&mut doc);
        }
        if self.load.chunk_rows.is_some() || self.load.max_line_bytes.is_some() {
            doc.table("load")
                .opt("chunk_rows", self.load.chunk_rows)
                .opt("max_line_bytes", self.load.max_line_bytes);
        }
        if self.http.listen.is_some() || self.http.token.is_some() {
            doc.table("http")
                .opt("listen", self.http.listen.as_deref())
                .opt("token", self.http.token.as_deref());
        }
        if let Some(i) = &self.ingest {
            doc.table("ingest")
                .set("enabled", true)
                .set("token", &i.token)
                .opt("max_body_bytes", i.max_body_bytes);
        }
        for t in &self.targets {
            t.write(&mut doc);
        }
        doc.0
    }

    /// The configuration as the library reads it.
    pub fn config(&self) -> Config {
        Config::from_toml(&self.toml()).expect("test config parses")
    }

    /// Writes daemon.toml into `dir` (for the binary); returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("daemon.toml");
        std::fs::write(&path, self.toml()).unwrap();
        path
    }
}

impl WorkerSettings {
    fn write(&self, doc: &mut Toml) {
        let permanent = self.on_permanent_error.map(|p| match p {
            OnPermanentError::Skip => "skip",
            OnPermanentError::Block => "block",
        });
        doc.table("worker")
            .opt("concurrency", self.concurrency)
            .opt("max_concurrency", self.max_concurrency)
            .opt("lease_secs", self.lease_secs)
            .opt("request_timeout_ms", self.request_timeout_ms)
            .opt("poll_interval_ms", self.poll_interval_ms)
            .opt("retry_min_ms", self.retry_min_ms)
            .opt("retry_max_ms", self.retry_max_ms)
            .opt("shutdown_grace_secs", self.shutdown_grace_secs)
            .opt("reconcile_settle_secs", self.reconcile_settle_secs)
            .opt("max_reconcile_attempts", self.max_reconcile_attempts)
            .opt("sweep_secs", self.sweep_secs)
            .opt("lane_window", self.lane_window)
            .opt("on_permanent_error", permanent);
    }
}

impl Target {
    fn write(&self, doc: &mut Toml) {
        let table = doc.table(&format!("targets.{}", self.name()));
        match self {
            Target::Zim(z) => table
                .set("kind", "zim")
                .set("endpoint", z.endpoint.as_deref().unwrap_or(CLOSED))
                .set("app_id", z.app_id)
                .set("server_secret", &z.server_secret)
                .opt("rate_per_sec", z.rate_per_sec)
                .opt("query_rate_per_sec", z.query_rate_per_sec)
                .opt("register_rate_per_sec", z.register_rate_per_sec)
                .opt("max_message_bytes", z.max_message_bytes)
                .opt("retention_days", z.retention_days)
                .opt("ensure_users", z.ensure_users.then_some(true)),
            Target::Tencent(t) => table
                .set("kind", "tencent")
                .set("endpoint", t.endpoint.as_deref().unwrap_or(CLOSED))
                .set("sdk_app_id", t.sdk_app_id)
                .set("admin_identifier", &t.admin_identifier)
                .set("secret_key", &t.secret_key)
                .opt("rate_per_sec", t.rate_per_sec)
                .opt("query_rate_per_sec", t.query_rate_per_sec)
                .opt("account_rate_per_sec", t.account_rate_per_sec)
                .opt("max_message_bytes", t.max_message_bytes)
                .opt("ensure_accounts", t.ensure_accounts.then_some(true)),
        };
    }
}

/// A TOML document, written table by table.
#[derive(Default)]
struct Toml(String);

impl Toml {
    fn table(&mut self, name: &str) -> &mut Self {
        self.0 += &format!("[{name}]\n");
        self
    }

    fn set(&mut self, key: &str, value: impl TomlValue) -> &mut Self {
        self.0 += &format!("{key} = {}\n", value.toml());
        self
    }

    /// [`Toml::set`], leaving the key out when `value` is `None`.
    fn opt(&mut self, key: &str, value: Option<impl TomlValue>) -> &mut Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }
}

/// A value as TOML writes it.
trait TomlValue {
    fn toml(&self) -> String;
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("\"{}\"", self.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

impl TomlValue for &String {
    fn toml(&self) -> String {
        self.as_str().toml()
    }
}

/// Numbers and booleans, whose `Display` is already TOML.
macro_rules! toml_as_displayed {
    ($($t:ty),*) => {$(
        impl TomlValue for $t {
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

toml_as_displayed!(u32, u64, usize, f64, bool);
