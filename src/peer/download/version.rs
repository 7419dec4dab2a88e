//! Before any data moves: the tracker's answer, checked, and which version of the file to fetch.
//!
//! The tracker's answer is hostile input like any other: each version's content id is parsed,
//! each holder's peer id and address checked, and at most [`MAX_HOLDERS_PER_ANSWER`] holders are
//! taken from one version. Malformed entries are skipped with one warning per answer. A holder's
//! peer-exchange answer is checked the same way ([`parse_exchanged`]).

use super::{DownloadError, DownloadRequest};
use crate::chunking::ContentId;
use crate::names::{peer_address, validate_peer_id};
use crate::pb::peer::KnownHolder;
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

/// The versions in a tracker's answer about the file `name` that parse, in the tracker's order
/// (most holders first), and how many entries (versions and holders) were skipped, so a caller
/// left with nothing can say why. A version naming another file is malformed too. Skipped
/// entries give one warning for the lot.
pub(crate) fn parse_versions(name: &str, versions: Vec<FileVersion>) -> (Vec<Offer>, usize) {
    let mut skipped = 0usize;
    let offers = versions
        .into_iter()
        .filter_map(|v| {
            let Ok(content_id) = v.content_id.parse::<ContentId>() else {
                skipped += 1;
                return None;
            };
            if v.name != name {
                skipped += 1;
                return None;
            }
            let (holders, bad) = parse_holders(
                v.holders
                    .iter()
                    .map(|h| (h.peer_id.as_str(), h.address.as_str(), h.partial)),
                MAX_HOLDERS_PER_ANSWER,
            );
            skipped += bad;
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
    (offers, skipped)
}

/// The holders among the first `max` of `holders` (peer id, address, partial) that parse, and
/// how many of those did not. Holders past `max` are ignored: an answer is bounded, however
/// long the list.
fn parse_holders<'a>(
    holders: impl Iterator<Item = (&'a str, &'a str, bool)>,
    max: usize,
) -> (Vec<HolderAddr>, usize) {
    let mut bad = 0;
    let parsed = holders
        .take(max)
        .filter_map(|(peer_id, address, partial)| {
            let holder = HolderAddr::parse(peer_id, address, partial);
            bad += usize::from(holder.is_none());
            holder
        })
        .collect();
    (parsed, bad)
}

/// A holder's peer-exchange answer (`GetHolders`), checked: at most
/// [`MAX_EXCHANGED`](crate::peer::book::MAX_EXCHANGED) holders (the protocol's bound; more is
/// malformed), each with a valid peer id and address; the rest are skipped with one warning.
pub(crate) fn parse_exchanged(from: &str, holders: &[KnownHolder]) -> Vec<HolderAddr> {
    let max = crate::peer::book::MAX_EXCHANGED;
    let (parsed, bad) = parse_holders(
        holders
            .iter()
            .map(|h| (h.peer_id.as_str(), h.address.as_str(), h.partial)),
        max,
    );
    let skipped = bad + holders.len().saturating_sub(max);
    if skipped > 0 {
        tracing::warn!(
            holder = %from,
            skipped,
            "malformed entries in a holder's peer exchange were skipped"
        );
    }
    parsed
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
    use proptest::prelude::*;

    #[test]
    fn malformed_answers_are_skipped_not_trusted() {
        let good = ContentId::of(b"x").to_hex();
        let holder = |id: &str, address: &str| Holder {
            peer_id: id.into(),
            address: address.into(),
            partial: false,
        };
        let (offers, _) = parse_versions(
            "f",
            vec![
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
            ],
        );
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].content_id.to_hex(), good);
        assert_eq!(offers[0].holders.len(), 1);
        assert_eq!(offers[0].holders[0].peer_id, "ok");
        let request = DownloadRequest::parse("f", super::super::Destination::Files);
        let (picked, note) = pick_version(&offers, &request).unwrap();
        assert_eq!(picked.content_id.to_hex(), good);
        assert!(note.is_none());
    }

    #[test]
    fn two_versions_with_short_or_split_ids_never_panic_and_name_the_pick() {
        let good = ContentId::of(b"x").to_hex();
        let version = |name: &str, content_id: String| FileVersion {
            name: name.into(),
            size: 1,
            content_id,
            holders: vec![Holder {
                peer_id: "a".into(),
                address: "127.0.0.1:1".into(),
                partial: false,
            }],
        };
        let answer = vec![
            version("f", "abc".into()),
            version("f", format!("aaaaaaaaaaaé{}", &good[13..])),
            version("other", ContentId::of(b"y").to_hex()),
            version("f", good.clone()),
            version("f", ContentId::of(b"z").to_hex()),
        ];
        let (offers, skipped) = parse_versions("f", answer);
        assert_eq!(skipped, 3);
        assert_eq!(offers.len(), 2);
        let request = DownloadRequest::parse("f", super::super::Destination::Files);
        let (picked, note) = pick_version(&offers, &request).unwrap();
        assert_eq!(picked.content_id.to_hex(), good);
        assert!(note.unwrap().contains(&good[..12]));
    }

    #[test]
    fn peer_exchange_answers_are_checked_and_bounded() {
        let known = |i: usize, address: &str| KnownHolder {
            peer_id: format!("p{i}"),
            address: address.into(),
            partial: i.is_multiple_of(2),
        };
        let mut answer = vec![known(0, "\u{1b}[2J:1"), known(1, "127.0.0.1:0")];
        answer.extend((2..1000).map(|i| known(i, "127.0.0.1:7")));
        let holders = parse_exchanged("h", &answer);
        assert_eq!(holders.len(), crate::peer::book::MAX_EXCHANGED - 2);
        assert!(holders.iter().all(|h| h.address == "127.0.0.1:7"));
    }

    fn wire_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9.:\\[\\]]{0,16}",
            Just(ContentId::of(b"x").to_hex()),
            Just("127.0.0.1:9".to_string()),
            Just("[::1]:9".to_string()),
        ]
    }

    fn holder() -> impl Strategy<Value = (String, String, bool)> {
        (wire_text(), wire_text(), any::<bool>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any decoded `WhoHas` or `GetHolders` answer: no panic, and what comes out is checked
        /// (a content id, valid peer ids, dialable addresses), bounded, and in the given order.
        #[test]
        fn any_answer_parses_into_checked_holders(
            versions in prop::collection::vec(
                (wire_text(), any::<u64>(), wire_text(), prop::collection::vec(holder(), 0..6)),
                0..5,
            ),
            exchanged in prop::collection::vec(holder(), 0..80),
        ) {
            let answer: Vec<FileVersion> = versions
                .into_iter()
                .map(|(name, size, content_id, holders)| FileVersion {
                    name,
                    size,
                    content_id,
                    holders: holders
                        .into_iter()
                        .map(|(peer_id, address, partial)| Holder { peer_id, address, partial })
                        .collect(),
                })
                .collect();
            let total = answer.len();
            let (offers, skipped) = parse_versions("f", answer);
            prop_assert!(offers.len() + skipped >= total);
            let checked = |h: &HolderAddr| {
                validate_peer_id(&h.peer_id).is_ok()
                    && peer_address(&h.address).as_deref() == Some(h.address.as_str())
            };
            for offer in &offers {
                prop_assert!(offer.holders.iter().all(checked));
            }
            let exchanged: Vec<KnownHolder> = exchanged
                .into_iter()
                .map(|(peer_id, address, partial)| KnownHolder { peer_id, address, partial })
                .collect();
            let holders = parse_exchanged("h", &exchanged);
            prop_assert!(holders.len() <= crate::peer::book::MAX_EXCHANGED);
            prop_assert!(holders.iter().all(checked));
        }
    }
}
