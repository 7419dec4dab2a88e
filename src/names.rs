//! Validation of names that come from the network or the command line: file names (one path
//! component inside a shared folder), peer ids, and peer addresses (`host:port`); and `shown`,
//! which makes any text from the network safe to print on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Longest file name accepted, in bytes (the common file-system limit).
pub(crate) const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest peer id accepted, in bytes.
pub(crate) const MAX_PEER_ID_BYTES: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("{what} is empty")]
    Empty {
        /// "file name" or "peer id".
        what: &'static str,
    },
    /// Too long.
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// "file name" or "peer id".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains a character that could escape the folder or confuse a terminal.
    #[error("{what} {name:?} contains {found}, which is not allowed")]
    BadCharacter {
        /// "file name" or "peer id".
        what: &'static str,
        /// The name, shortened.
        name: String,
        /// What was found.
        found: &'static str,
    },
    /// "." or "..".
    #[error("file name {0:?} is not a file")]
    DotName(String),
}

/// A refused name is the caller's mistake: INVALID_ARGUMENT, with the reason.
impl From<NameError> for tonic::Status {
    fn from(e: NameError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn shorten(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Unicode embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they make a name
/// print differently from what it is (`"\u{202E}txt.exe"` shows as `exe.txt`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that must never reach a terminal as they are: control characters (C0, DEL, C1:
/// escape sequences, NUL, newlines, carriage returns) and bidirectional-text controls. Valid file
/// names and peer ids contain none of them, so escaping them leaves valid output unchanged.
pub(crate) fn is_unsafe_to_show(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// `text` (from the network, or anything that quotes it) as it may be shown on a terminal: every
/// character of [`is_unsafe_to_show`] is written out visibly instead, so `ESC[2J`, OSC title
/// sequences, colour codes, NUL, newlines and bidi overrides are seen, never obeyed.
///
/// The escapes: a control character below U+0080 (C0 and DEL) as `\xNN` in lowercase hex (ESC is
/// `\x1b`, a newline `\x0a`), anything else (C1 controls, bidi controls) as `\u{NNNN}`
/// (U+202E is `\u{202e}`), as tracing writes them. A backslash is left as it is: the point is that
/// nothing is obeyed, not that the escaping can be undone. Borrowed (no copy) when nothing needs
/// escaping, which is the case for every valid name.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_to_show) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_shown(&mut out, c);
    }
    Cow::Owned(out)
}

/// Like [`shown`], but newlines stay: for whole blocks of output made of lines.
pub(crate) fn shown_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe_to_show(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push(c),
            c => push_shown(&mut out, c),
        }
    }
    Cow::Owned(out)
}

/// Appends `c`, escaped as [`shown`] says if it is unsafe to show.
fn push_shown(out: &mut String, c: char) {
    if !is_unsafe_to_show(c) {
        out.push(c);
    } else if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// `text` cut to at most `max` characters, with `...` when something was cut: for text from the
/// network quoted in an error line (a status message can be kilobytes long).
pub(crate) fn at_most(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}...", &text[..end])),
    }
}

/// Accepts a file name that is exactly one path component: no `/`, `\`, NUL or control
/// characters, no bidirectional-text controls, not `.` or `..`, at most [`MAX_FILE_NAME_BYTES`]
/// bytes.
pub(crate) fn validate_file_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "file name";
    if name.is_empty() {
        return Err(NameError::Empty { what: WHAT });
    }
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(NameError::TooLong {
            what: WHAT,
            len: name.len(),
            max: MAX_FILE_NAME_BYTES,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName(name.to_string()));
    }
    let found = name.chars().find_map(|c| match c {
        '/' => Some("'/'"),
        '\\' => Some("'\\'"),
        '\0' => Some("a NUL byte"),
        c if c.is_control() => Some("a control character"),
        // (with the arm above: exactly what `shown` escapes)
        c if is_bidi_control(c) => Some("a bidirectional-text control character"),
        _ => None,
    });
    match found {
        Some(found) => Err(NameError::BadCharacter {
            what: WHAT,
            name: shorten(name),
            found,
        }),
        None => Ok(()),
    }
}

/// Accepts a peer id of 1-64 characters from `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_peer_id(id: &str) -> Result<(), NameError> {
    const WHAT: &str = "peer id";
    if id.is_empty() {
        return Err(NameError::Empty { what: WHAT });
    }
    if id.len() > MAX_PEER_ID_BYTES {
        return Err(NameError::TooLong {
            what: WHAT,
            len: id.len(),
            max: MAX_PEER_ID_BYTES,
        });
    }
    if id.starts_with('.') {
        return Err(NameError::BadCharacter {
            what: WHAT,
            name: shorten(id),
            found: "a leading '.'",
        });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::BadCharacter {
            what: WHAT,
            name: shorten(id),
            found: "a character outside [A-Za-z0-9._-]",
        });
    }
    Ok(())
}

/// `host:port` for a claimed host: an IP address (IPv6 with or without brackets) that can be
/// connected to, or a DNS host name (labels of letters, digits and inner hyphens, at most 253
/// bytes, not ending in an all-numeric label, so `999.1.1.1` is not taken for a name).
pub(crate) fn host_port(host: &str, port: u16) -> Option<String> {
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Ok(ip) = unbracketed.unwrap_or(host).parse::<IpAddr>() {
        let ip = ip.to_canonical();
        let unusable =
            ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST);
        return (!unusable).then(|| SocketAddr::new(ip, port).to_string());
    }
    if unbracketed.is_some() || host.len() > 253 {
        return None;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let last_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (host.split('.').all(label_ok) && !last_numeric).then(|| format!("{host}:{port}"))
}

/// A peer address from the network (`host:port`, as the tracker and other peers hand them out),
/// checked and normalised as [`host_port`] does; `None` for anything else.
pub(crate) fn peer_address(address: &str) -> Option<String> {
    if address.len() > MAX_ADDRESS_BYTES {
        return None;
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    host_port(host, port)
}

/// Longest `host:port` accepted: a 253-byte name, a colon and five digits, with room to spare.
pub(crate) const MAX_ADDRESS_BYTES: usize = 270;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        for (raw, seen) in [
            ("\u{1b}[2J", "\\x1b[2J"),
            ("\u{1b}]0;pwned\u{7}", "\\x1b]0;pwned\\x07"),
            ("\u{1b}[31mred", "\\x1b[31mred"),
            ("a\0b\nc\rd\te\u{7f}", "a\\x00b\\x0ac\\x0dd\\x09e\\x7f"),
            ("\u{9b}2J", "\\u{9b}2J"),
            ("\u{202e}txt.exe", "\\u{202e}txt.exe"),
            ("a\u{2066}b", "a\\u{2066}b"),
        ] {
            assert_eq!(shown(raw), seen, "{raw:?}");
            assert!(!shown(raw).chars().any(is_unsafe_to_show));
        }
        assert_eq!(shown_lines("a\u{1b}b\nc\n"), "a\\x1bb\nc\n");
        // Valid names pass untouched, without a copy.
        for valid in [
            "vídeo final.mp4",
            "peer-1",
            "[::1]:80",
            "日本語.txt",
            "a\\b",
        ] {
            assert!(matches!(shown(valid), Cow::Borrowed(_)), "{valid:?}");
        }
        assert_eq!(at_most("abcdef", 3), "abc...");
        assert_eq!(at_most("ééé", 3), "ééé");
        assert_eq!(at_most("éééé", 3), "ééé...");
    }

    #[test]
    fn peer_addresses_from_the_network_are_checked() {
        for (good, normal) in [
            ("127.0.0.1:5", "127.0.0.1:5"),
            ("[::1]:80", "[::1]:80"),
            ("peer-1.lan:9000", "peer-1.lan:9000"),
        ] {
            assert_eq!(peer_address(good).as_deref(), Some(normal));
        }
        for junk in [
            "",
            "host",
            "host:0",
            "host:70000",
            ":5",
            "0.0.0.0:5",
            "a b:5",
            "\u{1b}[2J:5",
            "x\n:5",
            &format!("{}:5", "a".repeat(300)),
        ] {
            assert_eq!(peer_address(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn file_names_that_could_escape_are_refused() {
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc/passwd",
            "..\\x",
            "a\0b",
            "a\nb",
            "\x1b[2J",
            &long,
            "\u{202E}txt.exe",
            "a\u{2066}b",
            "a\u{85}b",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "a.txt",
            "vídeo final.mp4",
            "..hidden",
            ".profile",
            &"y".repeat(255),
        ] {
            assert_eq!(validate_file_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn peer_ids_are_plain() {
        for bad in ["", ".a", "a b", "a/b", &"p".repeat(65)] {
            assert!(validate_peer_id(bad).is_err(), "{bad:?}");
        }
        for good in ["A", "peer-1", "node_2.lan"] {
            assert_eq!(validate_peer_id(good), Ok(()));
        }
    }
}
