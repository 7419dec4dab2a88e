//! The holder index: every version (name, content id, size) offered, with the peers that hold
//! it. Laid out for a small cost per catalog entry, since the catalog is what grows: a name is
//! stored once (`Arc<str>`, shared with the peers' catalogs), a holder is a 4-byte peer key and
//! a flag, and a name with one version held by one peer (the common case) needs no allocation
//! beyond its name.
//!
//! Two views of the same names, kept in step by [`Index::insert`] and [`Index::remove`] (the
//! only ways in): a hash map from a name to its versions, which `WhoHas` reads on every call
//! (one hash of the name and a probe; an ordered map's descent compared the name against a
//! dozen keys, each behind a pointer of its own, and was the largest cost of answering), and
//! the names in order, which `ListFiles` pages walk. The versions of a name are kept sorted by
//! (content id, size), so the two together give the (name, content id, size) order of a page.

use crate::chunking::ContentId;
use std::collections::{BTreeSet, HashMap};
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VersionKey {
    /// The file name (checked), shared with every catalog that holds it.
    pub(super) name: Arc<str>,
    /// The content id.
    pub(super) content_id: ContentId,
    /// The size in bytes.
    pub(super) size: u64,
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

/// A version of a name and its holders.
#[derive(Debug, Clone)]
pub(super) struct Version {
    /// The content id.
    pub(super) content_id: ContentId,
    /// The size in bytes.
    pub(super) size: u64,
    /// Who holds it (never none: a version without holders goes).
    pub(super) holders: Holders,
}

impl Version {
    /// Where it sorts among the versions of its name.
    fn order(&self) -> (&ContentId, u64) {
        (&self.content_id, self.size)
    }
}

/// The versions of one name, sorted by (content id, size). One version is kept inline: most
/// names have one.
#[derive(Debug, Clone)]
enum Versions {
    /// A single version: no allocation.
    One(Version),
    /// Two or more, sorted.
    Many(Vec<Version>),
}

impl Versions {
    fn as_slice(&self) -> &[Version] {
        match self {
            Versions::One(v) => std::slice::from_ref(v),
            Versions::Many(v) => v,
        }
    }

    /// Adds `holder` to the version (`content_id`, `size`), which is created if new; true if
    /// it was.
    fn insert(&mut self, content_id: ContentId, size: u64, holder: Holder) -> bool {
        let at = self
            .as_slice()
            .binary_search_by(|v| v.order().cmp(&(&content_id, size)));
        match (at, &mut *self) {
            (Ok(_), Versions::One(v)) => v.holders.insert(holder),
            (Ok(i), Versions::Many(v)) => v[i].holders.insert(holder),
            (Err(i), Versions::One(one)) => {
                let new = Version {
                    content_id,
                    size,
                    holders: Holders::One(holder),
                };
                let mut many = Vec::with_capacity(2);
                many.push(one.clone());
                many.insert(i, new);
                *self = Versions::Many(many);
            }
            (Err(i), Versions::Many(v)) => v.insert(
                i,
                Version {
                    content_id,
                    size,
                    holders: Holders::One(holder),
                },
            ),
        }
        at.is_err()
    }

    /// Removes `peer` from the version (`content_id`, `size`). Returns (whether that version
    /// went, whether no version is left).
    fn remove(&mut self, content_id: &ContentId, size: u64, peer: PeerKey) -> (bool, bool) {
        let Ok(i) = self
            .as_slice()
            .binary_search_by(|v| v.order().cmp(&(content_id, size)))
        else {
            return (false, false);
        };
        match self {
            Versions::One(v) => {
                let gone = v.holders.remove(peer);
                (gone, gone)
            }
            Versions::Many(v) => {
                if !v[i].holders.remove(peer) {
                    return (false, false);
                }
                v.remove(i);
                if let [last] = v.as_mut_slice() {
                    let last = last.clone();
                    *self = Versions::One(last);
                } else if v.len() < v.capacity() / 4 {
                    v.shrink_to_fit();
                }
                (true, false)
            }
        }
    }
}

/// Every version offered and its holders.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Name -> its versions: what `WhoHas` reads.
    names: HashMap<Arc<str>, Versions>,
    /// The same names, in order: what `ListFiles` pages walk.
    order: BTreeSet<Arc<str>>,
    /// Versions in all.
    len: usize,
}

impl Index {
    /// The shared copy of `name` if it is indexed, else a new one: a name is stored once
    /// however many peers hold it.
    pub(super) fn intern(&self, name: &str) -> Arc<str> {
        match self.names.get_key_value(name) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(name),
        }
    }

    /// Records that `holder` holds `key`.
    pub(super) fn insert(&mut self, key: VersionKey, holder: Holder) {
        match self.names.get_mut(&*key.name) {
            Some(versions) => {
                if versions.insert(key.content_id, key.size, holder) {
                    self.len += 1;
                }
            }
            None => {
                let version = Version {
                    content_id: key.content_id,
                    size: key.size,
                    holders: Holders::One(holder),
                };
                self.order.insert(key.name.clone());
                self.names.insert(key.name, Versions::One(version));
                self.len += 1;
            }
        }
    }

    /// Records that `peer` no longer holds `key`; a version left without holders goes, and a
    /// name left without versions goes from both views.
    pub(super) fn remove(&mut self, key: &VersionKey, peer: PeerKey) {
        let Some(versions) = self.names.get_mut(&*key.name) else {
            return;
        };
        let (version_gone, name_gone) = versions.remove(&key.content_id, key.size, peer);
        self.len -= usize::from(version_gone);
        if name_gone {
            self.names.remove(&*key.name);
            self.order.remove(&*key.name);
        }
    }

    /// The versions of `name`, sorted by (content id, size): one hash lookup, which a `WhoHas`
    /// pays on every call.
    pub(super) fn of_name(&self, name: &str) -> &[Version] {
        self.names.get(name).map_or(&[], Versions::as_slice)
    }

    /// The versions after (`name`, `content_id`, `size`) (all of them for `None`), in (name,
    /// content id, size) order, each with its name. The position need not be indexed.
    pub(super) fn after<'a>(
        &'a self,
        after: Option<(&'a str, &'a ContentId, u64)>,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Version)> + 'a {
        // The rest of the position's own name, then the names after it.
        let rest_of_name = after.and_then(|(name, content_id, size)| {
            let (name, versions) = self.names.get_key_value(name)?;
            let versions = versions.as_slice();
            let from = versions.partition_point(|v| v.order() <= (content_id, size));
            Some(versions[from..].iter().map(move |v| (name, v)))
        });
        let start = after.map_or(Bound::Unbounded, |(name, _, _)| Bound::Excluded(name));
        let later_names = self
            .order
            .range::<str, _>((start, Bound::Unbounded))
            .flat_map(move |name| self.of_name(name).iter().map(move |v| (name, v)));
        rest_of_name.into_iter().flatten().chain(later_names)
    }

    /// How many versions are indexed.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Checks that the two views hold the same names and the count is right (tests).
    #[cfg(test)]
    pub(super) fn assert_in_step(&self) {
        assert_eq!(self.names.len(), self.order.len());
        for name in &self.order {
            let (shared, versions) = self.names.get_key_value(name).expect("name in both views");
            assert!(Arc::ptr_eq(shared, name), "one copy of {name:?}");
            let versions = versions.as_slice();
            assert!(!versions.is_empty());
            assert!(versions.windows(2).all(|w| w[0].order() < w[1].order()));
            assert!(versions.iter().all(|v| !v.holders.as_slice().is_empty()));
        }
        let counted: usize = self.names.values().map(|v| v.as_slice().len()).sum();
        assert_eq!(counted, self.len);
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

    fn holder(peer: u32) -> Holder {
        Holder {
            peer: PeerKey(peer),
            partial: false,
        }
    }

    /// The (name, first content id byte, size) of every version, in `after` order.
    fn listed(index: &Index, after: Option<(&str, &ContentId, u64)>) -> Vec<(String, u8, u64)> {
        index
            .after(after)
            .map(|(name, v)| (name.to_string(), v.content_id.0[0], v.size))
            .collect()
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
        let peers: Vec<u32> = index.of_name("f")[0]
            .holders
            .as_slice()
            .iter()
            .map(|h| h.peer.0)
            .collect();
        assert_eq!(peers, [1, 3, 5]);
        index.remove(&k, PeerKey(1));
        index.remove(&k, PeerKey(5));
        assert!(matches!(
            index.of_name("f")[0].holders,
            Holders::One(h) if h.peer == PeerKey(3) && h.partial
        ));
        index.remove(&k, PeerKey(3));
        assert_eq!(index.len(), 0);
        index.assert_in_step();
    }

    #[test]
    fn names_are_interned_and_lookups_keep_to_one_name() {
        let mut index = Index::default();
        let stored = key("f", 9);
        index.insert(stored.clone(), holder(0));
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
            holder(1),
        );
        index.insert(key("f0", 0), holder(2));
        index.insert(key("e", 0xff), holder(3));
        let f: Vec<u8> = index
            .of_name("f")
            .iter()
            .map(|v| v.content_id.0[0])
            .collect();
        assert_eq!(f, [0, 9], "sorted by content id");
        assert!(index.of_name("f1").is_empty());
        let nine = ContentId([9; 32]);
        assert_eq!(listed(&index, Some(("f", &nine, 1))), [("f0".into(), 0, 1)]);
        assert_eq!(
            listed(&index, None),
            [
                ("e".into(), 0xff, 1),
                ("f".into(), 0, 0),
                ("f".into(), 9, 1),
                ("f0".into(), 0, 1)
            ]
        );
        index.assert_in_step();
    }

    /// A page may start at a position that is no longer (or never was) indexed: it goes on
    /// from the next key in order, within the name and after it.
    #[test]
    fn pages_go_on_from_positions_that_are_gone() {
        let mut index = Index::default();
        for (name, byte, size) in [("a", 1, 1), ("a", 1, 5), ("a", 3, 1), ("c", 0, 1)] {
            let mut k = key(name, byte);
            k.size = size;
            index.insert(k, holder(0));
        }
        let two = ContentId([2; 32]);
        let one = ContentId([1; 32]);
        assert_eq!(
            listed(&index, Some(("a", &one, 2))),
            [("a".into(), 1, 5), ("a".into(), 3, 1), ("c".into(), 0, 1)]
        );
        assert_eq!(
            listed(&index, Some(("a", &two, 0))),
            [("a".into(), 3, 1), ("c".into(), 0, 1)]
        );
        assert_eq!(listed(&index, Some(("b", &two, 0))), [("c".into(), 0, 1)]);
        assert!(listed(&index, Some(("c", &two, 0))).is_empty());
    }

    /// The name map and the ordered names stay in step: a name goes from both with its last
    /// holder of its last version, comes back on a re-add, and the version count follows.
    #[test]
    fn both_views_stay_in_step() {
        let mut index = Index::default();
        let (v1, v2) = (key("f", 1), key("f", 2));
        index.insert(v1.clone(), holder(0));
        index.insert(v1.clone(), holder(1));
        index.insert(v2.clone(), holder(1));
        index.insert(key("g", 1), holder(0));
        index.assert_in_step();
        assert_eq!(index.len(), 3);

        // Not the last holder: the version stays.
        index.remove(&v1, PeerKey(0));
        index.assert_in_step();
        assert_eq!(index.len(), 3);
        // A peer that does not hold it, a version or a name never indexed: nothing changes.
        index.remove(&v1, PeerKey(7));
        index.remove(&key("f", 5), PeerKey(1));
        index.remove(&key("h", 1), PeerKey(1));
        index.assert_in_step();
        assert_eq!(index.len(), 3);

        // The last holder of one version: the name stays with its other version.
        index.remove(&v1, PeerKey(1));
        index.assert_in_step();
        assert_eq!(index.len(), 2);
        assert_eq!(index.of_name("f").len(), 1);
        assert!(matches!(index.names["f"], Versions::One(_)));

        // The last holder of the last version: the name goes from both views.
        index.remove(&v2, PeerKey(1));
        index.assert_in_step();
        assert_eq!(index.len(), 1);
        assert!(index.of_name("f").is_empty());
        assert_eq!(listed(&index, None), [("g".into(), 1, 1)]);

        // Re-added: back in both, as a name of its own again (no stale shared copy).
        let again = VersionKey {
            name: index.intern("f"),
            ..v2.clone()
        };
        index.insert(again, holder(4));
        index.assert_in_step();
        assert_eq!(index.len(), 2);
        assert_eq!(
            listed(&index, None),
            [("f".into(), 2, 1), ("g".into(), 1, 1)]
        );
        assert!(Arc::ptr_eq(&index.intern("f"), &index.intern("f")));

        // Everything out: empty.
        index.remove(&v2, PeerKey(4));
        index.remove(&key("g", 1), PeerKey(0));
        index.assert_in_step();
        assert_eq!(index.len(), 0);
        assert!(index.order.is_empty() && index.names.is_empty());
    }
}
