//! Serving: a service's routes plus reflection and health on an already-bound listener, with
//! the connection limits and security every server applies (see [`crate::grpc`]).

use super::connections::{sweep, CallTrackerLayer, Connections, Incoming};
use super::middleware::SwarmKeyLayer;
use super::{ServerLimits, ServerSecurity, MAX_FRAME_SIZE};
use std::future::Future;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;

/// HTTP/2 receive window of one stream on a server: what a client may send on one call before
/// the server has read it. What servers receive is small (requests; the largest, a tracker
/// `Register` batch, is 4 MiB), while bulk data flows the other way and is paced by the
/// *client's* window (see [`super::client::STREAM_WINDOW`]). So this stays at hyper's 1 MiB,
/// set explicitly: a larger one would only let each client make a server hold more unread data.
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 receive window of a whole server connection: at most this much unread request data
/// per connection, whatever the number of streams (hyper's default, set explicitly).
pub(crate) const CONNECTION_WINDOW: u32 = 1 << 20;

/// The encoded `FileDescriptorSet` of `proto/*.proto`, for server reflection.
pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2pshare_descriptor.bin"));

/// Which service a server runs (names the health entry).
#[derive(Debug, Clone, Copy)]
pub enum ServiceKind {
    /// `p2pshare.tracker.v1.Tracker`.
    Tracker,
    /// `p2pshare.peer.v1.Peer`.
    Peer,
}

impl ServiceKind {
    /// The service's full name (`package.Service`).
    pub(crate) fn name(self) -> &'static str {
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
    let connections = Connections::new(limits);
    let incoming = Incoming::new(listener, connections.clone(), limits.max_connections);
    // Stops with this future, also when it is dropped unfinished (a peer aborts its server
    // task when draining takes too long).
    let _sweeper = AbortOnDrop(tokio::spawn(sweep(connections.clone())));
    builder
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(limits.request_timeout)
        // Dead clients are noticed even when no call is in flight.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // Outermost, so it sees every call, refused ones included.
        .layer(CallTrackerLayer::new(connections))
        // Before the swarm-key check, so its refusals are counted.
        .layer(crate::metrics::RpcLayer::new(limits.metrics.as_ref()))
        .layer(SwarmKeyLayer::new(security.swarm_key.as_ref()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::client::tests::advertised_windows;
    use tokio::io::AsyncWriteExt;

    /// What the server tells every client in its first frames: the windows above, so a client
    /// can have at most this much request data unread by the server.
    #[tokio::test]
    async fn the_server_advertises_its_windows() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                let limits = ServerLimits::default();
                serve_with(
                    listener,
                    Routes::default(),
                    ServiceKind::Peer,
                    &limits,
                    stop.cancelled_owned(),
                )
                .await
            }
        });
        let mut io = tokio::net::TcpStream::connect(address).await.unwrap();
        // The client preface and an empty SETTINGS frame.
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let windows = advertised_windows(&mut io, false).await;
        assert_eq!(windows, (STREAM_WINDOW, CONNECTION_WINDOW));
        stop.cancel();
        drop(io);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    }
}
