//! Before any data moves: the tracker's answer, checked, and which version of the file to fetch.
//!
//! The tracker's answer is hostile input like any other: each version's content id is parsed,
//! each holder's peer id and address checked, and at most [`MAX_HOLDERS_PER_ANSWER`] holders are
//! taken from one version. Malformed entries are skipped with one warning.

use super::{DownloadError, DownloadRequest};
use crate::chunking::ContentId;
use crate::names::{peer_address, validate_peer_id};
use crate::pb::tracker::FileVersion;

/// Most holders taken from one version in one answer (a download remembers more over time, from
/// refreshes and peer exchange, up to [`super::known::MAX_KNOWN_HOLDERS`]).
pub(crate) const MAX_HOLDERS_PER_ANSWER: usize = 10_000;

/// A holder as the tracker or another peer describes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HolderAddr {
    pub(crate) peer_id: String,
    pub(crate) address: String,
    pub(crate) partial: bool,
}

impl HolderAddr {
    /// Checks an announced holder: a valid peer id and a dialable `host:port`.
    pub(crate) fn parse(peer_id: &str, address: &str, partial: bool) -> Option<HolderAddr> {
        validate_peer_id(peer_id).ok()?;
        Some(HolderAddr {
            peer_id: peer_id.to_string(),
            address: peer_address(address)?,
            partial,
        })
    }
}

/// One version of a file as the tracker offers it, checked.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub(crate) content_id: ContentId,
    pub(crate) size: u64,
    pub(crate) holders: Vec<HolderAddr>,
}

/// The versions in a tracker's answer that parse, in the tracker's order (most holders first);
/// entries that do not are skipped, with one warning for the lot.
pub(crate) fn parse_versions(versions: Vec<FileVersion>) -> Vec<Offer> {
    let mut skipped = 0usize;
    let offers = versions
        .into_iter()
        .filter_map(|v| {
            let Ok(content_id) = v.content_id.parse::<ContentId>() else {
                skipped += 1;
                return None;
            };
            let total = v.holders.len();
            let holders: Vec<HolderAddr> = v
                .holders
                .iter()
                .take(MAX_HOLDERS_PER_ANSWER)
                .filter_map(|h| HolderAddr::parse(&h.peer_id, &h.address, h.partial))
                .collect();
            skipped += total.min(MAX_HOLDERS_PER_ANSWER) - holders.len();
            Some(Offer {
                content_id,
                size: v.size,
                holders,
            })
        })
        .collect();
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "malformed entries in the tracker's answer were skipped"
        );
    }
    offers
}

/// Picks the version to fetch: the one asked for, else the one with most holders (with a note
/// when there was a choice). The tracker lists versions by holder count, most first.
pub(super) fn pick_version<'a>(
    versions: &'a [Offer],
    request: &DownloadRequest,
) -> Result<(&'a Offer, Option<String>), DownloadError> {
    let first = versions
        .first()
        .ok_or_else(|| DownloadError::NotFound(request.name.clone()))?;
    let note = (versions.len() > 1).then(|| {
        format!(
            "{} versions of {:?} exist; picked {} (most holders: {}); choose one with get {}@<id-prefix>",
            versions.len(),
            request.name,
            first.content_id.short(),
            first.holders.len(),
            request.name
        )
    });
    Ok((first, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::tracker::Holder;

    #[test]
    fn malformed_answers_are_skipped_not_trusted() {
        let good = ContentId::of(b"x").to_hex();
        let holder = |id: &str, address: &str| Holder {
            peer_id: id.into(),
            address: address.into(),
            partial: false,
        };
        let offers = parse_versions(vec![
            FileVersion {
                name: "f".into(),
                size: 1,
                content_id: "short".into(),
                holders: vec![holder("a", "127.0.0.1:1")],
            },
            FileVersion {
                name: "f".into(),
                size: 1,
                content_id: good.clone(),
                holders: vec![
                    holder("ok", "127.0.0.1:1"),
                    holder("bad id!", "127.0.0.1:1"),
                    holder("x", "\u{1b}[2J:1"),
                    holder("y", "127.0.0.1:0"),
                ],
            },
        ]);
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].content_id.to_hex(), good);
        assert_eq!(offers[0].holders.len(), 1);
        assert_eq!(offers[0].holders[0].peer_id, "ok");
        let request = DownloadRequest::parse("f", super::super::Destination::Files);
        let (picked, note) = pick_version(&offers, &request).unwrap();
        assert_eq!(picked.content_id.to_hex(), good);
        assert!(note.is_none());
    }
}
