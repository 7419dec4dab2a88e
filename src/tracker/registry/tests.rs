//! The registry's unit tests: pure, the caller controls time.

use super::*;

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
    let mut r = Registry::new(Duration::from_secs(10));
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
    let summary = &r.files(now)[0];
    assert_eq!((summary.holder_count, summary.partial_holder_count), (2, 1));
    r.announce("D", &d.token, file("f", b"x"), now).unwrap();
    assert!(r.who_has("f", "", 0, now).unwrap()[0]
        .holders
        .iter()
        .all(|h| !h.partial));
    assert_eq!(r.files(now)[0].partial_holder_count, 0);
}

#[test]
fn crowded_versions_list_a_bounded_sample_complete_first() {
    let now = Instant::now();
    let mut r = Registry::new(Duration::from_secs(10));
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
    let mut r = Registry::new(Duration::from_secs(10));
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
    assert!(r.files(now).is_empty());
}

#[test]
fn versions_are_grouped_by_content_and_sorted_by_holders() {
    let now = Instant::now();
    let mut r = Registry::new(Duration::from_secs(10));
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
    let mut r = Registry::new(Duration::from_secs(1));
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
    let mut r = Registry::new(Duration::from_secs(10));
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
    let liar = r.peers(now).into_iter().find(|p| p.peer_id == "L").unwrap();
    assert_eq!(liar.total_bytes, u64::MAX);
}

#[test]
fn catalogs_are_bounded() {
    let now = Instant::now();
    let mut r = Registry::new(Duration::from_secs(10));
    let many: Vec<CheckedFile> = (0..=MAX_FILES_PER_PEER)
        .map(|i| CheckedFile {
            name: format!("f{i}"),
            record: FileRecord {
                size: 1,
                content_id: ContentId([0; 32]),
                partial: false,
            },
        })
        .collect();
    assert!(matches!(
        r.register("A", "a:1".into(), None, "", many.clone(), now),
        Err(TrackerError::TooManyFiles)
    ));
    let full = many[..MAX_FILES_PER_PEER].to_vec();
    let a = r.register("A", "a:1".into(), None, "", full, now).unwrap();
    let extra = many[MAX_FILES_PER_PEER].clone();
    assert!(matches!(
        r.announce("A", &a.token, extra, now),
        Err(TrackerError::TooManyFiles)
    ));
    // Replacing a file already in the catalog is not growth.
    r.announce("A", &a.token, many[0].clone(), now).unwrap();
}

#[test]
fn bad_input_is_refused() {
    let now = Instant::now();
    let mut r = Registry::new(Duration::from_secs(1));
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
