//! The registry: who is alive, at which address, holding which files, and the holder index
//! `WhoHas` reads. Plain synchronous data (the caller passes `now`, so tests control time); the
//! service keeps it behind a mutex that is never held across an `.await`.

use super::TrackerError;
use crate::chunking::ContentId;
use crate::names::{validate_file_name, validate_peer_id};
use crate::pb::tracker as pb;
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A peer silent for this many heartbeat intervals is dropped.
pub(crate) const MISSED_HEARTBEATS_BEFORE_DROP: u32 = 3;
/// Most files one peer may have in its catalog: the registry's memory per peer is bounded.
/// Registering or announcing past it is refused with RESOURCE_EXHAUSTED.
pub(crate) const MAX_FILES_PER_PEER: usize = 100_000;
/// Most holders per version in a `WhoHas` answer when the request does not ask for fewer: a
/// popular file's answer stays small, and a random sample spreads a crowd over its holders.
pub(crate) const DEFAULT_MAX_HOLDERS: u32 = 200;

/// A file as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileRecord {
    size: u64,
    content_id: ContentId,
    /// The peer is still downloading it and serves only the pieces it has.
    partial: bool,
}

#[derive(Debug)]
struct PeerRecord {
    /// Where others are told to reach it.
    address: String,
    /// The IP its registration came from (not claimed: seen), if known.
    observed_ip: Option<IpAddr>,
    token: String,
    files: HashMap<String, FileRecord>,
    last_seen: Instant,
}

/// A version of a named file in the holder index: its content id and the size its holders
/// announced. Keyed by both, so a peer announcing a known content id with a wrong size makes a
/// version of its own instead of changing what the honest holders' version says.
type VersionKey = (ContentId, u64);

/// Who is alive and who holds what. Synchronous; the caller passes `now` so that tests control
/// time.
#[derive(Debug)]
pub(crate) struct Registry {
    heartbeat_interval: Duration,
    peers: HashMap<String, PeerRecord>,
    /// name -> (content id, size) -> holders. Kept in step with `peers` so `WhoHas` costs the
    /// holders it returns, not the size of the swarm.
    index: BTreeMap<String, BTreeMap<VersionKey, BTreeSet<String>>>,
}

/// A registration accepted by [`Registry::register`].
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    /// The session token.
    pub token: String,
    /// The address others will be given.
    pub address: String,
}

/// A file in a request, checked.
#[derive(Debug, Clone)]
pub(crate) struct CheckedFile {
    name: String,
    record: FileRecord,
}

impl CheckedFile {
    /// The file's name (checked).
    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

impl TryFrom<pb::FileEntry> for CheckedFile {
    type Error = TrackerError;
    fn try_from(entry: pb::FileEntry) -> Result<Self, Self::Error> {
        validate_file_name(&entry.name)?;
        let content_id = entry
            .content_id
            .parse()
            .map_err(|e| TrackerError::InvalidArgument(format!("file {:?}: {e}", entry.name)))?;
        Ok(CheckedFile {
            name: entry.name,
            record: FileRecord {
                size: entry.size,
                content_id,
                partial: entry.partial,
            },
        })
    }
}

impl Registry {
    /// An empty registry whose peers must heartbeat every `heartbeat_interval`.
    pub(super) fn new(heartbeat_interval: Duration) -> Self {
        Registry {
            heartbeat_interval,
            peers: HashMap::new(),
            index: BTreeMap::new(),
        }
    }

    /// The heartbeat interval peers are told.
    pub(super) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn expiry(&self) -> Duration {
        self.heartbeat_interval * MISSED_HEARTBEATS_BEFORE_DROP
    }

    /// Registers (or re-registers) a peer with its full catalog.
    ///
    /// A peer id held by a live peer is refused unless the caller proves it is that peer (its
    /// token: it keeps it), or is that peer restarted: the same advertised address *and* a
    /// connection from the same IP as the first registration (the old process cannot still own
    /// that port). A restart gets a fresh token, never the old one: an address can be claimed
    /// (`advertise_host`), so it must not be enough to learn a live peer's token.
    /// `observed_ip` is where the request came from, if known.
    pub(super) fn register(
        &mut self,
        peer_id: &str,
        address: String,
        observed_ip: Option<IpAddr>,
        presented_token: &str,
        files: Vec<CheckedFile>,
        now: Instant,
    ) -> Result<Registered, TrackerError> {
        validate_peer_id(peer_id)?;
        if files.len() > MAX_FILES_PER_PEER {
            return Err(TrackerError::TooManyFiles);
        }
        let token = match self.peers.get(peer_id) {
            Some(old) if now.duration_since(old.last_seen) < self.expiry() => {
                let restarted = old.address == address
                    && observed_ip.is_some()
                    && old.observed_ip == observed_ip;
                if same_token(&old.token, presented_token) {
                    old.token.clone()
                } else if restarted {
                    new_token()
                } else {
                    return Err(TrackerError::PeerIdTaken {
                        peer_id: peer_id.to_string(),
                        address: old.address.clone(),
                    });
                }
            }
            _ => new_token(),
        };
        self.remove_peer(peer_id);
        let record = PeerRecord {
            address: address.clone(),
            observed_ip,
            token: token.clone(),
            files: HashMap::new(),
            last_seen: now,
        };
        self.peers.insert(peer_id.to_string(), record);
        for file in files {
            self.add_file(peer_id, file);
        }
        Ok(Registered { token, address })
    }

    /// The live peer `peer_id` if `token` is its token (then it counts as heard from).
    fn authenticate(
        &mut self,
        peer_id: &str,
        token: &str,
        now: Instant,
    ) -> Result<&mut PeerRecord, TrackerError> {
        validate_peer_id(peer_id)?;
        let expiry = self.expiry();
        match self.peers.get_mut(peer_id) {
            Some(peer) if now.duration_since(peer.last_seen) < expiry => {
                if !same_token(&peer.token, token) {
                    return Err(TrackerError::WrongToken(peer_id.to_string()));
                }
                peer.last_seen = now;
                Ok(peer)
            }
            _ => Err(TrackerError::UnknownPeer(peer_id.to_string())),
        }
    }

    /// Records that a peer is alive.
    pub(super) fn heartbeat(
        &mut self,
        peer_id: &str,
        token: &str,
        now: Instant,
    ) -> Result<(), TrackerError> {
        self.authenticate(peer_id, token, now).map(|_| ())
    }

    /// Adds (or replaces, by name) a file in a peer's catalog.
    pub(crate) fn announce(
        &mut self,
        peer_id: &str,
        token: &str,
        file: CheckedFile,
        now: Instant,
    ) -> Result<(), TrackerError> {
        let peer = self.authenticate(peer_id, token, now)?;
        if !peer.files.contains_key(&file.name) && peer.files.len() >= MAX_FILES_PER_PEER {
            return Err(TrackerError::TooManyFiles);
        }
        self.add_file(peer_id, file);
        Ok(())
    }

    /// Removes a file from a peer's catalog (no error if it was not there).
    pub(crate) fn withdraw(
        &mut self,
        peer_id: &str,
        token: &str,
        name: &str,
        now: Instant,
    ) -> Result<(), TrackerError> {
        validate_file_name(name)?;
        let peer = self.authenticate(peer_id, token, now)?;
        if let Some(old) = peer.files.remove(name) {
            self.unindex(peer_id, name, &old);
        }
        Ok(())
    }

    /// Drops a peer at once.
    pub(super) fn leave(
        &mut self,
        peer_id: &str,
        token: &str,
        now: Instant,
    ) -> Result<(), TrackerError> {
        self.authenticate(peer_id, token, now)?;
        self.remove_peer(peer_id);
        Ok(())
    }

    /// Drops every peer not heard from within the expiry; returns their ids.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let expiry = self.expiry();
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) >= expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.remove_peer(id);
        }
        dead
    }

    /// The versions of `name` (optionally only content ids starting with `prefix`) with their live
    /// holders, most complete holders first. A version with more than `max_holders` holders (0 or
    /// more than [`DEFAULT_MAX_HOLDERS`]: that) lists a random sample of them, complete holders
    /// before partial ones.
    pub(super) fn who_has(
        &self,
        name: &str,
        prefix: &str,
        max_holders: u32,
        now: Instant,
    ) -> Result<Vec<pb::FileVersion>, TrackerError> {
        validate_file_name(name)?;
        if !prefix.is_empty() && !crate::chunking::is_content_id_prefix(prefix) {
            return Err(TrackerError::InvalidArgument(format!(
                "content id prefix {prefix:?} is not lowercase hexadecimal"
            )));
        }
        let limit = match max_holders {
            0 => DEFAULT_MAX_HOLDERS,
            n => n.min(DEFAULT_MAX_HOLDERS),
        } as usize;
        let expiry = self.expiry();
        let mut rng = rand::rng();
        // (complete holders in all, version) so versions sort by what can really be downloaded.
        let mut versions: Vec<(usize, usize, pb::FileVersion)> = Vec::new();
        for ((cid, size), holder_ids) in self.index.get(name).into_iter().flatten() {
            if !cid.to_hex().starts_with(prefix) {
                continue;
            }
            let (mut partial, mut complete): (Vec<pb::Holder>, Vec<pb::Holder>) = holder_ids
                .iter()
                .filter_map(|id| {
                    let peer = self.peers.get(id)?;
                    (now.duration_since(peer.last_seen) < expiry).then(|| pb::Holder {
                        peer_id: id.clone(),
                        address: peer.address.clone(),
                        partial: peer.files.get(name).is_some_and(|f| f.partial),
                    })
                })
                .partition(|h| h.partial);
            let (complete_count, total) = (complete.len(), complete.len() + partial.len());
            if total == 0 {
                continue;
            }
            if total > limit {
                complete.shuffle(&mut rng);
                complete.truncate(limit);
                partial.shuffle(&mut rng);
                partial.truncate(limit - complete.len());
            }
            let mut holders = complete;
            holders.append(&mut partial);
            holders.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
            versions.push((
                complete_count,
                total,
                pb::FileVersion {
                    name: name.to_string(),
                    size: *size,
                    content_id: cid.to_hex(),
                    holders,
                },
            ));
        }
        if versions.is_empty() {
            return Err(TrackerError::UnknownFile(if prefix.is_empty() {
                format!("{name:?}")
            } else {
                format!("{name:?} with a content id starting {prefix}")
            }));
        }
        versions.sort_by(|(ca, ta, a), (cb, tb, b)| {
            cb.cmp(ca)
                .then_with(|| tb.cmp(ta))
                .then_with(|| a.content_id.cmp(&b.content_id))
                .then_with(|| a.size.cmp(&b.size))
        });
        Ok(versions.into_iter().map(|(_, _, v)| v).collect())
    }

    /// Live peers, sorted by id.
    pub(super) fn peers(&self, now: Instant) -> Vec<pb::PeerSummary> {
        let mut peers: Vec<pb::PeerSummary> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) < self.expiry())
            .map(|(id, p)| pb::PeerSummary {
                peer_id: id.clone(),
                address: p.address.clone(),
                file_count: p.files.len() as u32,
                // Sizes are claims: a sum of hostile ones must not overflow.
                total_bytes: p
                    .files
                    .values()
                    .fold(0u64, |total, f| total.saturating_add(f.size)),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// Every version offered by a live peer, sorted by name then content id.
    pub(super) fn files(&self, now: Instant) -> Vec<pb::FileSummary> {
        let alive = |id: &String| {
            self.peers
                .get(id)
                .is_some_and(|p| now.duration_since(p.last_seen) < self.expiry())
        };
        self.index
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().filter_map(move |((cid, size), holders)| {
                    let live: Vec<&String> = holders.iter().filter(|h| alive(h)).collect();
                    let partial = live
                        .iter()
                        .filter(|h| {
                            self.peers
                                .get(**h)
                                .and_then(|p| p.files.get(name))
                                .is_some_and(|f| f.partial)
                        })
                        .count();
                    (!live.is_empty()).then(|| pb::FileSummary {
                        name: name.clone(),
                        size: *size,
                        content_id: cid.to_hex(),
                        holder_count: live.len() as u32,
                        partial_holder_count: partial as u32,
                    })
                })
            })
            .collect()
    }

    fn add_file(&mut self, peer_id: &str, file: CheckedFile) {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return;
        };
        let old = peer.files.insert(file.name.clone(), file.record.clone());
        if let Some(old) = old {
            self.unindex(peer_id, &file.name, &old);
        }
        self.index
            .entry(file.name)
            .or_default()
            .entry((file.record.content_id, file.record.size))
            .or_default()
            .insert(peer_id.to_string());
    }

    fn unindex(&mut self, peer_id: &str, name: &str, record: &FileRecord) {
        let key: VersionKey = (record.content_id, record.size);
        if let Some(versions) = self.index.get_mut(name) {
            if let Some(holders) = versions.get_mut(&key) {
                holders.remove(peer_id);
                if holders.is_empty() {
                    versions.remove(&key);
                }
            }
            if versions.is_empty() {
                self.index.remove(name);
            }
        }
    }

    fn remove_peer(&mut self, peer_id: &str) {
        if let Some(peer) = self.peers.remove(peer_id) {
            for (name, record) in &peer.files {
                self.unindex(peer_id, name, record);
            }
        }
    }
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Token comparison in time independent of where the first difference is (the length of a
/// token is no secret: every token is 32 hex digits).
fn same_token(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests;
