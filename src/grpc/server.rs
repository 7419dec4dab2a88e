//! Serving: a service's routes plus reflection and health on an already-bound listener, with
//! the connection limits and security every server applies (see [`crate::grpc`]).

use super::middleware::SwarmKeyLayer;
use super::{ServerSecurity, MAX_FRAME_SIZE};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

/// The encoded `FileDescriptorSet` of `proto/*.proto`, for server reflection.
pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2pshare_descriptor.bin"));

/// Limits a server applies to every connection it accepts. See the module documentation.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Calls (HTTP/2 streams) one connection may have open at once: the per-client cap. More
    /// wait on the client side until one ends. The downloader opens 2 streams per holder, and
    /// each download its own connection, so 32 is far above what one download uses; it caps
    /// clients that open many streams on one connection.
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
/// drains the calls in flight. Applies `limits` and no security (plaintext, no swarm key).
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_security(
        listener,
        routes,
        kind,
        limits,
        &ServerSecurity::default(),
        shutdown,
    )
    .await
}

/// [`serve_with`] for a private swarm: TLS and/or a swarm key as `security` says (see the module
/// documentation). With `ServerSecurity::default()` it is exactly [`serve_with`].
pub async fn serve_with_security(
    listener: TcpListener,
    routes: Routes,
    kind: ServiceKind,
    limits: &ServerLimits,
    security: &ServerSecurity,
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
    let mut builder = Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    builder
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(limits.request_timeout)
        // Dead clients are noticed even when no call is in flight.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(SwarmKeyLayer::new(security.swarm_key.as_ref()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming_nodelay(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off. `Server::tcp_nodelay` only applies to
/// listeners tonic binds itself; on ours, small answers would wait for the peer's delayed ACK
/// (about 40 ms a request, measured: WhoHas fell to ~90 requests/s).
fn incoming_nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        // A socket that refuses the option still works, only slower.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    })
}
