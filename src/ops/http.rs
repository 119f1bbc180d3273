//! The ops endpoint: `/healthz` (alive), `/readyz` (database reachable and
//! not draining), `/metrics` (Prometheus).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Shared state the endpoint reports on.
#[derive(Clone)]
pub struct Health {
    pub store: Store,
    pub draining: Arc<AtomicBool>,
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

async fn handle(h: Health, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if h.draining.load(Ordering::Acquire) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                match tokio::time::timeout(Duration::from_secs(2), h.store.ping()).await {
                    Ok(Ok(())) => reply(StatusCode::OK, "text/plain", "ready\n"),
                    _ => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "database unreachable\n",
                    ),
                }
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            super::metrics::install().render(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

/// Binds `listen` and serves until `stop`; returns the bound address.
pub async fn serve(listen: &str, health: Health, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            let h = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(h.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    tracing::info!(%addr, "ops endpoint listening");
    Ok(addr)
}
