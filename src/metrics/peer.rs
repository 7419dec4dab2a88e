//! What a peer counts beyond its server: bytes served and received, downloads by outcome, and
//! pieces rejected.

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownloadOutcome {
    /// The file is verified and in place.
    Completed,
    /// It stopped on an error (no holder, not found, corrupt holders only, disk full, ...).
    Failed,
    /// Its node shut down, or it was cancelled (verified pieces kept for a later `get`).
    Cancelled,
}

/// A peer's own series; each counter resolved once, so counting is one atomic addition.
#[derive(Debug)]
pub(crate) struct PeerMetrics {
    /// Bytes of GetBlocks payload sent: the Peer service counts into it as it always did (it is
    /// the node's `bytes_uploaded`), and a scrape reads it.
    served: Arc<AtomicU64>,
    received: Counter,
    downloads: [Counter; 3],
    rejected: Counter,
}

/// Reads the served-bytes atomic at each scrape.
#[derive(Debug)]
struct Served(Arc<AtomicU64>);

impl prometheus_client::collector::Collector for Served {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let counter = ConstCounter::new(self.0.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "peer_served",
            "Bytes of file data sent in GetBlocks answers.",
            Some(&Unit::Bytes),
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl PeerMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let served = Arc::new(AtomicU64::new(0));
        registry.register_collector(Box::new(Served(served.clone())));
        let received = Counter::default();
        registry.register_with_unit(
            "peer_received",
            "Bytes of file data received in GetBlocks answers by this peer's downloads \
             (endgame duplicates and rejected data included)",
            Unit::Bytes,
            received.clone(),
        );
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let downloads = ["completed", "failed", "cancelled"]
            .map(|outcome| family.get_or_create_owned(&[("outcome", outcome)]));
        registry.register("peer_downloads", "Downloads ended, by outcome", family);
        let rejected = Counter::default();
        registry.register(
            "peer_pieces_rejected",
            "Pieces received that did not match the manifest (the holder is dropped)",
            rejected.clone(),
        );
        PeerMetrics {
            served,
            received,
            downloads,
            rejected,
        }
    }

    /// The counter the Peer service adds the bytes it sends to.
    pub(crate) fn served(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }

    /// A download received `bytes` of payload.
    pub(crate) fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    /// A download ended.
    pub(crate) fn download_ended(&self, outcome: DownloadOutcome) {
        self.downloads[outcome as usize].inc();
    }

    /// A piece did not match the manifest.
    pub(crate) fn piece_rejected(&self) {
        self.rejected.inc();
    }
}
