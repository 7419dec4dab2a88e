//! What `tests/boundary.rs` builds on: the pieces of a hostile tracker's answers (the tracker is
//! `common::scripted_tracker`), the `peer` binary driven through its shell, and proptest
//! strategies for decoded tracker answers.

use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as tpb;
use proptest::prelude::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on a scripted shell session.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// A line no command prints: the shell's answer to it marks the end of the script's output.
pub(crate) const SENTINEL: &str = "end-of-script";

pub(crate) fn holder(peer_id: &str, address: &str) -> tpb::Holder {
    tpb::Holder {
        peer_id: peer_id.into(),
        address: address.into(),
        partial: false,
    }
}

pub(crate) fn version(
    name: &str,
    size: u64,
    content_id: &str,
    holders: Vec<tpb::Holder>,
) -> tpb::FileVersion {
    tpb::FileVersion {
        name: name.into(),
        size,
        content_id: content_id.into(),
        holders,
    }
}

/// A 64-byte content id that is not hex, with a two-byte character across byte 12 (the shell
/// used to slice `[..12]`).
pub(crate) fn split_id(valid: &str) -> String {
    format!("aaaaaaaaaaaé{}", &valid[13..])
}

/// Escape sequences a terminal would obey: clear screen, window title, colour, bidi override.
pub(crate) const CLEAR: &str = "\u{1b}[2J";
pub(crate) const TITLE: &str = "\u{1b}]0;pwned\u{7}";
pub(crate) const RED: &str = "\u{1b}[31m";
pub(crate) const RTL: &str = "\u{202e}";

/// True if `text` holds a character a terminal would obey (line ends aside).
pub(crate) fn obeyable(text: &str) -> bool {
    text.chars().any(|c| {
        c != '\n'
            && (c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    })
}

/// Kills the child when dropped (a failed assertion must not leave it running).
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `peer` binary with its shell on piped stdin/stdout, logs to `<root>/<id>.stderr`.
pub(crate) fn spawn_shell(
    id: &str,
    tracker: SocketAddr,
    root: &Path,
) -> (Killed, mpsc::Receiver<String>) {
    let log = std::fs::File::create(root.join(format!("{id}.stderr"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args([id, "0", &tracker.to_string(), "--bind", "127.0.0.1"])
        .arg("--root")
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Raw bytes, so that an ESC byte would be seen as it is (lossy only for invalid UTF-8).
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// Lines from `rx` up to and including the first that contains `marker` (bounded).
pub(crate) async fn lines_until(
    rx: mpsc::Receiver<String>,
    marker: &'static str,
) -> (Vec<String>, mpsc::Receiver<String>) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    lines.push(line);
                    if done {
                        return (lines, rx);
                    }
                }
                Err(e) => panic!(
                    "no {marker:?} within {SESSION_TIMEOUT:?} ({e}); output:\n{}",
                    lines.join("\n")
                ),
            }
        }
    })
    .await
    .unwrap()
}

/// Anything a protobuf string can hold, weighted to what matters: terminal controls, ids that
/// are almost valid, valid ids and addresses (closed ports only: nothing is ever resolved or
/// reached).
pub(crate) fn wire_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a-f0-9é]{0,70}",
        "[a-z0-9.]{1,12}",
        Just("f".to_string()),
        Just(ContentId::of(b"x").to_hex()),
        Just("127.0.0.1:9".to_string()),
        Just(format!("{CLEAR}{TITLE}{RED}{RTL}")),
    ]
}

pub(crate) fn any_holder() -> impl Strategy<Value = tpb::Holder> {
    (wire_text(), wire_text(), any::<bool>()).prop_map(|(peer_id, address, partial)| tpb::Holder {
        peer_id,
        address,
        partial,
    })
}

pub(crate) fn any_version() -> impl Strategy<Value = tpb::FileVersion> {
    (
        wire_text(),
        any::<u64>(),
        wire_text(),
        prop::collection::vec(any_holder(), 0..4),
    )
        .prop_map(|(name, size, content_id, holders)| tpb::FileVersion {
            name,
            size,
            content_id,
            holders,
        })
}

pub(crate) fn any_file() -> impl Strategy<Value = tpb::FileSummary> {
    (
        wire_text(),
        any::<u64>(),
        wire_text(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(name, size, content_id, holder_count, partial_holder_count)| tpb::FileSummary {
                name,
                size,
                content_id,
                holder_count,
                partial_holder_count,
            },
        )
}

pub(crate) fn any_peer() -> impl Strategy<Value = tpb::PeerSummary> {
    (wire_text(), wire_text(), any::<u32>(), any::<u64>()).prop_map(
        |(peer_id, address, file_count, total_bytes)| tpb::PeerSummary {
            peer_id,
            address,
            file_count,
            total_bytes,
        },
    )
}
