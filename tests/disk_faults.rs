//! Issue 7, disk faults: a full disk or a read-only `files/` during a download gives a clear
//! error, leaves nothing in `files/`, and the peer goes on serving.
//!
//! These tests need root (CI runs as root): a read-only folder is made with `chattr +i` (root
//! ignores permission bits, not the immutable flag) and a full disk with a small tmpfs mount.
//! Without root they skip, saying so (on CI they fail: see `common::require`).

mod common;

use common::{content, names_in, TestPeer, TestTracker};
use p2pshare::pb::peer as pb;
use p2pshare::peer::download::DownloadError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// Makes a directory immutable until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Self {
        run("chattr", &["+i", dir.to_str().unwrap()]);
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-i", self.0.to_str().unwrap()])
            .status();
    }
}

/// A tiny tmpfs mounted until dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

async fn still_serves(peer: &TestPeer, name: &str, size: u64) {
    let mut client = p2pshare::pb::peer::peer_client::PeerClient::new(
        p2pshare::grpc::channel(&peer.node.local_addr().to_string()).unwrap(),
    );
    let info = client
        .get_file_info(pb::GetFileInfoRequest {
            file: Some(pb::FileSelector {
                name: name.into(),
                content_id: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.size, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_files_folder_fails_the_get_clearly_and_changes_nothing() {
    if !common::require(common::immutable_dirs(
        "makes files/ read-only with chattr +i",
    )) {
        return;
    }
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(3 << 20, 11);
    let _seed = TestPeer::start("seed", tracker.addr, &[("f", &data)]).await;
    let me = TestPeer::start("me", tracker.addr, &[("mine", b"still here")]).await;
    let guard = Immutable::new(&me.files_dir());

    let err = me.get("f").await.unwrap_err();
    assert!(matches!(err, DownloadError::Store(_)), "{err}");
    assert!(err.to_string().contains("files/f"), "{err}");
    assert!(err.to_string().contains("not permitted"), "{err}");
    assert_eq!(names_in(&me.files_dir()), ["mine"]);
    still_serves(&me, "mine", 10).await;

    // Writable again: the same get now works.
    drop(guard);
    me.get("f").await.unwrap();
    assert_eq!(std::fs::read(me.files_dir().join("f")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_get_clearly_and_the_peer_goes_on() {
    if !common::require(common::tmpfs_mounts("mounts a small tmpfs as a full disk")) {
        return;
    }
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let data = content(8 << 20, 12);
    let _seed = TestPeer::start("seed", tracker.addr, &[("big", &data)]).await;

    let tmp = tempfile::tempdir().unwrap();
    let _disk = SmallDisk::new(&tmp.path().join("disk"), "2m");
    let dir = tmp.path().join("disk/me");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/mine"), b"small").unwrap();
    let me = TestPeer::start_in("me", tracker.addr, dir.clone(), |_| {}).await;

    let err = me.get("big").await.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(names_in(&me.files_dir()), ["mine"]);
    still_serves(&me, "mine", 5).await;
    me.node.shutdown().await;
}
