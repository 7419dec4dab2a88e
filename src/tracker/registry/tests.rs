//! The registry's unit tests: pure, the caller controls time.

use super::*;
use crate::tracker::limits::MAX_PAGE_WORK;
use crate::tracker::page::{parse_file_token, parse_peer_token};

fn registry(heartbeat: Duration) -> Registry {
    Registry::new(heartbeat, TrackerLimits::default())
}

/// Every live version, all pages (of 2, to cross page ends).
fn files(r: &Registry, now: Instant) -> Vec<pb::FileSummary> {
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let (page, next) = r.files_page(after, 2, now);
        all.extend(page);
        match next {
            Some(token) => after = parse_file_token(&token).unwrap(),
            None => return all,
        }
    }
}

/// Every live peer, all pages (of 2).
fn peers(r: &Registry, now: Instant) -> Vec<pb::PeerSummary> {
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let (page, next) = r.peers_page(after.as_deref(), 2, now);
        all.extend(page);
        match next {
            Some(token) => after = parse_peer_token(&token).unwrap(),
            None => return all,
        }
    }
}

fn file(name: &str, content: &[u8]) -> CheckedFile {
    CheckedFile::try_from(pb::FileEntry {
        name: name.into(),
        size: content.len() as u64,
        content_id: ContentId::of(content).to_hex(),
        partial: false,
    })
    .unwrap()
}

fn partial_file(name: &str, content: &[u8]) -> CheckedFile {
    CheckedFile::try_from(pb::FileEntry {
        name: name.into(),
        size: content.len() as u64,
        content_id: ContentId::of(content).to_hex(),
        partial: true,
    })
    .unwrap()
}

#[test]
fn partial_holders_are_listed_apart_and_complete_replaces_partial() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    r.register("S", "s:1".into(), None, "", vec![file("f", b"x")], now)
        .unwrap();
    let d = r
        .register("D", "d:1".into(), None, "", vec![], now)
        .unwrap();
    r.announce("D", &d.token, partial_file("f", b"x"), now)
        .unwrap();
    let versions = r.who_has("f", "", 0, now).unwrap();
    let flags: Vec<(String, bool)> = versions[0]
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.partial))
        .collect();
    assert_eq!(flags, [("D".into(), true), ("S".into(), false)]);
    let summary = &files(&r, now)[0];
    assert_eq!((summary.holder_count, summary.partial_holder_count), (2, 1));
    r.announce("D", &d.token, file("f", b"x"), now).unwrap();
    assert!(r.who_has("f", "", 0, now).unwrap()[0]
        .holders
        .iter()
        .all(|h| !h.partial));
    assert_eq!(files(&r, now)[0].partial_holder_count, 0);
}

#[test]
fn crowded_versions_list_a_bounded_sample_complete_first() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    for i in 0..300 {
        let id = format!("P{i}");
        let entry = if i < 5 {
            file("f", b"x")
        } else {
            partial_file("f", b"x")
        };
        r.register(&id, format!("h{i}:1"), None, "", vec![entry], now)
            .unwrap();
    }
    let all = &r.who_has("f", "", 0, now).unwrap()[0].holders;
    assert_eq!(all.len(), DEFAULT_MAX_HOLDERS as usize);
    assert_eq!(all.iter().filter(|h| !h.partial).count(), 5);
    assert!(all.windows(2).all(|w| w[0].peer_id < w[1].peer_id));
    let few = &r.who_has("f", "", 3, now).unwrap()[0].holders;
    assert_eq!(few.len(), 3);
    assert!(few.iter().all(|h| !h.partial), "complete holders first");
    // Versions with complete holders come before a crowd of partial ones.
    for i in 0..3 {
        r.register(
            &format!("Q{i}"),
            format!("q{i}:1"),
            None,
            "",
            vec![file("f", b"y")],
            now,
        )
        .unwrap();
    }
    let versions = r.who_has("f", "", 0, now).unwrap();
    assert_eq!(versions[0].content_id, ContentId::of(b"x").to_hex());
}

#[test]
fn samples_are_drawn_afresh_and_each_holder_keeps_its_own_address() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    for i in 0..10 {
        let entry = if i < 6 {
            file("f", b"x")
        } else {
            partial_file("f", b"x")
        };
        r.register(
            &format!("P{i}"),
            format!("h{i}:1"),
            None,
            "",
            vec![entry],
            now,
        )
        .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let version = &r.who_has("f", "", 4, now).unwrap()[0];
        assert_eq!(version.holders.len(), 4);
        assert!(version
            .holders
            .windows(2)
            .all(|w| w[0].peer_id < w[1].peer_id));
        for h in &version.holders {
            assert!(!h.partial, "6 complete holders: no partial one is needed");
            assert_eq!(h.address, format!("h{}:1", &h.peer_id[1..]));
            seen.insert(h.peer_id.clone());
        }
    }
    // 200 samples of 4 among 6: every complete holder shows up (a miss has odds below 1e-35).
    assert_eq!(seen.len(), 6, "{seen:?}");
}

fn holders(r: &Registry, name: &str, now: Instant) -> Vec<Vec<String>> {
    match r.who_has(name, "", 0, now) {
        Ok(versions) => versions
            .into_iter()
            .map(|v| v.holders.into_iter().map(|h| h.peer_id).collect())
            .collect(),
        Err(TrackerError::UnknownFile(_)) => vec![],
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn tokens_match_only_when_equal() {
    let token = new_token();
    assert_eq!(token.len(), 32);
    assert!(same_token(&token, &token.clone()));
    assert!(!same_token(&token, &token[..31]));
    assert!(!same_token(&token, &format!("{token}0")));
    assert!(!same_token(&token, ""));
    assert!(!same_token(&token, &new_token()));
}

#[test]
fn register_announce_withdraw_leave_are_reflected() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    let a = r
        .register(
            "A",
            "1.1.1.1:1".into(),
            None,
            "",
            vec![file("f", b"1")],
            now,
        )
        .unwrap();
    let b = r
        .register("B", "1.1.1.2:1".into(), None, "", vec![], now)
        .unwrap();
    assert_eq!(holders(&r, "f", now), vec![vec!["A"]]);
    r.announce("B", &b.token, file("f", b"1"), now).unwrap();
    assert_eq!(holders(&r, "f", now), vec![vec!["A", "B"]]);
    r.withdraw("A", &a.token, "f", now).unwrap();
    assert_eq!(holders(&r, "f", now), vec![vec!["B"]]);
    r.leave("B", &b.token, now).unwrap();
    assert!(holders(&r, "f", now).is_empty());
    assert!(files(&r, now).is_empty());
}

#[test]
fn versions_are_grouped_by_content_and_sorted_by_holders() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    r.register("A", "a:1".into(), None, "", vec![file("f", b"old")], now)
        .unwrap();
    r.register("B", "b:1".into(), None, "", vec![file("f", b"new")], now)
        .unwrap();
    r.register("C", "c:1".into(), None, "", vec![file("f", b"new")], now)
        .unwrap();
    assert_eq!(holders(&r, "f", now), vec![vec!["B", "C"], vec!["A"]]);
    let old = ContentId::of(b"old").to_hex();
    let only_old = r.who_has("f", &old[..6], 0, now).unwrap();
    assert_eq!(only_old.len(), 1);
    assert_eq!(only_old[0].content_id, old);
    assert!(r.who_has("f", "XYZ", 0, now).is_err());
    let missing = r.who_has("f", "ffff", 0, now).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no peer holds \"f\" with a content id starting ffff"
    );
}

#[test]
fn silent_peers_expire_and_tokens_are_enforced() {
    let t0 = Instant::now();
    let home: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
    let elsewhere: Option<IpAddr> = Some("10.6.6.6".parse().unwrap());
    let mut r = registry(Duration::from_secs(1));
    let a = r
        .register("A", "a:1".into(), home, "", vec![file("f", b"x")], t0)
        .unwrap();
    assert!(matches!(
        r.heartbeat("A", "forged", t0),
        Err(TrackerError::WrongToken(_))
    ));
    assert!(matches!(
        r.leave("A", "forged", t0),
        Err(TrackerError::WrongToken(_))
    ));
    assert!(matches!(
        r.heartbeat("../A", "forged", t0),
        Err(TrackerError::BadName(_))
    ));
    // Someone else cannot take the id while A lives, not even by claiming A's address...
    for (address, from) in [("evil:1", home), ("a:1", elsewhere), ("a:1", None)] {
        assert!(matches!(
            r.register("A", address.into(), from, "", vec![], t0),
            Err(TrackerError::PeerIdTaken { .. })
        ));
    }
    // ...and A presenting its token may move.
    let moved = r
        .register("A", "a:2".into(), elsewhere, &a.token, vec![], t0)
        .unwrap();
    assert_eq!(moved.token, a.token);
    let a = r
        .register("A", "a:1".into(), home, &a.token, vec![file("f", b"x")], t0)
        .unwrap();
    // A restarting on its own address, from its own IP, can, with a new token: the old one is
    // never handed out.
    let restarted = r
        .register("A", "a:1".into(), home, "", vec![file("f", b"x")], t0)
        .unwrap();
    assert_ne!(restarted.token, a.token);
    assert!(matches!(
        r.heartbeat("A", &a.token, t0),
        Err(TrackerError::WrongToken(_))
    ));
    r.heartbeat("A", &restarted.token, t0 + Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        holders(&r, "f", t0 + Duration::from_secs(4)),
        vec![vec!["A"]]
    );
    // Silent for three intervals: gone, even before the reaper runs.
    let later = t0 + Duration::from_secs(5);
    assert!(holders(&r, "f", later).is_empty());
    assert_eq!(r.expire(later), vec!["A".to_string()]);
    assert!(matches!(
        r.heartbeat("A", &restarted.token, later),
        Err(TrackerError::UnknownPeer(_))
    ));
    r.register("A", "evil:1".into(), elsewhere, "", vec![], later)
        .unwrap();
}

#[test]
fn a_wrong_size_makes_its_own_version_and_sizes_never_overflow() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    let liar = CheckedFile::try_from(pb::FileEntry {
        name: "f".into(),
        size: u64::MAX,
        content_id: ContentId::of(b"true").to_hex(),
        partial: false,
    })
    .unwrap();
    let mut other = liar.clone();
    other.name = "g".into();
    r.register("L", "l:1".into(), None, "", vec![liar, other], now)
        .unwrap();
    r.register("H", "h:1".into(), None, "", vec![file("f", b"true")], now)
        .unwrap();
    r.register("I", "i:1".into(), None, "", vec![file("f", b"true")], now)
        .unwrap();
    let versions = r.who_has("f", "", 0, now).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!((versions[0].size, versions[0].holders.len()), (4, 2));
    assert_eq!((versions[1].size, versions[1].holders.len()), (u64::MAX, 1));
    let liar = peers(&r, now)
        .into_iter()
        .find(|p| p.peer_id == "L")
        .unwrap();
    assert_eq!(liar.total_bytes, u64::MAX);
}

fn numbered(count: usize) -> Vec<CheckedFile> {
    (0..count)
        .map(|i| CheckedFile {
            name: format!("f{i}"),
            record: FileRecord {
                size: 1,
                content_id: ContentId([0; 32]),
                partial: false,
            },
        })
        .collect()
}

#[test]
fn catalogs_are_bounded() {
    let now = Instant::now();
    let limits = TrackerLimits {
        max_files_per_peer: 10,
        ..TrackerLimits::default()
    };
    let mut r = Registry::new(Duration::from_secs(10), limits);
    let many = numbered(11);
    assert!(matches!(
        r.register("A", "a:1".into(), None, "", many.clone(), now),
        Err(TrackerError::TooManyFiles(10))
    ));
    // Duplicate names count once.
    let mut full = many[..10].to_vec();
    full.push(many[0].clone());
    let a = r.register("A", "a:1".into(), None, "", full, now).unwrap();
    let extra = many[10].clone();
    assert!(matches!(
        r.announce("A", &a.token, extra.clone(), now),
        Err(TrackerError::TooManyFiles(10))
    ));
    assert!(matches!(
        r.register_more("A", &a.token, vec![extra], now),
        Err(TrackerError::TooManyFiles(10))
    ));
    // Replacing a file already in the catalog is not growth.
    r.announce("A", &a.token, many[0].clone(), now).unwrap();
    r.register_more("A", &a.token, many[..10].to_vec(), now)
        .unwrap();
    assert_eq!(r.catalog_len, 10);
}

#[test]
fn peers_and_catalog_are_bounded_in_all_and_per_address() {
    let now = Instant::now();
    let ip = |n: u8| Some(IpAddr::from([10, 0, 0, n]));
    let limits = TrackerLimits {
        max_peers: 4,
        max_peers_per_ip: 2,
        max_files_per_peer: 100,
        max_files_per_ip: 5,
        max_catalog_files: 8,
    };
    let mut r = Registry::new(Duration::from_secs(10), limits);
    let files = numbered(10);
    let a = r
        .register("A", "a:1".into(), ip(1), "", files[..3].to_vec(), now)
        .unwrap();
    r.register("B", "b:1".into(), ip(1), "", files[..2].to_vec(), now)
        .unwrap();
    // A third peer from the same address, or more files from it, are refused...
    assert!(matches!(
        r.register("C", "c:1".into(), ip(1), "", vec![], now),
        Err(TrackerError::TooManyPeersFrom(_, 2))
    ));
    assert!(matches!(
        r.announce("A", &a.token, files[5].clone(), now),
        Err(TrackerError::TooManyFilesFrom(_, 5))
    ));
    assert!(matches!(
        r.register("A", "a:1".into(), ip(1), &a.token, files[..4].to_vec(), now),
        Err(TrackerError::TooManyFilesFrom(_, 5))
    ));
    // ...but a peer may re-register within its address's share, and its old entries leave.
    r.register("A", "a:1".into(), ip(1), &a.token, files[..2].to_vec(), now)
        .unwrap();
    // The whole catalog and the whole peer table have their own caps.
    r.register("C", "c:1".into(), ip(2), "", files[..4].to_vec(), now)
        .unwrap();
    assert!(matches!(
        r.register("D", "d:1".into(), ip(3), "", files[..1].to_vec(), now),
        Err(TrackerError::CatalogFull(8))
    ));
    r.register("D", "d:1".into(), ip(3), "", vec![], now)
        .unwrap();
    assert!(matches!(
        r.register("E", "e:1".into(), ip(4), "", vec![], now),
        Err(TrackerError::TooManyPeers(4))
    ));
    assert_eq!(r.catalog_len, 8);
    // A refusal changed nothing; leaving gives the room back.
    assert_eq!(peers(&r, now).len(), 4);
    let b_token = {
        let b = r
            .register("B", "b:1".into(), ip(1), "", vec![], now)
            .unwrap();
        b.token
    };
    assert_eq!(r.catalog_len, 6);
    r.leave("B", &b_token, now).unwrap();
    r.register("E", "e:1".into(), ip(1), "", files[..2].to_vec(), now)
        .unwrap();
    assert_eq!(
        (r.catalog_len, r.per_ip[&IpAddr::from([10, 0, 0, 1])].files),
        (8, 4)
    );
    // Expired peers give their room back when reaped.
    let later = now + Duration::from_secs(60);
    assert_eq!(r.expire(later).len(), 4);
    assert_eq!((r.catalog_len, r.per_ip.len(), r.ids.len()), (0, 0, 0));
    assert_eq!(r.index.len(), 0);
}

#[test]
fn pages_cover_everything_once_in_order_and_skip_the_dead() {
    let t0 = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    let mut tokens = Vec::new();
    for p in 0..7 {
        let registered = r
            .register(
                &format!("P{p}"),
                format!("h{p}:1"),
                None,
                "",
                numbered(p + 1),
                t0,
            )
            .unwrap();
        tokens.push(registered.token);
    }
    let listed = files(&r, t0);
    assert_eq!(listed.len(), 7);
    assert!(listed.windows(2).all(|w| w[0].name < w[1].name));
    assert_eq!(listed[0].holder_count, 7);
    let ids: Vec<String> = peers(&r, t0).into_iter().map(|p| p.peer_id).collect();
    assert_eq!(ids, ["P0", "P1", "P2", "P3", "P4", "P5", "P6"]);
    // A page ends after the last key it covered, even one that is gone by the next call.
    let (first, next) = r.peers_page(None, 3, t0);
    assert_eq!(first.len(), 3);
    r.leave("P2", &tokens[2], t0).unwrap();
    let after = parse_peer_token(&next.unwrap()).unwrap();
    let (rest, _) = r.peers_page(after.as_deref(), 100, t0);
    let rest: Vec<&str> = rest.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(rest, ["P3", "P4", "P5", "P6"]);
    // Only P6 heartbeats: the others are silent past expiry and not listed, though not reaped.
    let later = t0 + Duration::from_secs(25);
    r.heartbeat("P6", &tokens[6], later).unwrap();
    let listed = files(&r, later + Duration::from_secs(10));
    assert_eq!(listed.len(), 7);
    assert!(listed.iter().all(|f| f.holder_count == 1));
    assert_eq!(peers(&r, later + Duration::from_secs(10)).len(), 1);
}

#[test]
fn a_page_does_bounded_work() {
    let now = Instant::now();
    let limits = TrackerLimits::unlimited();
    let mut r = Registry::new(Duration::from_secs(10), limits);
    // One version with more holders than a page may look at, then a few more.
    for p in 0..(MAX_PAGE_WORK + 10) {
        let mut file = numbered(1);
        if p % 1000 == 0 {
            file.extend(numbered(3).into_iter().skip(1));
        }
        r.register(&format!("P{p:06}"), "h:1".into(), None, "", file, now)
            .unwrap();
    }
    let (page, next) = r.files_page(None, 5000, now);
    assert_eq!(
        page.len(),
        1,
        "the crowded version is counted whole, then the page ends"
    );
    assert_eq!(page[0].holder_count as usize, MAX_PAGE_WORK + 10);
    let after = parse_file_token(&next.unwrap()).unwrap();
    let (rest, next) = r.files_page(after, 5000, now);
    assert_eq!((rest.len(), next), (2, None));
    let (peers_page, next) = r.peers_page(None, 5000, now);
    assert_eq!(peers_page.len(), 5000);
    assert!(next.is_some());
}

#[test]
fn bad_input_is_refused() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(1));
    assert!(r
        .register("a/b", "x:1".into(), None, "", vec![], now)
        .is_err());
    assert!(r.who_has("../etc", "", 0, now).is_err());
    assert!(CheckedFile::try_from(pb::FileEntry {
        name: "ok".into(),
        size: 1,
        content_id: "nothex".into(),
        partial: false,
    })
    .is_err());
}

/// The index's two views (the name map `WhoHas` reads, the ordered names `ListFiles` walks)
/// follow every way in and out: the last holder of a name withdrawing, leaving or expiring
/// takes it from both, and adding it again brings it back to both.
#[test]
fn who_has_and_listings_agree_as_names_come_and_go() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    let listed =
        |r: &Registry| -> Vec<String> { files(r, now).into_iter().map(|f| f.name).collect() };
    let a = r
        .register(
            "A",
            "a:1".into(),
            None,
            "",
            vec![file("f", b"1"), file("g", b"1")],
            now,
        )
        .unwrap();
    let b = r
        .register("B", "b:1".into(), None, "", vec![file("f", b"2")], now)
        .unwrap();
    r.index.assert_in_step();
    assert_eq!(listed(&r), ["f", "f", "g"]);
    // The last holder of one version of "f": the other stays.
    r.withdraw("A", &a.token, "f", now).unwrap();
    r.index.assert_in_step();
    assert_eq!(holders(&r, "f", now), vec![vec!["B"]]);
    assert_eq!(listed(&r), ["f", "g"]);
    // The last holder of the last version: gone from both.
    r.leave("B", &b.token, now).unwrap();
    r.index.assert_in_step();
    assert!(holders(&r, "f", now).is_empty());
    assert_eq!(listed(&r), ["g"]);
    // Added again: in both again.
    r.announce("A", &a.token, file("f", b"3"), now).unwrap();
    r.index.assert_in_step();
    assert_eq!(holders(&r, "f", now), vec![vec!["A"]]);
    assert_eq!(listed(&r), ["f", "g"]);
    // Replaced by a re-registration, then expired: nothing left anywhere.
    r.register(
        "A",
        "a:1".into(),
        None,
        &a.token,
        vec![file("h", b"1")],
        now,
    )
    .unwrap();
    r.index.assert_in_step();
    assert!(holders(&r, "f", now).is_empty() && holders(&r, "g", now).is_empty());
    assert_eq!(listed(&r), ["h"]);
    r.expire(now + Duration::from_secs(3600));
    r.index.assert_in_step();
    assert_eq!(r.counts().files, 0);
    assert!(files(&r, now).is_empty());
}

/// Holders are listed in peer id order whatever the ids' first 8 bytes (the sort compares
/// those as a number first), and content ids are the same lowercase hex as `to_hex`.
#[test]
fn holders_sort_by_whole_id_and_content_ids_are_hex() {
    let now = Instant::now();
    let mut r = registry(Duration::from_secs(10));
    let ids = [
        "peer-0000b",
        "peer-0000a",
        "peer-0000",
        "peer",
        "pe",
        "Z",
        "peer-0001",
        "p.x",
        "peer-0000a-2",
    ];
    for id in ids {
        r.register(id, format!("{id}:1"), None, "", vec![file("f", b"x")], now)
            .unwrap();
    }
    let mut sorted = ids.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(holders(&r, "f", now), vec![sorted]);
    for content in [&b"x"[..], b"", b"\xff\x00"] {
        let id = ContentId::of(content);
        assert_eq!(listing::content_id_hex(&id, &mut [0; 64]), id.to_hex());
    }
}
