//! What a peer has heard about the swarm, for peer exchange and fair uploads.
//!
//! * **Who holds what** ([`SwarmBook::learn`], [`SwarmBook::holders`]): holders of each content id
//!   this peer met, from the tracker's answers, other peers' `GetHolders` answers, and the
//!   downloaders that fetched from this peer (they are partial holders and said where they
//!   listen). `GetHolders` answers from it, so a download keeps finding holders while the tracker
//!   is down. Bounded: [`MAX_CONTENTS`] content ids, [`MAX_HOLDERS_PER_CONTENT`] holders each,
//!   entries forgotten after [`ENTRY_TTL`].
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
/// How long a holder is remembered without being heard of again.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(120);
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

    /// Remembers that `peer_id` at `address` holds (part of) `content_id`.
    pub(crate) fn learn(
        &self,
        content_id: ContentId,
        peer_id: &str,
        address: &str,
        partial: bool,
        now: Instant,
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
        if !holders.contains_key(peer_id) && holders.len() >= MAX_HOLDERS_PER_CONTENT {
            holders.retain(|_, e| now.duration_since(e.heard) < ENTRY_TTL);
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

    /// Up to `n` holders of `content_id` heard of within [`ENTRY_TTL`], at random, other than
    /// `except` (the caller).
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
            .filter(|(id, e)| id.as_str() != except && now.duration_since(e.heard) < ENTRY_TTL)
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
        assert!(book.holders(&cid, 10, "", now + ENTRY_TTL).is_empty());
        assert!(book.holders(&ContentId::of(b"y"), 10, "", now).is_empty());
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
