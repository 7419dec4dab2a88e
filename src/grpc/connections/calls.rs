//! Which calls are in flight on each connection, and whether their clients take their responses:
//! a tower layer around every service, and the response body it wraps.

use super::{Connection, Connections};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codegen::{http, Service};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Since when a response has been waiting for its client to take a frame, if it is.
pub(super) struct ResponseClock {
    base: Instant,
    /// Milliseconds after `base` when the body last handed hyper a frame, plus one; 0 while the
    /// body is being polled (the wait is the service's, not the client's) or has ended.
    handed_at: AtomicU64,
}

impl Default for ResponseClock {
    fn default() -> Self {
        ResponseClock {
            base: Instant::now(),
            handed_at: AtomicU64::new(0),
        }
    }
}

impl ResponseClock {
    pub(super) fn handed_over(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.handed_at.store(ms + 1, Ordering::Relaxed);
    }

    pub(super) fn waiting_on_server(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    pub(super) fn unread_for(&self, now: Instant) -> Option<Duration> {
        match self.handed_at.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.base + Duration::from_millis(ms - 1))),
        }
    }
}

/// One call in flight, until its response body is dropped.
pub(super) struct CallGuard {
    pub(super) connection: Arc<Connection>,
    pub(super) id: u64,
    pub(super) clock: Arc<ResponseClock>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.connection.end_call(self.id);
    }
}

/// Server middleware: tells [`Connections`] which calls are in flight on each connection and
/// whether their clients are taking their responses.
#[derive(Clone)]
pub(in crate::grpc) struct CallTrackerLayer {
    connections: Arc<Connections>,
}

impl CallTrackerLayer {
    pub(in crate::grpc) fn new(connections: Arc<Connections>) -> Self {
        CallTrackerLayer { connections }
    }
}

impl<S> tower_layer::Layer<S> for CallTrackerLayer {
    type Service = CallTracker<S>;

    fn layer(&self, inner: S) -> CallTracker<S> {
        CallTracker {
            inner,
            connections: self.connections.clone(),
        }
    }
}

/// The [`CallTrackerLayer`] around one service.
#[derive(Clone)]
pub(in crate::grpc) struct CallTracker<S> {
    inner: S,
    connections: Arc<Connections>,
}

/// The client's address as tonic recorded it, over TCP or TLS.
fn remote_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallTracker<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = remote_of(&request).and_then(|remote| self.connections.start_call(&remote));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, call }))
        })
    }
}

/// A response body that tells its call's clock when it hands hyper a frame (the client must now
/// make room for it) and when it is polled again. Its drop ends the call.
pub(in crate::grpc) struct TrackedBody<B> {
    body: B,
    call: Option<CallGuard>,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(call) = &this.call {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => call.clock.handed_over(),
                // Waiting on the service, or ended: nothing the client must take.
                _ => call.clock.waiting_on_server(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
