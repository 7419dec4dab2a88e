//! Metrics operators can scrape: `--metrics-addr HOST:PORT` on `tracker` and `peer` serves
//! `GET /metrics` in the Prometheus text format (version 0.0.4; OpenMetrics to a scraper that
//! asks for it), encoded by `prometheus-client`, the official Rust client.
//!
//! # Series
//!
//! Every server (tracker and peer):
//!
//! * `p2pshare_rpcs_handled_total{service,method,code}`: calls answered, by method and gRPC
//!   status code (`OK`, `NOT_FOUND`, ...), streams included: the code is read from a
//!   trailers-only answer's headers, or from the trailers at the end of the body. A call whose
//!   client went away before its status counts as `CANCELLED`. Methods this server does not
//!   serve count under `method="unknown"`, so a client cannot grow the label set. A series
//!   appears at its first call.
//! * `p2pshare_rpcs_active{service,method}`: calls (HTTP/2 streams) in flight.
//! * `p2pshare_connections_open`, `p2pshare_connections_max`: connections open, and the cap
//!   (`--max-connections`).
//! * `p2pshare_refusals_total{limit}`: what a limit refused, by the flag that sets it:
//!   `max_connections_per_address` (connections closed as soon as accepted) everywhere;
//!   `max_streams`, `max_streams_per_address` and `upload_slots` (GetBlocks streams refused) on a
//!   peer. The tracker's caps answer RESOURCE_EXHAUSTED and show in the codes above.
//! * `p2pshare_connection_cap_reached_total`: times the server reached `--max-connections` and
//!   stopped accepting until a connection closed.
//! * `p2pshare_connections_closed_total{reason}`: connections the server closed, `idle` (no call
//!   for `--idle-connection-timeout`) or `stalled` (a response unread for
//!   `--client-stall-timeout`).
//!
//! A tracker: `p2pshare_tracker_peers`, `p2pshare_tracker_catalog_entries`,
//! `p2pshare_tracker_files` (gauges, updated at each expiry tick: half a heartbeat interval).
//!
//! A peer: `p2pshare_peer_served_bytes_total` (GetBlocks payload sent),
//! `p2pshare_peer_received_bytes_total` (GetBlocks payload received by downloads, duplicates of
//! the endgame and rejected data included), `p2pshare_peer_downloads_total{outcome}`
//! (`completed`, `failed`, `cancelled`), `p2pshare_peer_pieces_rejected_total` (pieces that did
//! not match the manifest).
//!
//! # Cost
//!
//! Counters are atomics resolved when the server starts: a call costs a lookup of its path in a
//! table of a dozen methods and two atomic additions; a GetBlocks message one more (the bytes
//! served counter is the one the node always kept). Nothing is allocated or locked per block.
//! Encoding happens only when scraped.
//!
//! # The exporter
//!
//! [`serve`] answers on its own listener (not the gRPC port): `GET /metrics`, 404 elsewhere, at
//! most [`MAX_SCRAPES`] connections at once, the request's header due within
//! [`HEADER_READ_TIMEOUT`], one request per connection, each connection over within
//! [`CONNECTION_TIMEOUT`].

mod http;
mod peer;
mod rpc;
mod server;
mod tracker;

pub use http::{serve, spawn_exporter, CONNECTION_TIMEOUT, HEADER_READ_TIMEOUT, MAX_SCRAPES};
pub(crate) use peer::{DownloadOutcome, PeerMetrics};
pub(crate) use rpc::RpcLayer;
pub(crate) use server::{Closed, Refusal, ServerMetrics};
pub(crate) use tracker::TrackerGauges;

use crate::grpc::ServiceKind;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The metrics of one process (a tracker or a peer): a cheap handle, cloned into every part that
/// counts. Give it to the server through [`crate::grpc::ServerLimits::metrics`] and serve it with
/// [`serve`].
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Complete once built: scrapes only read it, so it needs no lock.
    registry: Registry,
    server: Arc<ServerMetrics>,
    peer: Option<Arc<PeerMetrics>>,
    tracker: Option<TrackerGauges>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The series of a server of `kind` (see the module documentation), all at zero.
    pub fn new(kind: ServiceKind) -> Self {
        let mut registry = Registry::with_prefix("p2pshare");
        let server = Arc::new(ServerMetrics::new(kind, &mut registry));
        let (peer, tracker) = match kind {
            ServiceKind::Peer => (Some(Arc::new(PeerMetrics::new(&mut registry))), None),
            ServiceKind::Tracker => (None, Some(TrackerGauges::new(&mut registry))),
        };
        Metrics {
            inner: Arc::new(Inner {
                registry,
                server,
                peer,
                tracker,
            }),
        }
    }

    /// Every series in the Prometheus text format (version 0.0.4).
    pub fn encode_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, nor can our collectors.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }

    /// Every series in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// What every server counts.
    pub(crate) fn server(&self) -> &Arc<ServerMetrics> {
        &self.inner.server
    }

    /// What a peer counts (none for a tracker's metrics).
    pub(crate) fn peer(&self) -> Option<&Arc<PeerMetrics>> {
        self.inner.peer.as_ref()
    }

    /// The tracker's gauges (none for a peer's metrics).
    pub(crate) fn tracker(&self) -> Option<&TrackerGauges> {
        self.inner.tracker.as_ref()
    }
}
