//! Where the tracker keeps its soft state: the [`Store`] interface the service calls, and the two
//! stores behind it.
//!
//! * `memory`: the [`Registry`](super::registry) behind a mutex, in this process (the default:
//!   nothing to install; lost on restart, rebuilt by the peers' re-registrations).
//! * `redis`: the same state in a Redis 7 server or a Redis Cluster (`redis+cluster://`: a swarm
//!   is one slot of it, on one node at a time), so several tracker processes share one view: a
//!   peer registered with one is listed by all, a token one handed out is good on every one, and
//!   a tracker restarted empty serves the full view at once.
//!
//! Both answer with the same shapes and caps (the contract tests in `tests/tracker_store.rs` run
//! the same assertions against both). The store keeps time itself (the memory store the
//! process's clock, Redis its server clock, which every tracker sharing it then agrees on).
//!
//! Non-goals: durability (both are soft state: peers re-register), and more than one Redis slot
//! (every key of one swarm shares a hash tag, so a Cluster holds it on one node).

mod memory;
mod redis;

use super::page::FilePosition;
use super::registry::{CheckedFile, Registered};
use super::{TrackerConfig, TrackerError, TrackerLimits};
use crate::pb::tracker as pb;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use memory::MemoryStore;

/// A page of a listing and the token of the next one (`None` on the last page).
pub(crate) type Page<T> = (Vec<T>, Option<String>);

/// A registration as the service checked it (address worked out, files parsed).
#[derive(Debug)]
pub(crate) struct Registration {
    /// The peer id (checked by the store).
    pub peer_id: String,
    /// The address others will be given.
    pub address: String,
    /// Where the request came from, if known.
    pub observed_ip: Option<IpAddr>,
    /// The token the peer presented (empty on a first registration).
    pub presented_token: String,
    /// Its catalog, or the first batch of it.
    pub files: Vec<CheckedFile>,
}

/// What a store holds, for operators (metrics) and the benchmark. Approximate between two
/// passes of the reaper: peers that stopped heartbeating are counted until they are dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Registered peers.
    pub peers: u64,
    /// Catalog entries (one per file per peer).
    pub catalog_entries: u64,
    /// Distinct files: versions (name, content id, size) that some peer holds.
    pub files: u64,
}

/// The tracker's soft state: every operation the service needs, each one atomic (a check and
/// the writes it allows agree). Errors are [`TrackerError`]s; a store that cannot be reached
/// answers [`TrackerError::StoreUnavailable`] within a bounded time.
#[tonic::async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// The heartbeat interval peers are told.
    fn heartbeat_interval(&self) -> Duration;

    /// Registers (or re-registers) a peer with its full catalog or its first batch; the rules
    /// on taken ids, tokens and restarts are [`Registry::register`](super::registry)'s.
    async fn register(&self, registration: Registration) -> Result<Registered, TrackerError>;

    /// Adds one more batch to a registered peer's catalog: all of it or, past a cap, none.
    async fn register_more(
        &self,
        peer_id: &str,
        token: &str,
        files: Vec<CheckedFile>,
    ) -> Result<Registered, TrackerError>;

    /// Records that the peer is alive.
    async fn heartbeat(&self, peer_id: &str, token: &str) -> Result<(), TrackerError>;

    /// Adds (or replaces, by name) a file in the peer's catalog.
    async fn announce(
        &self,
        peer_id: &str,
        token: &str,
        file: CheckedFile,
    ) -> Result<(), TrackerError>;

    /// Removes a file from the peer's catalog (no error if it was not there).
    async fn withdraw(&self, peer_id: &str, token: &str, name: &str) -> Result<(), TrackerError>;

    /// Drops the peer at once.
    async fn leave(&self, peer_id: &str, token: &str) -> Result<(), TrackerError>;

    /// The versions of `name` (content ids starting with `prefix`) with a bounded random sample
    /// of their live holders, most complete holders first.
    async fn who_has(
        &self,
        name: &str,
        prefix: &str,
        max_holders: u32,
    ) -> Result<Vec<pb::FileVersion>, TrackerError>;

    /// A page of live peers in id order after `after`.
    async fn peers_page(
        &self,
        after: Option<&str>,
        size: usize,
    ) -> Result<Page<pb::PeerSummary>, TrackerError>;

    /// A page of versions held by live peers, in (name, content id, size) order after `after`.
    async fn files_page(
        &self,
        after: Option<FilePosition>,
        size: usize,
    ) -> Result<Page<pb::FileSummary>, TrackerError>;

    /// Drops the peers not heard from for [`MISSED_HEARTBEATS_BEFORE_DROP`] intervals; returns
    /// their ids (a bounded number per call: the reaper calls again next tick).
    ///
    /// [`MISSED_HEARTBEATS_BEFORE_DROP`]: super::registry::MISSED_HEARTBEATS_BEFORE_DROP
    async fn expire(&self) -> Result<Vec<String>, TrackerError>;

    /// What the store holds.
    async fn counts(&self) -> Result<StoreCounts, TrackerError>;
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--store` value is not `memory`, a `redis://` URL or a `redis+cluster://` seed list.
    #[error("--store {0}")]
    BadSpec(String),
    /// The Redis server did not answer.
    #[error("cannot use the Redis store at {url}: {reason}")]
    Unreachable {
        /// The URL, credentials hidden.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A call to an open store failed.
    #[error("{0}")]
    Call(String),
}

/// Where a tracker keeps its soft state (`tracker --store`).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// In this process (the default).
    #[default]
    Memory,
    /// In a Redis server, or a Redis Cluster, shared with other trackers.
    Redis {
        /// `redis://HOST:PORT[/DB]` (or `redis+unix://`), as the `redis` crate
        /// reads it; or `redis+cluster://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]`, seed
        /// nodes of a Redis Cluster.
        url: String,
        /// The key prefix (a hash tag: every key is `{PREFIX}:...`), so several swarms can
        /// share one server.
        prefix: String,
    },
}

/// The default key prefix of the Redis store.
pub const DEFAULT_REDIS_PREFIX: &str = "p2pshare";

impl StoreConfig {
    /// Reads a `--store` value: `memory`, a Redis URL, or `redis+cluster://` and a Redis
    /// Cluster's seed nodes (keys under `{prefix}:`).
    pub fn parse(spec: &str, prefix: &str) -> Result<Self, StoreError> {
        if spec == "memory" {
            return Ok(StoreConfig::Memory);
        }
        if spec.starts_with("rediss://") {
            // The redis crate is built without a TLS stack: say so at start, not at a connect.
            return Err(StoreError::BadSpec(format!(
                "{}: TLS to Redis is not built in; use redis:// on a private network (or through \
                 a TLS tunnel such as stunnel)",
                redis::redacted(spec)
            )));
        }
        if !(spec.starts_with("redis://")
            || spec.starts_with("redis+unix://")
            || spec.starts_with(redis::CLUSTER_SCHEME))
        {
            return Err(StoreError::BadSpec(format!(
                "{:?}: expected `memory`, `redis://HOST:PORT[/DB]` or \
                 `{}HOST:PORT[,HOST:PORT...]`",
                crate::names::at_most(spec, 80),
                redis::CLUSTER_SCHEME
            )));
        }
        redis::check_prefix(prefix)?;
        // Parsed now so that a typo fails at start-up, not at the first call.
        redis::check_url(spec)
            .map_err(|e| StoreError::BadSpec(format!("{}: {e}", redis::redacted(spec))))?;
        Ok(StoreConfig::Redis {
            url: spec.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// What the tracker prints at start: `memory`, or the URL without credentials and the prefix.
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory"),
            StoreConfig::Redis { url, prefix } => {
                write!(f, "{} (keys {{{prefix}}}:*)", redis::redacted(url))
            }
        }
    }
}

/// Credentials stay out of logs and `Debug` output.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreConfig({self})")
    }
}

/// An opened store, shared by a tracker's calls (cheap to clone): pass the same one to several
/// servers in one process, or open one per process on the same Redis.
#[derive(Clone)]
pub struct TrackerStore(pub(crate) Arc<dyn Store>);

impl TrackerStore {
    /// Opens the store `store` says, for a tracker with `config`'s heartbeat interval and the
    /// caps `limits` (the Redis store checks that the server answers, within a few seconds).
    pub async fn open(
        store: &StoreConfig,
        config: &TrackerConfig,
        limits: TrackerLimits,
    ) -> Result<Self, StoreError> {
        Ok(match store {
            StoreConfig::Memory => TrackerStore::memory(config, limits),
            StoreConfig::Redis { url, prefix } => TrackerStore(Arc::new(
                redis::RedisStore::open(url, prefix, config.heartbeat_interval, limits).await?,
            )),
        })
    }

    /// A fresh in-memory store.
    pub fn memory(config: &TrackerConfig, limits: TrackerLimits) -> Self {
        TrackerStore(Arc::new(MemoryStore::new(
            config.heartbeat_interval,
            limits,
        )))
    }

    /// What the store holds now.
    pub async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.0
            .counts()
            .await
            .map_err(|e| StoreError::Call(e.to_string()))
    }
}

impl fmt::Debug for TrackerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrackerStore")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_are_checked_at_start_with_a_clear_message() {
        assert_eq!(
            StoreConfig::parse("memory", "p").unwrap(),
            StoreConfig::Memory
        );
        assert!(matches!(
            StoreConfig::parse("redis://127.0.0.1:6379", "p"),
            Ok(StoreConfig::Redis { .. })
        ));
        for (bad, says) in [
            ("mongodb://x", "expected `memory`"),
            ("rediss://:secret@h:1", "TLS to Redis is not built in"),
        ] {
            let message = StoreConfig::parse(bad, "p").unwrap_err().to_string();
            assert!(message.contains(says), "{bad}: {message}");
            assert!(!message.contains("secret"), "{bad}: {message}");
        }
        assert!(StoreConfig::parse("redis://h:1", "a b").is_err());
    }
}
