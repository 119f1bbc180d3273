//! Fault injection, seeded and per provider.
//!
//! Every provider call (never a `/_sim/*` call) goes through `Faults::plan`:
//!
//! 1. **Outage**: while `down` is true, or while the time since the
//!    simulator started falls in one of `outages` (`[start_s, end_s)`), the
//!    call is not applied and gets HTTP 503 with an HTML body
//!    (`outage_mode = "http503"`) or a TCP reset (`"reset"`). Outages cover
//!    the whole provider, whatever `apis` says.
//! 2. **Latency**: `latency_ms` plus a uniform jitter in
//!    `[0, latency_jitter_ms)` is slept before the call is handled. With
//!    `latency_sd_ms` the latency is instead normally distributed, mean
//!    `latency_ms` and standard deviation `latency_sd_ms` (cut at 0), and
//!    split as a network splits it: half on the way in (before the call
//!    arrives and is counted against the rate limit) and half on the way
//!    back (after it is handled). A client sees only the whole answer
//!    time, so it cannot know the split; the way-in half is what makes
//!    arrivals jitter against a sliding rate window.
//! 3. **One mode** is drawn from a single uniform number, the rates taking
//!    consecutive slices of `[0, 1)` in this order (so each rate is exact and
//!    their sum must be at most 1):
//!    - `reset_rate`: the connection is reset, nothing applied;
//!    - `http_5xx_rate`: an HTML 5xx from `http_5xx_statuses`, nothing applied;
//!    - `transient_rate`: the provider's own error answer with a code from
//!      `transient_codes` (empty: every documented transient code), nothing
//!      applied;
//!    - `apply_then_drop_rate`: the call is handled (and applied when valid),
//!      then the connection is reset without an answer;
//!    - `slow_rate`: the call is handled, then the answer waits `slow_ms`;
//!    - `late_rate`: the call waits `late_ms` *before* it is handled (and
//!      applied when valid), so it lands after a client that gave up: a
//!      slow backend behind a proxy that already answered 504 does this;
//!    - `apply_then_error_rate`: the call is handled (and applied when
//!      valid), then the answer is a server-side error code from
//!      `apply_then_error_codes` (empty: the same codes as
//!      `transient_codes`, [`ZIM_TRANSIENT_CODES`] and
//!      [`TENCENT_TRANSIENT_CODES`]).
//!      ZEGO's return-code page lists these as server failures without
//!      saying whether the write happened, so a client must reconcile.
//! 4. **Live users** (ZIM only, `ImportPeerMsg`): `live_per_view` messages
//!    are already in a view when chatferry first writes to it, and after
//!    each import one more arrives with chance `live_rate`: the usual
//!    cut-over, where users chat on ZIM during the backfill. They carry the
//!    server's receive time and never count as duplicates or inversions.
//! 5. **`msg_time`** (ZIM only): `"receive"` (default) reports the server's
//!    receive time as QueryPeerMsg's `MsgTime`, as ZEGO's page
//!    `conversation/query-the-message-list-of-one-on-one-chats.md`
//!    documents it; `"echo"` reports the imported `SendMessageTime`
//!    instead, which the documents neither promise nor rule out.
//!
//! `apis`, when not empty, limits latency and the modes to those APIs
//! (`ImportPeerMsg`, `QueryPeerMsg`, `UserRegister`, `importmsg`,
//! `admin_getroammsg`, `account_import`, `multiaccount_import`).
//!
//! Each provider draws from its own `StdRng` seeded from `seed`, so a run
//! whose calls arrive in the same order sees the same faults.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The codes a `transient` fault answers on ZIM: general server-side
/// errors (ZEGO: zim-server/return-codes.md). The fault applies nothing,
/// which is one thing such an answer can mean; the client must still
/// treat them as in doubt, since the real service may have written.
pub const ZIM_TRANSIENT_CODES: &[i64] = crate::providers::zim::codes::SIMULATED_SERVER_ERRORS;
/// The codes a `transient` fault answers on Tencent: its documented
/// transient class (REST API 公共错误码), safe to resend since it dedups.
pub const TENCENT_TRANSIENT_CODES: &[i64] = crate::providers::tencent::codes::TRANSIENT;
/// The statuses an `http_5xx` fault answers when none are configured.
const DEFAULT_5XX_STATUSES: &[u16] = &[500, 502, 503, 504];

/// What an outage looks like to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// HTTP 503 with an HTML body.
    #[default]
    Http503,
    /// The connection is reset without an answer.
    Reset,
}

/// The faults of one provider (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderFaults {
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Normal jitter's standard deviation (see the module doc, 2).
    pub latency_sd_ms: f64,
    pub transient_rate: f64,
    pub transient_codes: Vec<i64>,
    pub http_5xx_rate: f64,
    pub http_5xx_statuses: Vec<u16>,
    pub reset_rate: f64,
    pub apply_then_drop_rate: f64,
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// `[start_s, end_s)` offsets from the simulator's start.
    pub outages: Vec<[f64; 2]>,
    /// A manual outage, e.g. flipped through `POST /_sim/faults`.
    pub down: bool,
    pub outage_mode: OutageMode,
    pub apis: Vec<String>,
    pub late_rate: f64,
    pub late_ms: u64,
    pub apply_then_error_rate: f64,
    pub apply_then_error_codes: Vec<i64>,
    pub live_per_view: u32,
    pub live_rate: f64,
    pub msg_time: MsgTime,
}

/// What QueryPeerMsg reports as `MsgTime` (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MsgTime {
    /// The server's receive time (as documented).
    #[default]
    Receive,
    /// The imported `SendMessageTime`.
    Echo,
}

impl Default for ProviderFaults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            latency_sd_ms: 0.0,
            transient_rate: 0.0,
            transient_codes: Vec::new(),
            http_5xx_rate: 0.0,
            http_5xx_statuses: Vec::new(),
            reset_rate: 0.0,
            apply_then_drop_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 15_000,
            outages: Vec::new(),
            down: false,
            outage_mode: OutageMode::Http503,
            apis: Vec::new(),
            late_rate: 0.0,
            late_ms: 3_000,
            apply_then_error_rate: 0.0,
            apply_then_error_codes: Vec::new(),
            live_per_view: 0,
            live_rate: 0.0,
            msg_time: MsgTime::Receive,
        }
    }
}

impl ProviderFaults {
    fn is_active(&self) -> bool {
        self.latency_ms > 0
            || self.latency_jitter_ms > 0
            || self.latency_sd_ms > 0.0
            || self.mode_rate_sum() > 0.0
            || !self.outages.is_empty()
            || self.down
            || self.live_rate > 0.0
    }

    /// The rates of the modes, in the order they slice `[0, 1)` (see the
    /// module doc, 3).
    fn mode_rates(&self) -> [f64; 7] {
        [
            self.reset_rate,
            self.http_5xx_rate,
            self.transient_rate,
            self.apply_then_drop_rate,
            self.slow_rate,
            self.late_rate,
            self.apply_then_error_rate,
        ]
    }

    fn mode_rate_sum(&self) -> f64 {
        self.mode_rates().iter().sum()
    }

    /// Whether an outage covers `offset_s` seconds after the start.
    fn down_at(&self, offset_s: f64) -> bool {
        self.down || self.outages.iter().any(|[a, b]| offset_s >= *a && offset_s < *b)
    }

    /// Whether latency and the modes apply to `api` (`apis`).
    fn covers(&self, api: &str) -> bool {
        self.apis.is_empty() || self.apis.iter().any(|a| a.eq_ignore_ascii_case(api))
    }

    /// The codes a `transient` or `apply_then_error` fault picks from when
    /// none are configured.
    fn default_codes(side: Side) -> &'static [i64] {
        match side {
            Side::Zim => ZIM_TRANSIENT_CODES,
            Side::Tencent => TENCENT_TRANSIENT_CODES,
        }
    }

    fn validate(&self, side: &str) -> anyhow::Result<()> {
        for (name, r) in [
            ("reset_rate", self.reset_rate),
            ("http_5xx_rate", self.http_5xx_rate),
            ("transient_rate", self.transient_rate),
            ("apply_then_drop_rate", self.apply_then_drop_rate),
            ("slow_rate", self.slow_rate),
            ("late_rate", self.late_rate),
            ("apply_then_error_rate", self.apply_then_error_rate),
            ("live_rate", self.live_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                bail!("faults: {side}.{name} is {r}; a rate is between 0 and 1");
            }
        }
        if self.mode_rate_sum() > 1.0 + 1e-9 {
            bail!(
                "faults: the {side} rates (reset, http_5xx, transient, apply_then_drop, slow, late, \
                 apply_then_error) add up to more than 1"
            );
        }
        if !(self.latency_sd_ms.is_finite() && self.latency_sd_ms >= 0.0) {
            bail!(
                "faults: {side}.latency_sd_ms is {}; a standard deviation is a finite number >= 0",
                self.latency_sd_ms
            );
        }
        if let Some(s) = self.http_5xx_statuses.iter().find(|s| !(500..=599).contains(*s)) {
            bail!("faults: {side}.http_5xx_statuses has {s}, which is not a 5xx status");
        }
        for [a, b] in &self.outages {
            if !(a.is_finite() && b.is_finite() && *a >= 0.0 && a < b) {
                bail!(
                    "faults: {side}.outages has [{a}, {b}]; each is [start_s, end_s) with 0 <= start < end"
                );
            }
        }
        Ok(())
    }
}

/// Every fault setting, per provider, and the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    pub seed: u64,
    pub zim: ProviderFaults,
    pub tencent: ProviderFaults,
}

impl FaultConfig {
    /// Checks rates, statuses and windows.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.zim.validate("zim")?;
        self.tencent.validate("tencent")
    }

    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.zim.is_active() || self.tencent.is_active()
    }

    /// Reads a fault table from a JSON value. The table may also sit under
    /// `simulate.faults`, `simulate` or `faults` (so a `[simulate.faults]`
    /// table of a daemon.toml works too).
    pub fn from_value(v: Value) -> anyhow::Result<Self> {
        let mut v = v;
        for key in ["simulate", "faults"] {
            if let Some(inner) = v.get(key) {
                if inner.is_object() {
                    v = inner.clone();
                }
            }
        }
        let cfg: FaultConfig = serde_json::from_value(v).context("invalid fault configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a JSON fault table.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text).context("fault configuration is not valid JSON")?;
        Self::from_value(v)
    }

    /// Parses a TOML fault table.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let v: Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .context("fault configuration is not valid TOML")?;
        Self::from_value(v)
    }

    /// `--faults FILE|JSON`: inline JSON when it starts with `{`, else a
    /// file, read as TOML when it ends in `.toml` and as JSON otherwise.
    pub fn load(arg: &str) -> anyhow::Result<Self> {
        let trimmed = arg.trim_start();
        if trimmed.starts_with('{') {
            return Self::from_json(trimmed);
        }
        let path = Path::new(arg);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fault file {}", path.display()))?;
        let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        if is_toml {
            Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
        } else {
            Self::from_json(&text).with_context(|| format!("in {}", path.display()))
        }
    }

    /// Applies one `KEY=VALUE` flag: `seed=7`, `zim.reset_rate=0.1`,
    /// `tencent.outages=[[5,10]]`, or a bare key (`slow_rate=0.01`) for both
    /// providers. The value is read as JSON, else as a string.
    pub fn apply_flag(&mut self, flag: &str) -> anyhow::Result<()> {
        let Some((key, raw)) = flag.split_once('=') else {
            bail!("fault flag {flag:?} is not KEY=VALUE (e.g. zim.reset_rate=0.1)");
        };
        let value: Value =
            serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.trim().to_string()));
        let key = key.trim();
        let patch = match key.split_once('.') {
            _ if key == "seed" => serde_json::json!({ "seed": value }),
            Some((side @ ("zim" | "tencent"), field)) => {
                serde_json::json!({ side: { field: value } })
            }
            Some(_) => bail!("fault flag key {key:?} must start with zim. or tencent., or be bare"),
            None => serde_json::json!({ "zim": { key: value.clone() }, "tencent": { key: value } }),
        };
        self.merge_patch(&patch)
            .with_context(|| format!("fault flag {flag:?}"))
    }

    /// Applies a JSON merge patch (RFC 7386): objects merge, other values
    /// replace, `null` restores the default.
    pub fn merge_patch(&mut self, patch: &Value) -> anyhow::Result<()> {
        let mut current = serde_json::to_value(&*self).expect("fault config serializes");
        merge(&mut current, patch);
        let next: FaultConfig = serde_json::from_value(current).context("invalid fault configuration")?;
        next.validate()?;
        *self = next;
        Ok(())
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Which provider a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Zim = 0,
    Tencent = 1,
}

/// The fault kinds counted in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Latency,
    Transient,
    Http5xx,
    Reset,
    ApplyThenDrop,
    Slow,
    Outage,
    Late,
    ApplyThenError,
    Live,
}

impl FaultKind {
    /// Every kind, in the stats' order.
    pub(crate) const ALL: [FaultKind; 10] = [
        FaultKind::Latency,
        FaultKind::Transient,
        FaultKind::Http5xx,
        FaultKind::Reset,
        FaultKind::ApplyThenDrop,
        FaultKind::Slow,
        FaultKind::Outage,
        FaultKind::Late,
        FaultKind::ApplyThenError,
        FaultKind::Live,
    ];

    /// The name in the stats.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Transient => "transient",
            FaultKind::Http5xx => "http_5xx",
            FaultKind::Reset => "reset",
            FaultKind::ApplyThenDrop => "apply_then_drop",
            FaultKind::Slow => "slow",
            FaultKind::Outage => "outage",
            FaultKind::Late => "late",
            FaultKind::ApplyThenError => "apply_then_error",
            FaultKind::Live => "live",
        }
    }
}

/// What to do to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Outage(OutageMode),
    Reset,
    Http5xx(StatusCode),
    Transient(i64),
    ApplyThenDrop,
    Slow(Duration),
    Late(Duration),
    ApplyThenError(i64),
}

/// The faults drawn for one call; the default is no fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// Slept before the call is handled (and counted).
    pub latency: Duration,
    /// Slept after the call is handled, before the answer leaves.
    pub latency_after: Duration,
    pub action: Option<Action>,
    /// A live user's message arrives in the view after this call (ZIM).
    pub live: bool,
}

/// How the simulated ZIM presents views (see the module doc, 4 and 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ViewSettings {
    pub live_per_view: u32,
    pub msg_time: MsgTime,
}

struct Inner {
    cfg: FaultConfig,
    rngs: [StdRng; 2],
}

fn rngs(seed: u64) -> [StdRng; 2] {
    [
        StdRng::seed_from_u64(seed),
        StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
    ]
}

/// The live fault settings and their random streams.
pub(crate) struct Faults {
    inner: Mutex<Inner>,
    /// Per side: whether anything is configured (the fast path skips the lock).
    active: [AtomicBool; 2],
    start_ns: i64,
}

impl Faults {
    /// Checked settings; outage windows count from `start_ns`.
    pub(crate) fn new(cfg: FaultConfig, start_ns: i64) -> anyhow::Result<Self> {
        cfg.validate()?;
        let f = Faults {
            active: [
                AtomicBool::new(cfg.zim.is_active()),
                AtomicBool::new(cfg.tencent.is_active()),
            ],
            inner: Mutex::new(Inner {
                rngs: rngs(cfg.seed),
                cfg,
            }),
            start_ns,
        };
        Ok(f)
    }

    /// The settings now.
    pub(crate) fn config(&self) -> FaultConfig {
        self.inner.lock().cfg.clone()
    }

    /// Replaces the settings; the random streams restart only when the seed
    /// changes.
    pub(crate) fn replace(&self, cfg: FaultConfig) -> anyhow::Result<()> {
        cfg.validate()?;
        let mut inner = self.inner.lock();
        if cfg.seed != inner.cfg.seed {
            inner.rngs = rngs(cfg.seed);
        }
        self.active[Side::Zim as usize].store(cfg.zim.is_active(), Ordering::SeqCst);
        self.active[Side::Tencent as usize].store(cfg.tencent.is_active(), Ordering::SeqCst);
        inner.cfg = cfg;
        Ok(())
    }

    /// Draws the faults of one call; `None` when the provider has none.
    pub(crate) fn plan(&self, side: Side, api: &str, now_ns: i64) -> Option<Plan> {
        if !self.active[side as usize].load(Ordering::Relaxed) {
            return None;
        }
        let mut guard = self.inner.lock();
        let Inner { cfg, rngs } = &mut *guard;
        let pf = match side {
            Side::Zim => &cfg.zim,
            Side::Tencent => &cfg.tencent,
        };
        let offset_s = now_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        if pf.down_at(offset_s) {
            return Some(Plan {
                action: Some(Action::Outage(pf.outage_mode)),
                ..Plan::default()
            });
        }
        if !pf.covers(api) {
            return None;
        }
        let rng = &mut rngs[side as usize];
        let (latency, latency_after) = draw_latency(pf, rng);
        let action = draw_action(pf, side, rng);
        let live = pf.live_rate > 0.0 && rng.gen::<f64>() < pf.live_rate;
        Some(Plan {
            latency,
            latency_after,
            action,
            live,
        })
    }

    /// How the simulated ZIM presents its views now.
    pub(crate) fn view_settings(&self) -> ViewSettings {
        let inner = self.inner.lock();
        ViewSettings {
            live_per_view: inner.cfg.zim.live_per_view,
            msg_time: inner.cfg.zim.msg_time,
        }
    }
}

/// One mode, drawn from a single uniform number (see the module doc, 3).
fn draw_action(pf: &ProviderFaults, side: Side, rng: &mut StdRng) -> Option<Action> {
    let u: f64 = rng.gen();
    let mut edge = 0.0;
    let slot = pf.mode_rates().iter().position(|r| {
        edge += r;
        u < edge
    })?;
    let action = match slot {
        0 => Action::Reset,
        1 => {
            let status = pick(rng, &pf.http_5xx_statuses, DEFAULT_5XX_STATUSES);
            Action::Http5xx(StatusCode::from_u16(status).expect("http_5xx_statuses are validated as 5xx"))
        }
        2 => Action::Transient(pick(
            rng,
            &pf.transient_codes,
            ProviderFaults::default_codes(side),
        )),
        3 => Action::ApplyThenDrop,
        4 => Action::Slow(Duration::from_millis(pf.slow_ms)),
        5 => Action::Late(Duration::from_millis(pf.late_ms)),
        _ => Action::ApplyThenError(pick(
            rng,
            &pf.apply_then_error_codes,
            ProviderFaults::default_codes(side),
        )),
    };
    Some(action)
}

/// One of `configured`, or of `default` when none is configured.
fn pick<T: Copy>(rng: &mut StdRng, configured: &[T], default: &[T]) -> T {
    let from = if configured.is_empty() {
        default
    } else {
        configured
    };
    from[rng.gen_range(0..from.len())]
}

/// One call's latency: (before handling, after handling). See the module
/// doc, 2.
fn draw_latency(pf: &ProviderFaults, rng: &mut StdRng) -> (Duration, Duration) {
    if pf.latency_sd_ms > 0.0 {
        // Box-Muller: one standard normal from two uniforms.
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let total = (pf.latency_ms as f64 + pf.latency_sd_ms * z).max(0.0) / 1e3;
        let half = Duration::from_secs_f64(total / 2.0);
        return (half, half);
    }
    let jitter = if pf.latency_jitter_ms > 0 {
        rng.gen_range(0..pf.latency_jitter_ms)
    } else {
        0
    };
    (Duration::from_millis(pf.latency_ms + jitter), Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_latency_has_its_mean_and_spread_and_is_split_in_and_out() {
        let mut cfg = FaultConfig::default();
        cfg.apply_flag("zim.latency_ms=50").unwrap();
        cfg.apply_flag("zim.latency_sd_ms=12.5").unwrap();
        let f = Faults::new(cfg, 0).unwrap();
        let totals: Vec<f64> = (0..20_000)
            .map(|_| {
                let p = f.plan(Side::Zim, "ImportPeerMsg", 0).unwrap();
                assert_eq!(p.latency, p.latency_after);
                (p.latency + p.latency_after).as_secs_f64() * 1e3
            })
            .collect();
        let mean = totals.iter().sum::<f64>() / totals.len() as f64;
        let sd = (totals.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / totals.len() as f64).sqrt();
        assert!((mean - 50.0).abs() < 0.5, "{mean}");
        assert!((sd - 12.5).abs() < 0.5, "{sd}");
        let mut bad = FaultConfig::default();
        let e = bad.apply_flag("tencent.latency_sd_ms=-1").unwrap_err();
        assert!(format!("{e:#}").contains("tencent.latency_sd_ms"), "{e:#}");
    }

    #[test]
    fn default_is_inactive_and_plans_nothing() {
        let f = Faults::new(FaultConfig::default(), 0).unwrap();
        assert!(f.plan(Side::Zim, "ImportPeerMsg", 0).is_none());
        assert!(!FaultConfig::default().is_active());
    }

    #[test]
    fn same_seed_same_faults() {
        let mut cfg = FaultConfig {
            seed: 42,
            ..Default::default()
        };
        cfg.apply_flag("reset_rate=0.2").unwrap();
        cfg.apply_flag("zim.transient_rate=0.3").unwrap();
        cfg.apply_flag("latency_jitter_ms=7").unwrap();
        let draw = |cfg: &FaultConfig| {
            let f = Faults::new(cfg.clone(), 0).unwrap();
            (0..200)
                .map(|_| f.plan(Side::Zim, "ImportPeerMsg", 0).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        let resets = a.iter().filter(|p| p.action == Some(Action::Reset)).count();
        let transients = a
            .iter()
            .filter(|p| matches!(p.action, Some(Action::Transient(_))))
            .count();
        assert!((20..=60).contains(&resets), "{resets}");
        assert!((35..=85).contains(&transients), "{transients}");
        cfg.seed = 43;
        assert_ne!(a, draw(&cfg));
    }

    #[test]
    fn rate_one_always_fires_and_apis_filter() {
        let cfg =
            FaultConfig::from_json(r#"{"tencent": {"slow_rate": 1, "slow_ms": 5, "apis": ["importmsg"]}}"#)
                .unwrap();
        let f = Faults::new(cfg, 0).unwrap();
        let p = f.plan(Side::Tencent, "importmsg", 0).unwrap();
        assert_eq!(p.action, Some(Action::Slow(Duration::from_millis(5))));
        assert!(f.plan(Side::Tencent, "admin_getroammsg", 0).is_none());
        assert!(f.plan(Side::Zim, "ImportPeerMsg", 0).is_none());
    }

    #[test]
    fn outage_windows_are_offsets_from_start() {
        let cfg = FaultConfig::from_json(r#"{"zim": {"outages": [[10, 20]]}}"#).unwrap();
        let start = 5_000_000_000;
        let f = Faults::new(cfg, start).unwrap();
        let s = 1_000_000_000;
        assert_eq!(f.plan(Side::Zim, "x", start + 9 * s).unwrap().action, None);
        assert_eq!(
            f.plan(Side::Zim, "x", start + 10 * s).unwrap().action,
            Some(Action::Outage(OutageMode::Http503))
        );
        assert_eq!(f.plan(Side::Zim, "x", start + 20 * s).unwrap().action, None);
    }

    #[test]
    fn formats_and_validation() {
        let t = FaultConfig::from_toml(
            "[simulate.faults]\nseed = 9\n[simulate.faults.zim]\nreset_rate = 0.5\noutages = [[1, 2.5]]\noutage_mode = \"reset\"\n",
        )
        .unwrap();
        assert_eq!(t.seed, 9);
        assert_eq!(t.zim.reset_rate, 0.5);
        assert_eq!(t.zim.outages, vec![[1.0, 2.5]]);
        assert_eq!(t.zim.outage_mode, OutageMode::Reset);
        assert!(FaultConfig::from_json(r#"{"zim": {"reset_rate": 1.5}}"#).is_err());
        assert!(FaultConfig::from_json(r#"{"zim": {"reset_rate": 0.6, "slow_rate": 0.6}}"#).is_err());
        assert!(FaultConfig::from_json(r#"{"zim": {"typo_rate": 0.1}}"#).is_err());
        let mut c = FaultConfig::default();
        c.merge_patch(&serde_json::json!({"tencent": {"down": true}}))
            .unwrap();
        assert!(c.tencent.down && !c.zim.down);
        c.merge_patch(&serde_json::json!({"tencent": {"down": null}}))
            .unwrap();
        assert!(!c.tencent.down);
        c.apply_flag("tencent.outages=[[5,10]]").unwrap();
        assert_eq!(c.tencent.outages, vec![[5.0, 10.0]]);
        c.apply_flag("seed=12").unwrap();
        assert_eq!(c.seed, 12);
        assert!(c.apply_flag("nope").is_err());
    }
}
