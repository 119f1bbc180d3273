//! Stand-ins for a provider on loopback, served by axum: the recording
//! provider (Tencent-like answers chosen per request by the test, every
//! request recorded) and a canned server that answers every request the
//! same and counts them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Serves `router` on an ephemeral loopback port for the rest of the test.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// What the recording provider answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Ok,
    /// An ErrorCode answer (not applied).
    Code(i64),
    /// Apply, then drop the connection without an answer.
    ApplyThenDrop,
    /// Hold the answer this long, then answer OK.
    Slow(Duration),
}

/// One received request, as the recorder saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub conversation: (String, String),
    pub from: String,
    pub text: String,
    pub applied: bool,
}

/// How a test picks the answer: `decide(body, nth_time_this_message_was_seen)`.
pub type Decide = dyn Fn(&Value, u32) -> Reply + Send + Sync;

/// A Tencent-like HTTP server on loopback that records what it receives.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    in_flight: Arc<Mutex<HashMap<(String, String), u32>>>,
    overlaps: Arc<Mutex<u32>>,
    decide: Arc<Decide>,
}

/// A conversation's two users, in order.
pub fn conv(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

fn text_of(v: &Value) -> String {
    v["MsgBody"][0]["MsgContent"]["Text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Recorder {
    /// Starts a recorder; `decide(body, nth_time_seen)` picks the answer.
    pub async fn start(decide: impl Fn(&Value, u32) -> Reply + Send + Sync + 'static) -> Recorder {
        Recorder::with(Arc::new(decide)).await
    }

    /// [`Recorder::start`] with a shared `decide`.
    pub async fn with(decide: Arc<Decide>) -> Recorder {
        let mut rec = Recorder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::default(),
            seen: Arc::default(),
            in_flight: Arc::default(),
            overlaps: Arc::default(),
            decide,
        };
        let router = Router::new()
            .fallback(answer)
            .layer(DefaultBodyLimit::disable())
            .with_state(rec.clone());
        rec.addr = serve(router).await;
        rec
    }

    /// Records one request; returns its conversation and the answer chosen.
    fn record(&self, v: &Value) -> ((String, String), Reply) {
        let from = v["From_Account"].as_str().unwrap_or_default().to_string();
        let to = v["To_Account"].as_str().unwrap_or_default().to_string();
        let key = format!("{}|{}|{}", v["MsgSeq"], v["MsgRandom"], v["MsgTimeStamp"]);
        let c = conv(&from, &to);
        let nth = {
            let mut s = self.seen.lock();
            let n = s.entry(format!("{c:?}{key}")).or_insert(0);
            *n += 1;
            *n
        };
        {
            let mut f = self.in_flight.lock();
            let n = f.entry(c.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                *self.overlaps.lock() += 1;
            }
        }
        let reply = (self.decide)(v, nth);
        self.log.lock().push(Received {
            conversation: c.clone(),
            from,
            text: text_of(v),
            applied: !matches!(reply, Reply::Code(_)),
        });
        (c, reply)
    }

    /// Applied messages per conversation, in arrival order (texts).
    pub fn applied(&self) -> HashMap<(String, String), Vec<String>> {
        let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
        for r in self.log.lock().iter().filter(|r| r.applied) {
            out.entry(r.conversation.clone())
                .or_default()
                .push(r.text.clone());
        }
        out
    }

    /// How many requests arrived.
    pub fn received(&self) -> usize {
        self.log.lock().len()
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Received> {
        self.log.lock().clone()
    }

    /// How often a request arrived while another of its conversation was in flight.
    pub fn overlaps(&self) -> u32 {
        *self.overlaps.lock()
    }
}

async fn answer(State(rec): State<Recorder>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (c, reply) = rec.record(&v);
    let out = match reply {
        Reply::Ok => tencent_answer(0),
        Reply::Code(code) => tencent_answer(code),
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            tencent_answer(0)
        }
        Reply::ApplyThenDrop => dropped(),
    };
    *rec.in_flight.lock().get_mut(&c).unwrap() -= 1;
    out
}

fn tencent_answer(code: i64) -> Response {
    let body = if code == 0 {
        json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""})
    } else {
        json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": "injected"})
    };
    body.to_string().into_response()
}

/// The escape hatch axum leaves: a body that fails before its first byte.
/// hyper has only buffered the head by then and closes the connection
/// without writing it, so the client sees no answer at all.
fn dropped() -> Response {
    let fail = futures::stream::once(async { Err::<Bytes, _>(std::io::Error::other("dropped")) });
    Body::from_stream(fail).into_response()
}

/// A server that answers every request with one canned status and body.
pub struct Canned {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Canned {
    /// Serves `body` with `status` to every request.
    pub async fn start(status: u16, body: impl Into<Bytes>) -> Canned {
        let hits = Arc::new(AtomicUsize::new(0));
        let answer = (StatusCode::from_u16(status).unwrap(), body.into());
        let counter = hits.clone();
        let router = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer.clone())
        });
        Canned {
            addr: serve(router).await,
            hits,
        }
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
