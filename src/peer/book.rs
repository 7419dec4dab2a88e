//! What a peer has heard about the swarm, for peer exchange and fair uploads.
//!
//! * **Who holds what** ([`SwarmBook::learn`], [`SwarmBook::holders`]): holders of each content id
//!   this peer met, from the tracker's answers, other peers' `GetHolders` answers, and the
//!   downloaders that fetched from this peer (they are partial holders and said where they
//!   listen). `GetHolders` answers from it, so a download keeps finding holders while the tracker
//!   is down. Bounded: [`MAX_CONTENTS`] content ids, [`MAX_HOLDERS_PER_CONTENT`] holders each,
//!   entries forgotten after [`ENTRY_TTL`], or [`PARTIAL_TTL`] for a partial holder.
//! * **Only evidence keeps an entry.** An entry is refreshed by first-hand news only: the holder
//!   itself asked this peer for pieces, or the tracker (which drops the silent) listed it
//!   ([`SwarmBook::learn`]). Hearsay from peer exchange ([`SwarmBook::learn_hearsay`]) adds a
//!   holder not known yet but never extends one known: otherwise peers that pass the same
//!   entries to each other keep a departed downloader alive for as long as they talk.
//! * **Who uploaded to us** ([`SwarmBook::received`]): bytes of verified pieces received from
//!   each peer id, which the upload choker uses to serve first the peers that upload back.
//!
//! Everything here is hearsay from the network: addresses are only ever dialled, and whatever
//! comes from them is verified like anything else.

use crate::chunking::ContentId;
use rand::seq::IteratorRandom;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Content ids remembered (the least recently learned are forgotten first).
pub(crate) const MAX_CONTENTS: usize = 256;
/// Holders remembered per content id.
pub(crate) const MAX_HOLDERS_PER_CONTENT: usize = 512;
/// How long a complete holder is remembered without being heard of again.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(120);
/// How long a partial holder (a downloader) is remembered without being heard of again. A
/// downloader asks each holder it fetches from for pieces every few hundred milliseconds, so a
/// live one is refreshed long before this; one that left (finished and quit, or lost its
/// network) is passed on for this long at most, each such entry costing a new downloader a
/// connection attempt (a connect timeout on a LAN) and a holder slot.
pub(crate) const PARTIAL_TTL: Duration = Duration::from_secs(20);
/// Most holders one `GetHolders` answer carries.
pub(crate) const MAX_EXCHANGED: usize = 64;
/// Peer ids whose upload to us is counted (the first ones seen; the rest count as nobody).
const MAX_UPLOADERS: usize = 4096;

/// A holder as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeardHolder {
    /// Its peer id.
    pub peer_id: String,
    /// Where its Peer service listens.
    pub address: String,
    /// Whether it was last known to hold part of the file only.
    pub partial: bool,
}

#[derive(Debug)]
struct Entry {
    address: String,
    partial: bool,
    heard: Instant,
}

impl Entry {
    /// Whether it is still worth passing on at `now`.
    fn fresh(&self, now: Instant) -> bool {
        let ttl = if self.partial { PARTIAL_TTL } else { ENTRY_TTL };
        now.saturating_duration_since(self.heard) < ttl
    }
}

#[derive(Debug, Default)]
struct Inner {
    contents: HashMap<ContentId, (Instant, HashMap<String, Entry>)>,
    received: HashMap<String, u64>,
}

/// What this peer has heard about the swarm. Shared by downloads and the Peer service.
#[derive(Debug, Default)]
pub(crate) struct SwarmBook {
    inner: Mutex<Inner>,
}

impl SwarmBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `peer_id` at `address` holds (part of) `content_id`, first hand (it asked
    /// this peer for pieces, or the tracker listed it): the entry is fresh as of `now`.
    pub(crate) fn learn(
        &self,
        content_id: ContentId,
        peer_id: &str,
        address: &str,
        partial: bool,
        now: Instant,
    ) {
        self.insert(content_id, peer_id, address, partial, now, true);
    }

    /// Remembers what another peer said (peer exchange): a holder not known yet is added as of
    /// `now`; one known (and still fresh) keeps its address and when it was last heard of first
    /// hand, so hearsay alone never keeps an entry alive.
    pub(crate) fn learn_hearsay(
        &self,
        content_id: ContentId,
        peer_id: &str,
        address: &str,
        partial: bool,
        now: Instant,
    ) {
        self.insert(content_id, peer_id, address, partial, now, false);
    }

    fn insert(
        &self,
        content_id: ContentId,
        peer_id: &str,
        address: &str,
        partial: bool,
        now: Instant,
        first_hand: bool,
    ) {
        let mut inner = self.lock();
        if !inner.contents.contains_key(&content_id) && inner.contents.len() >= MAX_CONTENTS {
            let oldest = inner
                .contents
                .iter()
                .min_by_key(|(_, (touched, _))| *touched)
                .map(|(cid, _)| *cid);
            if let Some(oldest) = oldest {
                inner.contents.remove(&oldest);
            }
        }
        let (touched, holders) = inner
            .contents
            .entry(content_id)
            .or_insert_with(|| (now, HashMap::new()));
        *touched = now;
        match holders.get(peer_id) {
            Some(known) if !first_hand && known.fresh(now) => return,
            _ => {}
        }
        if !holders.contains_key(peer_id) && holders.len() >= MAX_HOLDERS_PER_CONTENT {
            holders.retain(|_, e| e.fresh(now));
            if holders.len() >= MAX_HOLDERS_PER_CONTENT {
                return;
            }
        }
        holders.insert(
            peer_id.to_string(),
            Entry {
                address: address.to_string(),
                partial,
                heard: now,
            },
        );
    }

    /// Forgets a holder of `content_id` (it sent corrupt data, or left).
    pub(crate) fn forget(&self, content_id: &ContentId, peer_id: &str) {
        if let Some((_, holders)) = self.lock().contents.get_mut(content_id) {
            holders.remove(peer_id);
        }
    }

    /// Up to `n` holders of `content_id` heard of within [`ENTRY_TTL`] ([`PARTIAL_TTL`] for a
    /// partial holder), at random, other than `except` (the caller).
    pub(crate) fn holders(
        &self,
        content_id: &ContentId,
        n: usize,
        except: &str,
        now: Instant,
    ) -> Vec<HeardHolder> {
        let inner = self.lock();
        let Some((_, holders)) = inner.contents.get(content_id) else {
            return Vec::new();
        };
        holders
            .iter()
            .filter(|(id, e)| id.as_str() != except && e.fresh(now))
            .map(|(id, e)| HeardHolder {
                peer_id: id.clone(),
                address: e.address.clone(),
                partial: e.partial,
            })
            .choose_multiple(&mut rand::rng(), n.min(holders.len()))
    }

    /// Counts `bytes` of verified data received from `peer_id`.
    pub(crate) fn record_received(&self, peer_id: &str, bytes: u64) {
        let mut inner = self.lock();
        if let Some(total) = inner.received.get_mut(peer_id) {
            *total += bytes;
        } else if inner.received.len() < MAX_UPLOADERS {
            inner.received.insert(peer_id.to_string(), bytes);
        }
    }

    /// Bytes of verified data received from `peer_id` so far.
    pub(crate) fn received(&self, peer_id: &str) -> u64 {
        self.lock().received.get(peer_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_remembered_bounded_and_sampled() {
        let book = SwarmBook::default();
        let cid = ContentId::of(b"x");
        let now = Instant::now();
        for i in 0..MAX_HOLDERS_PER_CONTENT + 5 {
            book.learn(cid, &format!("p{i}"), "h:1", i % 2 == 0, now);
        }
        let all = book.holders(&cid, usize::MAX, "p0", now);
        assert_eq!(all.len(), MAX_HOLDERS_PER_CONTENT - 1);
        assert!(all.iter().all(|h| h.peer_id != "p0"));
        assert_eq!(book.holders(&cid, 3, "", now).len(), 3);
        book.forget(&cid, "p1");
        assert!(book
            .holders(&cid, usize::MAX, "", now)
            .iter()
            .all(|h| h.peer_id != "p1"));
        // Partial holders (even i) go first, complete ones later.
        let later = book.holders(&cid, usize::MAX, "", now + PARTIAL_TTL);
        assert!(!later.is_empty() && later.iter().all(|h| !h.partial));
        assert!(book.holders(&cid, 10, "", now + ENTRY_TTL).is_empty());
        assert!(book.holders(&ContentId::of(b"y"), 10, "", now).is_empty());
    }

    /// Peers passing a departed downloader to each other do not keep it alive: only its own
    /// requests (or the tracker) do.
    #[test]
    fn hearsay_never_extends_an_entry() {
        let book = SwarmBook::default();
        let cid = ContentId::of(b"x");
        let t0 = Instant::now();
        let listed = |at: Instant| -> Vec<String> {
            let mut ids: Vec<String> = book
                .holders(&cid, usize::MAX, "", at)
                .into_iter()
                .map(|h| h.peer_id)
                .collect();
            ids.sort();
            ids
        };
        // d1 fetched from us; d2 and s1 (complete) we only heard of from other peers.
        book.learn(cid, "d1", "10.0.0.1:9000", true, t0);
        book.learn_hearsay(cid, "d2", "10.0.0.2:9000", true, t0);
        book.learn_hearsay(cid, "s1", "10.0.0.3:9000", false, t0);
        assert_eq!(listed(t0), ["d1", "d2", "s1"]);
        // Every peer exchange repeats them, up to just before they expire ...
        let mut at = t0;
        while at + Duration::from_secs(1) < t0 + PARTIAL_TTL {
            at += Duration::from_secs(1);
            for (id, partial) in [("d1", true), ("d2", true), ("s1", false)] {
                book.learn_hearsay(cid, id, "10.9.9.9:1", partial, at);
            }
        }
        // ... and still the downloaders are gone PARTIAL_TTL after they were last heard of
        // first hand, the complete holder ENTRY_TTL after; hearsay did not change an address.
        assert_eq!(listed(t0 + PARTIAL_TTL), ["s1"]);
        assert!(book
            .holders(&cid, usize::MAX, "", t0)
            .iter()
            .all(|h| h.address.starts_with("10.0.0.")));
        assert!(listed(t0 + ENTRY_TTL).is_empty());
        // First-hand news does refresh: d1 asks again.
        book.learn(cid, "d1", "10.0.0.1:9000", true, t0 + PARTIAL_TTL);
        assert_eq!(listed(t0 + PARTIAL_TTL), ["d1", "s1"]);
        // Once expired, hearsay may bring an entry back, for one TTL (it is news again).
        let late = t0 + ENTRY_TTL + PARTIAL_TTL;
        book.learn_hearsay(cid, "d2", "10.0.0.2:9000", true, late);
        assert_eq!(listed(late), ["d2"]);
        assert!(listed(late + PARTIAL_TTL).is_empty());
    }

    #[test]
    fn contents_are_bounded() {
        let book = SwarmBook::default();
        let t0 = Instant::now();
        for i in 0..MAX_CONTENTS as u32 + 1 {
            let at = t0 + Duration::from_millis(i as u64);
            book.learn(ContentId::of(&i.to_le_bytes()), "p", "h:1", false, at);
        }
        let first = ContentId::of(&0u32.to_le_bytes());
        assert!(
            book.holders(&first, 1, "", t0).is_empty(),
            "oldest forgotten"
        );
        assert_eq!(book.lock().contents.len(), MAX_CONTENTS);
    }

    #[test]
    fn uploads_to_us_are_counted() {
        let book = SwarmBook::default();
        book.record_received("a", 10);
        book.record_received("a", 5);
        assert_eq!(book.received("a"), 15);
        assert_eq!(book.received("b"), 0);
    }
}
