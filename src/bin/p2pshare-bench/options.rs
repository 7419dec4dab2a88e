//! The command line: which scenarios to run and their sizes.

use p2pshare::human;
use std::path::PathBuf;

/// A scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// The plain TCP copy every ratio refers to (run whenever a download scenario is).
    Baseline,
    /// Download from one holder.
    OneHolder,
    /// Download from three holders.
    ThreeHolders,
    /// Holders capped at R: K = 1, 2, 4, 8 of them, and four capped at R, 2R, 4R, 8R.
    RateCapped,
    /// Per-file overhead: `get` of small files, one by one and in parallel.
    SmallFiles,
    /// Many parallel downloads of one file from several holders.
    Stress,
    /// `WhoHas` load on a tracker holding many peers.
    Tracker,
    /// The tracker scenario on the Redis store (`redis-server` on PATH): one tracker, then two
    /// sharing the store, same run. Only when asked for by name.
    TrackerRedis,
    /// First scan of a folder and restart over it unchanged.
    Startup,
    /// One seeder capped at R, N downloaders (the real `peer` binary) started together.
    FlashCrowd,
    /// Hosts in network namespaces (root): capped links, added latency, pulled cables, against
    /// plain TCP on the same paths. Only when asked for by name (minutes long, needs root).
    Network,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub(crate) const ALL: [Scenario; 11] = [
        Scenario::Baseline,
        Scenario::OneHolder,
        Scenario::ThreeHolders,
        Scenario::RateCapped,
        Scenario::SmallFiles,
        Scenario::Stress,
        Scenario::Tracker,
        Scenario::TrackerRedis,
        Scenario::Startup,
        Scenario::FlashCrowd,
        Scenario::Network,
    ];
}

/// Options of the swarm benchmark (the `p2pshare-bench` command line).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SwarmOptions {
    /// Size of the file of the baseline and the one-/three-holder downloads (e.g. 256M, 1G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    pub(crate) size: u64,
    /// Runs per scenario; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) runs: u32,
    /// Scenarios to run, comma-separated (default: all). The baseline runs whenever a download
    /// scenario does.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) scenarios: Vec<Scenario>,
    /// R, the upload cap per holder in the rate-capped scenario, per second (e.g. 20M).
    #[arg(long, default_value = "20M", value_parser = human::parse_size)]
    pub(crate) rate: u64,
    /// Size of the file of the rate-capped scenario.
    #[arg(long, default_value = "128M", value_parser = human::parse_size)]
    pub(crate) rate_size: u64,
    /// Size of each small file.
    #[arg(long, default_value = "4K", value_parser = human::parse_size)]
    pub(crate) small_size: u64,
    /// Number of small files.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) small_count: u32,
    /// Small-file downloads in flight at once in the parallel pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) small_parallel: u32,
    /// Size of the file of the stress scenario.
    #[arg(long, default_value = "64M", value_parser = human::parse_size)]
    pub(crate) stress_size: u64,
    /// Parallel downloads in the stress scenario.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) stress_downloads: u32,
    /// Holders in the stress scenario.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub(crate) stress_holders: u32,
    /// Peers registered with the tracker in the tracker scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) tracker_peers: u32,
    /// Files per registered peer in the tracker scenario.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) tracker_files: u32,
    /// Client connections of the `WhoHas` load generator.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) tracker_connections: u32,
    /// Requests in flight per connection, one measurement per value (comma-separated).
    #[arg(long, default_value = "1,8", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) tracker_in_flight: Vec<u32>,
    /// Seconds of `WhoHas` load per measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub(crate) tracker_seconds: u32,
    /// The tracker-redis scenario also measures one and two trackers with each tracker process
    /// held to this many cores (a cgroup CPU quota: a small host of its own; needs root), so
    /// the scaling of the shared store shows on a machine whose cores Redis, the trackers and the
    /// load generator share. 0: no capped rows.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) tracker_cpu_quota: f64,
    /// Size of the folder of the start-up scenario (the target is for 4G).
    #[arg(long, default_value = "1G", value_parser = human::parse_size)]
    pub(crate) startup_size: u64,
    /// Evict the start-up folder from the page cache (fsync + POSIX_FADV_DONTNEED) before each
    /// first scan, so it is read from disk.
    #[arg(long)]
    pub(crate) startup_cold: bool,
    /// Size of the file of the flash-crowd scenario.
    #[arg(long, default_value = "64M", value_parser = human::parse_size)]
    pub(crate) crowd_size: u64,
    /// R, the seeder's upload cap in the flash-crowd scenario, per second (e.g. 20M).
    #[arg(long, default_value = "20M", value_parser = human::parse_size)]
    pub(crate) crowd_rate: u64,
    /// Flash-crowd sizes: one measurement per N, N downloaders started together
    /// (comma-separated).
    #[arg(long, default_value = "1,4,8,16", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) crowd_downloaders: Vec<u32>,
    /// Runs per N in the flash-crowd scenario (its own count: one run of every N takes about a
    /// minute at the defaults); the table shows medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) crowd_runs: u32,
    /// Size of the file of the network scenario's capped rows and cut cables (its uncapped rows
    /// use --size).
    #[arg(long, default_value = "64M", value_parser = human::parse_size)]
    pub(crate) net_capped_size: u64,
    /// Delays added to the round trip in the network scenario, in ms: one uncapped row each
    /// (comma-separated); the largest also makes a row capped at 100 Mbit/s.
    #[arg(long, default_value = "1,5,20", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) net_delays: Vec<u32>,
    /// Working directory (default: a temporary directory under $TMPDIR, removed at the end).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Skip the independent re-hash of each downloaded copy (the downloader still verifies every
    /// piece): for profiles of the download path alone.
    #[arg(long)]
    pub(crate) no_check: bool,
}

impl SwarmOptions {
    /// Whether `scenario` runs: all do by default, and the baseline runs with any download.
    pub(crate) fn wants(&self, scenario: Scenario) -> bool {
        if self.scenarios.is_empty() {
            return !matches!(scenario, Scenario::Network | Scenario::TrackerRedis);
        }
        if scenario == Scenario::Baseline {
            return self.scenarios.iter().any(|s| {
                matches!(
                    s,
                    Scenario::Baseline | Scenario::OneHolder | Scenario::ThreeHolders
                )
            });
        }
        self.scenarios.contains(&scenario)
    }
}
