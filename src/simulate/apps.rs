//! The simulated apps: one per app id of the configuration's
//! `[targets.*]`, so the daemon and the simulator agree on ids and secrets
//! by construction.

use std::collections::HashMap;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::tencent::TimApp;
use super::zim::ZimApp;
use super::SimOptions;
use crate::config::{Config, ConfigError, TargetConfig};

/// Every simulated app, by app id.
pub(crate) struct Apps {
    pub zim: HashMap<u32, ZimApp>,
    pub tencent: HashMap<u32, TimApp>,
}

impl Apps {
    /// One app per configured app id, each starting with `users`. Two
    /// targets may share an app only with the same credentials.
    pub(crate) fn from_config(config: &Config, opts: &SimOptions, users: &[String]) -> anyhow::Result<Apps> {
        let mut apps = Apps {
            zim: HashMap::new(),
            tencent: HashMap::new(),
        };
        for (name, target) in &config.targets {
            match target {
                TargetConfig::Zim(z) => {
                    let secret = secret(name, z.server_secret.as_ref(), "server_secret")?;
                    let app = ZimApp::new(z, secret, opts.rate_override, users);
                    if !add_once(&mut apps.zim, z.app_id, app, ZimApp::same_credentials) {
                        return Err(conflict(name, "ZIM", z.app_id, "server secrets"));
                    }
                }
                TargetConfig::Tencent(t) => {
                    let key = secret(name, t.secret_key.as_ref(), "secret_key")?;
                    let app = TimApp::new(t, key, opts.rate_override, opts.roaming_days, users);
                    if !add_once(&mut apps.tencent, t.sdk_app_id, app, TimApp::same_credentials) {
                        let what = "admin_identifier or secret_key";
                        return Err(conflict(name, "Tencent", t.sdk_app_id, what));
                    }
                }
            }
        }
        Ok(apps)
    }

    /// Forgets every message, user and rate window; the apps start again
    /// with `users`.
    pub(crate) fn reset(&self, users: &[String]) {
        for a in self.zim.values() {
            a.reset(users);
        }
        for a in self.tencent.values() {
            a.reset(users);
        }
    }
}

/// Adds `app` as app `id`, unless two targets share the id: then the app
/// is already there, and false when its credentials differ.
fn add_once<A>(
    apps: &mut HashMap<u32, A>,
    id: u32,
    app: A,
    same_credentials: impl FnOnce(&A, &A) -> bool,
) -> bool {
    match apps.get(&id) {
        Some(existing) => same_credentials(existing, &app),
        None => {
            apps.insert(id, app);
            true
        }
    }
}

/// Two targets name the same app with different credentials.
fn conflict(target: &str, provider: &str, id: u32, what: &str) -> anyhow::Error {
    ConfigError(format!(
        "targets.{target}: {provider} app {id} is configured twice with different {what}"
    ))
    .into()
}

/// A target's secret, which the simulator needs in clear to check
/// signatures.
fn secret(target: &str, secret: Option<&SecretString>, field: &str) -> anyhow::Result<String> {
    secret
        .map(|s| s.expose_secret().to_string())
        .with_context(|| format!("targets.{target} has no {field}"))
}

/// `f` of each app (only app `only` when given), in app id order.
pub(crate) fn listed<A>(apps: &HashMap<u32, A>, only: Option<u32>, f: impl Fn(&A) -> Value) -> Vec<Value> {
    sorted(apps)
        .filter(|(id, _)| only.map_or(true, |o| o == **id))
        .map(|(_, a)| f(a))
        .collect()
}

/// A map's entries in key order (for answers that must not depend on
/// hashing).
pub(crate) fn sorted<K: Ord, V>(map: &HashMap<K, V>) -> impl Iterator<Item = (&K, &V)> {
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}
