//! Middleware around calls: on the server, the swarm-key check ([`SwarmKeyLayer`]) and the
//! clear answer to oversized requests ([`ClearLimits`]); on the client, the swarm key added to
//! every call ([`SwarmKeyInterceptor`]). The statuses built here are protocol-level answers, not
//! domain errors.

use super::security::{SwarmKey, SWARM_KEY_ENV, SWARM_KEY_HEADER};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

/// Calls to these paths need no swarm key: the standard health service, so orchestrators can
/// probe a private server.
const OPEN_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Adds the swarm key (if any) to every outgoing call's metadata.
#[derive(Clone)]
pub struct SwarmKeyInterceptor {
    key: Option<MetadataValue<Ascii>>,
}

impl SwarmKeyInterceptor {
    /// Sends `key` on every call (nothing without one).
    pub(super) fn new(key: Option<&SwarmKey>) -> Self {
        SwarmKeyInterceptor {
            key: key.map(|k| k.header().clone()),
        }
    }
}

impl fmt::Debug for SwarmKeyInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmKeyInterceptor")
            .field("sends_key", &self.key.is_some())
            .finish()
    }
}

impl Interceptor for SwarmKeyInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.key {
            request.metadata_mut().insert(SWARM_KEY_HEADER, key.clone());
        }
        Ok(request)
    }
}

/// Server middleware: calls without the right swarm key are answered UNAUTHENTICATED before any
/// service sees them (health excepted). Without an expected key it lets everything through.
#[derive(Debug, Clone)]
pub(super) struct SwarmKeyLayer {
    expected: Option<blake3::Hash>,
}

impl SwarmKeyLayer {
    /// Demands `key` (nothing without one).
    pub(super) fn new(key: Option<&SwarmKey>) -> Self {
        SwarmKeyLayer {
            expected: key.map(SwarmKey::digest),
        }
    }
}

impl<S> tower_layer::Layer<S> for SwarmKeyLayer {
    type Service = SwarmKeyGuard<S>;

    fn layer(&self, inner: S) -> SwarmKeyGuard<S> {
        SwarmKeyGuard {
            inner,
            expected: self.expected,
        }
    }
}

/// The [`SwarmKeyLayer`] around one service.
#[derive(Debug, Clone)]
pub(super) struct SwarmKeyGuard<S> {
    inner: S,
    expected: Option<blake3::Hash>,
}

/// Whether `request` may pass a server expecting the key whose digest is `expected`.
fn check_swarm_key<B>(
    expected: Option<&blake3::Hash>,
    request: &http::Request<B>,
) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if request.uri().path().starts_with(OPEN_PATH_PREFIX) {
        return Ok(());
    }
    match request.headers().get(SWARM_KEY_HEADER) {
        None => Err(Status::unauthenticated(format!(
            "swarm key required: this is a private swarm (give the swarm's key with --swarm-key \
             or {SWARM_KEY_ENV})"
        ))),
        // Constant-time comparison of digests: neither the time nor the outcome depends on how
        // much of the key was right, nor on the key's length.
        Some(presented)
            if bool::from(
                blake3::hash(presented.as_bytes())
                    .as_bytes()
                    .ct_eq(expected.as_bytes()),
            ) =>
        {
            Ok(())
        }
        Some(_) => Err(Status::unauthenticated(
            "wrong swarm key: this private swarm uses another key",
        )),
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for SwarmKeyGuard<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match check_swarm_key(self.expected.as_ref(), &request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => {
                tracing::debug!(path = %request.uri().path(), "refused: {}", status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Wraps a generated gRPC server so that a request over its decoding limit is answered
/// RESOURCE_EXHAUSTED, as the gRPC status-code guide asks, instead of tonic's OUT_OF_RANGE (which
/// the Peer service uses for "blocks past the end of the file": a client must be able to tell a
/// request it should not resend from a range it should shorten).
#[derive(Debug, Clone)]
pub struct ClearLimits<S> {
    inner: S,
}

impl<S> ClearLimits<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ClearLimits { inner }
    }
}

impl<S: NamedService> NamedService for ClearLimits<S> {
    const NAME: &'static str = S::NAME;
}

/// How tonic words its "decoded message length too large" status.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

impl<S> Service<http::Request<Body>> for ClearLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            // A request that fails to decode is answered trailers-only: the status is in the
            // headers, before any body.
            if let Some(status) = Status::from_header_map(response.headers()) {
                if status.code() == Code::OutOfRange
                    && status.message().starts_with(TONIC_TOO_LARGE)
                {
                    let clear = Status::resource_exhausted(format!(
                        "request too large{}",
                        &status.message()[TONIC_TOO_LARGE.len()..]
                    ));
                    if clear.add_header(response.headers_mut()).is_err() {
                        tracing::debug!("could not rewrite an oversized-request status");
                    }
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, key: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path);
        if let Some(key) = key {
            request = request.header(SWARM_KEY_HEADER, key);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn the_swarm_key_guards_every_path_but_health() {
        let key = SwarmKey::new("s3cret").unwrap();
        let expected = Some(key.digest());
        let tracker = "/p2pshare.tracker.v1.Tracker/ListPeers";
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let health = "/grpc.health.v1.Health/Check";

        assert!(check_swarm_key(expected.as_ref(), &call(tracker, Some("s3cret"))).is_ok());
        for (path, presented, says) in [
            (tracker, None, "swarm key required"),
            (reflection, None, "swarm key required"),
            (tracker, Some("s3cre"), "wrong swarm key"),
            (tracker, Some("s3cret "), "wrong swarm key"),
            (tracker, Some(""), "wrong swarm key"),
        ] {
            let status = check_swarm_key(expected.as_ref(), &call(path, presented)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().starts_with(says), "{}", status.message());
        }
        assert!(check_swarm_key(expected.as_ref(), &call(health, None)).is_ok());
        // Without a key configured, everything passes.
        assert!(check_swarm_key(None, &call(tracker, None)).is_ok());
    }

    #[test]
    fn the_interceptor_sends_the_key_only_when_there_is_one() {
        let mut with = SwarmKeyInterceptor::new(Some(&SwarmKey::new("k3y").unwrap()));
        let request = with.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get(SWARM_KEY_HEADER).unwrap(), "k3y");
        let mut without = SwarmKeyInterceptor::new(None);
        let request = without.call(Request::new(())).unwrap();
        assert!(request.metadata().get(SWARM_KEY_HEADER).is_none());
    }
}
