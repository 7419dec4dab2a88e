//! Replies of the Redis store's scripts, read back as hostile input: every string checked (peer
//! ids, addresses, names, content ids, sizes), every list bounded, a reply of the wrong shape
//! refused (`None`), an entry that does not parse skipped. Nothing here panics.

use super::MAX_VERSIONS;
use crate::chunking::ContentId;
use crate::names::{peer_address, validate_file_name, validate_peer_id};
use crate::pb::tracker as pb;
use rand::seq::SliceRandom;
use redis::Value;

/// The version member of (name, content id, size): byte order is the in-memory index's order.
pub(super) fn member(name: &str, content_id: &ContentId, size: u64) -> String {
    format!("{name}\0{}\0{size:020}", content_id.to_hex())
}

/// A version member read back from Redis, checked.
pub(super) fn parse_member(member: &str) -> Option<(String, ContentId, u64)> {
    let mut parts = member.split('\0');
    let (Some(name), Some(cid), Some(size), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    validate_file_name(name).ok()?;
    let cid: ContentId = cid.parse().ok()?;
    if size.len() != 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name.to_string(), cid, size.parse().ok()?))
}

/// A string value (bulk or simple), if it is UTF-8.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A non-negative count (an integer, or a string of digits as HINCRBYFLOAT keeps them).
pub(super) fn count(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => {
            let s = text(other)?;
            let f: f64 = s.parse().ok()?;
            // Sums of sizes are kept as floats (sizes are u64 claims): saturate, never panic.
            (f.is_finite() && f >= 0.0).then(|| f.min(u64::MAX as f64) as u64)
        }
    }
}

/// A page reply `{more, last, entries...}`: (more, the last key looked at, the entries).
pub(super) fn split_page(reply: &[Value]) -> Option<(bool, Option<String>, &[Value])> {
    let [more, last, entries @ ..] = reply else {
        return None;
    };
    let more = count(more)? == 1;
    let last = text(last).filter(|l| !l.is_empty());
    Some((more, last, entries))
}

/// The WhoHas reply as the in-memory store answers: versions with most complete holders
/// first, each with at most `limit` holders (complete ones first, a random sample), sorted by
/// id. `None` for a reply of the wrong shape; entries that do not parse are skipped.
pub(super) fn parse_versions(
    name: &str,
    prefix: &str,
    limit: usize,
    reply: Vec<Value>,
) -> Option<Vec<pb::FileVersion>> {
    let mut rng = rand::rng();
    let mut versions: Vec<(u64, u64, pb::FileVersion)> = Vec::new();
    let mut values = reply.iter();
    while let Some(member) = values.next() {
        if versions.len() >= MAX_VERSIONS {
            break;
        }
        let complete_count = count(values.next()?)?;
        let total = count(values.next()?)?;
        // Bounded by what the script samples: at most 1.5x the limit from each set, or twice it.
        let listed = usize::try_from(count(values.next()?)?).ok()?;
        if listed > 4 * limit + 8 {
            return None;
        }
        let mut complete = Vec::new();
        let mut partial = Vec::new();
        for _ in 0..listed {
            let (id, address, flag) = (values.next()?, values.next()?, values.next()?);
            let Some(id) = text(id).filter(|id| validate_peer_id(id).is_ok()) else {
                continue;
            };
            let Some(address) = text(address).and_then(|a| peer_address(&a)) else {
                continue;
            };
            let is_partial = text(flag).as_deref() == Some("p");
            let holder = pb::Holder {
                peer_id: id,
                address,
                partial: is_partial,
            };
            if is_partial {
                partial.push(holder);
            } else {
                complete.push(holder);
            }
        }
        let Some((version_name, cid, size)) = text(member).and_then(|m| parse_member(&m)) else {
            continue;
        };
        let cid_hex = cid.to_hex();
        // What Redis says must be what was asked for.
        if version_name != name || !cid_hex.starts_with(prefix) {
            continue;
        }
        if complete.len() + partial.len() == 0 {
            continue;
        }
        complete.shuffle(&mut rng);
        partial.shuffle(&mut rng);
        let mut holders: Vec<pb::Holder> =
            complete.into_iter().chain(partial).take(limit).collect();
        holders.sort_unstable_by(|a, b| a.peer_id.cmp(&b.peer_id));
        holders.dedup_by(|a, b| a.peer_id == b.peer_id);
        versions.push((
            complete_count,
            total,
            pb::FileVersion {
                name: version_name,
                size,
                content_id: cid_hex,
                holders,
            },
        ));
    }
    versions.sort_by(|(ca, ta, a), (cb, tb, b)| {
        cb.cmp(ca)
            .then_with(|| tb.cmp(ta))
            .then_with(|| a.content_id.cmp(&b.content_id))
            .then_with(|| a.size.cmp(&b.size))
    });
    Some(versions.into_iter().map(|(_, _, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_sort_as_the_index() {
        let a = ContentId::of(b"a");
        let m = member("f.bin", &a, 7);
        assert_eq!(parse_member(&m), Some(("f.bin".into(), a, 7)));
        assert!(member("a", &a, 1) < member("ab", &a, 0));
        assert!(member("a", &a, 9) < member("a", &a, 10));
        assert_eq!(
            parse_member(&member("x", &a, u64::MAX)).map(|m| m.2),
            Some(u64::MAX)
        );
        for bad in [
            "",
            "f\0zz\x0000000000000000000001",
            "../x\0\0",
            "a\0b\0c\0d",
        ] {
            assert_eq!(parse_member(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_who_has_replies_are_refused_or_skipped() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let cid = ContentId::of(b"x");
        let good = member("f", &cid, 1);
        // Wrong shape: a count that is not one.
        assert!(parse_versions("f", "", 200, vec![s(&good), s("x")]).is_none());
        // Truncated holders.
        assert!(parse_versions(
            "f",
            "",
            200,
            vec![s(&good), Value::Int(1), Value::Int(1), Value::Int(1)]
        )
        .is_none());
        // A bad holder and another file's version are skipped.
        let reply = vec![
            s(&good),
            Value::Int(2),
            Value::Int(2),
            Value::Int(2),
            s("bad id!"),
            s("127.0.0.1:1"),
            s("c"),
            s("ok"),
            s("127.0.0.1:2"),
            s("c"),
            s(&member("g", &cid, 1)),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            s("p"),
            s("127.0.0.1:3"),
            s("c"),
        ];
        let versions = parse_versions("f", "", 200, reply).unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].holders.len(), 1);
        assert_eq!(versions[0].holders[0].peer_id, "ok");
    }
}
