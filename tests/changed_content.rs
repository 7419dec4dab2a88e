//! Issue 12, item 6: a file changed in place on a seeder, with its size and mtime put back (no
//! rescan can see it), is noticed the first time the seeder serves it: the piece that no longer
//! matches is never sent whole (the stream ends DATA_LOSS, so the seeder is not taken for a
//! liar), and within one rescan interval the seeder announces the file's new content. A
//! downloader never accepts a wrong byte: it finishes from another holder, or fails cleanly and
//! keeps nothing unverified.

mod common;

use common::{content, names_in, TestPeer, TestTracker};
use p2pshare::chunking::ContentId;
use p2pshare::pb::tracker as tpb;
use p2pshare::peer::download::DownloadError;
use p2pshare::peer::server::RateLimiter;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The seeder's rescan interval: the bound on how long the tracker may list the old content.
const RESCAN: Duration = Duration::from_secs(2);

/// Overwrites `path` in place with `data` (same size) and puts its mtime back, as a tool that
/// preserves timestamps would: size and mtime say "unchanged".
fn change_in_place(path: &Path, data: &[u8]) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), data.len() as u64);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, data, 0).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
}

/// The content ids the tracker lists `peer` under for `name`.
async fn listed(tracker: &TestTracker, name: &str, peer: &str) -> Vec<String> {
    let versions = tracker
        .client()
        .who_has(tpb::WhoHasRequest {
            name: name.into(),
            content_id_prefix: String::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().versions)
        .unwrap_or_default();
    versions
        .into_iter()
        .filter(|v| v.holders.iter().any(|h| h.peer_id == peer))
        .map(|v| v.content_id)
        .collect()
}

/// Waits until the tracker lists `peer` for `name` with exactly `want` (empty: not at all), at
/// the latest by `deadline`.
async fn listed_by(
    tracker: &TestTracker,
    name: &str,
    peer: &str,
    want: &[String],
    deadline: Instant,
) {
    loop {
        let now = listed(tracker, name, peer).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{peer} still listed with {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_seeder_is_noticed_and_the_get_completes_from_another_holder() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(4 << 20, 21);
    let changed = content(4 << 20, 22);
    let (old_id, new_id) = (ContentId::of(&data), ContentId::of(&changed));
    let stale = TestPeer::start_with("stale", tracker.addr, &[("f", &data)], |c| {
        c.rescan_interval = RESCAN;
    })
    .await;
    // Slow enough that the stale seeder is surely asked too.
    let _honest = TestPeer::start_with("honest", tracker.addr, &[("f", &data)], |c| {
        c.limits.upload_rate = Some(Arc::new(RateLimiter::new(4 << 20)));
    })
    .await;
    change_in_place(&stale.files_dir().join("f"), &changed);
    // Nothing on the seeder notices by itself (the watcher's rescan sees the same size and
    // mtime): the tracker goes on listing the old content.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(listed(&tracker, "f", "stale").await, [old_id.to_hex()]);

    let me = TestPeer::start("me", tracker.addr, &[]).await;
    let report = me.get("f").await.unwrap();
    let done = Instant::now();
    assert_eq!(report.content_id, old_id);
    assert!(std::fs::read(me.files_dir().join("f")).unwrap() == data);
    // The stale seeder ended its streams DATA_LOSS: a failure, not corruption.
    let stale_report = report.holders.iter().find(|h| h.peer_id == "stale");
    let why = stale_report
        .and_then(|h| h.dropped.clone())
        .unwrap_or_default();
    assert!(
        why.contains("DataLoss") && why.contains("changed on disk"),
        "{why:?}"
    );

    // Within one rescan interval the tracker has the seeder's new content, and only that.
    listed_by(&tracker, "f", "stale", &[new_id.to_hex()], done + RESCAN).await;
    assert_eq!(stale.node.store().get("f").unwrap().content_id(), new_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_only_holder_fails_the_get_cleanly_and_then_offers_its_new_content() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(2 << 20, 23);
    let changed = content(2 << 20, 24);
    let new_id = ContentId::of(&changed);
    let stale = TestPeer::start_with("stale", tracker.addr, &[("f", &data)], |c| {
        c.rescan_interval = RESCAN;
    })
    .await;
    change_in_place(&stale.files_dir().join("f"), &changed);
    let me = TestPeer::start_with("me", tracker.addr, &[], |c| {
        c.stall_timeout = Duration::from_millis(500);
    })
    .await;

    let started = Instant::now();
    let err = me.get("f").await.unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Incomplete { .. } | DownloadError::NoManifest { .. }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing unverified was kept: no file, and no partial (no piece ever verified).
    assert!(names_in(&me.files_dir()).is_empty());
    assert!(names_in(&me.dir.join(".p2pshare/partial")).is_empty());

    listed_by(
        &tracker,
        "f",
        "stale",
        &[new_id.to_hex()],
        Instant::now() + RESCAN,
    )
    .await;
    // What it offers now is what it holds.
    let report = me.get("f").await.unwrap();
    assert_eq!(report.content_id, new_id);
    assert!(std::fs::read(me.files_dir().join("f")).unwrap() == changed);
}
