//! The holder index: every version (name, content id, size) offered, in that order, with the
//! peers that hold it. Laid out for a small cost per catalog entry, since the catalog is what
//! grows: a name is stored once (`Arc<str>`, shared with the peers' catalogs), a holder is a
//! 4-byte peer key and a flag, and a version held by one peer (the common case) needs no
//! allocation of its own. A `BTreeMap` keeps versions in order for paging and for `WhoHas`
//! (a range over one name).

use crate::chunking::ContentId;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A peer's slot in the registry: what the index stores instead of a copy of the peer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct PeerKey(pub(super) u32);

/// One holder of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Holder {
    /// Who.
    pub(super) peer: PeerKey,
    /// It is still downloading the file and serves only the pieces it has.
    pub(super) partial: bool,
}

/// A version of a named file: its name, content id and the size its holders announced. Keyed
/// by all three, so a peer announcing a known content id with a wrong size makes a version of
/// its own instead of changing what the honest holders' version says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct VersionKey {
    /// The file name (checked), shared with every catalog that holds it.
    pub(super) name: Arc<str>,
    /// The content id.
    pub(super) content_id: ContentId,
    /// The size in bytes.
    pub(super) size: u64,
}

impl VersionKey {
    /// The smallest key of `name`: ranges over one name start here.
    fn first_of(name: Arc<str>) -> Self {
        VersionKey {
            name,
            content_id: ContentId([0; 32]),
            size: 0,
        }
    }
}

/// The holders of one version, sorted by peer key. One holder is kept inline.
#[derive(Debug, Clone)]
pub(super) enum Holders {
    /// A single holder: no allocation.
    One(Holder),
    /// Two or more, sorted by peer key.
    Many(Vec<Holder>),
}

impl Holders {
    /// The holders, sorted by peer key.
    pub(super) fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }

    /// Adds `holder`, or updates its flag if its peer is there already.
    fn insert(&mut self, holder: Holder) {
        match self {
            Holders::One(h) if h.peer == holder.peer => *h = holder,
            Holders::One(h) => {
                let mut many = vec![*h, holder];
                many.sort_by_key(|h| h.peer);
                *self = Holders::Many(many);
            }
            Holders::Many(v) => match v.binary_search_by_key(&holder.peer, |h| h.peer) {
                Ok(i) => v[i] = holder,
                Err(i) => v.insert(i, holder),
            },
        }
    }

    /// Removes `peer`; true if no holder is left.
    fn remove(&mut self, peer: PeerKey) -> bool {
        match self {
            Holders::One(h) => h.peer == peer,
            Holders::Many(v) => {
                if let Ok(i) = v.binary_search_by_key(&peer, |h| h.peer) {
                    v.remove(i);
                }
                if let [last] = v.as_slice() {
                    *self = Holders::One(*last);
                } else if v.len() < v.capacity() / 4 {
                    // A crowd that left gives its memory back.
                    v.shrink_to_fit();
                }
                false
            }
        }
    }
}

/// Every version offered and its holders.
#[derive(Debug, Default)]
pub(super) struct Index {
    versions: BTreeMap<VersionKey, Holders>,
}

impl Index {
    /// The shared copy of `name` if some version of it is indexed, else a new one: a name is
    /// stored once however many peers hold it.
    pub(super) fn intern(&self, name: &str) -> Arc<str> {
        let probe = VersionKey::first_of(Arc::from(name));
        match self.versions.range(probe.clone()..).next() {
            Some((key, _)) if *key.name == *name => key.name.clone(),
            _ => probe.name,
        }
    }

    /// Records that `holder` holds `key`.
    pub(super) fn insert(&mut self, key: VersionKey, holder: Holder) {
        match self.versions.get_mut(&key) {
            Some(holders) => holders.insert(holder),
            None => {
                self.versions.insert(key, Holders::One(holder));
            }
        }
    }

    /// Records that `peer` no longer holds `key`; a version left without holders goes.
    pub(super) fn remove(&mut self, key: &VersionKey, peer: PeerKey) {
        if let Some(holders) = self.versions.get_mut(key) {
            if holders.remove(peer) {
                self.versions.remove(key);
            }
        }
    }

    /// The versions of `name`, in key order. One descent of the tree (the first version of the
    /// name is where its versions start, and they end at the first key of another name): a
    /// `WhoHas` pays it on every call.
    pub(super) fn of_name<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a VersionKey, &'a Holders)> + 'a {
        self.versions
            .range((
                Bound::Included(VersionKey::first_of(Arc::from(name))),
                Bound::Unbounded,
            ))
            .take_while(move |(key, _)| *key.name == *name)
    }

    /// The versions after `after` (all of them for `None`), in key order.
    pub(super) fn after(
        &self,
        after: Option<VersionKey>,
    ) -> impl Iterator<Item = (&VersionKey, &Holders)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.versions.range((start, Bound::Unbounded))
    }

    /// How many versions are indexed.
    pub(super) fn len(&self) -> usize {
        self.versions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, byte: u8) -> VersionKey {
        VersionKey {
            name: Arc::from(name),
            content_id: ContentId([byte; 32]),
            size: 1,
        }
    }

    #[test]
    fn holders_stay_sorted_and_one_is_inline() {
        let mut index = Index::default();
        let k = key("f", 1);
        for peer in [5, 1, 3, 1] {
            index.insert(
                k.clone(),
                Holder {
                    peer: PeerKey(peer),
                    partial: peer == 3,
                },
            );
        }
        let peers: Vec<u32> = index
            .of_name("f")
            .next()
            .unwrap()
            .1
            .as_slice()
            .iter()
            .map(|h| h.peer.0)
            .collect();
        assert_eq!(peers, [1, 3, 5]);
        index.remove(&k, PeerKey(1));
        index.remove(&k, PeerKey(5));
        assert!(matches!(index.versions[&k], Holders::One(h) if h.peer == PeerKey(3) && h.partial));
        index.remove(&k, PeerKey(3));
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn names_are_interned_and_ranges_keep_to_one_name() {
        let mut index = Index::default();
        let stored = key("f", 9);
        index.insert(
            stored.clone(),
            Holder {
                peer: PeerKey(0),
                partial: false,
            },
        );
        assert!(Arc::ptr_eq(&index.intern("f"), &stored.name));
        let fresh = index.intern("g");
        assert!(
            !Arc::ptr_eq(&fresh, &index.intern("g")),
            "nothing to share yet"
        );
        index.insert(
            VersionKey {
                name: index.intern("f"),
                content_id: ContentId([0; 32]),
                size: 0,
            },
            Holder {
                peer: PeerKey(1),
                partial: false,
            },
        );
        index.insert(
            key("f0", 0),
            Holder {
                peer: PeerKey(2),
                partial: false,
            },
        );
        index.insert(
            key("e", 0xff),
            Holder {
                peer: PeerKey(3),
                partial: false,
            },
        );
        assert_eq!(index.of_name("f").count(), 2);
        assert_eq!(index.after(Some(key("f", 9))).count(), 1);
        assert_eq!(index.after(None).count(), 4);
    }
}
