//! Unit tests of the store: what a rescan shares, the hash cache, adopting downloads, and files
//! found changed when served.

use super::*;

#[test]
fn rescan_shares_regular_files_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, created) = Store::open(dir.path()).unwrap();
    assert!(created);
    fs::write(store.files_dir().join("a.txt"), b"alpha").unwrap();
    fs::create_dir(store.files_dir().join("sub")).unwrap();
    let outside = dir.path().join("secret");
    fs::write(&outside, b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, store.files_dir().join("link")).unwrap();
    std::os::unix::fs::symlink(
        store.files_dir().join("a.txt"),
        store.files_dir().join("inner"),
    )
    .unwrap();

    let changes = store.rescan().unwrap();
    let mut names: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a.txt", "inner"]);
    assert!(changes.skipped.iter().any(|s| s.contains("link")));
    assert_eq!(
        store.get("a.txt").unwrap().content_id(),
        ContentId::of(b"alpha")
    );

    // Unchanged: nothing to do.
    let again = store.rescan().unwrap();
    assert!(again.added.is_empty() && again.removed.is_empty());

    fs::remove_file(store.files_dir().join("inner")).unwrap();
    fs::write(store.files_dir().join("b"), b"beta").unwrap();
    let changes = store.rescan().unwrap();
    assert_eq!(changes.removed, ["inner"]);
    assert_eq!(changes.added.len(), 1);
    assert_eq!(changes.added[0].name, "b");
}

#[test]
fn files_still_being_written_are_left_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    fs::write(store.files_dir().join("a"), b"first").unwrap();
    store.rescan().unwrap();
    fs::write(store.files_dir().join("a"), b"second, longer").unwrap();
    fs::write(store.files_dir().join("b"), b"half").unwrap();
    fs::write(store.files_dir().join("c"), b"done").unwrap();

    let writing = |name: &str| ["a", "b"].contains(&name);
    let changes = store
        .rescan_except(writing, &CancellationToken::new())
        .unwrap();
    let added: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(added, ["c"]);
    assert!(changes.removed.is_empty(), "{changes:?}");
    assert_eq!(
        store.get("a").unwrap().content_id(),
        ContentId::of(b"first")
    );
    assert!(store.get("b").is_none());

    // Closed: the next rescan takes them.
    let changes = store.rescan().unwrap();
    let mut added: Vec<_> = changes.added.iter().map(|f| f.name.as_str()).collect();
    added.sort();
    assert_eq!(added, ["a", "b"]);
    assert_eq!(
        store.get("a").unwrap().content_id(),
        ContentId::of(b"second, longer")
    );
}

#[test]
fn a_stopped_rescan_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    fs::write(store.files_dir().join("a"), b"alpha").unwrap();
    store.rescan().unwrap();
    fs::remove_file(store.files_dir().join("a")).unwrap();
    fs::write(store.files_dir().join("b"), b"beta").unwrap();
    let stop = CancellationToken::new();
    stop.cancel();
    let changes = store.rescan_except(|_| false, &stop).unwrap();
    assert!(changes.added.is_empty() && changes.removed.is_empty());
    assert!(store.get("a").is_some() && store.get("b").is_none());
    // Hashing itself hears the token.
    let err = hash_file(&store.files_dir().join("b"), 4, 0, &stop).unwrap_err();
    assert_eq!(err.to_string(), "stopped");
}

#[test]
fn a_restart_uses_the_cache_and_a_corrupt_cache_costs_only_a_rehash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        fs::write(store.files_dir().join("a"), b"alpha").unwrap();
        store.rescan().unwrap();
    }
    let cache = dir.path().join(".p2pshare/hash-cache.json");
    let text = fs::read_to_string(&cache).unwrap();
    assert!(text.contains(&ContentId::of(b"alpha").to_hex()));
    // Poison the cached id: the store must notice and rehash, never trust it.
    let poisoned = text.replace(
        &format!("\"content_id\":\"{}\"", ContentId::of(b"alpha")),
        &format!("\"content_id\":\"{}\"", ContentId::of(b"x")),
    );
    assert_ne!(poisoned, text);
    fs::write(&cache, poisoned).unwrap();
    let (store, created) = Store::open(dir.path()).unwrap();
    assert!(!created);
    store.rescan().unwrap();
    assert_eq!(
        store.get("a").unwrap().content_id(),
        ContentId::of(b"alpha")
    );
}

#[test]
fn adopt_never_replaces_different_content() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    fs::write(store.files_dir().join("f"), b"mine").unwrap();
    store.rescan().unwrap();
    let part = store.partial_dir().join("x.part");
    fs::write(&part, b"theirs").unwrap();
    let err = store
        .adopt(&part, "f", Arc::new(Manifest::of_bytes(b"theirs")))
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken(_)));
    assert_eq!(fs::read(store.files_dir().join("f")).unwrap(), b"mine");

    fs::write(&part, b"mine").unwrap();
    store
        .adopt(&part, "f", Arc::new(Manifest::of_bytes(b"mine")))
        .unwrap();
    assert!(!part.exists());

    fs::write(&part, b"new").unwrap();
    let adopted = store
        .adopt(&part, "g", Arc::new(Manifest::of_bytes(b"new")))
        .unwrap();
    assert_eq!(fs::read(&adopted.path).unwrap(), b"new");
    assert!(store.get("g").is_some());
}

#[test]
fn adopt_linked_links_an_unnamed_file_itself_into_place() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    fs::write(store.files_dir().join("f"), b"mine").unwrap();
    store.rescan().unwrap();
    let unnamed = |content: &[u8]| {
        let flags = rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR;
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        let fd = rustix::fs::openat(rustix::fs::CWD, store.partial_dir(), flags, mode).unwrap();
        let mut file = fs::File::from(fd);
        file.write_all(content).unwrap();
        file
    };
    // As a download's `Partial::link_to`: the link to the descriptor, followed.
    let link = |file: &fs::File| {
        let from = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        ));
        move |dest: &Path| {
            let (cwd, follow) = (rustix::fs::CWD, rustix::fs::AtFlags::SYMLINK_FOLLOW);
            Ok(rustix::fs::linkat(cwd, &from, cwd, dest, follow)?)
        }
    };

    let theirs = unnamed(b"theirs");
    let err = store
        .adopt_linked("f", Arc::new(Manifest::of_bytes(b"theirs")), link(&theirs))
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken(_)));
    assert_eq!(fs::read(store.files_dir().join("f")).unwrap(), b"mine");

    let new = unnamed(b"new");
    let adopted = store
        .adopt_linked("g", Arc::new(Manifest::of_bytes(b"new")), link(&new))
        .unwrap();
    assert_eq!(adopted.path, store.files_dir().join("g"));
    assert_eq!(fs::read(&adopted.path).unwrap(), b"new");
    assert_eq!(adopted.size, 3);
    assert!(store.get("g").is_some());
    // A regular file (not a link to the descriptor), and nothing left in partial/.
    assert!(fs::symlink_metadata(&adopted.path).unwrap().is_file());
    assert_eq!(fs::read_dir(store.partial_dir()).unwrap().count(), 0);
}

#[test]
fn a_file_found_changed_when_served_is_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let path = store.files_dir().join("a");
    fs::write(&path, b"alpha").unwrap();
    store.rescan().unwrap();
    let old = store.get("a").unwrap();

    // Only a name shared with that content is a suspect.
    store.content_changed("b", old.content_id());
    store.content_changed("a", ContentId::of(b"other"));
    assert!(!store.has_suspects());

    // It matches after all: nothing to announce.
    store.content_changed("a", old.content_id());
    assert!(store.has_suspects());
    let changes = store.rescan().unwrap();
    assert!(changes.added.is_empty() && changes.removed.is_empty());
    assert_eq!(changes.hashed_bytes, 5);
    assert!(!store.has_suspects());

    // Changed in place with size and mtime put back: a rescan alone cannot see it.
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, b"ALPHA").unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(store.rescan().unwrap().added.is_empty());
    // Found when served: hashed again, not taken from the cache, and the cache learns it.
    store.content_changed("a", old.content_id());
    let changes = store.rescan().unwrap();
    assert_eq!(changes.added.len(), 1);
    assert_eq!(changes.added[0].content_id(), ContentId::of(b"ALPHA"));
    drop(store);
    let (store, _) = Store::open(dir.path()).unwrap();
    let changes = store.rescan().unwrap();
    assert_eq!(changes.hashed_bytes, 0);
    assert_eq!(
        store.get("a").unwrap().content_id(),
        ContentId::of(b"ALPHA")
    );

    // Gone before its second look: nothing left waiting.
    store.content_changed("a", ContentId::of(b"ALPHA"));
    fs::remove_file(&path).unwrap();
    assert_eq!(store.rescan().unwrap().removed, ["a"]);
    assert!(!store.has_suspects());
}
