//! Validation of names that come from the network or the command line: file names (one path
//! component inside a shared folder) and peer ids.

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

#[cfg(test)]
mod tests {
    use super::*;

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
