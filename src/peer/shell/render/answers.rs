//! The tracker's `ListFiles` and `ListPeers` answers, checked before the shell shows them.
//!
//! The tracker is another process, and a hostile one (or anyone on the path of a plaintext
//! connection) can send anything a protobuf can hold. Each entry is parsed into a checked type
//! (a valid file name or peer id, a content id, a dialable address, counts that agree); an entry
//! that does not parse is left out, and each answer with such entries gives one warning. What
//! `whohas` shows goes through `download::version::parse_versions`, as a download's does.

use crate::chunking::ContentId;
use crate::names::{peer_address, validate_file_name, validate_peer_id};
use crate::pb::tracker::{FileSummary, PeerSummary};

/// One file of a `ListFiles` answer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SwarmFile<'a> {
    /// A valid file name.
    pub(super) name: &'a str,
    pub(super) size: u64,
    pub(super) content_id: ContentId,
    pub(super) holder_count: u32,
    /// At most `holder_count`.
    pub(super) partial_holder_count: u32,
}

/// One peer of a `ListPeers` answer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SwarmPeer<'a> {
    /// A valid peer id.
    pub(super) peer_id: &'a str,
    /// A dialable `host:port`, normalised as `names::peer_address` does.
    pub(super) address: String,
    pub(super) file_count: u32,
    pub(super) total_bytes: u64,
}

/// The entries of a `ListFiles` answer that parse, in the tracker's order.
pub(super) fn files(list: &[FileSummary]) -> Vec<SwarmFile<'_>> {
    let checked: Vec<SwarmFile> = list
        .iter()
        .filter_map(|f| {
            validate_file_name(&f.name).ok()?;
            (f.partial_holder_count <= f.holder_count).then_some(())?;
            Some(SwarmFile {
                name: &f.name,
                size: f.size,
                content_id: f.content_id.parse().ok()?,
                holder_count: f.holder_count,
                partial_holder_count: f.partial_holder_count,
            })
        })
        .collect();
    warn_skipped("ListFiles", list.len() - checked.len());
    checked
}

/// The entries of a `ListPeers` answer that parse, in the tracker's order.
pub(super) fn peers(list: &[PeerSummary]) -> Vec<SwarmPeer<'_>> {
    let checked: Vec<SwarmPeer> = list
        .iter()
        .filter_map(|p| {
            validate_peer_id(&p.peer_id).ok()?;
            Some(SwarmPeer {
                peer_id: &p.peer_id,
                address: peer_address(&p.address)?,
                file_count: p.file_count,
                total_bytes: p.total_bytes,
            })
        })
        .collect();
    warn_skipped("ListPeers", list.len() - checked.len());
    checked
}

/// The one warning of an answer with malformed entries.
fn warn_skipped(rpc: &'static str, skipped: usize) {
    if skipped > 0 {
        tracing::warn!(
            rpc,
            skipped,
            "malformed entries in the tracker's answer were skipped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::is_unsafe_to_show;
    use crate::pb::tracker::{FileVersion, Holder};
    use crate::peer::download::version::parse_versions;
    use proptest::prelude::*;

    fn render(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Nothing a terminal would obey: no control character but the line ends, no bidi control.
    fn assert_showable(text: &str) {
        assert!(
            !text.chars().any(|c| c != '\n' && is_unsafe_to_show(c)),
            "{text:?}"
        );
    }

    #[test]
    fn malformed_entries_are_left_out() {
        let id = ContentId::of(b"x").to_hex();
        let file = |name: &str, content_id: &str, holders: u32, partial: u32| FileSummary {
            name: name.into(),
            size: 1,
            content_id: content_id.into(),
            holder_count: holders,
            partial_holder_count: partial,
        };
        let list = vec![
            file("ok", &id, 2, 1),
            file("short", "abc", 1, 0),
            // A multi-byte character across byte 12.
            file("multi", &format!("aaaaaaaaaaaé{}", &id[13..]), 1, 0),
            file("\u{1b}[2J", &id, 1, 0),
            file("counts", &id, 1, 2),
        ];
        let checked = files(&list);
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0].name, "ok");

        let peer = |id: &str, address: &str| PeerSummary {
            peer_id: id.into(),
            address: address.into(),
            file_count: 1,
            total_bytes: 1,
        };
        let list = vec![
            peer("A", "127.0.0.1:5"),
            peer("\u{1b}]0;title\u{7}", "127.0.0.1:5"),
            peer("B", "\u{1b}[31m:5"),
            peer("C", "\u{202e}1.0.0.127:5"),
        ];
        let checked = peers(&list);
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0].peer_id, "A");
    }

    /// Anything a string field can hold, weighted to what a terminal would obey.
    fn wire_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9.]{0,14}",
            "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a-f0-9é]{0,70}",
            Just("\u{1b}[2J\u{1b}]0;pwned\u{7}".to_string()),
            Just(ContentId::of(b"x").to_hex()),
            Just("127.0.0.1:9".to_string()),
        ]
    }

    fn holder() -> impl Strategy<Value = Holder> {
        (wire_text(), wire_text(), any::<bool>()).prop_map(|(peer_id, address, partial)| Holder {
            peer_id,
            address,
            partial,
        })
    }

    fn version() -> impl Strategy<Value = FileVersion> {
        (
            prop_oneof![Just("f".to_string()), wire_text()],
            any::<u64>(),
            wire_text(),
            prop::collection::vec(holder(), 0..4),
        )
            .prop_map(|(name, size, content_id, holders)| FileVersion {
                name,
                size,
                content_id,
                holders,
            })
    }

    fn file_summary() -> impl Strategy<Value = FileSummary> {
        (
            wire_text(),
            any::<u64>(),
            wire_text(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(name, size, content_id, holder_count, partial)| FileSummary {
                    name,
                    size,
                    content_id,
                    holder_count,
                    partial_holder_count: partial,
                },
            )
    }

    fn peer_summary() -> impl Strategy<Value = PeerSummary> {
        (wire_text(), wire_text(), any::<u32>(), any::<u64>()).prop_map(
            |(peer_id, address, file_count, total_bytes)| PeerSummary {
                peer_id,
                address,
                file_count,
                total_bytes,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the tracker answers, the shell's tables and JSON lines never panic, never
        /// carry a character a terminal would obey, and show one line per checked entry.
        #[test]
        fn any_tracker_answer_renders_safely(
            versions in prop::collection::vec(version(), 0..4),
            files_list in prop::collection::vec(file_summary(), 0..4),
            peers_list in prop::collection::vec(peer_summary(), 0..4),
        ) {
            let (offers, _) = parse_versions("f", versions);
            for json in [false, true] {
                let text = render(|out| super::super::who_has(out, "f", &offers, json));
                assert_showable(&text);
                let text = render(|out| super::super::swarm_files(out, &files_list, json));
                assert_showable(&text);
                if !json && !files(&files_list).is_empty() {
                    prop_assert_eq!(text.lines().count(), 1 + files(&files_list).len());
                }
                let text = render(|out| super::super::peers(out, &peers_list, json));
                assert_showable(&text);
                if !json {
                    prop_assert_eq!(text.lines().count(), 1 + peers(&peers_list).len());
                }
            }
            prop_assert!(offers.iter().all(|o| o.holders.len() <= 4));
        }
    }
}
