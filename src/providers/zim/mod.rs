//! ZEGO ZIM: `ImportPeerMsg` over the server API, signed per call.
//!
//! The wire format is in `body`, the signature in `sign`, the code table in
//! `codes`.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{read_capped, snippet, transport_outcome, Accepted, Outcome, Provider, SendJob};
use crate::config::{zim_base_url, ZimTarget};

pub mod body;
pub mod codes;
pub mod sign;

/// Largest answer we read; ZIM answers are small.
const MAX_ANSWER: usize = 1 << 20;

/// A ZIM server-API client for one app.
pub struct ZimClient {
    target: String,
    app_id: u32,
    secret: SecretString,
    base: reqwest::Url,
    http: reqwest::Client,
}

impl ZimClient {
    /// Builds a client from a target's configuration.
    pub fn new(target: &str, cfg: &ZimTarget, http: reqwest::Client) -> anyhow::Result<Self> {
        let base = zim_base_url(cfg).map_err(anyhow::Error::msg)?;
        Ok(Self {
            target: target.to_string(),
            app_id: cfg.app_id,
            secret: cfg.server_secret.clone().expect("resolved at config load"),
            base: reqwest::Url::parse(&base)?,
            http,
        })
    }

    /// The signed URL of one call to `action`.
    fn url(&self, action: &str) -> reqwest::Url {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let nonce = sign::nonce();
        let sig = sign::signature(self.app_id, &nonce, self.secret.expose_secret(), ts);
        let mut url = self.base.clone();
        url.query_pairs_mut()
            .append_pair("Action", action)
            .append_pair("AppId", &self.app_id.to_string())
            .append_pair("SignatureNonce", &nonce)
            .append_pair("Timestamp", &ts.to_string())
            .append_pair("SignatureVersion", "2.0")
            .append_pair("Signature", &sig);
        url
    }

    /// Posts a body to `action` and returns the parsed answer object.
    async fn call(&self, action: &str, body: &str) -> Result<Value, Outcome> {
        let resp = self
            .http
            .post(self.url(action))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_outcome(&e))?;
        let status = resp.status();
        let bytes = read_capped(resp, MAX_ANSWER).await?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) if v.get("Code").is_some() => Ok(v),
            _ if !status.is_success() => Err(super::http_status_outcome(status, &bytes)),
            _ => Err(Outcome::Unknown {
                reason: format!(
                    "HTTP {} with an answer that is not ZIM's JSON: {}",
                    status.as_u16(),
                    snippet(&bytes)
                ),
            }),
        }
    }

    /// The target name this client serves.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Reads an integer that may come as a number or a string.
pub(crate) fn int_field(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads an id that may come as a string or a (u64) number, as text.
pub(crate) fn id_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Classifies a parsed ZIM answer.
pub fn classify_answer(v: &Value) -> Outcome {
    let Some(code) = int_field(v, "Code") else {
        return Outcome::Unknown {
            reason: "answer has no numeric Code".into(),
        };
    };
    let message = v
        .get("Message")
        .and_then(Value::as_str)
        .map(|s| snippet(s.as_bytes()))
        .unwrap_or_default();
    let request_id = id_field(v, "RequestId");
    let rid = request_id.as_deref().unwrap_or("-");
    use codes::Class::*;
    match codes::classify(code) {
        Success => Outcome::Accepted(Accepted {
            msg_id: id_field(v, "MsgId"),
            msg_seq: int_field(v, "MsgSeq"),
            request_id,
        }),
        RateLimited => Outcome::RetryLater {
            code: Some(code),
            reason: format!("rate limited ({message}; request {rid})"),
            delay: None,
            throttled: true,
        },
        Transient => Outcome::RetryLater {
            code: Some(code),
            reason: format!("transient server error ({message}; request {rid})"),
            delay: None,
            throttled: false,
        },
        ClockSkew | Auth => Outcome::Halt {
            code: Some(code),
            reason: format!(
                "ZIM refused the credentials ({message}); check app_id, server_secret and the host clock"
            ),
        },
        AppUnusable => Outcome::Halt {
            code: Some(code),
            reason: format!("the ZIM app cannot be used ({message}); check the app's status in the console"),
        },
        BadMessage => Outcome::Permanent {
            code: Some(code),
            reason: format!("ZIM refused the message ({message})"),
        },
        UserMissing => Outcome::Permanent {
            code: Some(code),
            reason: format!(
                "a user is not registered in ZIM ({message}); register users with \
                 `chatferry accounts import` or set ensure_users = true, then `chatferry retry`"
            ),
        },
        Unrecognized => Outcome::Permanent {
            code: Some(code),
            reason: format!("unrecognized ZIM code ({message}; request {rid})"),
        },
    }
}

#[async_trait]
impl Provider for ZimClient {
    async fn send(&self, job: &SendJob<'_>) -> Outcome {
        let mut fresh_signature_tried = false;
        loop {
            let outcome = match self.call("ImportPeerMsg", job.body).await {
                Ok(v) => classify_answer(&v),
                Err(o) => o,
            };
            // A skewed timestamp is refused before anything is applied, so
            // one retry with a fresh signature is safe.
            if let Outcome::Halt {
                code: Some(100000004),
                ..
            } = outcome
            {
                if !fresh_signature_tried {
                    fresh_signature_tried = true;
                    continue;
                }
            }
            return outcome;
        }
    }
}
