//! Page tokens of `ListPeers` and `ListFiles`: the last key a page covered, so the next page
//! starts right after it. Clients treat tokens as opaque; the tracker treats them as untrusted
//! input: a token is parsed back into a checked key (bounded length, a valid peer id or file
//! name, a content id, a size) before it is used, and anything else is INVALID_ARGUMENT. A key
//! is a position, not a handle: it costs nothing to keep and stays meaningful when the entry it
//! names is gone, so tokens need no state on the tracker and cannot exhaust it.

use super::TrackerError;
use crate::chunking::ContentId;
use crate::names::{validate_file_name, validate_peer_id, MAX_PEER_ID_BYTES};

/// Longest file name the tracker accepts, in bytes (see `names`).
const MAX_NAME_BYTES: usize = 255;

/// Where a `ListFiles` page ended: the last version it covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilePosition {
    /// The version's file name (valid).
    pub name: String,
    /// Its content id.
    pub content_id: ContentId,
    /// Its size.
    pub size: u64,
}

fn malformed(what: &str) -> TrackerError {
    TrackerError::InvalidArgument(format!(
        "page_token is not a {what} page token this tracker gave (start again with an empty one)"
    ))
}

/// The token after peer `id`: its bytes in hex (opaque, printable).
pub(crate) fn peer_token(id: &str) -> String {
    hex::encode(id)
}

/// The peer id a `ListPeers` token names, `None` for the first page.
pub(crate) fn parse_peer_token(token: &str) -> Result<Option<String>, TrackerError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > 2 * MAX_PEER_ID_BYTES {
        return Err(malformed("ListPeers"));
    }
    let id = hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| validate_peer_id(id).is_ok())
        .ok_or_else(|| malformed("ListPeers"))?;
    Ok(Some(id))
}

/// The token after version `(name, content_id, size)`: `hex(name).content_id.size`.
pub(crate) fn file_token(name: &str, content_id: &ContentId, size: u64) -> String {
    format!("{}.{}.{size}", hex::encode(name), content_id.to_hex())
}

/// The version a `ListFiles` token names, `None` for the first page.
pub(crate) fn parse_file_token(token: &str) -> Result<Option<FilePosition>, TrackerError> {
    if token.is_empty() {
        return Ok(None);
    }
    // Checked before any decoding: a token costs at most this much work.
    if token.len() > 2 * MAX_NAME_BYTES + 1 + 64 + 1 + 20 {
        return Err(malformed("ListFiles"));
    }
    let mut parts = token.split('.');
    let (Some(name), Some(content_id), Some(size), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("ListFiles"));
    };
    let name = hex::decode(name)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|name| validate_file_name(name).is_ok())
        .ok_or_else(|| malformed("ListFiles"))?;
    let content_id = content_id.parse().map_err(|_| malformed("ListFiles"))?;
    // Digits only: `u64::from_str` would also take a leading '+'.
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("ListFiles"));
    }
    let size = size.parse().map_err(|_| malformed("ListFiles"))?;
    Ok(Some(FilePosition {
        name,
        content_id,
        size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(parse_peer_token("").unwrap(), None);
        assert_eq!(parse_file_token("").unwrap(), None);
        let id = "peer-1.x_Y";
        assert_eq!(parse_peer_token(&peer_token(id)).unwrap().unwrap(), id);
        let cid = ContentId::of(b"x");
        for (name, size) in [("a", 0), ("f.tar.gz", u64::MAX), ("é 名", 7)] {
            let position = parse_file_token(&file_token(name, &cid, size))
                .unwrap()
                .unwrap();
            assert_eq!(
                position,
                FilePosition {
                    name: name.into(),
                    content_id: cid,
                    size
                }
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let cid = ContentId::of(b"x").to_hex();
        let name = hex::encode("f");
        let long_name = hex::encode("n".repeat(256));
        for bad in [
            "zz".to_string(),
            "0".into(),
            hex::encode("bad id"),
            hex::encode("a".repeat(65)),
            hex::encode([0xff, 0xfe]),
            "ab".repeat(200),
        ] {
            assert!(
                matches!(
                    parse_peer_token(&bad),
                    Err(TrackerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        for bad in [
            "x".to_string(),
            format!("{name}.{cid}"),
            format!("{name}.{cid}.1.2"),
            format!("{name}.{cid}.+1"),
            format!("{name}.{cid}."),
            format!("{name}.{cid}.18446744073709551616"),
            format!("{name}.{}.1", cid.to_uppercase()),
            format!("{name}.abc.1"),
            format!("{}.{cid}.1", hex::encode("../etc")),
            format!("{}.{cid}.1", hex::encode("a/b")),
            format!("{long_name}.{cid}.1"),
            format!(".{cid}.1"),
            "a".repeat(100_000),
        ] {
            assert!(
                matches!(
                    parse_file_token(&bad),
                    Err(TrackerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }
}
