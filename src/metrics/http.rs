//! The exporter: `GET /metrics` over HTTP/1.1 (hyper) on its own listener, bounded.

use super::Metrics;
use crate::grpc::ServiceKind;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Scrapes served at once; more connections wait in the listener's backlog. A scraper or two,
/// and a person with curl, need no more.
pub const MAX_SCRAPES: usize = 4;
/// A client must have sent its request's header within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, whatever it is doing (the answer is
/// a few KiB: a client that cannot take it in this long holds a slot for nothing).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait after an accept error (EMFILE and the like), so a failing accept does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `metrics` on `listener` (`GET /metrics`; 404 for any other path, 405 for another
/// method) until `shutdown` completes; then stops accepting and ends the scrapes in flight.
/// One request per connection, at most [`MAX_SCRAPES`] at once, each within
/// [`HEADER_READ_TIMEOUT`] and [`CONNECTION_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let mut scrapes = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, nothing is accepted (and nothing costs us anything).
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "metrics: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        scrapes.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&metrics, &request);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "metrics: connection failed"),
                Err(_) => {
                    tracing::debug!("metrics: connection closed after {CONNECTION_TIMEOUT:?}")
                }
            }
        });
        // Finished scrapes are reaped here, so the set holds at most MAX_SCRAPES.
        while scrapes.try_join_next().is_some() {}
    }
    scrapes.shutdown().await;
    Ok(())
}

/// The answer to one request.
fn answer<B>(metrics: &Metrics, request: &Request<B>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    // OpenMetrics to a scraper that asks for it (Prometheus does), else the classic text.
    let openmetrics = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if openmetrics {
        (metrics.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (metrics.encode_text(), TEXT_CONTENT_TYPE)
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// For the binaries' `--metrics-addr`: metrics for a server of `kind`, served on `addr` (port 0
/// picks one) in the background for the life of the process. Returns them and the bound address.
pub async fn spawn_exporter(
    addr: SocketAddr,
    kind: ServiceKind,
) -> std::io::Result<(Metrics, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let metrics = Metrics::new(kind);
    let served = metrics.clone();
    tokio::spawn(async move {
        if let Err(error) = serve(listener, served, std::future::pending()).await {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok((metrics, local))
}
