//! Typed configuration: `daemon.toml` layered with `CHATFERRY__SECTION__KEY`
//! environment overrides and `DATABASE_URL`.
//!
//! Every credential is a [`SecretString`]: it prints as `[REDACTED]` and is
//! only exposed at the one place that signs a request or opens a connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configuration problem: the CLI maps it to exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub load: LoadConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL; `DATABASE_URL` overrides it. May hold a password.
    pub url: Option<SecretString>,
    /// The Postgres schema chatferry keeps its tables in.
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: default_schema(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_schema() -> String {
    "chatferry".into()
}
fn default_max_connections() -> u32 {
    16
}

/// What a lane does after a job fails permanently.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnPermanentError {
    /// Record the failure and go on with the lane's next message.
    #[default]
    Skip,
    /// Stop the lane at the failed job until an operator steps in.
    Block,
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Lanes in flight at once in this process (the floor: the worker
    /// runs more when rate × job cycle time needs more).
    pub concurrency: usize,
    /// Ceiling for the adaptive lane count.
    pub max_concurrency: usize,
    /// How long a lane stays claimed without a heartbeat.
    pub lease_secs: u64,
    /// Per-request HTTP timeout; past it the outcome is unknown.
    pub request_timeout_ms: u64,
    pub on_permanent_error: OnPermanentError,
    /// Give up on a job after this many attempts (0: never).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    pub retry_min_ms: u64,
    /// Ceiling of the retry delay.
    pub retry_max_ms: u64,
    /// How often an idle worker looks for new work.
    pub poll_interval_ms: u64,
    /// How long in-flight calls may run after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Jobs read from a lane per round trip.
    pub prefetch: i64,
    /// How old an in-doubt job's latest in-flight mark must be (database
    /// clock) before it is reconciled: a request the provider applies after
    /// the client gave up (slow backend, a proxy's 504) must be visible by
    /// then. Well above the request timeout.
    pub reconcile_settle_secs: u64,
    /// Reconciles that cannot decide before the job fails (or blocks its
    /// lane) with a reason for the operator.
    pub max_reconcile_attempts: u32,
    /// Clock skew allowed between this host, the database and the provider
    /// when a reconcile compares the provider's receive time (MsgTime) with
    /// the time a job was marked in flight.
    pub reconcile_skew_secs: u64,
    /// How often the worker looks for lanes with work that nothing will
    /// wake (and wakes them, with a warning).
    pub sweep_secs: u64,
    /// Calls in flight at once within one lane, for providers whose
    /// display order does not depend on arrival order (Tencent). ZIM lanes
    /// always send one at a time, and so does every lane under
    /// `on_permanent_error = "block"`. 1 turns the window off.
    pub lane_window: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            max_concurrency: 1024,
            lease_secs: 30,
            request_timeout_ms: 10_000,
            on_permanent_error: OnPermanentError::Skip,
            max_attempts: 0,
            retry_min_ms: 500,
            retry_max_ms: 300_000,
            poll_interval_ms: 500,
            shutdown_grace_secs: 20,
            prefetch: 32,
            lane_window: 64,
            reconcile_settle_secs: 60,
            max_reconcile_attempts: 20,
            reconcile_skew_secs: 120,
            sweep_secs: 60,
        }
    }
}

impl WorkerConfig {
    /// Refuses values the worker cannot run safely with.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(err("worker.concurrency must be at least 1"));
        }
        if self.lease_secs < 3 {
            return Err(err("worker.lease_secs must be at least 3"));
        }
        if self.request_timeout_ms * 2 >= self.lease_secs * 1000 {
            return Err(err(format!(
                "worker.request_timeout_ms ({}) must be under half of worker.lease_secs ({} s), \
                 so a call always ends while its lane is still leased",
                self.request_timeout_ms, self.lease_secs
            )));
        }
        if self.reconcile_settle_secs * 1000 <= self.request_timeout_ms {
            return Err(err(format!(
                "worker.reconcile_settle_secs ({} s) must be above worker.request_timeout_ms ({} ms): \
                 a request still travelling when its reconcile reads the view would be sent twice",
                self.reconcile_settle_secs, self.request_timeout_ms
            )));
        }
        if self.max_reconcile_attempts == 0 {
            return Err(err("worker.max_reconcile_attempts must be at least 1"));
        }
        if self.shutdown_grace_secs * 1000 <= self.request_timeout_ms {
            return Err(err(format!(
                "worker.shutdown_grace_secs ({} s) must exceed worker.request_timeout_ms ({} ms), \
                 so a call under way at SIGTERM can end and be checkpointed within the grace",
                self.shutdown_grace_secs, self.request_timeout_ms
            )));
        }
        if self.sweep_secs < 1 {
            return Err(err("worker.sweep_secs must be at least 1"));
        }
        if !(1..=256).contains(&self.lane_window) {
            return Err(err("worker.lane_window must be between 1 and 256"));
        }
        if self.prefetch < 1 {
            return Err(err("worker.prefetch must be at least 1"));
        }
        Ok(())
    }
}

/// `[http]`: the ops endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` for /healthz, /readyz, /metrics and the dashboard;
    /// unset disables it.
    pub listen: Option<String>,
    /// When set, `/` and `/api/*` require `Authorization: Bearer <token>`
    /// (the page also takes `?token=` once); the probes stay open.
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
}

/// `[ingest]`: the live cut-over API (`POST /v1/targets/{target}/messages`),
/// served on `[http] listen`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub enabled: bool,
    /// The bearer token callers send; required when enabled. Never logged.
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    /// Bodies over this are refused (413) before they are read whole.
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            enabled: false,
            token: None,
            token_file: None,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `chatferry=debug`. `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[load]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Rows written per insert statement.
    pub chunk_rows: usize,
    /// Lines longer than this are rejected without being buffered whole.
    pub max_line_bytes: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            chunk_rows: 5000,
            max_line_bytes: 1 << 20,
        }
    }
}

/// One `[targets.NAME]` table; `kind` picks the provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetConfig {
    Zim(ZimTarget),
    Tencent(TencentTarget),
}

impl TargetConfig {
    /// Calls per second this target may make (the send API).
    pub fn rate_per_sec(&self) -> f64 {
        match self {
            TargetConfig::Zim(z) => z.rate_per_sec,
            TargetConfig::Tencent(t) => t.rate_per_sec,
        }
    }

    /// `zim` or `tencent`.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Zim(_) => "zim",
            TargetConfig::Tencent(_) => "tencent",
        }
    }

    /// Refuses a target table `targets.NAME` that cannot be used.
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if !valid_target_name(name) {
            return Err(err(format!(
                "target name {name:?} may only use letters, digits, '-' and '_'"
            )));
        }
        let rate = self.rate_per_sec();
        if !rate.is_finite() || rate <= 0.0 {
            return Err(err(format!("targets.{name}.rate_per_sec must be above 0")));
        }
        match self {
            TargetConfig::Zim(z) => {
                zim_base_url(z).map_err(|e| err(format!("targets.{name}: {e}")))?;
                if !(1..=3).contains(&z.priority) {
                    return Err(err(format!(
                        "targets.{name}.priority must be 1 (low), 2 (mid) or 3 (high)"
                    )));
                }
                if z.retention_days == 0 {
                    return Err(err(format!("targets.{name}.retention_days must be at least 1")));
                }
            }
            TargetConfig::Tencent(t) => {
                tencent_base_url(t).map_err(|e| err(format!("targets.{name}: {e}")))?;
                if t.admin_identifier.is_empty() {
                    return Err(err(format!("targets.{name}.admin_identifier is empty")));
                }
                if t.usersig_ttl_secs < 600 {
                    return Err(err(format!(
                        "targets.{name}.usersig_ttl_secs must be at least 600"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// ZEGO ZIM `ImportPeerMsg` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZimTarget {
    /// Base URL; wins over `region`.
    pub endpoint: Option<String>,
    /// `unified`, `shanghai`, `hongkong`, `frankfurt`, `los-angeles`, `mumbai`, `singapore`.
    pub region: Option<String>,
    pub app_id: u32,
    pub server_secret: Option<SecretString>,
    pub server_secret_file: Option<PathBuf>,
    #[serde(default = "zim_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "zim_rate")]
    pub query_rate_per_sec: f64,
    #[serde(default = "zim_rate")]
    pub register_rate_per_sec: f64,
    /// The plan's history window; older messages are rejected at load.
    #[serde(default = "zim_retention")]
    pub retention_days: u32,
    /// `MessageBody.Message` limit in bytes (2 KB unless raised on request).
    #[serde(default = "zim_max_message")]
    pub max_message_bytes: usize,
    /// `MessageBody.Message` limit for multi-item messages.
    #[serde(default = "zim_max_multi")]
    pub max_multi_message_bytes: usize,
    #[serde(default = "zim_max_ext")]
    pub max_extended_bytes: usize,
    /// Default `Priority` (1 low, 2 mid, 3 high).
    #[serde(default = "zim_priority")]
    pub priority: u8,
    /// Register users through `UserRegister` when the provider says they are missing.
    #[serde(default)]
    pub ensure_users: bool,
}

fn zim_rate() -> f64 {
    20.0
}
fn zim_retention() -> u32 {
    7
}
fn zim_max_message() -> usize {
    2048
}
fn zim_max_multi() -> usize {
    5120
}
fn zim_max_ext() -> usize {
    1024
}
fn zim_priority() -> u8 {
    1
}

/// How Tencent shows imported messages (`SyncFromOldSystem`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// 2: history, read, no push.
    #[default]
    History,
    /// 5: live import during a cut-over, unread, pushed.
    Live,
}

impl SyncMode {
    /// The wire value of `SyncFromOldSystem`.
    pub fn wire(self) -> u8 {
        match self {
            SyncMode::History => 2,
            SyncMode::Live => 5,
        }
    }
}

/// Tencent Cloud IM `v4/openim/importmsg` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TencentTarget {
    pub endpoint: Option<String>,
    /// `china`, `singapore`, `seoul`, `tokyo`, `frankfurt`, `india`, `silicon-valley`, `jakarta`.
    pub region: Option<String>,
    pub sdk_app_id: u32,
    pub admin_identifier: String,
    pub secret_key: Option<SecretString>,
    pub secret_key_file: Option<PathBuf>,
    #[serde(default = "tim_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "tim_rate")]
    pub query_rate_per_sec: f64,
    #[serde(default = "tim_account_rate")]
    pub account_rate_per_sec: f64,
    #[serde(default)]
    pub sync_mode: SyncMode,
    /// UserSig lifetime; it is renewed when a quarter of it is left.
    #[serde(default = "tim_sig_ttl")]
    pub usersig_ttl_secs: u64,
    /// Whole-message limit in bytes.
    #[serde(default = "tim_max_message")]
    pub max_message_bytes: usize,
    /// Import missing accounts and retry when the provider says they are missing.
    #[serde(default)]
    pub ensure_accounts: bool,
    /// Days of history `admin_getroammsg` can read back (the app's roaming period).
    #[serde(default = "tim_roaming_days")]
    pub roaming_days: u32,
}

fn tim_roaming_days() -> u32 {
    7
}

fn tim_rate() -> f64 {
    200.0
}
fn tim_account_rate() -> f64 {
    100.0
}
fn tim_sig_ttl() -> u64 {
    86_400
}
fn tim_max_message() -> usize {
    12 * 1024
}

/// Where the config file came from, for messages.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: Option<PathBuf>,
}

impl Config {
    /// Finds and reads the configuration as the contract orders it:
    /// `--config`, `$CHATFERRY_CONFIG`, `./daemon.toml`, `/etc/chatferry/daemon.toml`.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let path = match explicit {
            Some(p) => {
                if !p.exists() {
                    return Err(err(format!(
                        "config file {} does not exist; pass an existing file to --config",
                        p.display()
                    )));
                }
                Some(p.to_path_buf())
            }
            None => match std::env::var_os("CHATFERRY_CONFIG") {
                Some(p) if !p.is_empty() => {
                    let p = PathBuf::from(p);
                    if !p.exists() {
                        return Err(err(format!(
                            "CHATFERRY_CONFIG points at {}, which does not exist",
                            p.display()
                        )));
                    }
                    Some(p)
                }
                _ => ["daemon.toml", "/etc/chatferry/daemon.toml"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists()),
            },
        };
        let mut b = config::Config::builder();
        if let Some(p) = &path {
            b = b.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("CHATFERRY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let raw = b.build().map_err(|e| {
            err(format!(
                "cannot read configuration{}: {}",
                path.as_ref()
                    .map(|p| format!(" from {}", p.display()))
                    .unwrap_or_default(),
                without_quoted_source(&e.to_string())
            ))
        })?;
        let mut config = deserialize(raw, path.as_deref())?;
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                config.database.url = Some(SecretString::new(url));
            }
        }
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(Loaded { config, path })
    }

    /// Parses a TOML string (tests and the simulator's embedded defaults).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| err(format!("invalid configuration: {e}")))?;
        let mut config = deserialize(raw, None)?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads every `*_file` credential into its key, then checks that each
    /// credential that must be set is set and not empty.
    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file(&mut self.http.token, &self.http.token_file, "http.token")?;
        if matches!(&self.http.token, Some(t) if t.expose_secret().is_empty()) {
            return Err(err("http.token is empty; set a token or remove the key"));
        }
        read_secret_file(&mut self.ingest.token, &self.ingest.token_file, "ingest.token")?;
        if self.ingest.enabled && !matches!(&self.ingest.token, Some(t) if !t.expose_secret().is_empty()) {
            return Err(err(
                "ingest.enabled needs a token: set ingest.token or ingest.token_file (callers send it as a Bearer token)",
            ));
        }
        for (name, t) in self.targets.iter_mut() {
            let (value, file, key) = match t {
                TargetConfig::Zim(z) => (&mut z.server_secret, &z.server_secret_file, "server_secret"),
                TargetConfig::Tencent(t) => (&mut t.secret_key, &t.secret_key_file, "secret_key"),
            };
            read_secret_file(value, file, &format!("targets.{name}.{key}"))?;
            match value {
                Some(v) if !v.expose_secret().is_empty() => {}
                _ => {
                    return Err(err(format!(
                        "targets.{name} has no {key}; set {key} or {key}_file"
                    )))
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.worker.validate()?;
        if self.ingest.enabled && self.http.listen.is_none() {
            return Err(err(
                "ingest.enabled needs http.listen: the ingest API is served there",
            ));
        }
        if self.ingest.max_body_bytes < 1024 {
            return Err(err("ingest.max_body_bytes must be at least 1024"));
        }
        for (name, t) in &self.targets {
            t.validate(name)?;
        }
        Ok(())
    }

    /// The database URL, or a configuration error saying how to set it.
    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        self.database
            .url
            .as_ref()
            .ok_or_else(|| err("no database configured: set database.url in daemon.toml or DATABASE_URL"))
    }

    /// Looks a target up by name.
    pub fn target(&self, name: &str) -> Result<&TargetConfig, ConfigError> {
        self.targets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            err(format!(
                "unknown target {name:?}; configured targets: {}",
                if known.is_empty() {
                    "none (add a [targets.NAME] table)".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

/// Deserializes the layered configuration; an unknown key (a typo in
/// daemon.toml or in a `CHATFERRY__` variable) is an error that names it,
/// where it came from and the known keys nearest to it, instead of being
/// ignored while the default quietly applies.
fn deserialize(raw: config::Config, file: Option<&Path>) -> Result<Config, ConfigError> {
    let place = file.map(|p| format!(" in {}", p.display())).unwrap_or_default();
    serde_path_to_error::deserialize::<_, Config>(raw).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner().to_string();
        match unknown_key(&at, &inner, file) {
            Some(msg) => err(msg),
            None => err(format!(
                "invalid configuration{place}: {}{inner}; see daemon.example.toml for every key",
                if at == "." {
                    String::new()
                } else {
                    format!("{at}: ")
                }
            )),
        }
    })
}

/// The message for serde's "unknown field `x`, expected one of `a`, `b`".
fn unknown_key(at: &str, inner: &str, file: Option<&Path>) -> Option<String> {
    let rest = inner.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    // The path ends at the field itself, except inside a tagged target table.
    let key = if at == "." || at == field {
        field.to_string()
    } else if at.ends_with(&format!(".{field}")) {
        at.to_string()
    } else {
        format!("{at}.{field}")
    };
    let env = format!("CHATFERRY__{}", key.replace('.', "__").to_uppercase());
    let from = if std::env::var_os(&env).is_some() {
        format!("environment variable {env}")
    } else {
        file.map(|p| p.display().to_string())
            .unwrap_or_else(|| "the configuration".into())
    };
    let mut near: Vec<(usize, &str)> = known
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .filter(|(d, _)| *d <= (field.len() / 3).max(2))
        .collect();
    near.sort();
    let hint = match near.first() {
        Some((_, k)) => format!("did you mean `{k}`? "),
        None => String::new(),
    };
    Some(format!(
        "unknown key `{key}` in {from}: {hint}known keys there: {}; see daemon.example.toml",
        known.join(", ")
    ))
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads a credential from its `KEY_file` (if set) into `value`, without
/// the file's trailing newline; `key` names it in the error.
fn read_secret_file(
    value: &mut Option<SecretString>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<(), ConfigError> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| err(format!("{key}_file: cannot read {}: {e}", f.display())))?;
        *value = Some(SecretString::new(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(())
}

fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn normalize_base(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("endpoint {url:?} is not a URL: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("endpoint {url:?} must start with http:// or https://"));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

/// The ZIM base URL from `endpoint` or `region`.
pub fn zim_base_url(z: &ZimTarget) -> Result<String, String> {
    if let Some(e) = &z.endpoint {
        return normalize_base(e);
    }
    let host = match z.region.as_deref().unwrap_or("unified") {
        "unified" => "zim-api",
        "shanghai" => "zim-api-sha",
        "hongkong" => "zim-api-hkg",
        "frankfurt" => "zim-api-fra",
        "los-angeles" => "zim-api-lax",
        "mumbai" => "zim-api-bom",
        "singapore" => "zim-api-sgp",
        other => {
            return Err(format!(
                "unknown ZIM region {other:?}; use unified, shanghai, hongkong, frankfurt, \
                 los-angeles, mumbai or singapore, or set endpoint"
            ))
        }
    };
    Ok(format!("https://{host}.zego.im/"))
}

/// The Tencent base URL from `endpoint` or `region`.
pub fn tencent_base_url(t: &TencentTarget) -> Result<String, String> {
    if let Some(e) = &t.endpoint {
        return normalize_base(e);
    }
    let host = match t.region.as_deref().unwrap_or("china") {
        "china" => "console.tim.qq.com",
        "singapore" => "adminapisgp.im.qcloud.com",
        "seoul" => "adminapikr.im.qcloud.com",
        "tokyo" => "adminapijpn.im.qcloud.com",
        "frankfurt" => "adminapiger.im.qcloud.com",
        "india" => "adminapiind.im.qcloud.com",
        "silicon-valley" => "adminapiusa.im.qcloud.com",
        "jakarta" => "adminapiidn.im.qcloud.com",
        other => {
            return Err(format!(
                "unknown Tencent region {other:?}; use china, singapore, seoul, tokyo, \
                 frankfurt, india, silicon-valley or jakarta, or set endpoint"
            ))
        }
    };
    Ok(format!("https://{host}/"))
}

/// A parse error without the source lines it quotes (`3 | url = "…"`):
/// the quoted line may hold a secret. Where (line, column) and what stay.
fn without_quoted_source(message: &str) -> String {
    let quoted = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    message
        .lines()
        .filter(|l| !l.trim().is_empty() && !quoted(l))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[database]
url = "postgres://u:hunter2@localhost/db"
[targets.zim]
kind = "zim"
endpoint = "http://127.0.0.1:9/"
app_id = 12345
server_secret = "s3cret"
[targets.tim]
kind = "tencent"
region = "singapore"
sdk_app_id = 1400000000
admin_identifier = "administrator"
secret_key = "k3y"
sync_mode = "live"
"#;

    #[test]
    fn parses_both_kinds_with_defaults() {
        let c = Config::from_toml(SAMPLE).unwrap();
        match c.target("zim").unwrap() {
            TargetConfig::Zim(z) => {
                assert_eq!(z.rate_per_sec, 20.0);
                assert_eq!(zim_base_url(z).unwrap(), "http://127.0.0.1:9/");
            }
            _ => panic!("wrong kind"),
        }
        match c.target("tim").unwrap() {
            TargetConfig::Tencent(t) => {
                assert_eq!(t.sync_mode.wire(), 5);
                assert_eq!(tencent_base_url(t).unwrap(), "https://adminapisgp.im.qcloud.com/");
            }
            _ => panic!("wrong kind"),
        }
        assert!(c.target("nope").unwrap_err().0.contains("zim"));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_toml(SAMPLE).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("hunter2"));
        assert!(!dump.contains("s3cret"));
        assert!(!dump.contains("k3y\""));
    }

    #[test]
    fn the_ingest_api_needs_a_token_and_a_listener_and_never_prints_it() {
        let e =
            Config::from_toml("[http]\nlisten = \"127.0.0.1:0\"\n[ingest]\nenabled = true\n").unwrap_err();
        assert!(e.0.contains("ingest.token"), "{e}");
        let e = Config::from_toml("[ingest]\nenabled = true\ntoken = \"t\"\n").unwrap_err();
        assert!(e.0.contains("http.listen"), "{e}");
        let c = Config::from_toml(
            "[http]\nlisten = \"127.0.0.1:0\"\n[ingest]\nenabled = true\ntoken = \"ingest-s3cret\"\n",
        )
        .unwrap();
        assert_eq!(c.ingest.max_body_bytes, 4 * 1024 * 1024);
        assert!(!format!("{c:?}").contains("ingest-s3cret"));
    }

    #[test]
    fn a_grace_shorter_than_a_call_is_refused() {
        let e = Config::from_toml("[worker]\nrequest_timeout_ms = 10000\nshutdown_grace_secs = 10\n")
            .unwrap_err();
        assert!(
            e.0.contains("worker.shutdown_grace_secs (10 s) must exceed"),
            "{e}"
        );
        assert!(
            Config::from_toml("[worker]\nrequest_timeout_ms = 10000\nshutdown_grace_secs = 11\n").is_ok()
        );
    }

    #[test]
    fn a_misspelt_key_is_named_with_the_nearest_known_ones() {
        let e = Config::from_toml(&format!("{SAMPLE}rate_per_sek = 5\n")).unwrap_err();
        assert!(e.0.contains("unknown key `targets.tim.rate_per_sek`"), "{e}");
        assert!(e.0.contains("did you mean `rate_per_sec`?"), "{e}");
        let e = Config::from_toml("[worker]\nconcurency = 5\n").unwrap_err();
        assert!(
            e.0.contains("`worker.concurency`") && e.0.contains("`concurrency`?"),
            "{e}"
        );
        let e = Config::from_toml("[wokrer]\nconcurrency = 5\n").unwrap_err();
        assert!(
            e.0.contains("unknown key `wokrer`") && e.0.contains("`worker`?"),
            "{e}"
        );
        let e = Config::from_toml("[http]\nlisten = \"x\"\nzzzzzzzz = 1\n").unwrap_err();
        assert!(!e.0.contains("did you mean"), "nothing near: {e}");
        assert!(e.0.contains("listen, token, token_file"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn missing_secret_names_the_key() {
        let e =
            Config::from_toml("[targets.z]\nkind=\"zim\"\napp_id=1\nendpoint=\"http://x/\"\n").unwrap_err();
        assert!(e.0.contains("targets.z has no server_secret"), "{e}");
    }

    /// A TOML syntax error quotes the offending line; that line may hold a
    /// secret, so the message keeps only where and what.
    #[test]
    fn a_syntax_error_does_not_quote_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.toml");
        std::fs::write(&path, "[database]\nurl = \"postgres://u:p\\qSECRET@db/x\"\n").unwrap();
        let Err(ConfigError(e)) = Config::load(Some(&path)) else {
            panic!("a syntax error loads");
        };
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }
}
