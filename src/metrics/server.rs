//! What every gRPC server counts: its calls (by method and code, through [`super::rpc`]), its
//! connections, and what its limits refused.

use super::rpc::RpcTable;
use crate::grpc::ServiceKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A limit that refused a connection or a stream, named after the flag that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A connection closed at once: its address had `--max-connections-per-address` open.
    ConnectionsPerAddress,
    /// A GetBlocks stream refused: `--max-streams` streams in flight.
    Streams,
    /// A GetBlocks stream refused: its address had `--max-streams-per-address` in flight.
    StreamsPerAddress,
    /// A GetBlocks stream refused: every one of `--upload-slots` taken (choked).
    UploadSlots,
    /// A registration refused: the tracker holds `--max-peers` live peers.
    TrackerPeers,
    /// A registration refused: `--max-peers-per-ip` live peers from its address.
    TrackerPeersPerIp,
    /// A catalog refused: past `--max-files-per-peer`.
    TrackerFilesPerPeer,
    /// A catalog refused: past `--max-files-per-ip` for its address.
    TrackerFilesPerIp,
    /// A catalog refused: the whole catalog at `--max-catalog-files`.
    TrackerCatalog,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::ConnectionsPerAddress,
        Refusal::Streams,
        Refusal::StreamsPerAddress,
        Refusal::UploadSlots,
        Refusal::TrackerPeers,
        Refusal::TrackerPeersPerIp,
        Refusal::TrackerFilesPerPeer,
        Refusal::TrackerFilesPerIp,
        Refusal::TrackerCatalog,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerAddress => "max_connections_per_address",
            Refusal::Streams => "max_streams",
            Refusal::StreamsPerAddress => "max_streams_per_address",
            Refusal::UploadSlots => "upload_slots",
            Refusal::TrackerPeers => "max_peers",
            Refusal::TrackerPeersPerIp => "max_peers_per_ip",
            Refusal::TrackerFilesPerPeer => "max_files_per_peer",
            Refusal::TrackerFilesPerIp => "max_files_per_ip",
            Refusal::TrackerCatalog => "max_catalog_files",
        }
    }

    /// Whether a server of `kind` has this limit.
    fn applies_to(self, kind: ServiceKind) -> bool {
        match self {
            Refusal::ConnectionsPerAddress => true,
            Refusal::Streams | Refusal::StreamsPerAddress | Refusal::UploadSlots => {
                matches!(kind, ServiceKind::Peer)
            }
            Refusal::TrackerPeers
            | Refusal::TrackerPeersPerIp
            | Refusal::TrackerFilesPerPeer
            | Refusal::TrackerFilesPerIp
            | Refusal::TrackerCatalog => matches!(kind, ServiceKind::Tracker),
        }
    }
}

/// Why the server closed a connection (see `grpc::connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// No call in flight for the idle timeout.
    Idle,
    /// A response unread for the stall timeout.
    Stalled,
}

type Labels = [(&'static str, &'static str); 1];

/// The series every server has; each counter resolved once, here, so counting is one atomic
/// addition.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    pub(super) rpcs: std::sync::Arc<RpcTable>,
    connections_open: Gauge,
    connections_max: Gauge,
    cap_reached: Counter,
    refusals: [Counter; Refusal::ALL.len()],
    closed: [Counter; 2],
}

impl ServerMetrics {
    pub(super) fn new(kind: ServiceKind, registry: &mut Registry) -> Self {
        let rpcs = std::sync::Arc::new(RpcTable::new(kind));
        registry.register_collector(Box::new(rpcs.clone()));
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the gRPC port",
            connections_open.clone(),
        );
        let connections_max = Gauge::default();
        registry.register(
            "connections_max",
            "Most connections served at once (--max-connections)",
            connections_max.clone(),
        );
        let cap_reached = Counter::default();
        registry.register(
            "connection_cap_reached",
            "Times the server reached --max-connections and stopped accepting until a \
             connection closed",
            cap_reached.clone(),
        );
        let refusals_family = Family::<Labels, Counter>::default();
        let refusals = Refusal::ALL.map(|r| {
            if r.applies_to(kind) {
                refusals_family.get_or_create_owned(&[("limit", r.label())])
            } else {
                // Counted nowhere and not shown: this server has no such limit.
                Counter::default()
            }
        });
        registry.register(
            "refusals",
            "Connections, streams and registrations refused by a limit, by the flag that sets it",
            refusals_family,
        );
        let closed_family = Family::<Labels, Counter>::default();
        let closed =
            ["idle", "stalled"].map(|r| closed_family.get_or_create_owned(&[("reason", r)]));
        registry.register(
            "connections_closed",
            "Connections the server closed: idle (no call for --idle-connection-timeout) or \
             stalled (a response unread for --client-stall-timeout)",
            closed_family,
        );
        ServerMetrics {
            rpcs,
            connections_open,
            connections_max,
            cap_reached,
            refusals,
            closed,
        }
    }

    /// A connection was admitted.
    pub(crate) fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// An admitted connection is gone.
    pub(crate) fn connection_ended(&self) {
        self.connections_open.dec();
    }

    /// The server's cap on connections (shown as a gauge beside the open ones).
    pub(crate) fn set_connection_cap(&self, cap: usize) {
        self.connections_max
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// The server reached its connection cap and stopped accepting.
    pub(crate) fn connection_cap_reached(&self) {
        self.cap_reached.inc();
    }

    /// A limit refused a connection or a stream.
    pub(crate) fn refused(&self, refusal: Refusal) {
        // `ALL` lists the variants in declaration order.
        self.refusals[refusal as usize].inc();
    }

    /// The server closed a connection.
    pub(crate) fn closed(&self, why: Closed) {
        self.closed[why as usize].inc();
    }
}
