//! The registry: who is alive, at which address, holding which files, and the holder index
//! `WhoHas` and `ListFiles` read. Plain synchronous data (the caller passes `now`, so tests
//! control time); the service keeps it behind a mutex that is never held across an `.await`.
//!
//! Bounded: every way in is checked against [`TrackerLimits`] before anything changes (peers in
//! all and per observed IP, files per peer and per IP, entries in all), and listings go a
//! bounded page at a time (`listing`). Memory per catalog entry is kept small (see [`index`]):
//! a peer's catalog maps a shared name to its record, and the index holds a 4-byte key per
//! holder.

mod index;
mod listing;

pub(in crate::tracker) use listing::check_who_has;

use super::limits::TrackerLimits;
use super::TrackerError;
use crate::chunking::ContentId;
use crate::names::{validate_file_name, validate_peer_id};
use crate::pb::tracker as pb;
use index::{Holder, Index, PeerKey, VersionKey};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A peer silent for this many heartbeat intervals is dropped.
pub(crate) const MISSED_HEARTBEATS_BEFORE_DROP: u32 = 3;
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
    id: Arc<str>,
    /// The IP its registration came from (not claimed: seen), if known.
    observed_ip: Option<IpAddr>,
    token: String,
    /// Its catalog; each name is the index's shared copy.
    files: HashMap<Arc<str>, FileRecord>,
    /// The sum of the sizes in `files` (sizes are claims: a `u128` cannot overflow with at most
    /// `usize::MAX` of them, and answers saturate to `u64`).
    total_bytes: u128,
}

/// A peer's slot: what a `WhoHas` answer reads of it inline (the slots are a dense array of
/// them), the rest behind a box.
#[derive(Debug)]
struct Slot {
    face: Face,
    record: Box<PeerRecord>,
}

/// The part of a peer's record a `WhoHas` answer reads, kept together: an answer visits peers
/// at random among thousands, and each field on a cache line (or allocation) of its own costs a
/// miss per holder. Measured on the benchmark's 10,000 peers, reading the id and the address
/// from two allocations, and the liveness from a large record, were the largest costs of
/// building an answer; the slots with their faces take about 50 bytes a peer and stay in cache.
#[derive(Debug)]
struct Face {
    /// When it was last heard from.
    last_seen: Instant,
    /// Its id followed by its address, in one allocation (the id is also the `ids` key).
    text: Box<str>,
    /// Where the address starts in `text` (peer ids are at most 64 bytes).
    id_len: u8,
    /// The first 8 bytes of the id, big-endian, zero-padded: a `WhoHas` answer sorts its
    /// holders by id, and this orders most pairs without reading `text` (see [`Face::id_order`]).
    id_head: u64,
}

impl Face {
    fn new(id: &str, address: &str, now: Instant) -> Self {
        debug_assert!(id.len() <= crate::names::MAX_PEER_ID_BYTES);
        Face {
            last_seen: now,
            text: [id, address].concat().into_boxed_str(),
            id_len: u8::try_from(id.len()).unwrap_or(u8::MAX),
            id_head: id_head(id),
        }
    }

    /// The order of two peers' ids, as `a.id().cmp(b.id())`: the heads decide unless they are
    /// equal (zero padding sorts a shorter id first, as `str` order does, since ids hold no
    /// NUL byte); ids sharing their first 8 bytes fall back to the whole ids.
    fn id_order(&self, other: &Face) -> std::cmp::Ordering {
        self.id_head
            .cmp(&other.id_head)
            .then_with(|| self.id().cmp(other.id()))
    }

    /// The peer id.
    fn id(&self) -> &str {
        &self.text[..usize::from(self.id_len)]
    }

    /// The first byte of its text (a read that brings the text into cache).
    fn text_head(&self) -> u8 {
        self.text.as_bytes().first().copied().unwrap_or(0)
    }

    /// Where others are told to reach it.
    fn address(&self) -> &str {
        &self.text[usize::from(self.id_len)..]
    }
}

/// The first 8 bytes of `id` as a big-endian number, zero-padded.
fn id_head(id: &str) -> u64 {
    let mut head = [0u8; 8];
    let n = id.len().min(8);
    head[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(head)
}

/// How much of the registry the peers from one observed IP address hold.
#[derive(Debug, Default, Clone, Copy)]
struct AddressShare {
    peers: usize,
    files: usize,
}

/// Who is alive and who holds what. Synchronous; the caller passes `now` so that tests control
/// time.
#[derive(Debug)]
pub(crate) struct Registry {
    heartbeat_interval: Duration,
    limits: TrackerLimits,
    /// Peer id -> slot, in id order (for `ListPeers` pages).
    ids: BTreeMap<Arc<str>, PeerKey>,
    /// The peers, by slot; `free` lists empty slots for reuse, so keys stay small.
    slots: Vec<Option<Slot>>,
    free: Vec<PeerKey>,
    /// Kept in step with the catalogs, so `WhoHas` costs the holders it returns, not the size of
    /// the swarm.
    index: Index,
    per_ip: HashMap<IpAddr, AddressShare>,
    /// Catalog entries of all peers.
    catalog_len: usize,
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

    /// Its content id.
    pub(super) fn content_id(&self) -> &ContentId {
        &self.record.content_id
    }

    /// Its size (a claim).
    pub(super) fn size(&self) -> u64 {
        self.record.size
    }

    /// Whether the peer is still downloading it.
    pub(super) fn partial(&self) -> bool {
        self.record.partial
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

/// How many distinct names `files` has that `held` does not: what adding them grows a catalog
/// by.
fn new_names(held: Option<&HashMap<Arc<str>, FileRecord>>, files: &[CheckedFile]) -> usize {
    let mut seen = HashSet::with_capacity(files.len());
    files
        .iter()
        .filter(|f| seen.insert(f.name.as_str()))
        .filter(|f| held.is_none_or(|held| !held.contains_key(f.name.as_str())))
        .count()
}

impl Registry {
    /// An empty registry whose peers must heartbeat every `heartbeat_interval`, holding at most
    /// what `limits` allow.
    pub(super) fn new(heartbeat_interval: Duration, limits: TrackerLimits) -> Self {
        Registry {
            heartbeat_interval,
            limits,
            ids: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            index: Index::default(),
            per_ip: HashMap::new(),
            catalog_len: 0,
        }
    }

    /// The heartbeat interval peers are told.
    pub(super) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn expiry(&self) -> Duration {
        self.heartbeat_interval * MISSED_HEARTBEATS_BEFORE_DROP
    }

    fn slot(&self, key: PeerKey) -> Option<&Slot> {
        self.slots.get(key.0 as usize)?.as_ref()
    }

    fn slot_mut(&mut self, key: PeerKey) -> Option<&mut Slot> {
        self.slots.get_mut(key.0 as usize)?.as_mut()
    }

    fn face(&self, key: PeerKey) -> Option<&Face> {
        self.slot(key).map(|s| &s.face)
    }

    fn record_mut(&mut self, key: PeerKey) -> Option<&mut PeerRecord> {
        self.slot_mut(key).map(|s| &mut *s.record)
    }

    fn alive(&self, face: &Face, now: Instant) -> bool {
        now.duration_since(face.last_seen) < self.expiry()
    }

    /// Registers (or re-registers) a peer with its full catalog (or the first batch of it).
    ///
    /// A peer id held by a live peer is refused unless the caller proves it is that peer (its
    /// token: it keeps it), or is that peer restarted: the same advertised address *and* a
    /// connection from the same IP as the first registration (the old process cannot still own
    /// that port). A restart gets a fresh token, never the old one: an address can be claimed
    /// (`advertise_host`), so it must not be enough to learn a live peer's token.
    /// `observed_ip` is where the request came from, if known. Past a limit nothing changes.
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
        let old = self.ids.get(peer_id).and_then(|&key| self.slot(key));
        let token = match old {
            Some(old) if self.alive(&old.face, now) => {
                let restarted = old.face.address() == address
                    && observed_ip.is_some()
                    && old.record.observed_ip == observed_ip;
                if same_token(&old.record.token, presented_token) {
                    old.record.token.clone()
                } else if restarted {
                    new_token()
                } else {
                    return Err(TrackerError::PeerIdTaken {
                        peer_id: peer_id.to_string(),
                        address: old.face.address().to_string(),
                    });
                }
            }
            _ => new_token(),
        };
        self.admit_registration(
            old.map(|s| &*s.record),
            observed_ip,
            new_names(None, &files),
        )?;
        self.remove_peer(peer_id);
        let record = PeerRecord {
            id: Arc::from(peer_id),
            observed_ip,
            token: token.clone(),
            files: HashMap::with_capacity(files.len()),
            total_bytes: 0,
        };
        let key = self.insert_peer(Face::new(peer_id, &address, now), record);
        for file in files {
            self.add_file(key, file);
        }
        Ok(Registered { token, address })
    }

    /// Checks the caps for a registration of `count` files replacing `old` (the record of the
    /// same id, live or not, which goes).
    fn admit_registration(
        &self,
        old: Option<&PeerRecord>,
        observed_ip: Option<IpAddr>,
        count: usize,
    ) -> Result<(), TrackerError> {
        let limits = &self.limits;
        if count > limits.max_files_per_peer {
            return Err(TrackerError::TooManyFiles(limits.max_files_per_peer));
        }
        let old_files = old.map_or(0, |o| o.files.len());
        if old.is_none() && self.ids.len() >= limits.max_peers {
            return Err(TrackerError::TooManyPeers(limits.max_peers));
        }
        if let Some(ip) = observed_ip {
            let mut share = self.per_ip.get(&ip).copied().unwrap_or_default();
            if old.is_some_and(|o| o.observed_ip == Some(ip)) {
                share.peers -= 1;
                share.files -= old_files;
            }
            if share.peers >= limits.max_peers_per_ip {
                return Err(TrackerError::TooManyPeersFrom(ip, limits.max_peers_per_ip));
            }
            if share.files + count > limits.max_files_per_ip {
                return Err(TrackerError::TooManyFilesFrom(ip, limits.max_files_per_ip));
            }
        }
        if self.catalog_len - old_files + count > limits.max_catalog_files {
            return Err(TrackerError::CatalogFull(limits.max_catalog_files));
        }
        Ok(())
    }

    /// Checks the caps for adding `files` to the catalog of `key`.
    fn admit_growth(&self, key: PeerKey, files: &[CheckedFile]) -> Result<(), TrackerError> {
        let Some(peer) = self.slot(key).map(|s| &*s.record) else {
            return Ok(());
        };
        let limits = &self.limits;
        let growth = new_names(Some(&peer.files), files);
        if peer.files.len() + growth > limits.max_files_per_peer {
            return Err(TrackerError::TooManyFiles(limits.max_files_per_peer));
        }
        if let Some(ip) = peer.observed_ip {
            let share = self.per_ip.get(&ip).copied().unwrap_or_default();
            if share.files + growth > limits.max_files_per_ip {
                return Err(TrackerError::TooManyFilesFrom(ip, limits.max_files_per_ip));
            }
        }
        if self.catalog_len + growth > limits.max_catalog_files {
            return Err(TrackerError::CatalogFull(limits.max_catalog_files));
        }
        Ok(())
    }

    /// Adds a batch to the catalog of a registered peer (`RegisterRequest.append`): a catalog
    /// too large for one request. All of the batch or, past a limit, none of it.
    pub(super) fn register_more(
        &mut self,
        peer_id: &str,
        token: &str,
        files: Vec<CheckedFile>,
        now: Instant,
    ) -> Result<Registered, TrackerError> {
        let key = self.authenticate(peer_id, token, now)?;
        self.admit_growth(key, &files)?;
        for file in files {
            self.add_file(key, file);
        }
        let peer = self
            .slot(key)
            .ok_or_else(|| TrackerError::UnknownPeer(peer_id.into()))?;
        Ok(Registered {
            token: peer.record.token.clone(),
            address: peer.face.address().to_string(),
        })
    }

    /// The live peer `peer_id` if `token` is its token (then it counts as heard from).
    fn authenticate(
        &mut self,
        peer_id: &str,
        token: &str,
        now: Instant,
    ) -> Result<PeerKey, TrackerError> {
        validate_peer_id(peer_id)?;
        let expiry = self.expiry();
        let key = self.ids.get(peer_id).copied();
        match key.and_then(|key| Some((key, self.slot_mut(key)?))) {
            Some((key, peer)) if now.duration_since(peer.face.last_seen) < expiry => {
                if !same_token(&peer.record.token, token) {
                    return Err(TrackerError::WrongToken(peer_id.to_string()));
                }
                peer.face.last_seen = now;
                Ok(key)
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
        let key = self.authenticate(peer_id, token, now)?;
        self.admit_growth(key, std::slice::from_ref(&file))?;
        self.add_file(key, file);
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
        let key = self.authenticate(peer_id, token, now)?;
        self.remove_file(key, name);
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

    /// What the registry holds: peers (live or not yet dropped), catalog entries, versions.
    pub(in crate::tracker) fn counts(&self) -> crate::tracker::StoreCounts {
        crate::tracker::StoreCounts {
            peers: self.ids.len() as u64,
            catalog_entries: self.catalog_len as u64,
            files: self.index.len() as u64,
        }
    }

    /// Drops every peer not heard from within the expiry; returns their ids.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let dead: Vec<String> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| !self.alive(&s.face, now))
            .map(|s| s.record.id.to_string())
            .collect();
        for id in &dead {
            self.remove_peer(id);
        }
        dead
    }

    fn insert_peer(&mut self, face: Face, record: PeerRecord) -> PeerKey {
        if let Some(ip) = record.observed_ip {
            let share = self.per_ip.entry(ip).or_default();
            share.peers += 1;
        }
        let id = record.id.clone();
        let slot = Slot {
            face,
            record: Box::new(record),
        };
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key.0 as usize] = Some(slot);
                key
            }
            None => {
                // At most `max_peers` (itself at most `usize::MAX`) slots are in use; a registry
                // cannot hold 2^32 peers in memory anyway.
                let key = PeerKey(self.slots.len() as u32);
                self.slots.push(Some(slot));
                key
            }
        };
        self.ids.insert(id, key);
        key
    }

    fn add_file(&mut self, key: PeerKey, file: CheckedFile) {
        self.remove_file(key, &file.name);
        let name = self.index.intern(&file.name);
        let Some(peer) = self.record_mut(key) else {
            return;
        };
        peer.total_bytes += u128::from(file.record.size);
        let ip = peer.observed_ip;
        let version = VersionKey {
            name: name.clone(),
            content_id: file.record.content_id,
            size: file.record.size,
        };
        let holder = Holder {
            peer: key,
            partial: file.record.partial,
        };
        peer.files.insert(name, file.record);
        self.index.insert(version, holder);
        self.catalog_len += 1;
        if let Some(share) = ip.and_then(|ip| self.per_ip.get_mut(&ip)) {
            share.files += 1;
        }
    }

    fn remove_file(&mut self, key: PeerKey, name: &str) {
        let Some(peer) = self.record_mut(key) else {
            return;
        };
        let Some((name, old)) = peer.files.remove_entry(name) else {
            return;
        };
        peer.total_bytes -= u128::from(old.size);
        let ip = peer.observed_ip;
        self.unindex(key, name, &old, ip);
    }

    /// Takes one catalog entry of `key` out of the index and the counts.
    fn unindex(&mut self, key: PeerKey, name: Arc<str>, record: &FileRecord, ip: Option<IpAddr>) {
        let version = VersionKey {
            name,
            content_id: record.content_id,
            size: record.size,
        };
        self.index.remove(&version, key);
        self.catalog_len -= 1;
        if let Some(share) = ip.and_then(|ip| self.per_ip.get_mut(&ip)) {
            share.files -= 1;
        }
    }

    fn remove_peer(&mut self, peer_id: &str) {
        let Some(key) = self.ids.remove(peer_id) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(key.0 as usize).and_then(Option::take) else {
            return;
        };
        let peer = *slot.record;
        self.free.push(key);
        for (name, record) in peer.files {
            self.unindex(key, name, &record, peer.observed_ip);
        }
        if let Some(ip) = peer.observed_ip {
            if let Some(share) = self.per_ip.get_mut(&ip) {
                share.peers -= 1;
                if share.peers == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A fresh session token: 16 random bytes in hex.
pub(in crate::tracker) fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Token comparison in time independent of where the first difference is (the length of a
/// token is no secret: every token is 32 hex digits).
fn same_token(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests;
