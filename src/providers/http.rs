//! The one way a provider client talks HTTP: post a JSON body, read the
//! answer up to a cap, and classify whatever went wrong on the way as an
//! [`Outcome`], so both clients mean the same by "in doubt".
//!
//! The classifications: a failure to connect never sent the request
//! (retry later); a timeout or a reset after the request left, a gateway
//! error and an unreadable answer may come after the provider applied the
//! call (unknown: resolve before resending).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::Outcome;
use crate::backoff::Backoff;

/// Largest answer a client reads; both providers' answers are small.
pub(crate) const MAX_ANSWER: usize = 1 << 20;

/// Builds the HTTP client every provider shares.
pub(crate) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(1024)
        // A redirect would POST the import again where we cannot see its
        // answer, and a proxy from the environment would see the signed
        // URL: neither provider's server API asks for either.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .user_agent(concat!("chatferry/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Posts `body` as JSON to `url` and reads the answer (at most
/// [`MAX_ANSWER`] bytes): its status and body, or the outcome the failure
/// means.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: reqwest::Url,
    body: &str,
) -> Result<(StatusCode, Vec<u8>), Outcome> {
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| transport_outcome(&e))?;
    let status = resp.status();
    let bytes = read_capped(resp, MAX_ANSWER).await?;
    Ok((status, bytes))
}

/// Parses an answer (HTTP status and body) into the provider's JSON object,
/// which `is_ours` recognizes, or the outcome an unusable answer means.
/// `provider` names it in the reason. Never panics.
pub(crate) fn json_answer(
    status: u16,
    bytes: &[u8],
    provider: &str,
    is_ours: impl Fn(&Value) -> bool,
) -> Result<Value, Outcome> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) if is_ours(&v) => Ok(v),
        _ if !status.is_success() => Err(status_outcome(status, bytes)),
        _ => Err(Outcome::Unknown {
            code: None,
            reason: format!(
                "HTTP {} with an answer that is not {provider}'s JSON: {}",
                status.as_u16(),
                snippet(bytes)
            ),
        }),
    }
}

/// Whether an idempotent call (a read, a registration) that ended so may
/// simply be made again: a rate limit, or an answer in doubt.
pub(crate) fn worth_retrying(o: &Outcome) -> bool {
    matches!(o, Outcome::RetryLater { .. } | Outcome::Unknown { .. })
}

/// The schedule of an idempotent call's retries: `first` before the first,
/// doubling, five at most.
pub(crate) const fn idempotent_retries(first: Duration) -> Backoff {
    Backoff::new(first, Duration::from_millis(first.as_millis() as u64 * 16)).with_max_times(5)
}

/// Classifies a transport failure. A failure to connect never sent the
/// request; anything after that might have been applied.
pub(crate) fn transport_outcome(e: &reqwest::Error) -> Outcome {
    // Strip the URL: its query string carries signatures and UserSigs.
    let shown = describe(e);
    if e.is_connect() {
        Outcome::RetryLater {
            code: None,
            reason: format!("cannot connect: {shown}"),
            delay: None,
            throttled: false,
        }
    } else if e.is_timeout() {
        Outcome::Unknown {
            code: None,
            reason: format!("no answer within the request timeout: {shown}"),
        }
    } else {
        Outcome::Unknown {
            code: None,
            reason: format!("connection failed after the request left: {shown}"),
        }
    }
}

/// A reqwest error as text, without the URL (which holds credentials).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = String::new();
    let mut cur: Option<&dyn Error> = Some(e);
    let mut first = true;
    while let Some(err) = cur {
        let text = if first {
            format!("{}", WithoutUrl(e))
        } else {
            err.to_string()
        };
        if !s.contains(&text) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&text);
        }
        first = false;
        cur = err.source();
    }
    s
}

struct WithoutUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for WithoutUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connect error"
        } else if e.is_body() || e.is_decode() {
            "error reading the answer"
        } else if e.is_request() {
            "request error"
        } else {
            "http error"
        };
        f.write_str(kind)
    }
}

/// Classifies an HTTP answer whose body is not the provider's JSON.
fn status_outcome(status: StatusCode, body: &[u8]) -> Outcome {
    let snippet = snippet(body);
    // Neither vendor documents an HTTP 429 (their rate limits answer with
    // a code in JSON, see each `codes.rs`); a gateway sends 429 (RFC 6585
    // §4) when it refuses a request before passing it on, so it is a rate
    // limit that applied nothing.
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::RetryLater {
            code: Some(status.as_u16() as i64),
            reason: format!("HTTP 429: {snippet}"),
            delay: None,
            throttled: true,
        };
    }
    if status.is_server_error() {
        // A gateway error may come after the service applied the call.
        return Outcome::Unknown {
            code: None,
            reason: format!("HTTP {}: {snippet}", status.as_u16()),
        };
    }
    if status.is_client_error() {
        return Outcome::Halt {
            code: Some(status.as_u16() as i64),
            reason: format!(
                "HTTP {} from the endpoint ({snippet}); check the target's endpoint/region",
                status.as_u16()
            ),
        };
    }
    Outcome::Unknown {
        code: None,
        reason: format!("HTTP {} with an unreadable body: {snippet}", status.as_u16()),
    }
}

/// The first bytes of a body, printable, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(120)];
    let s: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "empty body".into()
    } else if body.len() > 120 {
        format!("{s}…")
    } else {
        s
    }
}

/// Reads at most `limit` bytes of an answer; a longer one is in doubt, and
/// so is one whose reading fails.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, Outcome> {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > limit {
                    return Err(Outcome::Unknown {
                        code: None,
                        reason: format!("answer larger than {limit} bytes; not a provider answer"),
                    });
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf),
            Err(e) => return Err(transport_outcome(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_retries_keep_the_old_ceilings() {
        let b = idempotent_retries(Duration::from_millis(400));
        let ms: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [400, 800, 1600, 3200, 6400, 6400]);
        assert_eq!(b.iter().count(), 5);
    }

    #[test]
    fn answers_that_are_not_the_providers_json() {
        let ours = |v: &Value| v.get("Code").is_some();
        assert!(json_answer(200, br#"{"Code": 0}"#, "ZIM", ours).is_ok());
        match json_answer(200, b"<html>", "ZIM", ours) {
            Err(Outcome::Unknown { reason, .. }) => {
                assert_eq!(reason, "HTTP 200 with an answer that is not ZIM's JSON: <html>")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            json_answer(429, b"", "ZIM", ours),
            Err(Outcome::RetryLater { throttled: true, .. })
        ));
        assert!(matches!(
            json_answer(404, b"", "ZIM", ours),
            Err(Outcome::Halt { code: Some(404), .. })
        ));
        assert!(matches!(
            json_answer(502, b"", "ZIM", ours),
            Err(Outcome::Unknown { code: None, .. })
        ));
    }
}
