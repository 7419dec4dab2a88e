//! How many `Register` calls are read and handled at a time: [`registrations_at_once`].
//!
//! A `Register` may carry 4 MiB of catalog, and decoding, checking and inserting it takes about
//! three times that in memory and most of a core for as long as the call runs. Without a bound, a
//! flood of fat registrations arriving together costs the tracker that much memory per call in
//! flight, and takes every runtime thread, so that heartbeats and `WhoHas` of honest peers wait
//! behind it. Measured in a debug build on 2 cores with the flood test of
//! `tests/tracker_bounds.rs` (fat registrations of 12 000 files with 250-byte names): ungated,
//! 32 in flight took the tracker to 357 MiB; with 16 in flight, an honest WhoHas + Heartbeat
//! round during the flood took a median 0.7 s with 4 read at once, 0.5 s with 2, and 1.1 ms with
//! 1 (298 MiB; the flood itself also went faster, 15 s against 22 s, with less contention for
//! the registry's lock).
//!
//! A call past the bound waits, unread, for a permit (its data held back by HTTP/2 flow control;
//! the server's request timeout, 30 s, still runs); every other RPC goes by without waiting. A
//! client that takes a permit and then sends its request slowly holds it at most that timeout:
//! it can delay registrations, never heartbeats or queries.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;

/// How many `Register` calls the tracker reads and handles at once: half the cores (at least
/// one), so that the other half always serves heartbeats and queries.
pub(crate) fn registrations_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The path of the gated RPC.
const REGISTER_PATH: &str = "/p2pshare.tracker.v1.Tracker/Register";

/// Wraps the generated Tracker server: `Register` calls take a permit before their request is
/// read.
#[derive(Debug, Clone)]
pub(crate) struct RegisterGate<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> RegisterGate<S> {
    /// Wraps `inner`, letting `at_once` registrations in at a time.
    pub(crate) fn new(inner: S, at_once: usize) -> Self {
        RegisterGate {
            inner,
            permits: Arc::new(Semaphore::new(at_once)),
        }
    }
}

impl<S: NamedService> NamedService for RegisterGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RegisterGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != REGISTER_PATH {
            return Box::pin(self.inner.call(request));
        }
        // The service made ready is the one called (tower's rule); a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permits = self.permits.clone();
        Box::pin(async move {
            // The semaphore is never closed; if it were, the call would go on ungated.
            let _permit = permits.acquire_owned().await.ok();
            inner.call(request).await
        })
    }
}
