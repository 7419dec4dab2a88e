//! gRPC plumbing shared by the tracker and the peer: serving with reflection and health on a bound
//! listener, and client channels tuned for bulk streaming.
//!
//! # Limits every server applies (hostile clients)
//!
//! * **Request message size**: per service, 64 KiB for the Peer service, 4 MiB for the Tracker.
//!   Past it: RESOURCE_EXHAUSTED ([`ClearLimits`]), decided on the length prefix before the body
//!   is read.
//! * **Calls in flight on one connection** (the per-client cap):
//!   [`ServerLimits::max_streams_per_connection`]. Past it the client's HTTP/2 layer waits for a
//!   slot (a client ignoring the setting has its extra streams refused), so one connection never
//!   holds more than this share of a peer's `GetBlocks` streams.
//! * **Time to send the request and get the call started**: [`ServerLimits::request_timeout`].
//!   Past it: CANCELLED, so a client that opens calls and trickles (or never finishes) their
//!   requests holds nothing for long.
//! * **Dead or silent connections**: HTTP/2 keepalive pings every
//!   [`ServerLimits::keepalive_interval`], answer due within [`ServerLimits::keepalive_timeout`];
//!   then the connection is closed and its calls end.
//! * **Header block size**: 16 KiB (hyper's default); past it the stream is refused.
//! * **Compressed requests**: not accepted (UNIMPLEMENTED): no decompression bombs.
//!
//! Connections that are alive but idle are kept (tonic has no idle timeout for HTTP/2, and
//! closing them would only cost the next call a handshake). What a streaming call may hold once it
//! runs is the service's business: the Peer service caps its `GetBlocks` streams and ends one whose
//! client stops reading (see [`crate::peer::server`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

/// The encoded `FileDescriptorSet` of `proto/*.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2pshare_descriptor.bin"));

/// HTTP/2 frame size both sides accept: 1 MiB frames move bulk data with far fewer frames (and
/// syscalls) than the 16 KiB default; measured ~2x on loopback streaming.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Largest gRPC message accepted, either way. A `GetBlocks` message carries at most
/// [`crate::peer::server::MAX_BLOCKS_PER_MESSAGE`] blocks, far below this.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;
/// How long a client waits for a TCP connection before giving up on a host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Limits a server applies to every connection it accepts. See the module documentation.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Calls (HTTP/2 streams) one connection may have open at once: the per-client cap. More
    /// wait on the client side until one ends. The downloader opens 2 streams per holder, so 32
    /// leaves ample room for several downloads over one connection.
    pub max_streams_per_connection: u32,
    /// How long a call may take to deliver its request and have its handler answer (for a
    /// server-streaming call: until the stream starts; the stream itself is not cut).
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings, so dead clients are noticed even when no call runs.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_streams_per_connection: 32,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Which service a server runs (names the health entry).
#[derive(Debug, Clone, Copy)]
pub enum ServiceKind {
    /// `p2pshare.tracker.v1.Tracker`.
    Tracker,
    /// `p2pshare.peer.v1.Peer`.
    Peer,
}

impl ServiceKind {
    fn name(self) -> &'static str {
        match self {
            ServiceKind::Tracker => "p2pshare.tracker.v1.Tracker",
            ServiceKind::Peer => "p2pshare.peer.v1.Peer",
        }
    }
}

/// Serves `routes` plus server reflection (v1 and v1alpha, for grpcurl old and new) and the
/// standard health service on `listener` until `shutdown` completes; then stops accepting and
/// drains the calls in flight. Applies the default [`ServerLimits`].
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, routes, kind, &ServerLimits::default(), shutdown).await
}

/// [`serve`] with explicit connection limits.
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Reflection lists only what this server really serves: its own service (not the other
    // one in the shared descriptor set), health and reflection itself.
    let reflection = || {
        [
            kind.name(),
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(name),
        )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptor set is valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptor set is valid");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(kind.name(), tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Server::builder()
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(limits.request_timeout)
        // Dead clients are noticed even when no call is in flight.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// A lazily connecting channel to `address` (`host:port`), tuned for bulk streaming.
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_lazy())
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
