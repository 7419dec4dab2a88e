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
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> CheckedFile {
        CheckedFile::try_from(pb::FileEntry {
            name: name.into(),
            size: content.len() as u64,
            content_id: ContentId::of(content).to_hex(),
            partial: false,
        })
        .unwrap()
    }

    fn partial_file(name: &str, content: &[u8]) -> CheckedFile {
        CheckedFile::try_from(pb::FileEntry {
            name: name.into(),
            size: content.len() as u64,
            content_id: ContentId::of(content).to_hex(),
            partial: true,
        })
        .unwrap()
    }

    #[test]
    fn partial_holders_are_listed_apart_and_complete_replaces_partial() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        r.register("S", "s:1".into(), None, "", vec![file("f", b"x")], now)
            .unwrap();
        let d = r
            .register("D", "d:1".into(), None, "", vec![], now)
            .unwrap();
        r.announce("D", &d.token, partial_file("f", b"x"), now)
            .unwrap();
        let versions = r.who_has("f", "", 0, now).unwrap();
        let flags: Vec<(String, bool)> = versions[0]
            .holders
            .iter()
            .map(|h| (h.peer_id.clone(), h.partial))
            .collect();
        assert_eq!(flags, [("D".into(), true), ("S".into(), false)]);
        let summary = &r.files(now)[0];
        assert_eq!((summary.holder_count, summary.partial_holder_count), (2, 1));
        r.announce("D", &d.token, file("f", b"x"), now).unwrap();
        assert!(r.who_has("f", "", 0, now).unwrap()[0]
            .holders
            .iter()
            .all(|h| !h.partial));
        assert_eq!(r.files(now)[0].partial_holder_count, 0);
    }

    #[test]
    fn crowded_versions_list_a_bounded_sample_complete_first() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        for i in 0..300 {
            let id = format!("P{i}");
            let entry = if i < 5 {
                file("f", b"x")
            } else {
                partial_file("f", b"x")
            };
            r.register(&id, format!("h{i}:1"), None, "", vec![entry], now)
                .unwrap();
        }
        let all = &r.who_has("f", "", 0, now).unwrap()[0].holders;
        assert_eq!(all.len(), DEFAULT_MAX_HOLDERS as usize);
        assert_eq!(all.iter().filter(|h| !h.partial).count(), 5);
        assert!(all.windows(2).all(|w| w[0].peer_id < w[1].peer_id));
        let few = &r.who_has("f", "", 3, now).unwrap()[0].holders;
        assert_eq!(few.len(), 3);
        assert!(few.iter().all(|h| !h.partial), "complete holders first");
        // Versions with complete holders come before a crowd of partial ones.
        for i in 0..3 {
            r.register(
                &format!("Q{i}"),
                format!("q{i}:1"),
                None,
                "",
                vec![file("f", b"y")],
                now,
            )
            .unwrap();
        }
        let versions = r.who_has("f", "", 0, now).unwrap();
        assert_eq!(versions[0].content_id, ContentId::of(b"x").to_hex());
    }

    fn holders(r: &Registry, name: &str, now: Instant) -> Vec<Vec<String>> {
        match r.who_has(name, "", 0, now) {
            Ok(versions) => versions
                .into_iter()
                .map(|v| v.holders.into_iter().map(|h| h.peer_id).collect())
                .collect(),
            Err(TrackerError::UnknownFile(_)) => vec![],
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn tokens_match_only_when_equal() {
        let token = new_token();
        assert_eq!(token.len(), 32);
        assert!(same_token(&token, &token.clone()));
        assert!(!same_token(&token, &token[..31]));
        assert!(!same_token(&token, &format!("{token}0")));
        assert!(!same_token(&token, ""));
        assert!(!same_token(&token, &new_token()));
    }

    #[test]
    fn register_announce_withdraw_leave_are_reflected() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        let a = r
            .register(
                "A",
                "1.1.1.1:1".into(),
                None,
                "",
                vec![file("f", b"1")],
                now,
            )
            .unwrap();
        let b = r
            .register("B", "1.1.1.2:1".into(), None, "", vec![], now)
            .unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["A"]]);
        r.announce("B", &b.token, file("f", b"1"), now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["A", "B"]]);
        r.withdraw("A", &a.token, "f", now).unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["B"]]);
        r.leave("B", &b.token, now).unwrap();
        assert!(holders(&r, "f", now).is_empty());
        assert!(r.files(now).is_empty());
    }

    #[test]
    fn versions_are_grouped_by_content_and_sorted_by_holders() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        r.register("A", "a:1".into(), None, "", vec![file("f", b"old")], now)
            .unwrap();
        r.register("B", "b:1".into(), None, "", vec![file("f", b"new")], now)
            .unwrap();
        r.register("C", "c:1".into(), None, "", vec![file("f", b"new")], now)
            .unwrap();
        assert_eq!(holders(&r, "f", now), vec![vec!["B", "C"], vec!["A"]]);
        let old = ContentId::of(b"old").to_hex();
        let only_old = r.who_has("f", &old[..6], 0, now).unwrap();
        assert_eq!(only_old.len(), 1);
        assert_eq!(only_old[0].content_id, old);
        assert!(r.who_has("f", "XYZ", 0, now).is_err());
        let missing = r.who_has("f", "ffff", 0, now).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no peer holds \"f\" with a content id starting ffff"
        );
    }

    #[test]
    fn silent_peers_expire_and_tokens_are_enforced() {
        let t0 = Instant::now();
        let home: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let elsewhere: Option<IpAddr> = Some("10.6.6.6".parse().unwrap());
        let mut r = Registry::new(Duration::from_secs(1));
        let a = r
            .register("A", "a:1".into(), home, "", vec![file("f", b"x")], t0)
            .unwrap();
        assert!(matches!(
            r.heartbeat("A", "forged", t0),
            Err(TrackerError::WrongToken(_))
        ));
        assert!(matches!(
            r.leave("A", "forged", t0),
            Err(TrackerError::WrongToken(_))
        ));
        assert!(matches!(
            r.heartbeat("../A", "forged", t0),
            Err(TrackerError::BadName(_))
        ));
        // Someone else cannot take the id while A lives, not even by claiming A's address...
        for (address, from) in [("evil:1", home), ("a:1", elsewhere), ("a:1", None)] {
            assert!(matches!(
                r.register("A", address.into(), from, "", vec![], t0),
                Err(TrackerError::PeerIdTaken { .. })
            ));
        }
        // ...and A presenting its token may move.
        let moved = r
            .register("A", "a:2".into(), elsewhere, &a.token, vec![], t0)
            .unwrap();
        assert_eq!(moved.token, a.token);
        let a = r
            .register("A", "a:1".into(), home, &a.token, vec![file("f", b"x")], t0)
            .unwrap();
        // A restarting on its own address, from its own IP, can, with a new token: the old one is
        // never handed out.
        let restarted = r
            .register("A", "a:1".into(), home, "", vec![file("f", b"x")], t0)
            .unwrap();
        assert_ne!(restarted.token, a.token);
        assert!(matches!(
            r.heartbeat("A", &a.token, t0),
            Err(TrackerError::WrongToken(_))
        ));
        r.heartbeat("A", &restarted.token, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            holders(&r, "f", t0 + Duration::from_secs(4)),
            vec![vec!["A"]]
        );
        // Silent for three intervals: gone, even before the reaper runs.
        let later = t0 + Duration::from_secs(5);
        assert!(holders(&r, "f", later).is_empty());
        assert_eq!(r.expire(later), vec!["A".to_string()]);
        assert!(matches!(
            r.heartbeat("A", &restarted.token, later),
            Err(TrackerError::UnknownPeer(_))
        ));
        r.register("A", "evil:1".into(), elsewhere, "", vec![], later)
            .unwrap();
    }

    #[test]
    fn a_wrong_size_makes_its_own_version_and_sizes_never_overflow() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        let liar = CheckedFile::try_from(pb::FileEntry {
            name: "f".into(),
            size: u64::MAX,
            content_id: ContentId::of(b"true").to_hex(),
            partial: false,
        })
        .unwrap();
        let mut other = liar.clone();
        other.name = "g".into();
        r.register("L", "l:1".into(), None, "", vec![liar, other], now)
            .unwrap();
        r.register("H", "h:1".into(), None, "", vec![file("f", b"true")], now)
            .unwrap();
        r.register("I", "i:1".into(), None, "", vec![file("f", b"true")], now)
            .unwrap();
        let versions = r.who_has("f", "", 0, now).unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!((versions[0].size, versions[0].holders.len()), (4, 2));
        assert_eq!((versions[1].size, versions[1].holders.len()), (u64::MAX, 1));
        let liar = r.peers(now).into_iter().find(|p| p.peer_id == "L").unwrap();
        assert_eq!(liar.total_bytes, u64::MAX);
    }

    #[test]
    fn catalogs_are_bounded() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        let many: Vec<CheckedFile> = (0..=MAX_FILES_PER_PEER)
            .map(|i| CheckedFile {
                name: format!("f{i}"),
                record: FileRecord {
                    size: 1,
                    content_id: ContentId([0; 32]),
                    partial: false,
                },
            })
            .collect();
        assert!(matches!(
            r.register("A", "a:1".into(), None, "", many.clone(), now),
            Err(TrackerError::TooManyFiles)
        ));
        let full = many[..MAX_FILES_PER_PEER].to_vec();
        let a = r.register("A", "a:1".into(), None, "", full, now).unwrap();
        let extra = many[MAX_FILES_PER_PEER].clone();
        assert!(matches!(
            r.announce("A", &a.token, extra, now),
            Err(TrackerError::TooManyFiles)
        ));
        // Replacing a file already in the catalog is not growth.
        r.announce("A", &a.token, many[0].clone(), now).unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(1));
        assert!(r
            .register("a/b", "x:1".into(), None, "", vec![], now)
            .is_err());
        assert!(r.who_has("../etc", "", 0, now).is_err());
        assert!(CheckedFile::try_from(pb::FileEntry {
            name: "ok".into(),
            size: 1,
            content_id: "nothex".into(),
            partial: false,
        })
        .is_err());
    }
}
