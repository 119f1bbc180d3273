//! Helpers for tests that talk to `chatferry simulate` over real HTTP on
//! loopback: a simulator per test, signed ZIM URLs and Tencent URLs with a
//! UserSig made at the simulator's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatferry::config::Config;
use chatferry::providers::tencent::usersig;
use chatferry::providers::zim::sign;
use chatferry::simulate::{SimOptions, Simulator};
use serde_json::{json, Value};

use super::settings::{Settings, TencentTarget, ZimTarget, TIM_ADMIN, TIM_APP, TIM_KEY, ZIM_APP, ZIM_SECRET};

/// Both default apps, as the simulator serves them: a ZIM and a Tencent
/// target (nothing is sent to their endpoints).
pub fn apps() -> Settings {
    Settings::default()
        .with(ZimTarget::default())
        .with(TencentTarget::default())
}

/// A simulator on an ephemeral port and a client for it.
pub struct TestSim {
    pub sim: Simulator,
    pub http: reqwest::Client,
    pub base: String,
    nonce: AtomicU64,
}

/// A parsed answer: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

impl Answer {
    /// ZIM `Code` or Tencent `ErrorCode`.
    pub fn code(&self) -> i64 {
        self.json
            .get("Code")
            .or_else(|| self.json.get("ErrorCode"))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("answer without a code: {}", self.json))
    }
}

impl TestSim {
    /// Starts a simulator serving the apps of `config`'s targets.
    pub async fn start(config: &Config, opts: SimOptions) -> TestSim {
        let sim = Simulator::start(config, opts).await.expect("simulator starts");
        let base = sim.base_url();
        TestSim {
            sim,
            http: client(None),
            base,
            nonce: AtomicU64::new(1),
        }
    }

    /// A fresh, signed ZIM URL for `action`, timestamped at the simulator's clock.
    pub fn zim_url(&self, action: &str) -> String {
        let ts = self.sim.clock().now_secs();
        let nonce = format!(
            "{:016x}",
            self.nonce.fetch_add(1, Ordering::Relaxed) ^ 0x5eed_0000_0000
        );
        let sig = sign::signature(ZIM_APP, &nonce, ZIM_SECRET, ts);
        self.zim_url_with(action, ZIM_APP, &nonce, ts, &sig)
    }

    /// A ZIM URL with the given app, nonce, time and signature.
    pub fn zim_url_with(&self, action: &str, app: u32, nonce: &str, ts: i64, sig: &str) -> String {
        format!(
            "{}?Action={action}&AppId={app}&SignatureNonce={nonce}&Timestamp={ts}&SignatureVersion=2.0&Signature={sig}",
            self.base
        )
    }

    /// A Tencent URL for `api` with an admin UserSig made now (simulator clock).
    pub fn tim_url(&self, api: &str) -> String {
        let sig = usersig::generate(
            u64::from(TIM_APP),
            TIM_ADMIN,
            TIM_KEY,
            self.sim.clock().now_secs(),
            86_400,
        );
        self.tim_url_with(api, TIM_APP, TIM_ADMIN, &sig)
    }

    /// A Tencent URL with the given app, identifier and UserSig.
    pub fn tim_url_with(&self, api: &str, app: u32, identifier: &str, sig: &str) -> String {
        let path = match api {
            "importmsg" | "admin_getroammsg" => format!("v4/openim/{api}"),
            _ => format!("v4/im_open_login_svc/{api}"),
        };
        format!(
            "{}{path}?sdkappid={app}&identifier={identifier}&usersig={sig}&random={}&contenttype=json",
            self.base,
            rand::random::<u32>()
        )
    }

    /// POSTs a JSON body and parses a JSON answer.
    pub async fn post(&self, url: &str, body: &Value) -> reqwest::Result<Answer> {
        post_with(&self.http, url, body).await
    }

    /// Calls ZIM's `action`, signed now.
    pub async fn zim(&self, action: &str, body: &Value) -> Answer {
        self.post(&self.zim_url(action), body)
            .await
            .expect("ZIM call answers")
    }

    /// Calls Tencent's `api` as the admin.
    pub async fn tim(&self, api: &str, body: &Value) -> Answer {
        self.post(&self.tim_url(api), body)
            .await
            .expect("Tencent call answers")
    }

    /// GETs a control endpoint's JSON.
    pub async fn get(&self, path_and_query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("simulator answers");
        assert!(r.status().is_success(), "GET {path_and_query}: {}", r.status());
        r.json().await.expect("JSON answer")
    }

    /// `GET /_sim/stats`.
    pub async fn stats(&self) -> Value {
        self.get("_sim/stats").await
    }

    /// What `user`'s ZIM view of the chat with `peer` holds.
    pub async fn zim_view(&self, user: &str, peer: &str) -> Value {
        self.get(&format!(
            "_sim/messages?provider=zim&app={ZIM_APP}&user={user}&peer={peer}"
        ))
        .await
    }

    /// What the Tencent conversation of `a` and `b` holds.
    pub async fn tim_conv(&self, a: &str, b: &str) -> Value {
        self.get(&format!(
            "_sim/messages?provider=tencent&app={TIM_APP}&a={a}&b={b}"
        ))
        .await
    }

    /// Applies a fault patch through `POST /_sim/faults`.
    pub async fn faults(&self, patch: Value) -> Value {
        let r = self
            .http
            .post(format!("{}_sim/faults", self.base))
            .json(&patch)
            .send()
            .await
            .expect("simulator answers");
        assert_eq!(r.status(), 200, "fault patch refused");
        r.json().await.expect("JSON answer")
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.sim.set_faults(Default::default()).unwrap();
    }

    /// Polls `check` on the stats until it holds (or fails after 10 s).
    pub async fn wait_for_stats(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.stats().await;
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {s}");
            tokio::task::yield_now().await;
        }
    }
}

/// A client with a 10 s timeout (or the given one) and no idle pooling, so
/// a connection the simulator dropped is never reused.
pub fn client(timeout: Option<Duration>) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout.unwrap_or(Duration::from_secs(10)))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client builds")
}

/// POSTs a JSON body with `http` and parses a JSON answer.
pub async fn post_with(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::Result<Answer> {
    let r = http.post(url).json(body).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, json })
}

/// A ZIM text message written into `imported`'s view.
pub fn zim_text(from: &str, to: &str, imported: &str, time_ms: i64, text: &str) -> Value {
    json!({
        "FromUserId": from,
        "ToUserId": to,
        "MessageType": 1,
        "Priority": 1,
        "MessageBody": {"Message": text},
        "SendMessageTime": time_ms,
        "ImportedUserId": imported,
    })
}

/// A Tencent text import; `seq` None leaves MsgSeq out.
pub fn tim_text(from: &str, to: &str, seq: Option<u32>, random: u32, ts: i64, text: &str) -> Value {
    let mut v = json!({
        "SyncFromOldSystem": 2,
        "From_Account": from,
        "To_Account": to,
        "MsgRandom": random,
        "MsgTimeStamp": ts,
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
    });
    if let Some(s) = seq {
        v["MsgSeq"] = json!(s);
    }
    v
}
