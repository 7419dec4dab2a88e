//! The tracker: a registry of live peers and the files they hold, and its gRPC face.
//!
//! Soft state only: the store can be lost at any time (restart) and is rebuilt from peers'
//! re-registrations. It never sees file content. The state lives in a [`TrackerStore`]: in this
//! process by default (the registry, plain synchronous data behind a mutex that is never held
//! across an `.await`), or in Redis, shared by several trackers (`tracker --store redis://...`).
//! [`TrackerService`] is the thin async layer over it.
//!
//! * `store`: the store interface, the in-memory store and the Redis store.
//! * `registry`: who is alive, where, holding what; expiry, caps and the holder index.
//! * `limits`: the caps ([`TrackerLimits`]) and the page sizes of listings.
//! * `page`: the page tokens of `ListPeers` and `ListFiles`, checked like any input.
//! * `address`: the address others are given for a registering peer.
//! * `gate`: how many `Register` calls are read at once (their buffers are the big ones).
//! * `frames`: small answers in HTTP/2 frames small enough for h2 to batch their writes.
//! * `service`: the tonic `Tracker` implementation, one span per call.
//! * `error`: what the tracker refuses, and the gRPC code of each refusal.
//! * Here: the server's configuration and start-up, with the reaper of silent peers.

mod address;
mod error;
mod frames;
mod gate;
mod limits;
mod page;
mod registry;
mod service;
mod store;

pub(crate) use error::TrackerError;
pub use limits::TrackerLimits;
pub(crate) use service::TrackerService;
pub use store::{StoreConfig, StoreCounts, StoreError, TrackerStore, DEFAULT_REDIS_PREFIX};

use crate::grpc::ServerSecurity;
use crate::pb::tracker::tracker_server::TrackerServer;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest request the tracker decodes (a `Register` with a full catalog is the big one: this
/// fits about 12 000 files of 255-byte names, 40 000 of 30-byte ones; a larger catalog goes in
/// batches). Larger requests get RESOURCE_EXHAUSTED before any of them is read into memory.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Configuration of a tracker server.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// How often peers must heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// Serves the Tracker service (with reflection and health) on an already-bound listener until
/// `shutdown` completes, then drains in-flight calls. A background task drops silent peers.
/// Plaintext, no swarm key: [`serve_with_security`] serves a private swarm.
pub async fn serve(
    listener: TcpListener,
    config: TrackerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_security(listener, config, ServerSecurity::default(), shutdown).await
}

/// [`serve`] for a private swarm: calls need the swarm key and/or connections need TLS, as
/// `security` says (see [`crate::grpc`]). The registry has the default [`TrackerLimits`].
///
/// The security settings are an argument rather than a [`TrackerConfig`] field so that code
/// building a `TrackerConfig { heartbeat_interval }` literal keeps compiling.
pub async fn serve_with_security(
    listener: TcpListener,
    config: TrackerConfig,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_limits(
        listener,
        config,
        TrackerLimits::default(),
        security,
        shutdown,
    )
    .await
}

/// [`serve_with_security`] with the registry's caps given (for the same reason as the
/// security settings, an argument rather than a [`TrackerConfig`] field), and the default
/// connection limits.
pub async fn serve_with_limits(
    listener: TcpListener,
    config: TrackerConfig,
    limits: TrackerLimits,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let connections = crate::grpc::ServerLimits::default();
    serve_configured(listener, config, limits, security, &connections, shutdown).await
}

/// [`serve_with_limits`] with explicit connection limits too (caps on connections, idle and
/// stall timeouts: see [`crate::grpc::ServerLimits`]), as the `tracker` binary's flags set them.
/// The idle timeout is raised to three heartbeat intervals if it is shorter: a live peer's
/// connection is then never idle, and closing an idle one never races a peer's next heartbeat.
pub async fn serve_configured(
    listener: TcpListener,
    config: TrackerConfig,
    registry_limits: TrackerLimits,
    security: ServerSecurity,
    connections: &crate::grpc::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let store = TrackerStore::memory(&config, registry_limits);
    serve_with_store(listener, config, store, security, connections, shutdown).await
}

/// [`serve_configured`] over a given store (`tracker --store`): the in-memory one, or a Redis
/// store that other trackers share. The store's own caps ([`TrackerLimits`]) were given when it
/// was opened.
pub async fn serve_with_store(
    listener: TcpListener,
    config: TrackerConfig,
    store: TrackerStore,
    security: ServerSecurity,
    connections: &crate::grpc::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limits = crate::grpc::ServerLimits {
        idle_timeout: connections.idle_timeout.max(config.heartbeat_interval * 3),
        ..connections.clone()
    };
    let service = TrackerService::over(store)
        .counting_in(connections.metrics.as_ref().map(|m| m.server().clone()));
    let gauges = connections
        .metrics
        .as_ref()
        .and_then(|m| m.tracker().cloned());
    let reaper = {
        let service = service.clone();
        let period = (config.heartbeat_interval / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                reap(&service).await;
                if let Some(gauges) = &gauges {
                    match service.store().counts().await {
                        Ok(counts) => gauges.set(counts),
                        Err(e) => tracing::debug!("metrics: no counts from the store: {e}"),
                    }
                }
            }
        })
    };
    let server = TrackerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let server = gate::RegisterGate::new(server, gate::registrations_at_once());
    let server = frames::SmallFrames::new(server);
    let result = crate::grpc::serve_with_security(
        listener,
        tonic::service::Routes::new(crate::grpc::ClearLimits::new(server)),
        crate::grpc::ServiceKind::Tracker,
        &limits,
        &security,
        shutdown,
    )
    .await;
    reaper.abort();
    result
}

/// One pass of the reaper: drops the silent peers (in bounded rounds: a store answers a bounded
/// number per call). A store that cannot be reached is logged and tried again next tick.
async fn reap(service: &TrackerService) {
    // Bounded: a swarm that went silent at once is dropped over a few ticks at most.
    for _ in 0..64 {
        match service.store().expire().await {
            Ok(dropped) if dropped.is_empty() => return,
            Ok(dropped) => {
                for id in dropped {
                    tracing::info!(peer = %id, "peer dropped: no heartbeat");
                }
            }
            Err(e) => {
                tracing::warn!("reaper: {e}");
                return;
            }
        }
    }
}
