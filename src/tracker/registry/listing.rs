//! What the registry answers: `WhoHas` (the versions of one name and a sample of their live
//! holders) and the pages of `ListPeers` and `ListFiles`. Reads only; every answer costs what it
//! returns plus a bounded amount of skipping ([`MAX_PAGE_WORK`]).

use super::index::Version;
use super::{Face, Registry, DEFAULT_MAX_HOLDERS};
use crate::chunking::{ContentId, HASH_LEN};
use crate::names::validate_file_name;
use crate::pb::tracker as pb;
use crate::tracker::limits::MAX_PAGE_WORK;
use crate::tracker::page::{file_token, peer_token, FilePosition};
use crate::tracker::TrackerError;
use rand::seq::SliceRandom;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

/// A page's first allocation: pages are usually full, but an allocation should not follow a
/// page size the caller chose before any entry was found.
const DEFAULT_PAGE_HINT: usize = 1024;

/// Checks a `WhoHas` request (every store answers the same refusals); the most holders per
/// version its answer lists.
pub(in crate::tracker) fn check_who_has(
    name: &str,
    prefix: &str,
    max_holders: u32,
) -> Result<usize, TrackerError> {
    validate_file_name(name)?;
    if !prefix.is_empty() && !crate::chunking::is_content_id_prefix(prefix) {
        return Err(TrackerError::InvalidArgument(format!(
            "content id prefix {prefix:?} is not lowercase hexadecimal"
        )));
    }
    Ok(match max_holders {
        0 => DEFAULT_MAX_HOLDERS,
        n => n.min(DEFAULT_MAX_HOLDERS),
    } as usize)
}

/// `id` in lowercase hex, written into `buffer`: a table lookup per byte, where
/// [`ContentId::to_hex`] goes a character at a time through an iterator (measured: most of the
/// cost of formatting a `WhoHas` answer's content id).
pub(super) fn content_id_hex<'a>(id: &ContentId, buffer: &'a mut [u8; 2 * HASH_LEN]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in buffer.chunks_exact_mut(2).zip(id.0) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(buffer).unwrap_or_default()
}

impl Registry {
    /// The versions of `name` (optionally only content ids starting with `prefix`) with their live
    /// holders, most complete holders first. A version with more than `max_holders` holders (0 or
    /// more than [`DEFAULT_MAX_HOLDERS`]: that) lists a random sample of them, complete holders
    /// before partial ones.
    pub(in crate::tracker) fn who_has(
        &self,
        name: &str,
        prefix: &str,
        max_holders: u32,
        now: Instant,
    ) -> Result<Vec<pb::FileVersion>, TrackerError> {
        let limit = check_who_has(name, prefix, max_holders)?;
        let mut rng = rand::rng();
        // (complete holders in all, version) so versions sort by what can really be downloaded.
        let mut versions: Vec<(usize, usize, pb::FileVersion)> = Vec::new();
        for version in self.index.of_name(name) {
            // The hex on the stack first: most versions asked with a prefix are not wanted.
            let mut hex = [0u8; 2 * HASH_LEN];
            let cid = content_id_hex(&version.content_id, &mut hex);
            if !cid.starts_with(prefix) {
                continue;
            }
            // The live holders as (record, partial): cheap to sample, and only the chosen few
            // become strings.
            // Sized up front: collected from a filter, the vector would grow (and copy) twice
            // on the way to ten holders.
            let holders = version.holders.as_slice();
            let mut live: Vec<(&Face, bool)> = Vec::with_capacity(holders.len());
            live.extend(holders.iter().filter_map(|h| {
                let face = self.face(h.peer)?;
                self.alive(face, now).then_some((face, h.partial))
            }));
            let total = live.len();
            if total == 0 {
                continue;
            }
            // Complete holders first (a stable order: the sample below is what is random).
            live.sort_by_key(|&(_, partial)| partial);
            let complete_count = live.partition_point(|&(_, partial)| !partial);
            if total > limit {
                let (complete, partial) = live.split_at_mut(complete_count);
                let from_complete = limit.min(complete.len());
                let mut chosen = Vec::with_capacity(limit);
                chosen.extend_from_slice(complete.partial_shuffle(&mut rng, from_complete).0);
                chosen
                    .extend_from_slice(partial.partial_shuffle(&mut rng, limit - from_complete).0);
                live = chosen;
            }
            // Each chosen peer's text (id and address) is an allocation of its own, likely not
            // in cache: one read of each, all independent, lets their misses overlap (and the
            // sort's work), where copying them one by one below, between allocations, waited
            // for each in turn (measured: the largest cost left in an answer of ten holders).
            let warm = live.iter().fold(0u8, |a, (face, _)| a ^ face.text_head());
            std::hint::black_box(warm);
            live.sort_unstable_by(|(a, _), (b, _)| a.id_order(b));
            let holders = live
                .iter()
                .map(|&(face, partial)| pb::Holder {
                    peer_id: String::from(face.id()),
                    address: String::from(face.address()),
                    partial,
                })
                .collect();
            versions.push((
                complete_count,
                total,
                pb::FileVersion {
                    name: String::from(name),
                    size: version.size,
                    content_id: String::from(cid),
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

    /// A page of live peers in id order: at most `size` of them after peer id `after`, and the
    /// token of the next page (`None` on the last). Looks at no more than [`MAX_PAGE_WORK`]
    /// peers.
    pub(in crate::tracker) fn peers_page(
        &self,
        after: Option<&str>,
        size: usize,
        now: Instant,
    ) -> (Vec<pb::PeerSummary>, Option<String>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Vec::with_capacity(size.min(self.ids.len()));
        let (mut work, mut last) = (0, None);
        for (id, &key) in self.ids.range::<str, _>((start, Bound::Unbounded)) {
            if page.len() >= size || work >= MAX_PAGE_WORK {
                return (page, last.map(peer_token));
            }
            work += 1;
            last = Some(&**id);
            let Some(peer) = self.slot(key).filter(|s| self.alive(&s.face, now)) else {
                continue;
            };
            page.push(pb::PeerSummary {
                peer_id: id.to_string(),
                address: peer.face.address().to_string(),
                file_count: u32::try_from(peer.record.files.len()).unwrap_or(u32::MAX),
                total_bytes: u64::try_from(peer.record.total_bytes).unwrap_or(u64::MAX),
            });
        }
        (page, None)
    }

    /// A page of the versions offered by live peers, in (name, content id, size) order: at most
    /// `size` of them after `after`, and the token of the next page (`None` on the last). Looks
    /// at no more than about [`MAX_PAGE_WORK`] holders (a version is always counted whole).
    pub(in crate::tracker) fn files_page(
        &self,
        after: Option<FilePosition>,
        size: usize,
        now: Instant,
    ) -> (Vec<pb::FileSummary>, Option<String>) {
        let after = after
            .as_ref()
            .map(|p| (p.name.as_str(), &p.content_id, p.size));
        let mut page = Vec::with_capacity(size.min(DEFAULT_PAGE_HINT));
        let (mut work, mut last) = (0, None);
        for (name, version) in self.index.after(after) {
            if page.len() >= size || work >= MAX_PAGE_WORK {
                let token =
                    last.map(|(n, v): (&Arc<str>, &Version)| file_token(n, &v.content_id, v.size));
                return (page, token);
            }
            last = Some((name, version));
            let (mut live, mut partial) = (0u32, 0u32);
            for holder in version.holders.as_slice() {
                work += 1;
                if self.face(holder.peer).is_some_and(|f| self.alive(f, now)) {
                    live += 1;
                    partial += u32::from(holder.partial);
                }
            }
            if live > 0 {
                page.push(pb::FileSummary {
                    name: name.to_string(),
                    size: version.size,
                    content_id: String::from(content_id_hex(
                        &version.content_id,
                        &mut [0; 2 * HASH_LEN],
                    )),
                    holder_count: live,
                    partial_holder_count: partial,
                });
            }
        }
        (page, None)
    }
}
