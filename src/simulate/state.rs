//! What the simulator counts, for `GET /_sim/stats`.
//!
//! Counters on the hot path are atomics; the maps (codes, lanes) are only
//! touched when something goes wrong, so a mutex each is enough.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::faults::{FaultKind, Side};

/// The provider APIs the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    ImportPeerMsg = 0,
    QueryPeerMsg = 1,
    UserRegister = 2,
    ImportMsg = 3,
    GetRoamMsg = 4,
    AccountImport = 5,
    MultiAccountImport = 6,
}

/// Every API, in the stats' order.
pub(crate) const APIS: [Api; 7] = [
    Api::ImportPeerMsg,
    Api::QueryPeerMsg,
    Api::UserRegister,
    Api::ImportMsg,
    Api::GetRoamMsg,
    Api::AccountImport,
    Api::MultiAccountImport,
];

impl Api {
    /// The name used on the wire and in the stats.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::ImportPeerMsg => "ImportPeerMsg",
            Api::QueryPeerMsg => "QueryPeerMsg",
            Api::UserRegister => "UserRegister",
            Api::ImportMsg => "importmsg",
            Api::GetRoamMsg => "admin_getroammsg",
            Api::AccountImport => "account_import",
            Api::MultiAccountImport => "multiaccount_import",
        }
    }

    /// The ZIM API an `Action` names.
    pub(crate) fn from_zim_action(action: &str) -> Option<Api> {
        match action {
            "ImportPeerMsg" => Some(Api::ImportPeerMsg),
            "QueryPeerMsg" => Some(Api::QueryPeerMsg),
            "UserRegister" => Some(Api::UserRegister),
            _ => None,
        }
    }

    /// The provider that serves it.
    pub(crate) fn side(self) -> Side {
        match self {
            Api::ImportPeerMsg | Api::QueryPeerMsg | Api::UserRegister => Side::Zim,
            _ => Side::Tencent,
        }
    }
}

/// Counters of one provider.
#[derive(Debug, Default)]
pub(crate) struct ProviderStats {
    pub calls: [AtomicU64; 7],
    /// Import calls answered with success (Tencent: stored + dedup hits).
    pub accepted: AtomicU64,
    /// Messages stored.
    pub stored: AtomicU64,
    /// Messages stored whose content was already stored in the same
    /// view/conversation (ZIM: same sender, type, body and time; Tencent:
    /// the same under a different dedup triple).
    pub duplicates_stored: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub rate_limited: AtomicU64,
    pub auth_failures: AtomicU64,
    pub validation_failures: AtomicU64,
    pub order_inversions: AtomicU64,
    pub faults: [AtomicU64; FaultKind::ALL.len()],
    auth_by_code: Mutex<BTreeMap<i64, u64>>,
    validation_by_code: Mutex<BTreeMap<i64, u64>>,
    inversions_by_lane: Mutex<BTreeMap<String, u64>>,
}

impl ProviderStats {
    /// Counts a call to `api`.
    pub(crate) fn call(&self, api: Api) {
        self.calls[api as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an injected fault.
    pub(crate) fn fault(&self, kind: FaultKind) {
        self.faults[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused signature or UserSig, by code.
    pub(crate) fn auth_failure(&self, code: i64) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        *self.auth_by_code.lock().entry(code).or_default() += 1;
    }

    /// Counts a refused request, by code.
    pub(crate) fn validation_failure(&self, code: i64) {
        self.validation_failures.fetch_add(1, Ordering::Relaxed);
        *self.validation_by_code.lock().entry(code).or_default() += 1;
    }

    /// Counts a message that arrived before an older one, by lane.
    pub(crate) fn inversion(&self, lane: String) {
        self.order_inversions.fetch_add(1, Ordering::Relaxed);
        *self.inversions_by_lane.lock().entry(lane).or_default() += 1;
    }

    fn reset(&self) {
        for c in self.calls.iter().chain(self.faults.iter()) {
            c.store(0, Ordering::Relaxed);
        }
        for c in [
            &self.accepted,
            &self.stored,
            &self.duplicates_stored,
            &self.dedup_hits,
            &self.rate_limited,
            &self.auth_failures,
            &self.validation_failures,
            &self.order_inversions,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.auth_by_code.lock().clear();
        self.validation_by_code.lock().clear();
        self.inversions_by_lane.lock().clear();
    }

    fn snapshot(&self, side: Option<Side>) -> Snapshot {
        let mut calls = BTreeMap::new();
        for api in APIS {
            if side.map_or(true, |s| api.side() == s) {
                calls.insert(api.name(), self.calls[api as usize].load(Ordering::Relaxed));
            }
        }
        Snapshot {
            calls,
            accepted: self.accepted.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            duplicates_stored: self.duplicates_stored.load(Ordering::Relaxed),
            dedup_hits: self.dedup_hits.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            validation_failures: self.validation_failures.load(Ordering::Relaxed),
            order_inversions: self.order_inversions.load(Ordering::Relaxed),
            faults: std::array::from_fn(|i| self.faults[i].load(Ordering::Relaxed)),
            auth_by_code: self.auth_by_code.lock().clone(),
            validation_by_code: self.validation_by_code.lock().clone(),
            inversions_by_lane: self.inversions_by_lane.lock().clone(),
        }
    }
}

#[derive(Default)]
struct Snapshot {
    calls: BTreeMap<&'static str, u64>,
    accepted: u64,
    stored: u64,
    duplicates_stored: u64,
    dedup_hits: u64,
    rate_limited: u64,
    auth_failures: u64,
    validation_failures: u64,
    order_inversions: u64,
    faults: [u64; FaultKind::ALL.len()],
    auth_by_code: BTreeMap<i64, u64>,
    validation_by_code: BTreeMap<i64, u64>,
    inversions_by_lane: BTreeMap<String, u64>,
}

impl Snapshot {
    fn add(&mut self, o: &Snapshot) {
        for (k, v) in &o.calls {
            *self.calls.entry(k).or_default() += v;
        }
        self.accepted += o.accepted;
        self.stored += o.stored;
        self.duplicates_stored += o.duplicates_stored;
        self.dedup_hits += o.dedup_hits;
        self.rate_limited += o.rate_limited;
        self.auth_failures += o.auth_failures;
        self.validation_failures += o.validation_failures;
        self.order_inversions += o.order_inversions;
        for (a, b) in self.faults.iter_mut().zip(o.faults) {
            *a += b;
        }
        for (k, v) in &o.auth_by_code {
            *self.auth_by_code.entry(*k).or_default() += v;
        }
        for (k, v) in &o.validation_by_code {
            *self.validation_by_code.entry(*k).or_default() += v;
        }
        for (k, v) in &o.inversions_by_lane {
            *self.inversions_by_lane.entry(k.clone()).or_default() += v;
        }
    }

    fn json(&self) -> Value {
        let codes = |m: &BTreeMap<i64, u64>| -> Value {
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect::<Map<_, _>>(),
            )
        };
        let faults: Map<String, Value> = FaultKind::ALL
            .iter()
            .zip(self.faults)
            .map(|(k, v)| (k.name().to_string(), json!(v)))
            .collect();
        json!({
            "calls": self.calls.values().sum::<u64>(),
            "calls_by_api": self.calls,
            "accepted": self.accepted,
            "stored": self.stored,
            "duplicates_stored": self.duplicates_stored,
            "dedup_hits": self.dedup_hits,
            "rate_limited": self.rate_limited,
            "auth_failures": self.auth_failures,
            "auth_failures_by_code": codes(&self.auth_by_code),
            "validation_failures": self.validation_failures,
            "validation_failures_by_code": codes(&self.validation_by_code),
            "order_inversions": self.order_inversions,
            "order_inversions_by_lane": self.inversions_by_lane,
            "faults": faults,
        })
    }
}

/// Both providers' counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub zim: ProviderStats,
    pub tencent: ProviderStats,
}

impl Stats {
    /// One provider's counters.
    pub(crate) fn side(&self, side: Side) -> &ProviderStats {
        match side {
            Side::Zim => &self.zim,
            Side::Tencent => &self.tencent,
        }
    }

    /// Zeroes every counter.
    pub(crate) fn reset(&self) {
        self.zim.reset();
        self.tencent.reset();
    }

    /// The `/_sim/stats` object (without `uptime_ms`).
    pub(crate) fn json(&self) -> Value {
        let z = self.zim.snapshot(Some(Side::Zim));
        let t = self.tencent.snapshot(Some(Side::Tencent));
        let mut total = Snapshot::default();
        total.add(&z);
        total.add(&t);
        json!({ "total": total.json(), "zim": z.json(), "tencent": t.json() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_both_providers() {
        let s = Stats::default();
        s.zim.call(Api::ImportPeerMsg);
        s.tencent.call(Api::ImportMsg);
        s.tencent.call(Api::ImportMsg);
        let too_large = crate::providers::zim::codes::MESSAGE_TOO_LARGE;
        s.zim.validation_failure(too_large);
        s.tencent.inversion("1/a\u{1f}b".into());
        s.zim.fault(FaultKind::Reset);
        let v = s.json();
        assert_eq!(v["total"]["calls"], 3);
        assert_eq!(v["zim"]["calls_by_api"]["ImportPeerMsg"], 1);
        assert!(v["zim"]["calls_by_api"].get("importmsg").is_none());
        assert_eq!(
            v["total"]["validation_failures_by_code"][too_large.to_string()],
            1
        );
        assert_eq!(v["total"]["order_inversions_by_lane"]["1/a\u{1f}b"], 1);
        assert_eq!(v["total"]["faults"]["reset"], 1);
        s.reset();
        assert_eq!(s.json()["total"]["calls"], 0);
    }
}
