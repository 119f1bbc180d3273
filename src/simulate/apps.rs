//! The simulated apps: one per app id of the configuration's
//! `[targets.*]`, so the daemon and the simulator agree on ids and secrets
//! by construction.

use std::collections::HashMap;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::tencent::TimApp;
use super::zim::ZimApp;
use super::SimOptions;
use crate::config::{Config, ConfigError, TargetConfig, TencentTarget, ZimTarget};

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
                TargetConfig::Zim(z) => apps.add_zim(name, z, opts, users)?,
                TargetConfig::Tencent(t) => apps.add_tencent(name, t, opts, users)?,
            }
        }
        Ok(apps)
    }

    fn add_zim(
        &mut self,
        name: &str,
        z: &ZimTarget,
        opts: &SimOptions,
        users: &[String],
    ) -> anyhow::Result<()> {
        let secret = secret(name, z.server_secret.as_ref(), "server_secret")?;
        match self.zim.get(&z.app_id) {
            Some(existing) if existing.same_secret(&secret) => {}
            Some(_) => bail!(ConfigError(format!(
                "targets.{name}: ZIM app {} is configured twice with different server secrets",
                z.app_id
            ))),
            None => {
                let app = ZimApp::new(z, secret, opts.rate_override, users);
                self.zim.insert(z.app_id, app);
            }
        }
        Ok(())
    }

    fn add_tencent(
        &mut self,
        name: &str,
        t: &TencentTarget,
        opts: &SimOptions,
        users: &[String],
    ) -> anyhow::Result<()> {
        let key = secret(name, t.secret_key.as_ref(), "secret_key")?;
        match self.tencent.get(&t.sdk_app_id) {
            Some(existing) if existing.same_credentials(&t.admin_identifier, &key) => {}
            Some(_) => bail!(ConfigError(format!(
                "targets.{name}: Tencent app {} is configured twice with different \
                 admin_identifier or secret_key",
                t.sdk_app_id
            ))),
            None => {
                let app = TimApp::new(t, key, opts.rate_override, opts.roaming_days, users);
                self.tencent.insert(t.sdk_app_id, app);
            }
        }
        Ok(())
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

/// A target's secret, which the simulator needs in clear to check
/// signatures.
fn secret(target: &str, secret: Option<&SecretString>, field: &str) -> anyhow::Result<String> {
    secret
        .map(|s| s.expose_secret().to_string())
        .with_context(|| format!("targets.{target} has no {field}"))
}

/// `f` of each app (only app `only` when given), in app id order.
pub(crate) fn listed<A>(apps: &HashMap<u32, A>, only: Option<u32>, f: impl Fn(&A) -> Value) -> Vec<Value> {
    let mut ids: Vec<u32> = apps
        .keys()
        .copied()
        .filter(|id| only.map_or(true, |o| o == *id))
        .collect();
    ids.sort_unstable();
    ids.iter().map(|id| f(&apps[id])).collect()
}
