//! The tracker's bounds: how many peers and catalog entries it keeps, in all and per address,
//! and how much one listing call returns. Past a cap a request gets RESOURCE_EXHAUSTED naming
//! it; nothing already registered is disturbed.
//!
//! Memory follows the caps. Measured with `tests/tracker_bounds.rs` (VmHWM of a `tracker`
//! process): about 350 bytes an entry with 33-byte names (875 000 entries: 308 MiB), 590 with
//! the longest, 250-byte, names each held once (492 000 entries: 298 MiB), much less where names
//! are shared (20 000 peers x 5 files: 30 MiB). So the default catalog cap (1,000,000) keeps a
//! tracker flooded with maximal registrations under 600 MiB.

/// Caps on what a tracker keeps. Each is an option of the `tracker` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerLimits {
    /// Most live peers in all (`--max-peers`).
    pub max_peers: usize,
    /// Most live peers registered from one observed IP address (`--max-peers-per-ip`): one
    /// host, or one address translator, cannot take the whole peer table.
    pub max_peers_per_ip: usize,
    /// Most files in one peer's catalog (`--max-files-per-peer`).
    pub max_files_per_peer: usize,
    /// Most catalog entries of all the peers registered from one observed IP address
    /// (`--max-files-per-ip`): one address cannot fill the whole catalog.
    pub max_files_per_ip: usize,
    /// Most catalog entries (one per file per peer) in all (`--max-catalog-files`).
    pub max_catalog_files: usize,
}

impl TrackerLimits {
    /// No cap that a test or a benchmark on one host would meet (every cap at `usize::MAX`).
    pub fn unlimited() -> Self {
        TrackerLimits {
            max_peers: usize::MAX,
            max_peers_per_ip: usize::MAX,
            max_files_per_peer: usize::MAX,
            max_files_per_ip: usize::MAX,
            max_catalog_files: usize::MAX,
        }
    }
}

impl Default for TrackerLimits {
    fn default() -> Self {
        TrackerLimits {
            max_peers: 100_000,
            // A LAN host runs one peer or a few; an address translator in front of a lab or a
            // container host may carry some hundreds.
            max_peers_per_ip: 256,
            max_files_per_peer: 100_000,
            max_files_per_ip: 200_000,
            // 100,000 peers x 10 files: about 200 MiB with shared names, under 600 MiB with
            // every entry the longest name held once.
            max_catalog_files: 1_000_000,
        }
    }
}

/// Entries in a listing page when the request does not say (`page_size` 0).
pub(crate) const DEFAULT_PAGE_SIZE: usize = 1000;
/// Most entries in a listing page: 5000 entries of the longest names and addresses stay under
/// 2 MiB, well inside any gRPC client's default 4 MiB.
pub(crate) const MAX_PAGE_SIZE: usize = 5000;
/// Most records one listing call looks at (holders of the files it lists, or peers it skips
/// as expired) before it answers with what it has: a page costs the tracker a bounded time
/// under its lock whatever the registry holds.
pub(crate) const MAX_PAGE_WORK: usize = 50_000;

/// The page size a request asked for, defaulted and capped.
pub(crate) fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15's scale (100,000 peers x 10 files) fits a tracker started with no options.
    #[test]
    fn the_defaults_hold_a_hundred_thousand_peers_of_ten_files() {
        let d = TrackerLimits::default();
        assert!(d.max_peers >= 100_000, "{d:?}");
        assert!(d.max_catalog_files >= 100_000 * 10, "{d:?}");
        assert!(d.max_files_per_peer >= 10, "{d:?}");
    }
}
