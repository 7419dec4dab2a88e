//! The in-memory store: the [`Registry`] behind a mutex, as the tracker has always kept it. The
//! lock is never held across an `.await`: every operation is one synchronous registry call,
//! timed by this process's clock.

use super::{Page, Registration, Store, StoreCounts};
use crate::pb::tracker as pb;
use crate::tracker::page::FilePosition;
use crate::tracker::registry::{CheckedFile, Registered, Registry};
use crate::tracker::{TrackerError, TrackerLimits};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The registry of one tracker process.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    registry: Mutex<Registry>,
}

impl MemoryStore {
    /// An empty store whose peers heartbeat every `heartbeat_interval`, within `limits`.
    pub(crate) fn new(heartbeat_interval: Duration, limits: TrackerLimits) -> Self {
        MemoryStore {
            registry: Mutex::new(Registry::new(heartbeat_interval, limits)),
        }
    }

    /// Runs `f` on the registry under its lock (never held across an `.await`: `f` is sync).
    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        // A panic while holding the lock cannot leave the registry half-updated in a way that
        // matters more than losing the tracker, so poisoning is ignored.
        let mut guard = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

#[tonic::async_trait]
impl Store for MemoryStore {
    fn heartbeat_interval(&self) -> Duration {
        self.with(|r| r.heartbeat_interval())
    }

    async fn register(&self, registration: Registration) -> Result<Registered, TrackerError> {
        let Registration {
            peer_id,
            address,
            observed_ip,
            presented_token,
            files,
        } = registration;
        self.with(|r| {
            r.register(
                &peer_id,
                address,
                observed_ip,
                &presented_token,
                files,
                Instant::now(),
            )
        })
    }

    async fn register_more(
        &self,
        peer_id: &str,
        token: &str,
        files: Vec<CheckedFile>,
    ) -> Result<Registered, TrackerError> {
        self.with(|r| r.register_more(peer_id, token, files, Instant::now()))
    }

    async fn heartbeat(&self, peer_id: &str, token: &str) -> Result<(), TrackerError> {
        self.with(|r| r.heartbeat(peer_id, token, Instant::now()))
    }

    async fn announce(
        &self,
        peer_id: &str,
        token: &str,
        file: CheckedFile,
    ) -> Result<(), TrackerError> {
        self.with(|r| r.announce(peer_id, token, file, Instant::now()))
    }

    async fn withdraw(&self, peer_id: &str, token: &str, name: &str) -> Result<(), TrackerError> {
        self.with(|r| r.withdraw(peer_id, token, name, Instant::now()))
    }

    async fn leave(&self, peer_id: &str, token: &str) -> Result<(), TrackerError> {
        self.with(|r| r.leave(peer_id, token, Instant::now()))
    }

    async fn who_has(
        &self,
        name: &str,
        prefix: &str,
        max_holders: u32,
    ) -> Result<Vec<pb::FileVersion>, TrackerError> {
        self.with(|r| r.who_has(name, prefix, max_holders, Instant::now()))
    }

    async fn peers_page(
        &self,
        after: Option<&str>,
        size: usize,
    ) -> Result<Page<pb::PeerSummary>, TrackerError> {
        Ok(self.with(|r| r.peers_page(after, size, Instant::now())))
    }

    async fn files_page(
        &self,
        after: Option<FilePosition>,
        size: usize,
    ) -> Result<Page<pb::FileSummary>, TrackerError> {
        Ok(self.with(|r| r.files_page(after, size, Instant::now())))
    }

    async fn expire(&self) -> Result<Vec<String>, TrackerError> {
        Ok(self.with(|r| r.expire(Instant::now())))
    }

    async fn counts(&self) -> Result<StoreCounts, TrackerError> {
        Ok(self.with(|r| r.counts()))
    }
}
