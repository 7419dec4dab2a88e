//! What the shell prints: aligned tables and human-readable lines for people, one JSON line per
//! `--json` command for scripts.
//!
//! Everything shown from the tracker is checked first (`answers`, and
//! `download::version::parse_versions` for `whohas`): an entry that does not parse is left
//! out with one warning. Text that quotes other processes (the reasons a holder was dropped) is
//! escaped with [`crate::names::shown`].
//!
//! The JSON shapes are typed structs, not ad-hoc `json!` literals, so a field cannot go missing
//! or change type silently. Their fields are declared in alphabetical order on purpose: the
//! output used to come from `serde_json::Value` objects (sorted maps), and scripts may compare the
//! text, so the order is part of the format. The tests below pin the exact text.

mod answers;

use super::HELP;
use crate::human;
use crate::names;
use crate::pb::tracker::{FileSummary, PeerSummary};
use crate::peer::download::version::Offer;
use crate::peer::download::DownloadReport;
use crate::peer::store::SharedFile;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One entry of `myfiles --json`.
#[derive(Serialize)]
struct MyFileJson<'a> {
    content_id: String,
    name: &'a str,
    size: u64,
}

/// Longest reason a holder was dropped shown in `get`'s line (it may quote the holder's own
/// error message).
const MAX_REASON_CHARS: usize = 300;

/// One holder inside a `whohas --json` version.
#[derive(Serialize)]
struct HolderJson<'a> {
    address: &'a str,
    /// True for a holder still downloading the file (it serves the pieces it has verified).
    partial: bool,
    peer_id: &'a str,
}

/// One version of `whohas --json`.
#[derive(Serialize)]
struct VersionJson<'a> {
    content_id: String,
    holders: Vec<HolderJson<'a>>,
    name: &'a str,
    size: u64,
}

/// One entry of `peers --json`.
#[derive(Serialize)]
struct PeerJson<'a> {
    address: String,
    file_count: u32,
    peer_id: &'a str,
    total_bytes: u64,
}

/// One entry of `files --json`.
#[derive(Serialize)]
struct SwarmFileJson<'a> {
    content_id: String,
    holder_count: u32,
    name: &'a str,
    /// Of `holder_count`, the holders still downloading it.
    partial_holder_count: u32,
    size: u64,
}

/// Writes `value` as one compact JSON line.
fn json_line(out: &mut dyn Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// Prints rows as an aligned table (first column left-aligned, the second right-aligned, the
/// rest left-aligned).
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 1 {
                // Sizes read best right-aligned.
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                text.push_str("  ");
            }
        }
        text
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `help`: every command's usage and what it does.
pub(super) fn help(out: &mut dyn Write) -> std::io::Result<()> {
    for (_, usage, what) in HELP {
        writeln!(out, "  {usage:<26} {what}")?;
    }
    Ok(())
}

/// `myfiles`: the files this peer shares (`files_dir` is named when there are none).
pub(super) fn my_files(
    out: &mut dyn Write,
    files: &[SharedFile],
    files_dir: &Path,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let list: Vec<MyFileJson> = files
            .iter()
            .map(|f| MyFileJson {
                content_id: f.content_id().to_hex(),
                name: &f.name,
                size: f.size,
            })
            .collect();
        return json_line(out, &list);
    }
    if files.is_empty() {
        return writeln!(
            out,
            "no files shared (put files in {})",
            files_dir.display()
        );
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| vec![f.name.clone(), human::bytes(f.size), f.content_id().short()])
        .collect();
    table(out, &["NAME", "SIZE", "ID"], &rows)
}

/// `whohas`: each version of the file `name` and its holders, as checked from the tracker's
/// answer.
pub(super) fn who_has(
    out: &mut dyn Write,
    name: &str,
    versions: &[Offer],
    json: bool,
) -> std::io::Result<()> {
    if json {
        let list: Vec<VersionJson> = versions
            .iter()
            .map(|v| VersionJson {
                content_id: v.content_id.to_hex(),
                holders: v
                    .holders
                    .iter()
                    .map(|h| HolderJson {
                        address: &h.address,
                        partial: h.partial,
                        peer_id: &h.peer_id,
                    })
                    .collect(),
                name,
                size: v.size,
            })
            .collect();
        return json_line(out, &list);
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            // Complete holders first; a partial holder (still downloading, serving what it has)
            // says so.
            let (partial, complete): (Vec<_>, Vec<_>) = v.holders.iter().partition(|h| h.partial);
            let holders: Vec<String> = complete
                .iter()
                .map(|h| format!("{} ({})", h.peer_id, h.address))
                .chain(
                    partial
                        .iter()
                        .map(|h| format!("{} ({}, partial)", h.peer_id, h.address)),
                )
                .collect();
            vec![
                name.to_string(),
                human::bytes(v.size),
                v.content_id.short(),
                v.holders.len().to_string(),
                holders.join(", "),
            ]
        })
        .collect();
    table(out, &["NAME", "SIZE", "ID", "HOLDERS", "WHO"], &rows)
}

/// `peers`: the peers in the swarm (the entries of the tracker's answer that parse).
pub(super) fn peers(out: &mut dyn Write, peers: &[PeerSummary], json: bool) -> std::io::Result<()> {
    let peers = answers::peers(peers);
    if json {
        let list: Vec<PeerJson> = peers
            .iter()
            .map(|p| PeerJson {
                address: p.address.clone(),
                file_count: p.file_count,
                peer_id: p.peer_id,
                total_bytes: p.total_bytes,
            })
            .collect();
        return json_line(out, &list);
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.peer_id.to_string(),
                human::bytes(p.total_bytes),
                p.file_count.to_string(),
                p.address.clone(),
            ]
        })
        .collect();
    table(out, &["PEER", "SHARED", "FILES", "ADDRESS"], &rows)
}

/// `files`: every file the swarm offers, with holder counts (the entries of the tracker's answer
/// that parse).
pub(super) fn swarm_files(
    out: &mut dyn Write,
    files: &[FileSummary],
    json: bool,
) -> std::io::Result<()> {
    let files = answers::files(files);
    if json {
        let list: Vec<SwarmFileJson> = files
            .iter()
            .map(|f| SwarmFileJson {
                content_id: f.content_id.to_hex(),
                holder_count: f.holder_count,
                name: f.name,
                partial_holder_count: f.partial_holder_count,
                size: f.size,
            })
            .collect();
        return json_line(out, &list);
    }
    if files.is_empty() {
        return writeln!(out, "the swarm offers no files");
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.name.to_string(),
                human::bytes(f.size),
                f.content_id.short(),
                f.holder_count.to_string(),
            ]
        })
        .collect();
    table(out, &["NAME", "SIZE", "ID", "HOLDERS"], &rows)
}

/// `get`: what a finished download did (or that there was nothing to do).
pub(super) fn download(out: &mut dyn Write, report: &DownloadReport) -> std::io::Result<()> {
    if let Some(note) = &report.note {
        writeln!(out, "note: {}", names::shown(note))?;
    }
    if report.already_had {
        return writeln!(
            out,
            "already have {} ({}, same content)",
            report.name,
            report.content_id.short()
        );
    }
    if report.resumed > 0 {
        writeln!(
            out,
            "resumed: {} kept from an earlier attempt, {} fetched now",
            human::bytes(report.resumed),
            human::bytes(report.fetched)
        )?;
    }
    let used: Vec<String> = report
        .holders
        .iter()
        .map(|h| match &h.dropped {
            None => format!("{} {}", h.peer_id, human::bytes(h.bytes)),
            Some(why) => format!(
                "{} {} (dropped: {})",
                h.peer_id,
                human::bytes(h.bytes),
                names::shown(&names::at_most(why, MAX_REASON_CHARS))
            ),
        })
        .collect();
    // The final fsync is part of the time; shown because it is the part the disk decides.
    let sync = report.sync.map_or(String::new(), |d| {
        format!(", final fsync {:.1} ms", d.as_secs_f64() * 1e3)
    });
    writeln!(
        out,
        "got {} ({}, id {}) from {} holder(s) [{}] in {}, {:.1} MB/s{sync}",
        report.name,
        human::bytes(report.size),
        report.content_id.short(),
        report.holders.len(),
        used.join(", "),
        human::duration(report.elapsed),
        report.mb_per_sec()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::Manifest;
    use crate::pb::tracker::{FileVersion, Holder};
    use crate::peer::download::version::parse_versions;
    use std::sync::Arc;

    fn text(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> String {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_got_line_ends_with_the_final_fsync_when_there_was_one() {
        let mut report = crate::peer::download::DownloadReport {
            name: "big.bin".into(),
            content_id: crate::chunking::ContentId::of(b"big"),
            size: 1 << 30,
            holders: vec![crate::peer::download::HolderReport {
                peer_id: "A".into(),
                bytes: 1 << 30,
                dropped: None,
            }],
            elapsed: std::time::Duration::from_secs(2),
            fetched: 1 << 30,
            resumed: 0,
            note: None,
            already_had: false,
            path: None,
            sync: Some(std::time::Duration::from_micros(12_500)),
        };
        let line = text(|out| download(out, &report));
        assert!(line.starts_with("got big.bin (1.0 GiB, id "), "{line}");
        assert!(
            line.trim_end().ends_with("MB/s, final fsync 12.5 ms"),
            "{line}"
        );
        report.sync = None;
        let line = text(|out| download(out, &report));
        assert!(line.trim_end().ends_with("MB/s"), "{line}");
    }

    #[test]
    fn tables_align() {
        let out = text(|out| {
            table(
                out,
                &["NAME", "SIZE", "ID"],
                &[
                    vec!["a".into(), "1.0 KiB".into(), "abc".into()],
                    vec!["longer".into(), "12 B".into(), "def".into()],
                ],
            )
        });
        assert_eq!(
            out,
            "NAME       SIZE  ID\na       1.0 KiB  abc\nlonger     12 B  def\n"
        );
    }

    // The exact `--json` text of each command for a fixed input: scripts parse (and may
    // compare) it, so a field renamed, retyped or reordered must fail here.

    #[test]
    fn myfiles_json_is_pinned() {
        let data = b"hello";
        let manifest = Manifest::from_reader(&data[..], data.len() as u64).unwrap();
        let file = SharedFile {
            name: "a \"b\".txt".into(),
            path: "/x/files/a".into(),
            size: 5,
            mtime_ns: 0,
            manifest: Arc::new(manifest),
        };
        let out = text(|out| my_files(out, &[file], Path::new("/x/files"), true));
        assert_eq!(
            out,
            format!(
                "[{{\"content_id\":\"{}\",\"name\":\"a \\\"b\\\".txt\",\"size\":5}}]\n",
                blake3::hash(data).to_hex()
            )
        );
        let empty = text(|out| my_files(out, &[], Path::new("/x/files"), true));
        assert_eq!(empty, "[]\n");
    }

    #[test]
    fn whohas_json_is_pinned() {
        let versions = vec![
            FileVersion {
                name: "v.mp4".into(),
                size: 1 << 20,
                content_id: "ab".repeat(32),
                holders: vec![
                    Holder {
                        peer_id: "A".into(),
                        address: "10.0.0.1:5000".into(),
                        partial: false,
                    },
                    Holder {
                        peer_id: "B".into(),
                        address: "[::1]:6000".into(),
                        partial: true,
                    },
                ],
            },
            FileVersion {
                name: "v.mp4".into(),
                size: 0,
                content_id: "cd".repeat(32),
                holders: vec![],
            },
        ];
        let offers = parse_versions("v.mp4", versions).0;
        let out = text(|out| who_has(out, "v.mp4", &offers, true));
        let ab = "ab".repeat(32);
        let cd = "cd".repeat(32);
        assert_eq!(
            out,
            format!(
                "[{{\"content_id\":\"{ab}\",\"holders\":[{{\"address\":\"10.0.0.1:5000\",\"partial\":false,\"peer_id\":\"A\"}},\
                 {{\"address\":\"[::1]:6000\",\"partial\":true,\"peer_id\":\"B\"}}],\"name\":\"v.mp4\",\"size\":1048576}},\
                 {{\"content_id\":\"{cd}\",\"holders\":[],\"name\":\"v.mp4\",\"size\":0}}]\n"
            )
        );
    }

    #[test]
    fn peers_json_is_pinned() {
        let peers_list = vec![PeerSummary {
            peer_id: "A".into(),
            address: "127.0.0.1:5000".into(),
            file_count: 2,
            total_bytes: u64::MAX,
        }];
        let out = text(|out| peers(out, &peers_list, true));
        assert_eq!(
            out,
            "[{\"address\":\"127.0.0.1:5000\",\"file_count\":2,\"peer_id\":\"A\",\
             \"total_bytes\":18446744073709551615}]\n"
        );
    }

    #[test]
    fn files_json_is_pinned() {
        let files = vec![FileSummary {
            name: "é.bin".into(),
            size: 4096,
            content_id: "0f".repeat(32),
            holder_count: 3,
            partial_holder_count: 1,
        }];
        let out = text(|out| swarm_files(out, &files, true));
        assert_eq!(
            out,
            format!(
                "[{{\"content_id\":\"{}\",\"holder_count\":3,\"name\":\"é.bin\",\"partial_holder_count\":1,\"size\":4096}}]\n",
                "0f".repeat(32)
            )
        );
    }

    #[test]
    fn tables_show_short_ids_and_human_sizes() {
        let files = vec![FileSummary {
            name: "a".into(),
            size: 1536,
            content_id: format!("0123456789ab{}", "c".repeat(52)),
            holder_count: 1,
            partial_holder_count: 0,
        }];
        assert_eq!(
            text(|out| swarm_files(out, &files, false)),
            "NAME     SIZE  ID            HOLDERS\na     1.5 KiB  0123456789ab  1\n"
        );
        assert_eq!(
            text(|out| swarm_files(out, &[], false)),
            "the swarm offers no files\n"
        );
    }

    #[test]
    fn whohas_lists_complete_holders_first_and_marks_partial_ones() {
        let holder = |id: &str, address: &str, partial: bool| Holder {
            peer_id: id.into(),
            address: address.into(),
            partial,
        };
        let versions = vec![FileVersion {
            name: "v".into(),
            size: 2048,
            content_id: "ab".repeat(32),
            holders: vec![
                holder("A", "10.0.0.1:1", true),
                holder("B", "10.0.0.2:1", false),
            ],
        }];
        assert_eq!(
            text(|out| who_has(out, "v", &parse_versions("v", versions).0, false)),
            "NAME     SIZE  ID            HOLDERS  WHO\n\
             v     2.0 KiB  abababababab  2        B (10.0.0.2:1), A (10.0.0.1:1, partial)\n"
        );
    }
}
