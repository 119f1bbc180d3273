//! Logging: human-readable by default, JSON when `log.format = "json"`.
//! `RUST_LOG` overrides `log.level`; SIGHUP can change the level. Logs go
//! to stderr; stdout is for command output.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},sqlx=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(cfg: &LogConfig) {
    if RELOAD.get().is_some() {
        return;
    }
    let (layer, handle) = reload::Layer::new(filter(&cfg.level));
    let registry = tracing_subscriber::registry().with(layer);
    let ok = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .is_ok(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
            .is_ok(),
    };
    if ok {
        let _ = RELOAD.set(handle);
    }
}

/// Changes the log level at run time (SIGHUP).
pub fn set_level(level: &str) {
    if let Some(h) = RELOAD.get() {
        if let Err(e) = h.reload(filter(level)) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}
