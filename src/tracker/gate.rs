//! At most [`REGISTRATIONS_AT_ONCE`] `Register` calls are read and handled at a time.
//!
//! A `Register` may carry 4 MiB of catalog, and decoding and checking it takes about three times
//! that in memory for as long as the call runs. Without a bound, a flood of fat registrations
//! arriving together costs the tracker that much per call in flight, far past what the catalog
//! cap allows it to keep (measured: 32 in flight took a tracker holding 490 000 entries to
//! 357 MiB; see `tests/tracker_bounds.rs`). A call past the bound waits, unread, for a permit (its
//! data held back by HTTP/2 flow control, the request deadline still running); every other RPC
//! goes by without waiting.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;

/// How many `Register` calls the tracker reads and handles at once: enough to keep both cores
/// of a small machine busy, few enough that their buffers stay a few tens of MiB.
pub(crate) const REGISTRATIONS_AT_ONCE: usize = 4;

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
