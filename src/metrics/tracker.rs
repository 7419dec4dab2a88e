//! The tracker's gauges: what its store holds now ([`StoreCounts`], memory or Redis alike), set
//! from outside (the expiry tick).

use crate::tracker::StoreCounts;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The tracker's gauges; the tracker sets them with [`TrackerGauges::set`].
#[derive(Debug, Clone)]
pub(crate) struct TrackerGauges {
    peers: Gauge,
    catalog_entries: Gauge,
    files: Gauge,
}

impl TrackerGauges {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let gauges = TrackerGauges {
            peers: Gauge::default(),
            catalog_entries: Gauge::default(),
            files: Gauge::default(),
        };
        registry.register(
            "tracker_peers",
            "Live peers registered",
            gauges.peers.clone(),
        );
        registry.register(
            "tracker_catalog_entries",
            "Catalog entries, one per file per peer (whole or partial)",
            gauges.catalog_entries.clone(),
        );
        registry.register(
            "tracker_files",
            "Distinct files (name, content id, size) held by at least one live peer",
            gauges.files.clone(),
        );
        gauges
    }

    /// Shows `counts`.
    pub(crate) fn set(&self, counts: StoreCounts) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.peers.set(gauge(counts.peers));
        self.catalog_entries.set(gauge(counts.catalog_entries));
        self.files.set(gauge(counts.files));
    }
}
